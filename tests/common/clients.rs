//! What the client-compatibility tests need to run other people's clients against Kiln: the
//! Python that has them installed (`replicate`, `openai`, from PyPI, installed by the test
//! command), a TLS front that gives Kiln an `https://` address (Replicate's client only treats
//! `https:` output URLs as files it can read, so outputs must be served over TLS, as they are
//! behind any production load balancer), and a runner for the scenario scripts under
//! `tests/fixtures/clients`, which print one JSON object of what they observed.

use super::{Kiln, DEADLINE};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The Python with Replicate's and OpenAI's clients (`TEST_KILN_CLIENTS_PYTHON`).
pub fn clients_python() -> String {
    std::env::var("TEST_KILN_CLIENTS_PYTHON").expect(
        "TEST_KILN_CLIENTS_PYTHON must name a Python with replicate and openai (scripts/test.sh sets it)",
    )
}

/// A TLS-terminating front (`socat`) on a loopback port of its own, with a self-signed
/// certificate for 127.0.0.1 that the clients are told to trust (`SSL_CERT_FILE`).
///
/// Its port is chosen before Kiln starts (Kiln's `public_url` names it) and held, bound,
/// until `socat` takes it over: left free while Kiln started, another test's server could be
/// given it, and the clients then spoke TLS to that plain server.
pub struct TlsFront {
    pub port: u16,
    pub cert: PathBuf,
    dir: tempfile::TempDir,
    reserved: Option<std::net::TcpListener>,
    child: Option<Child>,
}

impl TlsFront {
    /// Makes the certificate and picks the port; `forward_to` starts it once Kiln listens.
    pub fn prepare() -> TlsFront {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed by the test command");
        assert!(made.success(), "openssl could not make a certificate");
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        TlsFront {
            port: reserved.local_addr().expect("a bound port").port(),
            cert,
            dir,
            reserved: Some(reserved),
            child: None,
        }
    }

    /// The address clients use.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts forwarding TLS connections to `backend` (`host:port`) and waits until it accepts.
    pub fn forward_to(&mut self, backend: &str) {
        let key = self.dir.path().join("key.pem");
        let listen = format!(
            "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            self.port,
            self.cert.display(),
            key.display()
        );
        // Released only now, for `socat` to bind at once.
        drop(self.reserved.take());
        let mut child = Command::new("socat")
            .arg(listen)
            .arg(format!("TCP:{backend}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed by the test command");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                child.try_wait().expect("socat's state").is_none(),
                "the TLS front could not listen on its port"
            );
            assert!(Instant::now() < deadline, "the TLS front never listened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.child = Some(child);
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Kiln (embedded, or on production backends) reached through a TLS front, as clients reach
/// a deployment: its `public_url` is the front's, so every link and output URL it answers is
/// `https://`.
pub async fn kiln_behind_tls(production: bool) -> (Kiln, TlsFront) {
    let mut front = TlsFront::prepare();
    let public = url::Url::parse(&format!("{}/", front.url())).unwrap();
    let adjust = move |c: &mut kiln::config::Config| c.public_url = Some(public);
    let kiln = if production {
        Kiln::start_production(adjust).await
    } else {
        Kiln::start_with(adjust).await
    };
    front.forward_to(kiln.base.trim_start_matches("http://"));
    (kiln, front)
}

/// Runs `tests/fixtures/clients/{script} {scenario}` with `env` and returns the JSON it
/// printed; a failing script fails the test with its stderr.
pub async fn run_scenario(script: &str, scenario: &str, env: &[(&str, String)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clients")
        .join(script);
    let mut cmd = tokio::process::Command::new(clients_python());
    cmd.arg(path)
        .arg(scenario)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE * 2, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} {scenario} did not finish"))
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {scenario} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} {scenario} printed no JSON ({e}): {stdout}"))
}
