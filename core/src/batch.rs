//! The one rule every batcher in Kiln follows (group commit, lease renewals, webhook results,
//! ring acknowledgements): a batch is whatever is waiting when the previous batch is done,
//! never a timer to fill, so a lone item goes at once and batches grow with the load.

use tokio::sync::mpsc::UnboundedReceiver;

/// `first` and whatever else is already waiting in `waiting`, up to `max` in all, without
/// waiting for more.
pub fn take_waiting<T>(first: T, waiting: &mut UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match waiting.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_waits_up_to_its_size_and_no_more() {
        let (send, mut waiting) = tokio::sync::mpsc::unbounded_channel();
        assert_eq!(
            take_waiting(0, &mut waiting, 4),
            vec![0],
            "a lone item goes alone"
        );
        for i in 1..=6 {
            send.send(i).unwrap();
        }
        assert_eq!(take_waiting(0, &mut waiting, 4), vec![0, 1, 2, 3]);
        assert_eq!(take_waiting(9, &mut waiting, 4), vec![9, 4, 5, 6]);
    }
}
