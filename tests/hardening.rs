//! What a hostile client, a big input or a canceled job can do to a running Kiln, measured on
//! the real binary: memory from `/proc/PID/status`, CPU time from `/proc/PID/stat`, sockets
//! held open by hand. Each test names the bound it holds.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the process's peak RSS to its current RSS, so `VmHWM` measures what follows.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// CPU seconds (user and system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: f64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    ticks as f64 / per_second
}

fn api_key(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("api-key"))
        .unwrap()
        .trim()
        .to_owned()
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// A forged callback that declares 60 MB is answered 403 before a byte of its body is read,
/// and its connection is closed rather than drained; eight at once leave memory flat.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_callback_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[]);
    let pid = kiln.child.id();
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    let target = addr(&kiln.base);
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || {
                let job = kiln_core::JobId::new();
                let mut socket = TcpStream::connect(&target).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                write!(
                    socket,
                    "POST /v1/callbacks/{job}/prediction?token=forged HTTP/1.1\r\nHost: kiln\r\n\
                     Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n"
                )
                .unwrap();
                // Not a byte of the body has been sent, and the answer comes anyway.
                let mut head = [0u8; 12];
                socket.read_exact(&mut head).unwrap();
                assert_eq!(&head, b"HTTP/1.1 403");
                // Sending the body now meets a closed connection: the server does not read it.
                let chunk = vec![b'x'; 1 << 20];
                let mut sent = 0usize;
                let closed = loop {
                    match socket.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break true,
                    }
                    if sent >= 60_000_000 {
                        break false;
                    }
                };
                assert!(
                    closed && sent < 60_000_000,
                    "the connection stayed open for the forged body ({sent} bytes taken)"
                );
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let peak = status_kib(pid, "VmHWM");
    assert!(
        peak.saturating_sub(before) < 8 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
}

/// Two thousand connections that send half a header hold nothing up: health and an
/// authenticated read still answer, and the idle connections are closed after the header
/// timeout.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_headers_are_timed_out_and_starve_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[("KILN_HTTP__HEADER_TIMEOUT", "3s")]);
    let key = api_key(dir.path());
    let target = addr(&kiln.base);
    let mut stalled = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut socket = tokio::net::TcpStream::connect(&target).await.unwrap();
        socket
            .write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bea")
            .await
            .unwrap();
        stalled.push(socket);
    }
    let http = http();
    let health = http
        .get(format!("{}/healthz", kiln.base))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let jobs = http
        .get(format!("{}/v1/jobs", kiln.base))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status(), 200);
    // Every stalled connection is closed by the server (EOF or reset), none answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    for mut socket in stalled {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(left, socket.read(&mut buf))
            .await
            .expect("a stalled connection was still open after the header timeout");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a half header got an answer: {:?}",
            read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
    }
}

/// Submits a CPU-heavy demo video (ten seconds at 30 fps of a 1024-pixel source, the largest
/// an MP4 clip takes) and waits
/// until the process is busy with it.
async fn heavy_video(base: &str, key: &str, extra: Value, pid: u32) -> String {
    let http = http();
    let image = submit_ok(
        &http,
        base,
        key,
        json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 1024, "height": 1024}}),
    )
    .await;
    let done = wait_terminal(&http, base, key, &image).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let mut body = json!({"model": "demo/video", "input": {
        "image": format!("kiln://jobs/{image}/outputs/0"), "seconds": 10, "fps": 30,
    }});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let start = cpu_seconds(pid);
    let video = submit_ok(&http, base, key, body).await;
    wait_for(&http, base, key, &video, "running", |j| {
        j["status"] == "running"
    })
    .await;
    // The work is under way once the process has spent a second on it.
    let deadline = Instant::now() + DEADLINE;
    while cpu_seconds(pid) - start < 1.0 {
        assert!(Instant::now() < deadline, "the video never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    video
}

/// Over the five seconds after a job ended, the process is idle: its blocking work stopped.
fn assert_idle_after(pid: u32) {
    let start = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_seconds(pid) - start;
    assert!(
        used < 0.5,
        "the process used {used:.2} CPU-seconds after the job ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn canceling_a_cpu_heavy_job_stops_its_work() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[]);
    let pid = kiln.child.id();
    let key = api_key(dir.path());
    let video = heavy_video(&kiln.base, &key, json!({}), pid).await;
    let res = http()
        .post(format!("{}/v1/jobs/{video}/cancel", kiln.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let job = wait_for(&http(), &kiln.base, &key, &video, "attempt closed", |j| {
        j["attempts"][0]["outcome"] == "canceled"
    })
    .await;
    assert_eq!(job["status"], "canceled");
    assert_idle_after(pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_heavy_job_past_its_deadline_stops_its_work() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[]);
    let pid = kiln.child.id();
    let key = api_key(dir.path());
    let video = heavy_video(&kiln.base, &key, json!({"cancel_after": "3s"}), pid).await;
    let job = wait_terminal(&http(), &kiln.base, &key, &video).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    assert_idle_after(pid);
}

/// A 16-bit RGBA PNG that declares 8192x8192 pixels (512 MiB decoded) in well under a megabyte.
fn bomb_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 8192, 8192);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Sixteen);
        encoder.set_compression(png::Compression::Fastest);
        let mut writer = encoder.write_header().unwrap();
        let mut rows = writer.stream_writer().unwrap();
        let row = vec![0u8; 8192 * 8];
        for _ in 0..8192 {
            rows.write_all(&row).unwrap();
        }
        rows.finish().unwrap();
    }
    out
}

