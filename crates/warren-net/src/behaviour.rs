//! The composed libp2p behaviour and how a swarm is built from a [`NetConfig`].

use std::time::Duration;

use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, Transport, allow_block_list, autonat, dcutr, gossipsub,
    identify, identity, kad, mdns, noise, ping, relay, request_response, tcp, yamux,
};
use serde::{Deserialize, Serialize};

use crate::gossip::Gossip;
use crate::{NetConfig, SpawnError, TransportKind};

pub(crate) const IDENTIFY_PROTOCOL: &str = "/warren/1.0.0";
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/warren/kad/1.0.0");
pub(crate) const PULL_PROTOCOL: StreamProtocol = StreamProtocol::new("/warren/offers/pull/1");
pub(crate) const OFFER_TOPIC: &str = "warren/offers/1";
/// The largest gossip frame, for offers and every other topic alike: room for a 2 KiB
/// message with its topic name and framing many times over, while still bounding what one
/// peer can make us read.
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;
const _: () = assert!(MAX_GOSSIP_BYTES >= 4 * warren_types::offer::MAX_OFFER_BYTES);
/// The gossip mesh: each node forwards an offer to [`MESH_N`] peers, keeps at least
/// [`MESH_N_LOW`] and prunes above [`MESH_N_HIGH`]. Smaller than gossipsub's 6/5/12: an
/// offer is small and rare, every copy costs a frame and a timer at both ends, and a
/// mesh peer's connection stays open for good (others close once idle), so the mesh
/// sets how many connections a formed network keeps. An offer missed in gossip still
/// arrives by IHAVE gossip, by the pull on connect or by the anti-entropy pull.
pub(crate) const MESH_N: usize = 4;
pub(crate) const MESH_N_LOW: usize = 3;
pub(crate) const MESH_N_HIGH: usize = 8;
/// How long an offer may wait in a connection's send queue before gossipsub gives up on
/// it (its defaults: 1 s to forward, 5 s to publish). An offer is valid for minutes, so a
/// late copy is still worth sending; on a busy node a 1 s limit drops forwards, and a
/// peer whose mesh links all dropped it waits for the anti-entropy pull. The queue
/// stays bounded by gossipsub's length limit.
const GOSSIP_SEND_PATIENCE: Duration = Duration::from_secs(20);
/// How long one DHT lookup may run (Kademlia's default is a minute).
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Keys the DHT store holds provider records for, ours and other nodes' together: a node
/// may hold thousands of blobs, and the default (1024) would refuse to announce the rest.
const MAX_PROVIDED_KEYS: usize = 65536;
/// The most offers one pull answer may carry, and so the most a peer can make us check.
pub(crate) const MAX_PULL_OFFERS: usize = 8192;
const MAX_PULL_REQUEST_BYTES: u64 = (MAX_PULL_OFFERS * 9 + 64) as u64;
const MAX_PULL_RESPONSE_BYTES: u64 =
    (MAX_PULL_OFFERS * (warren_types::offer::MAX_OFFER_BYTES + 8)) as u64;

/// Ask a peer for the offers it holds that the asker does not: `have` lists a digest
/// ([`offer_digest`]) of each offer the asker holds, so only news crosses the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PullRequest {
    pub have: Vec<u64>,
}

/// A short, stable name for an offer's bytes: the first 8 bytes of their BLAKE3 hash.
pub(crate) fn offer_digest(bytes: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PullResponse {
    pub offers: Vec<serde_bytes_vec::Bytes>,
}

/// CBOR writes `Vec<u8>` as an array of integers; wrap it so it goes as a byte string.
pub(crate) mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Clone, Debug)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: Gossip,
    pub pull: request_response::cbor::Behaviour<PullRequest, PullResponse>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat: Toggle<autonat::Behaviour>,
    pub relay_server: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub streams: libp2p_stream::Behaviour,
}

fn transport_err(what: &'static str) -> impl Fn(String) -> SpawnError {
    move |reason| SpawnError::Transport { what, reason }
}

