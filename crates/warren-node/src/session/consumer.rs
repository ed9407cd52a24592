//! The consumer's side: picks a provider, opens a session, keeps it (failing over to the
//! next matching provider when it is lost), and opens each flow the fronts ask for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_net::{NetStream, Network};
use warren_pay::{ChannelId, Payer, PayerConfig, PayerTerms, window};
use warren_session::wire::{
    CONTROL_PROTOCOL, CloseReason, ControlMsg, FLOW_PROTOCOL, FlowHeader, FlowReply, FrameReader,
    MAX_CONTROL_MSG, MAX_FLOW_HEADER, PayTerms, SessionId,
};
use warren_session::{Session, SessionConfig, SessionEvent};
use warren_tunnel::splice::{Meter, Metered};
use warren_tunnel::{BoxStream, FlowOpener, OpenFuture};
use warren_types::{
    Amount, Country, FlowProto, FlowRefusal, Identity, NodeId, Offer, RefusalKind, Service, Target,
};

use super::billing::{Paying, Report};
use super::{drive, read_msg, write_msg};
use crate::catalog::OfferFilter;
use crate::market::Market;
use crate::telemetry::{Counters, Event, Telemetry};
use crate::wallet::Wallet;

/// Providers whose connect latency is measured when several share the best price.
const LATENCY_PROBES: usize = 4;
/// Providers tried, in order, before a connect gives up.
const MAX_TRIES: usize = 8;
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new flow waits for a session that is being (re)opened.
const FLOW_WAIT: Duration = Duration::from_secs(6);
/// The exit's worst case (resolve, then connect) plus a margin for the round trip.
const FLOW_REPLY_TIMEOUT: Duration = Duration::from_secs(
    warren_tunnel::exit::DEFAULT_RESOLVE_TIMEOUT.as_secs()
        + warren_tunnel::exit::DEFAULT_CONNECT_TIMEOUT.as_secs()
        + 5,
);
/// The longest one connect (ranking and trying providers) may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// First pause between failover rounds that found no provider; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_secs(1);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);
/// A session that ends sooner than this counts as a failure for the backoff.
const MIN_HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// What `connect` looks for. Empty fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub provider: Option<NodeId>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub country: Option<Country>,
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub max_price_per_gib: Option<Amount>,
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub max_price_per_hour: Option<Amount>,
}

/// The consumer's session as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    /// "open", or "reconnecting" while failing over.
    pub state: String,
    pub session: String,
    #[schema(value_type = String)]
    pub provider: NodeId,
    #[schema(value_type = String)]
    pub country: Country,
    #[schema(value_type = u64)]
    pub price_per_gib: Amount,
    #[schema(value_type = u64)]
    pub price_per_hour: Amount,
    /// Payload bytes towards the provider, this session.
    pub bytes_up: u64,
    /// Payload bytes from the provider, this session.
    pub bytes_down: u64,
    pub duration_secs: u64,
    /// Cost of this session so far at the offer's price, by this node's own counters
    /// (nano-WRN).
    #[schema(value_type = u64)]
    pub spent: Amount,
    /// What this node has promised the provider for this session (nano-WRN); it follows the
    /// provider's invoices, within the tolerance of `spent`.
    #[schema(value_type = u64)]
    pub promised: Amount,
    /// How many times the session moved to another provider on its own.
    pub failovers: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no offer matches ({0}); `warren offers` lists what this node has seen, or wait for providers to appear"
    )]
    NoOffers(String),
    #[error("no provider accepted a session: {0}")]
    AllFailed(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

#[derive(Debug)]
struct Active {
    id: SessionId,
    offer: Offer,
    meter: Arc<Meter>,
    opened: Instant,
    /// When the session was lost or closed: its clock (and cost) stops there.
    ended: std::sync::OnceLock<Instant>,
    close: mpsc::Sender<CloseReason>,
    /// Cancelled when the session ends, however it ends: every flow of it stops, so nothing
    /// waits on a provider that is gone.
    flows: CancellationToken,
    /// Promised to the provider in this session (nano-WRN).
    promised: Arc<AtomicU64>,
}

impl Active {
    fn end(&self) {
        let _ = self.ended.set(Instant::now());
        self.flows.cancel();
    }

    fn duration(&self) -> Duration {
        self.ended
            .get()
            .copied()
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.opened)
    }
}

