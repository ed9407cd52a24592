//! Pay as you go through the real binary on 127.0.0.1: a hub with a faucet, a provider at
//! 1 WRN/GiB, a consumer that tops up 10 WRN and downloads 256 MiB through SOCKS5. Its spend
//! is 0.25 WRN within the tolerance; after settlement the provider holds the spend minus the
//! hub's 1 %; a kill -9 of the hub and a restart leave every balance as it was; a consumer
//! with no money opens no session, and one with 1 milli-WRN gets at most the credit window
//! (4 MiB) beyond what it paid for.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::web::{FileServer, curl, sha256};
use support::{NodeProc, eventually, free_port};

const WRN: u64 = 1_000_000_000;
const MIB: u64 = 1 << 20;

fn hub_args(listen: &str) -> Vec<String> {
    ["--socks", "off", "--listen", listen, "--hub", "--faucet"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn start(args: &[String]) -> NodeProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start(&args)
}

fn consumer(via: &str) -> (NodeProc, SocketAddr) {
    let socks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = NodeProc::start(&[
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        via,
        "--socks",
        &socks.to_string(),
    ]);
    eventually(Duration::from_secs(30), || {
        let offers = node.json(&["offers", "--json"]);
        let hubs = node.json(&["offers", "--service", "hub", "--json"]);
        (offers.as_array()?.len() == 1 && hubs.as_array()?.len() == 1).then_some(())
    })
    .expect("the consumer never saw the provider and the hub");
    (node, socks)
}

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {v}"))
}

/// The consumer's tolerance at 1 WRN/GiB for `expected` nano-WRN: 2 % (rounded up) + 1 MiB.
fn tolerance(expected: u64) -> u64 {
    expected.div_ceil(50) + MIB * WRN / (1 << 30)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_consumer_pays_as_it_goes_and_the_provider_is_settled() {
    let files = FileServer::start(256 << 20);
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut hub = start(&hub_args(&listen));
    let via = hub.addr("tcp");
    let provider = NodeProc::start(&[
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &via,
        "--provide",
        "--country",
        "DE",
        "--price-gib",
        "1",
        "--price-hour",
        "0",
        "--exit-allow",
        "127.0.0.0/8",
    ]);
    let (c, socks) = consumer(&via);
    let topped = c.json(&["wallet", "topup", "10", "--json"]);
    assert_eq!(u(&topped, "escrow"), 10 * WRN, "{topped}");
    let out = c.cli(&["connect", "--json"]);
    assert!(out.status.success(), "connect: {}", stderr(&out));

    // 256 MiB through SOCKS5, checked end to end.
    let (code, body, err) = curl(&[
        "--socks5-hostname",
        &socks.to_string(),
        "--fail",
        &files.url("/big"),
    ]);
    assert_eq!(code, 0, "curl: {err}");
    assert_eq!(sha256(&body), files.big_sha256);
    drop(body);

    // The spend: what the consumer's own counters say 0.25 WRN of payload cost, and what it
    // promised for it once the last invoice came, within the tolerance.
    let session = eventually(Duration::from_secs(20), || {
        let s = c.json(&["status", "--json"])["session"].clone();
        (u(&s, "promised") >= 250_000_000).then_some(s)
    })
    .expect("the consumer never promised the 0.25 WRN the download cost");
    let bytes = u(&session, "bytes_up") + u(&session, "bytes_down");
    let own = (bytes * WRN).div_ceil(1 << 30);
    let promised = u(&session, "promised");
    assert!(bytes >= 256 * MIB, "{session}");
    assert!(
        promised >= 250_000_000 && promised <= own + tolerance(own),
        "promised {promised} for {own} ({session})"
    );

    // The session ends; the provider settles at the hub on its own.
    assert!(c.cli(&["disconnect"]).status.success());
    let earned = eventually(Duration::from_secs(30), || {
        let w = provider.json(&["wallet", "--json"]);
        (u(&w, "earned_settled") > 0 && u(&w, "earned_unsettled") == 0).then_some(w)
    })
    .expect("the provider never settled");
    let fee = promised - u(&earned, "earned_settled");
    assert!(
        fee >= promised / 100 && fee <= promised / 100 + 1,
        "a fee of {fee} on {promised}: {earned}"
    );
    // Settling again pays nothing more and is no error.
    let again = provider.json(&["wallet", "settle", "--json"]);
    assert_eq!(u(&again, "earned"), 0, "{again}");
    let history = provider.json(&["wallet", "history", "--json"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "earned"),
        "{history}"
    );
    let spent = c.json(&["wallet", "--json"]);
    assert_eq!(u(&spent, "escrow"), 10 * WRN - promised, "{spent}");

    // kill -9 the hub and restart it on the same data and address: the same books.
    hub.kill9();
    let dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let args = hub_args(&listen);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hub = NodeProc::start_in(dir, &args, &[], None);
    for (node, before) in [(&c, &spent), (&provider, &earned)] {
        let after = eventually(Duration::from_secs(30), || {
            let out = node.cli(&["wallet", "--json"]);
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice::<Value>(&out.stdout).ok()
        })
        .expect("never reached the restarted hub");
        assert_eq!(&after, before);
    }

    // A consumer with no money opens no session: nothing is carried for it.
    let (broke, broke_socks) = consumer(&via);
    let out = broke.cli(&["connect"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("topup"), "{}", stderr(&out));
    let (code, body, _) = curl(&[
        "--socks5-hostname",
        &broke_socks.to_string(),
        "--fail",
        &files.url("/big"),
    ]);
    assert!(code != 0 && body.is_empty());

    // One with 1 milli-WRN (1 MiB's worth) gets at most the credit window beyond it.
    broke.json(&["wallet", "topup", "0.001", "--json"]);
    let out = broke.cli(&["connect"]);
    assert!(out.status.success(), "connect: {}", stderr(&out));
    let (_, body, _) = curl(&[
        "--socks5-hostname",
        &broke_socks.to_string(),
        "--max-time",
        "20",
        &files.url("/big"),
    ]);
    let paid_for = WRN / 1000 * (1 << 30) / WRN;
    assert!(
        (body.len() as u64) <= paid_for + 4 * MIB + 256 * 1024,
        "got {} bytes for 1 milli-WRN",
        body.len()
    );
    assert!(
        body.len() as u64 >= paid_for,
        "got only {} bytes",
        body.len()
    );
    drop(hub);
}
