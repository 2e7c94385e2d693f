//! Time at the ledger's edge. The SQLite ledger stores Unix milliseconds; the domain uses
//! `chrono::DateTime<Utc>`. Keeping the conversion in one place keeps rounding consistent.

use chrono::{DateTime, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

pub fn now() -> Timestamp {
    Utc::now()
}

pub fn to_millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}
