//! Test support shared by Kiln's crates (behind the `contract` feature): a fresh Postgres database
//! per test on the server the test command found or started, dropped again when the guard goes.

use std::time::Duration;

/// The admin URL of the test server: `TEST_KILN_POSTGRES_URL`, else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_KILN_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops its database when dropped.
pub struct PostgresDatabase {
    pub url: String,
    name: String,
    admin: String,
}

impl PostgresDatabase {
    /// Creates `kiln_t_<random>` and returns its URL.
    pub async fn create() -> PostgresDatabase {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("kiln_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&admin))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                panic!("no Postgres for tests at TEST_KILN_POSTGRES_URL ({e}); run ./scripts/test.sh, which finds or starts one")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        PostgresDatabase {
            url: url.to_string(),
            name,
            admin,
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop is synchronous; do the async work on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A `redis-server` of a test's own, on a free loopback port, keeping nothing on disk. It can
/// be killed and restarted on the same port, as the fault tests need.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        for _ in 0..20 {
            let port = free_port();
            let mut server = RedisServer { child: None, port };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? ./scripts/test.sh installs it)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--maxmemory-policy", "noeviction", "--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (./scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let _ = status;
                self.child = None;
                return false; // most likely the port was taken meanwhile
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// kill -9, keeping the port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A loopback port that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An S3 server of a test's own: `s3s-fs` (installed by the test command) on a free loopback
/// port, serving a temporary directory with one bucket, `kiln`.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
    pub root: std::path::PathBuf,
}

impl S3Server {
    pub const BUCKET: &'static str = "kiln";
    pub const ACCESS_KEY: &'static str = "kiln-test";
    pub const SECRET_KEY: &'static str = "kiln-test-secret";

    pub fn start() -> S3Server {
        let root = std::env::temp_dir().join(format!("kiln-s3-{}", uuid::Uuid::new_v4().simple()));
        // In s3s-fs a bucket is a directory under its root.
        std::fs::create_dir_all(root.join(Self::BUCKET)).unwrap();
        let binary = std::env::var("TEST_KILN_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        for _ in 0..20 {
            let port = free_port();
            let mut child = std::process::Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--access-key",
                    Self::ACCESS_KEY,
                    "--secret-key",
                    Self::SECRET_KEY,
                ])
                .arg(&root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {binary} ({e}); ./scripts/test.sh installs it")
                });
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port, root };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start s3s-fs");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Files the server holds under the bucket (objects, not directories).
    pub fn object_count(&self) -> usize {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.root.join(Self::BUCKET))
    }
}

impl S3Server {
    /// kill -9, keeping the port and the stored objects.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port over the same directory.
    pub fn restart(&mut self) {
        self.kill();
        let binary = std::env::var("TEST_KILN_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        self.child = std::process::Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(&self.root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs restarts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A Postgres server of a test's own (`initdb` into a temporary directory, on a free loopback
/// port), for the fault tests that stop and restart the database under a running Kiln; the
/// shared test server cannot be restarted. As root, it runs as the `postgres` user, since
/// Postgres refuses to run as root.
pub struct PostgresServer {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!("kiln-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = PostgresServer {
            dir,
            bin,
            port: free_port(),
        };
        if server.as_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres"])
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = server.dir.join("data");
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        server.pg_ctl_start();
        server
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn command(&self, tool: &str) -> std::process::Command {
        let path = self.bin.join(tool);
        if self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "Postgres did not start on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops at once, as a crash would (`-m immediate`: no checkpoint, clients cut off).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }

    /// Starts again on the same port with the same data.
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
