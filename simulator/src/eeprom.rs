//! The fleet's non-volatile memory: one small file that keeps, per pile, the
//! end records the server has not acknowledged yet and a snapshot of every
//! running charge — what the vendors' piles keep in EEPROM ("此命令存到EEPROM中，
//! 必须要收到服务器应答才能删除", AP3000 §3.3).
//!
//! Every change is appended as one JSON line and written (one `write` call)
//! before the pile goes on: an end record before it is first sent, an
//! acknowledgement when it arrives, a running charge when it starts and at
//! every heartbeat period. A process that is killed (`kill -9`) therefore
//! loses nothing it has said; on the next start the piles find their
//! unacknowledged ends and resend them, and every charge that was running is
//! cut as by a power outage at its last snapshot and reported as such. The
//! writes are not `fsync`ed: a process kill is covered, a machine crash may
//! lose the last lines.
//!
//! The file is compacted (rewritten with only the live entries) when it is
//! opened and whenever it has grown to several times what is live.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::msg::{EndReason, EndRecord, Order};

/// One line of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    /// An end record that waits for its acknowledgement.
    End { pile: String, rec: EndRecord },
    /// A running charge, as its end report would read if the power went now.
    Run { pile: String, rec: EndRecord },
    /// The server acknowledged the end of this charge.
    Ack {
        pile: String,
        port: u16,
        order: Order,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Running(EndRecord),
    End(EndRecord),
}

type Key = (String, u16, Order);

#[derive(Debug)]
struct Inner {
    file: File,
    /// Live entries in the order they were first written.
    live: Vec<(Key, Entry)>,
    index: HashMap<Key, usize>,
    lines: usize,
    failed: bool,
}

/// A fleet's EEPROM file. Shared by every pile of the fleet.
#[derive(Debug)]
pub struct Eeprom {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn key(pile: &str, rec: &EndRecord) -> Key {
    (pile.to_string(), rec.port_no, rec.order)
}

impl Inner {
    fn apply(&mut self, line: Line) {
        match line {
            Line::End { pile, rec } => {
                let k = key(&pile, &rec);
                self.set(k, Entry::End(rec));
            }
            Line::Run { pile, rec } => {
                let k = key(&pile, &rec);
                // A charge that has ended keeps its end record.
                if !matches!(self.get(&k), Some(Entry::End(_))) {
                    self.set(k, Entry::Running(rec));
                }
            }
            Line::Ack { pile, port, order } => self.remove(&(pile, port, order)),
        }
    }

    fn get(&self, k: &Key) -> Option<&Entry> {
        self.index
            .get(k)
            .and_then(|i| self.live.get(*i))
            .map(|(_, e)| e)
    }

    fn set(&mut self, k: Key, e: Entry) {
        match self.index.get(&k) {
            Some(i) => {
                if let Some(slot) = self.live.get_mut(*i) {
                    slot.1 = e;
                }
            }
            None => {
                self.index.insert(k.clone(), self.live.len());
                self.live.push((k, e));
            }
        }
    }

