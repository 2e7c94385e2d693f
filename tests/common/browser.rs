//! A real headless Chromium driven over WebDriver, for the dashboard's tests. Each `Browser`
//! is its own ChromeDriver on a free loopback port with its own profile directory, so tests
//! share nothing. Chromium's performance log is on: `requests()` lists every URL the page
//! asked for, which is how the tests prove that nothing leaves loopback.
//!
//! ChromeDriver and Chromium are Debian's (`chromium-driver`, `chromium`), installed by
//! `scripts/test.sh`; `TEST_KILN_CHROMEDRIVER` and `TEST_KILN_CHROMIUM` name others.

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// How long a page may take to show what a test waits for.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(60);

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin =
            std::env::var("TEST_KILN_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium =
            std::env::var("TEST_KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut driver = Command::new(&driver_bin)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{driver_bin} did not start ({e}); scripts/test.sh installs chromium-driver")
            });
        // ChromeDriver says which port it took once it listens ("… started successfully on
        // port N.").
        let stdout = driver.stdout.take().unwrap();
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines
                .by_ref()
                .map_while(Result::ok)
                .filter(|line| line.contains("started successfully"))
                .find_map(|line| {
                    line.split("on port ")
                        .nth(1)
                        .and_then(|rest| rest.trim().trim_end_matches('.').parse::<u16>().ok())
                })
                .expect("chromedriver said which port it listens on");
            // Keep draining its output so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--autoplay-policy=no-user-gesture-required",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in headless Chromium");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns a truthy value, checking at each animation frame in the
    /// page itself (an event loop of its own, not a sleep here), and returns that value.
    pub async fn until(&self, what: &str, script: &str) -> Value {
        let waiter = format!(
            "const done = arguments[arguments.length - 1];
             const test = () => {{ try {{ return (function() {{ {script} }})(); }} catch (e) {{ return null; }} }};
             let over = false;
             setTimeout(() => {{ over = true; done(null); }}, 5000);
             const tick = () => {{ if (over) return; const v = test(); if (v) {{ over = true; done(v); }} else requestAnimationFrame(tick); }};
             tick();"
        );
        let started = Instant::now();
        loop {
            // Each wait gives up in the page after 5 s and is repeated: WebDriver runs one
            // command at a time, so a wait must end before the next command can be sent.
            match tokio::time::timeout(
                Duration::from_secs(30),
                self.client.execute_async(&waiter, vec![]),
            )
            .await
            {
                Ok(Ok(v)) if !v.is_null() && v != Value::Bool(false) => return v,
                _ if started.elapsed() > PAGE_DEADLINE => {
                    let text = self.js("return document.body.innerText").await;
                    panic!("waited {PAGE_DEADLINE:?} for {what}; the page reads:\n{text}");
                }
                _ => {}
            }
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Signs in on the dashboard's form with `key`.
    pub async fn sign_in(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/ui")).await;
        self.until(
            "the sign-in form",
            "return document.querySelector('#api-key')",
        )
        .await;
        self.type_into("#api-key", key).await;
        self.click("form button[type=submit]").await;
        self.until(
            "the jobs list after signing in",
            "return location.pathname === '/ui/jobs' && document.querySelector('.lanes .lane')",
        )
        .await;
    }

    /// Every URL the browser requested since the last call (Chromium's performance log).
    pub async fn requests(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(PerformanceLog)
            .await
            .expect("the performance log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| serde_json::from_str::<Value>(entry["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|m| {
                m["message"]["params"]["request"]["url"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    }

    /// A PNG of the window, when `KILN_SCREENSHOTS` names a directory to keep them in (how the
    /// README's screenshots are made: `KILN_SCREENSHOTS=docs/screenshots`).
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("KILN_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// ChromeDriver's log endpoint (`POST /session/{id}/se/log`), which W3C WebDriver lacks.
#[derive(Debug)]
struct PerformanceLog;

impl WebDriverCompatibleCommand for PerformanceLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "performance"}).to_string()),
        )
    }
}

/// Whether a URL the browser asked for stays on this machine: a network request (http, https,
/// ws, wss) to a loopback host, or one the browser answers itself (`data:`, `blob:`, `about:`,
/// and `chrome:` for its own start page).
pub fn on_loopback(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    if !matches!(parsed.scheme(), "http" | "https" | "ws" | "wss") {
        return matches!(parsed.scheme(), "data" | "blob" | "about" | "chrome");
    }
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}
