//! Rebuilds the ledger when a migration changes: `sqlx::migrate!` embeds the migration files at
//! compile time, but cargo only knows to recompile for changes to the crate's own sources, so
//! without this a new migration would be missing from an incremental build.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
