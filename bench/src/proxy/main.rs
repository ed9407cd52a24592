//! `bench-proxy`: the proxy quality bars of SPEC §8, measured in one run on this machine and
//! printed beside their targets. A benchmark, not a test: it prints figures and PASS/FAIL,
//! and exits non-zero only when it could not measure.
//!
//! One in-process HTTP/1.1 server on 127.0.0.1 serves a body from memory; the one client in
//! this process downloads it three ways: straight from the server, through the SOCKS5 of a
//! real `warren` consumer whose session exits at a real `warren` provider (two child
//! processes), and through shadowsocks-libev's `ss-local` → `ss-server`
//! (chacha20-ietf-poly1305, two child processes). It prints single-stream throughput and time
//! to first byte for each, and the time from `warren connect` to the first byte carried.
//!
//! Everything listens on and dials 127.0.0.1 only. Every child is killed by its PID when the
//! benchmark ends, however it ends (see [`procs`]).

mod http;
#[allow(dead_code)] // shared with bench-offers; not every helper is used here
#[path = "../proc_stat.rs"]
mod proc_stat;
#[path = "../procs.rs"]
mod procs;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use http::{Fetch, Via};
use procs::{Node, Shadowsocks};

const USAGE: &str = "\
bench-proxy: Warren's proxy benchmarks (SPEC §8), beside shadowsocks-libev and a direct path

USAGE:
  bench-proxy --warren PATH [--size-mib N] [--runs N] [--ttfb-requests N] [--connects N]
              [--transport tcp|quic-v1] [--paths LIST] [--ss-server PATH] [--ss-local PATH]
              [--ss-nodelay on|off] [--client rust|curl] [--hold SECS]
              [--target-ratio R] [--target-ttfb-ms MS] [--target-connect-ms MS]

Starts an HTTP server in this process, a warren provider and consumer (child processes,
127.0.0.1 only), and ss-server + ss-local; downloads through each and directly.
  --warren PATH          the warren binary (release build)                  [required]
  --size-mib N           body of each throughput run, MiB                   [default: 1024]
  --runs N               throughput runs per path (the median is compared)  [default: 3]
  --ttfb-requests N      small requests per path, fresh connection each     [default: 50]
  --connects N           times `warren connect` -> first byte is measured   [default: 3]
  --transport T          the provider address the consumer bootstraps from  [default: tcp]
  --paths LIST           which of direct,warren,shadowsocks to measure      [default: all]
  --ss-server PATH       shadowsocks-libev server                           [default: ss-server]
  --ss-local PATH        shadowsocks-libev client                           [default: ss-local]
  --ss-nodelay on|off    TCP_NODELAY in ss-server/ss-local (warren sets it)  [default: on]
  --client rust|curl     the client for every path: this program's own (reads 256 KiB at a
                         time, checks every byte) or curl (to /dev/null)   [default: rust]
  --hold SECS            once everything is up, print the addresses and wait SECS before
                         measuring (to attach perf or try curl by hand)
  --target-ratio R       throughput warren/shadowsocks at least             [default: 1.0]
  --target-ttfb-ms MS    time to first byte at most direct + MS             [default: 2]
  --target-connect-ms MS connect to first byte under MS                     [default: 500]
";

/// How long the benchmark waits for the provider's offer to reach the consumer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// After `warren connect` returns: how long, and how many tries, until a byte comes through.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TRIES: u32 = 2000;
/// How long shadowsocks may take to carry its first request.
const SS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Small requests per path before anything is measured.
const WARM_UP: usize = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The three ways to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Direct,
    Warren,
    Shadowsocks,
}

impl PathKind {
    const ALL: [PathKind; 3] = [PathKind::Direct, PathKind::Warren, PathKind::Shadowsocks];

    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Warren => "warren",
            PathKind::Shadowsocks => "shadowsocks",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Rust,
    Curl,
}

