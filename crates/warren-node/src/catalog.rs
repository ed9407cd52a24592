//! The offers a node has seen and verified: one per provider, the newest by sequence.
//!
//! Plain data with time passed in (`now`, unix seconds), so every rule is testable without
//! a clock. A replayed (older) or equivocating (same sequence, other bytes) offer is refused
//! and remembered as the sender's fault, except within [`RACE_GRACE_SECS`] of the newer one
//! arriving, when an honest peer may simply not have heard of it yet.

use std::collections::HashMap;

use warren_types::{
    Amount, Country, NodeId, Offer, OfferError, Service, SignedOffer, VerifiedOffer,
};

/// Providers held at once; offers from further providers are ignored until some expire.
pub const MAX_PROVIDERS: usize = 20_000;
/// How long after accepting an offer an older one is still taken for an honest race.
pub const RACE_GRACE_SECS: u64 = 30;
/// Sequence high-water marks remembered after an offer leaves, against late replays.
const MAX_HIGH_WATER: usize = 4 * MAX_PROVIDERS;

#[derive(Debug)]
struct Entry {
    offer: VerifiedOffer,
    bytes: Vec<u8>,
    received_at: u64,
}

/// What admitting an offer did.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A provider not in the catalog before.
    Added(NodeId),
    /// A newer offer from a provider already listed.
    Updated(NodeId),
    /// Nothing new: already held, an honest race, or the catalog is full.
    Unchanged,
}

/// Why offers left the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalReason {
    Expired,
}

/// Which offers a caller wants. Every field narrows the list.
#[derive(Clone, Debug, Default)]
pub struct OfferFilter {
    pub country: Option<Country>,
    pub max_price_per_gib: Option<Amount>,
    pub max_price_per_hour: Option<Amount>,
    pub service: Option<Service>,
}

impl OfferFilter {
    pub fn matches(&self, o: &Offer) -> bool {
        self.country.is_none_or(|c| o.country == c)
            && self.max_price_per_gib.is_none_or(|m| o.price.per_gib <= m)
            && self
                .max_price_per_hour
                .is_none_or(|m| o.price.per_hour <= m)
            && self.service.as_ref().is_none_or(|s| o.has_service(s))
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    entries: HashMap<NodeId, Entry>,
    high_water: HashMap<NodeId, u64>,
}

impl Catalog {
    /// Verifies and, if newer than what is held, keeps an offer. An `Err` means the sender
    /// is at fault; `Ok(Admitted::Unchanged)` means nothing new but nobody to blame.
    pub fn admit(&mut self, bytes: &[u8], now: u64) -> Result<Admitted, OfferError> {
        let signed = SignedOffer::from_bytes(bytes)?;
        // The same bytes as the offer held were verified when they came first: a copy
        // (pulled or gossiped again) costs no signature check.
        if let Some(held) = signed.claimed_provider().and_then(|p| self.entries.get(&p))
            && held.bytes == bytes
        {
            return Ok(Admitted::Unchanged);
        }
        let verified = match signed.verify(now) {
            Ok(v) => v,
            // Just-expired offers are still in flight honestly for a moment.
            Err(OfferError::Expired { expires_at, .. })
                if now.saturating_sub(expires_at) < RACE_GRACE_SECS =>
            {
                return Ok(Admitted::Unchanged);
            }
            Err(e) => return Err(e),
        };
        let provider = verified.offer().provider;
        let seq = verified.offer().seq;

        if let Some(held) = self.entries.get(&provider) {
            let known = held.offer.offer().seq;
            if seq <= known {
                let fresh = now.saturating_sub(held.received_at) < RACE_GRACE_SECS;
                return if seq < known && fresh {
                    Ok(Admitted::Unchanged)
                } else {
                    Err(OfferError::Replayed { seq, known })
                };
            }
        } else if let Some(&known) = self.high_water.get(&provider)
            && seq <= known
        {
            return Err(OfferError::Replayed { seq, known });
        }

        if !self.entries.contains_key(&provider) && self.entries.len() >= MAX_PROVIDERS {
            return Ok(Admitted::Unchanged);
        }
        if self.high_water.len() >= MAX_HIGH_WATER && !self.high_water.contains_key(&provider) {
            // Forget marks of providers no longer listed; their offers have long expired.
            let entries = &self.entries;
            self.high_water.retain(|p, _| entries.contains_key(p));
        }
        self.high_water.insert(provider, seq);
        let replaced = self
            .entries
            .insert(
                provider,
                Entry {
                    offer: verified,
                    bytes: bytes.to_vec(),
                    received_at: now,
                },
            )
            .is_some();
        Ok(if replaced {
            Admitted::Updated(provider)
        } else {
            Admitted::Added(provider)
        })
    }

    /// Drops offers whose time is up; returns their providers.
    pub fn expire(&mut self, now: u64) -> Vec<NodeId> {
        let gone: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.offer.offer().expires_at <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.entries.remove(p);
        }
        gone
    }

