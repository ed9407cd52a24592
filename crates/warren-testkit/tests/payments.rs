//! Paid sessions between in-process nodes: a hub with a faucet, a provider at 1 WRN/GiB and
//! consumers with more, less or no escrow. The provider checks the escrow before the first
//! byte, invoices, is paid in promises, settles at the hub when the session ends; a consumer
//! whose escrow runs out gets at most the credit window past it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_node::session::consumer::{ConnectError, ConnectRequest};
use warren_node::{HubConfig, NodeConfig, NodeHandle, ProvideConfig};
use warren_pay::window::{self, MIB};
use warren_testkit::memory_net;
use warren_types::{Amount, Country, FlowProto, Host, Identity, NodeId, Price, Target};

const WAIT: Duration = Duration::from_secs(30);
const NANO_PER_WRN: u64 = 1_000_000_000;

fn one_wrn_per_gib() -> Price {
    Price {
        per_gib: Amount::from_nano(NANO_PER_WRN),
        per_hour: Amount::ZERO,
    }
}

struct Net {
    hub: NodeHandle,
    provider: NodeHandle,
}

async fn net() -> Net {
    net_with(warren_node::session::billing::RECHECK_ESCROW).await
}

/// A provider that looks at a paid session's escrow again every `recheck`.
async fn net_with(recheck: Duration) -> Net {
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    config.escrow_recheck = recheck;
    config.api = Some("127.0.0.1:0".parse().unwrap());
    let mut provide = ProvideConfig::new(one_wrn_per_gib(), "DE".parse::<Country>().unwrap());
    provide.offer_lifetime = Duration::from_secs(600);
    config.provide = Some(provide);
    config.exit.allow = vec!["127.0.0.0/8".parse().unwrap()];
    let provider = NodeHandle::spawn(config).await.unwrap();

    let mut hub_net = memory_net(Identity::generate());
    hub_net.bootstrap = provider.dial_addrs();
    let mut config = NodeConfig::new(hub_net);
    config.hub = Some(HubConfig {
        faucet: true,
        ..HubConfig::default()
    });
    let mut provide = ProvideConfig::hub_only(Country::UNKNOWN);
    provide.offer_lifetime = Duration::from_secs(600);
    config.provide = Some(provide);
    let hub = NodeHandle::spawn(config).await.unwrap();
    let hub_id = hub.node_id();
    assert!(
        provider
            .wait_for_catalog(WAIT, |c| c.contains(&hub_id))
            .await,
        "the provider never saw the hub"
    );
    Net { hub, provider }
}

impl Net {
    /// A consumer that has seen both offers, topped up with `nano` (none for 0).
    async fn consumer(&self, nano: u64) -> NodeHandle {
        self.consumer_as(Identity::generate(), nano).await
    }

    async fn consumer_as(&self, identity: Identity, nano: u64) -> NodeHandle {
        let mut n = memory_net(identity);
        n.bootstrap = self.provider.dial_addrs();
        let mut config = NodeConfig::new(n);
        config.api = Some("127.0.0.1:0".parse().unwrap());
        let node = NodeHandle::spawn(config).await.unwrap();
        let (hub, provider) = (self.hub.node_id(), self.provider.node_id());
        assert!(
            node.wait_for_catalog(WAIT, |c| c.contains(&hub) && c.contains(&provider))
                .await,
            "the consumer never saw the offers"
        );
        if nano > 0 {
            node.wallet()
                .topup(Amount::from_nano(nano), Some(hub))
                .await
                .unwrap();
        }
        node
    }

    fn hub_id(&self) -> NodeId {
        self.hub.node_id()
    }
}

async fn server(send: usize) -> SocketAddr {
    warren_testkit::byte_server(send, false).await
}

fn target(addr: SocketAddr) -> Target {
    Target::new(Host::Ip(addr.ip()), addr.port())
}