/// The decompression bomb is refused from its header: the job fails as `input_too_large` and
/// the process's peak memory grows by less than 96 MB, where decoding it would take 512 MiB.
/// Refusing two 5 MB inputs (the request, its JSON, the input kept apart and read back, its
/// base64 decoded) grew the peak by 33–57 MB in runs alone and by 66 MB once in a full run: the
/// copies land on whichever threads' heaps the tasks run on.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_declares_too_many_pixels_is_refused_before_decoding() {
    use base64::Engine;
    let bomb = bomb_png();
    assert!(bomb.len() < 4 * 1024 * 1024, "{} bytes", bomb.len());
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bomb)
    );
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[]);
    let pid = kiln.child.id();
    let key = api_key(dir.path());
    let http = http();
    // Warm the process up before its peak is taken: first requests, a first job, and a first
    // input of this size (its JSON, its row in the ledger and the ledger's page caches, the
    // allocator's arenas), so the peak measures what refusing a bomb costs, not what a
    // process's first 5 MB request costs. A bomb that were decoded would cost 512 MiB.
    let warm = submit_ok(&http, &kiln.base, &key, image_job(16, 16)).await;
    wait_terminal(&http, &kiln.base, &key, &warm).await;
    let first = json!({"model": "demo/upscale", "input": {"image": uri, "scale": 2}});
    let first = submit_ok(&http, &kiln.base, &key, first).await;
    let first = wait_terminal(&http, &kiln.base, &key, &first).await;
    assert_eq!(first["error"]["code"], "input_too_large", "{first:#}");
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    for model in [
        json!({"model": "demo/upscale", "input": {"image": uri, "scale": 2}}),
        json!({"model": "demo/video", "input": {"image": uri}}),
    ] {
        let id = submit_ok(&http, &kiln.base, &key, model).await;
        let job = wait_terminal(&http, &kiln.base, &key, &id).await;
        assert_eq!(job["status"], "failed", "{job:#}");
        assert_eq!(job["error"]["code"], "input_too_large", "{job:#}");
    }
    let grown = status_kib(pid, "VmHWM").saturating_sub(before);
    assert!(grown < 96 * 1024, "peak RSS grew by {grown} KiB");
}

