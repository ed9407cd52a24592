//! The provider's side: accepts sessions on the control protocol and flows on the flow
//! protocol, checks each flow against its session and the caps, and carries it through the
//! exit connector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warren_net::{NetStream, Network};
use warren_pay::{ChannelId, Payee, PayeeTerms, window};
use warren_session::wire::{
    CONTROL_PROTOCOL, CloseReason, ControlMsg, FLOW_PROTOCOL, FlowHeader, FlowReply, FrameReader,
    MAX_CONTROL_MSG, MAX_FLOW_HEADER, PayTerms, SessionId, SessionRefusal,
};
use warren_session::{Session, SessionConfig, SessionEvent};
use warren_tunnel::exit::{Exit, ExitCaps};
use warren_tunnel::splice::{Meter, splice};
use warren_types::{Amount, FlowProto, FlowRefusal, Identity, NodeId, Offer, RefusalKind};

use super::billing::{self, Billed, Report};
use super::{drive, read_msg, write_msg};
use crate::telemetry::{Counters, Event, Telemetry};
use crate::wallet::Wallet;

/// How long a peer may take to send the first message of a stream.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions one consumer may hold at a time, so one peer cannot take every slot.
const MAX_SESSIONS_PER_PEER: usize = 2;
/// Flows (including those still sending their header) across all sessions: each costs two
/// splice buffers and a socket, so this bounds the provider's memory and descriptors.
const MAX_FLOWS_TOTAL: usize = 1024;
/// Control streams still waiting for their Open.
const MAX_PENDING_CONTROL: usize = 64;
/// How long asking the hub about a consumer's escrow may take; the consumer waits 5 s for
/// the answer to its Open.
const ESCROW_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One consumer's session as the provider tracks it.
#[derive(Debug)]
struct Served {
    consumer: NodeId,
    meter: Arc<Meter>,
    flows: AtomicUsize,
    /// Cancelled when the session ends: every flow of it stops.
    stop: CancellationToken,
    opened: Instant,
    price: warren_types::Price,
    /// What the consumer's promises cover of this session so far (nano-WRN).
    paid: Arc<AtomicU64>,
}

/// A session this provider serves, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServedView {
    pub session: String,
    #[schema(value_type = String)]
    pub consumer: NodeId,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: usize,
    pub duration_secs: u64,
    /// What the session has cost so far at the offer's price (nano-WRN).
    #[schema(value_type = u64)]
    pub earned: Amount,
    /// What the consumer's promises cover of it (nano-WRN).
    #[schema(value_type = u64)]
    pub paid: Amount,
}

/// What the provider needs to bill: its key for invoices, its wallet for promises, and the
/// hubs it takes escrow at.
#[derive(Debug, Clone)]
pub struct Payments {
    pub identity: Identity,
    pub wallet: Arc<Wallet>,
    /// Hubs whose escrow this provider accepts; empty accepts every hub it has seen.
    pub accept_hubs: Vec<NodeId>,
    /// How often a paid session's channel is looked at again at the hub (another provider
    /// may have drained or overdrawn it).
    pub recheck: Duration,
    pub telemetry: Arc<Telemetry>,
}

/// A consumer's escrow as checked before the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Escrow {
    hub: NodeId,
    channel: ChannelId,
    /// The promise already held from the channel (what the Accept tells the consumer).
    base: Amount,
    /// What the hub can still pay this provider from it beyond `base`.
    available: Amount,
}

/// The provider role: shared by the acceptor tasks.
#[derive(Debug)]
pub struct Provider {
    exit: Exit,
    caps: ExitCaps,
    sessions: Mutex<HashMap<SessionId, Arc<Served>>>,
    own_offer: tokio::sync::watch::Receiver<Option<Offer>>,
    config: SessionConfig,
    flow_slots: Arc<tokio::sync::Semaphore>,
    control_slots: Arc<tokio::sync::Semaphore>,
    payments: Payments,
}

