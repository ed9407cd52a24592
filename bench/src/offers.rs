//! `bench-offers`: the "offers" quality bars of SPEC §8, measured and printed beside their
//! targets. A benchmark, not a test: it prints figures and PASS/FAIL, and exits non-zero
//! only when it could not measure.
//!
//! Two modes:
//!
//! * `bench-offers [offers] [--nodes 100,1000] ...` — N in-process nodes on the libp2p
//!   memory transport ([`warren_testkit::TestNet`]); time until every node holds every
//!   provider's offer. Target: 1,000 nodes within 10 s.
//! * `bench-offers idle-memory --warren PATH ...` — the resident memory of one real
//!   `warren node` process on loopback after it has idled. Target: ≤ 30 MiB.
//!
//! Run `bench-offers --help` for the flags.

mod idle;
mod proc_stat;
// Shared with bench-proxy, which uses more of it (shadowsocks, signal handling).
#[allow(dead_code)]
mod procs;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use warren_testkit::{Shape, TestNet};

const USAGE: &str = "\
bench-offers: Warren's offer-market benchmarks (SPEC §8)

USAGE:
  bench-offers [offers] [--nodes LIST] [--providers-ratio R] [--min-providers K]
               [--providers K] [--degree D] [--timeout SECS] [--target SECS]
               [--workers N] [--settle SECS] [--progress]
  bench-offers idle-memory --warren PATH [--idle SECS] [--target-mib MIB]

offers (default mode): for each N in LIST, spawn N in-process nodes on the memory
transport and time until every node holds every provider's offer.
  --nodes LIST          comma-separated node counts        [default: 100,1000]
  --providers-ratio R   share of nodes that sell            [default: 0.1]
  --min-providers K     at least this many providers        [default: 10]
  --providers K         exactly K providers (overrides the ratio)
  --degree D            earlier nodes each new node joins through [default: 3]
  --timeout SECS        give up waiting for convergence after SECS [default: 120]
  --target SECS         the target, applied to every N (SPEC: 1,000 nodes) [default: 10]
  --workers N           tokio worker threads [default: number of cores]
  --settle SECS         let the network form first, for at most SECS; 0 sells from
                        spawn on                                    [default: 400]
  --progress            print how many nodes have every offer, once a second

idle-memory: start one `warren node` on loopback (no mDNS), let it idle, read its
VmRSS/VmHWM from /proc.
  --warren PATH         the warren binary (release build)   [required]
  --idle SECS           how long to let it idle             [default: 10]
  --target-mib MIB      the target                          [default: 30]
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // WARREN_LOG (e.g. "libp2p_swarm=debug") shows what the in-process nodes do.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("idle-memory") => idle::run(&args[1..]),
        Some("offers") => offers_main(&args[1..]),
        _ => offers_main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-offers: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes the value after a flag.
pub(crate) fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

pub(crate) fn parse<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{flag}: cannot parse {s:?}"))
}

#[derive(Debug)]
struct OffersArgs {
    nodes: Vec<usize>,
    ratio: f64,
    min_providers: usize,
    providers: Option<usize>,
    degree: usize,
    timeout: Duration,
    target: Duration,
    workers: Option<usize>,
    progress: bool,
    /// Seconds between the network forming and the providers starting to sell; 0 makes
    /// the providers sell from spawn on.
    settle: Duration,
}

