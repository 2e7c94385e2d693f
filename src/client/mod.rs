//! The command-line client: `kiln run`, `kiln jobs …`, `kiln pipelines …`, `kiln models`,
//! `kiln usage`, `kiln deliveries`. It talks to any Kiln over its public API (never to the
//! ledger), so it works the same against a laptop's `kiln serve` and a production cluster.
//!
//! Where to connect: `--url` and `--api-key`, else `KILN_URL` and `KILN_API_KEY`, else a local
//! `kiln serve` (`http://127.0.0.1:8080`) with the key it saved in `kiln-data/api-key`.
//! Output is for people by default (tables, colour only on a terminal and never with
//! `NO_COLOR`) and JSON with `--json`. The exit status says how it ended (`Exit`), so scripts
//! can branch on a failed or canceled job without parsing anything.

mod commands;
mod run;

pub use commands::{deliveries, jobs, models, pipelines, usage, JobsCommand, PipelinesCommand};
pub use run::{run, RunArgs};

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest answer or event the client reads into memory (a job with its attempts and
/// outputs is a few kilobytes; downloads stream to files and are not bounded by this).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// How a client command ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; a job waited for succeeded.
    Ok = 0,
    /// A job (or pipeline) waited for failed.
    Failed = 1,
    /// The command was wrong, or the server refused it (a 4xx problem).
    Usage = 2,
    /// Kiln could not be reached, or it answered with a server error.
    Connection = 3,
    /// A job (or pipeline) waited for was canceled.
    Canceled = 4,
    /// Ctrl-C while waiting: the job goes on, the client let go of it.
    Detached = 130,
}

/// A failure with the exit status it stands for. Printed as the problem's detail, code and field.
#[derive(Debug)]
pub struct ClientError {
    pub exit: Exit,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

pub fn usage_error(message: impl Into<String>) -> anyhow::Error {
    ClientError {
        exit: Exit::Usage,
        message: message.into(),
    }
    .into()
}

/// The exit status an error stands for: its own where it is a `ClientError`, else a usage error.
pub fn exit_of(error: &anyhow::Error) -> Exit {
    error
        .downcast_ref::<ClientError>()
        .map_or(Exit::Usage, |e| e.exit)
}

/// Where and as whom to connect, and how to print.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// The Kiln to talk to [default: http://127.0.0.1:8080] (KILN_URL).
    #[arg(long, global = true)]
    pub url: Option<url::Url>,
    /// The API key [default: KILN_API_KEY, else ./kiln-data/api-key of a local `kiln serve`].
    #[arg(long, global = true)]
    pub api_key: Option<String>,
    /// Print JSON (the API's own answers) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A connection to one Kiln with one key.
pub struct Client {
    pub base: url::Url,
    key: String,
    http: reqwest::Client,
    pub json: bool,
}

impl Client {
    pub fn connect(args: &Connect) -> anyhow::Result<Client> {
        // Every command connects before it sends anything: Ctrl-C is taken over from here.
        catch_interrupts();
        let base = match &args.url {
            Some(url) => url.clone(),
            None => match std::env::var("KILN_URL") {
                Ok(raw) => url::Url::parse(&raw)
                    .map_err(|e| usage_error(format!("KILN_URL is not a URL ({e}): {raw}")))?,
                Err(_) => url::Url::parse("http://127.0.0.1:8080").expect("a URL"),
            },
        };
        let key = match &args.api_key {
            Some(key) => key.clone(),
            None => match std::env::var("KILN_API_KEY") {
                Ok(key) => key,
                Err(_) => local_key(&base)?,
            },
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("kiln-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            base,
            key: key.trim().to_owned(),
            http,
            json: args.json,
        })
    }

