//! Test support shared by Kiln's crates (behind the `contract` feature): a fresh Postgres database
//! per test on the server the test command found or started, dropped again when the guard goes.

use std::time::Duration;

/// The admin URL of the test server: `KILN_TEST_POSTGRES_URL`, else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("KILN_TEST_POSTGRES_URL")
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
                panic!("no Postgres for tests at KILN_TEST_POSTGRES_URL ({e}); run ./scripts/test.sh, which finds or starts one")
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