#[derive(Debug)]
struct Args {
    warren: PathBuf,
    size: u64,
    runs: usize,
    ttfb_requests: usize,
    connects: usize,
    transport: String,
    paths: Vec<PathKind>,
    ss_server: String,
    ss_local: String,
    ss_nodelay: bool,
    client: Client,
    hold: Option<Duration>,
    target_ratio: f64,
    target_ttfb: Duration,
    target_connect: Duration,
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

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let mut warren = None;
        let mut a = Args {
            warren: PathBuf::new(),
            size: 1024 << 20,
            runs: 3,
            ttfb_requests: 50,
            connects: 3,
            transport: "tcp".into(),
            paths: PathKind::ALL.to_vec(),
            ss_server: "ss-server".into(),
            ss_local: "ss-local".into(),
            ss_nodelay: true,
            client: Client::Rust,
            hold: None,
            target_ratio: 1.0,
            target_ttfb: Duration::from_millis(2),
            target_connect: Duration::from_millis(500),
        };
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                "--warren" => warren = Some(PathBuf::from(value(args, &mut i, flag)?)),
                "--size-mib" => a.size = parse::<u64>(value(args, &mut i, flag)?, flag)? << 20,
                "--runs" => a.runs = parse(value(args, &mut i, flag)?, flag)?,
                "--ttfb-requests" => a.ttfb_requests = parse(value(args, &mut i, flag)?, flag)?,
                "--connects" => a.connects = parse(value(args, &mut i, flag)?, flag)?,
                "--transport" => {
                    a.transport = match value(args, &mut i, flag)? {
                        "tcp" => "tcp".into(),
                        "quic" | "quic-v1" => "quic-v1".into(),
                        other => return Err(format!("--transport: tcp or quic-v1, not {other:?}")),
                    }
                }
                "--paths" => {
                    a.paths = value(args, &mut i, flag)?
                        .split(',')
                        .map(|p| {
                            PathKind::ALL
                                .into_iter()
                                .find(|k| k.name() == p.trim())
                                .ok_or_else(|| format!("--paths: unknown path {p:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--ss-server" => a.ss_server = value(args, &mut i, flag)?.into(),
                "--ss-local" => a.ss_local = value(args, &mut i, flag)?.into(),
                "--ss-nodelay" => {
                    a.ss_nodelay = match value(args, &mut i, flag)? {
                        "on" => true,
                        "off" => false,
                        other => return Err(format!("--ss-nodelay: on or off, not {other:?}")),
                    }
                }
                "--client" => {
                    a.client = match value(args, &mut i, flag)? {
                        "rust" => Client::Rust,
                        "curl" => Client::Curl,
                        other => return Err(format!("--client: rust or curl, not {other:?}")),
                    }
                }
                "--hold" => {
                    a.hold = Some(Duration::from_secs_f64(parse(
                        value(args, &mut i, flag)?,
                        flag,
                    )?))
                }
                "--target-ratio" => a.target_ratio = parse(value(args, &mut i, flag)?, flag)?,
                "--target-ttfb-ms" => {
                    a.target_ttfb = Duration::from_secs_f64(
                        parse::<f64>(value(args, &mut i, flag)?, flag)? / 1e3,
                    )
                }
                "--target-connect-ms" => {
                    a.target_connect = Duration::from_secs_f64(
                        parse::<f64>(value(args, &mut i, flag)?, flag)? / 1e3,
                    )
                }
                other => return Err(format!("unknown argument {other:?}; see --help")),
            }
            i += 1;
        }
        a.warren = warren.ok_or("bench-proxy needs --warren PATH (the release binary)")?;
        if !a.warren.is_file() {
            return Err(format!("{} is not a file", a.warren.display()));
        }
        if a.size == 0 || a.runs == 0 || a.ttfb_requests == 0 {
            return Err("--size-mib, --runs and --ttfb-requests must be at least 1".into());
        }
        if a.client == Client::Curl && find_program("curl").is_none() {
            return Err("--client curl: curl not found".into());
        }
        if a.paths.contains(&PathKind::Shadowsocks) {
            for bin in [&a.ss_server, &a.ss_local] {
                if find_program(bin).is_none() {
                    return Err(format!(
                        "{bin} not found: install shadowsocks-libev (bench/proxy.sh does, as \
                         root) or leave it out with --paths direct,warren"
                    ));
                }
            }
        }
        Ok(a)
    }
}

/// `name` as a path, or found on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| name.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The 1-minute load average, to show how busy the (possibly shared) machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile (nearest rank) of `v`; NaN for an empty slice.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// CPU seconds (user + system, all threads) of a process so far.
fn cpu_of(pid: u32) -> f64 {
    proc_stat::cpu_secs_of(&pid.to_string())
}

/// What was measured on one path.
#[derive(Debug, Default)]
struct Figures {
    /// MB/s (10^6 bytes per second) of each throughput run.
    mbps: Vec<f64>,
    /// Milliseconds to the first byte of each small request.
    ttfb_ms: Vec<f64>,
    /// CPU seconds the proxy's processes used during the throughput runs.
    proxy_cpu: Vec<(String, f64)>,
    /// CPU seconds this process (client and server) used during the throughput runs.
    bench_cpu: f64,
    bytes: u64,
}

struct Paths<'a> {
    server: SocketAddrV4,
    warren: Option<(&'a Node, &'a Node, SocketAddrV4)>,
    ss: Option<&'a Shadowsocks>,
}

impl Paths<'_> {
    fn via(&self, kind: PathKind) -> Via {
        match kind {
            PathKind::Direct => Via::Direct,
            PathKind::Warren => Via::Socks(self.warren.map_or(self.server, |w| w.2)),
            PathKind::Shadowsocks => Via::Socks(self.ss.map_or(self.server, |s| s.socks)),
        }
    }

