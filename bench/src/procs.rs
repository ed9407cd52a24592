//! The processes `bench-proxy` starts (two `warren node`s, `ss-server`, `ss-local`) and
//! their throwaway directories.
//!
//! Every child is held by a [`Proc`], which kills it by its PID and reaps it when dropped,
//! on every path out of the benchmark (errors and panics included). The same children and
//! directories are also listed in a registry that a signal thread empties on Ctrl-C,
//! SIGTERM or SIGHUP before the process exits.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a node may take to say it is running.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment the user may have set that would change what is measured.
const CLEAR_ENV: [&str; 4] = [
    "WARREN_DATA_DIR",
    "WARREN_API",
    "WARREN_PASSPHRASE",
    "WARREN_LOG",
];

type Slot = Arc<Mutex<Option<Child>>>;

/// Children and directories still alive, for the signal thread.
static LIVE: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills and reaps whatever child a slot still holds. Taking it out of the slot under the
/// slot's lock means a PID is only ever signalled while its process is unreaped.
fn kill_slot(slot: &Slot) {
    if let Some(mut child) = lock(slot).take() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// On SIGINT, SIGTERM or SIGHUP: kill every live child, remove every directory, exit 130.
pub(crate) fn stop_children_on_signals() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the signal runtime: {e}"))?;
    // Register in this thread, so a signal that comes right after this returns is caught.
    let mut signals = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let _guard = rt.enter();
        signals.push(signal(kind).map_err(|e| format!("cannot handle signals: {e}"))?);
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let [a, b, c] = &mut signals[..] else { return };
                tokio::select! {
                    _ = a.recv() => {}
                    _ = b.recv() => {}
                    _ = c.recv() => {}
                }
            });
            let slots: Vec<Slot> = lock(&LIVE).drain(..).collect();
            for slot in &slots {
                kill_slot(slot);
            }
            for dir in lock(&DIRS).drain(..) {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!(
                "bench-proxy: interrupted; stopped the {} processes it had started",
                slots.len()
            );
            std::process::exit(130);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// A child process this benchmark started; killed by its PID and reaped on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) pid: u32,
    slot: Slot,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        // Hold the registry while spawning, so the signal thread sees every child.
        let mut live = lock(&LIVE);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let pid = child.id();
        let slot = Arc::new(Mutex::new(Some(child)));
        live.push(slot.clone());
        Ok(Proc {
            name: name.to_string(),
            pid,
            slot,
        })
    }

    /// Takes the child's stderr pipe, if it has one.
    fn take_stderr(&self) -> Option<std::process::ChildStderr> {
        lock(&self.slot).as_mut()?.stderr.take()
    }

    /// `Some(status)` once the child has exited.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        lock(&self.slot).as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_slot(&self.slot);
        lock(&LIVE).retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// A throwaway directory, removed on drop (or by the signal thread).
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "warren-bench-proxy-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        lock(&DIRS).push(path.clone());
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        lock(&DIRS).retain(|p| p != &self.0);
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The lines a child prints on a pipe, read on a thread that keeps draining the pipe (so a
/// full pipe never stalls the child) after the receiver is gone.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("child-stderr".into())
        .spawn(move || {
            let mut open = true;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if open && tx.send(line).is_err() {
                    open = false;
                }
            }
        });
    rx
}

/// A running `warren node` with its own data dir and API port, on 127.0.0.1 only.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) proc: Proc,
    warren: PathBuf,
    dir: TempDir,
    pub(crate) api: SocketAddrV4,
    pub(crate) id: String,
    /// The multiaddresses (with /p2p/<id>) it printed.
    pub(crate) addrs: Vec<String>,
    /// Its stderr after start-up, for error reports.
    log: mpsc::Receiver<String>,
}

fn warren_command(warren: &Path) -> Command {
    let mut c = Command::new(warren);
    for k in CLEAR_ENV {
        c.env_remove(k);
    }
    c.stdin(Stdio::null());
    c
}