/// Listing a hundred jobs whose inputs are 8 MB each reads none of those bytes: peak memory
/// grows by less than 32 MB.
#[tokio::test(flavor = "multi_thread")]
async fn listing_jobs_with_large_inputs_reads_none_of_them() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    // No worker runs these jobs: they stay queued with their inputs, as a backlog would.
    let kiln = KilnProcess::start("api", dir.path(), &[]);
    let pid = kiln.child.id();
    let key = create_key(dir.path(), "acme");
    let http = http();
    // A valid PNG header followed by filler: the submit checks the media type and base64.
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.resize(6_000_000, 0);
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    assert!(uri.len() > 8_000_000);
    for _ in 0..100 {
        let body = json!({"model": "demo/upscale", "input": {"image": uri, "scale": 2}});
        let res = submit(&http, &kiln.base, &key, body).await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    }
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    let lists: Vec<_> = (0..4)
        .map(|_| {
            let (http, base, key) = (http.clone(), kiln.base.clone(), key.clone());
            tokio::spawn(async move {
                let res = http
                    .get(format!("{base}/v1/jobs?limit=100"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Value>().await.unwrap()
            })
        })
        .collect();
    for list in lists {
        let list = list.await.unwrap();
        let data = list["data"].as_array().unwrap();
        assert_eq!(data.len(), 100);
        assert!(data[0]["input"]["image"]
            .as_str()
            .unwrap()
            .ends_with("bytes elided>"));
    }
    let grown = status_kib(pid, "VmHWM").saturating_sub(before);
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB");
}

/// The data directory is its owner's alone, and the ledger holds no webhook secret in clear.
#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_is_private_and_holds_no_clear_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A directory that exists, open to everyone: Kiln narrows it to its owner.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kiln = KilnProcess::serve(&data, &[]);
    let key = api_key(&data);
    let secret: Value = http()
        .get(format!("{}/v1/webhooks/default/secret", kiln.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = secret["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for file in ["kiln.db", "signing.key", "secrets.key", "api-key"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    // Whatever SQLite has written so far (the database and its write-ahead log).
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("kiln.db")
        {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            let bytes = std::fs::read(&path).unwrap();
            let needle = b"whsec_";
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a webhook secret in clear",
                path.display()
            );
        }
    }
    drop(kiln);
}

/// Each demo model's worst allowed input stays within the memory budget the README states:
/// the process's peak RSS over the job, above what it held before.
#[tokio::test(flavor = "multi_thread")]
async fn each_demo_models_worst_input_stays_within_its_budget() {
    const MIB: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::serve(dir.path(), &[("KILN_WORKER__CONCURRENCY", "1")]);
    let pid = kiln.child.id();
    let key = api_key(dir.path());
    let http = http();
    let largest = json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 2048, "height": 2048}});
    // Warm up on a small job of each kind first, so the budgets measure the input's cost.
    let small = submit_ok(&http, &kiln.base, &key, image_job(64, 64)).await;
    wait_terminal(&http, &kiln.base, &key, &small).await;
    let source = format!("kiln://jobs/{small}/outputs/0");
    for warm in [
        json!({"model": "demo/upscale", "input": {"image": source, "scale": 2}}),
        json!({"model": "demo/video", "input": {"image": source, "seconds": 1, "fps": 2}}),
    ] {
        let id = submit_ok(&http, &kiln.base, &key, warm).await;
        wait_terminal(&http, &kiln.base, &key, &id).await;
    }
    let clip_source = submit_ok(&http, &kiln.base, &key, json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 1024, "height": 1024}})).await;
    wait_terminal(&http, &kiln.base, &key, &clip_source).await;
    let clip_source = format!("kiln://jobs/{clip_source}/outputs/0");
    let mut image = String::new();
    let cases = [
        ("demo/image 2048x2048", largest, 48 * MIB),
        (
            "demo/upscale of 2048x2048 by 2",
            json!({"model": "demo/upscale", "input": {"scale": 2}}),
            96 * MIB,
        ),
        (
            "demo/video of 1024x1024 (its largest), 10 s at 30 fps",
            json!({"model": "demo/video", "input": {"image": clip_source, "seconds": 10, "fps": 30}}),
            96 * MIB,
        ),
    ];
    for (what, mut body, budget) in cases {
        if !image.is_empty() && body["input"].get("image").is_none() {
            body["input"]["image"] = json!(format!("kiln://jobs/{image}/outputs/0"));
        }
        reset_peak(pid);
        let before = status_kib(pid, "VmRSS");
        let id = submit_ok(&http, &kiln.base, &key, body).await;
        let job = wait_terminal(&http, &kiln.base, &key, &id).await;
        assert_eq!(job["status"], "succeeded", "{what}: {job:#}");
        let grown = status_kib(pid, "VmHWM").saturating_sub(before);
        eprintln!("{what}: peak RSS grew by {} MiB", grown / MIB);
        assert!(
            grown < budget,
            "{what}: peak RSS grew by {} MiB, over its budget of {} MiB",
            grown / MIB,
            budget / MIB
        );
        if image.is_empty() {
            image = id;
        }
    }
}

