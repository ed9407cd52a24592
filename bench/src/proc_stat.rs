//! Figures from Linux's /proc: CPU time and resident memory.

/// Reads `VmRSS` and `VmHWM` (peak resident) of a process, in MiB.
pub(crate) fn memory_mib(pid: &str) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// This process's `VmRSS` and `VmHWM` in MiB (zeros where /proc is missing).
pub(crate) fn self_memory_mib() -> (f64, f64) {
    memory_mib("self").unwrap_or((0.0, 0.0))
}

/// User plus system CPU seconds this process has used (all threads), or 0 without /proc.
pub(crate) fn cpu_secs() -> f64 {
    cpu_secs_of("self")
}

/// User plus system CPU seconds process `pid` ("self" for this one) has used, all threads
/// (0 without /proc, or once it is gone).
pub(crate) fn cpu_secs_of(pid: &str) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, in clock ticks (USER_HZ, 100 on Linux). The
    // command name (field 2) may hold spaces, so count from its closing parenthesis.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field k is at index k - 3.
    let tick = |k: usize| fields.get(k - 3).and_then(|f| f.parse::<f64>().ok());
    match (tick(14), tick(15)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// The whole machine's CPU seconds from /proc/stat: busy (user, nice, system, irq,
/// softirq; all processes) and stolen by the hypervisor. Zeros without /proc.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MachineCpu {
    pub busy: f64,
    pub steal: f64,
}

pub(crate) fn machine_cpu() -> MachineCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return MachineCpu::default();
    };
    // "cpu  user nice system idle iowait irq softirq steal ...", in clock ticks.
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let t: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| t.get(i).copied().unwrap_or(0.0) / 100.0;
    MachineCpu {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
    }
}
