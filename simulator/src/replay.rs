//! The pile's "EEPROM": records that must reach the server, kept in order.
//!
//! Transaction records (charge end reports, settlements) stay until the server
//! acknowledges them and are resent on a fixed period meanwhile; a record is
//! identified by a key (port and order), so storing the same record twice is a
//! no-op. Progress samples taken while offline are kept too, but they are sent
//! once and forgotten (the protocols do not acknowledge them), and only the
//! newest [`ReplayStore::progress_cap`] of them are kept.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Entry<K, R> {
    pub key: K,
    pub record: R,
    /// Whether the record stays until acknowledged (else it is sent once).
    pub needs_ack: bool,
    pub last_sent: Option<Instant>,
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct ReplayStore<K, R> {
    entries: VecDeque<Entry<K, R>>,
    progress_cap: usize,
}

impl<K: PartialEq + Clone, R: Clone> ReplayStore<K, R> {
    pub fn new(progress_cap: usize) -> Self {
        ReplayStore {
            entries: VecDeque::new(),
            progress_cap,
        }
    }

    pub fn progress_cap(&self) -> usize {
        self.progress_cap
    }

    /// Stores a record that stays until acknowledged. Returns false if a
    /// record with the same key is already stored (it keeps its place).
    pub fn push(&mut self, key: K, record: R) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.entries.push_back(Entry {
            key,
            record,
            needs_ack: true,
            last_sent: None,
            attempts: 0,
        });
        true
    }

    /// Stores a progress sample that is sent once; the oldest sample is
    /// dropped when the store holds `progress_cap` of them already.
    pub fn push_progress(&mut self, key: K, record: R) -> bool {
        if self.contains(&key) {
            return false;
        }
        if self.progress_cap == 0 {
            return false;
        }
        if self.entries.iter().filter(|e| !e.needs_ack).count() >= self.progress_cap {
            if let Some(pos) = self.entries.iter().position(|e| !e.needs_ack) {
                self.entries.remove(pos);
            }
        }
        self.entries.push_back(Entry {
            key,
            record,
            needs_ack: false,
            last_sent: None,
            attempts: 0,
        });
        true
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.iter().any(|e| &e.key == key)
    }

    /// Removes the record acknowledged by the server. Returns it, or `None`
    /// for an acknowledgement of nothing stored (a duplicate ack).
    pub fn ack(&mut self, key: &K) -> Option<R> {
        let pos = self
            .entries
            .iter()
            .position(|e| &e.key == key && e.needs_ack)?;
        self.entries.remove(pos).map(|e| e.record)
    }

    /// Removes the first record that needs an ack and matches `pred`.
    pub fn ack_where(&mut self, pred: impl Fn(&K, &R) -> bool) -> Option<R> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.needs_ack && pred(&e.key, &e.record))?;
        self.entries.remove(pos).map(|e| e.record)
    }

    /// The records to send now, oldest first: never sent, or last sent at
    /// least `resend_after` ago. Marks them sent at `now`; progress samples
    /// leave the store as they are handed out.
    pub fn take_due(&mut self, now: Instant, resend_after: Duration) -> Vec<(K, R)> {
        let mut out = Vec::new();
        self.entries.retain_mut(|e| {
            let due = e
                .last_sent
                .is_none_or(|at| now.saturating_duration_since(at) >= resend_after);
            if !due {
                return true;
            }
            out.push((e.key.clone(), e.record.clone()));
            e.last_sent = Some(now);
            e.attempts += 1;
            e.needs_ack
        });
        out
    }

    /// Forgets when records were sent, so all go out at the next
    /// [`ReplayStore::take_due`] (after a reconnect).
    pub fn mark_all_unsent(&mut self) {
        for e in &mut self.entries {
            e.last_sent = None;
        }
    }

    /// When the next record that was sent already falls due for a resend
    /// (records never sent are due at once: see [`ReplayStore::has_unsent`]).
    pub fn next_due(&self, resend_after: Duration) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| e.last_sent.map(|at| at + resend_after))
            .min()
    }

    /// Whether a record has never been sent.
    pub fn has_unsent(&self) -> bool {
        self.entries.iter().any(|e| e.last_sent.is_none())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that wait for an acknowledgement.
    pub fn pending_acks(&self) -> usize {
        self.entries.iter().filter(|e| e.needs_ack).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry<K, R>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ReplayStore<(u8, u32), &'static str> {
        ReplayStore::new(3)
    }

    #[test]
    fn records_go_out_in_order_and_stay_until_acked() {
        let mut s = store();
        let t0 = Instant::now();
        assert!(s.push((1, 10), "end a"));
        assert!(s.push((2, 11), "end b"));
        let sent = s.take_due(t0, Duration::from_secs(15));
        assert_eq!(sent, vec![((1, 10), "end a"), ((2, 11), "end b")]);
        assert_eq!(s.len(), 2);
        assert!(s
            .take_due(t0 + Duration::from_secs(14), Duration::from_secs(15))
            .is_empty());
        assert_eq!(
            s.next_due(Duration::from_secs(15)),
            Some(t0 + Duration::from_secs(15))
        );
        let again = s.take_due(t0 + Duration::from_secs(15), Duration::from_secs(15));
        assert_eq!(again.len(), 2, "resent until acknowledged");
        assert_eq!(s.ack(&(1, 10)), Some("end a"));
        assert_eq!(s.ack(&(1, 10)), None, "a duplicate ack is ignored");
        assert_eq!(s.pending_acks(), 1);
        assert_eq!(s.iter().next().map(|e| e.attempts), Some(2));
    }

    #[test]
    fn the_same_record_is_stored_once() {
        let mut s = store();
        assert!(s.push((1, 10), "end"));
        assert!(!s.push((1, 10), "end again"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.iter().next().map(|e| e.record), Some("end"));
    }

    #[test]
    fn progress_is_sent_once_and_capped() {
        let mut s = store();
        for i in 0..5 {
            assert!(s.push_progress((9, i), "progress"));
        }
        assert!(s.push((1, 1), "end"));
        assert_eq!(s.len(), 4, "three newest samples and the end report");
        let sent = s.take_due(Instant::now(), Duration::from_secs(15));
        let keys: Vec<_> = sent.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![(9, 2), (9, 3), (9, 4), (1, 1)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.pending_acks(), 1);
    }

    #[test]
    fn after_a_reconnect_everything_is_due_again() {
        let mut s = store();
        let t0 = Instant::now();
        s.push((1, 1), "end");
        s.take_due(t0, Duration::from_secs(60));
        assert!(!s.has_unsent());
        s.mark_all_unsent();
        assert!(s.has_unsent());
        assert_eq!(
            s.take_due(t0 + Duration::from_secs(1), Duration::from_secs(60))
                .len(),
            1
        );
        assert_eq!(s.ack_where(|k, _| k.0 == 1), Some("end"));
        assert!(s.is_empty());
    }
}
