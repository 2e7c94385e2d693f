//! The OpenAPI request schema of OpenAI's image generation route, per deployment: one variant
//! per model that takes a prompt, its `size` as a pattern of exactly the widths and heights the
//! model takes (`range_pattern`), so a generated client or a fuzzer sends what the route takes.

use super::{IGNORED, MAX_IMAGES};
use serde_json::{Map, Value};

/// A regular expression of exactly the whole numbers from `min` to `max` (no leading zeros),
/// so the document can say which `size`s a model takes.
pub(super) fn range_pattern(min: u64, max: u64) -> String {
    fn same_length(low: &[u8], high: &[u8]) -> Vec<String> {
        let Some((&l, low_rest)) = low.split_first() else {
            return vec![String::new()];
        };
        let (&h, high_rest) = high.split_first().expect("of the same length");
        let (l, h) = (char::from(l), char::from(h));
        if l == h {
            return same_length(low_rest, high_rest)
                .into_iter()
                .map(|p| format!("{l}{p}"))
                .collect();
        }
        let width = low_rest.len();
        let nines = vec![b'9'; width];
        let zeros = vec![b'0'; width];
        let mut out: Vec<String> = same_length(low_rest, &nines)
            .into_iter()
            .map(|p| format!("{l}{p}"))
            .collect();
        let (next, before) = (char::from(l as u8 + 1), char::from(h as u8 - 1));
        if next <= before {
            let any = if width == 0 {
                String::new()
            } else {
                format!("[0-9]{{{width}}}")
            };
            out.push(format!("[{next}-{before}]{any}"));
        }
        out.extend(
            same_length(&zeros, high_rest)
                .into_iter()
                .map(|p| format!("{h}{p}")),
        );
        out
    }
    let mut alternatives = Vec::new();
    let (low_len, high_len) = (min.to_string().len(), max.to_string().len());
    for len in low_len..=high_len {
        let low = if len == low_len {
            min
        } else {
            10u64.pow(len as u32 - 1)
        };
        let high = if len == high_len {
            max
        } else {
            10u64.pow(len as u32) - 1
        };
        if low <= high {
            alternatives.extend(same_length(
                low.to_string().as_bytes(),
                high.to_string().as_bytes(),
            ));
        }
    }
    format!("(?:{})", alternatives.join("|"))
}

