//! A shared timer wheel for many piles.
//!
//! A fleet of 100,000 piles must not own 100,000 timers. A few shard tasks
//! each keep a binary heap of (deadline, pile) and a single sleep for the
//! earliest one; when it passes, the shard wakes the pile through its
//! [`Notify`]. Piles register a deadline only when it is earlier than the one
//! they already registered, so stale entries are few; a stale wake-up is
//! harmless (the pile finds nothing due and goes back to waiting).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// The handle piles use to ask for a wake-up.
#[derive(Clone)]
pub struct Scheduler {
    shards: Arc<[mpsc::UnboundedSender<Wake>]>,
}

struct Wake {
    at: Instant,
    seq: u64,
    notify: Arc<Notify>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    // Reversed: the heap pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Scheduler {
    /// Starts `shards` shard tasks on the current runtime. They end when
    /// every [`Scheduler`] clone is dropped.
    pub fn start(shards: usize) -> Self {
        let shards = shards.max(1);
        let mut senders = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_shard(rx));
            senders.push(tx);
        }
        Scheduler {
            shards: senders.into(),
        }
    }

    /// Wakes `notify` at `at` (at once if `at` has passed). `key` picks the
    /// shard, so one pile always lands on the same shard.
    pub fn wake_at(&self, key: u64, at: Instant, notify: &Arc<Notify>) {
        let shard = (key % self.shards.len() as u64) as usize;
        if let Some(tx) = self.shards.get(shard) {
            // A send fails only when the shard ended at shutdown.
            let _ = tx.send(Wake {
                at,
                seq: key,
                notify: Arc::clone(notify),
            });
        }
    }
}

async fn run_shard(mut rx: mpsc::UnboundedReceiver<Wake>) {
    let mut heap: BinaryHeap<Wake> = BinaryHeap::new();
    let mut batch = Vec::with_capacity(256);
    loop {
        let next = heap.peek().map(|w| w.at);
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                heap.extend(batch.drain(..));
            }
            _ = sleep_until_opt(next) => {}
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|w| w.at <= now) {
            if let Some(w) = heap.pop() {
                w.notify.notify_one();
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn piles_are_woken_at_their_deadlines_in_order() {
        let sched = Scheduler::start(2);
        let t0 = Instant::now();
        let a = Arc::new(Notify::new());
        let b = Arc::new(Notify::new());
        sched.wake_at(0, t0 + Duration::from_secs(11), &a);
        sched.wake_at(1, t0 + Duration::from_secs(3), &b);
        b.notified().await;
        assert_eq!(t0.elapsed().as_secs(), 3);
        a.notified().await;
        assert_eq!(t0.elapsed().as_secs(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_wakes_at_once() {
        let sched = Scheduler::start(1);
        let t0 = Instant::now();
        let a = Arc::new(Notify::new());
        sched.wake_at(5, t0, &a);
        a.notified().await;
        assert_eq!(t0.elapsed().as_millis(), 0);
    }
}
