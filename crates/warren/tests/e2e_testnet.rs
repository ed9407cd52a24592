//! `warren testnet` as a newcomer runs it: one process, providers in several countries, a
//! payment hub, a consumer whose API answers `warren offers` and whose wallet starts with
//! 10 WRN in escrow, and a clean stop on SIGTERM.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{free_port, warren};

#[test]
fn testnet_offers_several_countries_and_stops_cleanly() {
    let api = format!("127.0.0.1:{}", free_port());
    let socks = format!("127.0.0.1:{}", free_port());
    // The testnet leaves its consumer's API token here, where the CLI below looks.
    let dir = tempfile::tempdir().unwrap();
    let (mut guard, printed) = support::start_testnet(dir.path(), &api, &socks, 4);
    let testnet = guard.0.as_mut().unwrap();
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("warren --api {api} offers")),
        "{text}"
    );

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
    // Four providers and the hub.
    assert_eq!(status["peers"].as_u64(), Some(5), "{status}");

    // The consumer starts funded: 10 WRN in escrow at the testnet's hub.
    assert!(text.contains("10 WRN in escrow"), "{text}");
    assert!(
        text.contains(&format!("warren --api {api} wallet")),
        "{text}"
    );
    let wallet = warren(dir.path(), api.parse().unwrap(), &["wallet", "--json"]);
    assert!(
        wallet.status.success(),
        "{}",
        String::from_utf8_lossy(&wallet.stderr)
    );
    let wallet: serde_json::Value = serde_json::from_slice(&wallet.stdout).unwrap();
    assert_eq!(wallet["escrow"].as_u64(), Some(10_000_000_000), "{wallet}");
    for field in ["balance", "earned_unsettled", "earned_settled"] {
        assert!(wallet[field].is_u64(), "{field} missing in {wallet}");
    }
    let hubs = warren(
        dir.path(),
        api.parse().unwrap(),
        &["offers", "--service", "hub", "--json"],
    );
    let hubs: serde_json::Value = serde_json::from_slice(&hubs.stdout).unwrap();
    assert_eq!(hubs[0]["provider"], wallet["hub"], "{hubs} {wallet}");

    // Offline, a newcomer can browse through a provider: the testnet's exits allow
    // 127.0.0.0/8, so the consumer's own API answers through the tunnel.
    let out = warren(
        dir.path(),
        api.parse().unwrap(),
        &["connect", "--country", "DE"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body, err) = support::web::curl(&[
        "--fail",
        "--socks5-hostname",
        &socks,
        &format!(
            "http://localhost:{}/api/v1/status",
            api.rsplit(':').next().unwrap()
        ),
    ]);
    assert_eq!(code, 0, "{err}");
    let through: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(through["session"]["country"], "DE", "{through}");
    assert!(
        through["session"]["bytes_down"].as_u64().is_some(),
        "{through}"
    );
    // The testnet's providers charge (per GiB and per hour): the consumer pays as it goes,
    // from the escrow it started with.
    let promised = support::eventually(Duration::from_secs(15), || {
        let out = warren(dir.path(), api.parse().unwrap(), &["status", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let p = s["session"]["promised"].as_u64()?;
        (p > 0).then_some(p)
    })
    .expect("the consumer never paid its provider");
    assert!(
        promised < 10_000_000,
        "{promised} nano-WRN for a few seconds"
    );

    let pid = testnet.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = testnet.try_wait().unwrap() {
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
