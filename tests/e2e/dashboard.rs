//! The dashboard at `/ui` and the reference at `/docs`, in a real headless Chromium driven over
//! WebDriver (`common::browser`): signing in, running a model from its generated form and
//! watching the job go live to succeeded, a video that plays and seeks, a pipeline's graph
//! turning green step by step, a failed job's attempts and a redelivery, refusals across keys
//! and tenants, and that nothing the pages load leaves loopback.
//!
//! Liveness is proved in the page: a MutationObserver installed before the change records every
//! status the page shows, and a marker set on `window` survives, so the page changed without a
//! reload. Waits are the page's own animation frames (`Browser::until`), never sleeps.

use crate::common::browser::{on_loopback, Browser};
use crate::common::*;
use serde_json::{json, Value};

/// Records each status `selector`'s `data-status` takes, per element (`data-step` names
/// pipeline steps), into `window.__seen`, and marks the page so a reload would show.
const WATCH: &str = "
  window.__kept = 'same page';
  window.__seen = {};
  const record = () => document.querySelectorAll(arguments[0]).forEach((el) => {
    const name = el.dataset.step || 'job';
    const list = (window.__seen[name] ||= []);
    if (list[list.length - 1] !== el.dataset.status) list.push(el.dataset.status);
  });
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, attributes: true });
  record();
";

async fn watch(browser: &Browser, selector: &str) {
    browser
        .client
        .execute(WATCH, vec![json!(selector)])
        .await
        .unwrap();
}

/// The statuses the page showed, in order, for `name`.
async fn seen(browser: &Browser, name: &str) -> Vec<String> {
    let seen = browser.js("return window.__seen").await;
    serde_json::from_value(seen[name].clone()).unwrap_or_default()
}

/// Occupies the only worker slot with a job that runs for a minute, until `release`.
async fn hold_the_worker(kiln: &Kiln, key: &str) -> String {
    let blocker = kiln
        .submit_ok(
            key,
            json!({"model": "demo/image", "input": {"prompt": "hold", "width": 16, "height": 16, "latency_ms": 60000}}),
        )
        .await;
    kiln.wait_for(key, &blocker, "the long job to run", |j| {
        j["status"] == "running"
    })
    .await;
    blocker
}