    fn remove(&mut self, k: &Key) {
        if let Some(i) = self.index.remove(k) {
            self.live.remove(i);
            for v in self.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
    }

    fn line_of(k: &Key, e: &Entry) -> Line {
        match e {
            Entry::End(rec) => Line::End {
                pile: k.0.clone(),
                rec: rec.clone(),
            },
            Entry::Running(rec) => Line::Run {
                pile: k.0.clone(),
                rec: rec.clone(),
            },
        }
    }
}

fn encode(line: &Line) -> Vec<u8> {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Rewrites `path` with only `live`, atomically (temporary file + rename).
fn rewrite(path: &Path, live: &[(Key, Entry)]) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        let mut all = Vec::new();
        for (k, e) in live {
            all.extend(encode(&Inner::line_of(k, e)));
        }
        f.write_all(&all)?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

impl Eeprom {
    /// Opens (or creates) the file, reads what a previous run left and
    /// compacts it. Lines that do not parse (a write cut by the kill) are
    /// skipped.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Arc<Eeprom>> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut inner = Inner {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            live: Vec::new(),
            index: HashMap::new(),
            lines: 0,
            failed: false,
        };
        let reader = BufReader::new(File::open(&path)?);
        for line in reader.lines() {
            if let Ok(line) = serde_json::from_str::<Line>(&line?) {
                inner.apply(line);
            }
        }
        inner.file = rewrite(&path, &inner.live)?;
        inner.lines = inner.live.len();
        Ok(Arc::new(Eeprom {
            path,
            inner: Mutex::new(inner),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, line: Line) {
        let bytes = encode(&line);
        let mut inner = self.lock();
        inner.apply(line);
        inner.lines += 1;
        let result = if inner.lines > 4 * inner.live.len() + 1024 {
            rewrite(&self.path, &inner.live).map(|f| {
                inner.file = f;
                inner.lines = inner.live.len();
            })
        } else {
            inner.file.write_all(&bytes)
        };
        if let Err(e) = result {
            if !inner.failed {
                inner.failed = true;
                tracing::warn!(path = %self.path.display(), error = %e, "EEPROM file not written");
            }
        }
    }

    /// An end record, stored before it is first sent.
    pub fn end(&self, pile: &str, rec: &EndRecord) {
        self.write(Line::End {
            pile: pile.to_string(),
            rec: rec.clone(),
        });
    }

    /// A running charge's snapshot (its end record if the power went now).
    pub fn running(&self, pile: &str, rec: &EndRecord) {
        self.write(Line::Run {
            pile: pile.to_string(),
            rec: rec.clone(),
        });
    }

    /// The server acknowledged this end.
    pub fn acked(&self, pile: &str, port_no: u16, order: Order) {
        self.write(Line::Ack {
            pile: pile.to_string(),
            port: port_no,
            order,
        });
    }

    /// What pile `pile` must report after a restart, oldest first: its
    /// unacknowledged ends, and every charge that was running, cut as a power
    /// outage at its last snapshot (stored as an end from now on).
    pub fn restore(&self, pile: &str) -> Vec<EndRecord> {
        let entries: Vec<Entry> = {
            let inner = self.lock();
            inner
                .live
                .iter()
                .filter(|(k, _)| k.0 == pile)
                .map(|(_, e)| e.clone())
                .collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match e {
                Entry::End(rec) => out.push(rec),
                Entry::Running(mut rec) => {
                    rec.reason = EndReason::PowerOutage;
                    self.end(pile, &rec);
                    out.push(rec);
                }
            }
        }
        out
    }

    /// How many entries (ends and running charges) the file holds.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Origin;

    fn rec(port_no: u16, n: u16, reason: EndReason) -> EndRecord {
        EndRecord {
            port_no,
            order: Order::Bkv(n),
            origin: Origin::Bkv07,
            reason,
            duration_s: 60,
            energy_wh: 3.5,
            power_w: 180.0,
            max_power_w: 190.0,
            current_a: 0.8,
            voltage_v: 220.0,
            start_unix: 1_790_000_000,
            end_unix: 1_790_000_060,
            msg_id: 7,
            billing: None,
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join("pile-sim-eeprom-unit");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{name}-{}.jsonl", rand::random::<u64>()))
    }

    #[test]
    fn ends_survive_a_reopen_until_acknowledged_and_running_charges_become_outages() {
        let path = temp_path("reopen");
        {
            let e = Eeprom::open(&path).unwrap();
            e.end("P1", &rec(1, 10, EndReason::TimeReached));
            e.end("P1", &rec(2, 11, EndReason::Full));
            e.acked("P1", 2, Order::Bkv(11));
            e.running("P1", &rec(3, 12, EndReason::PowerOutage));
            e.running("P2", &rec(1, 20, EndReason::PowerOutage));
            // Dropped without any shutdown, as by kill -9.
        }
        let e = Eeprom::open(&path).unwrap();
        let p1 = e.restore("P1");
        assert_eq!(
            p1.iter().map(|r| (r.port_no, r.reason)).collect::<Vec<_>>(),
            vec![(1, EndReason::TimeReached), (3, EndReason::PowerOutage)]
        );
        assert_eq!(e.restore("P2").len(), 1);
        assert!(e.restore("P3").is_empty());
        // A cut line (a write interrupted by the kill) is skipped.
        drop(e);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"op\":\"end\",\"pile\":\"P9\",\"rec\":{")
            .unwrap();
        let e = Eeprom::open(&path).unwrap();
        assert_eq!(e.live(), 3);
        e.acked("P1", 1, Order::Bkv(10));
        e.acked("P1", 3, Order::Bkv(12));
        assert_eq!(e.live(), 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_end_is_not_undone_by_a_late_running_snapshot_and_the_file_compacts() {
        let path = temp_path("compact");
        let e = Eeprom::open(&path).unwrap();
        e.end("P1", &rec(1, 1, EndReason::Unplugged));
        e.running("P1", &rec(1, 1, EndReason::PowerOutage));
        assert_eq!(e.restore("P1")[0].reason, EndReason::Unplugged);
        for i in 0..3000u16 {
            e.running("P1", &rec(2, 2, EndReason::PowerOutage));
            if i % 1000 == 0 {
                e.end("P1", &rec(3, i, EndReason::Full));
                e.acked("P1", 3, Order::Bkv(i));
            }
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 2000, "compacted, {lines} lines");
        drop(e);
        let e = Eeprom::open(&path).unwrap();
        assert_eq!(e.live(), 2);
        let _ = std::fs::remove_file(&path);
    }
}
