//! `bench-content`: how fast a blob travels between Warren nodes, beside the raw speed of a
//! libp2p stream between the same nodes, in one run on loopback. A benchmark, not a test: it
//! prints figures and PASS/MISS, and exits non-zero only when it could not measure.
//!
//! Every node runs in this process ([`NodeHandle::spawn`]) as a real node does: QUIC and TCP
//! listeners (here on 127.0.0.1, port 0), a data dir (a throwaway directory, so blobs go to
//! disk) and the local API on 127.0.0.1:0. What it measures:
//!
//! 1. **raw**: node B opens `/bench/raw/1` to node A, which writes the blob's size in bytes
//!    as fast as it can; B reads and discards them.
//! 2. **fetch, 1 peer**: A publishes a random blob through its API (`POST /api/v1/content`);
//!    a fresh node C, connected to A, fetches it (`POST /api/v1/content/<id>/fetch`, then
//!    `GET /api/v1/content/<id>` until `complete`). Every piece is verified (bao-tree) and
//!    written to C's disk with the hashes that proved it (its outboard), as in production.
//! 3. **fetch, N peers** (default 3): A1..AN hold the same blob; a fresh node fetches from
//!    all of them at once. Beside it, **raw ×N**: one stream from each at once.
//!
//! Each is measured per transport (`--transport`, default QUIC and TCP, each on its own:
//! raw and fetch compared over the same one), in rounds of one transfer of each kind
//! (`--runs`), so a slow spell of a shared machine falls on both sides. Which transport really carried each transfer
//! is checked, not assumed: the bytes that crossed the nodes' TCP connections are counted
//! (`ss -tin`), the rest went over QUIC; the kernel's UDP/TCP counters are printed beside.
//! Only 127.0.0.1 is listened on and dialled; mDNS is off. Every wait is bounded.
//!
//! Run `bench-content --help` for the flags.

#[allow(dead_code)] // shared with bench-offers; not every helper is used here
mod proc_stat;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_content::blob::PIECE_BYTES;
use warren_net::NetConfig;
use warren_node::content::Published;
use warren_node::content::api::ContentStatus;
use warren_node::{NodeConfig, NodeHandle};
use warren_types::{Identity, NodeId};

const USAGE: &str = "\
bench-content: blob fetch throughput between Warren nodes, beside a raw libp2p stream

USAGE:
  bench-content [--size-mib N] [--peers N] [--runs N] [--transport LIST] [--only LIST]
                [--timeout SECS] [--target R] [--dir PATH] [--workers N]

In-process nodes on 127.0.0.1 (QUIC and TCP listeners, data dirs on disk, local API):
for each transport, a raw stream B <- A, a fresh node fetching a random blob from 1 peer,
N raw streams at once from N peers, and a fresh node fetching the blob from N peers.
  --size-mib N     blob size, and bytes of each raw transfer, in MiB
                   [default: 1024, or $WARREN_BENCH_SIZE_MIB]
  --peers N        holders in the multi-peer fetch (the fetcher uses up to 6) [default: 3]
  --runs N         rounds of one transfer of each kind, interleaved (a fresh reader or
                   fetcher each time; medians compared)                     [default: 1]
  --transport LIST which of quic,tcp,auto to measure, each on its own: quic or tcp = a node
                   connects to the others on that address only; auto = on all of them
                   through Network::connect (QUIC and TCP are dialled at once, the first
                   up is kept: it may differ from node to node)        [default: quic,tcp]
  --only LIST      measure only some of raw,fetch-1,raw-n,fetch-n          [default: all]
  --timeout SECS   the longest any one transfer, publish or fetch may take  [default: 600]
  --target R       fetch throughput at least R x raw                        [default: 0.8]
  --dir PATH       where the throwaway data dirs go (blobs land on this disk)
                   [default: the system's temporary directory]
  --workers N      tokio worker threads                          [default: number of cores]
";

const RAW_PROTOCOL: &str = "/bench/raw/1";
/// Size of the raw writer's and reader's buffers.
const RAW_CHUNK: usize = 1 << 20;
/// How long a node may take to start, connect, or stop.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a small API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the fetcher's progress is read while a fetch runs.
const POLL: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // WARREN_LOG (e.g. "warren_node=debug") shows what the in-process nodes do.
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
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-content: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn parse<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{flag}: cannot parse {s:?}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Auto,
    Quic,
    Tcp,
}

