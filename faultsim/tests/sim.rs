//! The seeded fault simulation: the real gateway core against simulated piles.

use pile_faultsim::{report, run_blocking, run_in, shrink, Db, Entry, Mix, Op, Scenario};
use pile_protocol::Family;

const MIX: Mix = Mix { faults: true };

/// Seeds that fail on a known, recorded bug (faultsim/README.md "Bugs found"); each has an
/// ignored regression test. Skipped by the seed ranges so those keep finding new bugs.
/// Seeds that find gateway bugs not fixed yet (see faultsim/README.md, "Bugs found"):
/// 459 and 950 a BKV end report resent on the same connection is timed at its arrival; 2700 an
/// AP3000 start resent after a reconnect starts the charge again on a pile that had already
/// run it to its end (the 0x82 answer was lost).
const KNOWN_BUGS: [u64; 3] = [459, 950, 2700];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs seeds `range`; on the first failure, shrinks it and panics with the report.
fn seeds(range: std::ops::Range<u64>) {
    let rt = runtime();
    let db = rt.block_on(Db::new());
    for seed in range.filter(|s| !KNOWN_BUGS.contains(s)) {
        let sc = Scenario::generate(seed, MIX);
        let out = rt.block_on(run_in(&db, &sc));
        if !out.ok() {
            let (keep, shrunk) = shrink(&sc, &rt);
            panic!("{}", report(&sc, &keep, &shrunk));
        }
    }
}

#[test]
fn one_pile_one_charge_without_faults_is_billed_once() {
    for family in [Family::Bkv, Family::Ap3000] {
        let sc = Scenario {
            seed: 7,
            piles: vec![(family, 2)],
            schedule: vec![Entry {
                at_ms: 5_000,
                op: Op::Charge {
                    pile: 0,
                    port: 1,
                    by_energy: false,
                    target: 60,
                },
            }],
        };
        let out = run_blocking(&sc);
        assert!(out.ok(), "{}", report(&sc, &[0], &out));
        assert!(
            out.trace.iter().any(|l| l.contains("charge ends")),
            "the pile ran the charge: {:#?}",
            out.trace
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let sc = Scenario::generate(42, MIX);
    let a = run_blocking(&sc);
    let b = run_blocking(&sc);
    // …and on a reused database after another seed.
    let rt = runtime();
    let db = rt.block_on(Db::new());
    rt.block_on(run_in(&db, &Scenario::generate(41, MIX)));
    let c = rt.block_on(run_in(&db, &sc));
    assert_eq!(a.trace, c.trace);
    assert_eq!(a.trace, b.trace);
    assert!(a.events > 0);
}

#[test]
fn seeds_0000_0499() {
    seeds(0..500);
}

#[test]
fn seeds_0500_0999() {
    seeds(500..1000);
}

#[test]
fn seeds_1000_1499() {
    seeds(1000..1500);
}

#[test]
fn seeds_1500_1999() {
    seeds(1500..2000);
}

/// `range` split over every core.
fn seeds_parallel(range: std::ops::Range<u64>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per = (range.end - range.start).div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let from = range.start + t * per;
            let to = (from + per).min(range.end);
            std::thread::spawn(move || seeds(from..to))
        })
        .collect();
    for h in handles {
        h.join().expect("a seed failed (see its report above)");
    }
}

#[test]
#[ignore = "100,000 seeds; run on demand"]
fn seeds_100k() {
    seeds_parallel(0..100_000);
}

/// `FAULTSIM_FROM=2000 FAULTSIM_TO=8000 cargo test -p pile-faultsim --test sim -- --ignored seeds_range`
#[test]
#[ignore = "a seed range from FAULTSIM_FROM / FAULTSIM_TO; run on demand"]
fn seeds_range() {
    let var = |name: &str| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} must be a seed number"))
    };
    seeds_parallel(var("FAULTSIM_FROM")..var("FAULTSIM_TO"));
}

/// `FAULTSIM_SEED=n [FAULTSIM_KEEP=i,j,…|none] cargo test -p pile-faultsim --test sim -- replay --nocapture`
/// replays one seed (seed 0 without the variable) and prints its trace.
#[test]
fn replay() {
    let seed = std::env::var("FAULTSIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut sc = Scenario::generate(seed, MIX);
    if let Ok(k) = std::env::var("FAULTSIM_KEEP") {
        let keep: Vec<usize> = k.split(',').filter_map(|x| x.parse().ok()).collect();
        sc = sc.keep(&keep);
    }
    let out = run_blocking(&sc);
    let all: Vec<usize> = (0..sc.schedule.len()).collect();
    println!("{}", report(&sc, &all, &out));
    assert!(out.ok(), "seed {seed} fails (report above)");
}

#[test]
#[ignore]
fn timing_probe() {
    let rt = runtime();
    let t = std::time::Instant::now();
    rt.block_on(async {
        pile_server::store::Store::connect("sqlite::memory:", 1)
            .await
            .unwrap();
    });
    println!("connect+migrate {:?}", t.elapsed());
    let db = rt.block_on(Db::new());
    for seed in 0..20 {
        let t = std::time::Instant::now();
        let out = rt.block_on(run_in(&db, &Scenario::generate(seed, MIX)));
        println!(
            "seed {seed}: {} events {:?} ok={}",
            out.events,
            t.elapsed(),
            out.ok()
        );
    }
}

/// Known bugs (faultsim/README.md, `KNOWN_BUGS`): a BKV end report lost and resent on the same
/// connection is timed by the gateway's clock at its arrival (a 68.5 s charge billed 84 s); an
/// AP3000 start resent after a reconnect runs again on a pile that had finished it.
#[test]
#[ignore = "known bugs: BKV resent end timed at arrival; AP3000 finished start resent"]
fn regression_known_bug_seeds_459_950_2700() {
    for seed in KNOWN_BUGS {
        let sc = Scenario::generate(seed, MIX);
        let out = run_blocking(&sc);
        let all: Vec<usize> = (0..sc.schedule.len()).collect();
        assert!(out.ok(), "{}", report(&sc, &all, &out));
    }
}

/// Seeds that found bugs fixed since (kept as plain regressions).
#[test]
fn regression_seeds_that_found_fixed_bugs() {
    for seed in [281, 603, 782, 1119, 1404, 1556] {
        let sc = Scenario::generate(seed, MIX);
        let out = run_blocking(&sc);
        let all: Vec<usize> = (0..sc.schedule.len()).collect();
        assert!(out.ok(), "{}", report(&sc, &all, &out));
    }
}
