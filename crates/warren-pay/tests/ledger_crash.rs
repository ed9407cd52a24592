//! A hub killed mid-settlement: a child process (this test binary, re-run with
//! `WARREN_LEDGER_CRASH_CHILD` set) settles a fixed script of promises against a SQLite
//! ledger, one at a time and in batches, printing after every commit. The parent kills it
//! with SIGKILL at a random moment, several times, restarting it a little before where it
//! had got to (so it replays promises already settled). After every kill the reopened
//! ledger must hold every commit the child reported (nothing lost), conserve money and
//! never have paid a pair past its largest promise; at the end, settling the whole script
//! again pays each pair exactly up to its largest promise and a further round pays nothing.

mod ledger_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ledger_support::*;
use warren_pay::ledger::Ledger;
use warren_pay::{ChannelId, FeeBps, Hub, SignedPromise};
use warren_types::{Amount, NodeId};

const CHILD_ENV: &str = "WARREN_LEDGER_CRASH_CHILD";
const START_ENV: &str = "WARREN_LEDGER_CRASH_START";
const HUB: u32 = 1000;
const CONSUMERS: u32 = 20;
const PROVIDERS: u32 = 6;
const PROMISES: usize = 3_000;
const ROUNDS: usize = 8;

struct Step {
    signed: SignedPromise,
    channel: ChannelId,
    provider: NodeId,
    cumulative: u64,
}

/// The same promises in every process: consumers promise growing amounts to providers in
/// a scrambled order.
fn script() -> Vec<Step> {
    let mut state: u64 = 0x5eed_cafe;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut cum: HashMap<(u32, u32), u64> = HashMap::new();
    (0..PROMISES)
        .map(|_| {
            let c = 100 + (next() % u64::from(CONSUMERS)) as u32;
            let p = 200 + (next() % u64::from(PROVIDERS)) as u32;
            let total = cum.entry((c, p)).or_default();
            *total += 1 + next() % 10_000;
            let pr = promise(node(HUB), channel(c), c, p, *total);
            Step {
                signed: signed(&pr, c),
                channel: channel(c),
                provider: node(p),
                cumulative: *total,
            }
        })
        .collect()
}

/// The child: settles the script from `START_ENV` on, forever, reporting each commit.
#[test]
fn crash_child_settle_loop() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only ever runs as the child of the test below.
    };
    let start: usize = std::env::var(START_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let steps = script();
    runtime().block_on(async {
        let ledger = sqlite(Path::new(&dir)).await;
        let hub = Hub::new(ledger, node(HUB), FeeBps::DEFAULT).unwrap();
        let mut out = std::io::stdout().lock();
        let mut i = start;
        let mut round = 0usize;
        while i < steps.len() {
            // Alternate single settlements and batches of different sizes.
            let n = if round.is_multiple_of(3) {
                1
            } else {
                1 + (round * 7) % 64
            };
            let end = (i + n).min(steps.len());
            if n == 1 {
                hub.settle(&steps[i].signed).await.unwrap();
            } else {
                let batch: Vec<SignedPromise> =
                    steps[i..end].iter().map(|s| s.signed.clone()).collect();
                for r in hub.settle_many(&batch).await.unwrap() {
                    r.unwrap();
                }
            }
            writeln!(out, "done {end}").unwrap();
            out.flush().unwrap();
            i = end;
            round += 1;
        }
        writeln!(out, "finished").unwrap();
        out.flush().unwrap();
        // Wait to be killed, like a hub that keeps running.
        std::thread::sleep(Duration::from_secs(600));
    });
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n.max(1)
}