impl Provider {
    pub(crate) fn new(
        exit: Exit,
        caps: ExitCaps,
        own_offer: tokio::sync::watch::Receiver<Option<Offer>>,
        payments: Payments,
    ) -> Arc<Self> {
        Arc::new(Provider {
            exit,
            caps,
            payments,
            sessions: Mutex::new(HashMap::new()),
            own_offer,
            config: SessionConfig::default(),
            flow_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FLOWS_TOTAL)),
            control_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_CONTROL)),
        })
    }

    /// Starts accepting sessions and flows on `net` until `cancel` fires.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        net: &Network,
        cancel: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, warren_net::StreamError> {
        let mut control = net.streams().accept(CONTROL_PROTOCOL)?;
        let mut flows = net.streams().accept(FLOW_PROTOCOL)?;
        let me = self.clone();
        let c = cancel.clone();
        let control_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = c.cancelled() => break,
                    next = control.next() => {
                        let Some((peer, stream)) = next else { break };
                        // Over the limit the stream is dropped: the opener sees it reset.
                        let Ok(slot) = me.control_slots.clone().try_acquire_owned() else {
                            debug!("too many session requests waiting; dropping one");
                            continue;
                        };
                        tokio::spawn(me.clone().serve_control(peer, stream, c.clone(), slot));
                    }
                }
            }
        });
        let me = self.clone();
        let flow_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    next = flows.next() => {
                        let Some((peer, stream)) = next else { break };
                        let Ok(slot) = me.flow_slots.clone().try_acquire_owned() else {
                            debug!("at the node-wide flow limit; dropping a flow");
                            continue;
                        };
                        tokio::spawn(me.clone().serve_flow(peer, stream, slot));
                    }
                }
            }
            // Sessions end with the node: their flows stop.
            for s in me
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                s.stop.cancel();
            }
        });
        Ok(vec![control_task, flow_task])
    }

    /// Sessions being served now.
    pub fn sessions(&self) -> Vec<ServedView> {
        let now = Instant::now();
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .iter()
            .map(|(id, s)| {
                let duration = now.saturating_duration_since(s.opened);
                ServedView {
                    session: id.to_string(),
                    consumer: s.consumer,
                    bytes_up: s.meter.up(),
                    bytes_down: s.meter.down(),
                    flows: s.flows.load(Ordering::Relaxed),
                    duration_secs: duration.as_secs(),
                    earned: s.price.cost(s.meter.total(), duration),
                    paid: Amount::from_nano(s.paid.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }

    /// Whether this node sells at the price the Open names.
    fn decide(&self, open: &ControlMsg) -> Result<(), SessionRefusal> {
        let ControlMsg::Open { price, .. } = open else {
            return Err(SessionRefusal::Policy);
        };
        let offer = self.own_offer.borrow().clone();
        let Some(offer) = offer else {
            return Err(SessionRefusal::NotProviding);
        };
        if offer.price != *price {
            return Err(SessionRefusal::PriceChanged);
        }
        Ok(())
    }

    /// Checks the escrow a paid session's Open names, at its hub, before the first byte:
    /// the hub must be one this provider accepts, the channel the consumer's own, not
    /// overdrawn, and with something left beyond what this provider already holds from it.
    async fn check_escrow(
        &self,
        consumer: NodeId,
        pay: Option<&PayTerms>,
    ) -> Result<Escrow, SessionRefusal> {
        let Some(pay) = pay else {
            debug!(consumer = %consumer.short(), "refusing a paid session that names no escrow");
            return Err(SessionRefusal::NoEscrow);
        };
        let accepts = &self.payments.accept_hubs;
        if !accepts.is_empty() && !accepts.contains(&pay.hub) {
            debug!(hub = %pay.hub.short(), "refusing a session paid at a hub not accepted here");
            return Err(SessionRefusal::NoEscrow);
        }
        let (hub, channel) = (pay.hub, ChannelId(pay.channel));
        let wallet = &self.payments.wallet;
        let view = match tokio::time::timeout(ESCROW_CHECK_TIMEOUT, wallet.channel_at(hub, channel))
            .await
        {
            Ok(Ok(view)) => view,
            Ok(Err(e)) => {
                debug!(hub = %hub.short(), "escrow check failed: {e}");
                return Err(SessionRefusal::NoEscrow);
            }
            Err(_) => {
                debug!(hub = %hub.short(), "escrow check timed out");
                return Err(SessionRefusal::NoEscrow);
            }
        };
        if view.consumer != consumer || view.overdrawn {
            debug!(
                consumer = %consumer.short(),
                overdrawn = view.overdrawn,
                "refusing a session on a channel that is not the consumer's or is overdrawn"
            );
            return Err(SessionRefusal::NoEscrow);
        }
        let held = wallet.held_promise(hub, channel, consumer);
        let base = held.max(view.settled);
        let available = billing::available_beyond(&view, base);
        if available == Amount::ZERO {
            debug!(consumer = %consumer.short(), "refusing a session: its escrow is used up");
            return Err(SessionRefusal::NoEscrow);
        }
        Ok(Escrow {
            hub,
            channel,
            base,
            available,
        })
    }

    /// Registers a session if the caps allow it. Checking and inserting under one lock, so
    /// concurrent Opens can never exceed the caps or replace each other.
    fn admit(&self, id: SessionId, served: Arc<Served>) -> Result<(), SessionRefusal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= self.caps.max_sessions {
            return Err(SessionRefusal::AtCapacity);
        }
        let of_peer = sessions
            .values()
            .filter(|s| s.consumer == served.consumer)
            .count();
        if of_peer >= MAX_SESSIONS_PER_PEER {
            return Err(SessionRefusal::AtCapacity);
        }
        match sessions.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(served);
                Ok(())
            }
            std::collections::hash_map::Entry::Occupied(_) => Err(SessionRefusal::Policy),
        }
    }

    fn forget(&self, id: SessionId) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    async fn serve_control(
        self: Arc<Self>,
        peer: NodeId,
        mut stream: NetStream,
        cancel: CancellationToken,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let first = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            read_msg::<_, ControlMsg>(&mut stream, MAX_CONTROL_MSG),
        )
        .await;
        drop(slot);
        let open = match first {
            Ok(Ok(msg @ ControlMsg::Open { .. })) => msg,
            _ => {
                debug!(%peer, "control stream without a valid Open; dropping it");
                return;
            }
        };
        let ControlMsg::Open {
            session: id,
            price,
            pay,
            ..
        } = &open
        else {
            return;
        };
        let served = Arc::new(Served {
            consumer: peer,
            meter: Arc::new(Meter::with_cap(self.caps.max_bytes_per_session)),
            flows: AtomicUsize::new(0),
            stop: cancel.child_token(),
            opened: Instant::now(),
            price: *price,
            paid: Arc::new(AtomicU64::new(0)),
        });
        let mut escrow = None;
        let mut decision = self.decide(&open);
        if decision.is_ok() && !window::is_free(*price) {
            decision = self.check_escrow(peer, pay.as_ref()).await.map(|e| {
                escrow = Some(e);
            });
        }
        let decision = decision.and_then(|()| self.admit(*id, served.clone()));
        let base = escrow.map_or(Amount::ZERO, |e| e.base);
        let Ok(mut session) = Session::provider(Instant::now(), &open, decision, base, self.config)
        else {
            if decision.is_ok() {
                self.forget(*id);
            }
            return;
        };
        let id = session.id();
        let telemetry = self.payments.telemetry.clone();
        if let Err(reason) = decision {
            Counters::inc(&telemetry.counters.sessions_refused);
            debug!(session = %id, "refusing a session: {reason}");
            while let Some(msg) = session.poll_transmit() {
                let _ = write_msg(&mut stream, &msg, MAX_CONTROL_MSG).await;
            }
            let _ = stream.shutdown().await;
            return;
        }
        info!(session = %id, paid = escrow.is_some(), "session opened");
        Counters::inc(&telemetry.counters.sessions_opened_provider);
        telemetry.emit(Event::SessionOpened {
            role: "provider".into(),
            session: id.to_string(),
            peer,
        });
        let (close_tx, close_rx) = mpsc::channel(1);
        // Node shutdown closes the session politely.
        let stop = served.stop.clone();
        let closer = tokio::spawn(async move {
            stop.cancelled().await;
            let _ = close_tx.send(CloseReason::Shutdown).await;
        });
        let meter = served.meter.clone();
        let mut billing = escrow.map(|e| {
            let terms = PayeeTerms {
                session: id.0,
                consumer: peer,
                hub: e.hub,
                channel: e.channel,
                price: *price,
                base: e.base,
                escrow_available: e.available,
            };
            let payee = Payee::new(
                Instant::now(),
                terms,
                self.payments.identity.clone(),
                billing::payee_config(),
            );
            Billed::new(
                payee,
                self.payments.wallet.clone(),
                meter.clone(),
                served.paid.clone(),
                Report {
                    telemetry: telemetry.clone(),
                    session: id.to_string(),
                },
            )
            .recheck_every(self.payments.recheck)
        });
        let mut ended = String::from("lost");
        drive(
            session,
            stream,
            FrameReader::new(MAX_CONTROL_MSG),
            close_rx,
            meter.clone(),
            &mut billing,
            |ev| {
                if let SessionEvent::Closed { reason, by_peer } = ev {
                    info!(session = %id, by_peer, "session closed: {reason}");
                    ended = reason.to_string();
                }
            },
        )
        .await;
        closer.abort();
        served.stop.cancel();
        let c = &telemetry.counters;
        Counters::add(&c.ended_provider_up, meter.up());
        Counters::add(&c.ended_provider_down, meter.down());
        telemetry.emit(Event::SessionClosed {
            role: "provider".into(),
            session: id.to_string(),
            reason: ended,
        });
        if let Some(billed) = billing {
            billed.finish().await;
        }
        self.forget(id);
    }

    /// Serves one flow; `_slot` holds its place under the node-wide flow limit until it ends.
    async fn serve_flow(
        self: Arc<Self>,
        peer: NodeId,
        mut stream: NetStream,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let header = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            read_msg::<_, FlowHeader>(&mut stream, MAX_FLOW_HEADER),
        )
        .await;
        let flows_refused = &self.payments.telemetry.counters.flows_refused;
        let header = match header {
            Ok(Ok(h)) => h,
            _ => {
                Counters::inc(flows_refused);
                let refusal = FlowRefusal::new(RefusalKind::BadRequest, "malformed flow header");
                let _ = write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER).await;
                return;
            }
        };
        let served = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&header.session)
            .cloned();
        let served = match served {
            Some(s) if s.consumer == peer => s,
            _ => {
                Counters::inc(flows_refused);
                let refusal = FlowRefusal::new(
                    RefusalKind::NoSession,
                    "the provider has no open session for this flow",
                );
                let _ = write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER).await;
                return;
            }
        };
        if let Err(refusal) = self.admit_flow(&served) {
            Counters::inc(flows_refused);
            let _ = write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER).await;
            return;
        }
        Counters::inc(&self.payments.telemetry.counters.flows_opened);
        let _guard = FlowGuard(&served.flows);
        match header.proto {
            FlowProto::Tcp => {
                let remote = tokio::select! {
                    r = self.exit.connect_tcp(&header.target) => r,
                    () = served.stop.cancelled() => return,
                };
                match remote {
                    Ok(remote) => {
                        if write_msg(&mut stream, &FlowReply::Ok, MAX_FLOW_HEADER)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let end = splice(stream, remote, served.meter.clone(), &served.stop).await;
                        debug!(session = %header.session, ?end, "flow ended");
                    }
                    Err(refusal) => {
                        Counters::inc(flows_refused);
                        debug!(session = %header.session, "flow refused: {refusal}");
                        let _ =
                            write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER)
                                .await;
                    }
                }
            }
            FlowProto::Udp => {
                if write_msg(&mut stream, &FlowReply::Ok, MAX_FLOW_HEADER)
                    .await
                    .is_err()
                {
                    return;
                }
                // The relay can block writing replies to a consumer that stopped reading;
                // the session's end must still end it.
                tokio::select! {
                    r = warren_tunnel::exit::relay_udp(
                        &self.exit,
                        stream,
                        served.meter.clone(),
                        &served.stop,
                    ) => {
                        if let Err(e) = r {
                            debug!(session = %header.session, "udp flow ended: {e}");
                        }
                    }
                    () = served.stop.cancelled() => {}
                }
            }
        }
    }

    fn admit_flow(&self, served: &Served) -> Result<(), FlowRefusal> {
        if served.meter.exhausted() {
            return Err(FlowRefusal::new(
                RefusalKind::Cap,
                "the session's byte cap is used up",
            ));
        }
        let before = served.flows.fetch_add(1, Ordering::Relaxed);
        if before >= self.caps.max_flows_per_session {
            served.flows.fetch_sub(1, Ordering::Relaxed);
            return Err(FlowRefusal::new(
                RefusalKind::Cap,
                format!(
                    "the session already has {} flows open, the provider's limit",
                    self.caps.max_flows_per_session
                ),
            ));
        }
        Ok(())
    }
}