impl Transport {
    fn allows(self, addr: &str) -> bool {
        let quic = addr.contains("/quic-v1");
        match self {
            Transport::Auto => true,
            Transport::Quic => quic,
            Transport::Tcp => addr.contains("/tcp/") && !quic,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Transport::Auto => {
                "auto (every address, through Network::connect: QUIC and TCP race, the \
                 first connection up carries)"
            }
            Transport::Quic => "quic (nodes connect on the QUIC address only)",
            Transport::Tcp => "tcp (nodes connect on the TCP address only)",
        }
    }
}

const PHASES: [&str; 4] = ["raw", "fetch-1", "raw-n", "fetch-n"];

#[derive(Debug)]
struct Args {
    size: u64,
    peers: usize,
    runs: usize,
    transports: Vec<Transport>,
    only: Vec<String>,
    timeout: Duration,
    target: f64,
    dir: Option<PathBuf>,
    workers: Option<usize>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let size_mib: u64 = match std::env::var("WARREN_BENCH_SIZE_MIB") {
            Ok(v) => parse(&v, "WARREN_BENCH_SIZE_MIB")?,
            Err(_) => 1024,
        };
        let mut a = Args {
            size: size_mib << 20,
            peers: 3,
            runs: 1,
            transports: vec![Transport::Quic, Transport::Tcp],
            only: PHASES.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(600),
            target: 0.8,
            dir: None,
            workers: None,
        };
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                "--size-mib" => a.size = parse::<u64>(value(args, &mut i, flag)?, flag)? << 20,
                "--peers" => a.peers = parse(value(args, &mut i, flag)?, flag)?,
                "--runs" => a.runs = parse(value(args, &mut i, flag)?, flag)?,
                "--transport" => {
                    a.transports = value(args, &mut i, flag)?
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|t| match t.trim() {
                            "auto" => Ok(Transport::Auto),
                            "quic" | "quic-v1" => Ok(Transport::Quic),
                            "tcp" => Ok(Transport::Tcp),
                            other => Err(format!("--transport: {other:?} is not auto|quic|tcp")),
                        })
                        .collect::<Result<_, _>>()?;
                    if a.transports.is_empty() {
                        return Err("--transport needs at least one of auto,quic,tcp".into());
                    }
                }
                "--only" => {
                    a.only = value(args, &mut i, flag)?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(bad) = a.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                        return Err(format!(
                            "--only: {bad:?} is not one of {}",
                            PHASES.join(",")
                        ));
                    }
                }
                "--timeout" => {
                    a.timeout = Duration::from_secs_f64(parse(value(args, &mut i, flag)?, flag)?)
                }
                "--target" => a.target = parse(value(args, &mut i, flag)?, flag)?,
                "--dir" => a.dir = Some(PathBuf::from(value(args, &mut i, flag)?)),
                "--workers" => a.workers = Some(parse(value(args, &mut i, flag)?, flag)?),
                other => return Err(format!("unknown argument {other:?}; see --help")),
            }
            i += 1;
        }
        if a.size == 0 {
            return Err("--size-mib must be at least 1".into());
        }
        if a.peers == 0 || a.runs == 0 {
            return Err("--peers and --runs must be at least 1".into());
        }
        Ok(a)
    }

    fn wants(&self, phase: &str) -> bool {
        self.only.iter().any(|p| p == phase)
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = a.workers {
        rt.worker_threads(w.max(1));
    }
    let rt = rt
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let mut base = tempfile::Builder::new();
    base.prefix("bench-content-");
    let dir = match &a.dir {
        Some(d) => base.tempdir_in(d),
        None => base.tempdir(),
    }
    .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    println!(
        "content: {} MiB random blob; in-process nodes on 127.0.0.1 (QUIC + TCP listeners as a \
         real node, mDNS off, data dirs under {}, API on 127.0.0.1:0); tokio {} workers, {} \
         cores",
        a.size >> 20,
        dir.path().display(),
        rt.metrics().num_workers(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // Ctrl-C or SIGTERM ends the run; the nodes stop with the runtime and the directory
    // (gigabytes of blobs) is removed when `dir` drops.
    let result = rt.block_on(async {
        tokio::select! {
            r = bench(&a, dir.path()) => r,
            () = interrupted() => Err("interrupted".to_string()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(dir);
    result
}

async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Kernel counters of this network namespace, to see which transport carried a transfer.
#[derive(Clone, Copy, Debug, Default)]
struct Wire {
    udp_in: u64,
    udp_rcvbuf_errors: u64,
    tcp_in: u64,
    tcp_retrans: u64,
}

impl Wire {
    fn now() -> Wire {
        let Ok(text) = std::fs::read_to_string("/proc/net/snmp") else {
            return Wire::default();
        };
        let table = |proto: &str| -> Vec<(String, u64)> {
            let mut lines = text.lines().filter(|l| l.starts_with(proto));
            let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
                return Vec::new();
            };
            names
                .split_whitespace()
                .skip(1)
                .zip(values.split_whitespace().skip(1))
                .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
                .collect()
        };
        let get = |t: &[(String, u64)], name: &str| {
            t.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
        };
        let udp = table("Udp:");
        let tcp = table("Tcp:");
        Wire {
            udp_in: get(&udp, "InDatagrams"),
            udp_rcvbuf_errors: get(&udp, "RcvbufErrors"),
            tcp_in: get(&tcp, "InSegs"),
            tcp_retrans: get(&tcp, "RetransSegs"),
        }
    }

    fn since(self, before: Wire) -> Wire {
        Wire {
            udp_in: self.udp_in.saturating_sub(before.udp_in),
            udp_rcvbuf_errors: self
                .udp_rcvbuf_errors
                .saturating_sub(before.udp_rcvbuf_errors),
            tcp_in: self.tcp_in.saturating_sub(before.tcp_in),
            tcp_retrans: self.tcp_retrans.saturating_sub(before.tcp_retrans),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} UDP datagrams, {} receive-buffer drops; {} TCP segments, {} retransmitted",
            count(self.udp_in),
            count(self.udp_rcvbuf_errors),
            count(self.tcp_in),
            count(self.tcp_retrans)
        )
    }
}

fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// One timed transfer.
#[derive(Debug)]
struct Transfer {
    bytes: u64,
    secs: f64,
    wire: Wire,
    /// Payload bytes that crossed TCP connections between the nodes (from `ss`), if known.
    tcp_bytes: Option<u64>,
    cpu: f64,
    /// CPU seconds the whole machine spent busy (every process, the kernel's writeback and
    /// softirqs included), from /proc/stat; 0 without it.
    machine_cpu: f64,
    /// Fetches only: how the time went.
    fetch: Option<FetchTimes>,
}

impl Transfer {
    /// Which transport carried the bytes: what crossed the nodes' TCP connections is
    /// counted; the rest went over QUIC. Without `ss`, a guess from the kernel's counters.
    fn carrier(&self) -> String {
        match self.tcp_bytes {
            Some(tcp) => {
                let share = tcp as f64 / self.bytes.max(1) as f64;
                if share > 0.95 {
                    "TCP".into()
                } else if share < 0.05 {
                    "QUIC".into()
                } else {
                    format!("QUIC+TCP ({:.0} % TCP)", share.min(1.0) * 100.0)
                }
            }
            None if self.wire.udp_in > self.wire.tcp_in => "QUIC?".into(),
            None => "TCP?".into(),
        }
    }

    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    fn cpu_per_gib(&self) -> f64 {
        self.cpu / (self.bytes as f64 / (1u64 << 30) as f64)
    }
}

#[derive(Debug, Default)]
struct FetchTimes {
    /// From the fetch call until the node named its sources.
    sources_at: Option<f64>,
    /// Until the first verified piece was on disk.
    first_piece_at: Option<f64>,
    /// Until every piece was (the download, before the whole blob is hashed once more).
    all_pieces_at: Option<f64>,
    max_sources: usize,
}

/// Measures `body`, with the process's CPU time and the kernel's counters around it;
/// `nodes` are the nodes taking part (their TCP connections are counted).
async fn measured<T>(
    bytes: u64,
    nodes: &[&NodeHandle],
    body: impl std::future::Future<Output = Result<T, String>>,
) -> Result<(T, Transfer), String> {
    let ports: Vec<u16> = nodes.iter().filter_map(|n| tcp_port(n)).collect();
    let tcp = tcp_sockets(&ports).await;
    let wire = Wire::now();
    let machine = machine_busy_secs();
    let cpu = proc_stat::cpu_secs();
    let t = Instant::now();
    let out = body.await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = proc_stat::cpu_secs() - cpu;
    let machine_cpu = machine_busy_secs() - machine;
    let wire = Wire::now().since(wire);
    let tcp_bytes = match (tcp, tcp_sockets(&ports).await) {
        (Some(before), Some(after)) => Some(
            after
                .iter()
                .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
                .sum(),
        ),
        _ => None,
    };
    Ok((
        out,
        Transfer {
            bytes,
            secs,
            wire,
            tcp_bytes,
            cpu,
            machine_cpu,
            fetch: None,
        },
    ))
}

/// Busy CPU seconds of the whole machine so far (all CPUs: user, nice, system, irq,
/// softirq, steal), from the first line of /proc/stat; 0 without it.
fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    (get(0) + get(1) + get(2) + get(5) + get(6) + get(7)) / 100.0
}

/// The TCP port `node` listens on (127.0.0.1).
fn tcp_port(node: &NodeHandle) -> Option<u16> {
    node.dial_addrs().iter().find_map(|a| {
        let mut parts = a.split('/');
        parts.find(|p| *p == "tcp")?;
        parts.next()?.parse().ok()
    })
}

/// Bytes received so far on each established TCP connection that has one of `ports` at
/// either end, by (local port, peer port), from `ss -tin`. Both ends of a connection between
/// two nodes of this process are listed, so the sum is the payload in both directions.
/// `None` without a working `ss` (iproute2).
async fn tcp_sockets(ports: &[u16]) -> Option<std::collections::HashMap<(u16, u16), u64>> {
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-tinH", "state", "established"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    let mut sockets = std::collections::HashMap::new();
    let mut current: Option<(u16, u16)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // Recv-Q Send-Q Local:Port Peer:Port
            let f: Vec<&str> = line.split_whitespace().collect();
            current = match (
                f.get(2).and_then(|a| port(a)),
                f.get(3).and_then(|a| port(a)),
            ) {
                (Some(l), Some(p)) if ports.contains(&l) || ports.contains(&p) => Some((l, p)),
                _ => None,
            };
        } else if let Some(key) = current.take() {
            let received = line
                .split_whitespace()
                .find_map(|t| t.strip_prefix("bytes_received:"))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            sockets.insert(key, received);
        }
    }
    Some(sockets)
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m.fract() == 0.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

fn print_transfer(label: &str, run: usize, runs: usize, t: &Transfer, what: &str) {
    println!(
        "{label}: run {run}/{runs}: {} in {:.2} s = {:.1} MB/s {what} over {} ({}); cpu {:.2} \
         s ({:.2} s/GiB; the machine was {:.2} cores busy)",
        mib(t.bytes),
        t.secs,
        t.mbps(),
        t.carrier(),
        t.wire.describe(),
        t.cpu,
        t.cpu_per_gib(),
        t.machine_cpu / t.secs,
    );
    if let Some(f) = &t.fetch {
        let at = |x: Option<f64>| x.map_or("-".into(), |s| format!("{:.3} s", s));
        let hash = f
            .all_pieces_at
            .map_or("-".into(), |s| format!("{:.3} s", t.secs - s));
        let pieces = match (f.first_piece_at, f.all_pieces_at) {
            (Some(a), Some(b)) if b > a => format!(
                "{:.1} MB/s",
                t.bytes.saturating_sub(PIECE_BYTES) as f64 / (b - a) / 1e6
            ),
            _ => "-".into(),
        };
        println!(
            "{label}:   sources named after {} (most at once: {}); first verified piece after \
             {}; every piece after {} (piece transfer alone {pieces}); whole-blob hash and \
             rename {hash}",
            at(f.sources_at),
            f.max_sources,
            at(f.first_piece_at),
            at(f.all_pieces_at),
        );
    }
}

/// What one transport measured.
#[derive(Debug)]
struct Figures {
    transport: Transport,
    raw: Vec<Transfer>,
    raw_n: Vec<Transfer>,
    fetch_1: Vec<Transfer>,
    fetch_n: Vec<Transfer>,
}

async fn bench(a: &Args, dir: &Path) -> Result<(), String> {
    // The blob: random bytes, so nothing on the way can compress it.
    let blob = dir.join("blob.bin");
    let t = Instant::now();
    {
        let blob = blob.clone();
        let size = a.size;
        tokio::task::spawn_blocking(move || write_random(&blob, size))
            .await
            .map_err(|e| format!("writing the blob: {e}"))??;
    }
    println!(
        "content: wrote {} of random bytes in {:.2} s",
        mib(a.size),
        t.elapsed().as_secs_f64()
    );

    // Holders A1..AN, each serving the raw protocol and (for the fetches) the blob; they
    // stay up for every transport. Fetchers and raw readers are fresh nodes each time.
    let multi = a.wants("raw-n") || a.wants("fetch-n");
    let need_blob = a.wants("fetch-1") || a.wants("fetch-n");
    let mut holders: Vec<NodeHandle> = Vec::new();
    let mut figures: Vec<Figures> = Vec::new();
    let result = async {
        let mut id: Option<String> = None;
        for i in 1..=(if multi { a.peers } else { 1 }) {
            let name = format!("a{i}");
            let node = spawn_node(dir, &name).await?;
            serve_raw(&node)?;
            holders.push(node);
            if need_blob {
                let got = publish(&holders[i - 1], &blob, a.timeout).await?;
                match &id {
                    Some(want) if *want != got => {
                        return Err(format!("{name} published {got}, a1 published {want}"));
                    }
                    Some(_) => {}
                    None => id = Some(got),
                }
            }
        }
        for &transport in &a.transports {
            println!("content: == transport {}", transport.describe());
            let mut f = Figures {
                transport,
                raw: Vec::new(),
                raw_n: Vec::new(),
                fetch_1: Vec::new(),
                fetch_n: Vec::new(),
            };
            let tag = transport.tag();
            // Rounds interleave the kinds, so a slow spell of a shared machine falls on raw
            // and fetch alike rather than on one of them.
            for run in 1..=a.runs {
                if a.wants("raw") {
                    let name = format!("b-{tag}-{run}");
                    let t = raw_once(a, dir, &name, &holders[..1], transport).await?;
                    print_transfer("content-raw", run, a.runs, &t, "(1 stream B <- A)");
                    f.raw.push(t);
                }
                if let (true, Some(id)) = (a.wants("fetch-1"), &id) {
                    let name = format!("c-{tag}-{run}");
                    let t = fetch_once(a, dir, &name, &holders[..1], transport, id).await?;
                    print_transfer("content-fetch-1", run, a.runs, &t, "(1 holder)");
                    f.fetch_1.push(t);
                }
                if a.wants("raw-n") {
                    let name = format!("b-n-{tag}-{run}");
                    let t = raw_once(a, dir, &name, &holders, transport).await?;
                    let what = format!("({} streams at once, one from each holder)", holders.len());
                    print_transfer("content-raw-n", run, a.runs, &t, &what);
                    f.raw_n.push(t);
                }
                if let (true, Some(id)) = (a.wants("fetch-n"), &id) {
                    let name = format!("c-n-{tag}-{run}");
                    let t = fetch_once(a, dir, &name, &holders, transport, id).await?;
                    let what = format!("({} holders)", holders.len());
                    print_transfer("content-fetch-n", run, a.runs, &t, &what);
                    f.fetch_n.push(t);
                }
            }
            figures.push(f);
        }
        Ok::<_, String>(())
    }
    .await;
    for (i, h) in holders.into_iter().enumerate() {
        stop(h, dir, &format!("a{}", i + 1)).await;
    }
    result?;
    for f in &figures {
        report(a, f);
    }
    Ok(())
}

/// One raw transfer: a fresh node `name`, connected to `holders`, reads `a.size` bytes split
/// evenly over one stream to every holder at once.
async fn raw_once(
    a: &Args,
    dir: &Path,
    name: &str,
    holders: &[NodeHandle],
    transport: Transport,
) -> Result<Transfer, String> {
    let b = spawn_node(dir, name).await?;
    let result = async {
        join(&b, holders, transport).await?;
        let peers: Vec<NodeId> = holders.iter().map(NodeHandle::node_id).collect();
        let nodes: Vec<&NodeHandle> = std::iter::once(&b).chain(holders).collect();
        let ((), t) = measured(a.size, &nodes, raw_pull(&b, &peers, a.size, a.timeout)).await?;
        Ok::<_, String>(t)
    }
    .await;
    stop(b, dir, name).await;
    result
}

fn report(a: &Args, f: &Figures) {
    let med = |v: &[Transfer]| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        let mut s: Vec<f64> = v.iter().map(Transfer::mbps).collect();
        s.sort_by(f64::total_cmp);
        let m = s.len() / 2;
        Some(if s.len() % 2 == 1 {
            s[m]
        } else {
            (s[m - 1] + s[m]) / 2.0
        })
    };
    let carrier = |v: &[Transfer]| -> String {
        let mut c: Vec<String> = v.iter().map(Transfer::carrier).collect();
        c.dedup();
        if c.is_empty() {
            "-".into()
        } else {
            c.join("/")
        }
    };
    let fmt = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1} MB/s"));
    let n = a.peers;
    let tag = f.transport.tag();
    println!(
        "content-detail: [{tag}] raw {} (over {}); raw x{n} {} (over {}); medians of {} run(s)",
        fmt(med(&f.raw)),
        carrier(&f.raw),
        fmt(med(&f.raw_n)),
        carrier(&f.raw_n),
        a.runs
    );
    let line = |label: &str, fetch: &[Transfer]| {
        let (got, raw) = (med(fetch), med(&f.raw));
        let tail = match (got, raw) {
            (Some(got), Some(raw)) => {
                let ratio = got / raw;
                let verdict = if ratio >= a.target { "PASS" } else { "MISS" };
                format!(
                    "ratio(fetch/raw)={ratio:.2} target>={:.2} {verdict}",
                    a.target
                )
            }
            _ => format!("ratio(fetch/raw)=- target>={:.2} NOT MEASURED", a.target),
        };
        println!(
            "content-fetch: [{tag}] {label}: fetch={} (over {}) raw={} {tail}",
            fmt(got),
            carrier(fetch),
            fmt(raw),
        );
    };
    line("1 peer", &f.fetch_1);
    line(&format!("{n} peers"), &f.fetch_n);
}

