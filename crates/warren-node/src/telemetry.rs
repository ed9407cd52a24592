//! What the node tells about itself while it runs: counters for `/metrics` (Prometheus text
//! format, `warren_` prefix) and live events for `/api/v1/events` (server-sent events).
//! Neither ever carries a destination, a client address or a secret.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use warren_types::{Amount, Country, NodeId};

/// Events a subscriber may fall behind by before it misses some (it is told how many).
pub const EVENT_BUFFER: usize = 1024;

/// One live event, as `/api/v1/events` sends it (`event:` is the `type`, `data:` the JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    OfferAdded {
        #[schema(value_type = String)]
        provider: NodeId,
        #[schema(value_type = String)]
        country: Country,
    },
    OfferUpdated {
        #[schema(value_type = String)]
        provider: NodeId,
    },
    OfferRemoved {
        #[schema(value_type = String)]
        provider: NodeId,
        reason: String,
    },
    /// `role` is "consumer" (this node's own session) or "provider" (one it serves).
    SessionOpened {
        role: String,
        session: String,
        #[schema(value_type = String)]
        peer: NodeId,
    },
    SessionClosed {
        role: String,
        session: String,
        reason: String,
    },
    /// Payload bytes per second over the last second, both roles.
    Throughput {
        consumer_up: u64,
        consumer_down: u64,
        provider_up: u64,
        provider_down: u64,
    },
    /// An invoice sent (provider) or received (consumer): the session's cumulative bill.
    Invoice {
        role: String,
        session: String,
        #[schema(value_type = u64)]
        cumulative: Amount,
    },
    /// A promise sent (consumer) or accepted (provider): cumulative on the channel.
    Payment {
        role: String,
        session: String,
        #[schema(value_type = u64)]
        cumulative: Amount,
    },
}

/// The counters behind `/metrics`; the gauges are read from the node when scraped.
#[derive(Debug, Default)]
pub struct Counters {
    pub sessions_opened_consumer: AtomicU64,
    pub sessions_opened_provider: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_refused: AtomicU64,
    /// Payload bytes of sessions that ended, per role and direction (live ones are added
    /// at scrape time).
    pub ended_consumer_up: AtomicU64,
    pub ended_consumer_down: AtomicU64,
    pub ended_provider_up: AtomicU64,
    pub ended_provider_down: AtomicU64,
    pub invoices_sent: AtomicU64,
    pub invoices_received: AtomicU64,
    pub promises_sent: AtomicU64,
    pub promises_received: AtomicU64,
    pub promises_refused: AtomicU64,
    pub settle_errors: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}

/// Counters and the event channel, shared by the node's parts.
#[derive(Debug)]
pub struct Telemetry {
    pub counters: Counters,
    events: broadcast::Sender<Event>,
    /// Cancelled when the node stops: event streams end, so the API can close.
    stopped: tokio_util::sync::CancellationToken,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            counters: Counters::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            stopped: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl Telemetry {
    /// Sends an event to whoever listens (nobody is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Completes once the node is stopping.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stopped.clone().cancelled_owned()
    }
}

