//! OTLP trace export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `kiln serve` posts its spans to
//! the collector as OTLP/HTTP protobuf, decoded here with the protocol's own message types:
//! the request spans (with their request id) and the job spans (with the job's id), under the
//! service name `kiln`.

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use std::sync::{Arc, Mutex};

/// A collector that keeps every export request it receives.
async fn collector() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let shared = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let got = shared.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    got.lock().unwrap().push(request);
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_with_request_and_job_ids() {
    let (endpoint, exports) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
        ("KILN_LOG".to_owned(), "info".to_owned()),
    ];
    let mut kiln = KilnProcess::start("serve", dir.path(), &env);
    let http = http();
    let res = http
        .post(format!("{}/v1/jobs", kiln.base))
        .bearer_auth(&key)
        .header("x-request-id", "req-traced")
        .json(&image_job(16, 16))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_terminal(&http, &kiln.base, &key, &id).await;
    // A graceful stop flushes the batch that is still buffered.
    kiln.sigterm();
    let _ = kiln.child.wait();

    let exports = exports.lock().unwrap();
    let resources: Vec<_> = exports.iter().flat_map(|e| &e.resource_spans).collect();
    assert!(!resources.is_empty(), "nothing was exported");
    let service = resources[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| text(&a.value));
    assert_eq!(service.as_deref(), Some("kiln"));
    let spans: Vec<_> = resources
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let has = |name: &str, key: &str, value: &str| {
        spans.iter().any(|s| {
            s.name == name
                && s.attributes
                    .iter()
                    .any(|a| a.key == key && text(&a.value).as_deref() == Some(value))
        })
    };
    assert!(has("request", "request_id", "req-traced"), "{spans:#?}");
    assert!(has("job", "job_id", &id), "{spans:#?}");
}