async fn until(what: &str, check: impl AsyncFnMut() -> bool) {
    let mut check = check;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a flow to its end (or until it stalls for 5 s), returning the byte count.
async fn drain(mut flow: warren_tunnel::BoxStream) -> usize {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), flow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_session_is_promised_what_it_cost_and_settled_minus_the_fee() {
    let net = net().await;
    let c = net.consumer(10 * NANO_PER_WRN).await;
    c.connect(ConnectRequest::default()).await.unwrap();
    let size = 64 * MIB as usize;
    let flow = c
        .flow_opener()
        .open(target(server(size).await), FlowProto::Tcp)
        .await
        .unwrap();
    assert_eq!(drain(flow).await, size);
    let price = one_wrn_per_gib();
    // Within a second or two the last invoice comes and is paid.
    let cost = price.cost(size as u64, Duration::ZERO);
    until("the consumer promised the whole cost", async || {
        c.session().is_some_and(|s| s.promised >= cost)
    })
    .await;
    let view = c.session().unwrap();
    let own = window::session_cost(price, view.bytes_up, view.bytes_down, 0);
    assert!(
        view.promised <= window::allowed(price, own),
        "promised {} for {own}",
        view.promised
    );
    assert_eq!(
        net.provider.served()[0].paid,
        view.promised,
        "the provider counts what was promised"
    );
    let promised = view.promised;

    // The session ends; the provider keeps the promise and settles it on its own.
    assert!(c.disconnect().await);
    until("the provider settled", async || {
        net.provider
            .wallet()
            .view()
            .await
            .is_ok_and(|w| w.earned_settled > Amount::ZERO && w.earned_unsettled == Amount::ZERO)
    })
    .await;
    let earned = net.provider.wallet().view().await.unwrap();
    assert_eq!(earned.hub, Some(net.hub_id()));
    // 1 % to the hub (rounded its way), the rest to the provider.
    let fee = promised.nano() - earned.earned_settled.nano();
    assert!(
        fee >= promised.nano() / 100 && fee <= promised.nano() / 100 + 1,
        "fee {fee} on {promised}"
    );
    let mine = c.wallet().view().await.unwrap();
    assert_eq!(mine.escrow.nano(), 10 * NANO_PER_WRN - promised.nano());

    // A second session with the same provider starts from the promise it holds and pays
    // only for itself.
    c.connect(ConnectRequest::default()).await.unwrap();
    let flow = c
        .flow_opener()
        .open(target(server(8 * MIB as usize).await), FlowProto::Tcp)
        .await
        .unwrap();
    assert_eq!(drain(flow).await, 8 * MIB as usize);
    let second = price.cost(8 * MIB, Duration::ZERO);
    until("the second session is paid", async || {
        c.session().is_some_and(|s| s.promised >= second)
    })
    .await;
    assert!(c.session().unwrap().promised <= window::allowed(price, second));
    c.disconnect().await;
    for node in [c, net.provider, net.hub] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_escrow_runs_out_gets_at_most_the_window_beyond_it() {
    let net = net().await;
    // 1 milli-WRN: about 1 MiB at 1 WRN/GiB.
    let escrow = NANO_PER_WRN / 1000;
    let c = net.consumer(escrow).await;
    c.connect(ConnectRequest::default()).await.unwrap();
    let flow = c
        .flow_opener()
        .open(target(server(64 * MIB as usize).await), FlowProto::Tcp)
        .await
        .unwrap();
    let got = drain(flow).await as u64;
    let price = one_wrn_per_gib();
    let paid_bytes = window::bytes_within(price, Amount::from_nano(escrow), 0);
    // What the escrow paid for, the largest window (4 MiB) unpaid, and a read's overshoot.
    assert!(
        got <= paid_bytes + 4 * MIB + 256 * 1024,
        "got {got} bytes for an escrow worth {paid_bytes}"
    );
    assert!(
        got >= paid_bytes,
        "got only {got} of the {paid_bytes} paid for"
    );
    // The provider ends the session as unpaid.
    until("the provider ends the session", async || {
        net.provider.served().is_empty()
    })
    .await;
    // Its escrow promised in full, the consumer cannot open another paid session there.
    c.disconnect().await;
    until("the provider settled what it held", async || {
        net.provider
            .wallet()
            .view()
            .await
            .is_ok_and(|w| w.earned_unsettled == Amount::ZERO && w.earned_settled > Amount::ZERO)
    })
    .await;
    match c.connect(ConnectRequest::default()).await {
        Err(ConnectError::AllFailed(why)) => assert!(why.contains("top up"), "{why}"),
        other => panic!("a spent escrow should open no session: {other:?}"),
    }

    // A consumer with no money gets nothing at all: no session opens.
    let broke = net.consumer(0).await;
    match broke.connect(ConnectRequest::default()).await {
        Err(ConnectError::AllFailed(why)) => assert!(why.contains("topup"), "{why}"),
        other => panic!("no money should open no session: {other:?}"),
    }
    for node in [c, broke, net.provider, net.hub] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_stops_carrying_once_the_escrow_is_spent_elsewhere() {
    let net = net_with(Duration::from_millis(500)).await;
    let me = Identity::generate();
    // 10 WRN: 10 GiB at this price, so only the re-check can stop a 2 GiB download.
    let escrow = 10 * NANO_PER_WRN;
    let c = net.consumer_as(me.clone(), escrow).await;
    c.connect(ConnectRequest::default()).await.unwrap();
    let mut flow = c
        .flow_opener()
        .open(target(server(2 << 30).await), FlowProto::Tcp)
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    flow.read_exact(&mut buf).await.unwrap();

    // The consumer (its key) promises the whole channel to someone else, who settles it.
    let channel = c.wallet().channel(net.hub_id()).unwrap();
    let promise = warren_pay::Promise {
        hub: net.hub_id(),
        channel,
        consumer: me.node_id(),
        provider: Identity::generate().node_id(),
        cumulative: Amount::from_nano(escrow),
    };
    let signed = warren_pay::SignedPromise::sign(&promise, &me).unwrap();
    let settled = net
        .hub
        .wallet()
        .request(
            net.hub_id(),
            warren_pay::rpc::HubRequest::Settle {
                promises: vec![signed.to_bytes()],
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&settled, warren_pay::rpc::HubResponse::Settled(r) if matches!(&r[0], warren_pay::rpc::SettleResult::Settled(v) if v.escrow_left == Amount::ZERO)),
        "{settled:?}"
    );
    // The provider sees the channel empty on its next look, stops within the window and
    // ends the session as unpaid.
    let before = net.provider.served()[0].bytes_down;
    let after = drain(flow).await as u64;
    until("the provider ends the session", async || {
        net.provider.served().is_empty()
    })
    .await;
    // The download never completed: the provider stopped at most W_max past what the hub
    // could still pay, a re-check (0.5 s here) after the channel emptied.
    assert!(
        before + after < 2 << 30,
        "carried the whole download ({before} + {after})"
    );
    // What the consumer promised this provider is worth nothing now: the hub paid the
    // first settlement in full and marks nothing more for this one.
    let report = net.provider.wallet().settle().await.unwrap();
    assert_eq!(report.earned, Amount::ZERO, "{report:?}");
    assert_eq!(
        net.provider.wallet().view().await.unwrap().earned_settled,
        Amount::ZERO
    );
    for node in [c, net.provider, net.hub] {
        node.shutdown().await;
    }
}

/// `GET path` on a node's API; the body once the server closes.
async fn http_get(node: &NodeHandle, path: &str) -> String {
    let api = node.api_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Parses the Prometheus text exposition format strictly: every sample's family has a
/// TYPE line before it, names and labels are well formed, values are numbers. Returns
/// (name{labels}, value) pairs.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(ident(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
            assert!(typed.insert(name.to_string()), "family typed twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close");
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(ident(k) && v.starts_with('"'), "{line}");
                }
                name
            }
            None => series,
        };
        assert!(ident(name) && name.starts_with("warren_"), "{line}");
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        samples.push((series.to_string(), value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_and_metrics_follow_a_paid_session() {
    let net = net().await;
    let c = net.consumer(10 * NANO_PER_WRN).await;
    // Listen to the consumer's events from before the session.
    let api = c.api_addr().unwrap();
    let mut events = tokio::net::TcpStream::connect(api).await.unwrap();
    let req = format!("GET /api/v1/events HTTP/1.1\r\nHost: {api}\r\n\r\n");
    events.write_all(req.as_bytes()).await.unwrap();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut text = String::new();
        while let Ok(n) = events.read(&mut buf).await {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(i) = text.find('\n') {
                let line: String = text.drain(..=i).collect();
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    let _ = tx.send(data.to_string());
                }
            }
        }
    });
    c.connect(ConnectRequest::default()).await.unwrap();
    let size = 8 * MIB as usize;
    let flow = c
        .flow_opener()
        .open(target(server(size).await), FlowProto::Tcp)
        .await
        .unwrap();
    assert_eq!(drain(flow).await, size);
    let mut kinds = std::collections::HashSet::new();
    let mut moved = 0u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(["session_opened", "invoice", "payment"]
        .iter()
        .all(|k| kinds.contains(*k))
        && moved > 0)
    {
        let data = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .expect("the events never showed the session, its bill and its payment")
            .expect("the event stream ended");
        let ev: serde_json::Value = serde_json::from_str(&data).unwrap();
        let kind = ev["type"].as_str().unwrap().to_string();
        if kind == "throughput" {
            moved += ev["consumer_down"].as_u64().unwrap();
        }
        if kind == "invoice" || kind == "payment" {
            assert_eq!(ev["role"], "consumer", "{ev}");
            assert!(ev["cumulative"].as_u64().unwrap() > 0, "{ev}");
        }
        kinds.insert(kind);
    }

    // The provider's metrics, scraped and parsed as Prometheus text.
    let text = http_get(&net.provider, "/metrics").await;
    let samples: std::collections::HashMap<String, f64> =
        parse_prometheus(&text).into_iter().collect();
    let get = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    assert_eq!(get("warren_sessions{role=\"provider\"}"), 1.0);
    assert_eq!(get("warren_sessions_opened_total{role=\"provider\"}"), 1.0);
    assert!(get("warren_bytes_total{role=\"provider\",direction=\"down\"}") >= size as f64);
    assert!(
        get("warren_invoices_total{direction=\"sent\"}") >= 1.0,
        "{text}"
    );
    assert!(get("warren_promises_total{outcome=\"accepted\"}") >= 1.0);
    assert!(get("warren_flows_total{outcome=\"opened\"}") >= 1.0);
    assert!(get("warren_peers") >= 1.0);
    assert_eq!(get("warren_offers_by_country{country=\"DE\"}"), 1.0);
    for node in [c, net.provider, net.hub] {
        node.shutdown().await;
    }
}