impl OffersArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut a = OffersArgs {
            nodes: vec![100, 1000],
            ratio: 0.1,
            min_providers: 10,
            providers: None,
            degree: 3,
            timeout: Duration::from_secs(120),
            target: Duration::from_secs(10),
            workers: None,
            progress: false,
            settle: Duration::from_secs(400),
        };
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                "--nodes" => {
                    a.nodes = value(args, &mut i, flag)?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| parse(s.trim(), flag))
                        .collect::<Result<_, _>>()?;
                }
                "--providers-ratio" => a.ratio = parse(value(args, &mut i, flag)?, flag)?,
                "--min-providers" => a.min_providers = parse(value(args, &mut i, flag)?, flag)?,
                "--providers" => a.providers = Some(parse(value(args, &mut i, flag)?, flag)?),
                "--degree" => a.degree = parse(value(args, &mut i, flag)?, flag)?,
                "--timeout" => {
                    a.timeout = Duration::from_secs_f64(parse(value(args, &mut i, flag)?, flag)?)
                }
                "--target" => {
                    a.target = Duration::from_secs_f64(parse(value(args, &mut i, flag)?, flag)?)
                }
                "--workers" => a.workers = Some(parse(value(args, &mut i, flag)?, flag)?),
                "--progress" => a.progress = true,
                "--settle" => {
                    a.settle = Duration::from_secs_f64(parse(value(args, &mut i, flag)?, flag)?)
                }
                other => return Err(format!("unknown argument {other:?}; see --help")),
            }
            i += 1;
        }
        if a.nodes.is_empty() || a.nodes.contains(&0) {
            return Err("--nodes needs positive counts".into());
        }
        if !(0.0..=1.0).contains(&a.ratio) {
            return Err("--providers-ratio must be within 0..=1".into());
        }
        if a.degree == 0 {
            return Err("--degree must be at least 1".into());
        }
        Ok(a)
    }

    fn providers_for(&self, nodes: usize) -> usize {
        let k = self.providers.unwrap_or_else(|| {
            ((nodes as f64 * self.ratio).round() as usize).max(self.min_providers)
        });
        k.clamp(1, nodes)
    }
}

fn offers_main(args: &[String]) -> Result<(), String> {
    let args = OffersArgs::parse(args)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        rt.worker_threads(w.max(1));
    }
    let rt = rt
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let workers = rt.metrics().num_workers();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "offers: in-process nodes on the libp2p memory transport, one tokio multi-thread runtime \
         ({workers} workers, {cores} cores)"
    );
    match args.providers {
        Some(k) => println!("offers: providers = {k} per run (--providers)"),
        None => println!(
            "offers: providers = {:.0} % of nodes, at least {} (not every node sells: 1,000 \
             providers x 1,000 nodes would be 1M signature checks); degree = {}",
            args.ratio * 100.0,
            args.min_providers,
            args.degree
        ),
    }
    if args.settle.is_zero() {
        println!(
            "offers: providers sell from spawn on. total = from the start of TestNet::spawn \
             until the last node holds every offer; converge = the part after spawn returned. \
             The target ({:.0} s) is compared with total.",
            args.target.as_secs_f64()
        );
    } else {
        println!(
            "offers: the network forms first (spawn, then until it stops making and closing \
             connections, at most {:.0} s); then the providers start selling. total = from that start until the last node holds \
             every offer. The target ({:.0} s) is compared with total.",
            args.settle.as_secs_f64(),
            args.target.as_secs_f64()
        );
    }

    let mut all_measured = true;
    for &n in &args.nodes {
        let shape = Shape {
            nodes: n,
            providers: args.providers_for(n),
            degree: args.degree,
        };
        let run = rt.block_on(run_once(shape, args.settle, args.timeout, args.progress))?;
        all_measured &= run.done == n;
        run.print(args.target);
    }
    // Dropping the runtime would wait for stragglers; none should remain, but never hang.
    rt.shutdown_timeout(Duration::from_secs(5));
    if !all_measured {
        println!("offers: at least one run did not converge within the timeout (see above)");
    }
    Ok(())
}

#[derive(Debug)]
struct Run {
    shape: Shape,
    spawn: Duration,
    /// Seconds from spawn start at which each node had every offer (only those that did).
    done_at: Vec<Duration>,
    done: usize,
    /// From spawn start until the wait ended (the last node, or the timeout).
    total: Duration,
    timed_out: bool,
    cpu_spawn: f64,
    cpu_converge: f64,
    /// Gossip mesh peers a node (for offers) as the offers started.
    mesh_avg: f64,
    mesh_max: usize,
    /// CPU seconds other processes used while the offers spread: a busy machine slows
    /// the run without this process doing more.
    others_converge: f64,
    /// CPU seconds the hypervisor took from this machine meanwhile.
    steal_converge: f64,
    rss_mib: f64,
    hwm_mib: f64,
    peers_avg: f64,
    peers_max: usize,
    min_offers: usize,
    shutdown: Duration,
    late: bool,
    /// How long the network took to settle, and whether it got quiet (or hit the limit).
    settled: Option<(Duration, bool)>,
    /// Microseconds per signature check, timed just before the providers started: how
    /// fast the shared machine ran at the time, to tell a slow run from a slow machine.
    check_us: Option<f64>,
    slowest: Vec<Slow>,
    /// Gossip messages the nodes gave up sending (slow peers) while the offers spread.
    gossip_dropped: u64,
}