/// Writes `size` pseudo-random bytes (xorshift64*, seeded from the clock) to `path`.
fn write_random(path: &Path, size: u64) -> Result<(), String> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        left -= n as u64;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts a node as a real one runs, on 127.0.0.1 only, its data dir under `dir`.
async fn spawn_node(dir: &Path, name: &str) -> Result<NodeHandle, String> {
    let mut net = NetConfig::new(Identity::generate());
    net.listen = vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
    ];
    // Nothing beyond loopback: no multicast discovery; reachability probes mean nothing
    // between nodes that all sit on 127.0.0.1.
    net.mdns = false;
    net.autonat = false;
    let mut config = NodeConfig::new(net);
    config.data_dir = Some(dir.join(name));
    config.api = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    tokio::time::timeout(NODE_TIMEOUT, NodeHandle::spawn(config))
        .await
        .map_err(|_| format!("node {name} did not start within {NODE_TIMEOUT:?}"))?
        .map_err(|e| format!("node {name}: {e}"))
}

/// Stops a node (bounded) and removes its data dir.
async fn stop(node: NodeHandle, dir: &Path, name: &str) {
    if tokio::time::timeout(NODE_TIMEOUT, node.shutdown())
        .await
        .is_err()
    {
        eprintln!("bench-content: node {name} did not stop within {NODE_TIMEOUT:?}");
    }
    let _ = std::fs::remove_dir_all(dir.join(name));
}