    pub fn url(&self, path: &str) -> url::Url {
        self.base.join(path).expect("API paths are valid")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.request(reqwest::Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Uploads a file through `POST /v1/files`; its `urls.get` is a valid input anywhere.
    pub async fn upload(&self, path: &Path) -> anyhow::Result<Value> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| usage_error(format!("cannot read {}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let mime = kiln_storage::media_type_of(&name);
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str(mime)?;
        let form = reqwest::multipart::Form::new().part("content", part);
        self.send(
            self.request(reqwest::Method::POST, "/v1/files")
                .multipart(form),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = self.bounded_text(response).await?;
        if status.is_success() {
            return Ok(if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).context("the answer is not JSON")?
            });
        }
        Err(problem(status, &text).into())
    }

    /// An answer's body, read a chunk at a time up to `MAX_ANSWER`: a server that sends more
    /// (or claims to) is refused, not buffered.
    async fn bounded_text(&self, response: reqwest::Response) -> anyhow::Result<String> {
        let too_large = || ClientError {
            exit: Exit::Connection,
            message: format!(
                "the answer from {} is larger than {MAX_ANSWER} bytes",
                self.base
            ),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER as u64)
        {
            return Err(too_large().into());
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(too_large().into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        ClientError {
            exit: Exit::Connection,
            message: format!("cannot reach Kiln at {}: {e}", self.base),
        }
        .into()
    }

    /// Follows `path`'s server-sent events, handing each event's data to `on_event` until the
    /// stream ends (after the terminal event). A dropped connection is resumed with
    /// `Last-Event-ID`, as the API promises.
    pub async fn follow(&self, path: &str, mut on_event: impl FnMut(&Value)) -> anyhow::Result<()> {
        let mut last_id: Option<String> = None;
        let mut tries = 0;
        loop {
            let mut request = self
                .request(reqwest::Method::GET, path)
                .header("accept", "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::debug!(error = %e, "event stream dropped; resuming");
                    tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    continue;
                }
                Err(e) => return Err(self.unreachable(e)),
            };
            if !response.status().is_success() {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(problem(status, &text).into());
            }
            let mut body = response.bytes_stream();
            // Bytes, split at newlines before decoding: a character cut between two chunks is
            // whole again in its line.
            let mut buffer: Vec<u8> = Vec::new();
            let (mut id, mut data) = (None::<String>, String::new());
            let ended = loop {
                let chunk = match body.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(_)) => break false,
                    None => break true,
                };
                buffer.extend_from_slice(&chunk);
                while let Some(newline) = buffer.iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&buffer[..newline])
                        .trim_end_matches('\r')
                        .to_owned();
                    buffer.drain(..=newline);
                    if line.is_empty() {
                        if id.is_some() {
                            last_id = id.take();
                        }
                        if !data.is_empty() {
                            if let Ok(value) = serde_json::from_str(&data) {
                                on_event(&value);
                            }
                            data.clear();
                        }
                    } else if let Some(rest) = line.strip_prefix("data:") {
                        data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
                    } else if let Some(rest) = line.strip_prefix("id:") {
                        id = Some(rest.trim().to_owned());
                    }
                }
                if buffer.len() > MAX_ANSWER || data.len() > MAX_ANSWER {
                    return Err(ClientError {
                        exit: Exit::Connection,
                        message: format!(
                            "an event from {} is larger than {MAX_ANSWER} bytes",
                            self.base
                        ),
                    }
                    .into());
                }
            };
            if ended {
                return Ok(());
            }
            tries += 1;
        }
    }

    /// Downloads each kept output of `job` into `dir` as `{job}-{index}.{ext}`; the paths written.
    pub async fn download_outputs(&self, job: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| usage_error(format!("cannot create {}: {e}", dir.display())))?;
        let id = job["id"].as_str().unwrap_or("job");
        let mut written = Vec::new();
        for output in job["outputs"].as_array().into_iter().flatten() {
            let Some(url) = output["url"].as_str() else {
                continue; // expired
            };
            // The object key the URL names already carries the output's extension.
            let ext = url::Url::parse(url)
                .ok()
                .and_then(|u| {
                    let name = u.path_segments()?.next_back()?.to_owned();
                    let (_, ext) = name.rsplit_once('.')?;
                    Some(ext.to_owned())
                })
                .filter(|e| {
                    !e.is_empty() && e.len() <= 5 && e.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                .unwrap_or_else(|| "bin".to_owned());
            let path = dir.join(format!("{id}-{}.{ext}", output["index"]));
            // A signed URL carries its own proof; the key is not sent to wherever it points.
            let response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            if !response.status().is_success() {
                let status = response.status();
                return Err(problem(status, &response.text().await.unwrap_or_default()).into());
            }
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| usage_error(format!("cannot write {}: {e}", path.display())))?;
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.unreachable(e))?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The key a local `kiln serve` saved for local use, when nothing else names one.
fn local_key(base: &url::Url) -> anyhow::Result<String> {
    let local = matches!(base.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let path = Path::new("kiln-data").join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if local => Ok(key),
        _ => Err(usage_error(format!(
            "no API key: pass --api-key or set KILN_API_KEY (a local `kiln serve` saves its first key in {})",
            path.display()
        ))),
    }
}

/// A refusal as the client says it: the problem's detail, then its code and field.
fn problem(status: reqwest::StatusCode, body: &str) -> ClientError {
    let exit = if status.is_server_error() {
        Exit::Connection
    } else {
        Exit::Usage
    };
    let message = match serde_json::from_str::<Value>(body) {
        Ok(p) if p["detail"].is_string() || p["code"].is_string() => {
            let mut m = p["detail"].as_str().unwrap_or("refused").to_owned();
            let code = p["code"].as_str().unwrap_or("");
            match p["field"].as_str() {
                Some(field) => m.push_str(&format!(" ({code}, field {field})")),
                None if !code.is_empty() => m.push_str(&format!(" ({code})")),
                None => {}
            }
            m
        }
        _ => format!("Kiln answered {status}"),
    };
    ClientError { exit, message }
}

/// Colour for people: on a terminal only, never with `NO_COLOR` (anstream strips it otherwise).
pub fn status_style(status: &str) -> anstyle::Style {
    use anstyle::{AnsiColor, Style};
    let color = match status {
        "succeeded" | "delivered" => AnsiColor::Green,
        "failed" | "gone" => AnsiColor::Red,
        "running" => AnsiColor::Blue,
        "queued" | "pending" => AnsiColor::Yellow,
        _ => return Style::new(),
    };
    Style::new().fg_color(Some(color.into()))
}

/// Prints rows as aligned columns (widths measured in characters), the header dimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_width(cell));
        }
    }
    let mut out = anstream::stdout();
    let dim = anstyle::Style::new().dimmed();
    let line: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{h:<w$}", w = widths[i]))
        .collect();
    let _ = writeln!(out, "{dim}{}{dim:#}", line.join("  ").trim_end());
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - visible_width(c))))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}

