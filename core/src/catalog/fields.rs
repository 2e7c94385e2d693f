//! The one table of model input rules. Each model's input is a list of `Field`s (a name, a
//! `Rule` with its bounds, whether it is required, its default); `schema` turns a list into the
//! JSON Schema that `GET /v1/models` and the OpenAPI document publish, and `check` holds an input
//! to the same list, field by field, so what is published and what is enforced are one thing.
//! A refusal names the field (`input.width`) and carries a stable code: `missing_field`,
//! `invalid_type`, `out_of_range`, `unknown_field`, or the image source's own.

use super::source::{ImageSource, IMAGE_SOURCE_MAX_CHARS, IMAGE_SOURCE_PATTERN};
use super::InputError;
use crate::routes::{ParamConfig, ParamKind};
use serde_json::{json, Map, Value};

/// What a field takes.
#[derive(Debug, Clone)]
pub enum Rule {
    /// A string of `min` to `max` characters.
    Text { min: usize, max: usize },
    /// A whole number from `min` to `max` (`512.0` counts; `512.5` does not).
    Integer { min: u64, max: u64 },
    /// One of a few whole numbers.
    OneOf(&'static [u64]),
    /// One of a few words.
    Word(&'static [&'static str]),
    /// A number from `min` to `max`.
    Number { min: f64, max: f64 },
    /// An image to fetch: an http(s) URL, a `data:` URI or an earlier output (`ImageSource`).
    Image,
    /// A configured model's own parameter, as its configuration declares it.
    Param(ParamConfig),
}

/// One input field of a model.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub rule: Rule,
    pub required: bool,
    /// What an absent optional field reads as (published as the schema's `default`).
    pub default: Option<Value>,
    pub description: Option<String>,
}

impl Field {
    pub fn required(name: &str, rule: Rule) -> Self {
        Field {
            name: name.to_owned(),
            rule,
            required: true,
            default: None,
            description: None,
        }
    }

    pub fn optional(name: &str, rule: Rule) -> Self {
        Field {
            required: false,
            ..Field::required(name, rule)
        }
    }

    pub fn defaulting_to(mut self, default: impl Into<Value>) -> Self {
        self.default = Some(default.into());
        self
    }

    pub fn described(mut self, description: &str) -> Self {
        self.description = Some(description.to_owned());
        self
    }

    /// This field's JSON Schema.
    fn schema(&self) -> Value {
        let mut schema = match &self.rule {
            Rule::Text { min, max } => {
                json!({"type": "string", "minLength": min, "maxLength": max})
            }
            Rule::Integer { min, max } => {
                json!({"type": "integer", "minimum": min, "maximum": max})
            }
            Rule::OneOf(values) => json!({"type": "integer", "enum": values}),
            Rule::Word(words) => json!({"type": "string", "enum": words}),
            Rule::Number { min, max } => json!({"type": "number", "minimum": min, "maximum": max}),
            // `x-kiln-kind` tells clients (the dashboard's forms, `kiln run name=@file`) that a
            // file may be uploaded for it; validators ignore `x-` keywords.
            Rule::Image => json!({
                "type": "string",
                "x-kiln-kind": "image",
                "description": "an http(s) URL, a base64 data: URI of an image, or an earlier output: its URL or kiln://jobs/{id}/outputs/{n}",
                "pattern": IMAGE_SOURCE_PATTERN,
                "maxLength": IMAGE_SOURCE_MAX_CHARS,
            }),
            Rule::Param(param) => {
                let mut schema = json!({"type": param.kind.as_str()});
                let (min_key, max_key) = match param.kind {
                    ParamKind::String => ("minLength", "maxLength"),
                    _ => ("minimum", "maximum"),
                };
                if let Some(min) = param.minimum {
                    schema[min_key] = min.into();
                }
                if let Some(max) = param.maximum {
                    schema[max_key] = max.into();
                }
                if !param.description.is_empty() {
                    schema["description"] = param.description.clone().into();
                }
                schema
            }
        };
        if let Some(default) = &self.default {
            schema["default"] = default.clone();
        }
        if let Some(description) = &self.description {
            // A field's own note follows what its rule already says (an image's accepted forms).
            schema["description"] = match schema["description"].as_str() {
                Some(rule) => format!("{rule}; {description}").into(),
                None => description.clone().into(),
            };
        }
        schema
    }

    /// The field's value in `input`, held to its rule, into `checked`; an absent optional field
    /// reads as its default (or stays absent).
    fn check(&self, input: &Map<String, Value>, checked: &mut Checked) -> Result<(), InputError> {
        let Some(value) = input.get(&self.name).filter(|v| !v.is_null()) else {
            if self.required {
                return Err(self.refuse("missing_field", "is required".into()));
            }
            if let Some(default) = &self.default {
                checked.values.insert(self.name.clone(), default.clone());
            }
            return Ok(());
        };
        let value = self.value(value, checked)?;
        checked.values.insert(self.name.clone(), value);
        Ok(())
    }

