//! `bench-offers idle-memory`: the resident memory of one real `warren node` process that
//! listens on loopback only and has nothing to do.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proc_stat;
use crate::{parse, value};

/// How long the node may take to say it is running.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment the user may have set that would change what is measured.
const CLEAR_ENV: [&str; 4] = [
    "WARREN_DATA_DIR",
    "WARREN_API",
    "WARREN_PASSPHRASE",
    "WARREN_LOG",
];

/// A throwaway data directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("warren-bench-idle-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child we started; killed (by its PID) and reaped on drop, whatever happened.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn command(warren: &Path) -> Command {
    let mut c = Command::new(warren);
    for k in CLEAR_ENV {
        c.env_remove(k);
    }
    c.stdin(Stdio::null());
    c
}

fn free_loopback_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut warren: Option<PathBuf> = None;
    let mut idle = Duration::from_secs(10);
    let mut target_mib = 30.0f64;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--warren" => warren = Some(value(args, &mut i, flag)?.into()),
            "--idle" => idle = Duration::from_secs_f64(parse(value(args, &mut i, flag)?, flag)?),
            "--target-mib" => target_mib = parse(value(args, &mut i, flag)?, flag)?,
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
        i += 1;
    }
    let warren = warren.ok_or("idle-memory needs --warren PATH (the release binary)")?;
    if !warren.is_file() {
        return Err(format!("{} is not a file", warren.display()));
    }

    let dir = TempDir::new()?;
    let init = command(&warren)
        .arg("--data-dir")
        .arg(&dir.0)
        .args(["init", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", warren.display()))?;
    if !init.status.success() {
        return Err(format!(
            "`warren init` failed: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        ));
    }

    let api = format!("127.0.0.1:{}", free_loopback_port()?);
    let node_args = [
        "node",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ];
    println!(
        "idle-memory: {} --data-dir {} --api {api} {}",
        warren.display(),
        dir.0.display(),
        node_args.join(" ")
    );
    let started = Instant::now();
    let mut child = KillOnDrop(
        command(&warren)
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["--api", &api])
            .args(node_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", warren.display()))?,
    );
    let pid = child.0.id().to_string();

    // Read stderr on a thread (and keep draining it, so a full pipe never stalls the node);
    // wait for the line that says the node is up.
    let stderr = child.0.stderr.take().ok_or("no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining quietly until the pipe closes.
                continue;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let left = START_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let up = line.contains("warren node") && line.contains("is running");
                seen.push(line);
                if up {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "`warren node` closed its stderr before it was running:\n{}",
                    seen.join("\n")
                ));
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "`warren node` exited ({status}) before it was running:\n{}",
                seen.join("\n")
            ));
        }
        if started.elapsed() >= START_TIMEOUT {
            return Err(format!(
                "`warren node` did not say it was running within {START_TIMEOUT:?}:\n{}",
                seen.join("\n")
            ));
        }
    }
    let startup = started.elapsed();
    let (rss_up, _) = proc_stat::memory_mib(&pid).ok_or("cannot read /proc/PID/status")?;

    // Idle, looking once a second that it is still alive (bounded by `idle`).
    let idle_start = Instant::now();
    while idle_start.elapsed() < idle {
        std::thread::sleep(
            idle.saturating_sub(idle_start.elapsed())
                .min(Duration::from_secs(1)),
        );
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("`warren node` exited ({status}) while idling"));
        }
    }
    let (rss, hwm) = proc_stat::memory_mib(&pid).ok_or("cannot read /proc/PID/status")?;
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into());
    drop(child);

    let verdict = if rss <= target_mib { "PASS" } else { "FAIL" };
    println!(
        "idle-memory: said it was running after {} ms with rss {rss_up:.1} MiB; {threads} threads \
         after idling",
        startup.as_millis()
    );
    println!(
        "idle-rss: {rss:.1} MiB after {:.0}s idle (peak VmHWM {hwm:.1} MiB) target={target_mib:.0}MiB \
         ratio={:.2} {verdict}",
        idle.as_secs_f64(),
        rss / target_mib,
    );
    Ok(())
}
