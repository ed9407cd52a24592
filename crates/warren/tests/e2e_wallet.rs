//! The wallet through the real binary on 127.0.0.1: a `warren node --hub --faucet` process,
//! a consumer process that tops up and sees its escrow (SPEC §6 fields), a hub without a
//! faucet that refuses with a clear error, and a hub killed with -9 and restarted on the same
//! data directory that still holds every balance.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{NodeProc, eventually, free_port, warren};

const WRN: u64 = 1_000_000_000;

fn hub_args(listen: &str, faucet: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--no-mdns", "--socks", "off", "--listen", listen, "--hub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if faucet {
        args.push("--faucet".into());
    }
    args
}

fn start(args: &[String]) -> NodeProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start(&args)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wallet_tops_up_at_a_faucet_hub_and_survives_its_kill9() {
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut hub = start(&hub_args(&listen, true));
    assert!(
        hub.startup
            .iter()
            .any(|l| l.contains("payment hub: fee 1 %, faucet on")),
        "{:?}",
        hub.startup
    );
    let via = hub.addr("tcp");
    let mut dry_args = hub_args("/ip4/127.0.0.1/tcp/0", false);
    dry_args.extend(["--bootstrap".to_string(), via.clone()]);
    let dry = start(&dry_args);
    let consumer = NodeProc::start(&[
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &via,
    ]);

    // Both hubs announce themselves; `offers` lists bandwidth unless asked for hubs.
    eventually(Duration::from_secs(30), || {
        let hubs = consumer.json(&["offers", "--service", "hub", "--json"]);
        (hubs.as_array()?.len() == 2).then_some(())
    })
    .expect("the consumer never saw both hubs' offers");
    let hubs = consumer.json(&["offers", "--service", "hub", "--json"]);
    for h in hubs.as_array().unwrap() {
        assert_eq!(h["services"], serde_json::json!(["hub"]), "{h}");
        assert_eq!(h["price_per_gib"], 0, "{h}");
    }
    assert_eq!(consumer.json(&["offers", "--json"]), serde_json::json!([]));
    let status = hub.json(&["status", "--json"]);
    assert_eq!(status["hub"]["faucet"], true, "{status}");
    assert_eq!(status["hub"]["fee_bps"], 100, "{status}");
    assert!(status["provider"].is_null(), "{status}");

    // Top up 10 WRN at the faucet hub: it lands in escrow.
    let topped = consumer.json(&["wallet", "topup", "10", "--hub", &hub.id, "--json"]);
    assert_eq!(topped["escrow"], 10 * WRN, "{topped}");
    let wallet = consumer.json(&["wallet", "--json"]);
    for field in ["balance", "escrow", "earned_unsettled", "earned_settled"] {
        assert!(wallet[field].is_u64(), "{field} missing in {wallet}");
    }
    assert_eq!(wallet["escrow"], 10 * WRN, "{wallet}");
    assert_eq!(wallet["balance"], 0, "{wallet}");
    assert_eq!(wallet["hub"], hub.id.as_str(), "{wallet}");
    let human = consumer.cli(&["wallet"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success() && text.contains("escrow            10 WRN"),
        "{text}"
    );
    let history = consumer.json(&["wallet", "history", "--json"]);
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["escrow_opened", "deposit"], "{history}");

    // A hub without a faucet refuses, saying why and what to do; nothing changes.
    let out = consumer.cli(&["wallet", "topup", "1", "--hub", &dry.id]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no faucet") && err.contains("--faucet"),
        "{err}"
    );
    assert_eq!(consumer.json(&["wallet", "--json"]), wallet);
    // Nothing to settle yet, and that is not an error.
    let settled = consumer.json(&["wallet", "settle", "--json"]);
    assert_eq!(settled["promises"], 0, "{settled}");

    // kill -9 the hub: the wallet says it cannot reach it, and exits non-zero.
    hub.kill9();
    let out = consumer.cli(&["wallet", "--json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("hub"), "{}", stderr(&out));

    // Restarted on the same data directory and address, it holds the same books.
    let dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let args = hub_args(&listen, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = NodeProc::start_in(dir, &args, &[], None);
    assert_eq!(again.id, hub.id);
    let after = eventually(Duration::from_secs(30), || {
        let out = consumer.cli(&["wallet", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout).ok()
    })
    .expect("the consumer never reached the restarted hub");
    assert_eq!(after, wallet);
    // And the same channel takes more.
    let more = consumer.json(&["wallet", "topup", "0.5", "--json"]);
    assert_eq!(more["escrow"], 10 * WRN + WRN / 2, "{more}");
    assert_eq!(more["channel"], wallet["channel"], "{more}");
}

#[test]
fn hub_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = warren(dir.path(), api, &["node", "--hub", "--hub-fee", "7"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cap of 5 %"), "{}", stderr(&out));
    let out = warren(dir.path(), api, &["node", "--faucet"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--hub"), "{}", stderr(&out));
    // The wallet with no node running names the problem.
    let out = warren(dir.path(), api, &["wallet", "--json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no Warren node"), "{}", stderr(&out));
    let out = warren(dir.path(), api, &["wallet", "topup", "0.0000000001"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("9 decimals"), "{}", stderr(&out));
}
