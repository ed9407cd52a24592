//! `warren testnet`: a whole Warren network in one process on loopback. A consumer node
//! (with the local API), providers in several countries at different prices and a payment
//! hub with a faucet, joined through the consumer, with throwaway identities and nothing
//! written to disk. The consumer starts with [`CONSUMER_FUNDS`] in escrow at the hub.

use std::net::SocketAddr;
use std::time::Duration;

use warren_net::NetConfig;
use warren_types::amount::NANO_PER_WRN;
use warren_types::{Amount, IpKind, NodeId, Price};

use crate::hub::HubConfig;
use crate::wallet::{WalletError, WalletView};
use crate::{NodeConfig, NodeHandle, ProvideConfig, ProxyListen, StartError};

/// What the consumer tops up at the testnet's hub when it starts.
pub const CONSUMER_FUNDS: Amount = Amount::from_nano(10 * NANO_PER_WRN);
/// How long the consumer waits for the hub's offer before it gives up funding.
const HUB_OFFER_WAIT: Duration = Duration::from_secs(15);

/// What a testnet's exits may reach besides the public internet: this machine's loopback.
const LOOPBACK: ipnet::IpNet = ipnet::IpNet::V4(
    match ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8) {
        Ok(n) => n,
        Err(_) => panic!("127.0.0.0/8 is a valid network"),
    },
);

pub const MAX_PROVIDERS: usize = 64;
const COUNTRIES: [&str; 12] = [
    "DE", "NL", "US", "BR", "JP", "SG", "FR", "CA", "GB", "IN", "ZA", "AU",
];

#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    #[error("--providers must be between 1 and {MAX_PROVIDERS}, not {0}")]
    Providers(usize),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("the consumer never saw the hub's offer within {} s", HUB_OFFER_WAIT.as_secs())]
    HubNotSeen,
    #[error("could not fund the consumer: {0}")]
    Fund(#[source] WalletError),
}

/// A running test network.
#[derive(Debug)]
pub struct Testnet {
    pub consumer: NodeHandle,
    pub providers: Vec<NodeHandle>,
    /// The payment hub (memory ledger, faucet on).
    pub hub: NodeHandle,
    /// The consumer's wallet after its top-up.
    pub wallet: WalletView,
}

fn loopback_net() -> NetConfig {
    let mut net = NetConfig::new(warren_types::Identity::generate());
    net.listen = vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
    ];
    // mDNS ignores loopback, and a testnet must not multicast onto the real network.
    net.mdns = false;
    net.kad_bootstrap_interval = None;
    net
}

/// The price and place of provider `i`: spread over countries, each a little dearer.
pub fn provider_plan(i: usize) -> ProvideConfig {
    let i64 = i as u64;
    let mut p = ProvideConfig::new(
        Price {
            per_gib: Amount::from_nano(20_000_000 + 10_000_000 * i64),
            per_hour: Amount::from_nano(1_000_000 * (i64 + 1)),
        },
        COUNTRIES[i % COUNTRIES.len()]
            .parse()
            .unwrap_or(warren_types::Country::UNKNOWN),
    );
    p.ip_kind = if i.is_multiple_of(2) {
        IpKind::Residential
    } else {
        IpKind::Hosting
    };
    p
}

impl Testnet {
    /// Starts the network: the consumer's API on `api` and its SOCKS5 proxy on `socks` (a
    /// taken SOCKS5 port only warns); providers let their exits reach 127.0.0.0/8, so a
    /// newcomer can try the whole path offline.
    pub async fn start(
        providers: usize,
        api: SocketAddr,
        socks: Option<SocketAddr>,
    ) -> Result<Testnet, TestnetError> {
        if !(1..=MAX_PROVIDERS).contains(&providers) {
            return Err(TestnetError::Providers(providers));
        }
        let mut consumer = NodeConfig::new(loopback_net());
        consumer.api = Some(api);
        consumer.socks = socks.map(|addr| ProxyListen {
            addr,
            required: false,
        });
        let consumer = NodeHandle::spawn(consumer).await?;
        let bootstrap = consumer.dial_addrs();

        let mut net = loopback_net();
        net.bootstrap = bootstrap.clone();
        let mut config = NodeConfig::new(net);
        config.hub = Some(HubConfig {
            faucet: true,
            ..HubConfig::default()
        });
        let hub = NodeHandle::spawn(config).await?;

        let mut handles = Vec::with_capacity(providers);
        for i in 0..providers {
            let mut net = loopback_net();
            net.bootstrap = bootstrap.clone();
            let mut config = NodeConfig::new(net);
            config.provide = Some(provider_plan(i));
            config.exit.allow = vec![LOOPBACK];
            // Each provider's own dashboard, on a port the system picks.
            config.api = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            handles.push(NodeHandle::spawn(config).await?);
        }
        let wallet = match fund(&consumer, hub.node_id()).await {
            Ok(w) => w,
            Err(e) => {
                for node in handles.into_iter().chain([hub, consumer]) {
                    node.shutdown().await;
                }
                return Err(e);
            }
        };
        Ok(Testnet {
            consumer,
            providers: handles,
            hub,
            wallet,
        })
    }

    /// Stops the consumer first, so its session ends as a disconnect rather than as a
    /// provider vanishing (which would start a failover and warn about it).
    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
        for p in self.providers {
            p.shutdown().await;
        }
        self.hub.shutdown().await;
    }
}

/// Once the hub's offer reaches the consumer, tops it up with [`CONSUMER_FUNDS`].
async fn fund(consumer: &NodeHandle, hub: NodeId) -> Result<WalletView, TestnetError> {
    if !consumer
        .wait_for_catalog(HUB_OFFER_WAIT, |c| c.contains(&hub))
        .await
    {
        return Err(TestnetError::HubNotSeen);
    }
    consumer
        .wallet()
        .topup(CONSUMER_FUNDS, Some(hub))
        .await
        .map_err(TestnetError::Fund)
}
