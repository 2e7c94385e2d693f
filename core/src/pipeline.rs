//! Pipelines as data: the step graph a client submits, checked before anything is written. A
//! step's input may hold, as a whole string value anywhere in it, a reference to an earlier
//! step's output, `$steps.NAME.outputs[N]`. The references are the graph's edges: every one must
//! name another step, and the graph must have no cycle. When a step starts, its references
//! become `kiln://jobs/{id}/outputs/{n}` storage references to the jobs of the steps it depends
//! on, so outputs pass by storage key, never through a public URL.
//!
//! Kept free of storage and HTTP so the rules are unit-tested here and shared by the api (which
//! refuses bad graphs) and the ledger (which starts steps).

use crate::catalog::ImageSource;
use crate::{JobId, Status};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Most steps in one pipeline.
pub const MAX_STEPS: usize = 20;

/// One step of a pipeline, as submitted.
#[derive(Debug, Clone, PartialEq, utoipa::ToSchema)]
#[schema(as = StepSubmission)]
pub struct StepSpec {
    pub name: String,
    /// A model from `GET /v1/models`.
    pub model: String,
    /// The step's input; `"$steps.NAME.outputs[N]"` refers to an earlier step's output.
    #[schema(value_type = Object)]
    pub input: Value,
}

/// A bad graph, with the field at fault (`steps[1].input.image`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl GraphError {
    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        GraphError {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One `$steps.NAME.outputs[N]` found in an input: where, which step, which output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub path: String,
    pub step: String,
    pub index: u32,
}

/// A step output reference as the document publishes it, for an image field of a step's input.
/// `parse_reference` takes these strings (and the graph check then asks that the step exists).
pub const STEP_REFERENCE_PATTERN: &str =
    "^\\$steps\\.[A-Za-z0-9_-]{1,64}\\.outputs\\[[0-9]{1,9}\\]$";

fn parse_reference(text: &str) -> Option<(String, u32)> {
    let rest = text.strip_prefix("$steps.")?;
    let (name, tail) = rest.split_once(".outputs[")?;
    let digits = tail.strip_suffix(']')?;
    // As the pattern says: 1 to 9 digits, nothing else (`u32::from_str` would also take `+1`).
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = digits.parse().ok()?;
    valid_name(name).then(|| (name.to_owned(), index))
}

/// A step name as the document publishes it; `valid_name` is the same rule.
pub const STEP_NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every reference in `input`, with its path below `prefix`.
pub fn references(input: &Value, prefix: &str) -> Vec<Reference> {
    let mut found = vec![];
    walk(input, prefix, &mut |path, text| {
        if let Some((step, index)) = parse_reference(text) {
            found.push(Reference {
                path: path.to_owned(),
                step,
                index,
            });
        }
    });
    found
}

fn walk(value: &Value, path: &str, visit: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(s) => visit(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), visit);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, &format!("{path}.{k}"), visit);
            }
        }
        _ => {}
    }
}

/// Checks the graph; returns each step's dependencies (by name), in step order.
pub fn plan(steps: &[StepSpec]) -> Result<Vec<BTreeSet<String>>, GraphError> {
    if steps.is_empty() {
        return Err(GraphError::new(
            "missing_field",
            "steps",
            "a pipeline needs at least one step",
        ));
    }
    if steps.len() > MAX_STEPS {
        return Err(GraphError::new(
            "out_of_range",
            "steps",
            format!("a pipeline has at most {MAX_STEPS} steps"),
        ));
    }
    let mut names = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        if !valid_name(&s.name) {
            return Err(GraphError::new(
                "invalid_name",
                format!("steps[{i}].name"),
                "a step name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if names.insert(s.name.as_str(), i).is_some() {
            return Err(GraphError::new(
                "duplicate_step",
                format!("steps[{i}].name"),
                format!("two steps are named '{}'", s.name),
            ));
        }
    }
    let mut deps = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let mut mine = BTreeSet::new();
        for r in references(&s.input, &format!("steps[{i}].input")) {
            if !names.contains_key(r.step.as_str()) {
                return Err(GraphError::new(
                    "unknown_step",
                    r.path,
                    format!("there is no step named '{}'", r.step),
                ));
            }
            if r.step == s.name {
                return Err(GraphError::new(
                    "cycle",
                    r.path,
                    format!("step '{}' refers to its own output", s.name),
                ));
            }
            mine.insert(r.step);
        }
        deps.push(mine);
    }
    // Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = steps
            .iter()
            .zip(&deps)
            .filter(|(s, d)| {
                !done.contains(s.name.as_str()) && d.iter().all(|n| done.contains(n.as_str()))
            })
            .map(|(s, _)| s.name.as_str())
            .collect();
        if ready.is_empty() {
            break;
        }
        done.extend(ready);
    }
    if let Some((i, s)) = steps
        .iter()
        .enumerate()
        .find(|(_, s)| !done.contains(s.name.as_str()))
    {
        return Err(GraphError::new(
            "cycle",
            format!("steps[{i}].input"),
            format!("step '{}' is on a cycle of references", s.name),
        ));
    }
    Ok(deps)
}

