//! The model catalog: which model names exist and what input each accepts. Validation lives here,
//! in the domain, so the api can refuse bad input before anything is written (invariant 7) and the
//! worker parses exactly the same typed input it was validated as. Errors name the field at fault
//! with a JSON-pointer-like path (`input.width`), and carry a stable code.
//!
//! The built-in models are Kiln's demo generators: real, deterministic image work that needs no
//! GPU, so the embedded default is useful out of the box and tests exercise real bytes.

mod source;

pub use source::{
    parse_http_url, ImageSource, HTTP_URL_PATTERN, IMAGE_SOURCE_MAX_CHARS, IMAGE_SOURCE_PATTERN,
};

use serde::Serialize;
use serde_json::{json, Map, Value};

pub const DEMO_IMAGE: &str = "demo/image";
pub const DEMO_UPSCALE: &str = "demo/upscale";
pub const DEMO_VIDEO: &str = "demo/video";

/// Largest side a demo image may have. Generous enough for real use, small enough that one job
/// cannot take the embedded process's memory.
pub const MAX_SIDE: u32 = 2048;
pub const MIN_SIDE: u32 = 16;
pub const MAX_LATENCY_MS: u64 = 600_000;
pub use source::{MAX_DATA_URI_BYTES, MAX_MEDIA_TYPE_BYTES};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Stable machine-readable code, e.g. `unknown_model`, `missing_field`, `out_of_range`.
    pub code: &'static str,
    /// The field at fault, as a dotted path from the request body (`input.width`).
    pub field: String,
    pub message: String,
}

