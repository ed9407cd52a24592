#![doc = include_str!("../README.md")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warren_net::NetConfig;
use warren_node::{NodeConfig, NodeHandle, StartError, testnet::provider_plan};
use warren_types::{Identity, NodeId};

/// A `/memory/N` address no other node in this process uses.
pub fn memory_addr() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Start from the clock so two test binaries' ports never matter (they cannot meet
    // anyway: the memory transport is per process).
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % (1 << 40))
        + 1;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("/memory/{}", base + n)
}

/// Network settings for an in-process node: [`NetConfig::in_memory`] on a `/memory` port
/// no other node in this process uses.
pub fn memory_net(identity: Identity) -> NetConfig {
    let mut net = NetConfig::in_memory(identity);
    net.listen = vec![memory_addr()];
    net
}

/// How a [`TestNet`] is shaped.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nodes: usize,
    /// The first `providers` nodes sell, each in a different country or price.
    pub providers: usize,
    /// How many earlier nodes each new node joins through.
    pub degree: usize,
}

/// Many nodes in one process.
#[derive(Debug)]
pub struct TestNet {
    pub nodes: Vec<NodeHandle>,
    providers: Vec<NodeId>,
}

/// What provider `i` sells: the testnet's plan, with offers that outlive any test.
fn plan(i: usize) -> warren_node::ProvideConfig {
    let mut plan = provider_plan(i);
    plan.offer_lifetime = Duration::from_secs(600);
    plan
}

/// A small deterministic generator, so a topology can be reproduced from its seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

impl TestNet {
    /// Starts `shape.nodes` nodes; node `i` bootstraps through node `i - 1` and through
    /// `degree - 1` other random earlier nodes.
    pub async fn spawn(shape: Shape) -> Result<TestNet, StartError> {
        Self::spawn_tuned(shape, |_| {}).await
    }

    /// [`TestNet::spawn`], with `tune` applied to each node's network settings.
    pub async fn spawn_tuned(
        shape: Shape,
        tune: impl Fn(&mut NetConfig),
    ) -> Result<TestNet, StartError> {
        let mut nodes: Vec<NodeHandle> = Vec::with_capacity(shape.nodes);
        let mut providers = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..shape.nodes {
            let mut net = memory_net(Identity::generate());
            tune(&mut net);
            if i > 0 {
                let mut targets = vec![i - 1];
                for _ in 1..shape.degree.min(i) {
                    let t = (next(&mut rng) % i as u64) as usize;
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
                net.bootstrap = targets
                    .iter()
                    .flat_map(|&t| nodes[t].dial_addrs())
                    .collect();
            }
            let mut config = NodeConfig::new(net);
            if i < shape.providers {
                config.provide = Some(plan(i));
            }
            let node = NodeHandle::spawn(config).await?;
            if i < shape.providers {
                providers.push(node.node_id());
            }
            nodes.push(node);
        }
        Ok(TestNet { nodes, providers })
    }

    /// Makes nodes `range` start selling now, into a network that has already formed.
    pub async fn start_providers(
        &mut self,
        range: std::ops::Range<usize>,
    ) -> Result<(), StartError> {
        for i in range {
            let node = &mut self.nodes[i];
            node.start_providing(plan(i)).await?;
            let id = node.node_id();
            if !self.providers.contains(&id) {
                self.providers.push(id);
            }
        }
        Ok(())
    }

    pub fn providers(&self) -> &[NodeId] {
        &self.providers
    }

    /// Connections the whole network has made so far (each counted at both ends).
    pub fn connections_opened(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.network().state().connections_opened)
            .sum()
    }

    /// Open connections, counted at both ends: the sum of every node's peers.
    pub fn connection_ends(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.network().state().connected.len())
            .sum()
    }

    /// Waits until every node holds every provider's offer. Returns how many nodes had
    /// them all when it returned (all of them unless `timeout` passed).
    pub async fn wait_all_offers(&self, timeout: Duration) -> usize {
        let want = &self.providers;
        let waits = self.nodes.iter().map(|n| {
            n.wait_for_catalog(timeout, |catalog| want.iter().all(|p| catalog.contains(p)))
        });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    pub async fn shutdown(self) {
        futures::future::join_all(self.nodes.into_iter().map(NodeHandle::shutdown)).await;
    }
}

/// A TCP server on 127.0.0.1 for flows to reach: to each client it sends `send` bytes (of
/// the value 7), then either echoes what it reads (`echo`) or closes. Runs until the test's
/// runtime ends.
pub async fn byte_server(send: usize, echo: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
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
                if !echo {
                    let _ = s.shutdown().await;
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
