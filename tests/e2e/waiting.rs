//! Waiting without poll loops: `Prefer: wait=N` answers as soon as the job is terminal, or after
//! N seconds with its current state; server-sent events stream each change and end with the
//! terminal one. A queued job shows its place in the queue; a running one, how far its
//! generator says it has come.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn job(latency_ms: u64) -> Value {
    json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16, "latency_ms": latency_ms}})
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_submit_returns_a_short_job_finished() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("Prefer", "wait=10")
        .json(&job(1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "created and done");
    assert_eq!(res.headers()["preference-applied"], "wait=10");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "succeeded", "{body:#}");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_job_read_again_answers_as_it_did_and_at_once() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key, job(0)).await;
    kiln.wait_terminal(&key, &id).await;
    // The first read renders the finished job; those after it within a second are the answer
    // this api kept. Each says the same, as JSON, with no poll hint, and applies a wait at once.
    let mut answers = Vec::new();
    for prefer in [None, None, Some("wait=30")] {
        let mut get = kiln
            .http
            .get(kiln.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(&key);
        if let Some(prefer) = prefer {
            get = get.header("Prefer", prefer);
        }
        let asked = Instant::now();
        let res = get.send().await.unwrap();
        // Behaviour, not speed: an ended job is never held for the 30 s a wait asks.
        assert!(asked.elapsed() < Duration::from_secs(30));
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert!(res.headers().get("retry-after").is_none());
        let applied = res.headers().get("preference-applied").cloned();
        assert_eq!(applied.is_some(), prefer.is_some());
        if prefer.is_some() {
            assert_eq!(applied.unwrap(), "wait=30");
        }
        answers.push(res.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0]["status"], "succeeded", "{:#}", answers[0]);
    assert!(answers[0]["outputs"][0]["url"].is_string());
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    kiln.shutdown().await;
}

/// The same for a Replicate prediction, whose answer this api keeps beside the job's: a job's
/// kept answer is never given as its prediction's, nor the other way round.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_prediction_read_again_answers_as_it_did_and_never_as_its_job() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let created = kiln
        .http
        .post(kiln.url("/v1/models/demo/image/predictions"))
        .bearer_auth(&key)
        .json(&json!({"input": {"prompt": "a kiln", "width": 16, "height": 16}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "created");
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    kiln.wait_terminal(&key, &id).await;
    // The job's answer is read (and kept) first.
    let job: Value = kiln.get_job(&key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let mut answers = Vec::new();
    for prefer in [None, None, Some("wait=30")] {
        let mut get = kiln
            .http
            .get(kiln.url(&format!("/v1/predictions/{id}")))
            .bearer_auth(&key);
        if let Some(prefer) = prefer {
            get = get.header("Prefer", prefer);
        }
        let res = get.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(
            res.headers()
                .get("preference-applied")
                .map(|v| v.to_str().unwrap().to_owned()),
            prefer.map(str::to_owned)
        );
        answers.push(res.json::<Value>().await.unwrap());
    }
    // A prediction, not the job's view: Replicate's fields, its output a list of URLs.
    assert_eq!(answers[0]["status"], "succeeded", "{:#}", answers[0]);
    assert_eq!(answers[0]["model"], "demo/image");
    assert!(answers[0]["version"].is_string(), "{:#}", answers[0]);
    assert!(answers[0]["output"][0].is_string(), "{:#}", answers[0]);
    assert!(answers[0].get("outputs").is_none(), "{:#}", answers[0]);
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    // And the job's answer, read again after the prediction's, is still the job's.
    let again: Value = kiln.get_job(&key, &id).await;
    assert_eq!(again, job);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_get_returns_a_long_job_running_after_the_wait() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key, job(30_000)).await;
    let started = Instant::now();
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&key)
        .header("Prefer", "respond-async, wait=10")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "running", "{body:#}");
    // The wait is the behaviour under test: it holds for the 10 s asked, and not much more.
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    assert!(waited < Duration::from_secs(14), "{waited:?}");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_streams_its_changes_as_server_sent_events_until_it_ends() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key, job(500)).await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself after the terminal event.
    let text = res.text().await.unwrap();
    let statuses: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{text}"
    );
    assert!(statuses.iter().any(|s| s == "running"), "{statuses:?}");
    // Each event is a change (of status, attempts, outputs or progress): none repeats the one
    // before it.
    let prints: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            let j: Value = serde_json::from_str(d).unwrap();
            json!([
                j["status"],
                j["attempts"].as_array().unwrap().len(),
                j["outputs"].as_array().unwrap().len(),
                j["progress"]
            ])
        })
        .collect();
    assert!(prints.windows(2).all(|w| w[0] != w[1]), "{prints:?}");
    // Another tenant sees nothing.
    let other = kiln.key("other").await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_job_shows_its_place_and_a_running_one_its_progress() {
    // One worker slot: while the first job runs, the next ones queue behind it.
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    let first = kiln.submit_ok(&key, job(4_000)).await;
    let events = kiln.url(&format!("/v1/jobs/{first}/events"));
    follow_events(&kiln.http, &events, &key, |j| j["status"] == "running").await;
    let second = kiln.submit_ok(&key, job(0)).await;
    // A create's answer does not count the queue (the job has just joined its end); the first
    // GET does.
    let created = kiln.submit(&key, job(0)).await;
    assert_eq!(created.status(), 202);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["status"], "queued");
    assert!(created["queue_position"].is_null(), "{created:#}");
    let third = created["id"].as_str().unwrap().to_owned();
    let view = kiln.get_job(&key, &third).await;
    assert_eq!(view["status"], "queued");
    assert_eq!(view["queue_position"], 1, "one job ahead: {view:#}");
    assert_eq!(kiln.get_job(&key, &second).await["queue_position"], 0);
    // The demo generator reports progress as it works; the job shows it while running.
    let midway = follow_events(&kiln.http, &events, &key, |j| {
        j["progress"].as_f64().is_some_and(|p| p > 0.0 && p < 1.0)
    })
    .await;
    assert_eq!(midway["status"], "running", "{midway:#}");
    assert_eq!(midway["attempts"][0]["progress"], midway["progress"]);
    let done = kiln.wait_terminal(&key, &first).await;
    assert_eq!(done["progress"], 1.0);
    assert!(done["queue_position"].is_null());
    // Once the first is done, the queue moves up.
    let view = kiln.wait_terminal(&key, &third).await;
    assert_eq!(view["status"], "succeeded");
    kiln.shutdown().await;
}

