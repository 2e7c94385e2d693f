//! Signed webhooks with durable delivery. A receiver on loopback records every request; the
//! `standardwebhooks` package (PyPI) verifies Kiln's signatures independently; a receiver that
//! fails gets the same `webhook-id` on every try; a worker killed between a job's completion and
//! its webhook loses nothing; filters, rotation and the SSRF policy hold.

use crate::common::*;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn payload(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Received>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: VecDeque<u16>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start(answers: Vec<u16>) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            got: vec![],
            answers: answers.into(),
        }));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let state = shared.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let mut s = state.lock().unwrap();
                    s.got.push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                    });
                    StatusCode::from_u16(s.answers.pop_front().unwrap_or(200)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state }
    }

    fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// Waits until the receiver has answered `n` requests.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries came",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the `standardwebhooks` verifier on a delivery; returns the event type it verified.
fn verify(secret: &str, got: &Received) -> Result<String, String> {
    use std::io::Write;
    let request = json!({
        "secret": secret,
        "headers": {
            "webhook-id": got.id,
            "webhook-timestamp": got.timestamp,
            "webhook-signature": got.signature,
        },
        "body": got.body,
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks/verify.py");
    let mut child = std::process::Command::new(test_python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn secret(kiln: &Kiln, key: &str) -> String {
    let res = kiln
        .http
        .get(kiln.url("/v1/webhooks/default/secret"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn job_with_webhook(url: &str, extra: Value) -> Value {
    let mut job = json!({
        "model": "demo/image",
        "input": {"prompt": "a kiln", "width": 16, "height": 16},
        "webhook": url,
    });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    job
}

/// Fast retries for tests: the Standard Webhooks schedule's shape, in milliseconds.
fn fast_schedule(c: &mut kiln::config::Config) {
    c.webhooks.schedule = [0, 50, 50, 50, 50].map(Duration::from_millis).to_vec();
    c.webhooks.poll = Duration::from_millis(20);
}

async fn deliveries(kiln: &Kiln, key: &str, id: &str) -> Vec<Value> {
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/deliveries")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the job has `n` deliveries and none is still pending.
async fn wait_for_deliveries(kiln: &Kiln, key: &str, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = deliveries(kiln, key, id).await;
        if log.len() >= n && log.iter().all(|d| d["status"] != "pending") {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never settled: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A success's `job.succeeded` goes out at once: the worker that wrote it wakes its own
/// deliverer, so the event does not wait for the deliverer's next look at the ledger, which
/// here is an hour away (its first look, at start, found nothing).
#[tokio::test(flavor = "multi_thread")]
async fn a_success_is_delivered_without_waiting_for_the_next_look() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(|c| {
        c.webhooks.poll = Duration::from_secs(3600);
    })
    .await;
    let key = kiln.key("acme").await;
    let secret = secret(&kiln, &key).await;
    let job = job_with_webhook(&receiver.url, json!({"webhook_events": ["job.succeeded"]}));
    let id = kiln.submit_ok(&key, job).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(verify(&secret, &got[0]).unwrap(), "job.succeeded");
    assert_eq!(got[0].payload()["data"]["id"], id.as_str());
    let log = wait_for_deliveries(&kiln, &key, &id, 1).await;
    assert_eq!(log[0]["id"], got[0].id.as_str());
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["tries"].as_array().unwrap().len(), 1);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standardwebhooks_package_verifies_kilns_deliveries() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let secret = secret(&kiln, &key).await;
    assert!(secret.starts_with("whsec_"));
    let id = kiln
        .submit_ok(&key, job_with_webhook(&receiver.url, json!({})))
        .await;
    let got = receiver.wait_for(2).await;
    assert_eq!(verify(&secret, &got[0]).unwrap(), "job.started");
    assert_eq!(verify(&secret, &got[1]).unwrap(), "job.succeeded");
    // The payload is the job as GET shows it, output URL and expiry included.
    let payload = got[1].payload();
    assert_eq!(payload["data"]["id"], id.as_str());
    assert_eq!(payload["data"]["status"], "succeeded");
    assert!(payload["data"]["outputs"][0]["url"].is_string());
    assert!(payload["data"]["expires_at"].is_string());
    // A tampered body or a wrong secret does not verify.
    let mut tampered = got[1].clone();
    tampered.body = tampered.body.replace("succeeded", "failed");
    assert!(verify(&secret, &tampered).is_err());
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(verify(other, &got[1]).is_err());
    // A replayed delivery with an old timestamp fails too (the verifier's tolerance is 5 min).
    let mut stale = got[1].clone();
    let ten_minutes_ago = got[1].timestamp.parse::<i64>().unwrap() - 600;
    stale.timestamp = ten_minutes_ago.to_string();
    assert!(verify(&secret, &stale).is_err());
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_fails_three_times_gets_the_event_on_the_fourth_with_one_id() {
    let receiver = Receiver::start(vec![500, 503, 429]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let job = job_with_webhook(&receiver.url, json!({"webhook_events": ["job.succeeded"]}));
    let id = kiln.submit_ok(&key, job).await;
    let got = receiver.wait_for(4).await;
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id across retries"
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same event each time"
    );
    // The receiver has the fourth try; Kiln records its answer once the response is read.
    let log = delivered_log(&kiln, &key, &id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["id"], got[0].id.as_str());
    assert_eq!(log[0]["status"], "delivered");
    let codes: Vec<Value> = log[0]["tries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(503), json!(429), json!(200)]);
    assert!(log[0]["tries"][0]["error"]
        .as_str()
        .unwrap()
        .contains("500"));
    // Delivered means done: nothing more comes.
    assert_eq!(receiver.got().len(), 4);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_filter_is_respected_and_a_410_stops_delivery() {
    let receiver = Receiver::start(vec![]).await;
    let gone = Receiver::start(vec![410]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let only_end = job_with_webhook(
        &receiver.url,
        json!({"webhook_events": ["job.succeeded", "job.failed"]}),
    );
    let id = kiln.submit_ok(&key, only_end).await;
    kiln.wait_terminal(&key, &id).await;
    let got = receiver.wait_for(1).await;
    let types: Vec<String> = got
        .iter()
        .map(|r| r.payload()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["job.succeeded"], "job.started was filtered out");

    // A 410 says the endpoint is gone for good: the key that had it as its default webhook
    // loses it too.
    let ledger = &kiln.running.as_ref().unwrap().ledger;
    let record = ledger.list_api_keys().await.unwrap().remove(0);
    ledger
        .set_default_webhook(record.id.as_str(), Some(&gone.url))
        .await
        .unwrap();
    let id = kiln
        .submit_ok(
            &key,
            job_with_webhook(&gone.url, json!({"webhook_events": ["job.succeeded"]})),
        )
        .await;
    kiln.wait_terminal(&key, &id).await;
    let log = wait_for_deliveries(&kiln, &key, &id, 1).await;
    assert_eq!(log[0]["status"], "gone");
    assert_eq!(log[0]["tries"].as_array().unwrap().len(), 1);
    assert_eq!(gone.got().len(), 1);
    assert!(ledger.list_api_keys().await.unwrap()[0]
        .default_webhook
        .is_none());

    // Bad filters are refused.
    let res = kiln
        .submit(
            &key,
            job_with_webhook(&receiver.url, json!({"webhook_events": ["job.exploded"]})),
        )
        .await;
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "unknown_event");
    assert_eq!(problem["field"], "webhook_events");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn during_a_rotation_both_secrets_verify() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let old = secret(&kiln, &key).await;
    let res = kiln
        .http
        .post(kiln.url("/v1/webhooks/default/secret/rotate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let new = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old, new);
    assert_eq!(secret(&kiln, &key).await, new);
    // A second rotation during the overlap would end the old secret early: refused.
    let res = kiln
        .http
        .post(kiln.url("/v1/webhooks/default/secret/rotate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "rotation_in_progress"
    );
    let job = job_with_webhook(&receiver.url, json!({"webhook_events": ["job.succeeded"]}));
    kiln.submit_ok(&key, job).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert_eq!(verify(&new, &got[0]).unwrap(), "job.succeeded");
    assert_eq!(verify(&old, &got[0]).unwrap(), "job.succeeded");
    kiln.shutdown().await;
}

/// The machine's own name, which resolves to loopback here (as `/etc/hosts` usually makes it).
fn a_name_for_loopback() -> String {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let resolved: Vec<_> = (name.as_str(), 80).to_socket_addrs().unwrap().collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback()),
        "precondition: {name} resolves to loopback ({resolved:?})"
    );
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_to_private_addresses_are_refused_at_submit_and_at_send() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(|c| {
        fast_schedule(c);
        c.ssrf.loopback_webhooks = Some(false);
    })
    .await;
    let key = kiln.key("acme").await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let host = a_name_for_loopback();
    for url in [
        receiver.url.clone(),
        format!("http://{host}:{port}/hook"),
        "http://localhost/hook".into(),
        "http://10.1.2.3/hook".into(),
        "http://192.168.0.10/hook".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]/hook".into(),
        "http://[::ffff:127.0.0.1]/hook".into(),
        "http://[fd00::1]/hook".into(),
        "ftp://example.com/hook".into(),
    ] {
        // Not http(s) at all is a malformed webhook; an http(s) URL to a private address is a
        // forbidden one.
        let expected = if url.starts_with("ftp:") {
            "invalid_url"
        } else {
            "webhook_url_forbidden"
        };
        let res = kiln.submit(&key, job_with_webhook(&url, json!({}))).await;
        assert_eq!(res.status(), 422, "{url}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], expected, "{url}");
        assert_eq!(problem["field"], "webhook", "{url}");
    }
    let listed: Value = kiln
        .http
        .get(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );

    // A job whose webhook got past submit (written straight to the ledger here) is still
    // refused at send: the delivery fails without a request.
    let ledger = &kiln.running.as_ref().unwrap().ledger;
    let job = ledger
        .insert_job(kiln_core::ledger::NewJob {
            idempotency: None,
            priority: Default::default(),
            surface: Default::default(),
            max_active: None,
            spend: None,
            id: kiln_core::JobId::new(),
            tenant: kiln_core::TenantId::parse("acme").unwrap(),
            model: "demo/image".into(),
            input: json!({"prompt": "x", "width": 16, "height": 16}),
            deadline_at: None,
            start_by: None,
            key_id: None,
            webhook_url: Some(receiver.url.clone()),
            webhook_events: Some(vec!["job.succeeded".into()]),
        })
        .await
        .unwrap();
    let id = job.id.to_string();
    kiln.wait_terminal(&key, &id).await;
    let log = loop {
        let log = deliveries(&kiln, &key, &id).await;
        if !log.is_empty() && log[0]["status"] != "pending" {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(log[0]["status"], "failed");
    let error = log[0]["tries"][0]["error"].as_str().unwrap();
    assert!(error.contains("private or reserved"), "{error}");
    assert!(receiver.got().is_empty());
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keys_default_webhook_serves_jobs_that_name_none() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let ledger = &kiln.running.as_ref().unwrap().ledger;
    let record = ledger
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.tenant.0 == "acme")
        .unwrap();
    assert_eq!(
        ledger
            .set_default_webhook(record.id.as_str(), Some(&receiver.url))
            .await
            .unwrap(),
        1
    );
    let id = kiln.submit_ok(&key, image_job(16, 16)).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].payload()["data"]["id"], id.as_str());
    kiln.shutdown().await;
}

/// The processes' configuration: slow first try, so the kill lands between the job's end and
/// its webhook; loopback allowed for the test's receiver.
const DURABLE_TOML: &str = r#"
[ssrf]
allow = ["127.0.0.0/8"]

[webhooks]
schedule = ["3s", "100ms", "100ms"]
poll = "50ms"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_completion_and_webhook_loses_nothing() {
    let receiver = Receiver::start(vec![]).await;
    let backends = Backends::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kiln.toml"), DURABLE_TOML).unwrap();
    let env = backends.env();
    let api = KilnProcess::start("api", dir.path(), &env);
    let mut first = KilnProcess::start("worker", dir.path(), &env);
    let key = create_key_with(dir.path(), "acme", &env);
    let http = http();
    let job = job_with_webhook(&receiver.url, json!({"webhook_events": ["job.succeeded"]}));
    let id = submit_ok(&http, &api.base, &key, job).await;
    let done = wait_terminal(&http, &api.base, &key, &id).await;
    assert_eq!(done["status"], "succeeded");
    // The event is committed with the job's success; its first try is 3 s out.
    first.kill9();
    assert!(
        receiver.got().is_empty(),
        "nothing was sent before the kill"
    );

    let _second = KilnProcess::start("worker", dir.path(), &env);
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].payload()["type"], "job.succeeded");
    assert_eq!(got[0].payload()["data"]["id"], id.as_str());
    let log: Value = http
        .get(format!("{}/v1/jobs/{id}/deliveries", api.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["data"].as_array().unwrap().len(), 1, "one event, once");
    assert_eq!(log["data"][0]["id"], got[0].id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_schedule_fails_the_delivery_and_logs_every_try() {
    let receiver = Receiver::start(vec![500; 10]).await;
    let kiln = Kiln::start_with(|c| {
        c.webhooks.schedule = [0, 30, 30].map(Duration::from_millis).to_vec();
        c.webhooks.poll = Duration::from_millis(20);
    })
    .await;
    let key = kiln.key("acme").await;
    let job = job_with_webhook(&receiver.url, json!({"webhook_events": ["job.succeeded"]}));
    let id = kiln.submit_ok(&key, job).await;
    let log = wait_for_deliveries(&kiln, &key, &id, 1).await;
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(
        log[0]["tries"].as_array().unwrap().len(),
        3,
        "one try per schedule entry"
    );
    assert_eq!(receiver.got().len(), 3);

    // Another tenant sees neither the log nor the redelivery.
    let other = kiln.key("other").await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/deliveries")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let delivery = log[0]["id"].as_str().unwrap();
    let redeliver = format!("/v1/jobs/{id}/deliveries/{delivery}/redeliver");
    let res = kiln
        .http
        .post(kiln.url(&redeliver))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Its owner can send it again: same webhook-id, the schedule from the start.
    let res = kiln
        .http
        .post(kiln.url(&redeliver))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let got = receiver.wait_for(6).await;
    assert!(got.iter().all(|r| r.id == got[0].id));
    let log = wait_for_deliveries(&kiln, &key, &id, 1).await;
    assert_eq!(log[0]["tries"].as_array().unwrap().len(), 6);
    kiln.shutdown().await;
}

/// On the embedded default a local workflow tool's callback URL names `localhost`, as such
/// tools build them: it is accepted and delivered, signed with the (sealed-at-rest) secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_localhost_webhook_is_delivered_on_the_embedded_default() {
    let receiver = Receiver::start(vec![]).await;
    let kiln = Kiln::start_with(fast_schedule).await;
    let key = kiln.key("acme").await;
    let port = receiver.url.rsplit(':').next().unwrap();
    let url = format!("http://localhost:{port}");
    let id = kiln
        .submit_ok(
            &key,
            job_with_webhook(&url, json!({"webhook_events": ["job.succeeded"]})),
        )
        .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].payload()["data"]["id"], id.as_str());
    let secret = secret(&kiln, &key).await;
    assert_eq!(verify(&secret, &got[0]).unwrap(), "job.succeeded");
    kiln.shutdown().await;
}

/// The job's delivery log once its (single) delivery has left `pending`, polled until then.
async fn delivered_log(kiln: &Kiln, key: &str, id: &str) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let log = deliveries(kiln, key, id).await;
        if log.iter().all(|d| d["status"] != "pending") {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still pending: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
