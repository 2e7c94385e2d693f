//! The two dialects guarded against drifting apart. Each engine has its own migration folder
//! (their SQL differs in types and syntax), so nothing but this test notices a migration written
//! for one engine and forgotten for the other, or a column added on one side only: both folders
//! must hold the same migrations, and after them every table must have the same columns on both.

use std::collections::BTreeMap;

/// The migration file names of one dialect's folder.
fn migrations(dialect: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(dialect);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

/// Each table's column names.
type Columns = BTreeMap<String, Vec<String>>;

async fn sqlite_columns() -> Columns {
    use sqlx::Row;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    super::sql::SqlLedger::open(&url).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for table in tables {
        let rows = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&pool)
            .await
            .unwrap();
        let mut names: Vec<String> = rows.iter().map(|r| r.get("name")).collect();
        names.sort();
        columns.insert(table, names);
    }
    columns
}

async fn postgres_columns() -> Columns {
    use sqlx::Row;
    let db = crate::testing::PostgresDatabase::create().await;
    super::sql::SqlLedger::open(&db.url).await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx\\_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for row in rows {
        columns
            .entry(row.get::<String, _>("t"))
            .or_default()
            .push(row.get("c"));
    }
    for names in columns.values_mut() {
        names.sort();
    }
    pool.close().await;
    columns
}

#[test]
fn both_dialects_have_the_same_migrations() {
    assert_eq!(migrations("sqlite"), migrations("postgres"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_table_has_the_same_columns_on_both_engines() {
    let (sqlite, postgres) = (sqlite_columns().await, postgres_columns().await);
    assert!(sqlite.contains_key("jobs") && sqlite.contains_key("job_inputs"));
    assert_eq!(sqlite, postgres);
}