impl InputError {
    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Knobs every demo model takes, so demos and tests can exercise slow jobs, retries and crashes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoKnobs {
    pub latency_ms: u64,
    pub fail_rate: f64,
    /// Abort the whole process while running (only when the catalog allows it): the fault tests'
    /// poison job.
    pub crash: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoImageInput {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    /// Absent: derived from the prompt, so the same input always gives the same bytes.
    pub seed: Option<u64>,
    pub knobs: DemoKnobs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoUpscaleInput {
    pub image: ImageSource,
    pub scale: u32,
    pub knobs: DemoKnobs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoVideoInput {
    pub image: ImageSource,
    pub seconds: u32,
    pub fps: u32,
    pub knobs: DemoKnobs,
}

/// The input of a configured text-to-image model, whatever its routes.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToImageInput {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub seed: Option<u64>,
    /// The model's own parameters (declared in its configuration), checked and passed through.
    pub params: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    TextToImage(TextToImageInput),
    DemoImage(DemoImageInput),
    DemoUpscale(DemoUpscaleInput),
    DemoVideo(DemoVideoInput),
}

impl ModelInput {
    pub fn knobs(&self) -> &DemoKnobs {
        static NONE: DemoKnobs = DemoKnobs {
            latency_ms: 0,
            fail_rate: 0.0,
            crash: false,
        };
        match self {
            ModelInput::TextToImage(_) => &NONE,
            ModelInput::DemoImage(i) => &i.knobs,
            ModelInput::DemoUpscale(i) => &i.knobs,
            ModelInput::DemoVideo(i) => &i.knobs,
        }
    }

    /// Earlier outputs the input refers to (`kiln://jobs/{id}/outputs/{n}`), with their field.
    pub fn output_references(&self) -> Vec<(&'static str, crate::JobId, u32)> {
        let image = match self {
            ModelInput::TextToImage(_) | ModelInput::DemoImage(_) => None,
            ModelInput::DemoUpscale(i) => Some(&i.image),
            ModelInput::DemoVideo(i) => Some(&i.image),
        };
        match image {
            Some(ImageSource::Output { job, index }) => vec![("input.image", *job, *index)],
            _ => vec![],
        }
    }

    /// URLs the worker will fetch; the api checks them against the SSRF policy at submit.
    pub fn fetched_urls(&self) -> Vec<(&'static str, &url::Url)> {
        let image = match self {
            ModelInput::TextToImage(_) | ModelInput::DemoImage(_) => None,
            ModelInput::DemoUpscale(i) => Some(&i.image),
            ModelInput::DemoVideo(i) => Some(&i.image),
        };
        match image {
            Some(ImageSource::Url(u)) => vec![("input.image", u)],
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub description: String,
    pub output: &'static str,
    pub input_schema: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    allow_crash: bool,
    configured: Vec<crate::routes::ModelConfig>,
}

impl Catalog {
    /// `allow_crash` enables the `crash` knob; off unless a test or an operator turns it on.
    pub fn new(allow_crash: bool) -> Self {
        Catalog {
            allow_crash,
            configured: vec![],
        }
    }

    /// Adds the configured models (validated with `routes::validate`).
    pub fn with_models(mut self, models: Vec<crate::routes::ModelConfig>) -> Self {
        self.configured = models;
        self
    }

    /// The route chain of a model: configured, or the one implicit demo route of a demo model.
    pub fn routes(&self, model: &str) -> Vec<crate::routes::RouteConfig> {
        match self.configured.iter().find(|m| m.name == model) {
            Some(m) => m.routes.clone(),
            None => vec![crate::routes::RouteConfig {
                provider: crate::routes::DEMO_PROVIDER.into(),
                model: model.to_owned(),
                ..Default::default()
            }],
        }
    }

    /// Whether an upstream's refusal of a job's input moves it to the next route
    /// (`fallback_on_refusal`) instead of failing it.
    pub fn falls_back_on_refusal(&self, model: &str) -> bool {
        self.configured
            .iter()
            .any(|m| m.name == model && m.fallback_on_refusal)
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        let knobs = json!({
            "latency_ms": {"type": "integer", "minimum": 0, "maximum": MAX_LATENCY_MS, "description": "extra time the generator takes"},
            "fail_rate": {"type": "number", "minimum": 0, "maximum": 1, "description": "probability that an attempt fails transiently"},
        });
        let with_knobs = |mut props: Value| {
            props
                .as_object_mut()
                .expect("schema properties are an object")
                .extend(knobs.as_object().cloned().unwrap_or_default());
            props
        };
        let image_ref = json!({
            "type": "string",
            "description": "an http(s) URL, a base64 data: URI of an image, or an earlier output: its URL or kiln://jobs/{id}/outputs/{n}",
            "pattern": IMAGE_SOURCE_PATTERN,
            "maxLength": IMAGE_SOURCE_MAX_CHARS,
        });
        let configured = self.configured.iter().map(|m| {
            let mut properties = json!({
                "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
                "width": {"type": "integer", "minimum": MIN_SIDE, "maximum": 4096, "default": 1024},
                "height": {"type": "integer", "minimum": MIN_SIDE, "maximum": 4096, "default": 1024},
                "seed": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            });
            let props = properties.as_object_mut().expect("an object");
            for p in &m.params {
                props.insert(p.name.clone(), p.json_schema());
            }
            ModelInfo {
                name: m.name.clone(),
                description: m.description.clone(),
                output: "image/png",
                input_schema: json!({
                    "type": "object",
                    "required": ["prompt"],
                    "properties": properties,
                    "additionalProperties": false,
                }),
            }
        });
        let mut all = vec![
            ModelInfo {
                name: DEMO_IMAGE.into(),
                description: "Draws a deterministic PNG from a prompt and a seed.".into(),
                output: "image/png",
                input_schema: json!({
                    "type": "object",
                    "required": ["prompt", "width", "height"],
                    "properties": with_knobs(json!({
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "width": {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE},
                        "height": {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE},
                        "seed": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
                    })),
                    "additionalProperties": false,
                }),
            },
            ModelInfo {
                name: DEMO_UPSCALE.into(),
                description: "Resizes an image by 2x or 4x.".into(),
                output: "image/png",
                input_schema: json!({
                    "type": "object",
                    "required": ["image", "scale"],
                    "properties": with_knobs(json!({
                        "image": image_ref,
                        "scale": {"type": "integer", "enum": [2, 4]},
                    })),
                    "additionalProperties": false,
                }),
            },
            ModelInfo {
                name: DEMO_VIDEO.into(),
                description: "Makes a short zoom clip (animated GIF) from an image.".into(),
                output: "image/gif",
                input_schema: json!({
                    "type": "object",
                    "required": ["image"],
                    "properties": with_knobs(json!({
                        "image": image_ref,
                        "seconds": {"type": "integer", "minimum": 1, "maximum": 10, "default": 2},
                        "fps": {"type": "integer", "minimum": 1, "maximum": 30, "default": 12},
                    })),
                    "additionalProperties": false,
                }),
            },
        ];
        all.extend(configured);
        all
    }

    /// Checks `model` and `input` of a submit; on success returns the typed input.
    pub fn validate(&self, model: &str, input: &Value) -> Result<ModelInput, InputError> {
        let obj = match input {
            Value::Object(o) => o,
            _ => {
                return Err(InputError::new(
                    "invalid_type",
                    "input",
                    "input must be a JSON object",
                ))
            }
        };
        let mut fields = Fields::new(obj);
        let parsed = match model {
            DEMO_IMAGE => ModelInput::DemoImage(DemoImageInput {
                prompt: fields.string("prompt", 1, 2000)?,
                width: fields.required_u32("width", MIN_SIDE, MAX_SIDE)?,
                height: fields.required_u32("height", MIN_SIDE, MAX_SIDE)?,
                seed: fields.optional_u64("seed", 0, u64::MAX)?,
                knobs: self.knobs(&mut fields)?,
            }),
            DEMO_UPSCALE => ModelInput::DemoUpscale(DemoUpscaleInput {
                image: fields.image("image")?,
                scale: {
                    let scale = fields.required_u32("scale", 2, 4)?;
                    if scale == 3 {
                        return Err(InputError::new(
                            "out_of_range",
                            "input.scale",
                            "scale must be 2 or 4",
                        ));
                    }
                    scale
                },
                knobs: self.knobs(&mut fields)?,
            }),
            DEMO_VIDEO => ModelInput::DemoVideo(DemoVideoInput {
                image: fields.image("image")?,
                seconds: fields.optional_u64("seconds", 1, 10)?.unwrap_or(2) as u32,
                fps: fields.optional_u64("fps", 1, 30)?.unwrap_or(12) as u32,
                knobs: self.knobs(&mut fields)?,
            }),
            configured if self.configured.iter().any(|m| m.name == configured) => {
                let config = self
                    .configured
                    .iter()
                    .find(|m| m.name == configured)
                    .expect("just found");
                ModelInput::TextToImage(TextToImageInput {
                    prompt: fields.string("prompt", 1, 4000)?,
                    width: fields
                        .optional_u64("width", MIN_SIDE as u64, 4096)?
                        .unwrap_or(1024) as u32,
                    height: fields
                        .optional_u64("height", MIN_SIDE as u64, 4096)?
                        .unwrap_or(1024) as u32,
                    seed: fields.optional_u64("seed", 0, u64::MAX)?,
                    params: fields.params(&config.params)?,
                })
            }
            _ => {
                return Err(InputError::new(
                    "unknown_model",
                    "model",
                    format!("there is no model named '{model}'; GET /v1/models lists them"),
                ))
            }
        };
        fields.finish()?;
        Ok(parsed)
    }

    fn knobs(&self, fields: &mut Fields<'_>) -> Result<DemoKnobs, InputError> {
        let knobs = DemoKnobs {
            latency_ms: fields
                .optional_u64("latency_ms", 0, MAX_LATENCY_MS)?
                .unwrap_or(0),
            fail_rate: fields.optional_f64("fail_rate", 0.0, 1.0)?.unwrap_or(0.0),
            crash: if self.allow_crash {
                fields.optional_bool("crash")?.unwrap_or(false)
            } else {
                false
            },
        };
        Ok(knobs)
    }
}

/// Reads fields from an input object, remembering which were used so unknown ones can be refused.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    used: Vec<String>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Fields { obj, used: vec![] }
    }

    fn path(name: &str) -> String {
        format!("input.{name}")
    }

    fn get(&mut self, name: &str) -> Option<&'a Value> {
        self.used.push(name.to_owned());
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn require(&mut self, name: &'static str) -> Result<&'a Value, InputError> {
        self.get(name).ok_or_else(|| {
            InputError::new(
                "missing_field",
                Self::path(name),
                format!("input.{name} is required"),
            )
        })
    }

    fn string(&mut self, name: &'static str, min: usize, max: usize) -> Result<String, InputError> {
        let v = self.require(name)?;
        let s = v.as_str().ok_or_else(|| {
            InputError::new(
                "invalid_type",
                Self::path(name),
                format!("input.{name} must be a string"),
            )
        })?;
        let len = s.chars().count();
        if len < min || len > max {
            return Err(InputError::new(
                "out_of_range",
                Self::path(name),
                format!("input.{name} must be {min} to {max} characters long"),
            ));
        }
        Ok(s.to_owned())
    }

    fn integer(name: &str, v: &Value, min: u64, max: u64) -> Result<u64, InputError> {
        let n = match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                // Accept 512.0 but not 512.5 or negatives.
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        let n = n.ok_or_else(|| {
            let negative = v.as_i64().is_some_and(|i| i < 0);
            if negative {
                InputError::new(
                    "out_of_range",
                    Self::path(name),
                    format!("input.{name} must be between {min} and {max}"),
                )
            } else {
                InputError::new(
                    "invalid_type",
                    Self::path(name),
                    format!("input.{name} must be a whole number"),
                )
            }
        })?;
        if n < min || n > max {
            return Err(InputError::new(
                "out_of_range",
                Self::path(name),
                format!("input.{name} must be between {min} and {max}"),
            ));
        }
        Ok(n)
    }

    fn required_u32(&mut self, name: &'static str, min: u32, max: u32) -> Result<u32, InputError> {
        let v = self.require(name)?;
        Self::integer(name, v, min as u64, max as u64).map(|n| n as u32)
    }

    fn optional_u64(
        &mut self,
        name: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, InputError> {
        self.get(name)
            .map(|v| Self::integer(name, v, min, max))
            .transpose()
    }

    fn optional_f64(
        &mut self,
        name: &'static str,
        min: f64,
        max: f64,
    ) -> Result<Option<f64>, InputError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let f = v.as_f64().ok_or_else(|| {
            InputError::new(
                "invalid_type",
                Self::path(name),
                format!("input.{name} must be a number"),
            )
        })?;
        if !(min..=max).contains(&f) {
            return Err(InputError::new(
                "out_of_range",
                Self::path(name),
                format!("input.{name} must be between {min} and {max}"),
            ));
        }
        Ok(Some(f))
    }

    /// A configured model's declared parameters: each optional, each checked against its type
    /// and bounds, passed on as given.
    fn params(
        &mut self,
        declared: &[crate::routes::ParamConfig],
    ) -> Result<Map<String, Value>, InputError> {
        use crate::routes::ParamKind;
        let mut params = Map::new();
        for p in declared {
            let Some(v) = self.get(&p.name) else { continue };
            let path = Self::path(&p.name);
            let fits = match p.kind {
                ParamKind::String => v.is_string(),
                ParamKind::Boolean => v.is_boolean(),
                ParamKind::Number => v.is_number(),
                ParamKind::Integer => v.as_f64().is_some_and(|f| f.fract() == 0.0),
            };
            if !fits {
                return Err(InputError::new(
                    "invalid_type",
                    path,
                    format!("input.{} must be of type {}", p.name, p.kind.as_str()),
                ));
            }
            let measure = match v {
                Value::String(s) => Some(s.chars().count() as f64),
                other => other.as_f64(),
            };
            let below = p.minimum.zip(measure).is_some_and(|(min, m)| m < min);
            let above = p.maximum.zip(measure).is_some_and(|(max, m)| m > max);
            if below || above {
                let bounds = match (p.minimum, p.maximum) {
                    (Some(a), Some(b)) => format!("between {a} and {b}"),
                    (Some(a), None) => format!("at least {a}"),
                    (None, Some(b)) => format!("at most {b}"),
                    (None, None) => unreachable!("a bound was crossed"),
                };
                let what = if v.is_string() {
                    " characters long"
                } else {
                    ""
                };
                return Err(InputError::new(
                    "out_of_range",
                    path,
                    format!("input.{} must be {bounds}{what}", p.name),
                ));
            }
            params.insert(p.name.clone(), v.clone());
        }
        Ok(params)
    }

    fn optional_bool(&mut self, name: &'static str) -> Result<Option<bool>, InputError> {
        self.get(name)
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    InputError::new(
                        "invalid_type",
                        Self::path(name),
                        format!("input.{name} must be true or false"),
                    )
                })
            })
            .transpose()
    }