/// `input` with each reference replaced by `resolve(step, index)` (a `kiln://` reference once
/// the step has run; a stand-in of the same shape for checking the input before).
pub fn substitute(input: &Value, resolve: &impl Fn(&str, u32) -> String) -> Value {
    match input {
        Value::String(s) => match parse_reference(s) {
            Some((step, index)) => Value::String(resolve(&step, index)),
            None => input.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|i| substitute(i, resolve)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, resolve)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The input as it will look when the step starts, with a stand-in job id: what the model's
/// input checks see at submit.
pub fn with_stand_ins(input: &Value) -> Value {
    substitute(input, &|_, index| {
        ImageSource::output_reference(JobId(uuid::Uuid::nil()), index)
    })
}

/// One step as the ledger reads it when a running pipeline moves on.
#[derive(Debug, Clone)]
pub struct StepState<'a> {
    pub name: &'a str,
    pub depends_on: &'a [String],
    /// Its job's status; `None` while the step has not started.
    pub status: Option<Status>,
    /// Its job's error message, if it ended with one.
    pub error: Option<&'a str>,
}

/// What a running pipeline does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextMove {
    /// A step failed or was canceled: the pipeline ends with it (`failed`/`step_failed` or
    /// `canceled`/`step_canceled`), and its steps still queued or running are canceled.
    End {
        status: Status,
        code: &'static str,
        message: String,
    },
    /// Every step succeeded: so does the pipeline.
    Succeed,
    /// The steps (by index) that have not started and whose dependencies have all succeeded;
    /// possibly none, while steps are still running.
    Start(Vec<usize>),
}

