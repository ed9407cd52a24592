//! mDNS discovery between two real `warren node` processes, each in its own Linux network
//! namespace, joined by a veth pair (mDNS ignores loopback, so 127.0.0.1 cannot be used).
//!
//! The test makes the namespaces and the veth pair itself (the veth ends are created
//! directly inside the namespaces, so the root namespace's interfaces are never touched)
//! and removes them when it ends, also when it fails. mDNS traffic stays on the veth.
//!
//! Needs root and iproute2; without them the tests print a line and pass.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::netns::{can_run, del_netns, ip};
use support::{NodeProc, eventually, warren_bin};

/// What the nodes log (shown only when a test fails): enough to tell whether mDNS found
/// the peer, who dialled whom, whether the connection came up and whether the offer pull
/// ran. `WARREN_LOG` overrides it.
const LOG_FILTER: &str = "info,warren_net=debug,warren_node=debug,libp2p_mdns=debug,\
                          libp2p_swarm=debug,libp2p_tcp=debug";

/// Two namespaces `a` and `b` joined by a veth pair on a private /24 that exists only
/// inside them. Dropping it deletes both namespaces (and with them the veth pair).
struct NetnsPair {
    a: String,
    b: String,
    addr_a: String,
    addr_b: String,
}

impl NetnsPair {
    /// `tag` (one letter) keeps the names of concurrent tests in this file apart;
    /// `second_octet` picks the private network 10.<second_octet>.<pid % 250>.0/24.
    fn create(tag: &str, second_octet: u8) -> NetnsPair {
        let pid = std::process::id();
        let a = format!("wrn-mdns-{tag}a-{pid}");
        let b = format!("wrn-mdns-{tag}b-{pid}");
        // Interface names are limited to 15 bytes: "wv" + tag + side + up to 7 pid digits.
        let veth_a = format!("wv{tag}a{pid}");
        let veth_b = format!("wv{tag}b{pid}");
        let net = format!("10.{second_octet}.{}", pid % 250);
        let addr_a = format!("{net}.1");
        let addr_b = format!("{net}.2");

        // Leftovers of an earlier run whose process had this pid.
        del_netns(&a);
        del_netns(&b);
        ip(&["netns", "add", &a]);
        // From here on, a panic deletes what exists.
        let pair = NetnsPair {
            a,
            b,
            addr_a,
            addr_b,
        };
        ip(&["netns", "add", &pair.b]);
        // Both ends are created inside the namespaces: nothing appears in the root one.
        ip(&[
            "-n", &pair.a, "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
            "netns", &pair.b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, &veth_a, &pair.addr_a),
            (&pair.b, &veth_b, &pair.addr_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "dev", dev, "multicast", "on"]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            // The nodes' local API listens on 127.0.0.1 inside the namespace.
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        pair
    }

    /// Starts a provider (DE, 0.05 WRN/GiB, 0.01 WRN/hour) in `a` and a consumer in `b`,
    /// each listening on its veth address, neither with a bootstrap peer; `extra` goes to
    /// both.
    fn start_both(&self, extra: &[&str]) -> (NodeProc, NodeProc) {
        let listen_a = format!("/ip4/{}/tcp/0", self.addr_a);
        let mut args = vec!["--listen", &listen_a, "--provide", "--price-gib", "0.05"];
        args.extend(["--price-hour", "0.01", "--country", "DE"]);
        args.extend(extra);
        let provider = self.start(&self.a, &args);
        let listen_b = format!("/ip4/{}/tcp/0", self.addr_b);
        let mut args = vec!["--listen", listen_b.as_str()];
        args.extend(extra);
        (provider, self.start(&self.b, &args))
    }

    /// Starts `warren node args…` inside namespace `ns`.
    fn start(&self, ns: &str, args: &[&str]) -> NodeProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::env::var("WARREN_LOG").unwrap_or_else(|_| LOG_FILTER.to_string());
        NodeProc::start_in(
            dir,
            args,
            &[("WARREN_LOG", &log)],
            Some(&["ip", "netns", "exec", ns]),
        )
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        del_netns(&self.a);
        del_netns(&self.b);
    }
}