/// Connects `from` to each of `to` on the addresses `transport` allows.
async fn join(from: &NodeHandle, to: &[NodeHandle], transport: Transport) -> Result<(), String> {
    for peer in to {
        let addrs: Vec<String> = peer
            .dial_addrs()
            .into_iter()
            .filter(|a| transport.allows(a))
            .collect();
        if addrs.is_empty() {
            return Err(format!(
                "{} listens on no address for {transport:?}: {:?}",
                peer.node_id(),
                peer.dial_addrs()
            ));
        }
        tokio::time::timeout(NODE_TIMEOUT, from.network().connect(peer.node_id(), addrs))
            .await
            .map_err(|_| format!("connecting to {} timed out", peer.node_id()))?
            .map_err(|e| format!("connecting to {}: {e}", peer.node_id()))?;
    }
    Ok(())
}

/// Answers `/bench/raw/1` on `node`: reads a byte count (u64 LE), writes that many bytes as
/// fast as the stream takes them, and closes.
fn serve_raw(node: &NodeHandle) -> Result<(), String> {
    let mut incoming = node
        .network()
        .streams()
        .accept(RAW_PROTOCOL)
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some((_peer, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let mut left = u64::from_le_bytes(head);
                let chunk: Vec<u8> = (0..RAW_CHUNK).map(|i| (i * 7 + i / 251) as u8).collect();
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Pulls `bytes` in all over `/bench/raw/1`, split evenly over one stream to each peer at
/// once; returns when the last byte arrived.
async fn raw_pull(
    b: &NodeHandle,
    peers: &[NodeId],
    bytes: u64,
    limit: Duration,
) -> Result<(), String> {
    let share = bytes / peers.len() as u64;
    let pulls = peers.iter().enumerate().map(|(i, peer)| {
        let want = if i == 0 {
            bytes - share * (peers.len() as u64 - 1)
        } else {
            share
        };
        async move {
            let mut s = b
                .network()
                .streams()
                .open(*peer, RAW_PROTOCOL)
                .await
                .map_err(|e| format!("opening {RAW_PROTOCOL} to {peer}: {e}"))?;
            s.write_all(&want.to_le_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; RAW_CHUNK];
            let mut got = 0u64;
            while got < want {
                let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err(format!("{peer} closed after {got} of {want} bytes"));
                }
                got += n as u64;
            }
            Ok::<_, String>(())
        }
    });
    tokio::time::timeout(limit, futures::future::try_join_all(pulls))
        .await
        .map_err(|_| format!("the raw transfer took longer than {limit:?}"))?
        .map(|_| ())
}

/// Publishes the file at `path` on `node` through its API; returns the content id.
async fn publish(node: &NodeHandle, path: &Path, limit: Duration) -> Result<String, String> {
    let t = Instant::now();
    let body = serde_json::json!({"path": path.to_string_lossy(), "channel": "bench"}).to_string();
    let (status, reply) = api(node, "POST", "/api/v1/content", Some(&body), limit).await?;
    if status != 200 {
        return Err(format!(
            "publishing on {}: HTTP {status}: {}",
            node.node_id(),
            String::from_utf8_lossy(&reply)
        ));
    }
    let published: Published = serde_json::from_slice(&reply)
        .map_err(|e| format!("publish answered {e}: {}", String::from_utf8_lossy(&reply)))?;
    println!(
        "content: published on {} in {:.2} s (copy into the store, hash and outboard): {}",
        node.node_id(),
        t.elapsed().as_secs_f64(),
        published.id
    );
    Ok(published.id)
}

/// A fresh node connected to `holders` fetches `id`; timed from the fetch call until the
/// API says the blob is complete.
async fn fetch_once(
    a: &Args,
    dir: &Path,
    name: &str,
    holders: &[NodeHandle],
    transport: Transport,
    id: &str,
) -> Result<Transfer, String> {
    let c = spawn_node(dir, name).await?;
    let result = async {
        join(&c, holders, transport).await?;
        let nodes: Vec<&NodeHandle> = std::iter::once(&c).chain(holders).collect();
        let (times, mut t) =
            measured(a.size, &nodes, fetch_and_wait(&c, id, a.size, a.timeout)).await?;
        t.fetch = Some(times);
        Ok::<_, String>(t)
    }
    .await;
    stop(c, dir, name).await;
    result
}

async fn fetch_and_wait(
    c: &NodeHandle,
    id: &str,
    size: u64,
    limit: Duration,
) -> Result<FetchTimes, String> {
    let t = Instant::now();
    let (status, reply) = api(
        c,
        "POST",
        &format!("/api/v1/content/{id}/fetch"),
        None,
        API_TIMEOUT,
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "fetch: HTTP {status}: {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    let mut times = FetchTimes::default();
    let path = format!("/api/v1/content/{id}");
    loop {
        let (status, reply) = api(c, "GET", &path, None, API_TIMEOUT).await?;
        let now = t.elapsed().as_secs_f64();
        if status != 200 {
            return Err(format!(
                "progress: HTTP {status}: {}",
                String::from_utf8_lossy(&reply)
            ));
        }
        let s: ContentStatus = serde_json::from_slice(&reply)
            .map_err(|e| format!("progress answered {e}: {}", String::from_utf8_lossy(&reply)))?;
        if s.complete {
            if s.size != Some(size) {
                return Err(format!(
                    "the fetched blob has {:?} bytes, not {size}",
                    s.size
                ));
            }
            return Ok(times);
        }
        if let Some(f) = &s.fetch {
            if f.sources > 0 {
                times.sources_at.get_or_insert(now);
                times.max_sources = times.max_sources.max(f.sources);
            }
            if f.have > 0 {
                times.first_piece_at.get_or_insert(now);
            }
            if f.have >= size {
                times.all_pieces_at.get_or_insert(now);
            }
            if f.state == "failed" {
                return Err(format!(
                    "the fetch failed: {}",
                    f.error.as_deref().unwrap_or("(no reason given)")
                ));
            }
        }
        if t.elapsed() >= limit {
            return Err(format!(
                "the fetch did not complete within {limit:?} (have {} of {size} bytes)",
                s.have
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One HTTP/1.1 request to `node`'s local API (127.0.0.1), with its token; the status and
/// the body.
async fn api(
    node: &NodeHandle,
    method: &str,
    path: &str,
    body: Option<&str>,
    limit: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let addr = node
        .api_addr()
        .ok_or_else(|| "the node runs no API".to_string())?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nAuthorization: \
         Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        addr.port(),
        node.api_token().as_str(),
        body.len()
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {limit:?}"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: a reply without headers"))?;
    let head = String::from_utf8_lossy(&reply[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status in {head:?}"))?;
    let raw = &reply[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(raw).ok_or_else(|| format!("{method} {path}: a broken chunked body"))?
    } else {
        raw.to_vec()
    };
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n")?;
        let text = std::str::from_utf8(&raw[..line]).ok()?;
        let len = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line + 2..];
        if len == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..len)?);
        raw = raw.get(len + 2..)?;
    }
}