/// A Cog output far larger than a result callback may carry (300 MiB) reaches the store through
/// Kiln's upload route (Cog's `--upload-url`), streamed a buffer at a time: the job succeeds,
/// the output downloads whole with the size and checksum the predictor wrote, and the api's and
/// worker's peak RSS (both run in this process, as does the download) grows by less than 64 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_300_mib_cog_output_streams_through_with_bounded_memory() {
    large_cog_output(false).await;
}

/// The same on the production stack, where the upload goes to S3 in 8 MiB multipart parts and
/// the download is S3's presigned URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_300_mib_cog_output_streams_into_s3_with_bounded_memory() {
    large_cog_output(true).await;
}

async fn large_cog_output(production: bool) {
    use sha2::Digest;
    const MIB: u64 = 1024; // KiB
    const MEGABYTES: usize = 300;
    let cog_port = kiln_core::testing::free_port();
    let configure = move |c: &mut kiln::config::Config| {
        c.providers = vec![cog_provider(&format!("http://127.0.0.1:{cog_port}/"))];
        c.models = vec![kiln_core::routes::ModelConfig {
            name: "acme/large-file".into(),
            description: "writes a large file".into(),
            params: vec![kiln_core::routes::ParamConfig {
                name: "megabytes".into(),
                kind: kiln_core::routes::ParamKind::Integer,
                minimum: Some(1.0),
                maximum: Some(1024.0),
                description: String::new(),
            }],
            fallback_on_refusal: false,
            routes: vec![kiln_core::routes::RouteConfig {
                provider: "cog".into(),
                model: "large-file".into(),
                ..Default::default()
            }],
        }];
    };
    let kiln = if production {
        Kiln::start_production(configure).await
    } else {
        Kiln::start_with(configure).await
    };
    let _cog =
        CogServer::start_in("cog-large", cog_port, Some(&kiln.url("/v1/uploads/cog/"))).await;
    let key = kiln.key("acme").await;
    let name = format!("f{}", std::process::id());
    let run = |megabytes: usize| json!({"model": "acme/large-file", "input": {"prompt": name, "megabytes": megabytes}});
    // Warmed up with a small file first, so the peak measures the large one alone.
    let small = kiln.submit_ok(&key, run(1)).await;
    let small = kiln.wait_terminal(&key, &small).await;
    assert_eq!(small["status"], "succeeded", "{small:#}");

    let pid = std::process::id();
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    let id = kiln.submit_ok(&key, run(MEGABYTES)).await;
    let job = kiln.wait_terminal(&key, &id).await;
    let _ = std::fs::remove_file(format!("/tmp/kiln-cog-large-{name}.bin"));
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let output = &job["outputs"][0];
    assert_eq!(output["bytes"], (MEGABYTES << 20) as u64);
    assert_eq!(output["content_type"], "application/octet-stream");
    let url = output["url"].as_str().unwrap();
    assert!(url.contains("/uploads/"), "stored from the upload: {url}");
    assert_eq!(
        url.contains("/v1/files/"),
        !production,
        "Kiln's own download route locally, S3's presigned URL in production: {url}"
    );

    let download = kiln.http.get(url).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let mut body = download.bytes_stream();
    let (mut hasher, mut size) = (sha2::Sha256::new(), 0usize);
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        let chunk = chunk.unwrap();
        size += chunk.len();
        hasher.update(&chunk);
    }
    let grown = status_kib(pid, "VmHWM").saturating_sub(before);
    eprintln!(
        "a {MEGABYTES} MiB Cog output (production: {production}): peak RSS grew by {} MiB",
        grown / MIB
    );
    assert_eq!(size, MEGABYTES << 20);
    // What the predictor wrote: block i is the base block rotated left by i bytes.
    let base: Vec<u8> = (0..1usize << 20).map(|j| (j % 251) as u8).collect();
    let mut expected = sha2::Sha256::new();
    for i in 0..MEGABYTES {
        expected.update(&base[i..]);
        expected.update(&base[..i]);
    }
    assert_eq!(hasher.finalize(), expected.finalize(), "the checksum");
    assert!(
        grown < 64 * MIB,
        "peak RSS grew by {} MiB passing a {MEGABYTES} MiB output through",
        grown / MIB
    );
    kiln.shutdown().await;
}
