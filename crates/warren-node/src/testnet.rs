//! `warren testnet`: a whole Warren network in one process on loopback. A consumer node
//! (with the local API) and providers in several countries at different prices, joined
//! through the consumer, with throwaway identities and nothing written to disk.

use std::net::SocketAddr;

use warren_net::NetConfig;
use warren_types::{Amount, IpKind, Price};

use crate::{NodeConfig, NodeHandle, ProvideConfig, ProxyListen, StartError};

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
}

/// A running test network.
#[derive(Debug)]
pub struct Testnet {
    pub consumer: NodeHandle,
    pub providers: Vec<NodeHandle>,
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

        let mut handles = Vec::with_capacity(providers);
        for i in 0..providers {
            let mut net = loopback_net();
            net.bootstrap = bootstrap.clone();
            let mut config = NodeConfig::new(net);
            config.provide = Some(provider_plan(i));
            config.exit.allow = vec![LOOPBACK];
            handles.push(NodeHandle::spawn(config).await?);
        }
        Ok(Testnet {
            consumer,
            providers: handles,
        })
    }

    pub async fn shutdown(self) {
        for p in self.providers {
            p.shutdown().await;
        }
        self.consumer.shutdown().await;
    }
}