/// A running pipeline's next move, decided from its steps' states alone (the ledger reads the
/// states and carries the move out in one transaction). The first broken step, in step order,
/// names the end; a step's dependents never start once it failed.
pub fn next_move(steps: &[StepState]) -> NextMove {
    if let Some(broken) = steps
        .iter()
        .find(|s| matches!(s.status, Some(Status::Failed | Status::Canceled)))
    {
        let (status, code) = match broken.status {
            Some(Status::Canceled) => (Status::Canceled, "step_canceled"),
            _ => (Status::Failed, "step_failed"),
        };
        return NextMove::End {
            status,
            code,
            message: format!(
                "step '{}' {status}: {}",
                broken.name,
                broken.error.unwrap_or("no reason given")
            ),
        };
    }
    if steps.iter().all(|s| s.status == Some(Status::Succeeded)) {
        return NextMove::Succeed;
    }
    let succeeded: BTreeSet<&str> = steps
        .iter()
        .filter(|s| s.status == Some(Status::Succeeded))
        .map(|s| s.name)
        .collect();
    NextMove::Start(
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status.is_none())
            .filter(|(_, s)| s.depends_on.iter().all(|d| succeeded.contains(d.as_str())))
            .map(|(i, _)| i)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state<'a>(name: &'a str, depends_on: &'a [String], status: Option<Status>) -> StepState<'a> {
        StepState {
            name,
            depends_on,
            status,
            error: None,
        }
    }

    #[test]
    fn the_published_reference_pattern_is_the_parser() {
        let pattern = regex::Regex::new(STEP_REFERENCE_PATTERN).unwrap();
        for text in [
            "$steps.a.outputs[0]",
            "$steps.image-1_x.outputs[123456789]",
            "$steps..outputs[0]",
            "$steps.a.outputs[]",
            "$steps.a b.outputs[0]",
            "$steps.a.outputs[0] ",
            "steps.a.outputs[0]",
            "$steps.a.outputs[1234567890]",
            "$steps.a.outputs[+1]",
        ] {
            assert_eq!(
                pattern.is_match(text),
                parse_reference(text).is_some(),
                "{text}"
            );
        }
    }

    #[test]
    fn steps_start_once_everything_they_depend_on_succeeded() {
        let on_a = ["a".to_owned()];
        let on_ab = ["a".to_owned(), "b".to_owned()];
        let fresh = [
            state("a", &[], None),
            state("b", &on_a, None),
            state("c", &on_ab, None),
        ];
        assert_eq!(next_move(&fresh), NextMove::Start(vec![0]));
        let a_done = [
            state("a", &[], Some(Status::Succeeded)),
            state("b", &on_a, None),
            state("c", &on_ab, None),
        ];
        assert_eq!(next_move(&a_done), NextMove::Start(vec![1]));
        let b_running = [
            state("a", &[], Some(Status::Succeeded)),
            state("b", &on_a, Some(Status::Running)),
            state("c", &on_ab, None),
        ];
        assert_eq!(next_move(&b_running), NextMove::Start(vec![]));
        let all_done = [
            state("a", &[], Some(Status::Succeeded)),
            state("b", &on_a, Some(Status::Succeeded)),
        ];
        assert_eq!(next_move(&all_done), NextMove::Succeed);
    }

    #[test]
    fn the_first_broken_step_ends_the_pipeline_with_its_reason() {
        let on_a = ["a".to_owned()];
        let failed = [
            state("a", &[], Some(Status::Succeeded)),
            StepState {
                error: Some("out of memory"),
                ..state("b", &on_a, Some(Status::Failed))
            },
            state("c", &[], Some(Status::Canceled)),
        ];
        assert_eq!(
            next_move(&failed),
            NextMove::End {
                status: Status::Failed,
                code: "step_failed",
                message: "step 'b' failed: out of memory".into(),
            }
        );
        let canceled = [
            state("a", &[], Some(Status::Canceled)),
            state("b", &on_a, None),
        ];
        assert_eq!(
            next_move(&canceled),
            NextMove::End {
                status: Status::Canceled,
                code: "step_canceled",
                message: "step 'a' canceled: no reason given".into(),
            }
        );
    }

    fn step(name: &str, input: Value) -> StepSpec {
        StepSpec {
            name: name.into(),
            model: "demo/image".into(),
            input,
        }
    }

    #[test]
    fn a_chain_plans_in_order() {
        let steps = [
            step("image", json!({"prompt": "x"})),
            step(
                "upscale",
                json!({"image": "$steps.image.outputs[0]", "scale": 2}),
            ),
            step("video", json!({"image": "$steps.upscale.outputs[0]"})),
        ];
        let deps = plan(&steps).unwrap();
        assert!(deps[0].is_empty());
        assert_eq!(deps[1], BTreeSet::from(["image".to_owned()]));
        assert_eq!(deps[2], BTreeSet::from(["upscale".to_owned()]));
        let job = JobId::new();
        let started = substitute(&steps[1].input, &|s, i| {
            assert_eq!(s, "image");
            ImageSource::output_reference(job, i)
        });
        assert_eq!(started["image"], format!("kiln://jobs/{job}/outputs/0"));
    }

    #[test]
    fn bad_graphs_are_refused_with_the_field_at_fault() {
        let unknown = [step("a", json!({"image": "$steps.b.outputs[0]"}))];
        let e = plan(&unknown).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("unknown_step", "steps[0].input.image")
        );

        let cycle = [
            step("a", json!({"image": "$steps.b.outputs[0]"})),
            step("b", json!({"image": "$steps.a.outputs[0]"})),
        ];
        assert_eq!(plan(&cycle).unwrap_err().code, "cycle");
        let own = [step("a", json!({"image": "$steps.a.outputs[0]"}))];
        assert_eq!(plan(&own).unwrap_err().code, "cycle");

        let twice = [step("a", json!({})), step("a", json!({}))];
        let e = plan(&twice).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("duplicate_step", "steps[1].name")
        );
        assert_eq!(plan(&[]).unwrap_err().code, "missing_field");
        assert_eq!(
            plan(&[step("a b", json!({}))]).unwrap_err().code,
            "invalid_name"
        );
    }

    #[test]
    fn only_whole_strings_are_references() {
        let input =
            json!({"prompt": "see $steps.a.outputs[0] here", "list": ["$steps.a.outputs[2]"]});
        let found = references(&input, "input");
        assert_eq!(
            found,
            [Reference {
                path: "input.list[0]".into(),
                step: "a".into(),
                index: 2
            }]
        );
        assert_eq!(
            with_stand_ins(&input)["list"][0],
            format!("kiln://jobs/{}/outputs/2", uuid::Uuid::nil())
        );
    }
}
