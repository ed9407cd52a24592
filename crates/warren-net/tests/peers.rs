//! A node keeps a neighbourhood of its own: idle connections close, and one left with too
//! few peers dials its way back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_net::{NetConfig, NetState, Network, OfferBook, TransportKind, Verdict};
use warren_types::{Identity, NodeId};

struct NoOffers;

impl OfferBook for NoOffers {
    fn offer_received(&self, _: NodeId, _: &[u8]) -> Verdict {
        Verdict::Ignore
    }

    fn offers_snapshot(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

async fn spawn(bootstrap: Vec<String>, cancel: &CancellationToken) -> Network {
    let mut config = NetConfig::new(Identity::generate());
    config.transport = TransportKind::Memory;
    config.listen = vec!["/memory/0".into()];
    config.bootstrap = bootstrap;
    config.mdns = false;
    config.relay_server = false;
    config.autonat = false;
    config.kad_bootstrap_interval = None;
    let (net, _task) = Network::spawn(config, Arc::new(NoOffers), cancel.clone())
        .await
        .expect("spawn");
    net
}

async fn wait_state(net: &Network, what: &str, within: Duration, f: impl Fn(&NetState) -> bool) {
    let mut rx = net.watch_state();
    tokio::time::timeout(within, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting: {what}"))
        .map(|_| ())
        .expect("network stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_without_peers_dials_its_way_back() {
    let cancel = CancellationToken::new();
    let hub = spawn(Vec::new(), &cancel).await;
    let addr = format!("{}/p2p/{}", hub.state().listen_addrs[0], hub.local_id());
    let node = spawn(vec![addr], &cancel).await;
    let hub_id = hub.local_id();
    wait_state(
        &node,
        "the first connection",
        Duration::from_secs(10),
        |s| s.connected.contains(&hub_id),
    )
    .await;

    // Cut it. Nothing in libp2p would dial again: gossipsub never dials, and Kademlia
    // only while a lookup runs.
    node.disconnect(hub_id).await;
    wait_state(&node, "the disconnection", Duration::from_secs(10), |s| {
        !s.connected.contains(&hub_id)
    })
    .await;
    wait_state(
        &node,
        "the node to come back",
        Duration::from_secs(15),
        |s| s.connected.contains(&hub_id),
    )
    .await;
    cancel.cancel();
}
