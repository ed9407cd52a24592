#![doc = include_str!("../README.md")]

mod behaviour;
mod gossip;
mod score;
mod streams;
mod task;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use warren_types::{Identity, NodeId};

pub use behaviour::MAX_GOSSIP_BYTES;
pub use score::{PeerScores, ScoreChange};
pub use streams::{Incoming, NetStream, StreamError, Streams};
pub use task::{MAX_PROVIDERS_PER_FIND, MAX_TOPICS};

/// What the network asks of the node about offers and other gossip. Called on the swarm
/// task, so every method must be quick and must not block on the network.
pub trait OfferBook: Send + Sync + 'static {
    /// Judge signed offer bytes that `from` sent (by gossip or in answer to a pull).
    fn offer_received(&self, from: NodeId, bytes: &[u8]) -> Verdict;
    /// Calls `visit` with each signed offer this node holds (to say which it has when
    /// pulling, and to answer a peer's pull with those it lacks). The book may hold a lock
    /// meanwhile; `visit` only hashes and copies.
    fn each_offer(&self, visit: &mut dyn FnMut(&[u8]));
    /// Judge a gossip message on a topic joined with [`Network::subscribe`]. `from` is the
    /// peer that passed it on, not necessarily its author: messages are anonymous, so
    /// anything that must be attributed has to carry its own signature. The verdict is
    /// handled like an offer's: `Accept` forwards it, `Reject` counts against `from`.
    /// Nodes that use no extra topics need not implement it.
    fn topic_message(&self, topic: &str, from: NodeId, bytes: &[u8]) -> Verdict {
        let _ = (topic, from, bytes);
        Verdict::Ignore
    }
}

/// The node's judgement of an offer a peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New and valid: keep and forward.
    Accept,
    /// Valid but nothing new (already held, or an honest race): drop quietly.
    Ignore,
    /// Forged, replayed, expired or oversized: drop and count it against the sender.
    Reject,
}

/// Which transports the swarm runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// QUIC and TCP+noise+yamux, with DNS: what a real node runs.
    #[default]
    Real,
    /// In-process memory transport (noise+yamux on top) for many nodes in one test process.
    Memory,
}

/// How the swarm is set up. Addresses are multiaddress text; they are checked on spawn.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub identity: Identity,
    pub transport: TransportKind,
    pub listen: Vec<String>,
    /// Peers to join through: multiaddresses, ideally ending in `/p2p/<node id>`.
    pub bootstrap: Vec<String>,
    /// Peers met in earlier runs, so a restart does not need the bootstrap list.
    pub known_peers: Vec<KnownPeer>,
    pub mdns: bool,
    /// Serve as a circuit relay v2 hop for peers behind NAT.
    pub relay_server: bool,
    /// Probe reachability with AutoNAT (meaningless on the in-memory transport).
    pub autonat: bool,
    /// How often Kademlia refreshes its routing table; `None` turns it off.
    pub kad_bootstrap_interval: Option<Duration>,
    pub gossip_heartbeat: Duration,
    /// How long a connection stays open once nothing uses it: no stream (sessions, flows,
    /// fetches, lookups), no gossip mesh, no relay reservation. A Kademlia lookup leaves a
    /// trail of such connections behind it.
    pub idle_connection_timeout: Duration,
}

impl NetConfig {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            transport: TransportKind::Real,
            listen: vec![
                "/ip4/0.0.0.0/udp/4451/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/4451".into(),
            ],
            bootstrap: Vec::new(),
            known_peers: Vec::new(),
            mdns: true,
            relay_server: true,
            autonat: true,
            kad_bootstrap_interval: Some(Duration::from_secs(300)),
            gossip_heartbeat: Duration::from_secs(1),
            idle_connection_timeout: Duration::from_secs(30),
        }
    }

    /// Settings for a node on the in-process memory transport (tests, simulations): a
    /// listener on a free `/memory` port, no mDNS, AutoNAT or relay hop (meaningless
    /// there), and no periodic DHT refresh (a test decides when things happen).
    pub fn in_memory(identity: Identity) -> Self {
        Self {
            transport: TransportKind::Memory,
            listen: vec!["/memory/0".into()],
            mdns: false,
            relay_server: false,
            autonat: false,
            kad_bootstrap_interval: None,
            ..Self::new(identity)
        }
    }
}

