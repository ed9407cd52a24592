//! Many nodes in one process: offers reach everyone, forgeries reach no one.

use std::time::Duration;

use warren_node::{NodeConfig, NodeHandle};
use warren_testkit::{Shape, TestNet, memory_net};
use warren_types::{Amount, Identity, IpKind, Offer, Price, Service, SignedOffer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_each_see_every_providers_offer() {
    let net = TestNet::spawn(Shape {
        nodes: 20,
        providers: 20,
        degree: 3,
    })
    .await
    .expect("spawn");
    let done = net.wait_all_offers(Duration::from_secs(30)).await;
    assert_eq!(done, 20, "only {done} of 20 nodes saw all 20 offers");
    // Each node lists exactly the 20 providers, itself included.
    for node in &net.nodes {
        let offers = node.offers(&Default::default());
        assert_eq!(offers.len(), 20);
        assert!(offers.iter().any(|o| o.provider == node.node_id()));
    }
    net.shutdown().await;
}

fn forged_offer(victim: &Identity, mallory: &Identity, n: u64) -> Vec<u8> {
    // Mallory signs an offer that names the victim as provider: a forgery.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let offer = Offer {
        provider: mallory.node_id(),
        seq: n,
        issued_at: now,
        expires_at: now + 120,
        services: vec![Service::proxy()],
        price: Price {
            per_gib: Amount::from_nano(n),
            per_hour: Amount::ZERO,
        },
        country: "DE".parse().unwrap(),
        ip_kind: IpKind::Hosting,
        addrs: vec![],
    };
    let mut bytes = SignedOffer::sign(&offer, mallory).unwrap().to_bytes();
    // Swap Mallory's public key for the victim's inside the signed body.
    let m = mallory.node_id().public_key();
    let v = victim.node_id().public_key();
    let at = bytes.windows(32).position(|w| w == m).unwrap();
    bytes[at..at + 32].copy_from_slice(&v);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gossiping_forged_offers_is_refused_and_banned() {
    let honest = NodeHandle::spawn(NodeConfig::new(memory_net(Identity::generate())))
        .await
        .unwrap();
    let mallory_id = Identity::generate();
    let mut net = memory_net(mallory_id.clone());
    net.bootstrap = honest.dial_addrs();
    let mallory = NodeHandle::spawn(NodeConfig::new(net)).await.unwrap();

    let victim = Identity::generate();
    let mut state = honest.network().watch_state();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    // Keep sending forgeries until the honest node bans Mallory; each send waits for the
    // honest node's state to change (or a short while, while gossip meshes form).
    while !state.borrow().banned.contains(&mallory.node_id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mallory was not banned after {sent} forged offers"
        );
        sent += 1;
        mallory
            .network()
            .publish_offer(forged_offer(&victim, &mallory_id, sent))
            .await
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(200), state.changed()).await;
    }
    assert!(
        honest.offers(&Default::default()).is_empty(),
        "a forgery got in"
    );
    // The ban closes Mallory's connections; wait for the state to say so.
    // (The guard `wait_for` returns is dropped at once: held, it would block the swarm
    // task's next state update.)
    let disconnected = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| !s.connected.contains(&mallory.node_id())),
    )
    .await
    .map(|r| r.is_ok());
    assert!(
        matches!(disconnected, Ok(true)),
        "a banned peer stayed connected"
    );
    mallory.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_started_after_the_network_formed_reach_everyone() {
    let mut net = TestNet::spawn(Shape {
        nodes: 30,
        providers: 0,
        degree: 3,
    })
    .await
    .expect("spawn");
    net.start_providers(10..15).await.expect("provide");
    let done = net.wait_all_offers(Duration::from_secs(30)).await;
    assert_eq!(done, 30, "only {done} of 30 nodes saw all 5 late offers");
    // Stopping one provider clears its own offer at once.
    net.nodes[10].stop_providing().await;
    assert!(net.nodes[10].own_offer().is_none());
    assert!(net.nodes[10].status().provider.is_none());
    net.shutdown().await;
}

/// A network that has formed goes quiet: idle connections close (gossip streams do not
/// hold them open) and closing them does not set off new dials. Before, every DHT lookup's
/// connections stayed open for good; this test fails without `gossip::Gossip`. (The other
/// loop fixed with it, Kademlia dialling old entries of full buckets, needs more nodes
/// than fit a test: `bench-offers --progress` shows it, as connections made while settling.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_formed_network_closes_idle_connections_and_stops_dialling() {
    const NODES: usize = 40;
    const IDLE: Duration = Duration::from_secs(5);
    // At most 8 mesh peers a node; on average well under.
    const MESH_AVG_MAX: f64 = 8.0;
    let net = TestNet::spawn_tuned(
        Shape {
            nodes: NODES,
            providers: 0,
            degree: 3,
        },
        |n| n.idle_connection_timeout = IDLE,
    )
    .await
    .expect("spawn");
    // Formation: every node's DHT bootstrap reaches most of the others. Wait (at most a
    // minute) for a 5 s window in which the network opens fewer connection ends than it has
    // nodes.
    let start = tokio::time::Instant::now();
    let mut last = net.connections_opened();
    let mut made = u64::MAX;
    while made >= NODES as u64 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = net.connections_opened();
        made = now - last;
        last = now;
    }
    assert!(
        made < NODES as u64,
        "the network still opened {made} connection ends in 5 s after a minute"
    );
    let formed = net.connection_ends() as f64 / NODES as f64;
    // The lookups' connections close once idle. What stays is the gossip mesh (3 to 8
    // peers a node, as each node's mesh is also its peers' mesh).
    let before = net.connections_opened();
    let mut avg = formed;
    let deadline = tokio::time::Instant::now() + 6 * IDLE;
    while avg > MESH_AVG_MAX && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        avg = net.connection_ends() as f64 / NODES as f64;
    }
    assert!(
        avg <= MESH_AVG_MAX,
        "{avg:.1} peers a node stayed connected ({formed:.1} after the lookups)"
    );
    let after: Vec<usize> = net
        .nodes
        .iter()
        .map(|n| n.network().state().connected.len())
        .collect();
    assert!(
        after.iter().all(|&p| p > 0),
        "a node was left alone: {after:?}"
    );
    // Closing them sets off no chain of new dials. A node that dips below the mesh's
    // lower bound may dial a few peers to rejoin (at most one connection a node here),
    // and after that the network stays quiet.
    let dialled = net.connections_opened() - before;
    assert!(
        dialled < 2 * NODES as u64,
        "closing idle connections set off new ones ({dialled} connection ends)"
    );
    let quiet_from = net.connections_opened();
    tokio::time::sleep(2 * IDLE).await;
    let later = net.connections_opened() - quiet_from;
    assert!(
        later < NODES as u64 / 4,
        "the network kept dialling once idle connections had closed ({later} connection \
         ends in {:?})",
        2 * IDLE
    );
    net.shutdown().await;
}
