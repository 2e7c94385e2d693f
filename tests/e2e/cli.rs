//! The command-line client (`kiln run`, `kiln pipelines run`, …), as a user runs it: the real
//! binary against a running Kiln, connected by `KILN_URL` and `KILN_API_KEY`. Its exit status,
//! the files it downloads, what it prints on a terminal (under `script`, a real pseudo-terminal)
//! and off one, and that a server ignores the client's variables but still names a misspelt
//! setting.

use crate::common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

/// `kiln ARGS` against `kiln` with `key`, run from `dir`, as a user's shell would.
async fn client(kiln: &Kiln, key: &str, dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(kiln_bin())
        .args(args)
        .current_dir(dir)
        .env("KILN_URL", &kiln.base)
        .env("KILN_API_KEY", key)
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn kiln_run_waits_downloads_the_image_and_says_how_a_job_ended() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, dir) = (key.as_str(), dir.path());
    let run = client(
        &kiln,
        key,
        dir,
        &[
            "run",
            "demo/image",
            "prompt=a kiln at dusk",
            "width=64",
            "height=48",
            "--wait",
            "--output",
            "out",
        ],
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    let path = dir.join(stdout.lines().next().expect("the output's path"));
    assert!(path.to_string_lossy().ends_with("-0.png"), "{stdout}");
    let image = image::open(&path).unwrap();
    assert_eq!((image.width(), image.height()), (64, 48));
    let stderr = text(&run.stderr);
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "off a terminal nothing but text is written: {stdout:?} {stderr:?}"
    );

    // `name=@file` uploads the file for an image input.
    let input = format!("image=@{}", path.display());
    let upscaled = client(
        &kiln,
        key,
        dir,
        &[
            "run",
            "demo/upscale",
            &input,
            "scale=2",
            "--wait",
            "--output",
            "up",
        ],
    )
    .await;
    assert_eq!(
        upscaled.status.code(),
        Some(0),
        "{}",
        text(&upscaled.stderr)
    );
    let up = dir.join(text(&upscaled.stdout).lines().next().unwrap());
    let image = image::open(&up).unwrap();
    assert_eq!((image.width(), image.height()), (128, 96));

    // A job that fails exits 1 and says why; a wrong or refused input is a usage error (2).
    let failed = client(
        &kiln,
        key,
        dir,
        &[
            "run",
            "demo/image",
            "prompt=x",
            "width=16",
            "height=16",
            "fail_rate=1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(
        text(&failed.stderr).contains("failed"),
        "{}",
        text(&failed.stderr)
    );
    let bad = client(&kiln, key, dir, &["run", "demo/image", "width=wide"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("width is a whole number"),
        "{}",
        text(&bad.stderr)
    );
    let refused = client(
        &kiln,
        key,
        dir,
        &["run", "demo/image", "prompt=x", "width=100000", "height=16"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("field input.width"),
        "{}",
        text(&refused.stderr)
    );
    let offline = tokio::process::Command::new(kiln_bin())
        .args([
            "models",
            "--url",
            "http://127.0.0.1:9",
            "--api-key",
            "kiln_x",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(offline.status.code(), Some(3), "{}", text(&offline.stderr));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kiln_pipelines_run_waits_and_downloads_the_video() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.json"),
        json!({"steps": [
            {"name": "image", "model": "demo/image", "input": {"prompt": "a kiln", "width": 64, "height": 64}},
            {"name": "upscale", "model": "demo/upscale", "input": {"image": "$steps.image.outputs[0]", "scale": 2}},
            {"name": "video", "model": "demo/video", "input": {"image": "$steps.upscale.outputs[0]", "seconds": 1, "fps": 6}}
        ]})
        .to_string(),
    )
    .unwrap();
    let run = client(
        &kiln,
        &key,
        dir.path(),
        &[
            "pipelines",
            "run",
            "pipeline.json",
            "--wait",
            "--output",
            "clips",
        ],
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let video = dir.path().join(text(&run.stdout).lines().next().unwrap());
    assert!(video.to_string_lossy().ends_with(".mp4"), "{video:?}");
    let bytes = std::fs::read(&video).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_the_wait_draws_its_progress_and_ends_the_line_clean() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    // `script` runs the client on a pseudo-terminal and keeps everything it wrote.
    let command = format!(
        "{} run demo/image prompt=x width=16 height=16 latency_ms=1500 --wait --output out",
        kiln_bin()
    );
    let run = tokio::process::Command::new("script")
        .args(["-qefc", &command, "typescript"])
        .current_dir(dir.path())
        .env("KILN_URL", &kiln.base)
        .env("KILN_API_KEY", &key)
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stdout));
    let screen = text(&run.stdout);
    assert!(
        screen.matches("\r\u{1b}[2K").count() >= 3,
        "the line is redrawn in place as the job moves and the time passes: {screen:?}"
    );
    assert!(
        screen.contains(" running"),
        "the job's state is shown: {screen:?}"
    );
    let last_draw = screen.rfind("\r\u{1b}[2K").unwrap();
    let after = &screen[last_draw + "\r\u{1b}[2K".len()..];
    assert!(
        after.contains("-0.png"),
        "the line is cleared before the paths: {after:?}"
    );
    kiln.shutdown().await;
}

#[test]
fn a_server_ignores_the_clients_variables_and_names_a_misspelt_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = KilnProcess::serve(
        dir.path(),
        &[
            ("KILN_URL", "http://127.0.0.1:1"),
            ("KILN_API_KEY", "kiln_x"),
        ],
    );
    assert!(server.base.starts_with("http://127.0.0.1:"));
    server.kill9();
    let misspelt = Command::new(kiln_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("KILN_DATABSE_URL", "sqlite://x.db")
        .output()
        .unwrap();
    assert_eq!(misspelt.status.code(), Some(1));
    let said = text(&misspelt.stderr);
    assert!(
        said.contains("KILN_DATABSE_URL is not a setting")
            && said.contains("did you mean KILN_DATABASE_URL?"),
        "{said}"
    );
}

#[test]
fn keys_name_their_ledger_and_never_start_an_empty_one_unasked() {
    let parent = tempfile::tempdir().unwrap();
    // A data directory that is not there (a mistyped path, the wrong working directory).
    let missing = parent.path().join("kiln-data");
    let refused = Command::new(kiln_bin())
        .args(["keys", "create", "--tenant", "acme", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("there is no ledger at"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!missing.exists(), "nothing was made");
    // A directory made for Kiln (as a setup script does before the first `kiln serve`) gets
    // its ledger and the key.
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(kiln_bin())
        .args(["keys", "create", "--tenant", "acme", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key = text(&made.stdout).trim().to_owned();
    assert!(key.starts_with("kiln_"), "{key}");
    assert!(dir.path().join("kiln.db").exists());
    let listed = Command::new(kiln_bin())
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert!(text(&listed.stderr).contains(&dir.path().join("kiln.db").display().to_string()));
    let table = text(&listed.stdout);
    let header = table.lines().next().unwrap();
    let row = table.lines().nth(1).unwrap();
    // Columns line up: each value starts where its header does.
    assert_eq!(row.find(&key[..11]), header.find("prefix"), "{table}");
    assert!(
        header.contains("limits") && header.contains("webhook"),
        "{table}"
    );
}

#[test]
fn a_log_written_to_a_file_carries_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("kiln.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut kiln = KilnProcess::start_logging_to(
        "serve",
        dir.path(),
        &[("KILN_LOG".to_owned(), "info".to_owned())],
        std::process::Stdio::from(log),
    );
    kiln.kill9();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(!logged.is_empty());
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
}

/// Starts `kiln run … --wait` on a job that runs for a minute, and returns the client process
/// and the job's id once the job runs (the client is then waiting on it).
async fn waiting_client(kiln: &Kiln, key: &str, extra: &[&str]) -> (std::process::Child, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(kiln_bin())
        .args([
            "run",
            "demo/image",
            "prompt=long",
            "width=16",
            "height=16",
            "latency_ms=60000",
            "--wait",
        ])
        .args(extra)
        .current_dir(dir.path())
        .env("KILN_URL", &kiln.base)
        .env("KILN_API_KEY", key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = loop {
        let page: serde_json::Value = kiln
            .http
            .get(kiln.url("/v1/jobs?status=running"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = page["data"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the client ended early"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    (child, id)
}

fn interrupt(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_a_wait_lets_go_of_the_job_or_cancels_it_when_asked() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;

    let (child, id) = waiting_client(&kiln, &key, &[]).await;
    interrupt(&child);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("kiln jobs watch {id}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        kiln.get_job(&key, &id).await["status"],
        "running",
        "the job goes on"
    );
    let canceled = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 200);

    let (child, id) = waiting_client(&kiln, &key, &["--cancel-on-interrupt"]).await;
    interrupt(&child);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(kiln.get_job(&key, &id).await["status"], "canceled");
    kiln.shutdown().await;
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "_kiln()"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = Command::new(kiln_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        assert!(
            script.contains("pipelines"),
            "{shell} completes the subcommands"
        );
    }
}

/// A server that answers `/v1/models` with an endless body and no length: a fault a real Kiln
/// cannot be made to show.
async fn endless_server() -> String {
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(|| async {
            let chunk = axum::body::Bytes::from(vec![b'['; 1 << 20]);
            let endless =
                futures::StreamExt::map(futures::stream::repeat(chunk), Ok::<_, std::io::Error>);
            axum::body::Body::from_stream(endless)
        }),
    );
    serve_on_loopback(app).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_without_end_is_refused_not_buffered() {
    let base = endless_server().await;
    let out = tokio::process::Command::new(kiln_bin())
        .args(["models", "--url", &base, "--api-key", "kiln_x"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is larger than"),
        "{}",
        text(&out.stderr)
    );
}
