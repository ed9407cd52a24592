#![doc = include_str!("../README.md")]

pub mod api;
pub mod api_guard;
pub mod catalog;
pub mod config;
pub mod content;
pub mod hub;
pub mod keystore;
mod market;
mod peer_cache;
pub mod session;
pub mod telemetry;
pub mod testnet;
pub mod wallet;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_net::{NetConfig, Network};
use warren_types::{Country, IpKind, NodeId, Offer, Price, Service, SignedOffer};

pub use catalog::{OfferFilter, RemovalReason};
pub use hub::{FeeBps, HubConfig};
pub use market::NodeEvent;
pub use wallet::{Wallet, WalletError, WalletView};
pub use warren_net::{KnownPeer, Reachability, TransportKind};

use market::Market;

/// Default lifetime of a provider's offer; it is re-signed at two thirds of it.
pub const DEFAULT_OFFER_LIFETIME: Duration = Duration::from_secs(180);

/// What a provider sells.
#[derive(Clone, Debug)]
pub struct ProvideConfig {
    pub price: Price,
    pub country: Country,
    pub ip_kind: IpKind,
    pub services: Vec<Service>,
    pub offer_lifetime: Duration,
}

impl ProvideConfig {
    fn check(&self) -> Result<(), StartError> {
        let secs = self.offer_lifetime.as_secs();
        if !(10..=warren_types::offer::MAX_LIFETIME_SECS).contains(&secs) {
            return Err(StartError::OfferLifetime(self.offer_lifetime));
        }
        Ok(())
    }

    pub fn new(price: Price, country: Country) -> Self {
        Self {
            price,
            country,
            ip_kind: IpKind::Unknown,
            services: vec![Service::proxy()],
            offer_lifetime: DEFAULT_OFFER_LIFETIME,
        }
    }

    /// What a payment hub that sells no bandwidth announces: the service "hub", price 0.
    pub fn hub_only(country: Country) -> Self {
        Self {
            services: vec![Service::hub()],
            ..Self::new(Price::default(), country)
        }
    }

    /// Whether this sells bandwidth (the "proxy" service), not only announces a hub.
    pub fn sells_proxy(&self) -> bool {
        self.services.contains(&Service::proxy())
    }
}

/// Everything a node needs to start. Build one with [`NodeConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub net: NetConfig,
    /// Where the peer cache lives; `None` keeps nothing on disk (tests, testnet).
    pub data_dir: Option<PathBuf>,
    /// Where the local API listens; `None` runs no API server.
    pub api: Option<SocketAddr>,
    pub provide: Option<ProvideConfig>,
    /// What the exit lets through, when this node provides.
    pub exit: config::ExitConfig,
    /// The consumer's SOCKS5 front; `None` runs none.
    pub socks: Option<ProxyListen>,
    /// The consumer's HTTP proxy front; `None` runs none.
    pub http_proxy: Option<ProxyListen>,
    /// Run as a payment hub: its offer then names the service "hub" (a hub that does not
    /// provide announces an offer of that service alone, at price 0).
    pub hub: Option<HubConfig>,
    /// Hubs whose escrow this node accepts as a provider; empty accepts every hub it has
    /// seen (`--accept-hub ID`).
    pub accept_hubs: Vec<NodeId>,
    /// How often a provider looks again at a paid session's escrow at the hub.
    pub escrow_recheck: Duration,
    /// Publishing and replication: the storage quota, how often channels are synced.
    pub content: content::ContentConfig,
}

/// Where a proxy front listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyListen {
    pub addr: SocketAddr,
    /// An address the user chose: failing to bind it stops the node. A default address that
    /// is taken only gives a warning.
    pub required: bool,
}