/// Runs a CLI command against `node`, whose API listens on 127.0.0.1 inside `ns`: the
/// command must run inside that namespace too (the same port in the root namespace is
/// someone else's, or nobody's).
fn cli_in(ns: &str, node: &NodeProc, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(warren_bin())
        .arg("--data-dir")
        .arg(node.dir.path())
        .arg("--api")
        .arg(node.api.to_string())
        .args(args)
        .env_remove("WARREN_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("could not run ip netns exec warren")
}

/// The parsed JSON output of a CLI command in `ns`, or `None` if it failed.
fn json_in(ns: &str, node: &NodeProc, args: &[&str]) -> Option<serde_json::Value> {
    let out = cli_in(ns, node, args);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// What a node has logged since it started, for failure messages.
fn drain_log(node: &NodeProc) -> String {
    node.log.try_iter().collect::<Vec<_>>().join("\n")
}

/// Everything worth knowing when discovery did not happen: each node's status as its own
/// API reports it, and its log since start-up.
fn diagnose(net: &NetnsPair, provider: &NodeProc, consumer: &NodeProc) -> String {
    let mut out = String::new();
    for (ns, node, who) in [
        (&net.a, provider, "provider"),
        (&net.b, consumer, "consumer"),
    ] {
        let status = cli_in(ns, node, &["status", "--json"]);
        out.push_str(&format!(
            "--- {who} {} in {ns}\nstatus --json: {}{}\nlog:\n{}\n",
            node.id,
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
            drain_log(node)
        ));
    }
    out
}

fn peers(ns: &str, node: &NodeProc) -> Option<u64> {
    json_in(ns, node, &["status", "--json"]).and_then(|s| s["peers"].as_u64())
}

#[test]
fn mdns_finds_a_provider_across_a_veth_pair() {
    if !can_run(&[]) {
        return;
    }
    let started = Instant::now();
    // Declared first, so it is dropped last: the nodes are killed before their namespaces go.
    let net = NetnsPair::create("m", 213);
    // mDNS on (no --no-mdns) and no --bootstrap: discovery is the only way they meet.
    let (provider, consumer) = net.start_both(&[]);
    assert!(!provider.id.is_empty() && provider.id != consumer.id);

    let mut last = None;
    let offers = eventually(Duration::from_secs(30), || {
        let out = cli_in(&net.b, &consumer, &["offers", "--json"]);
        let offers = out
            .status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
            .and_then(|v| v.as_array().cloned())
            .filter(|a| !a.is_empty());
        last = Some(out);
        offers
    })
    .unwrap_or_else(|| {
        panic!(
            "the consumer saw no offer within 30 s; its last `offers --json`: {last:?}\n{}",
            diagnose(&net, &provider, &consumer)
        )
    });
    assert_eq!(offers.len(), 1, "exactly the provider's offer: {offers:#?}");
    let offer = &offers[0];
    assert_eq!(offer["provider"], provider.id.as_str(), "{offer:#?}");
    assert_eq!(offer["country"], "DE", "{offer:#?}");
    assert_eq!(offer["price_per_gib"], 50_000_000, "{offer:#?}");
    assert_eq!(offer["price_per_hour"], 10_000_000, "{offer:#?}");
    // The offer carries the veth address it can be reached on.
    assert!(
        offer["addrs"].as_array().is_some_and(|a| a.iter().any(|x| x
            .as_str()
            .is_some_and(|s| s.contains(&format!("/ip4/{}/", net.addr_a))))),
        "{offer:#?}"
    );

    for (ns, node, who) in [
        (&net.b, &consumer, "consumer"),
        (&net.a, &provider, "provider"),
    ] {
        let n = eventually(Duration::from_secs(10), || {
            peers(ns, node).filter(|&n| n >= 1)
        });
        assert!(
            n.is_some(),
            "the {who} has no peer\n{}",
            diagnose(&net, &provider, &consumer)
        );
    }
    eprintln!(
        "mDNS discovery across the veth pair took {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// The negative control: with `--no-mdns` on both sides, the same setup finds nothing.
#[test]
fn without_mdns_nodes_in_the_namespaces_stay_apart() {
    if !can_run(&[]) {
        return;
    }
    let net = NetnsPair::create("n", 214);
    let (provider, consumer) = net.start_both(&["--no-mdns"]);

    // Long enough for mDNS to have worked: with it on, the offer arrives in under a second.
    std::thread::sleep(Duration::from_secs(4));
    let offers = json_in(&net.b, &consumer, &["offers", "--json"]).expect("offers --json in B");
    assert_eq!(offers, serde_json::json!([]), "no offers without mDNS");
    assert_eq!(
        peers(&net.b, &consumer),
        Some(0),
        "the consumer has no peers"
    );
    assert_eq!(
        peers(&net.a, &provider),
        Some(0),
        "the provider has no peers"
    );
}
