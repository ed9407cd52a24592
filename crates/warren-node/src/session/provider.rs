//! The provider's side: accepts sessions on the control protocol and flows on the flow
//! protocol, checks each flow against its session and the caps, and carries it through the
//! exit connector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warren_net::{NetStream, Network};
use warren_session::wire::{
    CONTROL_PROTOCOL, CloseReason, ControlMsg, FLOW_PROTOCOL, FlowHeader, FlowReply, FrameReader,
    MAX_CONTROL_MSG, MAX_FLOW_HEADER, SessionId, SessionRefusal,
};
use warren_session::{Session, SessionConfig, SessionEvent};
use warren_tunnel::exit::{Exit, ExitCaps};
use warren_tunnel::splice::{Meter, splice};
use warren_types::{Amount, FlowProto, FlowRefusal, NodeId, Offer, RefusalKind};

use super::{drive, read_msg, write_msg};

/// How long a peer may take to send the first message of a stream.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// A session this provider serves, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedView {
    pub session: String,
    pub consumer: NodeId,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: usize,
    pub duration_secs: u64,
    /// What the session has earned so far at the offer's price (nano-WRN).
    pub earned: Amount,
}

/// The provider role: shared by the acceptor tasks.
#[derive(Debug)]
pub struct Provider {
    exit: Exit,
    caps: ExitCaps,
    sessions: Mutex<HashMap<SessionId, Arc<Served>>>,
    own_offer: tokio::sync::watch::Receiver<Option<Offer>>,
    config: SessionConfig,
}

impl Provider {
    pub(crate) fn new(
        exit: Exit,
        caps: ExitCaps,
        own_offer: tokio::sync::watch::Receiver<Option<Offer>>,
    ) -> Arc<Self> {
        Arc::new(Provider {
            exit,
            caps,
            sessions: Mutex::new(HashMap::new()),
            own_offer,
            config: SessionConfig::default(),
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
                        tokio::spawn(me.clone().serve_control(peer, stream, c.clone()));
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
                        tokio::spawn(me.clone().serve_flow(peer, stream));
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
                }
            })
            .collect()
    }

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
        let open_now = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if open_now >= self.caps.max_sessions {
            return Err(SessionRefusal::AtCapacity);
        }
        Ok(())
    }

    async fn serve_control(
        self: Arc<Self>,
        peer: NodeId,
        mut stream: NetStream,
        cancel: CancellationToken,
    ) {
        let first = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            read_msg::<_, ControlMsg>(&mut stream, MAX_CONTROL_MSG),
        )
        .await;
        let open = match first {
            Ok(Ok(msg @ ControlMsg::Open { .. })) => msg,
            _ => {
                debug!(%peer, "control stream without a valid Open; dropping it");
                return;
            }
        };
        let decision = self.decide(&open);
        let Ok(mut session) = Session::provider(Instant::now(), &open, decision, self.config)
        else {
            return;
        };
        let id = session.id();
        if let Err(reason) = decision {
            debug!(session = %id, "refusing a session: {reason}");
            while let Some(msg) = session.poll_transmit() {
                let _ = write_msg(&mut stream, &msg, MAX_CONTROL_MSG).await;
            }
            let _ = stream.shutdown().await;
            return;
        }
        let served = Arc::new(Served {
            consumer: peer,
            meter: Arc::new(Meter::with_cap(self.caps.max_bytes_per_session)),
            flows: AtomicUsize::new(0),
            stop: cancel.child_token(),
            opened: Instant::now(),
            price: session.price(),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, served.clone());
        info!(session = %id, "session opened");
        let (close_tx, close_rx) = mpsc::channel(1);
        // Node shutdown closes the session politely.
        let stop = served.stop.clone();
        let closer = tokio::spawn(async move {
            stop.cancelled().await;
            let _ = close_tx.send(CloseReason::Shutdown).await;
        });
        let meter = served.meter.clone();
        drive(
            session,
            stream,
            FrameReader::new(MAX_CONTROL_MSG),
            close_rx,
            meter,
            |ev| {
                if let SessionEvent::Closed { reason, by_peer } = ev {
                    info!(session = %id, by_peer, "session closed: {reason}");
                }
            },
        )
        .await;
        closer.abort();
        served.stop.cancel();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    async fn serve_flow(self: Arc<Self>, peer: NodeId, mut stream: NetStream) {
        let header = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            read_msg::<_, FlowHeader>(&mut stream, MAX_FLOW_HEADER),
        )
        .await;
        let header = match header {
            Ok(Ok(h)) => h,
            _ => {
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
                let refusal = FlowRefusal::new(
                    RefusalKind::NoSession,
                    "the provider has no open session for this flow",
                );
                let _ = write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER).await;
                return;
            }
        };
        if let Err(refusal) = self.admit_flow(&served) {
            let _ = write_msg(&mut stream, &FlowReply::Refused(refusal), MAX_FLOW_HEADER).await;
            return;
        }
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
                if let Err(e) = warren_tunnel::exit::relay_udp(
                    &self.exit,
                    stream,
                    served.meter.clone(),
                    &served.stop,
                )
                .await
                {
                    debug!(session = %header.session, "udp flow ended: {e}");
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
        }
    }

    #[test]
    fn sessions_are_refused_with_the_right_reason() {
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
        let p = Provider::new(Exit::new(policy), caps, rx);
        assert_eq!(p.decide(&open(price)), Err(SessionRefusal::NotProviding));
        offers.send_replace(Some(offer(price)));
        assert_eq!(p.decide(&open(price)), Ok(()));
        let dearer = Price {
            per_gib: warren_types::Amount::from_nano(6),
            ..price
        };
        assert_eq!(p.decide(&open(dearer)), Err(SessionRefusal::PriceChanged));
        p.sessions.lock().unwrap().insert(
            SessionId([2; 16]),
            Arc::new(Served {
                consumer: warren_types::Identity::generate().node_id(),
                meter: Arc::new(Meter::default()),
                flows: AtomicUsize::new(0),
                stop: CancellationToken::new(),
                opened: Instant::now(),
                price,
            }),
        );
        assert_eq!(p.decide(&open(price)), Err(SessionRefusal::AtCapacity));
    }
}
