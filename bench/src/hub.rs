//! `bench-hub`: the hub quality bar of SPEC §8 — promises settled per second by one hub on
//! SQLite, target ≥ 30,000/s on one core (batching allowed) — and beside it how many
//! promise signatures one core verifies per second and what the two make together.
//!
//! Everything is local: the ledger is a SQLite file in a temporary directory. A benchmark,
//! not a test: it prints figures and PASS/FAIL, and exits non-zero only when it could not
//! measure (or the books did not balance afterwards).

#[allow(dead_code)]
mod proc_stat;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use warren_pay::ledger::{Durability, Ledger, SqliteLedger};
use warren_pay::{ChannelId, FeeBps, Hub, Promise, SignedPromise};
use warren_types::{Amount, Identity, NodeId};

const USAGE: &str = "\
bench-hub: promises verified and settled per second by one hub on SQLite (SPEC §8)

USAGE:
  bench-hub [--promises N] [--consumers C] [--providers P] [--batch B]
            [--single N] [--durability full|normal] [--target PER_SEC]

  --promises N       signed promises to verify and settle          [default: 100000]
  --consumers C      consumers, each with one escrow channel       [default: 1000]
  --providers P      providers the promises are to                 [default: 100]
  --batch B          promises per ledger transaction               [default: 1000]
  --single N         also settle N promises one per transaction    [default: 2000]
  --durability D     SQLite synchronous=FULL or NORMAL (WAL)       [default: full]
  --target PER_SEC   the bar for hub-settle                        [default: 30000]

Runs on one tokio thread (SQLite's own connection thread beside it; the CPU line says
how much of a core each phase used). Pin it to one core with `taskset -c 0 bench-hub`.
";

struct Args {
    promises: usize,
    consumers: usize,
    providers: usize,
    batch: usize,
    single: usize,
    durability: Durability,
    target: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        promises: 100_000,
        consumers: 1_000,
        providers: 100,
        batch: 1_000,
        single: 2_000,
        durability: Durability::Full,
        target: 30_000.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} wants a whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--promises" => a.promises = number()?,
            "--consumers" => a.consumers = number()?.max(1),
            "--providers" => a.providers = number()?.max(1),
            "--batch" => a.batch = number()?.max(1),
            "--single" => a.single = number()?,
            "--target" => a.target = number()? as f64,
            "--durability" => {
                a.durability = match value.as_str() {
                    "full" => Durability::Full,
                    "normal" => Durability::Normal,
                    _ => return Err(format!("--durability is full or normal, not {value:?}")),
                }
            }
            _ => return Err(format!("unknown flag {flag} (see --help)")),
        }
    }
    Ok(a)
}

