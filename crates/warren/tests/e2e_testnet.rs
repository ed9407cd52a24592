//! `warren testnet` as a newcomer runs it: one process, providers in several countries, a
//! consumer whose API answers `warren offers`, and a clean stop on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{free_port, warren, warren_bin};

/// Kills the testnet if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn testnet_offers_several_countries_and_stops_cleanly() {
    let api = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(warren_bin())
        .args(["--api", &api, "testnet", "--providers", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren testnet");
    let stdout = child.stdout.take().unwrap();
    let mut guard = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let done = line.starts_with("Press Ctrl-C");
                printed.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                panic!(
                    "testnet never became ready; printed:\n{}",
                    printed.join("\n")
                );
            }
        }
    }
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("warren --api {api} offers")),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = warren(dir.path(), api.parse().unwrap(), &["offers", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut countries: Vec<&str> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["country"].as_str().unwrap())
        .collect();
    countries.sort();
    assert_eq!(countries, vec!["BR", "DE", "NL", "US"], "{offers}");
    let status = warren(dir.path(), api.parse().unwrap(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["peers"].as_u64(), Some(4), "{status}");

    let pid = guard.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "testnet did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "testnet exited with {status}");
}
