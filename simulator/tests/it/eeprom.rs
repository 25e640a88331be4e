//! `kill -9` of a `pile-sim` process is a power outage: with `--eeprom`, the
//! restarted piles resend the settlements the server never acknowledged and
//! report every charge that was running as cut by the outage. Real processes
//! and real time (a few seconds): the fake gateway is the server.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use pile_protocol::ap3000::{self, Message, OrderNo, PhysicalId, StopReason};
use pile_protocol::Family;

use crate::support::{bytes_of, Event, FakeGateway, Seen};

const ID: &str = "04AB373B";

fn pid() -> PhysicalId {
    ID.parse().unwrap()
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(gw: &FakeGateway, eeprom: &std::path::Path) -> Sim {
    let child = Command::new(env!("CARGO_BIN_EXE_pile-sim"))
        .args(["run", "--server", &gw.addr.to_string()])
        .args(["--protocol", "ap3000", "--devices", "1", "--seed", "3"])
        .args(["--heartbeat", "1", "--reconnect-delay", "0.2"])
        .arg("--eeprom")
        .arg(eeprom)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pile-sim starts");
    Sim(child)
}

fn settlement(e: &Event) -> Option<ap3000::Settlement> {
    match &e.seen {
        Seen::Ap(f) => match &f.message {
            Message::Settlement(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

async fn registered(gw: &FakeGateway, from: usize) -> usize {
    let (i, _) = gw
        .wait_for(
            "a heartbeat",
            from,
            20,
            |e| matches!(&e.seen, Seen::Ap(f) if matches!(f.message, Message::Heartbeat(_))),
        )
        .await;
    i + 1
}

#[tokio::test]
async fn a_killed_process_resends_unacknowledged_settlements_and_cuts_running_charges() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    gw.policy.ack_ends.store(false, SeqCst);
    let dir = std::env::temp_dir().join("pile-sim-eeprom-it");
    std::fs::create_dir_all(&dir).unwrap();
    let eeprom = dir.join(format!("{}.jsonl", rand::random::<u64>()));

    // Run 1: a short charge ends (its settlement is never acknowledged) and a
    // long one is running when the process is killed.
    let mut sim = spawn(&gw, &eeprom);
    let mark = registered(&gw, 0).await;
    let (short, long) = (OrderNo([1; 16]), OrderNo([2; 16]));
    gw.send(bytes_of(&ap3000::Frame::start_by_seconds(
        pid(),
        0x11,
        0,
        2,
        short,
        100,
    )))
    .await;
    gw.send(bytes_of(&ap3000::Frame::start_by_seconds(
        pid(),
        0x12,
        1,
        3600,
        long,
        100,
    )))
    .await;
    let (i, e) = gw
        .wait_for("the first settlement", mark, 15, |e| {
            settlement(e).is_some()
        })
        .await;
    assert_eq!(settlement(&e).unwrap().order_no, short);
    // Two heartbeat periods: the running charge has snapshots on file.
    gw.wait_for(
        "two more heartbeats",
        i,
        10,
        |e| matches!(&e.seen, Seen::Ap(f) if matches!(f.message, Message::Heartbeat(_))),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.0.kill().unwrap(); // SIGKILL: no shutdown code runs.
    sim.0.wait().unwrap();
    drop(sim);

    // Run 2: the same EEPROM file. The gateway acknowledges now.
    gw.policy.ack_ends.store(true, SeqCst);
    let before = gw.len();
    let _sim = spawn(&gw, &eeprom);
    let mark = registered(&gw, before).await;
    let (i, first) = gw
        .wait_for("a replayed settlement", mark, 15, |e| {
            settlement(e).is_some()
        })
        .await;
    let (_, second) = gw
        .wait_for("the second replayed settlement", i + 1, 15, |e| {
            settlement(e).is_some()
        })
        .await;
    let mut got = [settlement(&first).unwrap(), settlement(&second).unwrap()];
    got.sort_by_key(|s| s.order_no.0);
    assert_eq!(got[0].order_no, short);
    assert_eq!(
        (got[0].stop_reason, got[0].duration_s),
        (StopReason::PRESET_TIME, 2),
        "the unacknowledged settlement, as first sent"
    );
    assert_eq!(got[1].order_no, long);
    assert_eq!(
        got[1].stop_reason,
        StopReason::NO_POWER,
        "the running charge, cut by the outage"
    );
    assert!(
        (1..=10).contains(&got[1].duration_s),
        "at its last snapshot: {} s",
        got[1].duration_s
    );
    assert!(got[1].energy_cwh <= 1);
    // The acknowledgements reach the file before this process is killed too.
    let acks = || {
        std::fs::read_to_string(&eeprom)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"op\":\"ack\""))
            .count()
    };
    for _ in 0..100 {
        if acks() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acks(), 2, "both acknowledgements written");
    drop(_sim);

    // Run 3: both were acknowledged; nothing is left to replay.
    let before = gw.len();
    let _sim = spawn(&gw, &eeprom);
    let mark = registered(&gw, before).await;
    gw.assert_none("a settlement after the acknowledgements", mark, 3, |e| {
        settlement(e).is_some()
    })
    .await;
    let _ = std::fs::remove_file(&eeprom);
}
