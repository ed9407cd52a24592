//! Helpers for tests that run the real `warren` binary as separate processes.
//!
//! Nodes only ever listen on and dial 127.0.0.1 (or addresses inside network namespaces a
//! test made itself). Every child process is killed when its handle drops, so a failing
//! test leaves nothing behind.

#![allow(dead_code)]

pub mod netns;
pub mod web;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn warren_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warren"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Runs `warren` with `args` and waits for it to finish.
pub fn warren(data_dir: &Path, api: SocketAddr, args: &[&str]) -> Output {
    Command::new(warren_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--api")
        .arg(api.to_string())
        .args(args)
        .env_remove("WARREN_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("could not run warren")
}

/// The lines a child prints on `stream`, read on a thread so a test can wait with a timeout.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `warren node` process with its own data dir and API port.
pub struct NodeProc {
    child: Child,
    pub api: SocketAddr,
    pub dir: tempfile::TempDir,
    pub id: String,
    /// Multiaddresses (with /p2p/<id>) the node printed at start.
    pub dial_addrs: Vec<String>,
    /// Lines of the node's stderr after start-up, for diagnosing failures.
    pub log: mpsc::Receiver<String>,
    /// What the node printed while starting.
    pub startup: Vec<String>,
}

impl NodeProc {
    /// Initialises a fresh identity and starts `warren node` with `args` (plus
    /// `--no-mdns` unless `mdns` is true), waiting until its API is up.
    /// Without a `--socks` argument the node runs no SOCKS5 front (`--socks off`), so
    /// parallel tests never compete for the default port.
    pub fn start(args: &[&str]) -> NodeProc {
        Self::start_in(tempfile::tempdir().expect("tempdir"), args, &[], None)
    }

    /// Like [`NodeProc::start`], but leaves the SOCKS5 front at its default (127.0.0.1:1080).
    pub fn start_default_socks(args: &[&str]) -> NodeProc {
        let mut args = args.to_vec();
        args.push("--socks=default");
        Self::start(&args)
    }

    /// Like [`NodeProc::start`], inside `wrapper` (e.g. `ip netns exec NAME`), with an
    /// existing data dir and extra environment.
    pub fn start_in(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        wrapper: Option<&[&str]>,
    ) -> NodeProc {
        if !dir.path().join("identity.key").exists() {
            let api: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let out = warren(dir.path(), api, &["init", "--json"]);
            assert!(out.status.success(), "init failed: {out:?}");
        }
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(warren_bin());
                c
            }
            None => Command::new(warren_bin()),
        };
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--api")
            .arg(api.to_string())
            .arg("node");
        // "--socks=default" asks for the node's own default; otherwise no SOCKS5 front
        // unless the test chose an address.
        if args.contains(&"--socks=default") {
            cmd.args(args.iter().filter(|a| **a != "--socks=default"));
        } else if args.iter().any(|a| a.starts_with("--socks")) {
            cmd.args(args);
        } else {
            cmd.args(args).args(["--socks", "off"]);
        }
        cmd.env("WARREN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("could not start warren node");
        let stderr = child.stderr.take().expect("stderr");
        // Until the NodeProc exists, this guard ends the child if start-up fails.
        let mut guard = ChildGuard(Some(child));
        let rx = lines_of(stderr);
        let mut id = String::new();
        let mut dial_addrs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        // The node prints "warren node <id> is running" once its API is bound, then one
        // "reachable at" line per address, then "stop it with Ctrl-C or SIGTERM".
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "warren node did not start; it printed:\n{}",
                    seen.join("\n")
                ),
            };
            seen.push(line.clone());
            if let Some(rest) = line.strip_prefix("warren node ") {
                id = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            } else if let Some(a) = line.trim().strip_prefix("reachable at ") {
                dial_addrs.push(a.to_string());
            } else if line.starts_with("stop it with") {
                break;
            }
        }
        NodeProc {
            child: guard.0.take().expect("child"),
            api,
            dir,
            id,
            dial_addrs,
            log: rx,
            startup: seen,
        }
    }

    /// Runs a CLI command against this node's API.
    pub fn cli(&self, args: &[&str]) -> Output {
        warren(self.dir.path(), self.api, args)
    }

    /// Runs a CLI command that must succeed and prints JSON; returns the parsed JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "warren {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// The dial address on the given transport ("tcp" or "quic-v1").
    pub fn addr(&self, transport: &str) -> String {
        self.dial_addrs
            .iter()
            .find(|a| a.contains(&format!("/{transport}/")) || a.contains(&format!("/{transport}")))
            .cloned()
            .unwrap_or_else(|| panic!("no {transport} address in {:?}", self.dial_addrs))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }
}

/// Kills and reaps the child it holds when dropped, so a failing test leaves no process.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Re-runs `probe` until it returns `Some`, for at most `limit`; each try is spaced by
/// 100 ms. For multi-process tests, where there is no in-process event to wait on.
pub fn eventually<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `warren testnet` process on 127.0.0.1 (API on `api`, the consumer's SOCKS5 on `socks`,
/// `providers` providers, its consumer's API token left in `data_dir`), once it printed
/// its instructions; returns the process and every line it printed.
pub fn start_testnet(
    data_dir: &Path,
    api: &str,
    socks: &str,
    providers: usize,
) -> (ChildGuard, Vec<String>) {
    let mut child = Command::new(warren_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--api",
            api,
            "testnet",
            "--providers",
            &providers.to_string(),
        ])
        .args(["--socks", socks])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren testnet");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(Some(child));
    let rx = lines_of(stdout);
    let mut printed: Vec<String> = Vec::new();
    while !printed
        .last()
        .is_some_and(|l| l.starts_with("Press Ctrl-C"))
    {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => printed.push(line),
            Err(_) => panic!(
                "testnet never became ready; printed:\n{}",
                printed.join("\n")
            ),
        }
    }
    (guard, printed)
}