    /// The child processes that carry `kind`'s bytes.
    fn procs(&self, kind: PathKind) -> Vec<(&str, u32)> {
        match kind {
            PathKind::Direct => Vec::new(),
            PathKind::Warren => self
                .warren
                .map(|(c, p, _)| vec![("consumer", c.proc.pid), ("provider", p.proc.pid)])
                .unwrap_or_default(),
            PathKind::Shadowsocks => self
                .ss
                .map(|s| vec![("ss-local", s.local.pid), ("ss-server", s.server.pid)])
                .unwrap_or_default(),
        }
    }

    /// Explains a failed download: whether a child has died, and the warren nodes' last log
    /// lines.
    fn diagnose(&self, kind: PathKind, e: String) -> String {
        let mut out = format!("{} path: {e}", kind.name());
        let mut procs = Vec::new();
        if let Some((c, p, _)) = self.warren {
            procs.push(&c.proc);
            procs.push(&p.proc);
        }
        if let Some(s) = self.ss {
            procs.push(&s.local);
            procs.push(&s.server);
        }
        for p in procs {
            if let Some(status) = p.exited() {
                out.push_str(&format!("; {} has exited ({status})", p.name));
            }
        }
        if kind == PathKind::Warren
            && let Some((c, p, _)) = self.warren
        {
            out.push_str(&format!(
                "\nconsumer log:\n{}\nprovider log:\n{}",
                c.log_tail(20),
                p.log_tail(20)
            ));
        }
        out
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args)?;
    procs::stop_children_on_signals()?;
    let wants = |k: PathKind| a.paths.contains(&k);