/// Runs the child from `start`, kills it with SIGKILL at a random moment after its first
/// commit, and returns how far it said it had committed.
fn run_and_kill(dir: &Path, start: usize) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_settle_loop",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(START_ENV, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("done ") {
                let _ = tx.send(n.parse::<usize>().unwrap());
            } else if line == "finished" {
                let _ = tx.send(usize::MAX);
            }
        }
    });
    // Its first commit, then a random while into the run.
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child committed nothing within 60 s");
    if first != usize::MAX {
        std::thread::sleep(Duration::from_micros(random_below(150_000)));
    }
    child.kill().expect("SIGKILL to the child"); // std sends SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    let mut done = first;
    while let Ok(n) = rx.try_recv() {
        if n != usize::MAX {
            done = done.max(n);
        }
    }
    if first == usize::MAX {
        PROMISES
    } else {
        done.max(start)
    }
}

/// The largest cumulative promise per pair among `steps`.
fn max_cum(steps: &[Step]) -> HashMap<(ChannelId, NodeId), u64> {
    let mut m = HashMap::new();
    for s in steps {
        let e = m.entry((s.channel, s.provider)).or_insert(0);
        *e = (*e).max(s.cumulative);
    }
    m
}

#[test]
fn a_hub_killed_mid_settlement_loses_nothing_and_pays_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let steps = script();
    let rt = runtime();
    let escrow_each = 1_000_000_000u64;
    rt.block_on(async {
        let l = sqlite(dir).await;
        for c in 100..100 + CONSUMERS {
            l.deposit(node(c), nano(escrow_each), "faucet")
                .await
                .unwrap();
            l.open_escrow(node(c), channel(c), nano(escrow_each))
                .await
                .unwrap();
        }
        l.close().await;
    });
    let all = max_cum(&steps);

    let mut start = 0;
    for round in 0..ROUNDS {
        let done = run_and_kill(dir, start);
        rt.block_on(async {
            let l = sqlite(dir).await;
            let t = conserved(&l).await;
            assert_eq!(t.deposited, nano(escrow_each * u64::from(CONSUMERS)));
            // Every commit the child reported is there; no pair is past its largest promise.
            let acknowledged = max_cum(&steps[..done]);
            let mut paid = 0u64;
            for (&(ch, provider), &max) in &all {
                let s = l.settled(ch, provider).await.unwrap().nano();
                let floor = acknowledged.get(&(ch, provider)).copied().unwrap_or(0);
                assert!(
                    s >= floor,
                    "round {round}: a reported commit was lost ({s} < {floor})"
                );
                assert!(
                    s <= max,
                    "round {round}: paid past the largest promise ({s} > {max})"
                );
                paid += s;
            }
            // Everything that left the escrows went to providers and fees, once.
            assert_eq!(t.earned.nano() + t.fees.nano(), paid, "round {round}");
            assert_eq!(t.escrow.nano(), escrow_each * u64::from(CONSUMERS) - paid);
            l.close().await;
        });
        eprintln!("round {round}: started at {start}, killed after commit {done}");
        if done >= PROMISES {
            break;
        }
        // Restart a little before where it had got to: those are replays.
        start = done.saturating_sub(200);
    }

    rt.block_on(async {
        let l = sqlite(dir).await;
        let hub = Hub::new(l.clone(), node(HUB), FeeBps::DEFAULT).unwrap();
        let signed: Vec<SignedPromise> = steps.iter().map(|s| s.signed.clone()).collect();
        for chunk in signed.chunks(500) {
            for r in hub.settle_many(chunk).await.unwrap() {
                r.unwrap();
            }
        }
        for (&(ch, provider), &max) in &all {
            assert_eq!(l.settled(ch, provider).await.unwrap(), nano(max));
        }
        let t = conserved(&l).await;
        let total: u64 = all.values().sum();
        assert_eq!(t.earned.nano() + t.fees.nano(), total);
        // Fees: never above the rate on any settlement, so never above it in total.
        assert!(t.fees.nano() <= total / 100);
        for chunk in signed.chunks(500) {
            for r in hub.settle_many(chunk).await.unwrap() {
                assert_eq!(r.unwrap().paid, Amount::ZERO);
            }
        }
        assert_eq!(l.totals().await.unwrap(), t);
        l.close().await;
    });
}