#[derive(Debug)]
enum Phase {
    Idle,
    Connecting,
    Open(Arc<Active>),
    Reconnecting(Arc<Active>),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bumped on every connect and disconnect, so a stale failover knows to stop.
    generation: u64,
    failovers: u32,
}

/// The consumer role. Cheap to share; one per node.
#[derive(Debug)]
pub struct Consumer {
    market: Arc<Market>,
    net: Network,
    state: Mutex<State>,
    changed: watch::Sender<()>,
    ops: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    config: SessionConfig,
    /// Signs promises.
    identity: Identity,
    wallet: Arc<Wallet>,
    telemetry: Arc<Telemetry>,
}

/// What a paid session pays from, as found before the Open.
#[derive(Debug, Clone, Copy)]
struct Funds {
    hub: NodeId,
    channel: ChannelId,
    funded: Amount,
}

impl Consumer {
    pub(crate) fn new(
        market: Arc<Market>,
        net: Network,
        cancel: CancellationToken,
        identity: Identity,
        wallet: Arc<Wallet>,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        Arc::new(Consumer {
            identity,
            wallet,
            telemetry,
            market,
            net,
            state: Mutex::new(State {
                phase: Phase::Idle,
                generation: 0,
                failovers: 0,
            }),
            changed: watch::channel(()).0,
            ops: tokio::sync::Mutex::new(()),
            cancel,
            config: SessionConfig::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
        self.changed.send_replace(());
    }

    /// The session now, if any.
    pub fn view(&self) -> Option<SessionView> {
        let state = self.lock();
        let (active, name) = match &state.phase {
            Phase::Open(a) => (a, "open"),
            Phase::Reconnecting(a) => (a, "reconnecting"),
            Phase::Idle | Phase::Connecting => return None,
        };
        let duration = active.duration();
        Some(SessionView {
            state: name.into(),
            session: active.id.to_string(),
            provider: active.offer.provider,
            country: active.offer.country,
            price_per_gib: active.offer.price.per_gib,
            price_per_hour: active.offer.price.per_hour,
            bytes_up: active.meter.up(),
            bytes_down: active.meter.down(),
            duration_secs: duration.as_secs(),
            spent: active.offer.price.cost(active.meter.total(), duration),
            promised: Amount::from_nano(active.promised.load(Ordering::Relaxed)),
            failovers: state.failovers,
        })
    }

    /// Opens a session on the best offer matching `req` (closing any session open now), and
    /// keeps it: if its provider vanishes, the next matching one takes over.
    ///
    /// Cancel-safe: the work runs on its own task, so a caller that gives up (an HTTP client
    /// that hangs up) never leaves the consumer half-connected.
    pub async fn connect(
        self: &Arc<Self>,
        req: ConnectRequest,
    ) -> Result<SessionView, ConnectError> {
        let me = self.clone();
        tokio::spawn(async move { me.connect_now(req).await })
            .await
            .unwrap_or(Err(ConnectError::ShuttingDown))
    }

    async fn connect_now(
        self: Arc<Self>,
        req: ConnectRequest,
    ) -> Result<SessionView, ConnectError> {
        let _op = self.ops.lock().await;
        let generation = self.replace_phase(Phase::Connecting, true);
        let result = tokio::select! {
            r = self.establish(&req, None) => r,
            () = self.cancel.cancelled() => Err(ConnectError::ShuttingDown),
        };
        match result {
            Ok((active, run)) => {
                self.set_phase(Phase::Open(active));
                tokio::spawn(self.clone().supervise(req, generation, run));
                self.view().ok_or(ConnectError::ShuttingDown)
            }
            Err(e) => {
                self.set_phase(Phase::Idle);
                Err(e)
            }
        }
    }

    /// Closes the session, if one is open. Returns whether there was one.
    pub async fn disconnect(&self) -> bool {
        let _op = self.ops.lock().await;
        let had = matches!(self.lock().phase, Phase::Open(_) | Phase::Reconnecting(_));
        self.replace_phase(Phase::Idle, false);
        had
    }

    /// Closes whatever session there is and moves to `phase` under one lock, so a failover
    /// in progress sees either the old generation with the old phase or neither. Returns the
    /// new generation.
    fn replace_phase(&self, phase: Phase, fresh: bool) -> u64 {
        let generation = {
            let mut state = self.lock();
            if let Phase::Open(a) | Phase::Reconnecting(a) = &state.phase {
                let _ = a.close.try_send(CloseReason::Consumer);
                a.end();
                info!(session = %a.id, "session closed by this node");
            }
            state.generation += 1;
            if fresh {
                state.failovers = 0;
            }
            state.phase = phase;
            state.generation
        };
        self.changed.send_replace(());
        generation
    }

    /// Offers matching `req`, best first: cheapest, and among the equally cheapest the
    /// quickest to connect to.
    async fn ranked(&self, req: &ConnectRequest, avoid: Option<NodeId>) -> Vec<Offer> {
        let filter = OfferFilter {
            country: req.country,
            max_price_per_gib: req.max_price_per_gib,
            max_price_per_hour: req.max_price_per_hour,
            service: Some(Service::proxy()),
        };
        let me = self.net.local_id();
        let mut offers: Vec<Offer> = self
            .market
            .list(&filter)
            .into_iter()
            .filter(|o| o.provider != me && req.provider.is_none_or(|p| p == o.provider))
            .collect();
        offers.sort_by_key(|o| (o.price.per_gib, o.price.per_hour));
        // The provider that just failed goes last: it may come back, but others first.
        if let Some(avoid) = avoid {
            let (mut rest, failed): (Vec<_>, Vec<_>) =
                offers.into_iter().partition(|o| o.provider != avoid);
            rest.extend(failed);
            offers = rest;
        }
        let Some(first) = offers.first() else {
            return offers;
        };
        let best = first.price;
        let group = offers
            .iter()
            .take(LATENCY_PROBES)
            .take_while(|o| o.price == best && Some(o.provider) != avoid)
            .count();
        if group > 1 {
            let probes = offers[..group].iter().map(|o| {
                let net = self.net.clone();
                let (provider, addrs) = (o.provider, o.addrs.clone());
                async move {
                    let start = Instant::now();
                    match tokio::time::timeout(DIAL_TIMEOUT, net.connect(provider, addrs)).await {
                        Ok(Ok(())) => start.elapsed(),
                        _ => Duration::MAX,
                    }
                }
            });
            let latencies = futures::future::join_all(probes).await;
            let mut head: Vec<(Duration, Offer)> =
                latencies.into_iter().zip(offers.drain(..group)).collect();
            head.sort_by_key(|(l, _)| *l);
            let mut ranked: Vec<Offer> = head.into_iter().map(|(_, o)| o).collect();
            ranked.append(&mut offers);
            offers = ranked;
        }
        offers
    }

    async fn establish(
        &self,
        req: &ConnectRequest,
        avoid: Option<NodeId>,
    ) -> Result<(Arc<Active>, Running), ConnectError> {
        tokio::time::timeout(CONNECT_DEADLINE, self.try_offers(req, avoid))
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::AllFailed(format!(
                    "no provider accepted within {} s",
                    CONNECT_DEADLINE.as_secs()
                )))
            })
    }

    async fn try_offers(
        &self,
        req: &ConnectRequest,
        avoid: Option<NodeId>,
    ) -> Result<(Arc<Active>, Running), ConnectError> {
        let offers = self.ranked(req, avoid).await;
        if offers.is_empty() {
            return Err(ConnectError::NoOffers(describe(req)));
        }
        // Asked once, and only when some offer is priced.
        let mut funds: Option<Result<Funds, String>> = None;
        let mut failures = Vec::new();
        for offer in offers.into_iter().take(MAX_TRIES) {
            if self.cancel.is_cancelled() {
                return Err(ConnectError::ShuttingDown);
            }
            let provider = offer.provider;
            let pay = if window::is_free(offer.price) {
                None
            } else {
                if funds.is_none() {
                    funds = Some(self.funds().await);
                }
                match funds.clone() {
                    Some(Ok(f)) => Some(f),
                    Some(Err(why)) => {
                        failures.push(format!("{provider}: {why}"));
                        continue;
                    }
                    None => None,
                }
            };
            match self.open_session(offer, pay).await {
                Ok(ok) => return Ok(ok),
                Err(why) => {
                    debug!(%provider, "session not opened: {why}");
                    failures.push(format!("{provider}: {why}"));
                }
            }
        }
        Err(ConnectError::AllFailed(failures.join("; ")))
    }

    /// The escrow this node pays from: its channel at the wallet's hub, as the hub has it.
    async fn funds(&self) -> Result<Funds, String> {
        const TOPUP: &str = "run `warren wallet topup WRN` to put money in escrow";
        let hub = self
            .wallet
            .hub()
            .ok_or_else(|| format!("the offer is priced and no payment hub is known; {TOPUP}"))?;
        let view = tokio::time::timeout(DIAL_TIMEOUT, self.wallet.own_channel(hub))
            .await
            .map_err(|_| format!("hub {hub} did not answer about this node's escrow"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("this node has no escrow at hub {hub}; {TOPUP}"))?;
        if view.overdrawn {
            return Err(format!(
                "this node's escrow at hub {hub} is marked overdrawn (promised more than it held); providers refuse it: top up into a new channel"
            ));
        }
        Ok(Funds {
            hub,
            channel: view.channel,
            funded: view.funded,
        })
    }

    async fn open_session(
        &self,
        offer: Offer,
        funds: Option<Funds>,
    ) -> Result<(Arc<Active>, Running), String> {
        let provider = offer.provider;
        tokio::time::timeout(
            DIAL_TIMEOUT,
            self.net.connect(provider, offer.addrs.clone()),
        )
        .await
        .map_err(|_| "timed out connecting".to_string())?
        .map_err(|e| e.to_string())?;
        let mut stream = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.net.streams().open(provider, CONTROL_PROTOCOL),
        )
        .await
        .map_err(|_| "timed out opening the session stream".to_string())?
        .map_err(|e| e.to_string())?;
        let id = SessionId(random_id());
        let pay = funds.map(|f| PayTerms {
            hub: f.hub,
            channel: f.channel.0,
        });
        let mut session =
            Session::consumer(Instant::now(), id, offer.seq, offer.price, pay, self.config);
        while let Some(msg) = session.poll_transmit() {
            write_msg(&mut stream, &msg, MAX_CONTROL_MSG)
                .await
                .map_err(|e| format!("could not send the session request: {e}"))?;
        }
        let answer = tokio::time::timeout(
            self.config.open_timeout,
            read_msg::<_, ControlMsg>(&mut stream, MAX_CONTROL_MSG),
        )
        .await
        .map_err(|_| "no answer to the session request".to_string())?
        .map_err(|e| format!("bad answer to the session request: {e}"))?;
        session
            .handle_input(Instant::now(), answer)
            .map_err(|e| e.to_string())?;
        let mut opened = false;
        while let Some(ev) = session.poll_event() {
            match ev {
                SessionEvent::Opened => opened = true,
                SessionEvent::Refused(reason) => return Err(format!("refused: {reason}")),
                SessionEvent::Closed { reason, .. } => return Err(format!("closed: {reason}")),
                // Not before the open (the core refuses them); payments come later anyway.
                SessionEvent::Invoice(_) | SessionEvent::Promise(_) => {}
            }
        }
        if !opened {
            return Err("the provider did not accept".into());
        }
        let promised = Arc::new(AtomicU64::new(0));
        let billing = match funds {
            Some(f) => Some(self.paying(id, &offer, f, session.base(), promised.clone())?),
            None => None,
        };
        let (close, close_rx) = mpsc::channel(1);
        let active = Arc::new(Active {
            id,
            offer,
            meter: Arc::new(Meter::default()),
            opened: Instant::now(),
            ended: std::sync::OnceLock::new(),
            close,
            flows: CancellationToken::new(),
            promised,
        });
        info!(session = %id, %provider, "session opened");
        Counters::inc(&self.telemetry.counters.sessions_opened_consumer);
        self.telemetry.emit(Event::SessionOpened {
            role: "consumer".into(),
            session: id.to_string(),
            peer: provider,
        });
        Ok((
            active.clone(),
            Running {
                session,
                stream,
                close_rx,
                meter: active.meter.clone(),
                billing,
            },
        ))
    }

    /// The payment core for a session the provider accepted with `base` already held: it
    /// may promise what the channel holds beyond what every provider may have been promised.
    fn paying(
        &self,
        id: SessionId,
        offer: &Offer,
        f: Funds,
        base: Amount,
        promised: Arc<AtomicU64>,
    ) -> Result<Paying, String> {
        let provider = offer.provider;
        let own = self.wallet.exposure(f.hub, f.channel, provider);
        if base > own {
            // Promises are cumulative: taking this base would pay the provider for nothing.
            warn!(%provider, %base, promised = %own, "a provider claims more was promised to it than this node promised");
            return Err(format!(
                "the provider claims {base} WRN promised already, more than this node's {own} WRN"
            ));
        }
        let elsewhere = self.wallet.exposure_elsewhere(f.hub, f.channel, provider);
        let available = f.funded.saturating_sub(elsewhere).saturating_sub(base);
        if available == Amount::ZERO {
            return Err(format!(
                "this node's escrow at hub {} is promised in full; run `warren wallet topup WRN`",
                f.hub
            ));
        }
        let terms = PayerTerms {
            session: id.0,
            provider,
            hub: f.hub,
            channel: f.channel,
            price: offer.price,
            base,
            escrow_available: available,
        };
        let payer = Payer::new(
            Instant::now(),
            terms,
            self.identity.clone(),
            PayerConfig::default(),
        );
        let report = Report {
            telemetry: self.telemetry.clone(),
            session: id.to_string(),
        };
        Ok(Paying::new(
            payer,
            self.wallet.clone(),
            own,
            promised,
            report,
        ))
    }

    /// Drives the open session; when it is lost without a local close, fails over to the
    /// next matching provider, again and again, until a connect or disconnect supersedes it.
    async fn supervise(self: Arc<Self>, req: ConnectRequest, generation: u64, mut run: Running) {
        // Backoff between failover rounds: reset by a session that lasted, doubled by one
        // that failed or died young, so a provider that accepts and drops at once is not
        // hammered.
        let mut pause = Duration::ZERO;
        loop {
            let opened = Instant::now();
            let mut billing = run.billing;
            let meter = run.meter;
            let mut ended = String::from("lost");
            let session = drive(
                run.session,
                run.stream,
                FrameReader::new(MAX_CONTROL_MSG),
                run.close_rx,
                meter.clone(),
                &mut billing,
                |ev| {
                    if let SessionEvent::Closed { reason, by_peer } = ev {
                        info!(by_peer, "session closed: {reason}");
                        ended = reason.to_string();
                    }
                },
            )
            .await;
            let c = &self.telemetry.counters;
            Counters::add(&c.ended_consumer_up, meter.up());
            Counters::add(&c.ended_consumer_down, meter.down());
            self.telemetry.emit(Event::SessionClosed {
                role: "consumer".into(),
                session: session.id().to_string(),
                reason: ended,
            });
            let lost = {
                let mut state = self.lock();
                if state.generation != generation {
                    return;
                }
                let Phase::Open(active) = &state.phase else {
                    return;
                };
                let active = active.clone();
                active.end();
                state.phase = Phase::Reconnecting(active.clone());
                active
            };
            self.changed.send_replace(());
            warn!(
                session = %session.id(),
                "lost the session with provider {}; looking for another", lost.offer.provider
            );
            // A provider that stopped answering may have left a connection that looks alive
            // (nothing resets a frozen peer's TCP connection): drop it, so a later attempt
            // dials afresh instead of waiting on it.
            self.net.disconnect(lost.offer.provider).await;
            pause = if opened.elapsed() < MIN_HEALTHY_SESSION {
                (pause * 2).clamp(RETRY_PAUSE, MAX_RETRY_PAUSE)
            } else {
                Duration::ZERO
            };
            run = loop {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                if self.lock().generation != generation {
                    return;
                }
                match self.establish(&req, Some(lost.offer.provider)).await {
                    Ok((active, next)) => {
                        let mut state = self.lock();
                        if state.generation != generation {
                            let _ = active.close.try_send(CloseReason::Consumer);
                            active.end();
                            return;
                        }
                        state.failovers += 1;
                        info!(provider = %active.offer.provider, "failed over to a new provider");
                        state.phase = Phase::Open(active);
                        drop(state);
                        self.changed.send_replace(());
                        break next;
                    }
                    Err(e) => {
                        debug!("failover attempt failed: {e}");
                        pause = (pause * 2).clamp(RETRY_PAUSE, MAX_RETRY_PAUSE);
                    }
                }
            };
        }
    }

    /// The open session, waiting up to [`FLOW_WAIT`] while one is being opened.
    async fn active(&self) -> Result<Arc<Active>, FlowRefusal> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + FLOW_WAIT;
        loop {
            changed.borrow_and_update();
            match &self.lock().phase {
                Phase::Open(a) => return Ok(a.clone()),
                Phase::Idle => {
                    return Err(FlowRefusal::new(
                        RefusalKind::NotConnected,
                        "not connected: run `warren connect` first",
                    ));
                }
                Phase::Connecting | Phase::Reconnecting(_) => {}
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(FlowRefusal::new(
                        RefusalKind::NotConnected,
                        "not connected: the session is being re-established, try again",
                    ));
                }
            }
        }
    }

    async fn open_flow(&self, target: Target, proto: FlowProto) -> Result<BoxStream, FlowRefusal> {
        let mut last = None;
        // A stream can be reset before its header is read (the provider's acceptor was busy,
        // or the session just moved): try again, on the session current then.
        for _ in 0..3 {
            let active = self.active().await?;
            match self.try_flow(&active, &target, proto).await {
                Ok(stream) => return Ok(stream),
                Err(Attempt::Refused(r)) => return Err(r),
                Err(Attempt::Retry(r)) => last = Some(r),
            }
        }
        Err(last.unwrap_or_else(|| FlowRefusal::new(RefusalKind::Internal, "flow failed")))
    }

    async fn try_flow(
        &self,
        active: &Active,
        target: &Target,
        proto: FlowProto,
    ) -> Result<BoxStream, Attempt> {
        let provider = active.offer.provider;
        let lost = |what: &str| {
            Attempt::Retry(FlowRefusal::new(
                RefusalKind::Unreachable,
                format!("the provider could not be reached ({what})"),
            ))
        };
        let mut stream: NetStream = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.net.streams().open(provider, FLOW_PROTOCOL),
        )
        .await
        .map_err(|_| lost("timed out opening a stream"))?
        .map_err(|_| lost("stream refused"))?;
        let header = FlowHeader {
            session: active.id,
            target: target.clone(),
            proto,
        };
        write_msg(&mut stream, &header, MAX_FLOW_HEADER)
            .await
            .map_err(|_| lost("stream closed"))?;
        let reply = tokio::time::timeout(
            FLOW_REPLY_TIMEOUT,
            read_msg::<_, FlowReply>(&mut stream, MAX_FLOW_HEADER),
        )
        .await
        .map_err(|_| {
            Attempt::Refused(FlowRefusal::new(
                RefusalKind::Timeout,
                "the provider did not answer in time",
            ))
        })?
        .map_err(|_| lost("stream reset"))?;
        match reply {
            FlowReply::Ok => Ok(Box::new(
                Metered::new(stream, active.meter.clone()).with_stop(active.flows.clone()),
            )),
            // The provider lost our session (it restarted, or the session just ended): the
            // session is about to be replaced, so try again on the one current then.
            FlowReply::Refused(r) if r.kind == RefusalKind::NoSession => Err(Attempt::Retry(r)),
            FlowReply::Refused(r) => Err(Attempt::Refused(r)),
        }
    }
}