/// The OpenAPI request schema of `POST /v1/images/generations` for this deployment's models:
/// one variant per model that takes a prompt, with its own prompt rule, the sizes it takes
/// (a `WxH` pattern from its width and height ranges) and its other input fields. The demo
/// models' fault knobs (`latency_ms`, `fail_rate`) are taken but not offered here.
pub(crate) fn request_schema(models: &[kiln_core::catalog::ModelInfo]) -> Value {
    const KNOBS: [&str; 2] = ["latency_ms", "fail_rate"];
    let mut all = Map::new();
    let mut variants = Vec::new();
    let mut names = Vec::new();
    let mut model_fields: Vec<String> = Vec::new();
    for model in models {
        let fields = &model.input_schema["properties"];
        let Some(prompt) = fields.get("prompt") else {
            continue;
        };
        names.push(model.name.clone());
        let side = |name: &str| {
            let f = fields.get(name)?;
            Some((f["minimum"].as_u64()?, f["maximum"].as_u64()?))
        };
        let size = match (side("width"), side("height")) {
            (Some((wl, wh)), Some((hl, hh))) => serde_json::json!({"anyOf": [
                {
                    "type": "string",
                    "pattern": format!("^(?:{}x{}|auto)$", range_pattern(wl, wh), range_pattern(hl, hh)),
                },
                {"type": "null"},
            ]}),
            _ => serde_json::json!({"enum": ["auto", null]}),
        };
        let mut properties = Map::new();
        properties.insert("model".into(), serde_json::json!({"const": model.name}));
        properties.insert("prompt".into(), prompt.clone());
        properties.insert("size".into(), size);
        if let Some(extra) = fields.as_object() {
            for (name, rule) in extra {
                if ["prompt", "width", "height"].contains(&name.as_str())
                    || KNOBS.contains(&name.as_str())
                {
                    continue;
                }
                // null is an absent field, as the model's check takes it.
                let rule = serde_json::json!({"anyOf": [rule, {"type": "null"}]});
                properties.insert(name.clone(), rule);
                all.insert(name.clone(), serde_json::json!({}));
                if !model_fields.contains(name) {
                    model_fields.push(name.clone());
                }
            }
        }
        let required =
            required_besides(model, &["prompt", "width", "height"], &["model", "prompt"]);
        variants.push(serde_json::json!({"properties": properties, "required": required}));
    }
    all.insert("model".into(), serde_json::json!({"type": "string", "enum": names, "description": "A Kiln model that takes a prompt"}));
    all.insert("prompt".into(), serde_json::json!({"type": "string"}));
    all.insert("size".into(), serde_json::json!({"type": ["string", "null"], "description": "WIDTHxHEIGHT within the model's ranges, or auto (the default)"}));
    all.insert("n".into(), serde_json::json!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_IMAGES, "description": "How many images (one job each)"}));
    all.insert(
        "response_format".into(),
        serde_json::json!({"type": ["string", "null"], "enum": ["url", "b64_json", null]}),
    );
    all.insert("stream".into(), serde_json::json!({"type": ["boolean", "null"], "enum": [false, null], "description": "Not offered"}));
    all.insert("partial_images".into(), serde_json::json!({"type": ["integer", "boolean", "null"], "enum": [false, null], "description": "Not offered"}));
    for ignored in IGNORED {
        all.insert(
            (*ignored).into(),
            serde_json::json!({"description": "Taken and not applied"}),
        );
    }
    forbid_others(&mut variants, &model_fields);
    serde_json::json!({
        "type": "object",
        "required": ["model", "prompt"],
        "additionalProperties": false,
        "properties": all,
        "oneOf": variants,
    })
}

/// Each variant refuses the fields of the other models that it does not take (a field listed
/// at the top level for some model is not a field of every model).
fn forbid_others(variants: &mut [Value], model_fields: &[String]) {
    for variant in variants {
        let Some(properties) = variant["properties"].as_object_mut() else {
            continue;
        };
        for field in model_fields {
            properties
                .entry(field.clone())
                .or_insert(Value::Bool(false));
        }
    }
}