/// The figures read from the node at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub peers: u64,
    pub offers: u64,
    pub offers_by_country: Vec<(String, u64)>,
    pub consumer_sessions: u64,
    pub provider_sessions: u64,
    pub provider_flows: u64,
    /// Bytes of live sessions, per role and direction.
    pub live_consumer_up: u64,
    pub live_consumer_down: u64,
    pub live_provider_up: u64,
    pub live_provider_down: u64,
    pub earned_unsettled: Amount,
    pub uptime_secs: u64,
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(c: &Counters, g: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP warren_{name} {help}");
        let _ = writeln!(out, "# TYPE warren_{name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "warren_{name} {value}");
            } else {
                let _ = writeln!(out, "warren_{name}{{{labels}}} {value}");
            }
        }
    };
    metric("peers", "gauge", "Peers connected now.", &[("", g.peers)]);
    metric(
        "offers",
        "gauge",
        "Verified offers in this node's catalog.",
        &[("", g.offers)],
    );
    let by_country: Vec<(String, u64)> = g
        .offers_by_country
        .iter()
        .map(|(cc, n)| (format!("country=\"{}\"", escape(cc)), *n))
        .collect();
    let by_country: Vec<(&str, u64)> = by_country.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "offers_by_country",
        "gauge",
        "Verified offers per provider country.",
        &by_country,
    );
    metric(
        "sessions",
        "gauge",
        "Sessions open now.",
        &[
            ("role=\"consumer\"", g.consumer_sessions),
            ("role=\"provider\"", g.provider_sessions),
        ],
    );
    metric(
        "sessions_opened_total",
        "counter",
        "Sessions opened since start.",
        &[
            ("role=\"consumer\"", get(&c.sessions_opened_consumer)),
            ("role=\"provider\"", get(&c.sessions_opened_provider)),
        ],
    );
    metric(
        "sessions_refused_total",
        "counter",
        "Session requests this provider refused.",
        &[("", get(&c.sessions_refused))],
    );
    metric(
        "flows",
        "gauge",
        "Flows this provider carries now.",
        &[("", g.provider_flows)],
    );
    metric(
        "flows_total",
        "counter",
        "Flows this provider admitted or refused since start.",
        &[
            ("outcome=\"opened\"", get(&c.flows_opened)),
            ("outcome=\"refused\"", get(&c.flows_refused)),
        ],
    );
    let bytes = |ended: &AtomicU64, live: u64| get(ended).saturating_add(live);
    metric(
        "bytes_total",
        "counter",
        "Payload bytes carried since start.",
        &[
            (
                "role=\"consumer\",direction=\"up\"",
                bytes(&c.ended_consumer_up, g.live_consumer_up),
            ),
            (
                "role=\"consumer\",direction=\"down\"",
                bytes(&c.ended_consumer_down, g.live_consumer_down),
            ),
            (
                "role=\"provider\",direction=\"up\"",
                bytes(&c.ended_provider_up, g.live_provider_up),
            ),
            (
                "role=\"provider\",direction=\"down\"",
                bytes(&c.ended_provider_down, g.live_provider_down),
            ),
        ],
    );
    metric(
        "invoices_total",
        "counter",
        "Invoices sent (provider) and received (consumer).",
        &[
            ("direction=\"sent\"", get(&c.invoices_sent)),
            ("direction=\"received\"", get(&c.invoices_received)),
        ],
    );
    metric(
        "promises_total",
        "counter",
        "Promises sent (consumer), accepted and refused (provider).",
        &[
            ("outcome=\"sent\"", get(&c.promises_sent)),
            ("outcome=\"accepted\"", get(&c.promises_received)),
            ("outcome=\"refused\"", get(&c.promises_refused)),
        ],
    );
    metric(
        "earned_unsettled_nano_wrn",
        "gauge",
        "Promised to this node as a provider and not yet settled, in nano-WRN.",
        &[("", g.earned_unsettled.nano())],
    );
    metric(
        "errors_total",
        "counter",
        "Errors by kind.",
        &[
            ("kind=\"settlement\"", get(&c.settle_errors)),
            ("kind=\"promise_refused\"", get(&c.promises_refused)),
        ],
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        &[("", g.uptime_secs)],
    );
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The node's figures as `/metrics` shows them at this moment.
pub(crate) fn gauges(shared: &crate::Shared) -> Gauges {
    let net = shared.net.state();
    let mut by_country: std::collections::BTreeMap<String, u64> = Default::default();
    shared.market.with_catalog(|c| {
        for o in c.list(&crate::OfferFilter::default()) {
            *by_country.entry(o.country.to_string()).or_default() += 1;
        }
    });
    let session = shared.consumer.view();
    let served = shared.provider.sessions();
    Gauges {
        peers: net.connected.len() as u64,
        offers: shared.market.len() as u64,
        offers_by_country: by_country.into_iter().collect(),
        consumer_sessions: u64::from(session.is_some()),
        provider_sessions: served.len() as u64,
        provider_flows: served.iter().map(|s| s.flows as u64).sum(),
        live_consumer_up: session.as_ref().map_or(0, |s| s.bytes_up),
        live_consumer_down: session.as_ref().map_or(0, |s| s.bytes_down),
        live_provider_up: served.iter().map(|s| s.bytes_up).sum(),
        live_provider_down: served.iter().map(|s| s.bytes_down).sum(),
        earned_unsettled: shared.wallet.earned_unsettled(),
        uptime_secs: shared.started.elapsed().as_secs(),
    }
}

/// Bytes carried since start per (role, direction): ended sessions plus live ones. Reads
/// only the sessions, not the catalog: it runs every second.
fn totals(shared: &crate::Shared) -> [u64; 4] {
    let c = &shared.telemetry.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let session = shared.consumer.view();
    let served = shared.provider.sessions();
    [
        get(&c.ended_consumer_up).saturating_add(session.as_ref().map_or(0, |s| s.bytes_up)),
        get(&c.ended_consumer_down).saturating_add(session.as_ref().map_or(0, |s| s.bytes_down)),
        get(&c.ended_provider_up).saturating_add(served.iter().map(|s| s.bytes_up).sum()),
        get(&c.ended_provider_down).saturating_add(served.iter().map(|s| s.bytes_down).sum()),
    ]
}

/// Turns catalog changes into events and measures throughput once a second, until
/// `cancel` fires.
pub(crate) async fn run(
    shared: std::sync::Arc<crate::Shared>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let telemetry = shared.telemetry.clone();
    let mut offers = shared.market.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = totals(&shared);
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                telemetry.stopped.cancel();
                return;
            }
            ev = offers.recv() => match ev {
                Ok(ev) => telemetry.emit(match ev {
                    crate::NodeEvent::OfferAdded { provider, country } => {
                        Event::OfferAdded { provider, country }
                    }
                    crate::NodeEvent::OfferUpdated { provider } => Event::OfferUpdated { provider },
                    crate::NodeEvent::OfferRemoved { provider, reason } => Event::OfferRemoved {
                        provider,
                        reason: format!("{reason:?}").to_lowercase(),
                    },
                }),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let now = totals(&shared);
                let d = |i: usize| now[i].saturating_sub(last[i]);
                telemetry.emit(Event::Throughput {
                    consumer_up: d(0),
                    consumer_down: d(1),
                    provider_up: d(2),
                    provider_down: d(3),
                });
                last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let c = Counters::default();
        Counters::add(&c.ended_provider_down, 10);
        let g = Gauges {
            live_provider_down: 5,
            offers_by_country: vec![("D\"E".into(), 2)],
            ..Gauges::default()
        };
        let text = render(&c, &g);
        assert!(text.contains("warren_bytes_total{role=\"provider\",direction=\"down\"} 15"));
        assert!(text.contains("warren_offers_by_country{country=\"D\\\"E\"} 2"));
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(families, helps);
        assert!(families >= 12);
    }
}