fn make_behaviour(
    key: &identity::Keypair,
    relay_client: relay::client::Behaviour,
    config: &NetConfig,
) -> Result<Behaviour, SpawnError> {
    let peer_id = key.public().to_peer_id();

    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_periodic_bootstrap_interval(config.kad_bootstrap_interval);
    kad_config.set_query_timeout(KAD_QUERY_TIMEOUT);
    // The swarm task decides what enters the routing table (`SwarmTask::add_route`):
    // Kademlia's own inserts dial old entries whenever a bucket is full.
    kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_provided_keys: MAX_PROVIDED_KEYS,
            ..Default::default()
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // Every Warren node answers DHT queries; a loopback test network never confirms an
    // external address, which would otherwise leave every node a silent client.
    kad.set_mode(Some(kad::Mode::Server));

    // Offers carry their own provider signature, so gossipsub's per-message signature would
    // only add a second check; messages are anonymous and identified by their content hash.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(config.gossip_heartbeat)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .forward_queue_duration(GOSSIP_SEND_PATIENCE)
        .publish_queue_duration(GOSSIP_SEND_PATIENCE)
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_N_LOW)
        .mesh_n_high(MESH_N_HIGH)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
        })
        .build()
        .map_err(|e| transport_err("gossipsub")(e.to_string()))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
            .map_err(|e| transport_err("gossipsub")(e.to_string()))?;
    gossipsub
        .subscribe(&gossipsub::IdentTopic::new(OFFER_TOPIC))
        .map_err(|e| transport_err("gossipsub")(e.to_string()))?;

    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_PULL_REQUEST_BYTES)
        .set_response_size_maximum(MAX_PULL_RESPONSE_BYTES);
    let pull = request_response::Behaviour::with_codec(
        codec,
        [(PULL_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    );

    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| transport_err("mdns")(e.to_string()))?,
        )
    } else {
        None
    };

    let relay_server = config.relay_server.then(|| {
        relay::Behaviour::new(
            peer_id,
            relay::Config {
                max_reservations: 64,
                max_circuits: 32,
                ..Default::default()
            },
        )
    });

    Ok(Behaviour {
        blocked: Default::default(),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("warren/{}", env!("CARGO_PKG_VERSION"))),
        ),
        // A peer whose link went down (a cut cable, a country cut off) should stop counting
        // as connected within seconds, not the 35 s of the defaults: content syncs and
        // fetches pick sources among the connected peers.
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(10)),
        ),
        kad,
        gossipsub: Gossip::new(gossipsub),
        pull,
        mdns: mdns.into(),
        autonat: config
            .autonat
            .then(|| autonat::Behaviour::new(peer_id, autonat::Config::default()))
            .into(),
        relay_server: relay_server.into(),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        streams: libp2p_stream::Behaviour::new(),
    })
}

/// QUIC tuned for carrying flows: room for many concurrent streams (one per flow) and larger
/// flow-control windows. (Packets stay at most 1,472 bytes: libp2p-quic does not expose
/// quinn's `EndpointConfig::max_udp_payload_size`, so raising the MTU search bound alone
/// changes nothing; that per-packet cost is why QUIC sessions trail TCP on loopback.)
fn quic_config(mut c: libp2p::quic::Config) -> libp2p::quic::Config {
    c.max_concurrent_stream_limit = 1024;
    c.max_stream_data = 16 * 1024 * 1024;
    c.max_connection_data = 64 * 1024 * 1024;
    c
}

pub(crate) fn build_swarm(config: &NetConfig) -> Result<Swarm<Behaviour>, SpawnError> {
    let keypair = identity::Keypair::ed25519_from_bytes(config.identity.secret())
        .map_err(|e| transport_err("identity")(e.to_string()))?;
    let idle = config.idle_connection_timeout;
    // The builder's phases are distinct types per transport, so the shared tail (relay
    // client, behaviour, swarm settings) is a macro rather than a function.
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| transport_err("relay")(e.to_string()))?
                .with_behaviour(|key, relay| {
                    make_behaviour(key, relay, config).map_err(|e| Box::new(e).into())
                })
                .map_err(|e| transport_err("behaviour")(e.to_string()))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        };
    }
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match config.transport {
        TransportKind::Real => finish!(
            builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| transport_err("tcp")(e.to_string()))?
                .with_quic_config(quic_config)
                .with_dns()
                .map_err(|e| transport_err("dns")(e.to_string()))?
        ),
        TransportKind::Memory => finish!(
            builder
                .with_other_transport(|key| {
                    let noise = noise::Config::new(key)
                        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
                    Ok(MemoryTransport::default()
                        .upgrade(Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .boxed())
                })
                .map_err(|e| transport_err("memory")(e.to_string()))?
        ),
    };
    Ok(swarm)
}
