//! The model catalog: which model names exist and what input each accepts. Validation lives here,
//! in the domain, so the api can refuse bad input before anything is written (invariant 7) and the
//! worker parses exactly the same typed input it was validated as. Errors name the field at fault
//! with a JSON-pointer-like path (`input.width`), and carry a stable code.
//!
//! The built-in models are Kiln's demo generators: real, deterministic image work that needs no
//! GPU, so the embedded default is useful out of the box and tests exercise real bytes.

mod fields;
mod source;

pub use fields::{Field, Rule};

pub use source::{
    parse_http_url, ImageSource, HTTP_URL_PATTERN, IMAGE_SOURCE_MAX_CHARS, IMAGE_SOURCE_PATTERN,
};

use serde::Serialize;
use serde_json::{Map, Value};

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
    pub format: VideoFormat,
    pub knobs: DemoKnobs,
}

/// What `demo/video` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// H.264 in MP4: exact frame timing, any size the input has.
    Mp4,
    /// An animated GIF, for places that play nothing else.
    Gif,
}

/// The largest side of an MP4 clip: its frames are the input's size, and a minute of CPU for a
/// 2048-pixel, 300-frame demo clip is more than a demo should take.
pub const MAX_MP4_SIDE: u32 = 1024;
/// The largest side of a GIF clip: GIF's palette encoding costs far more per pixel than H.264.
pub const MAX_GIF_SIDE: u32 = 512;

const VIDEO_IMAGE_NOTE: &str = "the first frame; the clip has its size (rounded down to even \
    sides), at most 1024 px a side for mp4 and 512 for gif: a larger image fails the job with \
    input_too_large";
const VIDEO_FORMAT_NOTE: &str = "mp4 (H.264) by default; gif for an input at most 512 px a \
    side. A gif's frame delays are whole hundredths of a second, so at a rate that does not \
    divide 100 they alternate (12 fps: 8, 8 and 9 cs) and the clip still lasts exactly `seconds`";

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

// Also the wire view of `GET /v1/models` (published as `Model`).
/// A model: its name, what it makes and the JSON Schema of its input.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Model)]
pub struct ModelInfo {
    pub name: String,
    pub description: String,
    /// The media type family of its output.
    pub output: &'static str,
    /// JSON Schema of its `input`.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    allow_crash: bool,
    configured: Vec<crate::routes::ModelConfig>,
    /// The most `latency_ms` a demo input may ask for; `MAX_LATENCY_MS` when unset.
    max_latency_ms: Option<u64>,
}

impl Catalog {
    /// `allow_crash` enables the `crash` knob; off unless a test or an operator turns it on.
    pub fn new(allow_crash: bool) -> Self {
        Catalog {
            allow_crash,
            configured: vec![],
            max_latency_ms: None,
        }
    }