enum Attempt {
    Retry(FlowRefusal),
    Refused(FlowRefusal),
}

/// An opened session handed from `open_session` to the driver.
struct Running {
    session: Session,
    stream: NetStream,
    close_rx: mpsc::Receiver<CloseReason>,
    meter: Arc<Meter>,
    billing: Option<Paying>,
}

/// The [`FlowOpener`] the fronts use: each flow goes through the consumer's session.
#[derive(Debug, Clone)]
pub struct SessionFlows(pub Arc<Consumer>);

impl FlowOpener for SessionFlows {
    fn open(&self, target: Target, proto: FlowProto) -> OpenFuture {
        let consumer = self.0.clone();
        Box::pin(async move { consumer.open_flow(target, proto).await })
    }
}

fn describe(req: &ConnectRequest) -> String {
    let mut parts = Vec::new();
    if let Some(p) = req.provider {
        parts.push(format!("provider {p}"));
    }
    if let Some(c) = req.country {
        parts.push(format!("country {c}"));
    }
    if let Some(m) = req.max_price_per_gib {
        parts.push(format!("at most {m} WRN/GiB"));
    }
    if let Some(m) = req.max_price_per_hour {
        parts.push(format!("at most {m} WRN/hour"));
    }
    if parts.is_empty() {
        "any provider".into()
    } else {
        parts.join(", ")
    }
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // The OS source failing is not something a session can recover from; an all-zero id
    // would still work (ids only need to be unique per provider) but say so.
    if getrandom::fill(&mut id).is_err() {
        warn!("the OS random source failed; session id is not random");
    }
    id
}