/// Characters a cell shows, not counting colour codes.
fn visible_width(cell: &str) -> usize {
    let mut width = 0;
    let mut escape = false;
    for c in cell.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

pub fn colored(status: &str) -> String {
    let style = status_style(status);
    format!("{style}{status}{style:#}")
}

/// One line of progress on stderr, redrawn in place, on a terminal only: with stderr not a
/// terminal nothing is drawn, so logs and pipes get no control characters.
pub struct Progress {
    live: bool,
    started: Instant,
    drawn: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            live: std::io::stderr().is_terminal(),
            started: Instant::now(),
            drawn: false,
        }
    }

    pub fn show(&mut self, what: &str) {
        if !self.live {
            return;
        }
        let elapsed = self.started.elapsed().as_secs();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{what}  {:02}:{:02}",
            elapsed / 60,
            elapsed % 60
        );
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the line, so what follows starts clean.
    pub fn finish(&mut self) {
        if self.live && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a wait is under way: Ctrl-C then lets go of the job; at any other time it ends the
/// client at once, as a Ctrl-C normally does.
static WAITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static INTERRUPTS: std::sync::OnceLock<tokio::sync::watch::Receiver<u64>> =
    std::sync::OnceLock::new();

/// Takes over Ctrl-C for the client, before it sends anything: a Ctrl-C that arrives while a
/// job is being waited for is then never lost to the default handler.
fn catch_interrupts() {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    if INTERRUPTS.set(rx).is_err() {
        return;
    }
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if !WAITING.load(std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(Exit::Detached as i32);
            }
            tx.send_modify(|n| *n += 1);
        }
    });
}

/// Resolves at the next Ctrl-C.
async fn interrupt() {
    match INTERRUPTS.get() {
        Some(rx) => {
            let mut rx = rx.clone();
            rx.mark_unchanged();
            let _ = rx.changed().await;
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Follows `path`'s event stream with a progress line that `render` draws from the latest
/// state and redraws every second (so the elapsed time ticks while nothing changes), until the
/// stream ends (`Ok(false)`) or Ctrl-C (`Ok(true)`).
pub async fn follow_with_progress(
    client: &Client,
    path: &str,
    render: impl Fn(&Value) -> String,
) -> anyhow::Result<bool> {
    let mut progress = Progress::new();
    let (tx, mut states) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let followed = client.follow(path, move |state| {
        let _ = tx.send(state.clone());
    });
    tokio::pin!(followed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut line = String::new();
    WAITING.store(true, std::sync::atomic::Ordering::SeqCst);
    let interrupted = loop {
        tokio::select! {
            outcome = &mut followed => {
                outcome?;
                break false;
            }
            Some(state) = states.recv() => {
                line = render(&state);
                progress.show(&line);
            }
            _ = tick.tick() => {
                if !line.is_empty() {
                    progress.show(&line);
                }
            }
            _ = interrupt() => break true,
        }
    };
    WAITING.store(false, std::sync::atomic::Ordering::SeqCst);
    progress.finish();
    Ok(interrupted)
}

/// What a job's state says to a person waiting on it.
pub fn progress_text(job: &Value) -> String {
    let id = job["id"].as_str().unwrap_or("");
    match job["status"].as_str().unwrap_or("") {
        "queued" => match job["queue_position"].as_u64() {
            Some(n) if n >= 100 => format!("{id} queued, 100+ ahead"),
            Some(n) => format!("{id} queued, {n} ahead"),
            None => format!("{id} queued"),
        },
        "running" => match job["progress"].as_f64() {
            Some(p) => {
                let filled = (p * 20.0).round() as usize;
                format!(
                    "{id} running [{}{}] {:>3.0}%",
                    "#".repeat(filled),
                    "-".repeat(20 - filled.min(20)),
                    p * 100.0
                )
            }
            None => format!("{id} running"),
        },
        other => format!("{id} {other}"),
    }
}

/// The exit status a finished job or pipeline stands for.
pub fn exit_for(status: &str) -> Exit {
    match status {
        "succeeded" => Exit::Ok,
        "canceled" => Exit::Canceled,
        _ => Exit::Failed,
    }
}