    /// Matching offers, cheapest per GiB first, then by provider for a stable order.
    pub fn list(&self, filter: &OfferFilter) -> Vec<Offer> {
        let mut out: Vec<Offer> = self
            .entries
            .values()
            .map(|e| e.offer.offer())
            .filter(|o| filter.matches(o))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.price.per_gib, a.price.per_hour, a.provider).cmp(&(
                b.price.per_gib,
                b.price.per_hour,
                b.provider,
            ))
        });
        out
    }

    pub fn get(&self, provider: &NodeId) -> Option<&Offer> {
        self.entries.get(provider).map(|e| e.offer.offer())
    }

    pub fn contains(&self, provider: &NodeId) -> bool {
        self.entries.contains_key(provider)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Calls `visit` with the wire bytes of every held offer (for a peer pulling the market).
    pub fn each_signed(&self, mut visit: impl FnMut(&[u8])) {
        for e in self.entries.values() {
            visit(&e.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_types::{Identity, IpKind, Price};

    const NOW: u64 = 1_800_000_000;

    fn signed(id: &Identity, seq: u64, issued: u64, country: &str, gib: u64) -> Vec<u8> {
        let offer = Offer {
            provider: id.node_id(),
            seq,
            issued_at: issued,
            expires_at: issued + 180,
            services: vec![Service::proxy()],
            price: Price {
                per_gib: Amount::from_nano(gib),
                per_hour: Amount::from_nano(1),
            },
            country: country.parse().unwrap(),
            ip_kind: IpKind::Hosting,
            addrs: vec![],
        };
        SignedOffer::sign(&offer, id).unwrap().to_bytes()
    }

    #[test]
    fn newer_offers_replace_older_ones() {
        let id = Identity::generate();
        let mut c = Catalog::default();
        let p = id.node_id();
        assert_eq!(
            c.admit(&signed(&id, 1, NOW, "DE", 5), NOW),
            Ok(Admitted::Added(p))
        );
        assert_eq!(
            c.admit(&signed(&id, 1, NOW, "DE", 5), NOW),
            Ok(Admitted::Unchanged)
        );
        assert_eq!(
            c.admit(&signed(&id, 2, NOW, "DE", 7), NOW),
            Ok(Admitted::Updated(p))
        );
        assert_eq!(c.get(&p).unwrap().price.per_gib, Amount::from_nano(7));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_replayed_sequence_is_refused_once_the_race_is_over() {
        let id = Identity::generate();
        let mut c = Catalog::default();
        let old = signed(&id, 1, NOW, "DE", 5);
        c.admit(&old, NOW).unwrap();
        c.admit(&signed(&id, 2, NOW + 1, "DE", 5), NOW + 1).unwrap();
        // Moments later an honest peer may still relay the old one.
        assert_eq!(c.admit(&old, NOW + 2), Ok(Admitted::Unchanged));
        // Well after, it is a replay.
        let later = NOW + 1 + RACE_GRACE_SECS;
        assert_eq!(
            c.admit(&old, later),
            Err(OfferError::Replayed { seq: 1, known: 2 })
        );
        // Same sequence, different content: equivocation.
        let twin = signed(&id, 2, NOW + 1, "DE", 1);
        assert_eq!(
            c.admit(&twin, later),
            Err(OfferError::Replayed { seq: 2, known: 2 })
        );
        assert_eq!(
            c.get(&id.node_id()).unwrap().price.per_gib,
            Amount::from_nano(5)
        );
    }

    #[test]
    fn a_replay_after_expiry_is_still_refused() {
        let id = Identity::generate();
        let mut c = Catalog::default();
        c.admit(&signed(&id, 5, NOW, "DE", 5), NOW).unwrap();
        assert_eq!(c.expire(NOW + 180), vec![id.node_id()]);
        assert!(c.is_empty());
        // An older, still-valid offer signed earlier cannot come back.
        let older = signed(&id, 4, NOW + 100, "DE", 5);
        assert!(matches!(
            c.admit(&older, NOW + 181),
            Err(OfferError::Replayed { .. })
        ));
    }

    #[test]
    fn forged_and_stale_offers_are_the_senders_fault() {
        let id = Identity::generate();
        let mut c = Catalog::default();
        let mut bytes = signed(&id, 1, NOW, "DE", 5);
        let n = bytes.len();
        bytes[n / 2] ^= 0x55;
        assert!(c.admit(&bytes, NOW).is_err());
        let stale = signed(&id, 1, NOW - 1000, "DE", 5);
        assert!(matches!(
            c.admit(&stale, NOW),
            Err(OfferError::Expired { .. })
        ));
        // Just expired: in flight, not a fault.
        let just = signed(&id, 1, NOW - 181, "DE", 5);
        assert_eq!(c.admit(&just, NOW), Ok(Admitted::Unchanged));
        assert!(c.is_empty());
    }

    #[test]
    fn filters_narrow_and_sort_by_price() {
        let mut c = Catalog::default();
        let ids: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
        c.admit(&signed(&ids[0], 1, NOW, "DE", 30), NOW).unwrap();
        c.admit(&signed(&ids[1], 1, NOW, "DE", 10), NOW).unwrap();
        c.admit(&signed(&ids[2], 1, NOW, "BR", 20), NOW).unwrap();
        c.admit(&signed(&ids[3], 1, NOW, "JP", 40), NOW).unwrap();
        let all = c.list(&OfferFilter::default());
        let prices: Vec<u64> = all.iter().map(|o| o.price.per_gib.nano()).collect();
        assert_eq!(prices, vec![10, 20, 30, 40]);
        let de = c.list(&OfferFilter {
            country: Some("DE".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(de.len(), 2);
        let cheap = c.list(&OfferFilter {
            max_price_per_gib: Some(Amount::from_nano(20)),
            ..Default::default()
        });
        assert_eq!(cheap.len(), 2);
        let none = c.list(&OfferFilter {
            service: Some(Service::new("wireguard").unwrap()),
            ..Default::default()
        });
        assert!(none.is_empty());
        let mut held = 0;
        c.each_signed(|_| held += 1);
        assert_eq!(held, 4);
    }
}