fn identity(kind: u8, i: usize) -> Identity {
    let mut secret = [kind; 32];
    secret[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    Identity::from_secret(secret)
}

fn channel(i: usize) -> ChannelId {
    let mut id = [0xb7u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    ChannelId(id)
}

/// A small deterministic generator: the same promises in every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

struct Workload {
    hub: NodeId,
    consumers: Vec<NodeId>,
    signed: Vec<SignedPromise>,
    /// The largest cumulative per (channel, provider): what must be settled in the end.
    owed: HashMap<(ChannelId, NodeId), u64>,
    escrow_each: u64,
}

fn workload(a: &Args) -> Result<Workload, String> {
    let hub = identity(1, 0).node_id();
    let consumer_keys: Vec<Identity> = (0..a.consumers).map(|i| identity(2, i)).collect();
    let providers: Vec<NodeId> = (0..a.providers).map(|i| identity(3, i).node_id()).collect();
    let mut rng = Lcg(0x0b5e_55ed);
    let mut owed: HashMap<(ChannelId, NodeId), u64> = HashMap::new();
    let mut signed = Vec::with_capacity(a.promises);
    for i in 0..a.promises {
        let c = i % a.consumers;
        let p = providers[rng.next() as usize % providers.len()];
        let total = owed.entry((channel(c), p)).or_default();
        // 0.001 to 1 WRN-cent per step: a few seconds of traffic.
        *total += 1_000 + rng.next() % 10_000_000;
        let promise = Promise {
            hub,
            channel: channel(c),
            consumer: consumer_keys[c].node_id(),
            provider: p,
            cumulative: Amount::from_nano(*total),
        };
        signed.push(
            SignedPromise::sign(&promise, &consumer_keys[c])
                .map_err(|e| format!("signing: {e}"))?,
        );
    }
    // Enough escrow that nothing overdraws: settled amounts are then exact.
    let per_consumer = a.promises.div_ceil(a.consumers) as u64;
    Ok(Workload {
        hub,
        consumers: consumer_keys.iter().map(|k| k.node_id()).collect(),
        signed,
        owed,
        escrow_each: per_consumer * 10_001_000 + 1,
    })
}

/// A ledger in `dir` with every consumer funded and its channel open (set up with
/// synchronous=NORMAL, which is quick; then reopened with the durability under test).
async fn funded_ledger(
    dir: &std::path::Path,
    w: &Workload,
    durability: Durability,
) -> Result<SqliteLedger, String> {
    let setup = SqliteLedger::open_with(dir, Durability::Normal)
        .await
        .map_err(|e| e.to_string())?;
    for (i, c) in w.consumers.iter().enumerate() {
        let amount = Amount::from_nano(w.escrow_each);
        setup
            .deposit(*c, amount, "bench")
            .await
            .map_err(|e| e.to_string())?;
        setup
            .open_escrow(*c, channel(i), amount)
            .await
            .map_err(|e| e.to_string())?;
    }
    setup.close().await;
    SqliteLedger::open_with(dir, durability)
        .await
        .map_err(|e| e.to_string())
}

/// Checks the books after a run: conserved, and every pair settled exactly to its largest
/// promise (nothing overdraws in this workload).
async fn check_books(l: &SqliteLedger, w: &Workload) -> Result<(), String> {
    let t = l.totals().await.map_err(|e| e.to_string())?;
    if !t.conserved() {
        return Err(format!("money not conserved: {t:?}"));
    }
    let owed: u64 = w.owed.values().sum();
    if t.earned.nano() + t.fees.nano() != owed {
        return Err(format!(
            "paid {} + fees {} != owed {owed}",
            t.earned.nano(),
            t.fees.nano()
        ));
    }
    for (&(ch, p), &max) in w.owed.iter().take(200) {
        let s = l.settled(ch, p).await.map_err(|e| e.to_string())?;
        if s.nano() != max {
            return Err(format!("pair settled {} not {max}", s.nano()));
        }
    }
    Ok(())
}

struct Timing {
    wall: Duration,
    cpu: f64,
}

impl Timing {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn cores(&self) -> f64 {
        self.cpu / self.wall.as_secs_f64().max(1e-9)
    }
}

async fn timed<T, F: std::future::Future<Output = T>>(f: F) -> (T, Timing) {
    let cpu0 = proc_stat::cpu_secs();
    let t0 = Instant::now();
    let out = f.await;
    let wall = t0.elapsed();
    let cpu = proc_stat::cpu_secs() - cpu0;
    (out, Timing { wall, cpu })
}

async fn run(a: Args) -> Result<bool, String> {
    let sync = match a.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    let t0 = Instant::now();
    let w = workload(&a)?;
    eprintln!(
        "bench-hub: {} promises from {} consumers to {} providers signed in {:.1}s",
        a.promises,
        a.consumers,
        a.providers,
        t0.elapsed().as_secs_f64()
    );

    // 1. Signature checks alone, one core.
    let (verified, vt) = timed(async {
        w.signed
            .iter()
            .map(|s| s.verify().map_err(|e| e.to_string()))
            .collect::<Result<Vec<Promise>, String>>()
    })
    .await;
    let verified = verified?;
    println!(
        "hub-verify: {} promises in {:.2}s = {:.0}/s (ed25519, one thread; cpu={:.2} cores)",
        verified.len(),
        vt.wall.as_secs_f64(),
        vt.rate(verified.len()),
        vt.cores()
    );

    // 2. Settlement of verified promises in batches: the SPEC's bar.
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let ledger = funded_ledger(&tmp.path().join("settle"), &w, a.durability).await?;
    let fee = FeeBps::DEFAULT;
    let batches: Vec<Vec<(Promise, FeeBps)>> = verified
        .chunks(a.batch)
        .map(|c| c.iter().map(|p| (p.clone(), fee)).collect())
        .collect();
    let (settled, st) = timed(async {
        for b in &batches {
            for r in ledger.settle_batch(b).await.map_err(|e| e.to_string())? {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok::<(), String>(())
    })
    .await;
    settled?;
    check_books(&ledger, &w).await?;
    let rate = st.rate(verified.len());
    let pass = rate >= a.target;
    println!(
        "hub-settle: {} promises in {:.2}s = {:.0}/s (SQLite WAL synchronous={sync}, {} per transaction, cpu={:.2} cores) target>={:.0}/s {}",
        verified.len(),
        st.wall.as_secs_f64(),
        rate,
        a.batch,
        st.cores(),
        a.target,
        if pass { "PASS" } else { "FAIL" }
    );

    // 3. Replaying everything: what a hub does with promises it already settled.
    let (replayed, rt) = timed(async {
        let mut paid = 0u64;
        for b in &batches {
            for r in ledger.settle_batch(b).await.map_err(|e| e.to_string())? {
                paid += r.map_err(|e| e.to_string())?.paid.nano();
            }
        }
        Ok::<u64, String>(paid)
    })
    .await;
    if replayed? != 0 {
        return Err("a replay paid something".into());
    }
    println!(
        "hub-replay: {} replayed promises in {:.2}s = {:.0}/s (all paid nothing)",
        verified.len(),
        rt.wall.as_secs_f64(),
        rt.rate(verified.len())
    );
    ledger.close().await;

    // 4. The whole hub path: check each signature, then settle the batch.
    let ledger = funded_ledger(&tmp.path().join("hub"), &w, a.durability).await?;
    let hub = Hub::new(ledger.clone(), w.hub, fee).map_err(|e| e.to_string())?;
    let (done, ht) = timed(async {
        for chunk in w.signed.chunks(a.batch) {
            for r in hub.settle_many(chunk).await.map_err(|e| e.to_string())? {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok::<(), String>(())
    })
    .await;
    done?;
    check_books(&ledger, &w).await?;
    println!(
        "hub-verify+settle: {} promises in {:.2}s = {:.0}/s (Hub::settle_many, {} per call, cpu={:.2} cores)",
        w.signed.len(),
        ht.wall.as_secs_f64(),
        ht.rate(w.signed.len()),
        a.batch,
        ht.cores()
    );
    ledger.close().await;

    // 5. One promise per transaction: the cost of a commit.
    if a.single > 0 {
        let ledger = funded_ledger(&tmp.path().join("single"), &w, a.durability).await?;
        let n = a.single.min(verified.len());
        let (done, t) = timed(async {
            for p in &verified[..n] {
                ledger.settle(p, fee).await.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
        .await;
        done?;
        println!(
            "hub-settle-single: {n} promises in {:.2}s = {:.0}/s (one per transaction, synchronous={sync}, cpu={:.2} cores)",
            t.wall.as_secs_f64(),
            t.rate(n),
            t.cores()
        );
        ledger.close().await;
    }
    Ok(pass)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-hub: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-hub: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-hub: could not measure: {e}");
            ExitCode::FAILURE
        }
    }
}
