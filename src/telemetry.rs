//! Logs and traces. Logs go to stderr, filtered by `KILN_LOG` (`info` by default), as text or,
//! with `KILN_LOG_FORMAT=json`, one JSON object per line carrying the fields of the spans it
//! happened in: `request_id` for api requests, `job_id` for work on a job. Traces go out over
//! OTLP (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set:
//! the same spans, exported in batches from a thread of their own, so a slow or absent
//! collector never holds up a request. Both are read from the environment, because they start
//! before the configuration is read; the OTLP exporter's other `OTEL_*` variables (headers,
//! timeout, `OTEL_SERVICE_NAME`) apply as the OpenTelemetry specification defines them.

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Keeps the trace exporter alive; `shutdown` flushes what is still buffered.
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.traces {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "could not flush the last traces");
            }
        }
    }
}

fn otlp_wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|e| !e.is_empty()))
}

pub fn init() -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log written to a file or a pipe, or read with
    // NO_COLOR set, carries no escape codes.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let logs = match std::env::var("KILN_LOG_FORMAT").as_deref() {
        Ok("json") => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        _ => logs.boxed(),
    };
    let mut problem = None;
    let traces = if otlp_wanted() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let mut resource = opentelemetry_sdk::Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name("kiln");
                }
                Some(
                    opentelemetry_sdk::trace::SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource.build())
                        .build(),
                )
            }
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let spans = traces
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("kiln")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .init();
    if let Some(e) = problem {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be built");
    }
    Telemetry { traces }
}