/// A peer and the addresses it was last reachable at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KnownPeer {
    pub id: NodeId,
    pub addrs: Vec<String>,
}

/// Whether this node can be reached from outside, as AutoNAT judges it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    #[default]
    Unknown,
    Public,
    Private,
}

/// A view of the swarm, refreshed by the swarm task as things change.
#[derive(Clone, Debug, Default)]
pub struct NetState {
    pub listen_addrs: Vec<String>,
    pub connected: Vec<NodeId>,
    pub reachability: Reachability,
    /// Peers worth remembering across restarts (bounded), most recently seen first.
    /// Shared, as it is rebuilt far less often than the rest changes.
    pub known_peers: Arc<Vec<KnownPeer>>,
    pub banned: Vec<NodeId>,
    /// Connections established since the node started, in either direction. A network
    /// that has formed and idles should stop adding to it.
    pub connections_opened: u64,
    /// Gossip messages this node gave up sending because a peer's queue was full or they
    /// waited too long in it.
    pub gossip_dropped: u64,
    /// Peers in this node's gossip mesh for offers, as of the last second: each offer
    /// this node forwards is sent to each of them.
    pub offer_mesh: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("address {addr:?} is not a valid multiaddress: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("could not set up the {what} transport: {reason}")]
    Transport { what: &'static str, reason: String },
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

#[derive(Debug)]
pub(crate) enum Command {
    PublishOffer(Vec<u8>),
    Dial(String),
    Disconnect(NodeId),
    Connect {
        peer: NodeId,
        addrs: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Result<(), ConnectError>>,
    },
    Subscribe(String),
    Unsubscribe(String),
    Publish {
        topic: String,
        bytes: Vec<u8>,
    },
    Provide(Vec<u8>),
    StopProviding(Vec<u8>),
    FindProviders {
        key: Vec<u8>,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<Vec<NodeId>>,
    },
    Penalise(NodeId),
    KnownPeers(tokio::sync::oneshot::Sender<Arc<Vec<KnownPeer>>>),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("node id {0} has no libp2p peer id")]
    BadPeer(NodeId),
    #[error("could not reach the peer: {0}")]
    Dial(String),
    #[error("the network task has stopped")]
    Gone,
}

/// A handle to the swarm task. Cloning it is cheap; the task ends when `cancel` fires.
#[derive(Clone, Debug)]
pub struct Network {
    local_id: NodeId,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<NetState>,
    streams: Streams,
}

#[derive(Debug, thiserror::Error)]
#[error("the network task has stopped")]
pub struct NetworkGone;

impl Network {
    /// Builds the swarm, starts listening and joining, and runs it on a new task until
    /// `cancel` fires. Returns once every listen address is bound (or failed).
    pub async fn spawn(
        config: NetConfig,
        book: Arc<dyn OfferBook>,
        cancel: CancellationToken,
    ) -> Result<(Network, tokio::task::JoinHandle<()>), SpawnError> {
        let local_id = config.identity.node_id();
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (state_tx, state_rx) = watch::channel(NetState::default());
        let runner = task::SwarmTask::new(config, book, commands_rx, state_tx).await?;
        let streams = Streams::new(runner.stream_control());
        let join = tokio::spawn(runner.run(cancel));
        Ok((
            Network {
                local_id,
                commands: commands_tx,
                state: state_rx,
                streams,
            },
            join,
        ))
    }

    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// Gossips a signed offer (this node's own) to the market.
    pub async fn publish_offer(&self, bytes: Vec<u8>) -> Result<(), NetworkGone> {
        self.commands
            .send(Command::PublishOffer(bytes))
            .await
            .map_err(|_| NetworkGone)
    }

    /// Dials a multiaddress (e.g. one a test hands over).
    pub async fn dial(&self, addr: String) -> Result<(), NetworkGone> {
        self.commands
            .send(Command::Dial(addr))
            .await
            .map_err(|_| NetworkGone)
    }

    /// Connects to `peer` on `addrs` (QUIC addresses are tried first) unless already
    /// connected, and returns once a connection is up. Not cancel-safe in the sense that a
    /// dropped call may still leave the dial running; the connection is then simply kept.
    pub async fn connect(&self, peer: NodeId, addrs: Vec<String>) -> Result<(), ConnectError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Connect { peer, addrs, reply })
            .await
            .map_err(|_| ConnectError::Gone)?;
        rx.await.map_err(|_| ConnectError::Gone)?
    }

