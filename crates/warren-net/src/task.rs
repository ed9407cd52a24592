//! The one task that owns the libp2p `Swarm`: it runs commands from the [`Network`] handle,
//! answers peers, hands offers to the node's [`OfferBook`] and keeps [`NetState`] current.
//!
//! [`Network`]: crate::Network

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::kad::store::RecordStore;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, gossipsub, identify, identity, kad, mdns, ping,
    request_response,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_types::NodeId;

use crate::behaviour::{
    Behaviour, BehaviourEvent, KAD_PROTOCOL, MAX_PULL_OFFERS, MESH_N_LOW, OFFER_TOPIC, PullRequest,
    PullResponse, build_swarm, offer_digest, serde_bytes_vec::Bytes,
};
use crate::score::{PeerScores, ScoreChange};
use crate::{
    Command, ConnectError, KnownPeer, NetConfig, NetState, OfferBook, Reachability, SpawnError,
    Verdict,
};

/// Peers remembered for the next start.
const MAX_KNOWN_PEERS: usize = 256;
/// Addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// With fewer peers than this, a node dials its bootstrap and cached peers again, at most
/// once every [`REJOIN_EVERY`]. The gossip mesh's lower bound: a node with more keeps
/// only mesh connections once the others idle out, so a higher minimum would dial
/// connections that close again, forever.
const MIN_PEERS: usize = MESH_N_LOW;
const REJOIN_EVERY: Duration = Duration::from_secs(5);
/// The swarm task's tick (ban expiry, rejoining, held-back state).
const TICK: Duration = Duration::from_secs(1);
/// The published known-peer list is rebuilt at most this often (the peer cache reads it
/// every 30 s, and asks for a fresh one on shutdown).
const KNOWN_EVERY: Duration = Duration::from_secs(5);
/// Cached peers dialled at start.
const MAX_CACHED_DIALS: usize = 16;
/// Relays a node behind NAT reserves a slot on.
const MAX_RELAY_RESERVATIONS: usize = 2;
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// How often a node asks one peer for offers it may have missed (anti-entropy).
const REPULL_EVERY: Duration = Duration::from_secs(30);
/// Callers waiting on one peer's connection.
const MAX_CONNECT_WAITERS: usize = 64;
/// How long spawn waits for listeners to bind.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra gossip topics a node joins at most (each costs mesh state and traffic).
pub const MAX_TOPICS: usize = 1024;
/// Providers one [`crate::Network::find_providers`] returns at most; each is dialled.
pub const MAX_PROVIDERS_PER_FIND: usize = 64;
/// Provider lookups running at once; more are answered empty at once.
const MAX_PENDING_FINDS: usize = 256;

pub(crate) fn peer_to_node(peer: &PeerId) -> Option<NodeId> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    NodeId::from_public_key(ed.to_bytes()).ok()
}

pub(crate) fn node_to_peer(node: &NodeId) -> Option<PeerId> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(&node.public_key()).ok()?;
    Some(identity::PublicKey::from(ed).to_peer_id())
}