    let pattern = http::pattern();
    let server = http::Server::start(pattern.clone())?;
    println!(
        "bench-proxy: HTTP server on {}; {} MiB per throughput run × {}; {} first-byte requests \
         per path; client: {}; server writes 1 MiB; {} cores, load average {}",
        server.addr,
        a.size >> 20,
        a.runs,
        a.ttfb_requests,
        match a.client {
            Client::Rust => "bench-proxy's own (256 KiB reads, every byte checked)",
            Client::Curl => "curl -o /dev/null",
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    // Warren: a provider that exits to 127.0.0.0/8, a consumer that joins through it.
    let mut warren_nodes = None;
    let mut connect_figures = Vec::new();
    if wants(PathKind::Warren) {
        let t = Instant::now();
        let provider = Node::start(
            &a.warren,
            "provider",
            &[
                "--socks",
                "off",
                "--provide",
                "--country",
                "DE",
                "--price-gib",
                "0.01",
                "--price-hour",
                "0.001",
                "--exit-allow",
                "127.0.0.0/8",
                // Its own payment hub: the consumer pays as it goes, as in real use.
                "--hub",
                "--faucet",
            ],
        )?;
        let socks = SocketAddrV4::new(Ipv4Addr::LOCALHOST, procs::free_port()?);
        let consumer = Node::start(
            &a.warren,
            "consumer",
            &[
                "--bootstrap",
                provider.addr(&a.transport)?,
                "--socks",
                &socks.to_string(),
            ],
        )?;
        println!(
            "warren: provider pid {} ({}), consumer pid {} (SOCKS5 {socks}, joined through the \
             provider's {} address); up after {} ms",
            provider.proc.pid,
            provider.id,
            consumer.proc.pid,
            a.transport,
            t.elapsed().as_millis()
        );
        wait_for_offer(&consumer, &provider)?;
        println!(
            "warren: the offer reached the consumer after {} ms",
            t.elapsed().as_millis()
        );
        let out = consumer.cli(&["wallet", "topup", "100"])?;
        if !out.status.success() {
            return Err(format!(
                "`warren wallet topup` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        for i in 0..a.connects.max(1) {
            if i > 0 {
                let out = consumer.cli(&["disconnect"])?;
                if !out.status.success() {
                    return Err(format!(
                        "`warren disconnect` failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            let c = connect_to_first_byte(&consumer, &provider, socks, server.addr, &pattern)?;
            println!(
                "warren: connect #{}: CLI {:.1} ms, then first byte after {:.1} ms more ({} \
                 tries): {:.1} ms",
                i + 1,
                ms(c.cli),
                ms(c.total - c.cli),
                c.tries,
                ms(c.total)
            );
            connect_figures.push(c);
        }
        warren_nodes = Some((consumer, provider, socks));
    }

    let ss = if wants(PathKind::Shadowsocks) {
        let ss = Shadowsocks::start(&a.ss_server, &a.ss_local, a.ss_nodelay)?;
        let t = Instant::now();
        let mut buf = Vec::new();
        let mut last = String::new();
        let mut ok = false;
        while t.elapsed() < SS_START_TIMEOUT {
            match http::get(
                Via::Socks(ss.socks),
                server.addr,
                "/small",
                &pattern,
                &mut buf,
            ) {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(e) => last = e,
            }
            for p in [&ss.server, &ss.local] {
                if let Some(status) = p.exited() {
                    return Err(format!("{} exited ({status}) at start", p.name));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ok {
            return Err(format!(
                "shadowsocks carried nothing within {SS_START_TIMEOUT:?}: {last}"
            ));
        }
        println!(
            "shadowsocks: ss-server pid {}, ss-local pid {} (SOCKS5 {}), {}, TCP_NODELAY {}; \
             carrying after {} ms",
            ss.server.pid,
            ss.local.pid,
            ss.socks,
            procs::SS_METHOD,
            if a.ss_nodelay { "on" } else { "off" },
            t.elapsed().as_millis()
        );
        Some(ss)
    } else {
        None
    };

    let paths = Paths {
        server: server.addr,
        warren: warren_nodes.as_ref().map(|(c, p, s)| (c, p, *s)),
        ss: ss.as_ref(),
    };
    let kinds: Vec<PathKind> = PathKind::ALL.into_iter().filter(|k| wants(*k)).collect();
    let mut figures: Vec<Figures> = kinds.iter().map(|_| Figures::default()).collect();
    let mut buf = Vec::new();
    let fetch = |kind: PathKind, path: &str, buf: &mut Vec<u8>| -> Result<Fetch, String> {
        match a.client {
            Client::Rust => http::get(paths.via(kind), server.addr, path, &pattern, buf),
            Client::Curl => http::get_curl(paths.via(kind), server.addr, path),
        }
        .map_err(|e| paths.diagnose(kind, e))
    };

    if let Some(hold) = a.hold {
        println!(
            "holding {:.0} s before measuring: curl -o /dev/null http://{}/bytes/{}{}",
            hold.as_secs_f64(),
            server.addr,
            a.size,
            kinds
                .iter()
                .filter_map(|&k| match paths.via(k) {
                    Via::Socks(p) => Some(format!(" ({}: -x socks5://{p})", k.name())),
                    Via::Direct => None,
                })
                .collect::<String>()
        );
        std::thread::sleep(hold);
    }

    for &kind in &kinds {
        for _ in 0..WARM_UP {
            fetch(kind, "/small", &mut buf)?;
        }
    }

    // Throughput: rounds of one download per path, so drift in the machine's load touches
    // every path alike.
    let big = format!("/bytes/{}", a.size);
    for round in 0..a.runs {
        for (k, &kind) in kinds.iter().enumerate() {
            let procs = paths.procs(kind);
            let before: Vec<f64> = procs.iter().map(|(_, pid)| cpu_of(*pid)).collect();
            let self_before = proc_stat::cpu_secs();
            let f = fetch(kind, &big, &mut buf)?;
            if f.body != a.size {
                return Err(format!(
                    "{}: {} bytes arrived of {}",
                    kind.name(),
                    f.body,
                    a.size
                ));
            }
            let self_after = proc_stat::cpu_secs();
            let fig = &mut figures[k];
            for (j, (name, pid)) in procs.iter().enumerate() {
                let used = cpu_of(*pid) - before[j];
                match fig.proxy_cpu.iter_mut().find(|(n, _)| n == name) {
                    Some((_, c)) => *c += used,
                    None => fig.proxy_cpu.push((name.to_string(), used)),
                }
            }
            fig.bench_cpu += self_after - self_before;
            fig.bytes += f.body;
            let mbps = f.body as f64 / f.total.as_secs_f64() / 1e6;
            fig.mbps.push(mbps);
            println!(
                "throughput run {}/{}: {:<11} {:>8.1} MB/s ({} MiB in {:.2} s, first byte {:.2} ms)",
                round + 1,
                a.runs,
                kind.name(),
                mbps,
                f.body >> 20,
                f.total.as_secs_f64(),
                ms(f.first_byte)
            );
        }
    }

    // Time to first byte: small requests, a fresh connection each, the paths taking turns
    // (and rotating which goes first).
    for i in 0..a.ttfb_requests {
        for j in 0..kinds.len() {
            let k = (i + j) % kinds.len();
            let f = fetch(kinds[k], "/small", &mut buf)?;
            figures[k].ttfb_ms.push(ms(f.first_byte));
        }
    }

    report(&a, &kinds, &figures, &connect_figures, &paths);
    println!("bench-proxy: load average at the end {}", loadavg());
    Ok(())
}

fn wait_for_offer(consumer: &Node, provider: &Node) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let out = consumer.cli(&["offers", "--json"])?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&provider.id) {
            return Ok(());
        }
        if let Some(status) = consumer.proc.exited() {
            return Err(format!("the consumer exited ({status})"));
        }
        if t.elapsed() >= OFFER_TIMEOUT {
            return Err(format!(
                "the provider's offer did not reach the consumer within {OFFER_TIMEOUT:?}; last \
                 `offers --json`: {}\nconsumer log:\n{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                consumer.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug)]
struct ConnectFigure {
    /// `warren connect` from start until it exited.
    cli: Duration,
    /// From the start of `warren connect` until the first byte of a response came through.
    total: Duration,
    tries: u32,
}

/// Times `warren connect --country DE` (the CLI process, start to exit), then tries a GET
/// through the consumer's SOCKS5 right away, again and again (bounded), until a byte of the
/// response arrives.
fn connect_to_first_byte(
    consumer: &Node,
    provider: &Node,
    socks: SocketAddrV4,
    server: SocketAddrV4,
    pattern: &[u8],
) -> Result<ConnectFigure, String> {
    let t0 = Instant::now();
    let out = consumer.cli(&["connect", "--country", "DE", "--json"])?;
    let cli = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "`warren connect` failed: {}\nconsumer log:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            consumer.log_tail(20)
        ));
    }
    let said = String::from_utf8_lossy(&out.stdout);
    if !said.contains(&provider.id) {
        return Err(format!("`warren connect` chose another provider: {said}"));
    }
    let mut buf = Vec::new();
    let mut last = String::new();
    for tries in 1..=FIRST_BYTE_TRIES {
        let attempt = Instant::now();
        match http::get(Via::Socks(socks), server, "/small", pattern, &mut buf) {
            Ok(f) => {
                return Ok(ConnectFigure {
                    cli,
                    total: (attempt - t0) + f.first_byte,
                    tries,
                });
            }
            Err(e) => last = e,
        }
        if t0.elapsed() >= cli + FIRST_BYTE_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!(
        "no byte came through the consumer's SOCKS5 within {FIRST_BYTE_TIMEOUT:?} of `warren \
         connect` returning: {last}\nconsumer log:\n{}",
        consumer.log_tail(20)
    ))
}

fn report(
    a: &Args,
    kinds: &[PathKind],
    figures: &[Figures],
    connects: &[ConnectFigure],
    paths: &Paths<'_>,
) {
    let of = |k: PathKind| kinds.iter().position(|x| *x == k).map(|i| &figures[i]);
    let fmt = |v: Option<f64>, unit: &str, prec: usize| match v {
        Some(x) => format!("{x:.prec$} {unit}"),
        None => "-".into(),
    };

    // Per-path detail: all throughput runs, first-byte spread, CPU per GiB carried.
    for (k, fig) in kinds.iter().zip(figures) {
        let gib = fig.bytes as f64 / (1u64 << 30) as f64;
        let runs: Vec<String> = fig.mbps.iter().map(|m| format!("{m:.0}")).collect();
        let cpu: Vec<String> = fig
            .proxy_cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.2}", c / gib))
            .chain(std::iter::once(format!(
                "{} {:.2}",
                match a.client {
                    Client::Rust => "bench client+server",
                    Client::Curl => "bench server (curl not counted)",
                },
                fig.bench_cpu / gib
            )))
            .collect();
        println!(
            "proxy-detail: {:<11} throughput runs [{}] MB/s, best {:.0}; first byte p10 {:.3} \
             p50 {:.3} p90 {:.3} max {:.3} ms; CPU s/GiB: {}",
            k.name(),
            runs.join(", "),
            fig.mbps.iter().copied().fold(0.0, f64::max),
            quantile(&fig.ttfb_ms, 0.1),
            median(&fig.ttfb_ms),
            quantile(&fig.ttfb_ms, 0.9),
            fig.ttfb_ms.iter().copied().fold(0.0, f64::max),
            cpu.join(", ")
        );
    }
    if let Some((c, p, _)) = paths.warren {
        let mem = |n: &Node| {
            proc_stat::memory_mib(&n.proc.pid.to_string()).map_or("?".into(), |(rss, hwm)| {
                format!("{rss:.1} MiB (peak {hwm:.1})")
            })
        };
        println!(
            "proxy-detail: resident memory after the runs: consumer {}, provider {}",
            mem(c),
            mem(p)
        );
    }

    let tp = |k| of(k).map(|f| median(&f.mbps));
    let (direct, warren, ss) = (
        tp(PathKind::Direct),
        tp(PathKind::Warren),
        tp(PathKind::Shadowsocks),
    );
    let ratio_line = match (warren, ss) {
        (Some(w), Some(s)) => {
            let r = w / s;
            format!(
                "ratio(warren/ss)={r:.2} target>={:.1} {}",
                a.target_ratio,
                verdict(r >= a.target_ratio)
            )
        }
        _ => format!(
            "ratio(warren/ss)=- target>={:.1} NOT MEASURED",
            a.target_ratio
        ),
    };
    let vs_direct = |x: Option<f64>| match (x, direct) {
        (Some(x), Some(d)) => format!("{:.2}", x / d),
        _ => "-".into(),
    };
    println!(
        "proxy-throughput: direct={} warren={} shadowsocks={} (median of {}; of direct: warren \
         {} ss {}) {ratio_line}",
        fmt(direct, "MB/s", 1),
        fmt(warren, "MB/s", 1),
        fmt(ss, "MB/s", 1),
        a.runs,
        vs_direct(warren),
        vs_direct(ss),
    );

    let tf = |k| of(k).map(|f| median(&f.ttfb_ms));
    let (direct, warren, ss) = (
        tf(PathKind::Direct),
        tf(PathKind::Warren),
        tf(PathKind::Shadowsocks),
    );
    let target_ms = ms(a.target_ttfb);
    let delta_line = match (warren, direct) {
        (Some(w), Some(d)) => format!(
            "warren-direct=+{:.3} ms target<=+{target_ms}ms {}",
            w - d,
            verdict(w - d <= target_ms)
        ),
        _ => format!("warren-direct=- target<=+{target_ms}ms NOT MEASURED"),
    };
    let ss_delta = match (ss, direct) {
        (Some(s), Some(d)) => format!(" (ss-direct=+{:.3} ms)", s - d),
        _ => String::new(),
    };
    println!(
        "proxy-ttfb: direct={} warren={} shadowsocks={} (median of {}) {delta_line}{ss_delta}",
        fmt(direct, "ms", 3),
        fmt(warren, "ms", 3),
        fmt(ss, "ms", 3),
        a.ttfb_requests
    );

    let target_ms = ms(a.target_connect);
    match connects.iter().max_by_key(|c| c.total) {
        Some(worst) => {
            let all: Vec<String> = connects
                .iter()
                .map(|c| format!("{:.0}", ms(c.total)))
                .collect();
            println!(
                "connect-to-first-byte: {:.1} ms (connect CLI {:.1} ms + first byte {:.1} ms \
                 after it; worst of [{}] ms) target<{target_ms:.0}ms {}",
                ms(worst.total),
                ms(worst.cli),
                ms(worst.total - worst.cli),
                all.join(", "),
                verdict(worst.total < a.target_connect)
            );
        }
        None => println!("connect-to-first-byte: - target<{target_ms:.0}ms NOT MEASURED"),
    }
}
