//! Sessions between in-process nodes: the provider's caps on sessions, flows and bytes, and
//! a consumer's disconnect reaching the provider. Flows leave the exit for real TCP servers
//! on 127.0.0.1 (the providers allow 127.0.0.0/8).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_node::config::FileConfig;
use warren_node::session::consumer::{ConnectError, ConnectRequest};
use warren_node::{NodeConfig, NodeHandle, ProvideConfig};
use warren_testkit::memory_net;
use warren_types::{Amount, Country, FlowProto, Host, Identity, Price, RefusalKind, Target};

const WAIT: Duration = Duration::from_secs(20);

async fn provider(exit_toml: &str) -> NodeHandle {
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    // Free: these tests are about caps and flows; paid sessions are in payments.rs.
    let mut provide = ProvideConfig::new(
        Price {
            per_gib: Amount::ZERO,
            per_hour: Amount::ZERO,
        },
        "DE".parse::<Country>().unwrap(),
    );
    provide.offer_lifetime = Duration::from_secs(600);
    config.provide = Some(provide);
    config.exit.rules = FileConfig::parse(exit_toml)
        .unwrap()
        .exit
        .unwrap_or_default();
    config.exit.allow = vec!["127.0.0.0/8".parse().unwrap()];
    NodeHandle::spawn(config).await.unwrap()
}

async fn consumer(via: &NodeHandle) -> NodeHandle {
    let mut net = memory_net(Identity::generate());
    net.bootstrap = via.dial_addrs();
    let node = NodeHandle::spawn(NodeConfig::new(net)).await.unwrap();
    assert!(
        node.wait_for_catalog(WAIT, |c| c.len() == 1).await,
        "the consumer never saw the offer"
    );
    node
}

async fn server(send: usize) -> SocketAddr {
    warren_testkit::byte_server(send, true).await
}

fn target(addr: SocketAddr) -> Target {
    Target::new(Host::Ip(addr.ip()), addr.port())
}

/// Waits (bounded) until `check` holds, re-checking every 20 ms: the provider's counters
/// change on its own tasks and have no event to wait on.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_provider_refuses_the_next_session() {
    let p = provider("[exit]\nmax_sessions = 1\n").await;
    let a = consumer(&p).await;
    let b = consumer(&p).await;
    a.connect(ConnectRequest::default()).await.unwrap();
    match b.connect(ConnectRequest::default()).await {
        Err(ConnectError::AllFailed(why)) => assert!(why.contains("capacity"), "{why}"),
        other => panic!("the second session should be refused: {other:?}"),
    }
    // Once the first consumer leaves, the second gets in.
    assert!(a.disconnect().await);
    until("the provider sees the session end", || {
        p.served().is_empty()
    })
    .await;
    b.connect(ConnectRequest::default()).await.unwrap();
    assert_eq!(p.served().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_bytes_are_capped_per_session() {
    let p = provider("[exit]\nmax_flows_per_session = 2\nmax_bytes_per_session = 1000000\n").await;
    let c = consumer(&p).await;
    let session = c.connect(ConnectRequest::default()).await.unwrap();
    assert_eq!(session.provider, p.node_id());
    let echo = server(0).await;
    let opener = c.flow_opener();

    let mut one = opener.open(target(echo), FlowProto::Tcp).await.unwrap();
    let two = opener.open(target(echo), FlowProto::Tcp).await.unwrap();
    let third = opener.open(target(echo), FlowProto::Tcp).await;
    assert_eq!(third.err().map(|r| r.kind), Some(RefusalKind::Cap));
    // A flow carries bytes both ways and they are counted on both sides.
    one.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    one.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
    drop((one, two));
    until("flow slots are given back", || {
        p.served().first().is_some_and(|s| s.flows == 0)
    })
    .await;
    let served = &p.served()[0];
    assert_eq!((served.bytes_up, served.bytes_down), (5, 5));

    // The byte cap: a 3 MB download stops near 1 MB, and no new flow is admitted.
    let big = server(3_000_000).await;
    let mut flow = opener.open(target(big), FlowProto::Tcp).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, flow.read_to_end(&mut got)).await;
    assert!(
        got.len() < 2_000_000,
        "read {} bytes past a 1 MB cap",
        got.len()
    );
    let refused = opener.open(target(echo), FlowProto::Tcp).await;
    assert_eq!(refused.err().map(|r| r.kind), Some(RefusalKind::Cap));
    // The provider counted up to the cap; what was in flight when it hit may not arrive.
    let served = &p.served()[0];
    assert!(
        served.bytes_up + served.bytes_down >= 1_000_000,
        "{served:?}"
    );
    let view = c.session().unwrap();
    assert!(view.bytes_down > 500_000, "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals_reach_the_consumer() {
    // No --exit-allow here: loopback is denied by default.
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    let mut provide = ProvideConfig::new(Price::default(), Country::UNKNOWN);
    provide.offer_lifetime = Duration::from_secs(600);
    config.provide = Some(provide);
    let p = NodeHandle::spawn(config).await.unwrap();
    let c = consumer(&p).await;
    let opener = c.flow_opener();
    let echo = server(0).await;
    // No session yet: not connected.
    let r = opener.open(target(echo), FlowProto::Tcp).await;
    assert_eq!(r.err().map(|r| r.kind), Some(RefusalKind::NotConnected));
    c.connect(ConnectRequest::default()).await.unwrap();
    let r = opener
        .open(target(echo), FlowProto::Tcp)
        .await
        .err()
        .unwrap();
    assert_eq!(r.kind, RefusalKind::Policy);
    assert!(r.message.contains("loopback"), "{}", r.message);
    assert!(
        !r.message.contains(&echo.port().to_string()),
        "{}",
        r.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_the_sender() {
    let p = provider("").await;
    let c = consumer(&p).await;
    c.connect(ConnectRequest::default()).await.unwrap();
    // The server would send 200 MB; the client reads a little, then stops.
    let big = server(200_000_000).await;
    let mut flow = c
        .flow_opener()
        .open(target(big), FlowProto::Tcp)
        .await
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    flow.read_exact(&mut first).await.unwrap();
    // With nobody reading, the bytes in flight stop at the sum of the buffers and windows
    // on the way (splice buffers, the stream's receive window, socket buffers): the
    // provider stops pulling from the server. Waiting for the count to settle is waiting
    // for that to happen.
    let mut last = 0;
    let mut still = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while still < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flow never stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = p.served()[0].bytes_down;
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
    }
    assert!(
        last < 64_000_000,
        "the provider pulled {last} bytes for a reader that stopped"
    );
    // Reading again resumes the flow.
    let mut more = vec![0u8; 1024 * 1024];
    flow.read_exact(&mut more).await.unwrap();
}