    /// Closes every connection to `peer` (one that stopped answering keeps a connection
    /// that looks alive until something notices).
    pub async fn disconnect(&self, peer: NodeId) {
        let _ = self.commands.send(Command::Disconnect(peer)).await;
    }

    /// Joins the gossip topic `topic` (a plain name such as `warren/channel/1/<hex>`); its
    /// messages go to [`OfferBook::topic_message`]. A node joins at most
    /// [`MAX_TOPICS`] such topics: beyond that the call is logged and ignored, so a caller
    /// cannot grow the swarm's state without bound. The offer topic is not one of them.
    pub async fn subscribe(&self, topic: String) -> Result<(), NetworkGone> {
        self.send(Command::Subscribe(topic)).await
    }

    /// Leaves a topic joined with [`Network::subscribe`].
    pub async fn unsubscribe(&self, topic: String) -> Result<(), NetworkGone> {
        self.send(Command::Unsubscribe(topic)).await
    }

    /// Gossips `bytes` on `topic` (joined or not). Best effort, like offers: with no peer on
    /// the topic yet the message is simply not sent. At most [`MAX_GOSSIP_BYTES`] a message,
    /// topic name and framing included; larger ones are dropped with a warning.
    pub async fn publish(&self, topic: String, bytes: Vec<u8>) -> Result<(), NetworkGone> {
        self.send(Command::Publish { topic, bytes }).await
    }

    /// Announces in the DHT that this node can serve `key` (a Kademlia provider record),
    /// and keeps announcing it until [`Network::stop_providing`].
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetworkGone> {
        self.send(Command::Provide(key)).await
    }

    /// Stops announcing `key`. Records already handed to other nodes live on until they
    /// expire, so finders must expect a provider that no longer has it.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetworkGone> {
        self.send(Command::StopProviding(key)).await
    }

    /// Looks `key` up in the DHT and returns up to `limit` (at most
    /// [`MAX_PROVIDERS_PER_FIND`]) nodes that announced it, never this node nor a banned
    /// one. It returns as soon as `limit` are found, else when the lookup ends (at most
    /// 20 s); an empty list means none was found (or too many lookups were running). The
    /// swarm dials each provider it returns while the lookup still knows its addresses, so
    /// a [`Streams::open`] to one that follows needs no address.
    pub async fn find_providers(
        &self,
        key: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<NodeId>, NetworkGone> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Command::FindProviders { key, limit, reply })
            .await?;
        rx.await.map_err(|_| NetworkGone)
    }

    /// Counts one offence by `peer` (say, a content chunk that failed its hash), like a
    /// rejected offer: a peer that keeps misbehaving is disconnected and refused for a
    /// while, and shows in [`NetState::banned`].
    pub async fn penalise(&self, peer: NodeId) {
        let _ = self.send(Command::Penalise(peer)).await;
    }

    async fn send(&self, cmd: Command) -> Result<(), NetworkGone> {
        self.commands.send(cmd).await.map_err(|_| NetworkGone)
    }

    /// Raw streams to peers (sessions and flows).
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    pub fn state(&self) -> NetState {
        self.state.borrow().clone()
    }

    /// The peers worth remembering, as of now: [`NetState::known_peers`] is rebuilt at
    /// most every few seconds, so a node that saves its peer cache on the way out asks here.
    /// Once the network task has stopped, the last published list.
    pub async fn known_peers(&self) -> Arc<Vec<KnownPeer>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::KnownPeers(reply)).await.is_ok()
            && let Ok(known) = rx.await
        {
            return known;
        }
        self.state.borrow().known_peers.clone()
    }

    /// A receiver that wakes on every change of the swarm's state.
    pub fn watch_state(&self) -> watch::Receiver<NetState> {
        self.state.clone()
    }
}
