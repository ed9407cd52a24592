//! Network-namespace plumbing shared by the namespace tests: they make every namespace
//! and link themselves, inside namespaces only, and remove them when they end.

use std::process::{Command, Stdio};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn works(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process can make network namespaces: root, `ip`, and each program in
/// `also` (checked by running it with `--version`). Prints why not, for the skip.
pub fn can_run(also: &[&str]) -> bool {
    let root = is_root();
    let ip = works("ip", "-V");
    let missing: Vec<&str> = also
        .iter()
        .copied()
        .filter(|p| !works(p, "--version"))
        .collect();
    let ok = root && ip && missing.is_empty();
    if !ok {
        eprintln!(
            "skipping: needs root and iproute2{} (root: {root}, ip found: {ip}, missing: {missing:?})",
            also.iter().map(|p| format!(", {p}")).collect::<String>()
        );
    }
    ok
}

/// Runs `ip args…` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("could not run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes a namespace if it exists; errors (it did not exist) are ignored.
pub fn del_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