impl Node {
    /// `warren init` into a fresh data dir, then `warren node --no-mdns` listening on
    /// 127.0.0.1 (TCP and QUIC, ports the system picks) plus `args`; returns once it has
    /// printed its addresses.
    pub(crate) fn start(warren: &Path, name: &str, args: &[&str]) -> Result<Node, String> {
        let dir = TempDir::new(name)?;
        let init = warren_command(warren)
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["init", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", warren.display()))?;
        if !init.status.success() {
            return Err(format!(
                "`warren init` for the {name} failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            ));
        }
        let api = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()?);
        let proc = Proc::spawn(
            name,
            warren_command(warren)
                .arg("--data-dir")
                .arg(&dir.0)
                .args(["--api", &api.to_string(), "node", "--no-mdns"])
                .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
                .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let log = lines_of(proc.take_stderr().ok_or("no stderr pipe")?);
        let started = Instant::now();
        let (mut id, mut addrs, mut seen) = (String::new(), Vec::new(), Vec::new());
        // "warren node <id> is running…", one "  reachable at <multiaddr>" per address,
        // then "stop it with Ctrl-C or SIGTERM".
        loop {
            let left = START_TIMEOUT.saturating_sub(started.elapsed());
            match log.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("warren node ") {
                        id = rest.split_whitespace().next().unwrap_or_default().into();
                    } else if let Some(a) = line.trim().strip_prefix("reachable at ") {
                        addrs.push(a.trim().to_string());
                    }
                    let done = line.starts_with("stop it with");
                    seen.push(line);
                    if done {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the {name} closed its stderr before it was running:\n{}",
                        seen.join("\n")
                    ));
                }
            }
            if let Some(status) = proc.exited() {
                return Err(format!(
                    "the {name} exited ({status}) before it was running:\n{}",
                    seen.join("\n")
                ));
            }
            if started.elapsed() >= START_TIMEOUT {
                return Err(format!(
                    "the {name} did not say it was running within {START_TIMEOUT:?}:\n{}",
                    seen.join("\n")
                ));
            }
        }
        if id.is_empty() || addrs.is_empty() {
            return Err(format!(
                "the {name} printed no id or no address:\n{}",
                seen.join("\n")
            ));
        }
        Ok(Node {
            proc,
            warren: warren.to_path_buf(),
            dir,
            api,
            id,
            addrs,
            log,
        })
    }

    /// The address it listens on with `transport` ("tcp" or "quic-v1").
    pub(crate) fn addr(&self, transport: &str) -> Result<&str, String> {
        let marker = format!("/{transport}/");
        self.addrs
            .iter()
            .find(|a| a.contains(&marker) || a.ends_with(&format!("/{transport}")))
            .map(String::as_str)
            .ok_or_else(|| format!("no {transport} address among {:?}", self.addrs))
    }

    /// Runs a CLI command against this node's API.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<Output, String> {
        warren_command(&self.warren)
            .arg("--data-dir")
            .arg(&self.dir.0)
            .args(["--api", &self.api.to_string()])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run warren {args:?}: {e}"))
    }

    /// What it printed on stderr since it started (for error reports).
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let all: Vec<String> = self.log.try_iter().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `ss-server` and `ss-local` (shadowsocks-libev) on 127.0.0.1, chacha20-ietf-poly1305 with
/// a random password, from config files in a throwaway directory (so the password is not on
/// a command line).
#[derive(Debug)]
pub(crate) struct Shadowsocks {
    pub(crate) server: Proc,
    pub(crate) local: Proc,
    /// ss-local's SOCKS5 address.
    pub(crate) socks: SocketAddrV4,
    _dir: TempDir,
}

pub(crate) const SS_METHOD: &str = "chacha20-ietf-poly1305";

impl Shadowsocks {
    pub(crate) fn start(ss_server: &str, ss_local: &str, no_delay: bool) -> Result<Self, String> {
        let dir = TempDir::new("ss")?;
        let password = random_hex(24)?;
        let server_port = free_port()?;
        let local_port = free_port()?;
        let server_conf = format!(
            "{{\"server\":\"127.0.0.1\",\"server_port\":{server_port},\"password\":\"{password}\",\
             \"method\":\"{SS_METHOD}\",\"timeout\":60,\"mode\":\"tcp_only\",\
             \"no_delay\":{no_delay}}}\n"
        );
        let local_conf = format!(
            "{{\"server\":\"127.0.0.1\",\"server_port\":{server_port},\
             \"local_address\":\"127.0.0.1\",\"local_port\":{local_port},\
             \"password\":\"{password}\",\"method\":\"{SS_METHOD}\",\"timeout\":60,\
             \"mode\":\"tcp_only\",\"no_delay\":{no_delay}}}\n"
        );
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let p = dir.0.join(name);
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            Ok(p)
        };
        let server_path = write("server.json", &server_conf)?;
        let local_path = write("local.json", &local_conf)?;
        let server = Proc::spawn(
            "ss-server",
            Command::new(ss_server)
                .arg("-c")
                .arg(&server_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        drop(lines_of(server.take_stderr().ok_or("no stderr pipe")?));
        let local = Proc::spawn(
            "ss-local",
            Command::new(ss_local)
                .arg("-c")
                .arg(&local_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        drop(lines_of(local.take_stderr().ok_or("no stderr pipe")?));
        Ok(Shadowsocks {
            server,
            local,
            socks: SocketAddrV4::new(Ipv4Addr::LOCALHOST, local_port),
            _dir: dir,
        })
    }
}

/// `bytes` random bytes from the kernel, as hex.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
