//! Where SQLite and Postgres differ: the placeholder style (`?` written once, numbered for
//! Postgres, quoted text left alone) and the row locks each engine takes.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// Rewrites `?` placeholders as `$1, $2, …` for Postgres. A `?` inside a quoted string or
    /// identifier is text, not a placeholder, and stays as it is (an escaped quote, `''`, closes
    /// and reopens the literal, which leaves it inside).
    pub(super) fn sql<'a>(self, statement: &'a str) -> Cow<'a, str> {
        match self {
            Dialect::Sqlite => Cow::Borrowed(statement),
            Dialect::Postgres => {
                let mut out = String::with_capacity(statement.len() + 16);
                let mut n = 0;
                let mut quoted: Option<char> = None;
                for c in statement.chars() {
                    match (quoted, c) {
                        (None, '\'' | '"') => quoted = Some(c),
                        (Some(q), c) if c == q => quoted = None,
                        _ => {}
                    }
                    if c == '?' && quoted.is_none() {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// Appended to a SELECT of rows the transaction will update.
    pub(super) fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The order of a walk of `jobs_held` within one tenant's lane, oldest first. On Postgres
    /// the index keeps its ids in byte order (`COLLATE "C"`, migration 0021), which no other
    /// index of `jobs` gives, so no plan can walk `jobs_queued` or the primary key (both in id
    /// order, and far longer) for a lane's oldest held job instead. SQLite's text order is
    /// already the bytes'. A job id is a UUID v7 in lowercase hex: byte order is time order.
    pub(super) fn held_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "id",
            Dialect::Postgres => "id COLLATE \"C\"",
        }
    }

    /// Like `lock_rows`, but passing over rows another transaction holds.
    pub(super) fn lock_rows_skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}