/// Gives a flow's slot back when the flow ends, however it ends.
struct FlowGuard<'a>(&'a AtomicUsize);

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_tunnel::exit::{ExitPolicy, ExitRules};
    use warren_types::{Country, IpKind, Price, Service};

    fn offer(price: Price) -> Offer {
        Offer {
            provider: warren_types::Identity::generate().node_id(),
            seq: 1,
            issued_at: 0,
            expires_at: u64::MAX,
            services: vec![Service::proxy()],
            price,
            country: Country::UNKNOWN,
            ip_kind: IpKind::Unknown,
            addrs: vec![],
        }
    }

    fn open(price: Price) -> ControlMsg {
        ControlMsg::Open {
            session: SessionId([1; 16]),
            offer_seq: 1,
            price,
            pay: None,
        }
    }

    /// Payments over a memory network with no listener: enough for the parts that do not
    /// reach a hub.
    async fn payments() -> (Payments, CancellationToken) {
        let identity = warren_types::Identity::generate();
        let mut net = warren_net::NetConfig::in_memory(identity.clone());
        net.listen = vec![];
        let market = Arc::new(crate::market::Market::new());
        let cancel = CancellationToken::new();
        let (net, _task) = Network::spawn(net, market.clone(), cancel.clone())
            .await
            .unwrap();
        let wallet = Wallet::open(identity.node_id(), net, market, None, None).unwrap();
        let payments = Payments {
            identity,
            wallet: Arc::new(wallet),
            accept_hubs: vec![],
            recheck: billing::RECHECK_ESCROW,
            telemetry: Arc::new(Telemetry::default()),
        };
        (payments, cancel)
    }

    #[tokio::test]
    async fn sessions_are_refused_with_the_right_reason() {
        let (payments, stop_net) = payments().await;
        let price = Price {
            per_gib: warren_types::Amount::from_nano(5),
            per_hour: warren_types::Amount::from_nano(7),
        };
        let policy = ExitPolicy::new(&ExitRules::default(), vec![], vec![]).unwrap();
        let caps = ExitCaps {
            max_sessions: 1,
            ..ExitCaps::default()
        };
        let (offers, rx) = tokio::sync::watch::channel(None);
        let p = Provider::new(Exit::new(policy), caps, rx, payments.clone());
        assert_eq!(p.decide(&open(price)), Err(SessionRefusal::NotProviding));
        offers.send_replace(Some(offer(price)));
        assert_eq!(p.decide(&open(price)), Ok(()));
        let dearer = Price {
            per_gib: warren_types::Amount::from_nano(6),
            ..price
        };
        assert_eq!(p.decide(&open(dearer)), Err(SessionRefusal::PriceChanged));
        let served = |consumer| {
            Arc::new(Served {
                consumer,
                meter: Arc::new(Meter::default()),
                flows: AtomicUsize::new(0),
                stop: CancellationToken::new(),
                opened: Instant::now(),
                price,
                paid: Arc::new(AtomicU64::new(0)),
            })
        };
        let alice = warren_types::Identity::generate().node_id();
        let bob = warren_types::Identity::generate().node_id();
        assert_eq!(p.admit(SessionId([2; 16]), served(alice)), Ok(()));
        assert_eq!(
            p.admit(SessionId([3; 16]), served(bob)),
            Err(SessionRefusal::AtCapacity)
        );
        // Per peer: with room overall, one consumer still gets at most two sessions, and an
        // id already in use is never replaced.
        let roomy = Provider::new(
            Exit::new(ExitPolicy::new(&ExitRules::default(), vec![], vec![]).unwrap()),
            ExitCaps::default(),
            tokio::sync::watch::channel(None).1,
            payments.clone(),
        );
        assert_eq!(roomy.admit(SessionId([1; 16]), served(alice)), Ok(()));
        assert_eq!(
            roomy.admit(SessionId([1; 16]), served(bob)),
            Err(SessionRefusal::Policy)
        );
        assert_eq!(roomy.admit(SessionId([2; 16]), served(alice)), Ok(()));
        assert_eq!(
            roomy.admit(SessionId([3; 16]), served(alice)),
            Err(SessionRefusal::AtCapacity)
        );
        assert_eq!(roomy.sessions().len(), 2);

        // A priced Open that names no escrow, or a hub this provider does not accept, is
        // refused before anyone is asked.
        let alice = warren_types::Identity::generate().node_id();
        assert_eq!(
            p.check_escrow(alice, None).await,
            Err(SessionRefusal::NoEscrow)
        );
        let picky = Provider::new(
            Exit::new(ExitPolicy::new(&ExitRules::default(), vec![], vec![]).unwrap()),
            ExitCaps::default(),
            tokio::sync::watch::channel(None).1,
            Payments {
                accept_hubs: vec![warren_types::Identity::generate().node_id()],
                ..payments
            },
        );
        let elsewhere = PayTerms {
            hub: warren_types::Identity::generate().node_id(),
            channel: [1; 16],
        };
        assert_eq!(
            picky.check_escrow(alice, Some(&elsewhere)).await,
            Err(SessionRefusal::NoEscrow)
        );
        stop_net.cancel();
    }
}
