//! A job's own time limits (`cancel_after`, `max_queue_wait`, the `Cancel-After` header): a
//! whole number of seconds, minutes or hours (`"90s"`, `"5m"`, `"2h"`), or a JSON number of
//! seconds, 1 s to 24 h. The grammar is small on purpose: `PATTERN` says exactly what the
//! parser takes, range included, so the OpenAPI document and the server agree on every string
//! and a generated client never sends one the server refuses.

use crate::problem::Problem;
use serde_json::Value;
use std::time::Duration;

/// The longest limit.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

/// Exactly the strings `parse` takes: 1–86400 s, 1–1440 m or 1–24 h, no leading zero.
pub const PATTERN: &str =
    "^(?:[1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s$\
|^(?:[1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m$\
|^(?:[1-9]|1[0-9]|2[0-4])h$";

/// A limit as text, if it is one: the number and its unit, in range.
fn parse_text(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    let well_formed = !digits.is_empty()
        && !digits.starts_with('0')
        && digits.len() <= 5
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let seconds = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        _ => return None,
    };
    (1..=MAX.as_secs())
        .contains(&seconds)
        .then(|| Duration::from_secs(seconds))
}

/// A limit as a submission gives it (a string, or a number of seconds), for `field`.
pub fn parse(field: &str, value: &Value) -> Result<Duration, Problem> {
    let invalid = |code: &str, detail: String| Problem::unprocessable(code, field, detail);
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 1.0 && *s <= MAX.as_secs_f64())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| invalid("out_of_range", format!("{field} must be 1 s to 24 h"))),
        Value::String(text) => parse_text(text).ok_or_else(|| {
            // A whole number with a unit that is merely too long (or zero) is out of range.
            let well_formed = text.len() > 1
                && text.ends_with(['s', 'm', 'h'])
                && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit());
            if well_formed {
                return invalid("out_of_range", format!("{field} must be 1 s to 24 h"));
            }
            invalid(
                "invalid_duration",
                format!(
                    "{field} must be a whole number of seconds, minutes or hours from 1 s to 24 h, \
                     like \"90s\", \"5m\" or \"2h\""
                ),
            )
        }),
        _ => Err(invalid(
            "invalid_type",
            format!("{field} must be a duration string or a number of seconds"),
        )),
    }
}

/// The document's schema of a limit in a JSON body: the pattern's strings or 1 to 86400
/// seconds.
pub fn body_schema(description: &str) -> Value {
    serde_json::json!({
        "description": description,
        "oneOf": [
            {"type": "string", "pattern": PATTERN},
            {"type": "number", "minimum": 1, "maximum": MAX.as_secs()},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_units_within_a_day_are_taken() {
        for (text, seconds) in [
            ("1s", 1),
            ("90s", 90),
            ("86400s", 86400),
            ("5m", 300),
            ("1440m", 86400),
            ("24h", 86400),
        ] {
            assert_eq!(
                parse_text(text),
                Some(Duration::from_secs(seconds)),
                "{text}"
            );
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "0s", "86401s", "1441m", "25h", "05m", "1h30m", " 5m", "5m ", "5", "m", "", "1.5h",
            "5M", "100000s", "5m\n",
        ] {
            assert_eq!(parse_text(text), None, "{text:?}");
        }
        assert!(parse("f", &serde_json::json!(0)).is_err());
        assert!(parse("f", &serde_json::json!(86401)).is_err());
        assert!(parse("f", &serde_json::json!(true)).is_err());
        assert_eq!(
            parse("f", &serde_json::json!(1.5)).unwrap(),
            Duration::from_millis(1500)
        );
    }

    /// The pattern the document publishes takes exactly what the parser takes.
    #[test]
    fn the_published_pattern_is_the_parser() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        let mut texts: Vec<String> = [
            "", "0", "00", "05", "1", "9", "10", "24", "25", "99", "1339", "1399", "1400", "1439",
            "1440", "1441", "9999", "10000", "79999", "80000", "85999", "86000", "86399", "86400",
            "86401", "99999", "100000",
        ]
        .iter()
        .flat_map(|n| ["s", "m", "h", "", "x"].map(|u| format!("{n}{u}")))
        .collect();
        texts.extend(["1h30m".into(), " 5m".into(), "5m\n".into()]);
        for text in texts {
            assert_eq!(
                pattern.is_match(&text),
                parse_text(&text).is_some(),
                "{text:?}"
            );
        }
    }
}