    /// A present value held to the rule, as it is kept (a whole number as an integer).
    fn value(&self, value: &Value, checked: &mut Checked) -> Result<Value, InputError> {
        match &self.rule {
            Rule::Text { min, max } => {
                let text = value
                    .as_str()
                    .ok_or_else(|| self.refuse("invalid_type", "must be a string".into()))?;
                let length = text.chars().count();
                if length < *min || length > *max {
                    return Err(self.refuse(
                        "out_of_range",
                        format!("must be {min} to {max} characters long"),
                    ));
                }
            }
            Rule::Integer { min, max } => {
                let n = self.whole(value, &format!("between {min} and {max}"))?;
                if n < *min || n > *max {
                    return Err(
                        self.refuse("out_of_range", format!("must be between {min} and {max}"))
                    );
                }
                return Ok(n.into());
            }
            Rule::OneOf(values) => {
                let listed = values
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ");
                let n = self.whole(value, &listed)?;
                if !values.contains(&n) {
                    return Err(self.refuse("out_of_range", format!("must be {listed}")));
                }
                return Ok(n.into());
            }
            Rule::Word(words) => {
                let listed = words.join(" or ");
                match value.as_str() {
                    Some(word) if words.contains(&word) => {}
                    Some(_) => return Err(self.refuse("out_of_range", format!("must be {listed}"))),
                    None => return Err(self.refuse("invalid_type", format!("must be {listed}"))),
                }
            }
            Rule::Number { min, max } => {
                let n = value
                    .as_f64()
                    .ok_or_else(|| self.refuse("invalid_type", "must be a number".into()))?;
                if !(*min..=*max).contains(&n) {
                    return Err(
                        self.refuse("out_of_range", format!("must be between {min} and {max}"))
                    );
                }
            }
            Rule::Image => {
                let text = value.as_str().ok_or_else(|| {
                    self.refuse("invalid_type", "must be a URL or a data: URI".into())
                })?;
                let source = ImageSource::parse(text).map_err(|(code, why)| {
                    InputError::new(code, self.path(), format!("{}: {why}", self.path()))
                })?;
                checked.images.push((self.name.clone(), source));
            }
            Rule::Param(param) => self.check_param(param, value)?,
        }
        Ok(value.clone())
    }

    fn check_param(&self, param: &ParamConfig, value: &Value) -> Result<(), InputError> {
        let fits = match param.kind {
            ParamKind::String => value.is_string(),
            ParamKind::Boolean => value.is_boolean(),
            ParamKind::Number => value.is_number(),
            ParamKind::Integer => value.as_f64().is_some_and(|f| f.fract() == 0.0),
        };
        if !fits {
            return Err(self.refuse(
                "invalid_type",
                format!("must be of type {}", param.kind.as_str()),
            ));
        }
        let measure = match value {
            Value::String(s) => Some(s.chars().count() as f64),
            other => other.as_f64(),
        };
        let below = param.minimum.zip(measure).is_some_and(|(min, m)| m < min);
        let above = param.maximum.zip(measure).is_some_and(|(max, m)| m > max);
        if below || above {
            let bounds = match (param.minimum, param.maximum) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => unreachable!("a bound was crossed"),
            };
            let unit = if value.is_string() {
                " characters long"
            } else {
                ""
            };
            return Err(self.refuse("out_of_range", format!("must be {bounds}{unit}")));
        }
        Ok(())
    }

    /// A whole, non-negative number; `range` says what it must be, for a negative one.
    fn whole(&self, value: &Value, range: &str) -> Result<u64, InputError> {
        let n = match value {
            // Accept 512.0 but not 512.5. `u64::MAX as f64` is 2^64, one past the largest
            // `u64`: a float that large would saturate to `u64::MAX` and pass the range check.
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        n.ok_or_else(|| {
            let whole = value.as_f64().is_some_and(|f| f.fract() == 0.0);
            if whole
                && value
                    .as_f64()
                    .is_some_and(|f| f < 0.0 || f >= u64::MAX as f64)
            {
                self.refuse("out_of_range", format!("must be {range}"))
            } else {
                self.refuse("invalid_type", "must be a whole number".into())
            }
        })
    }

    fn path(&self) -> String {
        format!("input.{}", self.name)
    }

    fn refuse(&self, code: &'static str, what: String) -> InputError {
        InputError::new(code, self.path(), format!("{} {what}", self.path()))
    }
}

/// The JSON Schema of an input made of `fields`: nothing else is taken.
pub fn schema(fields: &[Field]) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name.clone(), f.schema()))
        .collect();
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name.as_str())
        .collect();
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

