//! Paid sessions between in-process nodes: a hub with a faucet, a provider at 1 WRN/GiB and
//! consumers with more, less or no escrow. The provider checks the escrow before the first
//! byte, invoices, is paid in promises, settles at the hub when the session ends; a consumer
//! whose escrow runs out gets at most the credit window past it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
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
        let node = NodeHandle::spawn(NodeConfig::new(n)).await.unwrap();
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

/// A server on 127.0.0.1 that sends `send` bytes to each client, then closes.
async fn server(send: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 256 * 1024];
                let mut left = send;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
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