    /// Caps the demo models' `latency_ms` knob below `MAX_LATENCY_MS` (`demo.max_latency`): a
    /// public demo deployment, or a fuzzer, cannot then hold every worker slot for minutes.
    pub fn with_max_latency(mut self, max: std::time::Duration) -> Self {
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self.max_latency_ms = Some(ms.min(MAX_LATENCY_MS));
        self
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

    /// The input rules of `model`, or `None` for a model this catalog does not have: the one
    /// table that both the published schema (`models`) and the check (`validate`) read.
    pub fn fields(&self, model: &str) -> Option<Vec<Field>> {
        let side = |name: &str| {
            Field::required(
                name,
                Rule::Integer {
                    min: MIN_SIDE.into(),
                    max: MAX_SIDE.into(),
                },
            )
        };
        let seed = || {
            Field::optional(
                "seed",
                Rule::Integer {
                    min: 0,
                    max: u64::MAX,
                },
            )
        };
        let mut fields = match model {
            DEMO_IMAGE => vec![
                Field::required("prompt", Rule::Text { min: 1, max: 2000 }),
                side("width"),
                side("height"),
                seed(),
            ],
            DEMO_UPSCALE => vec![
                Field::required("image", Rule::Image),
                Field::required("scale", Rule::OneOf(&[2, 4])),
            ],
            DEMO_VIDEO => vec![
                Field::required("image", Rule::Image).described(VIDEO_IMAGE_NOTE),
                Field::optional("seconds", Rule::Integer { min: 1, max: 10 }).defaulting_to(2),
                Field::optional("fps", Rule::Integer { min: 1, max: 30 }).defaulting_to(12),
                Field::optional("format", Rule::Word(&["mp4", "gif"]))
                    .defaulting_to("mp4")
                    .described(VIDEO_FORMAT_NOTE),
            ],
            configured => {
                let config = self.configured.iter().find(|m| m.name == configured)?;
                let side = |name: &str| {
                    Field::optional(
                        name,
                        Rule::Integer {
                            min: MIN_SIDE.into(),
                            max: 4096,
                        },
                    )
                    .defaulting_to(1024)
                };
                let mut fields = vec![
                    Field::required("prompt", Rule::Text { min: 1, max: 4000 }),
                    side("width"),
                    side("height"),
                    seed(),
                ];
                fields.extend(
                    config
                        .params
                        .iter()
                        .map(|p| Field::optional(&p.name, Rule::Param(p.clone()))),
                );
                return Some(fields);
            }
        };
        // Every demo model takes the knobs that let demos and tests make slow or flaky jobs.
        fields.extend([
            Field::optional(
                "latency_ms",
                Rule::Integer {
                    min: 0,
                    max: self.max_latency_ms.unwrap_or(MAX_LATENCY_MS),
                },
            )
            .described("extra time the generator takes"),
            Field::optional("fail_rate", Rule::Number { min: 0.0, max: 1.0 })
                .described("probability that an attempt fails transiently"),
        ]);
        Some(fields)
    }

    /// One model's published info, built alone (`models` builds every model's schema).
    pub fn model(&self, name: &str) -> Option<ModelInfo> {
        self.models_named(|n| n == name).into_iter().next()
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        self.models_named(|_| true)
    }

    /// The models whose names `wanted` takes, each with its schema built.
    fn models_named(&self, wanted: impl Fn(&str) -> bool) -> Vec<ModelInfo> {
        let demos = [
            (
                DEMO_IMAGE,
                "Draws a deterministic PNG from a prompt and a seed.",
                "image/png",
            ),
            (DEMO_UPSCALE, "Resizes an image by 2x or 4x.", "image/png"),
            (
                DEMO_VIDEO,
                "Makes a short zoom clip from an image: H.264 in MP4 at the image's size, or an animated GIF.",
                "video/mp4",
            ),
        ];
        let demos = demos
            .into_iter()
            .map(|(name, description, output)| (name.to_owned(), description.to_owned(), output));
        let configured = self
            .configured
            .iter()
            .map(|m| (m.name.clone(), m.description.clone(), "image/png"));
        demos
            .chain(configured)
            .filter(|(name, _, _)| wanted(name))
            .map(|(name, description, output)| ModelInfo {
                input_schema: fields::schema(&self.fields(&name).expect("a listed model")),
                name,
                description,
                output,
            })
            .collect()
    }

    /// Checks `model` and `input` of a submit; on success returns the typed input.
    pub fn validate(&self, model: &str, input: &Value) -> Result<ModelInput, InputError> {
        let Value::Object(input) = input else {
            return Err(InputError::new(
                "invalid_type",
                "input",
                "input must be a JSON object",
            ));
        };
        let fields = self.fields(model).ok_or_else(|| {
            InputError::new(
                "unknown_model",
                "model",
                format!("there is no model named '{model}'; GET /v1/models lists them"),
            )
        })?;
        // `crash` is never published: it is the fault tests' poison knob, read only where the
        // catalog allows it and ignored elsewhere.
        let mut checked = fields::check(&fields, input, &["crash"])?;
        let knobs = DemoKnobs {
            latency_ms: checked.whole("latency_ms").unwrap_or(0),
            fail_rate: checked.number("fail_rate").unwrap_or(0.0),
            crash: self.allow_crash && crash_knob(input)?,
        };
        Ok(match model {
            DEMO_IMAGE => ModelInput::DemoImage(DemoImageInput {
                prompt: checked.text("prompt"),
                width: checked.whole_u32("width"),
                height: checked.whole_u32("height"),
                seed: checked.whole("seed"),
                knobs,
            }),
            DEMO_UPSCALE => ModelInput::DemoUpscale(DemoUpscaleInput {
                image: checked.image("image"),
                scale: checked.whole_u32("scale"),
                knobs,
            }),
            DEMO_VIDEO => ModelInput::DemoVideo(DemoVideoInput {
                image: checked.image("image"),
                seconds: checked.whole_u32("seconds"),
                fps: checked.whole_u32("fps"),
                format: match checked.text("format").as_str() {
                    "gif" => VideoFormat::Gif,
                    _ => VideoFormat::Mp4,
                },
                knobs,
            }),
            _ => ModelInput::TextToImage(TextToImageInput {
                prompt: checked.text("prompt"),
                width: checked.whole_u32("width"),
                height: checked.whole_u32("height"),
                seed: checked.whole("seed"),
                params: checked.subset(fields.iter().filter_map(|f| match &f.rule {
                    Rule::Param(p) => Some(p.name.as_str()),
                    _ => None,
                })),
            }),
        })
    }
}

/// The `crash` knob, where it is allowed: true or false.
fn crash_knob(input: &Map<String, Value>) -> Result<bool, InputError> {
    match input.get("crash") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(crash)) => Ok(*crash),
        Some(_) => Err(InputError::new(
            "invalid_type",
            "input.crash",
            "input.crash must be true or false",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn the_video_format_is_one_of_two_words() {
        let catalog = Catalog::new(false);
        let clip = |format: &str| json!({"image": "https://example.com/a.png", "format": format});
        let ModelInput::DemoVideo(gif) = catalog.validate("demo/video", &clip("gif")).unwrap()
        else {
            panic!("a demo/video input")
        };
        assert_eq!(gif.format, VideoFormat::Gif);
        let e = catalog.validate("demo/video", &clip("webm")).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("out_of_range", "input.format"));
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
