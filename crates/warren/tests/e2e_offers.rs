//! End to end, real processes on 127.0.0.1: a bootstrap node, two providers and a consumer.
//! The consumer sees both offers with exact prices, filters work, a killed provider's offer
//! leaves once it expires, and a restarted node rejoins from its peer cache alone.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{NodeProc, eventually};

const LOOPBACK: [&str; 4] = [
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen=/ip4/127.0.0.1/udp/0/quic-v1",
];

fn node(extra: &[&str]) -> NodeProc {
    let args: Vec<&str> = LOOPBACK.iter().chain(extra).copied().collect();
    NodeProc::start(&args)
}

fn providers(offers: &Value) -> Vec<String> {
    let mut v: Vec<String> = offers
        .as_array()
        .expect("offers --json is an array")
        .iter()
        .map(|o| o["provider"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn consumer_sees_both_providers_filters_and_loses_a_dead_one() {
    let boot = node(&[]);
    let via = boot.addr("tcp");
    let de = node(&[
        "--bootstrap",
        &via,
        "--provide",
        "--country",
        "de",
        "--price-gib",
        "0.05",
        "--price-hour",
        "0.01",
        "--ip-kind",
        "residential",
        "--offer-lifetime",
        "10",
    ]);
    // The second provider joins over QUIC, and prices to the last nano-WRN.
    let quic = boot.addr("quic-v1");
    let br = node(&[
        "--bootstrap",
        &quic,
        "--provide",
        "--country",
        "BR",
        "--price-gib",
        "0.123456789",
        "--price-hour",
        "0",
        "--offer-lifetime",
        "60",
    ]);
    let consumer = node(&["--bootstrap", &via]);

    let mut want = vec![de.id.clone(), br.id.clone()];
    want.sort();
    let offers = eventually(Duration::from_secs(30), || {
        let o = consumer.json(&["offers", "--json"]);
        (providers(&o) == want).then_some(o)
    })
    .unwrap_or_else(|| {
        panic!(
            "consumer never listed both offers: {}",
            consumer.json(&["offers", "--json"])
        )
    });
    for o in offers.as_array().unwrap() {
        let id = o["provider"].as_str().unwrap();
        let (country, gib, hour) = if id == de.id {
            ("DE", 50_000_000u64, 10_000_000u64)
        } else {
            ("BR", 123_456_789, 0)
        };
        assert_eq!(o["country"], country, "{o}");
        assert_eq!(o["price_per_gib"].as_u64(), Some(gib), "{o}");
        assert_eq!(o["price_per_hour"].as_u64(), Some(hour), "{o}");
        assert_eq!(o["services"], serde_json::json!(["proxy"]), "{o}");
    }

    let only_br = consumer.json(&["offers", "--country", "br", "--json"]);
    assert_eq!(providers(&only_br), vec![br.id.clone()]);
    let cheap = consumer.json(&["offers", "--max-price-gib", "0.1", "--json"]);
    assert_eq!(providers(&cheap), vec![de.id.clone()]);
    let edge = consumer.json(&["offers", "--max-price-gib", "0.123456789", "--json"]);
    assert_eq!(providers(&edge), want, "the ceiling is inclusive");
    let none = consumer.json(&["offers", "--max-price-gib", "0.01", "--json"]);
    assert_eq!(none, serde_json::json!([]));
    let hourly = consumer.json(&["offers", "--max-price-hour", "0.005", "--json"]);
    assert_eq!(providers(&hourly), vec![br.id.clone()]);

    // The human table names both countries.
    let table = consumer.cli(&["offers"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("DE") && text.contains("BR") && text.contains("0.123456789"),
        "{text}"
    );

    // Kill -9 the German provider: its offer (10 s lifetime) must leave the catalog.
    let mut de = de;
    let de_id = de.id.clone();
    de.kill9();
    let gone = eventually(Duration::from_secs(30), || {
        let o = consumer.json(&["offers", "--json"]);
        (!providers(&o).contains(&de_id)).then_some(o)
    })
    .expect("the dead provider's offer never expired");
    assert_eq!(
        providers(&gone),
        vec![br.id.clone()],
        "the live provider stays"
    );

    let status = consumer.json(&["status", "--json"]);
    assert_eq!(status["node_id"].as_str(), Some(consumer.id.as_str()));
    assert!(status["peers"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        status["listen_addrs"].as_array().unwrap().len() >= 2,
        "{status}"
    );
    assert!(status["session"].is_null(), "{status}");
}

#[test]
fn a_restarted_node_rejoins_from_its_peer_cache_without_bootstrap() {
    let boot = node(&[
        "--provide",
        "--country",
        "NL",
        "--price-gib",
        "1",
        "--price-hour",
        "1",
    ]);
    let via = boot.addr("tcp");
    let mut first = node(&["--bootstrap", &via]);
    eventually(Duration::from_secs(30), || {
        (first.json(&["offers", "--json"]).as_array()?.len() == 1).then_some(())
    })
    .expect("the node never saw the bootstrap's offer");

    // SIGTERM: a clean exit that writes the peer cache.
    assert!(
        first.terminate(),
        "warren node did not exit cleanly on SIGTERM"
    );
    let cache = std::fs::read_to_string(first.dir.path().join("peers.json"))
        .expect("no peers.json after shutdown");
    assert!(
        cache.contains(&boot.id),
        "the cache does not hold the bootstrap peer: {cache}"
    );

    // Same data dir, no --bootstrap: it must find the market through the cache alone.
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let args: Vec<&str> = LOOPBACK.to_vec();
    let again = NodeProc::start_in(dir, &args, &[], None);
    assert_eq!(again.id, first.id, "the identity changed across a restart");
    let offers = eventually(Duration::from_secs(30), || {
        let o = again.json(&["offers", "--json"]);
        (providers(&o) == vec![boot.id.clone()]).then_some(o)
    });
    assert!(
        offers.is_some(),
        "the restarted node did not rejoin from its peer cache"
    );
}