/// `input` held to `fields`, in their order (the first refusal is the answer): each field's
/// value, defaults filled in. A field outside the list is refused (a typo like `widht` must not
/// silently fall back to a default), except the names in `unlisted`.
pub fn check(
    fields: &[Field],
    input: &Map<String, Value>,
    unlisted: &[&str],
) -> Result<Checked, InputError> {
    let mut checked = Checked::default();
    for field in fields {
        field.check(input, &mut checked)?;
    }
    let known = |name: &str| fields.iter().any(|f| f.name == name) || unlisted.contains(&name);
    if let Some(extra) = input.keys().find(|k| !known(k)) {
        return Err(InputError::new(
            "unknown_field",
            format!("input.{extra}"),
            format!("input.{extra} is not an input of this model"),
        ));
    }
    Ok(checked)
}

/// An input that passed its fields' rules, read back typed. Each read is of a field the rules
/// have already held (a missing required field or a wrong type was refused), so the reads are
/// total: an absent optional field reads as `None`.
#[derive(Default)]
pub struct Checked {
    values: Map<String, Value>,
    /// The image fields, parsed once (a `data:` URI is decoded here, not again).
    images: Vec<(String, ImageSource)>,
}

impl Checked {
    pub fn text(&self, name: &str) -> String {
        self.values
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    pub fn whole(&self, name: &str) -> Option<u64> {
        self.values.get(name).and_then(Value::as_u64)
    }

    /// A field whose rule bounds it within `u32` (every side, scale, count and rate here).
    pub fn whole_u32(&self, name: &str) -> u32 {
        self.whole(name)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn number(&self, name: &str) -> Option<f64> {
        self.values.get(name).and_then(Value::as_f64)
    }

    pub fn image(&mut self, name: &str) -> ImageSource {
        let at = self
            .images
            .iter()
            .position(|(n, _)| n == name)
            .expect("an image field is required, so its rule parsed it");
        self.images.swap_remove(at).1
    }

    /// The checked values of `names` (a configured model's own parameters), as given.
    pub fn subset<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Map<String, Value> {
        names
            .into_iter()
            .filter_map(|n| self.values.get(n).map(|v| (n.to_owned(), v.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Catalog;
    use serde_json::{json, Value};

    /// Every bound a model publishes is the one its check enforces: the published extremes pass
    /// and one past them is refused, for every integer field of every demo model.
    #[test]
    fn the_published_bounds_are_the_enforced_ones() {
        let catalog = Catalog::default();
        for model in catalog.models() {
            let fields = catalog.fields(&model.name).unwrap();
            let properties = model.input_schema["properties"].as_object().unwrap();
            // Compared as sets: the map's order depends on serde_json's features in the build.
            let mut names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            let mut published: Vec<&str> = properties.keys().map(String::as_str).collect();
            names.sort_unstable();
            published.sort_unstable();
            assert_eq!(published, names, "{}", model.name);
            let valid = valid_input(&model.name);
            for (name, schema) in properties {
                let (Some(min), Some(max)) =
                    (schema["minimum"].as_u64(), schema["maximum"].as_u64())
                else {
                    continue;
                };
                if schema["type"] != "integer" {
                    continue;
                }
                let with = |n: Value| {
                    let mut input = valid.clone();
                    input[name] = n;
                    catalog.validate(&model.name, &input)
                };
                assert!(with(json!(min)).is_ok(), "{} {name} = {min}", model.name);
                assert!(with(json!(max)).is_ok(), "{} {name} = {max}", model.name);
                if let Some(above) = max.checked_add(1) {
                    let refused = with(json!(above)).unwrap_err();
                    assert_eq!(refused.code, "out_of_range", "{} {name}", model.name);
                }
                if min > 0 {
                    let refused = with(json!(min - 1)).unwrap_err();
                    assert_eq!(refused.code, "out_of_range", "{} {name}", model.name);
                }
            }
        }
    }

    /// An absent optional field reads as the default the schema publishes.
    #[test]
    fn the_published_defaults_are_the_applied_ones() {
        let catalog = Catalog::default();
        let parsed = catalog
            .validate(
                super::super::DEMO_VIDEO,
                &valid_input(super::super::DEMO_VIDEO),
            )
            .unwrap();
        let super::super::ModelInput::DemoVideo(video) = parsed else {
            panic!("a video input");
        };
        let schema = &catalog.models()[2].input_schema["properties"];
        assert_eq!(json!(video.seconds), schema["seconds"]["default"]);
        assert_eq!(json!(video.fps), schema["fps"]["default"]);
    }

    fn valid_input(model: &str) -> Value {
        match model {
            super::super::DEMO_IMAGE => json!({"prompt": "a kiln", "width": 64, "height": 64}),
            super::super::DEMO_UPSCALE => json!({"image": "https://example.com/a.png", "scale": 2}),
            _ => json!({"image": "https://example.com/a.png"}),
        }
    }
}