fn parse_addr(s: &str) -> Result<Multiaddr, SpawnError> {
    s.parse()
        .map_err(|e: libp2p::multiaddr::Error| SpawnError::BadAddress {
            addr: s.to_string(),
            reason: e.to_string(),
        })
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

struct Known {
    addrs: Vec<Multiaddr>,
    last_seen: Instant,
}

/// A running provider lookup and what it has found so far.
struct Find {
    key: kad::RecordKey,
    limit: usize,
    found: Vec<PeerId>,
    reply: tokio::sync::oneshot::Sender<Vec<NodeId>>,
}

pub(crate) struct SwarmTask {
    swarm: Swarm<Behaviour>,
    book: Arc<dyn OfferBook>,
    commands: mpsc::Receiver<Command>,
    state_tx: watch::Sender<NetState>,
    state: NetState,
    scores: PeerScores<PeerId>,
    known: HashMap<PeerId, Known>,
    relay_candidates: HashSet<PeerId>,
    reservations: HashSet<PeerId>,
    topic: gossipsub::TopicHash,
    dirty: bool,
    /// `known` changed since [`NetState::known_peers`] was last built, at `known_built`.
    known_dirty: bool,
    known_built: Instant,
    /// The bootstrap addresses, dialled again while the node has too few peers.
    bootstrap: Vec<Multiaddr>,
    rejoined: Instant,
    /// Node ids of peers met, so a key is decoded and checked once, not on every event.
    ids: HashMap<PeerId, Option<NodeId>>,
    /// Turns the anti-entropy pull over the connected peers.
    repulls: usize,
    /// Callers of `Network::connect` waiting for a connection to each peer.
    connecting: HashMap<PeerId, Vec<tokio::sync::oneshot::Sender<Result<(), ConnectError>>>>,
    /// Extra topics joined, by hash, so the book is told the name a message came on.
    topics: HashMap<gossipsub::TopicHash, String>,
    /// Provider lookups waiting for their answer.
    finds: HashMap<kad::QueryId, Find>,
}

fn cached_node(ids: &mut HashMap<PeerId, Option<NodeId>>, peer: &PeerId) -> Option<NodeId> {
    if ids.len() > 4 * MAX_KNOWN_PEERS && !ids.contains_key(peer) {
        ids.clear();
    }
    *ids.entry(*peer).or_insert_with(|| peer_to_node(peer))
}

impl SwarmTask {
    pub(crate) async fn new(
        config: NetConfig,
        book: Arc<dyn OfferBook>,
        commands: mpsc::Receiver<Command>,
        state_tx: watch::Sender<NetState>,
    ) -> Result<Self, SpawnError> {
        let mut swarm = build_swarm(&config)?;

        let mut pending = HashMap::new();
        for text in &config.listen {
            let addr = parse_addr(text)?;
            let id = swarm.listen_on(addr).map_err(|e| SpawnError::Listen {
                addr: text.clone(),
                reason: e.to_string(),
            })?;
            pending.insert(id, text.clone());
        }
        let mut task = SwarmTask {
            swarm,
            book,
            commands,
            state_tx,
            state: NetState::default(),
            scores: PeerScores::default(),
            known: HashMap::new(),
            relay_candidates: HashSet::new(),
            reservations: HashSet::new(),
            topic: gossipsub::IdentTopic::new(OFFER_TOPIC).hash(),
            dirty: true,
            known_dirty: false,
            known_built: Instant::now(),
            bootstrap: Vec::new(),
            rejoined: Instant::now(),
            ids: HashMap::new(),
            repulls: 0,
            connecting: HashMap::new(),
            topics: HashMap::new(),
            finds: HashMap::new(),
        };

        // Wait until each listener has bound, so callers can hand out real addresses.
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while !pending.is_empty() {
            let event = tokio::time::timeout_at(deadline, task.swarm.select_next_some())
                .await
                .map_err(|_| SpawnError::Listen {
                    addr: pending.values().cloned().collect::<Vec<_>>().join(", "),
                    reason: "timed out waiting for the listener".into(),
                })?;
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    pending.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                } => {
                    if let Some(addr) = pending.remove(listener_id) {
                        return Err(SpawnError::Listen {
                            addr,
                            reason: e.to_string(),
                        });
                    }
                }
                _ => {}
            }
            task.handle_event(event);
        }

        for text in &config.bootstrap {
            let addr = parse_addr(text)?;
            task.bootstrap.push(addr.clone());
            task.dial(addr);
        }
        for peer in config.known_peers.iter().take(MAX_CACHED_DIALS) {
            let Some(pid) = node_to_peer(&peer.id) else {
                continue;
            };
            for a in peer
                .addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
            {
                task.add_route(&pid, a.clone());
                task.remember(pid, a);
            }
            if pid != *task.swarm.local_peer_id() {
                let _ = task.swarm.dial(pid);
            }
        }
        if !config.bootstrap.is_empty() || !config.known_peers.is_empty() {
            let _ = task.swarm.behaviour_mut().kad.bootstrap();
        }
        task.publish_state();
        Ok(task)
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repull =
            tokio::time::interval_at(tokio::time::Instant::now() + REPULL_EVERY, REPULL_EVERY);
        repull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(cmd) = self.commands.recv() => self.handle_command(cmd),
                _ = tick.tick() => self.on_tick(),
                _ = repull.tick() => self.repull(),
                event = self.swarm.select_next_some() => self.handle_event(event),
            }
            if self.dirty {
                self.publish_state();
            }
        }
        debug!("network task stopped");
    }

    /// Publishes the connected and banned peers, and the known-peer list when it changed
    /// and was last rebuilt at least [`KNOWN_EVERY`] ago: connection events come by the
    /// hundred a second while a network forms, and the list (sorted, addresses as text) is
    /// only read by the peer cache.
    fn publish_state(&mut self) {
        self.dirty = false;
        let now = Instant::now();
        if self.known_due(now) {
            self.rebuild_known(now);
        }
        let ids = &mut self.ids;
        self.state.connected = self
            .swarm
            .connected_peers()
            .filter_map(|p| cached_node(ids, p))
            .collect();
        self.state.banned = self
            .scores
            .banned(now)
            .iter()
            .filter_map(|p| cached_node(ids, p))
            .collect();
        let _ = self.state_tx.send(self.state.clone());
    }

    /// Whether the known-peer list changed and may be rebuilt now.
    fn known_due(&self, now: Instant) -> bool {
        self.known_dirty && now.duration_since(self.known_built) >= KNOWN_EVERY
    }

    fn rebuild_known(&mut self, now: Instant) {
        self.known_dirty = false;
        self.known_built = now;
        let ids = &mut self.ids;
        let mut known: Vec<(&PeerId, &Known)> = self.known.iter().collect();
        known.sort_by_key(|(_, k)| std::cmp::Reverse(k.last_seen));
        self.state.known_peers = Arc::new(
            known
                .into_iter()
                .filter_map(|(p, k)| {
                    Some(KnownPeer {
                        id: cached_node(ids, p)?,
                        addrs: k.addrs.iter().map(ToString::to_string).collect(),
                    })
                })
                .collect(),
        );
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let mesh = self
            .swarm
            .behaviour()
            .gossipsub
            .mesh_peers(&self.topic)
            .count();
        if mesh != self.state.offer_mesh {
            self.state.offer_mesh = mesh;
            self.dirty = true;
        }
        // A known-peer change held back by `publish_state` goes out once it is due.
        self.dirty |= self.known_due(now);
        for peer in self.scores.expire_bans(now) {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.dirty = true;
        }
        if now.duration_since(self.rejoined) >= REJOIN_EVERY {
            self.rejoined = now;
            self.rejoin();
        }
    }

    /// A node left with fewer than [`MIN_PEERS`] peers (its gossip mesh pruned it, its
    /// peers went away, idle connections closed) dials its bootstrap peers and the most
    /// recently seen cached peers it is not connected to. Nothing else would: gossipsub
    /// never dials, and Kademlia only while a lookup runs.
    fn rejoin(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected >= MIN_PEERS {
            return;
        }
        let local = *self.swarm.local_peer_id();
        let mut dials = 0;
        for addr in self.bootstrap.clone() {
            let opts = match peer_of(&addr) {
                Some(p) if p == local || self.swarm.is_connected(&p) => continue,
                Some(p) => DialOpts::peer_id(p)
                    .addresses(vec![addr])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                // Without a peer id there is no telling whether it is connected already.
                None if connected > 0 => continue,
                None => DialOpts::unknown_peer_id().address(addr).build(),
            };
            dials += usize::from(self.swarm.dial(opts).is_ok());
        }
        let mut cached: Vec<(Instant, PeerId)> = self
            .known
            .iter()
            .filter(|(p, _)| **p != local && !self.swarm.is_connected(p))
            .map(|(p, k)| (k.last_seen, *p))
            .collect();
        cached.sort_by_key(|(seen, _)| std::cmp::Reverse(*seen));
        for (_, peer) in cached.into_iter().take(MIN_PEERS) {
            let addrs = self.known[&peer].addrs.clone();
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            dials += usize::from(self.swarm.dial(opts).is_ok());
        }
        if dials > 0 {
            debug!(
                connected,
                dials, "too few peers; dialling bootstrap and cached peers"
            );
        }
    }

    /// Asks `peer` for the offers it holds that this node does not.
    fn pull_from(&mut self, peer: PeerId) {
        let mut have = Vec::new();
        self.book.each_offer(&mut |b| {
            if have.len() < MAX_PULL_OFFERS {
                have.push(offer_digest(b));
            }
        });
        self.swarm
            .behaviour_mut()
            .pull
            .send_request(&peer, PullRequest { have });
    }

    /// Anti-entropy: now and then, pull from one connected peer (in turn), so an offer
    /// missed in gossip arrives within [`REPULL_EVERY`] rather than at its next refresh.
    fn repull(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        self.repulls = self.repulls.wrapping_add(1);
        self.pull_from(peers[self.repulls % peers.len()]);
    }

    /// Puts `peer` in the DHT routing table at `addr`, unless its bucket is full. Into a
    /// full bucket Kademlia would dial the bucket's oldest disconnected entry to see
    /// whether it still answers; with idle connections closed most entries are
    /// disconnected, and each such dial made the other side do the same on identify, so
    /// one connection begot the next for as long as the network ran. Entries that stop
    /// answering leave the table as lookups fail to reach them, which makes room.
    fn add_route(&mut self, peer: &PeerId, addr: Multiaddr) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let room = kad.kbucket(*peer).is_some_and(|bucket| {
            bucket.num_entries() < kad::K_VALUE.get()
                || bucket.iter().any(|e| e.node.key.preimage() == peer)
        });
        if room {
            kad.add_address(peer, addr);
        }
    }

    fn dial(&mut self, addr: Multiaddr) {
        if let Some(pid) = peer_of(&addr) {
            if pid == *self.swarm.local_peer_id() {
                return;
            }
            self.add_route(&pid, addr.clone());
        }
        if let Err(e) = self.swarm.dial(addr) {
            debug!("dial failed: {e}");
        }
    }

    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.known.len() >= MAX_KNOWN_PEERS
            && !self.known.contains_key(&peer)
            && let Some(oldest) = self
                .known
                .iter()
                .min_by_key(|(_, k)| k.last_seen)
                .map(|(p, _)| *p)
        {
            self.known.remove(&oldest);
        }
        let entry = self.known.entry(peer).or_insert(Known {
            addrs: Vec::new(),
            last_seen: Instant::now(),
        });
        entry.last_seen = Instant::now();
        // Strip a trailing /p2p/<id>: the cache keeps the id beside the address.
        let addr: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        if !entry.addrs.contains(&addr) {
            entry.addrs.insert(0, addr);
            entry.addrs.truncate(MAX_ADDRS_PER_PEER);
        }
        self.known_dirty = true;
    }

    /// A control for raw streams over this swarm's connections.
    pub(crate) fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().streams.new_control()
    }

    fn connect(
        &mut self,
        node: NodeId,
        addrs: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Result<(), ConnectError>>,
    ) {
        let Some(peer) = node_to_peer(&node) else {
            let _ = reply.send(Err(ConnectError::BadPeer(node)));
            return;
        };
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        let mut addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        // QUIC first: it carries many flows without head-of-line blocking.
        addrs.sort_by_key(|a| !a.iter().any(|p| matches!(p, Protocol::QuicV1)));
        for a in &addrs {
            self.add_route(&peer, a.clone());
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                let waiting = self.connecting.entry(peer).or_default();
                // Callers that gave up no longer count.
                waiting.retain(|w| !w.is_closed());
                if waiting.len() < MAX_CONNECT_WAITERS {
                    waiting.push(reply);
                } else {
                    let _ = reply.send(Err(ConnectError::Dial("too many waiting connects".into())));
                }
            }
            Err(e) => {
                let _ = reply.send(Err(ConnectError::Dial(e.to_string())));
            }
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { peer, addrs, reply } => self.connect(peer, addrs, reply),
            Command::Disconnect(node) => {
                if let Some(peer) = node_to_peer(&node) {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::PublishOffer(bytes) => {
                let topic = self.topic.clone();
                match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    Ok(_) => {}
                    // With no peers yet, joiners pull the offer when they connect.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                    Err(gossipsub::PublishError::Duplicate) => {}
                    Err(e) => warn!("could not gossip our offer: {e}; peers will pull it"),
                }
            }
            Command::Dial(text) => match text.parse::<Multiaddr>() {
                Ok(addr) => self.dial(addr),
                Err(e) => warn!("not dialling {text:?}: {e}"),
            },
            Command::Subscribe(name) => self.subscribe(name),
            Command::Unsubscribe(name) => self.unsubscribe(name),
            Command::Publish { topic, bytes } => self.publish(topic, bytes),
            Command::Provide(key) => {
                let key = kad::RecordKey::new(&key);
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    debug!("could not announce a key in the DHT: {e}");
                }
            }
            Command::StopProviding(key) => {
                let key = kad::RecordKey::new(&key);
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
            Command::FindProviders { key, limit, reply } => self.find_providers(key, limit, reply),
            Command::KnownPeers(reply) => {
                if self.known_dirty {
                    self.rebuild_known(Instant::now());
                    self.dirty = true;
                }
                let _ = reply.send(self.state.known_peers.clone());
            }
            Command::Penalise(node) => match node_to_peer(&node) {
                Some(peer) if peer != *self.swarm.local_peer_id() => self.penalise(peer),
                _ => debug!(%node, "not penalising this node or a non-peer"),
            },
        }
    }

    fn subscribe(&mut self, name: String) {
        if name == OFFER_TOPIC {
            warn!("the offer topic is always joined and judged as offers; not joining it again");
            return;
        }
        let topic = gossipsub::IdentTopic::new(name.as_str());
        let hash = topic.hash();
        if self.topics.contains_key(&hash) {
            return;
        }
        if self.topics.len() >= MAX_TOPICS {
            warn!(topic = %name, "not joining: already on {MAX_TOPICS} topics");
            return;
        }
        match self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
            Ok(_) => {
                self.topics.insert(hash, name);
            }
            Err(e) => warn!(topic = %name, "could not join the topic: {e}"),
        }
    }

    fn unsubscribe(&mut self, name: String) {
        let topic = gossipsub::IdentTopic::new(name);
        if self.topics.remove(&topic.hash()).is_some() {
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
        }
    }

    fn publish(&mut self, name: String, bytes: Vec<u8>) {
        if name == OFFER_TOPIC {
            warn!("not publishing on the offer topic through `publish`; use `publish_offer`");
            return;
        }
        let topic = gossipsub::IdentTopic::new(name.as_str());
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => {}
            // Best effort: nobody on the topic yet, or the same bytes already went out.
            Err(
                e @ (gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::Duplicate),
            ) => debug!(topic = %name, "not gossiped: {e}"),
            Err(e) => warn!(topic = %name, "could not gossip a message: {e}"),
        }
    }

    fn find_providers(
        &mut self,
        key: Vec<u8>,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<Vec<NodeId>>,
    ) {
        // Lookups whose caller gave up need not hold a slot until they time out.
        let abandoned: Vec<kad::QueryId> = self
            .finds
            .iter()
            .filter(|(_, f)| f.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.end_find(id);
        }
        let limit = limit.min(MAX_PROVIDERS_PER_FIND);
        if limit == 0 {
            let _ = reply.send(Vec::new());
            return;
        }
        if self.finds.len() >= MAX_PENDING_FINDS {
            warn!("{MAX_PENDING_FINDS} provider lookups already running; answering none");
            let _ = reply.send(Vec::new());
            return;
        }
        let key = kad::RecordKey::new(&key);
        let id = self.swarm.behaviour_mut().kad.get_providers(key.clone());
        self.finds.insert(
            id,
            Find {
                key,
                limit,
                found: Vec::new(),
                reply,
            },
        );
    }

    /// Stops a provider lookup early (if Kademlia still runs it) and answers its caller
    /// with what it found.
    fn end_find(&mut self, id: kad::QueryId) {
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        if let Some(find) = self.finds.remove(&id) {
            let ids = &mut self.ids;
            let nodes = find
                .found
                .iter()
                .filter_map(|p| cached_node(ids, p))
                .collect();
            let _ = find.reply.send(nodes);
        }
    }

    /// Progress of a Kademlia query: provider lookups collect and answer; announcements
    /// only log.
    fn on_query(&mut self, id: kad::QueryId, result: kad::QueryResult, step: kad::ProgressStep) {
        match result {
            kad::QueryResult::GetProviders(result) => {
                let local = *self.swarm.local_peer_id();
                let now = Instant::now();
                let Some(find) = self.finds.get_mut(&id) else {
                    return;
                };
                let mut new = Vec::new();
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if find.found.len() >= find.limit {
                                break;
                            }
                            // Only peers that can be named as nodes count.
                            if p != local
                                && !find.found.contains(&p)
                                && !self.scores.is_banned(&p, now)
                                && cached_node(&mut self.ids, &p).is_some()
                            {
                                find.found.push(p);
                                new.push(p);
                            }
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => debug!("provider lookup ended early: {e}"),
                }
                let done = step.last || find.found.len() >= find.limit || find.reply.is_closed();
                let key = find.key.clone();
                for p in new {
                    self.dial_provider(p, &key);
                }
                if done {
                    self.end_find(id);
                }
            }
            kad::QueryResult::StartProviding(Err(e)) => {
                debug!("announcing a key in the DHT did not reach every close node: {e}");
            }
            _ => {}
        }
    }

    /// Dials a provider a lookup just found, while the lookup runs. Kademlia reports
    /// providers by id only; the addresses they came with live in the running query,
    /// which Kademlia hands to a dial started now (and forgets when the query ends). A
    /// provider record already in our own store carries its addresses, so those go too,
    /// with any we remember. Once connected, identify stores the provider's addresses.
    fn dial_provider(&mut self, peer: PeerId, key: &kad::RecordKey) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let mut addrs: Vec<Multiaddr> = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .providers(key)
            .into_iter()
            .filter(|r| r.provider == peer)
            .flat_map(|r| r.addresses)
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        if let Some(known) = self.known.get(&peer) {
            addrs.extend(known.addrs.iter().cloned());
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, "not dialling a provider: {e}");
        }
    }

    /// Counts an offence against `peer` (a bad offer or message, or misbehaviour the node
    /// reported), banning it when its score runs out.
    fn penalise(&mut self, peer: PeerId) {
        match self.scores.penalise(&peer, Instant::now()) {
            ScoreChange::Lowered { score } => debug!(%peer, score, "peer misbehaved"),
            ScoreChange::Banned { score } => {
                warn!(%peer, score, "banning a peer that kept misbehaving; no action needed");
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
            }
        }
        self.dirty = true;
    }

    fn judge(&mut self, from: PeerId, bytes: &[u8]) -> Verdict {
        let Some(node) = cached_node(&mut self.ids, &from) else {
            return Verdict::Reject;
        };
        self.book.offer_received(node, bytes)
    }

    /// Judges a gossip message: offers as offers, other joined topics by name. A message
    /// on a topic just left is dropped quietly.
    fn judge_gossip(&mut self, from: PeerId, message: &gossipsub::Message) -> Verdict {
        if message.topic == self.topic {
            return self.judge(from, &message.data);
        }
        let Some(name) = self.topics.get(&message.topic) else {
            return Verdict::Ignore;
        };
        let Some(node) = cached_node(&mut self.ids, &from) else {
            return Verdict::Reject;
        };
        self.book.topic_message(name, node, &message.data)
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}");
                let a = address.to_string();
                if !self.state.listen_addrs.contains(&a) {
                    self.state.listen_addrs.push(a);
                }
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let a = address.to_string();
                self.state.listen_addrs.retain(|x| *x != a);
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint
                    && !address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
                {
                    self.remember(peer_id, address.clone());
                }
                for reply in self.connecting.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                self.state.connections_opened += 1;
                if num_established.get() == 1 {
                    debug!(%peer_id, "connected; pulling its offers");
                    self.pull_from(peer_id);
                }
                self.dirty = true;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.relay_candidates.remove(&peer_id);
                    self.reservations.remove(&peer_id);
                }
                self.dirty = true;
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !self.swarm.is_connected(&peer) => {
                for reply in self.connecting.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(ConnectError::Dial(error.to_string())));
                }
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour(event),
            _ => {}
        }
    }

    fn handle_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            // libp2p's ping no longer closes a connection whose peer stopped answering; a
            // frozen peer would keep a dead connection (and every stream on it) forever.
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) => {
                debug!(%peer, "ping failed ({e}); closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.judge_gossip(propagation_source, &message);
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if verdict == Verdict::Reject {
                    self.penalise(propagation_source);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            }) => {
                let dropped = failed_messages.priority + failed_messages.non_priority;
                debug!(peer = %peer_id, dropped, "gossip messages to a slow peer dropped");
                self.state.gossip_dropped += dropped as u64;
                self.dirty = true;
            }
            BehaviourEvent::Pull(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        if request.have.len() > MAX_PULL_OFFERS {
                            self.penalise(peer);
                            return;
                        }
                        let have: HashSet<u64> = request.have.into_iter().collect();
                        // Only the offers the peer lacks are copied.
                        let mut offers = Vec::new();
                        self.book.each_offer(&mut |b| {
                            if offers.len() < MAX_PULL_OFFERS && !have.contains(&offer_digest(b)) {
                                offers.push(Bytes(b.to_vec()));
                            }
                        });
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .pull
                            .send_response(channel, PullResponse { offers });
                    }
                    request_response::Message::Response { response, .. } => {
                        if response.offers.len() > MAX_PULL_OFFERS {
                            self.penalise(peer);
                            return;
                        }
                        let mut accepted = 0usize;
                        for offer in response.offers {
                            match self.judge(peer, &offer.0) {
                                // Pass news on: peers that pulled from us before we had
                                // it would otherwise wait for the provider's refresh.
                                // The id is the content hash, so copies collapse.
                                Verdict::Accept => {
                                    accepted += 1;
                                    let topic = self.topic.clone();
                                    let _ = self
                                        .swarm
                                        .behaviour_mut()
                                        .gossipsub
                                        .publish(topic, offer.0);
                                }
                                Verdict::Ignore => {}
                                Verdict::Reject => self.penalise(peer),
                            }
                        }
                        debug!(%peer, accepted, "pulled offers");
                    }
                }
            }
            BehaviourEvent::Pull(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
                debug!(%peer, "offer pull failed: {error}");
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // Only peers that answer DHT queries belong in the routing table.
                let dht = info.protocols.contains(&KAD_PROTOCOL);
                for addr in info.listen_addrs.iter().take(MAX_ADDRS_PER_PEER) {
                    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                        continue;
                    }
                    if dht {
                        self.add_route(&peer_id, addr.clone());
                    }
                    self.remember(peer_id, addr.clone());
                }
                if info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL)
                {
                    self.relay_candidates.insert(peer_id);
                    if self.state.reachability == Reachability::Private {
                        self.reserve_relays();
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.add_route(&peer, addr.clone());
                    // Both ends of a LAN usually discover each other in the same
                    // instant. Dialling from the listen port would let the two SYNs
                    // cross into one TCP connection where both sides are initiator and
                    // both handshakes fail; a fresh source port keeps them apart.
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .allocate_new_port()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(%peer, "not dialling a peer found by mDNS: {e}");
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_query(id, result, step),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.state.reachability = match new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                info!(reachability = ?self.state.reachability, "reachability changed");
                if self.state.reachability == Reachability::Private {
                    self.reserve_relays();
                }
                self.dirty = true;
            }
            _ => {}
        }
    }

    /// Behind NAT, listen through relays so others can reach us (and DCUtR can then try a
    /// direct connection).
    fn reserve_relays(&mut self) {
        let candidates: Vec<PeerId> = self
            .relay_candidates
            .iter()
            .filter(|p| !self.reservations.contains(p))
            .copied()
            .collect();
        for relay in candidates {
            if self.reservations.len() >= MAX_RELAY_RESERVATIONS {
                break;
            }
            let Some(addr) = self
                .known
                .get(&relay)
                .and_then(|k| k.addrs.first())
                .cloned()
            else {
                continue;
            };
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(_) => {
                    info!(%relay, "listening through a relay");
                    self.reservations.insert(relay);
                }
                Err(e) => debug!(%relay, "relay reservation failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_types::Identity;

    #[test]
    fn node_ids_are_libp2p_peer_ids() {
        let id = Identity::generate();
        let kp = identity::Keypair::ed25519_from_bytes(id.secret()).unwrap();
        let peer = kp.public().to_peer_id();
        assert_eq!(peer.to_string(), id.node_id().to_string());
        assert_eq!(peer_to_node(&peer), Some(id.node_id()));
        assert_eq!(node_to_peer(&id.node_id()), Some(peer));
    }
}
