//! Gossipsub whose streams do not hold a connection open.
//!
//! libp2p-gossipsub keeps a long-lived stream to every connected peer that speaks it, and
//! the swarm keeps a connection open while any stream on it is open (rust-libp2p issue
//! 5190). So every connection a node ever made stayed open for good, those of each
//! Kademlia lookup included: a 1,000-node network grew towards a hundred connections a node
//! (each pinged every few seconds) and never went quiet.
//!
//! [`Gossip`] is gossipsub with its streams marked as not counting. Gossipsub's own
//! keep-alive still holds the connections to its mesh peers; every other connection closes
//! after [`NetConfig::idle_connection_timeout`](crate::NetConfig::idle_connection_timeout)
//! without a stream or a protocol that needs it, as libp2p means it to.

use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};

use futures::future::Either;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::gossipsub;
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, FullyNegotiatedInbound,
    FullyNegotiatedOutbound, SubstreamProtocol,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// Gossipsub, reached through `Deref` for everything but how its streams count.
pub(crate) struct Gossip(gossipsub::Behaviour);

impl Gossip {
    pub(crate) fn new(inner: gossipsub::Behaviour) -> Self {
        Gossip(inner)
    }
}

impl Deref for Gossip {
    type Target = gossipsub::Behaviour;

    fn deref(&self) -> &gossipsub::Behaviour {
        &self.0
    }
}

impl DerefMut for Gossip {
    fn deref_mut(&mut self) -> &mut gossipsub::Behaviour {
        &mut self.0
    }
}

type Inner = <gossipsub::Behaviour as NetworkBehaviour>::ConnectionHandler;

/// Gossipsub's connection handler; marks each gossip stream as not keeping the
/// connection open before handing it on.
pub(crate) struct Handler(Inner);

impl NetworkBehaviour for Gossip {
    type ConnectionHandler = Handler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(Handler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.0
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(Handler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.0.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.0.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = <Inner as ConnectionHandler>::FromBehaviour;
    type ToBehaviour = <Inner as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <Inner as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <Inner as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <Inner as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <Inner as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.0.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        // True while the peer is in one of our meshes.
        self.0.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.0.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.0.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.0.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        mut event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match &mut event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: Either::Left((stream, _)),
                ..
            }) => stream.ignore_for_keep_alive(),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                ..
            }) => stream.ignore_for_keep_alive(),
            _ => {}
        }
        self.0.on_connection_event(event)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::core::transport::MemoryTransport;
    use libp2p::core::upgrade::Version;
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Swarm, SwarmBuilder, Transport, gossipsub, identity, noise, yamux};

    const IDLE: Duration = Duration::from_millis(500);

    fn gossipsub_on(topic: &str) -> gossipsub::Behaviour {
        let key = identity::Keypair::generate_ed25519();
        let mut g = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key),
            gossipsub::Config::default(),
        )
        .unwrap();
        g.subscribe(&gossipsub::IdentTopic::new(topic)).unwrap();
        g
    }

    fn swarm<B: NetworkBehaviour + Send>(behaviour: B) -> Swarm<B> {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                Ok(MemoryTransport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .boxed())
            })
            .unwrap()
            .with_behaviour(|_| behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
            .build()
    }

    /// Connects two swarms, then drives both for `watch`; true if the connection closed.
    async fn closes_within<B: NetworkBehaviour + Send>(
        mut a: Swarm<B>,
        mut b: Swarm<B>,
        watch: Duration,
    ) -> bool
    where
        B::ToSwarm: std::fmt::Debug,
    {
        let port = next_port();
        a.listen_on(format!("/memory/{port}").parse().unwrap())
            .unwrap();
        b.dial(
            format!("/memory/{port}")
                .parse::<libp2p::Multiaddr>()
                .unwrap(),
        )
        .unwrap();
        let mut open = 0;
        let mut ever = false;
        let deadline = tokio::time::Instant::now() + watch;
        loop {
            let event = tokio::select! {
                e = a.select_next_some() => e,
                e = b.select_next_some() => e,
                _ = tokio::time::sleep_until(deadline) => {
                    assert!(ever, "the two swarms never connected");
                    return false;
                }
            };
            match event {
                SwarmEvent::ConnectionEstablished { .. } => {
                    open += 1;
                    ever = true;
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    open -= 1;
                    if open == 0 {
                        return true;
                    }
                }
                _ => {}
            }
        }
    }

    /// A `/memory` port no other swarm in this test binary uses.
    fn next_port() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// Both sides tell each other their topics over a gossip stream; with no topic in
    /// common there is no mesh, so nothing needs the connection.
    #[tokio::test]
    async fn a_connection_outside_the_mesh_closes_once_idle() {
        let a = swarm(super::Gossip::new(gossipsub_on("apples")));
        let b = swarm(super::Gossip::new(gossipsub_on("pears")));
        assert!(closes_within(a, b, IDLE * 8).await);
    }

    #[tokio::test]
    async fn a_connection_to_a_mesh_peer_stays_open() {
        let a = swarm(super::Gossip::new(gossipsub_on("apples")));
        let b = swarm(super::Gossip::new(gossipsub_on("apples")));
        assert!(!closes_within(a, b, IDLE * 8).await);
    }

    /// Why [`super::Gossip`] exists: plain gossipsub's streams hold any connection open.
    /// If this starts failing after a libp2p upgrade, upstream fixed it and the wrapper can go.
    #[tokio::test]
    async fn plain_gossipsub_holds_an_idle_connection_open() {
        let a = swarm(gossipsub_on("apples"));
        let b = swarm(gossipsub_on("pears"));
        assert!(!closes_within(a, b, IDLE * 8).await);
    }
}
