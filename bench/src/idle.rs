//! `bench-offers idle-memory`: the resident memory of one real `warren node` process that
//! listens on loopback only and has nothing to do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::procs::Node;
use crate::{parse, proc_stat, value};

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

    // `Node::start`: `warren init` into a throwaway dir, then `warren node --no-mdns`
    // listening on 127.0.0.1 (TCP and QUIC), the user's WARREN_* variables cleared; the
    // child is killed by its PID when `node` drops, also on every error path.
    println!(
        "idle-memory: {} node --no-mdns --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1",
        warren.display()
    );
    let started = Instant::now();
    let node = Node::start(&warren, "node", &[])?;
    let pid = node.proc.pid.to_string();
    let startup = started.elapsed();
    let (rss_up, _) = proc_stat::memory_mib(&pid).ok_or("cannot read /proc/PID/status")?;

    // Idle, looking once a second that it is still alive (bounded by `idle`).
    let idle_start = Instant::now();
    while idle_start.elapsed() < idle {
        std::thread::sleep(
            idle.saturating_sub(idle_start.elapsed())
                .min(Duration::from_secs(1)),
        );
        if let Some(status) = node.proc.exited() {
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
    drop(node);

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