/// How many of the slowest nodes a run describes.
const SLOWEST: usize = 5;

/// A node as the providers started.
struct AtStart {
    peers: usize,
    /// Connections it had made or accepted so far.
    opened: u64,
    /// Gossip messages it had dropped so far.
    dropped: u64,
    /// Its gossip mesh for offers.
    mesh: usize,
}

/// One of the last nodes to hold every offer.
#[derive(Debug)]
struct Slow {
    node: usize,
    /// When it held every offer; `None` if it never did.
    at: Option<Duration>,
    peers_at_start: usize,
    peers_now: usize,
    /// Connections it made or accepted while the offers spread.
    opened_since: u64,
}

impl Run {
    fn print(&self, target: Duration) {
        let Shape {
            nodes,
            providers,
            degree,
        } = self.shape;
        let converge = if self.late {
            self.total
        } else {
            self.total.saturating_sub(self.spawn)
        };
        let verdict = if self.timed_out {
            "FAIL (timed out)"
        } else if self.total <= target {
            "PASS"
        } else {
            "FAIL"
        };
        println!(
            "offers: nodes={nodes} providers={providers} spawn={:.2}s converge={:.2}s total={:.2}s \
             target={:.0}s ratio={:.2} {verdict}",
            self.spawn.as_secs_f64(),
            converge.as_secs_f64(),
            self.total.as_secs_f64(),
            target.as_secs_f64(),
            self.total.as_secs_f64() / target.as_secs_f64(),
        );
        if let Some((took, quiet)) = self.settled {
            println!(
                "offers:   the network settled for {:.1}s before the providers started ({})",
                took.as_secs_f64(),
                if quiet {
                    "formed: at most 1 connection made and 1 closed a second per 100 nodes, for 3 s"
                } else {
                    "NOT formed: hit the --settle limit"
                }
            );
        }
        if self.timed_out {
            println!(
                "offers:   TIMED OUT: only {}/{nodes} nodes held all {providers} offers; the \
                 poorest node held {}",
                self.done, self.min_offers
            );
        }
        let mut sorted = self.done_at.clone();
        sorted.sort();
        let pct = |p: f64| -> String {
            if sorted.is_empty() {
                return "-".into();
            }
            let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
            format!("{:.2}s", sorted[i].as_secs_f64())
        };
        println!(
            "offers:   nodes holding every offer, from the start: p50={} p90={} p99={} last={}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
        println!(
            "offers:   degree={degree} peers/node avg={:.1} max={} cpu spawn={:.1}s \
             converge={:.1}s process rss={:.0}MiB hwm={:.0}MiB shutdown={:.2}s",
            self.peers_avg,
            self.peers_max,
            self.cpu_spawn,
            self.cpu_converge,
            self.rss_mib,
            self.hwm_mib,
            self.shutdown.as_secs_f64()
        );
        println!(
            "offers:   gossip mesh as the offers started: {:.2} peers a node, at most {}",
            self.mesh_avg, self.mesh_max
        );
        if let Some(us) = self.check_us {
            println!(
                "offers:   one offer signature check took {us:.1} µs just before the providers \
                 started (the machine's speed at the time)"
            );
        }
        println!(
            "offers:   while the offers spread, other processes used {:.1} CPU-s and the \
             hypervisor took {:.1} s",
            self.others_converge, self.steal_converge
        );
        println!(
            "offers:   gossip messages dropped for slow peers while the offers spread: {}",
            self.gossip_dropped
        );
        for slow in &self.slowest {
            println!(
                "offers:   slow node {}: done {}; peers {} at the start, {} at the end; {} \
                 connections made since the start",
                slow.node,
                slow.at
                    .map_or("never".into(), |t| format!("at {:.2}s", t.as_secs_f64())),
                slow.peers_at_start,
                slow.peers_now,
                slow.opened_since
            );
        }
    }
}

/// Times signature checks of one signed offer on this thread, in µs per check (the best
/// of five rounds of 200, so a round that lost the core does not count).
fn signature_check_us() -> f64 {
    use warren_types::{Identity, SignedOffer};
    let identity = Identity::generate();
    let offer = warren_types::Offer {
        provider: identity.node_id(),
        seq: 1,
        issued_at: 1_800_000_000,
        expires_at: 1_800_000_180,
        services: vec![warren_types::Service::proxy()],
        price: warren_types::Price::default(),
        country: warren_types::Country::UNKNOWN,
        ip_kind: warren_types::IpKind::Unknown,
        addrs: vec!["/memory/1".into()],
    };
    let Ok(signed) = SignedOffer::sign(&offer, &identity) else {
        return f64::NAN;
    };
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..200 {
                let _ = std::hint::black_box(&signed).verify(1_800_000_001);
            }
            start.elapsed().as_secs_f64() * 1e6 / 200.0
        })
        .fold(f64::INFINITY, f64::min)
}

