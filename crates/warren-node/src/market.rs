//! The node's side of the offer market: the shared catalog, the [`OfferBook`] the network
//! task calls into, the loop that keeps this node's own offer fresh, and expiry.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warren_net::{OfferBook, Verdict};
use warren_types::{Country, Identity, NodeId, Offer};

use crate::catalog::{Admitted, Catalog, OfferFilter, RemovalReason};
use crate::{ProvideConfig, Shared, sign_offer, unix_now};

/// Something that happened in the node, for the API's event stream and for tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    OfferAdded {
        provider: NodeId,
        country: Country,
    },
    OfferUpdated {
        provider: NodeId,
    },
    OfferRemoved {
        provider: NodeId,
        reason: RemovalReason,
    },
}

#[derive(Debug)]
pub(crate) struct Market {
    catalog: Mutex<Catalog>,
    events: broadcast::Sender<NodeEvent>,
    /// Bumped on every change, so waiters never miss one between check and wait.
    changes: watch::Sender<u64>,
}

impl Market {
    pub fn new() -> Self {
        Self {
            catalog: Mutex::new(Catalog::default()),
            events: broadcast::channel(1024).0,
            changes: watch::channel(0).0,
        }
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock leaves a catalog that is still consistent (every
        // method finishes its change before returning), so carry on with it.
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn with_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.catalog())
    }

    pub fn list(&self, filter: &OfferFilter) -> Vec<Offer> {
        self.catalog().list(filter)
    }

    pub fn len(&self) -> usize {
        self.catalog().len()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self, event: NodeEvent) {
        let _ = self.events.send(event);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Admits offer bytes; `Err` carries the reason they were refused.
    pub fn admit(&self, bytes: &[u8]) -> Result<Admitted, warren_types::OfferError> {
        let result = self.catalog().admit(bytes, unix_now());
        match &result {
            Ok(Admitted::Added(provider)) => {
                let country = self
                    .catalog()
                    .get(provider)
                    .map_or(Country::UNKNOWN, |o| o.country);
                self.changed(NodeEvent::OfferAdded {
                    provider: *provider,
                    country,
                });
            }
            Ok(Admitted::Updated(provider)) => self.changed(NodeEvent::OfferUpdated {
                provider: *provider,
            }),
            Ok(Admitted::Unchanged) | Err(_) => {}
        }
        result
    }

    fn expire(&self) {
        let gone = self.catalog().expire(unix_now());
        for provider in gone {
            debug!(%provider, "offer expired");
            self.changed(NodeEvent::OfferRemoved {
                provider,
                reason: RemovalReason::Expired,
            });
        }
    }
}

impl OfferBook for Market {
    fn offer_received(&self, from: NodeId, bytes: &[u8]) -> Verdict {
        match self.admit(bytes) {
            Ok(Admitted::Added(_) | Admitted::Updated(_)) => Verdict::Accept,
            Ok(Admitted::Unchanged) => Verdict::Ignore,
            Err(e) => {
                debug!(peer = %from, "refused an offer: {e}");
                Verdict::Reject
            }
        }
    }

    fn each_offer(&self, visit: &mut dyn FnMut(&[u8])) {
        self.catalog().each_signed(visit)
    }
}

/// Drops expired offers once a second.
pub(crate) async fn expire_loop(market: Arc<Market>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => market.expire(),
        }
    }
}

/// Signs and gossips this node's offer, then re-signs it at two thirds of its lifetime.
pub(crate) async fn provide_loop(
    shared: Arc<Shared>,
    identity: Identity,
    provide: ProvideConfig,
    cancel: CancellationToken,
) {
    let refresh = provide.offer_lifetime * 2 / 3;
    let mut last_seq = 0;
    loop {
        let addrs = shared.net.state().listen_addrs;
        if let Some((offer, signed)) = sign_offer(&identity, &provide, addrs, last_seq) {
            last_seq = offer.seq;
            let bytes = signed.to_bytes();
            if let Err(e) = shared.market.admit(&bytes) {
                debug!("our own offer was refused locally: {e}");
            }
            if shared.own_offer.borrow().is_none() {
                if provide.sells_proxy() {
                    info!(
                        country = %offer.country,
                        per_gib = %offer.price.per_gib,
                        per_hour = %offer.price.per_hour,
                        "offering bandwidth"
                    );
                } else {
                    info!("announcing the payment hub");
                }
            }
            shared
                .proxy_offer
                .send_replace(provide.sells_proxy().then(|| offer.clone()));
            shared.own_offer.send_replace(Some(offer));
            if shared.net.publish_offer(bytes).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
        }
    }
}