/// Reads a job's event stream, resuming after `last_event_id` if given, until it ends or `max`
/// events have come: each event's id and job.
async fn read_events(
    kiln: &Kiln,
    key: &str,
    id: &str,
    last_event_id: Option<&str>,
    max: usize,
) -> Vec<(String, Value)> {
    let mut req = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(key);
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last);
    }
    let read = async {
        let mut res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let (mut buffer, mut events) = (String::new(), vec![]);
        while let Some(chunk) = res.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let (Some(id), Some(data)) = (field("id: "), field("data: ")) {
                    events.push((id, serde_json::from_str(&data).unwrap()));
                    if events.len() == max {
                        return events;
                    }
                }
            }
        }
        events
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the stream neither ended nor sent the events in time")
}

/// A client that reconnects with `Last-Event-ID` (as a browser's `EventSource` does) is sent
/// the job only once it differs from what it last saw, and a stream that already delivered the
/// terminal state ends at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_stream_resumes_after_the_last_event_id() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let slow = json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16, "latency_ms": 3000}});
    let id = kiln.submit_ok(&key, slow).await;
    let first = read_events(&kiln, &key, &id, None, 1).await;
    let (seen, job) = &first[0];
    // Resumed after that event: the next one is a different state of the job.
    let resumed = read_events(&kiln, &key, &id, Some(seen), 1).await;
    assert_ne!(
        &resumed[0].0, seen,
        "the state already seen is not sent again"
    );
    assert_ne!(
        (&resumed[0].1["status"], &resumed[0].1["progress"]),
        (&job["status"], &job["progress"])
    );
    let done = kiln.wait_terminal(&key, &id).await;
    assert_eq!(done["status"], "succeeded");
    // The whole stream of a finished job is its terminal state, once.
    let all = read_events(&kiln, &key, &id, None, 10).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1["status"], "succeeded");
    // Resumed after the terminal event: nothing more to say, and the stream ends.
    let after_end = read_events(&kiln, &key, &id, Some(&all[0].0), 10).await;
    assert!(after_end.is_empty(), "{after_end:?}");
    // An id the server never issued is not a state the client saw: it gets the job.
    let unknown = read_events(&kiln, &key, &id, Some("not-an-id"), 10).await;
    assert_eq!(unknown.len(), 1);
    kiln.shutdown().await;
}