async fn run_once(
    shape: Shape,
    settle: Duration,
    timeout: Duration,
    progress: bool,
) -> Result<Run, String> {
    let cpu0 = proc_stat::cpu_secs();
    let mut start = Instant::now();
    let late = !settle.is_zero();
    let spawn_shape = Shape {
        providers: if late { 0 } else { shape.providers },
        ..shape
    };
    let mut net = TestNet::spawn(spawn_shape)
        .await
        .map_err(|e| format!("TestNet::spawn({} nodes): {e}", shape.nodes))?;
    let spawn = start.elapsed();
    let mut settled = None;
    let mut check_us = None;
    if late {
        // Let Kademlia and the gossipsub meshes form, so what follows measures offers
        // spreading through a market that exists, waiting at most `settle`.
        // Formed: for 3 s in a row, the whole network made at most one new connection a
        // second per 100 nodes and closed about as few (DHT bootstraps done, and the
        // connections their lookups left behind closed once idle).
        let began = Instant::now();
        let count = |net: &TestNet| (net.connections_opened(), net.connection_ends());
        let calm = (shape.nodes as u64 / 100).max(1);
        let mut last_cpu = proc_stat::cpu_secs();
        let (mut last_opened, mut last_peers) = count(&net);
        let mut quiet = 0;
        while quiet < 3 && began.elapsed() < settle {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu = proc_stat::cpu_secs();
            let (opened, peers) = count(&net);
            // Both counts see each connection at both ends.
            let made_ends = (opened - last_opened) as usize;
            let made = made_ends as u64 / 2;
            let closed = ((last_peers + made_ends).saturating_sub(peers) / 2) as u64;
            quiet = if made <= calm && closed <= calm {
                quiet + 1
            } else {
                0
            };
            if progress {
                eprintln!(
                    "  [settling {:5.1}s] {:.2} CPU s in the last second; connections made \
                     {made}, closed {closed}; {:.1} peers a node",
                    began.elapsed().as_secs_f64(),
                    cpu - last_cpu,
                    peers as f64 / net.nodes.len() as f64
                );
            }
            last_cpu = cpu;
            (last_opened, last_peers) = (opened, peers);
        }
        settled = Some((began.elapsed(), quiet >= 3));
        check_us = Some(signature_check_us());
        start = Instant::now();
        net.start_providers(0..shape.providers)
            .await
            .map_err(|e| format!("start_providers: {e}"))?;
    }
    let cpu1 = proc_stat::cpu_secs();
    let machine1 = proc_stat::machine_cpu();
    // Each node's connections as the offers start, to explain the slowest nodes afterwards,
    // and its gossip mesh: every offer is sent once to each mesh peer of each node it
    // reaches, so the sum of the mesh sizes sets the work, and it differs from one formed
    // network to the next.
    let at_start: Vec<AtStart> = net
        .nodes
        .iter()
        .map(|n| {
            let s = n.network().state();
            AtStart {
                peers: s.connected.len(),
                opened: s.connections_opened,
                dropped: s.gossip_dropped,
                mesh: s.offer_mesh,
            }
        })
        .collect();

    // One waiter per node, each woken by its own catalog's changes (never polled), so the
    // time at which each node completes is known, not just the last one.
    let net = Arc::new(net);
    let done_count = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiters = tokio::task::JoinSet::new();
    for i in 0..net.nodes.len() {
        let net = net.clone();
        let done_count = done_count.clone();
        waiters.spawn(async move {
            let want = net.providers();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ok = net.nodes[i]
                // The length first: the check runs on every change to the catalog (100,000
                // times at 1,000 nodes), and its cost is the benchmark's, not the node's.
                .wait_for_catalog(left, |c| {
                    c.len() >= want.len() && want.iter().all(|p| c.contains(p))
                })
                .await;
            let at = ok.then(|| {
                done_count.fetch_add(1, Ordering::Relaxed);
                start.elapsed()
            });
            (i, at)
        });
    }
    let reporter = progress.then(|| {
        let done_count = done_count.clone();
        let n = shape.nodes;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  [{:6.1}s] {}/{n} nodes hold every offer; cpu {:.1}s",
                    start.elapsed().as_secs_f64(),
                    done_count.load(Ordering::Relaxed),
                    proc_stat::cpu_secs(),
                );
            }
        })
    });
    let mut done_at = Vec::with_capacity(shape.nodes);
    let mut each = vec![None; shape.nodes];
    while let Some(r) = waiters.join_next().await {
        if let Ok((i, at)) = r {
            each[i] = at;
            done_at.extend(at);
        }
    }
    let total = done_at
        .iter()
        .max()
        .copied()
        .filter(|_| done_at.len() == shape.nodes)
        .unwrap_or_else(|| start.elapsed());
    if let Some(r) = reporter {
        r.abort();
    }
    let cpu2 = proc_stat::cpu_secs();
    let machine2 = proc_stat::machine_cpu();
    let (rss_mib, hwm_mib) = proc_stat::self_memory_mib();

    let peers: Vec<usize> = net
        .nodes
        .iter()
        .map(|n| n.network().state().connected.len())
        .collect();
    let min_offers = net
        .nodes
        .iter()
        .map(|n| {
            n.offers(&Default::default())
                .iter()
                .filter(|o| net.providers().contains(&o.provider))
                .count()
        })
        .min()
        .unwrap_or(0);

    // The slowest nodes (unfinished first): how connected they were when the offers
    // started and what happened to their connections since.
    let mut order: Vec<usize> = (0..shape.nodes).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(each[i].unwrap_or(Duration::MAX)));
    let slowest = order
        .iter()
        .take(SLOWEST)
        .map(|&i| {
            let s = net.nodes[i].network().state();
            Slow {
                node: i,
                at: each[i],
                peers_at_start: at_start[i].peers,
                peers_now: s.connected.len(),
                opened_since: s.connections_opened - at_start[i].opened,
            }
        })
        .collect();

    let gossip_dropped = net
        .nodes
        .iter()
        .zip(&at_start)
        .map(|(n, start)| n.network().state().gossip_dropped - start.dropped)
        .sum();

    let net = Arc::into_inner(net).ok_or("a waiter still holds the test network")?;
    let stop = Instant::now();
    net.shutdown().await;
    let shutdown = stop.elapsed();

    let done = done_at.len();
    Ok(Run {
        shape,
        spawn,
        timed_out: done < shape.nodes,
        done,
        done_at,
        total,
        cpu_spawn: cpu1 - cpu0,
        cpu_converge: cpu2 - cpu1,
        mesh_avg: at_start.iter().map(|s| s.mesh).sum::<usize>() as f64
            / at_start.len().max(1) as f64,
        mesh_max: at_start.iter().map(|s| s.mesh).max().unwrap_or(0),
        others_converge: (machine2.busy - machine1.busy - (cpu2 - cpu1)).max(0.0),
        steal_converge: machine2.steal - machine1.steal,
        rss_mib,
        hwm_mib,
        peers_avg: peers.iter().sum::<usize>() as f64 / peers.len().max(1) as f64,
        peers_max: peers.iter().copied().max().unwrap_or(0),
        min_offers,
        shutdown,
        late,
        settled,
        check_us,
        slowest,
        gossip_dropped,
    })
}
