//! The `demo` provider: Kiln's built-in generators (see `demo`) behind the provider seam, with
//! the demo knobs (latency, failure rate, crash) that let demos and tests exercise slow jobs,
//! retries and lost workers. A configured text-to-image model may route here, typically as the
//! last fallback.

use crate::demo;
use crate::inputs::InputResolver;
use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use async_trait::async_trait;
use kiln_core::catalog::{DemoImageInput, DemoKnobs, ModelInput};
use rand::Rng;
use std::time::Duration;

pub struct DemoProvider {
    inputs: InputResolver,
}

impl DemoProvider {
    pub fn new(inputs: InputResolver) -> Self {
        DemoProvider { inputs }
    }
}

#[async_trait]
impl Provider for DemoProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let knobs = input.knobs().clone();
        if knobs.latency_ms > 0 {
            // Cancellable: the executor's select drops this future on cancel. The wait stands
            // for the model's work, so it reports progress through it, as a real one would.
            let latency = Duration::from_millis(knobs.latency_ms);
            let started = tokio::time::Instant::now();
            loop {
                let elapsed = started.elapsed();
                if elapsed >= latency {
                    break;
                }
                attempt
                    .report_progress(elapsed.as_secs_f64() / latency.as_secs_f64())
                    .await;
                tokio::time::sleep((latency - elapsed).min(Duration::from_secs(1))).await;
            }
        }
        if knobs.crash {
            tracing::error!("demo crash knob set: aborting the process");
            std::process::abort();
        }
        if knobs.fail_rate > 0.0 && rand::thread_rng().gen_bool(knobs.fail_rate) {
            return Err(ProviderError::retry(
                "demo_transient_failure",
                "the demo generator failed on purpose (fail_rate)",
            ));
        }
        let work = attempt.work;
        let output = match input {
            ModelInput::TextToImage(t) => {
                let i = DemoImageInput {
                    prompt: t.prompt.clone(),
                    width: t.width.min(kiln_core::catalog::MAX_SIDE),
                    height: t.height.min(kiln_core::catalog::MAX_SIDE),
                    seed: t.seed,
                    knobs: DemoKnobs::default(),
                };
                work.run(move |stop| demo::render_image(&i, stop)).await?
            }
            ModelInput::DemoImage(i) => {
                let i = i.clone();
                work.run(move |stop| demo::render_image(&i, stop)).await?
            }
            ModelInput::DemoUpscale(i) => {
                let source = self.inputs.image_bytes(&i.image, attempt.tenant).await?;
                let scale = i.scale;
                work.run(move |stop| demo::upscale(&source, scale, stop))
                    .await?
            }
            ModelInput::DemoVideo(i) => {
                let source = self.inputs.image_bytes(&i.image, attempt.tenant).await?;
                let (seconds, fps, format) = (i.seconds, i.fps, i.format);
                work.run(move |stop| demo::zoom_clip(&source, seconds, fps, format, stop))
                    .await?
            }
        };
        attempt.report_progress(1.0).await;
        Ok(vec![output])
    }
}