async fn release(kiln: &Kiln, key: &str, blocker: &str) {
    let canceled = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{blocker}/cancel")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_run_from_its_form_goes_live_to_succeeded_and_its_image_renders() {
    // One worker slot, held by a long job: the job submitted from the form waits behind it
    // until the page has shown it queued, then the long one is canceled.
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    let browser = Browser::start().await;
    browser.sign_in(&kiln.base, &key).await;
    let blocker = hold_the_worker(&kiln, &key).await;

    browser.click("nav a[href='/ui/models']").await;
    browser
        .until(
            "the model list",
            "return document.querySelector(\"[data-model='demo/image'] a\")",
        )
        .await;
    browser.click("[data-model='demo/image'] a.button").await;
    browser
        .until(
            "the generated form",
            "return document.querySelector('#input-prompt')",
        )
        .await;
    browser.type_into("#input-prompt", "a kiln at dusk").await;
    browser.type_into("#input-width", "96").await;
    browser.type_into("#input-height", "64").await;
    browser.type_into("#input-latency_ms", "1000").await;
    watch(&browser, "#job-status").await;
    browser.click("#run").await;

    let path = browser
        .until(
            "the job's page",
            "return location.pathname.startsWith('/ui/jobs/') && location.pathname",
        )
        .await;
    let id = path
        .as_str()
        .unwrap()
        .trim_start_matches("/ui/jobs/")
        .to_owned();
    browser
        .until(
            "the job shown queued",
            "return document.querySelector('#job-status')?.dataset.status === 'queued'",
        )
        .await;
    release(&kiln, &key, &blocker).await;
    browser
        .until(
            "the job to succeed on the page",
            "return document.querySelector('#job-status')?.dataset.status === 'succeeded'",
        )
        .await;
    assert_eq!(
        seen(&browser, "job").await,
        ["queued", "running", "succeeded"],
        "the page showed each state as it came"
    );
    assert_eq!(
        browser.js("return window.__kept").await,
        "same page",
        "no reload"
    );
    let width = browser
        .until(
            "the output image to load",
            "const img = document.querySelector('img.output-image');
             return img && img.complete && img.naturalWidth",
        )
        .await;
    assert_eq!(width, 96, "the image rendered at the width asked for");
    assert_eq!(
        browser
            .js("return document.querySelector('img.output-image').naturalHeight")
            .await,
        64
    );
    let timeline = browser
        .until(
            "the timeline to reach succeeded",
            "const steps = [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.to);
             return steps.includes('succeeded') && steps",
        )
        .await;
    assert_eq!(timeline, json!(["queued", "running", "succeeded"]));
    let job = kiln.get_job(&key, &id).await;
    assert_eq!(
        job["input"]["width"], 96,
        "the form typed the number as a number"
    );
    browser.screenshot("job").await;

    browser.click("nav a[href='/ui/jobs']").await;
    let rows = browser
        .until(
            "both jobs listed",
            "const rows = document.querySelectorAll('#jobs-table tbody tr'); return rows.length === 2 && rows.length",
        )
        .await;
    assert_eq!(rows, 2);
    let statuses = browser
        .js("return [...document.querySelectorAll('#jobs-table tbody tr')].map((r) => r.dataset.status)")
        .await;
    assert_eq!(statuses, json!(["succeeded", "canceled"]), "newest first");
    let first = browser
        .js("return document.querySelector('#jobs-table tbody tr').dataset.job")
        .await;
    assert_eq!(first, json!(id), "newest first");
    browser.screenshot("jobs").await;
    browser.close().await;
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_output_plays_in_the_page_and_seeks() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let image = kiln.submit_ok(&key, image_job(64, 64)).await;
    assert_eq!(
        kiln.wait_terminal(&key, &image).await["status"],
        "succeeded"
    );
    let video = kiln
        .submit_ok(
            &key,
            json!({"model": "demo/video", "input": {"image": format!("kiln://jobs/{image}/outputs/0"), "seconds": 2, "fps": 6}}),
        )
        .await;
    assert_eq!(
        kiln.wait_terminal(&key, &video).await["status"],
        "succeeded"
    );

    let browser = Browser::start().await;
    browser.sign_in(&kiln.base, &key).await;
    browser.goto(&kiln.url(&format!("/ui/jobs/{video}"))).await;
    browser
        .until(
            "the player to read the clip's metadata",
            "const v = document.querySelector('video.output-video'); return v && v.readyState >= 1",
        )
        .await;
    assert_eq!(
        browser.js("return document.querySelector('video.output-video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')").await,
        "probably",
        "this Chromium plays H.264"
    );
    let duration = browser
        .js("return document.querySelector('video.output-video').duration")
        .await;
    assert!(
        (duration.as_f64().unwrap() - 2.0).abs() < 0.01,
        "{duration}"
    );
    let after_seek = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const v = document.querySelector('video.output-video');
             v.addEventListener('seeked', () => done([v.readyState, v.currentTime]), { once: true });
             v.currentTime = 1.5;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        after_seek[0].as_u64().unwrap() >= 2,
        "a frame at the new position: {after_seek}"
    );
    assert!(
        (after_seek[1].as_f64().unwrap() - 1.5).abs() < 0.2,
        "{after_seek}"
    );
    let playing = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const v = document.querySelector('video.output-video');
             v.muted = true;
             v.currentTime = 0;
             v.play().then(() => done(!v.paused && !v.error), (e) => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(playing, true, "the clip plays");
    browser.close().await;
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_shows_as_a_graph_whose_steps_turn_succeeded_live() {
    // The steps wait behind a long job until the page shows the graph, so each step is seen
    // before it succeeds.
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    let browser = Browser::start().await;
    browser.sign_in(&kiln.base, &key).await;
    let blocker = hold_the_worker(&kiln, &key).await;
    let created = kiln
        .http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .json(&json!({"steps": [
            {"name": "image", "model": "demo/image", "input": {"prompt": "a kiln", "width": 64, "height": 64, "latency_ms": 700}},
            {"name": "upscale", "model": "demo/upscale", "input": {"image": "$steps.image.outputs[0]", "scale": 2, "latency_ms": 700}},
            {"name": "video", "model": "demo/video", "input": {"image": "$steps.upscale.outputs[0]", "seconds": 1, "fps": 6, "latency_ms": 700}}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .goto(&kiln.url(&format!("/ui/pipelines/{id}")))
        .await;
    browser
        .until(
            "the graph",
            "return document.querySelectorAll('#pipeline-graph .node').length === 3",
        )
        .await;
    watch(&browser, "#pipeline-graph .node").await;
    release(&kiln, &key, &blocker).await;
    browser
        .until(
            "every step to turn succeeded",
            "return document.querySelector('#pipeline-status')?.dataset.status === 'succeeded'
                && [...document.querySelectorAll('#pipeline-graph .node')].every((n) => n.dataset.status === 'succeeded')",
        )
        .await;
    for step in ["image", "upscale", "video"] {
        let states = seen(&browser, step).await;
        assert_eq!(
            states.last().map(String::as_str),
            Some("succeeded"),
            "{step}: {states:?}"
        );
        assert!(
            states.len() >= 2,
            "{step} was shown before it succeeded: {states:?}"
        );
    }
    assert_eq!(browser.js("return window.__kept").await, "same page");
    let depths = browser
        .js("return [...document.querySelectorAll('#pipeline-graph .node')].map((n) => [n.dataset.step, Number(n.dataset.depth)])")
        .await;
    assert_eq!(depths, json!([["image", 0], ["upscale", 1], ["video", 2]]));
    let edges = browser
        .until(
            "the arrows",
            "return document.querySelectorAll('#pipeline-graph svg.edges path').length",
        )
        .await;
    assert_eq!(edges, 4, "two arrows (a line and a head each)");
    browser
        .until(
            "the video step's output in the graph",
            "return document.querySelector('#step-video video.output-video')?.readyState >= 1",
        )
        .await;
    browser.screenshot("pipeline").await;
    browser.close().await;
    kiln.shutdown().await;
}

/// An upstream that is always overloaded, speaking OpenAI's images protocol: a failure on
/// demand, which a real provider cannot be made to give.
async fn overloaded_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/images/generations",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"message": "overloaded", "type": "server_error"}})),
            )
        }),
    );
    serve_on_loopback(app).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_shows_its_attempts_and_a_redelivery_adds_a_try() {
    use kiln_core::routes::{ModelConfig, ProviderConfig, ProviderKind, RouteConfig};
    let upstream = url::Url::parse(&overloaded_upstream().await).unwrap();
    let kiln = Kiln::start_with(move |c| {
        c.providers = vec![ProviderConfig {
            name: "fake".into(),
            kind: ProviderKind::Openai,
            base_url: upstream,
            api_key_env: None,
            api_key_file: None,
            max_concurrency: None,
            rate_limit: None,
            capacity_wait: std::time::Duration::from_secs(60),
            poll_interval: std::time::Duration::from_millis(100),
            prefer_wait: None,
            circuit_failures: 10,
            circuit_cooldown: std::time::Duration::from_secs(1),
        }];
        let route = |model: &str| RouteConfig {
            provider: "fake".into(),
            model: model.into(),
            max_attempts: Some(1),
            ..Default::default()
        };
        c.models = vec![ModelConfig {
            name: "acme/img".into(),
            description: "always overloaded".into(),
            params: vec![],
            fallback_on_refusal: false,
            routes: vec![route("img-1"), route("img-2")],
        }];
    })
    .await;
    let key = kiln.key("acme").await;
    let mut receiver = Receiver::start().await;
    let id = kiln
        .submit_ok(
            &key,
            json!({"model": "acme/img", "input": {"prompt": "a kiln"}, "webhook": receiver.url, "webhook_events": ["job.failed"]}),
        )
        .await;
    assert_eq!(kiln.wait_terminal(&key, &id).await["status"], "failed");
    assert_eq!(receiver.next().await["type"], "job.failed");

    let browser = Browser::start().await;
    browser.sign_in(&kiln.base, &key).await;
    browser.goto(&kiln.url(&format!("/ui/jobs/{id}"))).await;
    let attempts = browser
        .until(
            "both attempts",
            "const rows = [...document.querySelectorAll('#attempts tbody tr')];
             return rows.length === 2 && rows.map((r) => [
               r.children[1].textContent, r.querySelector('.error-class').textContent,
               r.querySelector('.fallback-reason').textContent]);",
        )
        .await;
    let job = kiln.get_job(&key, &id).await;
    let class = job["attempts"][0]["error_class"].as_str().unwrap();
    let reason = job["attempts"][1]["fallback_reason"].as_str().unwrap();
    assert_eq!(
        attempts,
        json!([
            ["fake:img-1", class, "—"],
            ["fake:img-2", job["attempts"][1]["error_class"], reason]
        ])
    );
    assert_eq!(
        reason, job["attempts"][0]["error"]["code"],
        "the first failure's code"
    );
    let error = browser
        .js("return document.querySelector('#job-status').dataset.status")
        .await;
    assert_eq!(error, "failed");

    let tries = browser
        .until(
            "the delivery and its try",
            "const d = document.querySelector('#deliveries li[data-delivery]');
             return d && d.dataset.status === 'delivered' && d.querySelectorAll('li.try').length",
        )
        .await;
    assert_eq!(tries, 1);
    browser.click("#deliveries .redeliver").await;
    let tries = browser
        .until(
            "a second try in the list",
            "const d = document.querySelector('#deliveries li[data-delivery]');
             const n = d && d.querySelectorAll('li.try').length; return n >= 2 && n",
        )
        .await;
    assert_eq!(tries, 2);
    assert_eq!(
        receiver.next().await["type"],
        "job.failed",
        "delivered again"
    );
    browser.close().await;
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_is_refused_and_another_tenants_job_is_not_found() {
    let kiln = Kiln::start().await;
    let key_a = kiln.key("tenant-a").await;
    let key_b = kiln.key("tenant-b").await;
    let job_a = kiln.submit_ok(&key_a, image_job(32, 32)).await;

    let browser = Browser::start().await;
    browser.goto(&kiln.url("/ui")).await;
    browser
        .until(
            "the sign-in form",
            "return document.querySelector('#api-key')",
        )
        .await;
    browser.type_into("#api-key", "kiln_not_a_real_key").await;
    browser.click("form button[type=submit]").await;
    let message = browser
        .until(
            "the refusal",
            "return document.querySelector('#sign-in-status [role=alert]')?.textContent",
        )
        .await;
    assert!(
        message.as_str().unwrap().contains("not accepted"),
        "{message}"
    );
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('kiln.key')")
            .await,
        Value::Null,
        "a refused key is not kept"
    );

    browser.sign_in(&kiln.base, &key_b).await;
    assert_eq!(
        browser.js("return location.href.includes('kiln_')").await,
        false,
        "the key is never in the address"
    );
    browser.goto(&kiln.url(&format!("/ui/jobs/{job_a}"))).await;
    let text = browser
        .until(
            "the not-found message",
            "return document.querySelector('#not-found')?.textContent",
        )
        .await;
    assert!(text.as_str().unwrap().contains("not found"), "{text}");
    let shown = browser.js("return document.body.innerText").await;
    assert!(
        !shown.as_str().unwrap().contains("tenant-a") && !shown.as_str().unwrap().contains("32"),
        "nothing of A's job shows: {shown}"
    );
    browser.close().await;
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_leaves_loopback_and_the_reference_renders_offline() {
    let kiln = Kiln::start_with(|c| c.models.push(priced_model())).await;
    let key = kiln.key("acme").await;
    for seed in 0..3 {
        let id = kiln
            .submit_ok(&key, json!({"model": "acme/priced", "input": {"prompt": "a kiln", "width": 32, "height": 32, "seed": seed}}))
            .await;
        kiln.wait_terminal(&key, &id).await;
    }
    let id = kiln.submit_ok(&key, image_job(48, 32)).await;
    kiln.wait_terminal(&key, &id).await;

    let browser = Browser::start().await;
    // A browser at `/` lands on the dashboard.
    browser.goto(&kiln.url("/")).await;
    browser
        .until(
            "the dashboard",
            "return location.pathname.startsWith('/ui') && document.querySelector('#api-key')",
        )
        .await;
    browser.sign_in(&kiln.base, &key).await;
    for (page, ready) in [
        (
            "/ui/jobs",
            "document.querySelectorAll('#jobs-table tbody tr').length === 4",
        ),
        (
            &*format!("/ui/jobs/{id}"),
            "document.querySelector('img.output-image')?.naturalWidth === 48",
        ),
        (
            "/ui/models/demo/image",
            "document.querySelector('#input-prompt')",
        ),
        (
            "/ui/usage",
            "document.querySelector('#usage-chart svg rect')",
        ),
        ("/ui/webhooks", "document.querySelector('#reveal-secret')"),
    ] {
        browser.goto(&kiln.url(page)).await;
        browser.until(page, &format!("return {ready}")).await;
        if page == "/ui/usage" {
            browser.screenshot("usage").await;
        }
    }
    // A time window is fixed into the address when chosen, so each page of it reads the same
    // jobs; a status filter narrows the list.
    browser.goto(&kiln.url("/ui/jobs")).await;
    browser
        .until(
            "the list",
            "return document.querySelectorAll('#jobs-table tbody tr').length === 4",
        )
        .await;
    browser
        .js(
            "const s = document.querySelector('#filter-since'); s.value = '24h';
             s.dispatchEvent(new Event('change', { bubbles: true })); return true",
        )
        .await;
    browser
        .until(
            "the window in the address and the jobs in it",
            "return location.search.includes('after=') && document.querySelectorAll('#jobs-table tbody tr').length === 4",
        )
        .await;
    browser
        .js(
            "const s = document.querySelector('#filter-model'); s.value = 'demo/image';
             s.dispatchEvent(new Event('change', { bubbles: true })); return true",
        )
        .await;
    browser
        .until(
            "only demo/image jobs",
            "return location.search.includes('model=demo') && document.querySelectorAll('#jobs-table tbody tr').length === 1",
        )
        .await;

    // Every control of every form is labelled, and the pages fit a phone's width.
    browser.goto(&kiln.url("/ui/models/demo/image")).await;
    browser
        .until("the form", "return document.querySelector('#input-prompt')")
        .await;
    let unlabelled = browser
        .js("return [...document.querySelectorAll('input, select, textarea')]
               .filter((c) => c.labels.length === 0 && !c.getAttribute('aria-label')).map((c) => c.id || c.name)")
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    browser.client.set_window_size(390, 844).await.unwrap();
    for page in [
        format!("/ui/jobs/{id}"),
        "/ui/jobs".into(),
        "/ui/usage".into(),
    ] {
        browser.goto(&kiln.url(&page)).await;
        browser
            .until(
                &page,
                "return document.querySelector('main h1') && document.readyState === 'complete'",
            )
            .await;
        let fits = browser
            .js("return document.documentElement.scrollWidth <= window.innerWidth")
            .await;
        assert_eq!(fits, true, "{page} scrolls sideways on a phone");
    }
    browser.client.set_window_size(1280, 900).await.unwrap();
    browser.goto(&kiln.url("/ui/webhooks")).await;
    browser
        .until(
            "the webhooks page",
            "return document.querySelector('#reveal-secret')",
        )
        .await;
    browser.click("#reveal-secret").await;
    let secret = browser
        .until("the revealed secret", "const t = document.querySelector('#webhook-secret').textContent; return t.startsWith('whsec_') && !t.includes('•') && t")
        .await;
    assert!(secret.as_str().unwrap().len() > 20);

    browser.goto(&kiln.url("/docs")).await;
    browser
        .until(
            "the reference's operations",
            "const text = document.body.innerText;
             return text.includes('/healthz') && text.includes('/readyz') && /\\bpipelines\\b/.test(text)
                 && text.includes('Authorization: Bearer kiln_')",
        )
        .await;
    let requests = browser.requests().await;
    assert!(
        requests
            .iter()
            .any(|u| u.contains("/docs/assets/scalar-api-reference")),
        "the pinned script was loaded: {requests:?}"
    );
    assert!(requests.iter().any(|u| u.ends_with("/openapi.json")));
    let away: Vec<&String> = requests.iter().filter(|u| !on_loopback(u)).collect();
    assert!(away.is_empty(), "requests left loopback: {away:?}");
    assert!(
        requests.len() > 10,
        "the log saw the pages load: {requests:?}"
    );

    // Without scripts, the same page is a plain list of the operations.
    let plain = kiln.http.get(kiln.url("/docs")).send().await.unwrap();
    assert!(plain.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    let html = plain.text().await.unwrap();
    let fallback = html.split("<noscript>").nth(1).unwrap();
    assert!(
        fallback.contains("<code>POST</code> <code>/v1/jobs</code>"),
        "{fallback}"
    );
    // An API client at `/` gets the index of links.
    let index: Value = kiln
        .http
        .get(kiln.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["links"]["dashboard"], "/ui");
    assert_eq!(index["links"]["docs"], "/docs");
    browser.close().await;
    kiln.shutdown().await;
}
