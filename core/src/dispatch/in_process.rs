//! The in-process doorbell of the embedded default: a tokio channel from the api (and the
//! worker's retry timers) to the worker in the same process. Rings still in the channel when the
//! process dies are lost with it; the next process's reconciler rings those jobs from the ledger.
//!
//! One channel per lane. The worker takes from them in a repeating pattern (high four times,
//! normal twice, low once), skipping empty lanes, so high goes first under load and low is
//! never starved.

use super::{DispatchError, Doorbell, Lane, Ring, RingStream};
use crate::job::JobId;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct InProcessDoorbell {
    lanes: [mpsc::UnboundedSender<JobId>; 3],
}

/// The order lanes are offered in, repeating: a weighted round.
const PATTERN: [Lane; 7] = [
    Lane::High,
    Lane::High,
    Lane::Normal,
    Lane::High,
    Lane::Normal,
    Lane::High,
    Lane::Low,
];

fn slot(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}

pub fn in_process() -> (InProcessDoorbell, RingStream) {
    let (high, high_rx) = mpsc::unbounded_channel::<JobId>();
    let (normal, normal_rx) = mpsc::unbounded_channel::<JobId>();
    let (low, low_rx) = mpsc::unbounded_channel::<JobId>();
    let mut receivers = [high_rx, normal_rx, low_rx];
    let mut turn = 0usize;
    let rings = futures::stream::poll_fn(move |cx| {
        let mut closed = 0;
        // Offer each lane in the pattern's order from this turn on; every receiver is polled
        // at least once, so each registers this task for wake-up.
        for step in 0..PATTERN.len() {
            let lane = PATTERN[(turn + step) % PATTERN.len()];
            match receivers[slot(lane)].poll_recv(cx) {
                std::task::Poll::Ready(Some(job)) => {
                    turn = (turn + step + 1) % PATTERN.len();
                    return std::task::Poll::Ready(Some(Ok(Ring { job, receipt: None })));
                }
                std::task::Poll::Ready(None) => closed += 1,
                std::task::Poll::Pending => {}
            }
        }
        if closed >= PATTERN.len() {
            std::task::Poll::Ready(None)
        } else {
            std::task::Poll::Pending
        }
    })
    .boxed();
    (
        InProcessDoorbell {
            lanes: [high, normal, low],
        },
        rings,
    )
}

#[async_trait]
impl Doorbell for InProcessDoorbell {
    async fn ring(&self, job: JobId, lane: Lane) -> Result<(), DispatchError> {
        self.lanes[slot(lane)]
            .send(job)
            .map_err(|_| DispatchError::Unavailable("the in-process worker has stopped".into()))
    }
}

/// The doorbell of an api process that shares no queue with its workers (the embedded default
/// split into `kiln api` and `kiln worker`): ringing does nothing, because such workers find due
/// jobs by polling the ledger on every reconciler pass.
pub struct LedgerPolling;

#[async_trait]
impl Doorbell for LedgerPolling {
    async fn ring(&self, _job: JobId, _lane: Lane) -> Result<(), DispatchError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rings: &mut RingStream) -> JobId {
        rings.next().await.unwrap().unwrap().job
    }

    #[tokio::test]
    async fn a_high_ring_overtakes_waiting_low_ones() {
        let (bell, mut rings) = in_process();
        let lows: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
        for j in &lows {
            bell.ring(*j, Lane::Low).await.unwrap();
        }
        let high = JobId::new();
        bell.ring(high, Lane::High).await.unwrap();
        assert_eq!(next(&mut rings).await, high);
        for j in &lows {
            assert_eq!(next(&mut rings).await, *j, "a lane keeps its order");
        }
    }

    #[tokio::test]
    async fn the_low_lane_is_never_starved_by_a_busy_high_one() {
        let (bell, mut rings) = in_process();
        let low = JobId::new();
        bell.ring(low, Lane::Low).await.unwrap();
        for _ in 0..100 {
            bell.ring(JobId::new(), Lane::High).await.unwrap();
        }
        // One pattern round holds one low turn: the low ring comes within the first seven.
        let mut taken = vec![];
        for _ in 0..PATTERN.len() {
            taken.push(next(&mut rings).await);
        }
        assert!(taken.contains(&low), "the low ring waited past a round");
    }
}