/// The model's required input fields the request carries as fields of its own (all but
/// `besides`, which it fills otherwise), after `first`.
fn required_besides(
    model: &kiln_core::catalog::ModelInfo,
    besides: &[&str],
    first: &[&str],
) -> Vec<String> {
    let own = model.input_schema["required"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    first
        .iter()
        .map(|f| (*f).to_owned())
        .chain(
            own.iter()
                .filter_map(Value::as_str)
                .filter(|f| !besides.contains(f))
                .map(str::to_owned),
        )
        .collect()
}

/// The OpenAPI media type of `POST /v1/images/edits`: multipart text parts and the `image`
/// file, one variant per model that takes an image (its image field is the uploaded file; its
/// other fields are parts of their own). Text parts carry no nulls and no streaming options.
pub(crate) fn edit_request_body(models: &[kiln_core::catalog::ModelInfo]) -> Value {
    const KNOBS: [&str; 2] = ["latency_ms", "fail_rate"];
    let mut all = Map::new();
    let mut variants = Vec::new();
    let mut names = Vec::new();
    let mut model_fields: Vec<String> = Vec::new();
    for model in models {
        let Some(image_field) = super::image_field(model) else {
            continue;
        };
        let fields = &model.input_schema["properties"];
        names.push(model.name.clone());
        let mut properties = Map::new();
        properties.insert("model".into(), serde_json::json!({"const": model.name}));
        let prompt = fields
            .get("prompt")
            .cloned()
            .unwrap_or(serde_json::json!({"type": "string"}));
        properties.insert("prompt".into(), prompt);
        if let Some(extra) = fields.as_object() {
            for (name, rule) in extra {
                let skipped = [image_field.as_str(), "prompt", "width", "height"];
                if skipped.contains(&name.as_str()) || KNOBS.contains(&name.as_str()) {
                    continue;
                }
                properties.insert(name.clone(), rule.clone());
                all.insert(name.clone(), serde_json::json!({}));
                if !model_fields.contains(name) {
                    model_fields.push(name.clone());
                }
            }
        }
        let skipped = [image_field.as_str(), "prompt", "width", "height"];
        let required = required_besides(model, &skipped, &["model"]);
        variants.push(serde_json::json!({"properties": properties, "required": required}));
    }
    all.insert("image".into(), serde_json::json!({"type": "string", "format": "binary", "description": "The image to edit"}));
    all.insert("model".into(), serde_json::json!({"type": "string", "enum": names, "description": "A Kiln model that takes an image"}));
    all.insert("prompt".into(), serde_json::json!({"type": "string", "description": "Given to the model where it takes a prompt"}));
    all.insert("size".into(), serde_json::json!({"type": "string", "enum": ["auto"], "description": "The models that take an image keep its size"}));
    all.insert("n".into(), serde_json::json!({"type": "integer", "minimum": 1, "maximum": MAX_IMAGES, "description": "How many images (one job each)"}));
    all.insert(
        "response_format".into(),
        serde_json::json!({"type": "string", "enum": ["url", "b64_json"]}),
    );
    for ignored in IGNORED {
        all.insert(
            (*ignored).into(),
            serde_json::json!({"type": "string", "description": "Taken and not applied"}),
        );
    }
    forbid_others(&mut variants, &model_fields);
    serde_json::json!({
        "schema": {
            "type": "object",
            "required": ["image", "model", "prompt"],
            "additionalProperties": false,
            "properties": all,
            "oneOf": variants,
        },
        "encoding": {"image": {"contentType": "image/png"}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::whole_number;

    fn matches(pattern: &str, text: &str) -> bool {
        // Tried by brute force: every alternative is digits and classes, no nesting.
        let body = pattern.trim_start_matches("(?:").trim_end_matches(')');
        body.split('|')
            .any(|alternative| simple_match(alternative, text))
    }

    /// Matches one alternative of `range_pattern`'s: literal digits, `[a-b]`, `[0-9]{n}`.
    fn simple_match(pattern: &str, text: &str) -> bool {
        let (mut p, mut t) = (pattern.as_bytes(), text.as_bytes());
        while !p.is_empty() {
            let Some((&c, rest)) = t.split_first() else {
                return false;
            };
            if p[0] == b'[' {
                let (low, high) = (p[1], p[3]);
                let mut count = 1;
                let mut after = &p[5..];
                if after.first() == Some(&b'{') {
                    let close = after.iter().position(|&b| b == b'}').unwrap();
                    count = std::str::from_utf8(&after[1..close])
                        .unwrap()
                        .parse()
                        .unwrap();
                    after = &after[close + 1..];
                }
                if t.len() < count || !t[..count].iter().all(|&d| (low..=high).contains(&d)) {
                    return false;
                }
                t = &t[count..];
                p = after;
            } else {
                if p[0] != c {
                    return false;
                }
                p = &p[1..];
                t = rest;
            }
        }
        t.is_empty()
    }

    #[test]
    fn a_range_pattern_takes_exactly_its_numbers() {
        for (min, max) in [(16, 2048), (1, 9), (7, 130), (100, 100), (64, 512)] {
            let pattern = range_pattern(min, max);
            for n in 0..3000u64 {
                assert_eq!(
                    matches(&pattern, &n.to_string()),
                    (min..=max).contains(&n),
                    "{n} against {min}..={max}: {pattern}"
                );
            }
            assert!(
                !matches(&pattern, &format!("0{min}")),
                "no leading zero: {pattern}"
            );
        }
    }

    #[test]
    fn a_size_side_is_digits_without_a_leading_zero() {
        assert_eq!(whole_number("64"), Some(64));
        for bad in ["", "064", "+64", "-1", "6 4", "x"] {
            assert_eq!(whole_number(bad), None, "{bad}");
        }
    }
}
