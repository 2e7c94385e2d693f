//! Progress read out of a model's logs. Cog and Replicate report no progress field; what they
//! carry is the prediction's log text, and diffusion models log their sampling loop through
//! tqdm (` 45%|████▌     | 45/100 [00:03<00:04, 12.1it/s]`). The last such bar in the logs is
//! how far the model has come, which is what Replicate's own pages show. Logs without a bar
//! say nothing, and then Kiln shows no progress rather than a guess.

/// The fraction done according to the last tqdm bar in `logs`, if there is one.
pub fn from_logs(logs: &str) -> Option<f64> {
    // tqdm redraws a bar in place with '\r'; every redraw is a candidate, the last one wins.
    logs.split(['\n', '\r']).rev().find_map(bar_fraction)
}

/// `NN%|` at the start of a bar, or `n/total` after it when the percentage is absent.
fn bar_fraction(line: &str) -> Option<f64> {
    let (before, after) = line.split_once('|')?;
    let percent = before.trim().strip_suffix('%').and_then(|p| {
        let digits = p.rsplit(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse::<u32>().ok().filter(|p| *p <= 100)
    });
    if let Some(p) = percent {
        return Some(f64::from(p) / 100.0);
    }
    // `| 45/100 [` after the bar's last segment.
    let counts = after.rsplit('|').next()?.split_whitespace().next()?;
    let (done, total) = counts.split_once('/')?;
    let (done, total) = (done.parse::<u64>().ok()?, total.parse::<u64>().ok()?);
    (total > 0 && done <= total).then(|| done as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::from_logs;

    #[test]
    fn the_last_bar_in_the_logs_wins() {
        let logs = "loading weights\n  0%|          | 0/50 [00:00<?, ?it/s]\n 44%|████▍     | 22/50 [00:02<00:02, 11.0it/s]\n";
        assert_eq!(from_logs(logs), Some(0.44));
    }

    #[test]
    fn redraws_with_carriage_returns_count() {
        let logs = " 10%|#         | 1/10\r 20%|##        | 2/10\r 30%|###       | 3/10";
        assert_eq!(from_logs(logs), Some(0.3));
    }

    #[test]
    fn counts_stand_in_when_the_percentage_is_missing() {
        assert_eq!(from_logs("sampling |####      | 4/10 [00:01]"), Some(0.4));
    }

    #[test]
    fn logs_without_a_bar_say_nothing() {
        assert_eq!(from_logs("hello | world\nprompt: a cat"), None);
        assert_eq!(from_logs(""), None);
        assert_eq!(from_logs("150%| nonsense"), None);
    }
}