impl NodeConfig {
    pub fn new(net: NetConfig) -> Self {
        Self {
            net,
            data_dir: None,
            api: None,
            provide: None,
            exit: config::ExitConfig::default(),
            socks: None,
            http_proxy: None,
            hub: None,
            accept_hubs: Vec::new(),
            escrow_recheck: session::billing::RECHECK_ESCROW,
            content: content::ContentConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Network(#[from] warren_net::SpawnError),
    #[error(
        "the local API address {addr} is taken ({reason}): is another warren node running? Stop it or pass --api with a free address"
    )]
    ApiInUse { addr: SocketAddr, reason: String },
    #[error("offer lifetime {0:?} is outside 10 s ..= 3600 s")]
    OfferLifetime(Duration),
    #[error("the {what} address {addr} is taken ({reason}); pass a free address")]
    ProxyInUse {
        what: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("the exit policy is invalid: {0}")]
    Exit(String),
    #[error(transparent)]
    Hub(#[from] hub::HubStartError),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error("the content store could not be opened: {0}")]
    Content(String),
}

/// The task that keeps this node's offer in the market.
#[derive(Debug)]
pub(crate) struct Announcer {
    identity: warren_types::Identity,
    /// The node's token: announcing ends with the node.
    cancel: CancellationToken,
    task: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Replaces what this node announces (`None`: nothing). A hub always also announces
/// "hub". The API's provider controls and `NodeHandle` both come here.
pub(crate) async fn announce(
    shared: &Arc<Shared>,
    provide: Option<ProvideConfig>,
) -> Result<(), StartError> {
    let provide = provide.map(|mut p| {
        if shared.hub.is_some() && !p.services.contains(&Service::hub()) {
            p.services.push(Service::hub());
        }
        p
    });
    if let Some(p) = &provide {
        p.check()?;
    }
    let mut announcer = shared.announcer.lock().await;
    if let Some((token, task)) = announcer.task.take() {
        token.cancel();
        let _ = task.await;
    }
    shared.provide.send_replace(None);
    shared.own_offer.send_replace(None);
    shared.proxy_offer.send_replace(None);
    let Some(provide) = provide else {
        return Ok(());
    };
    let token = announcer.cancel.child_token();
    shared.provide.send_replace(Some(provide.clone()));
    let task = tokio::spawn(market::provide_loop(
        shared.clone(),
        announcer.identity.clone(),
        provide,
        token.clone(),
    ));
    announcer.task = Some((token, task));
    Ok(())
}

/// Stops selling bandwidth; a hub goes on announcing itself alone.
pub(crate) async fn stop_providing(shared: &Arc<Shared>) {
    let hub_only = shared.hub.as_ref().map(|_| {
        let before = shared.provide.borrow().clone();
        let mut p =
            ProvideConfig::hub_only(before.as_ref().map_or(Country::UNKNOWN, |p| p.country));
        if let Some(before) = before {
            p.offer_lifetime = before.offer_lifetime;
        }
        p
    });
    if announce(shared, hub_only).await.is_err() {
        // The lifetime was checked when it was first announced; never reached.
        let _ = announce(shared, None).await;
    }
}

/// What the network asks of the node: offers go to the market, channel news to content.
struct Books {
    market: Arc<Market>,
    content: Arc<content::Content>,
}

impl warren_net::OfferBook for Books {
    fn offer_received(&self, from: NodeId, bytes: &[u8]) -> warren_net::Verdict {
        self.market.offer_received(from, bytes)
    }

    fn each_offer(&self, visit: &mut dyn FnMut(&[u8])) {
        self.market.each_offer(visit)
    }

    fn topic_message(&self, topic: &str, from: NodeId, bytes: &[u8]) -> warren_net::Verdict {
        self.content.topic_message(topic, from, bytes)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// State the node's tasks and API share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub market: Arc<Market>,
    pub net: Network,
    pub started: Instant,
    /// What this node announces now (bandwidth, a hub or both); `None` while nothing.
    pub provide: watch::Sender<Option<ProvideConfig>>,
    pub own_offer: watch::Sender<Option<Offer>>,
    /// The offer while it sells bandwidth: what the provider role accepts sessions under (a
    /// hub's offer alone sells nothing).
    pub proxy_offer: watch::Sender<Option<Offer>>,
    pub consumer: Arc<session::consumer::Consumer>,
    pub provider: Arc<session::provider::Provider>,
    /// The hub this node runs, if it runs one.
    pub hub: Option<Arc<dyn hub::HubService>>,
    pub wallet: Arc<Wallet>,
    pub content: Arc<content::Content>,
    pub telemetry: Arc<telemetry::Telemetry>,
    /// What state-changing API calls must carry; the dashboard page carries it.
    pub api_token: api_guard::ApiToken,
    /// The exit policy as the API shows it.
    pub exit_policy: api::PolicyView,
    /// The task announcing this node's offer, replaced whole when what it sells changes.
    pub announcer: tokio::sync::Mutex<Announcer>,
    /// Where the SOCKS5 and HTTP proxy fronts listen, when they run.
    pub socks_addr: Option<SocketAddr>,
    pub http_proxy_addr: Option<SocketAddr>,
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
#[derive(Debug)]
pub struct NodeHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    api_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    api_token: api_guard::ApiToken,
}

impl NodeHandle {
    /// Starts the network, the offer machinery and (if configured) the local API.
    pub async fn spawn(mut config: NodeConfig) -> Result<NodeHandle, StartError> {
        if let Some(p) = &config.provide {
            p.check()?;
        }
        let cancel = CancellationToken::new();
        let market = Arc::new(Market::new());
        if let Some(dir) = &config.data_dir {
            config.net.known_peers = peer_cache::load(dir);
        }
        let identity = config.net.identity.clone();

        // Bind the API first: a taken port should fail before the network starts.
        let api_listener = match config.api {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                StartError::ApiInUse {
                    addr,
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let api_addr = api_listener.as_ref().and_then(|l| l.local_addr().ok());
        let socks_listener = bind_proxy("SOCKS5", config.socks).await?;
        let http_listener = bind_proxy("HTTP proxy", config.http_proxy).await?;
        let exit = config.exit.build().map_err(StartError::Exit)?;
        let exit_policy = api::PolicyView::of(&config.exit, &exit.1);
        let hub = match config.hub {
            Some(h) => Some(hub::open(h, identity.node_id(), config.data_dir.as_deref()).await?),
            None => None,
        };

        let content = content::Content::open(
            identity.clone(),
            config.data_dir.as_deref(),
            config.content.clone(),
        )
        .map_err(StartError::Content)?;
        let book = Arc::new(Books {
            market: market.clone(),
            content: content.clone(),
        });
        let (net, net_task) = Network::spawn(config.net, book, cancel.clone()).await?;
        let mut tasks = vec![net_task];
        let wallet = Wallet::open(
            identity.node_id(),
            net.clone(),
            market.clone(),
            hub.clone(),
            config.data_dir.clone(),
        );
        let wallet = match wallet {
            Ok(w) => Arc::new(w),
            Err(e) => {
                cancel.cancel();
                for t in tasks {
                    let _ = t.await;
                }
                if let Some(hub) = &hub {
                    hub.close().await;
                }
                return Err(e.into());
            }
        };
        let own_offer = watch::channel(None).0;
        let (proxy_offer, proxy_offer_rx) = watch::channel(None);
        let telemetry = Arc::new(telemetry::Telemetry::default());
        let consumer = session::consumer::Consumer::new(
            market.clone(),
            net.clone(),
            cancel.clone(),
            identity.clone(),
            wallet.clone(),
            telemetry.clone(),
        );
        let provider = session::provider::Provider::new(
            exit.0,
            exit.1,
            proxy_offer_rx,
            session::provider::Payments {
                identity: identity.clone(),
                wallet: wallet.clone(),
                accept_hubs: config.accept_hubs.clone(),
                recheck: config.escrow_recheck,
                telemetry: telemetry.clone(),
            },
        );
        let socks_addr = socks_listener.as_ref().and_then(|l| l.local_addr().ok());
        let http_proxy_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            socks_addr,
            http_proxy_addr,
            market,
            net,
            started: Instant::now(),
            provide: watch::channel(None).0,
            own_offer,
            proxy_offer,
            consumer,
            provider,
            hub,
            wallet,
            content,
            telemetry,
            api_token: api_guard::ApiToken::generate(),
            exit_policy,
            announcer: tokio::sync::Mutex::new(Announcer {
                identity: identity.clone(),
                cancel: cancel.clone(),
                task: None,
            }),
        });

        if let Some(hub) = &shared.hub {
            tasks.push(hub::spawn(hub.clone(), &shared.net, cancel.clone())?);
            let info = hub.info();
            info!(
                fee = %hub::percent(info.fee_bps),
                faucet = info.faucet,
                "running a payment hub"
            );
        }
        tasks.extend(
            shared
                .provider
                .spawn(&shared.net, cancel.clone())
                .map_err(|e| StartError::Exit(e.to_string()))?,
        );
        tasks.extend(
            shared
                .content
                .start(shared.net.clone(), cancel.clone())
                .map_err(|e| StartError::Content(e.to_string()))?,
        );
        let opener: Arc<dyn warren_tunnel::FlowOpener> =
            Arc::new(session::consumer::SessionFlows(shared.consumer.clone()));
        if let Some(listener) = socks_listener {
            tasks.push(tokio::spawn(warren_tunnel::front::serve_socks5(
                listener,
                opener.clone(),
                warren_tunnel::front::FrontConfig::default(),
                cancel.clone(),
            )));
        }
        if let Some(listener) = http_listener {
            tasks.push(tokio::spawn(warren_tunnel::front::serve_http_proxy(
                listener,
                opener,
                warren_tunnel::front::FrontConfig::default(),
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(market::expire_loop(
            shared.market.clone(),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(telemetry::run(shared.clone(), cancel.clone())));
        if let Some(dir) = &config.data_dir {
            tasks.push(tokio::spawn(peer_cache::save_loop(
                dir.clone(),
                shared.net.watch_state(),
                cancel.clone(),
            )));
        }
        let api_token = shared.api_token.clone();
        if let (Some(dir), Some(_)) = (&config.data_dir, &api_listener)
            && let Err(e) = api_token.write_to(dir)
        {
            warn!("could not write the API token to {}: {e}", dir.display());
        }
        if let Some(listener) = api_listener
            && let Some(addr) = api_addr
        {
            let guard = Arc::new(api_guard::Guard {
                token: api_token.clone(),
                addr,
            });
            let router = api::router(shared.clone(), guard);
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    warn!("the local API stopped: {e}");
                }
            }));
        }
        info!(
            node = %shared.net.local_id(),
            api = ?api_addr,
            "node started"
        );
        let mut handle = NodeHandle {
            shared,
            cancel,
            tasks,
            api_addr,
            data_dir: config.data_dir,
            api_token,
        };
        match config.provide {
            Some(provide) => handle.start_providing(provide).await?,
            None if handle.shared.hub.is_some() => {
                announce(
                    &handle.shared,
                    Some(ProvideConfig::hub_only(Country::UNKNOWN)),
                )
                .await?;
            }
            None => {}
        }
        Ok(handle)
    }

    /// Starts selling (or changes what is sold): signs and gossips an offer now and keeps
    /// it fresh until [`NodeHandle::stop_providing`] or shutdown. A hub's offer also names
    /// the service "hub".
    pub async fn start_providing(&mut self, provide: ProvideConfig) -> Result<(), StartError> {
        announce(&self.shared, Some(provide)).await
    }

    /// Stops selling bandwidth; peers drop the offer when it expires. A hub goes on
    /// announcing itself (service "hub" alone).
    pub async fn stop_providing(&mut self) {
        stop_providing(&self.shared).await;
    }

    async fn stop_announcing(&mut self) {
        let _ = announce(&self.shared, None).await;
    }

    /// Publishes the file at `path` as the next entry of this node's channel `channel`
    /// (what `warren publish` does).
    pub async fn publish(
        &self,
        path: PathBuf,
        channel: &str,
        title: Option<String>,
    ) -> Result<content::Published, String> {
        self.shared
            .content
            .publish(path, channel.to_string(), title, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// Fetches a blob from peers and waits until it is held (its size) or the download
    /// gave up (why).
    pub async fn fetch(&self, id: warren_content::ContentId) -> Result<u64, String> {
        let mut progress = self.shared.content.fetch(id);
        loop {
            let p = progress.borrow_and_update().clone();
            if p.finished() {
                return match p.error {
                    Some(e) => Err(e),
                    None => Ok(p.size.unwrap_or_default()),
                };
            }
            if progress.changed().await.is_err() {
                return Err("the node stopped".into());
            }
        }
    }

    /// Follows a channel (what `warren follow` does).
    pub async fn follow(&self, channel: NodeId) {
        self.shared.content.follow(channel).await;
    }

    /// Verified bytes held of a blob and its size (whole, or a download under way).
    pub fn content_progress(&self, id: &warren_content::ContentId) -> Option<(u64, u64)> {
        self.shared.content.progress(id)
    }

    /// Where a blob held whole keeps its bytes.
    pub fn content_path(&self, id: &warren_content::ContentId) -> Option<PathBuf> {
        self.shared
            .content
            .blobs
            .contains(id)
            .then(|| self.shared.content.blobs.data_path(id))
    }

    /// This node's wallet: balances at its hub, top-ups, promises to settle.
    pub fn wallet(&self) -> &Wallet {
        &self.shared.wallet
    }

    /// The hub this node runs (its id, fee and faucet), if it runs one.
    pub fn hub_info(&self) -> Option<warren_pay::rpc::HubInfo> {
        self.shared.hub.as_ref().map(|h| h.info())
    }

    /// The token state-changing API calls need (also in `api.token` in the data directory).
    pub fn api_token(&self) -> &api_guard::ApiToken {
        &self.api_token
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.net.local_id()
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where the SOCKS5 front listens, if it runs.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.shared.socks_addr
    }

    /// Where the HTTP proxy front listens, if it runs.
    pub fn http_proxy_addr(&self) -> Option<SocketAddr> {
        self.shared.http_proxy_addr
    }

    /// Opens a consumer session (see [`session::consumer::Consumer::connect`]).
    pub async fn connect(
        &self,
        req: session::consumer::ConnectRequest,
    ) -> Result<session::consumer::SessionView, session::consumer::ConnectError> {
        self.shared.consumer.connect(req).await
    }

    /// Closes the consumer session; returns whether one was open.
    pub async fn disconnect(&self) -> bool {
        self.shared.consumer.disconnect().await
    }

    /// The consumer's session now.
    pub fn session(&self) -> Option<session::consumer::SessionView> {
        self.shared.consumer.view()
    }

    /// Opens flows through the consumer's session, as the SOCKS5 and HTTP fronts do.
    pub fn flow_opener(&self) -> Arc<dyn warren_tunnel::FlowOpener> {
        Arc::new(session::consumer::SessionFlows(
            self.shared.consumer.clone(),
        ))
    }

    /// Sessions this node serves as a provider.
    pub fn served(&self) -> Vec<session::provider::ServedView> {
        self.shared.provider.sessions()
    }

    pub fn network(&self) -> &Network {
        &self.shared.net
    }

    /// Multiaddresses to reach this node at, each ending in `/p2p/<node id>`.
    pub fn dial_addrs(&self) -> Vec<String> {
        let id = self.node_id();
        self.shared
            .net
            .state()
            .listen_addrs
            .iter()
            .map(|a| format!("{a}/p2p/{id}"))
            .collect()
    }

    pub fn offers(&self, filter: &OfferFilter) -> Vec<Offer> {
        self.shared.market.list(filter)
    }

    pub fn status(&self) -> api::Status {
        api::status(&self.shared)
    }

    /// The offer this node currently publishes, if it provides.
    pub fn own_offer(&self) -> Option<Offer> {
        self.shared.own_offer.borrow().clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.market.subscribe()
    }

    /// Waits until `check` holds for this node's catalog, re-checking on every catalog
    /// change (never by polling). Returns false if `timeout` passes first.
    pub async fn wait_for_catalog(
        &self,
        timeout: Duration,
        check: impl Fn(&catalog::Catalog) -> bool,
    ) -> bool {
        let mut changes = self.shared.market.watch_changes();
        let wait = async {
            loop {
                changes.borrow_and_update();
                if self.shared.market.with_catalog(&check) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Stops every task, saves the peer cache and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        // Close the consumer's session politely first: its provider hears a disconnect, and
        // no failover starts while the network goes down.
        self.shared.consumer.disconnect().await;
        self.stop_announcing().await;
        let known = self.shared.net.known_peers().await;
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(hub) = &self.shared.hub {
            hub.close().await;
        }
        if let Some(dir) = &self.data_dir {
            peer_cache::save(dir, &known);
        }
        info!(node = %self.shared.net.local_id(), "node stopped");
    }
}

/// Binds a proxy front. A taken default address warns and the node runs on without it.
async fn bind_proxy(
    what: &'static str,
    listen: Option<ProxyListen>,
) -> Result<Option<tokio::net::TcpListener>, StartError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    match tokio::net::TcpListener::bind(listen.addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !listen.required => {
            warn!(
                "the {what} address {} is taken ({e}); running without it. Pass another address to use it",
                listen.addr
            );
            Ok(None)
        }
        Err(e) => Err(StartError::ProxyInUse {
            what,
            addr: listen.addr,
            reason: e.to_string(),
        }),
    }
}

/// Signs this node's offer with a sequence number that only grows, even across restarts
/// (it is the signing time in milliseconds, bumped past the last one used).
pub(crate) fn sign_offer(
    identity: &warren_types::Identity,
    provide: &ProvideConfig,
    addrs: Vec<String>,
    last_seq: u64,
) -> Option<(Offer, SignedOffer)> {
    let now = unix_now();
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let offer = Offer {
        provider: identity.node_id(),
        seq: millis.max(last_seq + 1),
        issued_at: now,
        expires_at: now + provide.offer_lifetime.as_secs(),
        services: provide.services.clone(),
        price: provide.price,
        country: provide.country,
        ip_kind: provide.ip_kind,
        addrs: addrs
            .into_iter()
            .filter(|a| !a.contains("/p2p-circuit"))
            .take(warren_types::offer::MAX_ADDRS)
            .collect(),
    };
    match SignedOffer::sign(&offer, identity) {
        Ok(s) => Some((offer, s)),
        Err(e) => {
            warn!("could not sign our offer: {e}");
            None
        }
    }
}