    fn image(&mut self, name: &'static str) -> Result<ImageSource, InputError> {
        let v = self.require(name)?;
        let text = v.as_str().ok_or_else(|| {
            InputError::new(
                "invalid_type",
                Self::path(name),
                format!("input.{name} must be a URL or a data: URI"),
            )
        })?;
        ImageSource::parse(text).map_err(|(code, why)| {
            InputError::new(code, Self::path(name), format!("input.{name}: {why}"))
        })
    }

    /// Unknown fields are refused: a typo like `widht` should not silently fall back to a default.
    fn finish(self) -> Result<(), InputError> {
        let allowed: Vec<&str> = self
            .used
            .iter()
            .map(String::as_str)
            .chain(["crash"])
            .collect();
        if let Some(extra) = self.obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(InputError::new(
                "unknown_field",
                Self::path(extra),
                format!("input.{extra} is not an input of this model"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(input: Value) -> Result<ModelInput, InputError> {
        Catalog::default().validate(DEMO_IMAGE, &input)
    }

    #[test]
    fn a_good_image_input_parses() {
        let parsed =
            image(json!({"prompt": "a kiln", "width": 64, "height": 32, "seed": 7})).unwrap();
        match parsed {
            ModelInput::DemoImage(i) => {
                assert_eq!((i.width, i.height, i.seed), (64, 32, Some(7)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_and_a_stable_code() {
        let cases = [
            (
                json!({"width": 64, "height": 64}),
                "missing_field",
                "input.prompt",
            ),
            (
                json!({"prompt": "x", "width": 0, "height": 64}),
                "out_of_range",
                "input.width",
            ),
            (
                json!({"prompt": "x", "width": 100000, "height": 64}),
                "out_of_range",
                "input.width",
            ),
            (
                json!({"prompt": "x", "width": "wide", "height": 64}),
                "invalid_type",
                "input.width",
            ),
            (
                json!({"prompt": "x", "width": -5, "height": 64}),
                "out_of_range",
                "input.width",
            ),
            (
                json!({"prompt": 5, "width": 64, "height": 64}),
                "invalid_type",
                "input.prompt",
            ),
            (
                json!({"prompt": "x", "width": 64, "height": 64, "widht": 1}),
                "unknown_field",
                "input.widht",
            ),
            (
                json!({"prompt": "x", "width": 64, "height": 64, "fail_rate": 2}),
                "out_of_range",
                "input.fail_rate",
            ),
        ];
        for (input, code, field) in cases {
            let err = image(input.clone()).unwrap_err();
            assert_eq!((err.code, err.field.as_str()), (code, field), "{input}");
        }
    }

    #[test]
    fn unknown_models_and_non_objects_are_refused() {
        let err = Catalog::default()
            .validate("nope/model", &json!({}))
            .unwrap_err();
        assert_eq!((err.code, err.field.as_str()), ("unknown_model", "model"));
        let err = Catalog::default()
            .validate(DEMO_IMAGE, &json!([1]))
            .unwrap_err();
        assert_eq!((err.code, err.field.as_str()), ("invalid_type", "input"));
    }

    #[test]
    fn image_sources_are_checked() {
        let cat = Catalog::default();
        let ok = cat
            .validate(
                DEMO_UPSCALE,
                &json!({"image": "data:image/png;base64,iVBORw0KGgo=", "scale": 2}),
            )
            .unwrap();
        assert!(matches!(
            ok,
            ModelInput::DemoUpscale(DemoUpscaleInput {
                image: ImageSource::Inline { .. },
                ..
            })
        ));
        for (image, code) in [
            ("ftp://example.com/a.png", "invalid_url"),
            ("not a url", "invalid_url"),
            ("data:text/plain;base64,aGk=", "invalid_data_uri"),
            ("data:image/png;base64,!!!", "invalid_data_uri"),
        ] {
            let err = cat
                .validate(DEMO_UPSCALE, &json!({"image": image, "scale": 2}))
                .unwrap_err();
            assert_eq!(err.code, code, "{image}");
        }
        // A media type long enough to smuggle data past the elision is refused.
        let long_type = format!("data:image/{};base64,iVBORw0KGgo=", "a".repeat(200));
        let err = cat
            .validate(DEMO_UPSCALE, &json!({"image": long_type, "scale": 2}))
            .unwrap_err();
        assert_eq!(err.code, "invalid_data_uri");
        let err = cat
            .validate(
                DEMO_UPSCALE,
                &json!({"image": "https://example.com/a.png", "scale": 3}),
            )
            .unwrap_err();
        assert_eq!(err.field, "input.scale");
    }

    #[test]
    fn the_crash_knob_only_works_when_allowed() {
        let input = json!({"prompt": "x", "width": 64, "height": 64, "crash": true});
        let off = Catalog::new(false).validate(DEMO_IMAGE, &input).unwrap();
        assert!(!off.knobs().crash);
        let on = Catalog::new(true).validate(DEMO_IMAGE, &input).unwrap();
        assert!(on.knobs().crash);
    }
}
