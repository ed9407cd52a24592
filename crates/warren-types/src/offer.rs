//! Provider offers: a signed, expiring advertisement of a service and its price.
//!
//! On the wire an offer is a [`SignedOffer`]: the postcard bytes of an [`Offer`] and the
//! provider's signature over a domain tag and those bytes. Nothing in an offer is believed
//! before [`SignedOffer::verify`] has checked its size, shape, signature and times; replays
//! (an older sequence number) are the catalog's to catch, since only it remembers the last.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{NodeId, Price};

/// The most bytes a signed offer may take on the wire; anything longer is refused unread.
pub const MAX_OFFER_BYTES: usize = 2048;
/// The longest an offer may stay valid: a provider must re-sign at least this often.
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// How far in the future an offer's issue time may be, for clocks that disagree.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;
pub const MAX_SERVICES: usize = 8;
pub const MAX_ADDRS: usize = 16;
pub const MAX_ADDR_LEN: usize = 256;
const MAX_SERVICE_LEN: usize = 32;
/// Signatures cover this tag first, so an offer signature can never pass for another kind.
const SIGNING_DOMAIN: &[u8] = b"warren/offer/v1\0";

/// An ISO 3166 alpha-2 country code, upper case. `ZZ` means unknown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    pub const UNKNOWN: Country = Country(*b"ZZ");

    pub fn as_str(&self) -> &str {
        // Only ever built from two ASCII capitals.
        std::str::from_utf8(&self.0).unwrap_or("ZZ")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("country {0:?} is not a two-letter ISO 3166 code such as DE or BR")]
pub struct CountryError(String);

impl FromStr for Country {
    type Err = CountryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.trim().as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
            return Err(CountryError(s.to_string()));
        }
        Ok(Country([
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
        ]))
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({self})")
    }
}

impl Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A service a provider sells, such as `proxy`: lower-case letters, digits and dashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Service(String);

impl Service {
    pub fn proxy() -> Self {
        Service("proxy".to_string())
    }

    /// A payment hub: holds escrows and settles promises (`warren node --hub`).
    pub fn hub() -> Self {
        Service("hub".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn new(name: &str) -> Result<Self, OfferError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_SERVICE_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Service(name.to_string()))
        } else {
            Err(OfferError::BadField("service name"))
        }
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Service::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a provider's traffic leaves from, as the provider declares it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpKind {
    Residential,
    Hosting,
    #[default]
    Unknown,
}

impl FromStr for IpKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "residential" => Ok(IpKind::Residential),
            "hosting" => Ok(IpKind::Hosting),
            "unknown" => Ok(IpKind::Unknown),
            other => Err(format!(
                "ip kind {other:?} is not one of residential, hosting, unknown"
            )),
        }
    }
}

/// What a provider sells, at what price, from where, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub provider: NodeId,
    /// Grows with every offer the provider signs; a lower one than already seen is a replay.
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the offer is void from this second on.
    pub expires_at: u64,
    pub services: Vec<Service>,
    pub price: Price,
    pub country: Country,
    pub ip_kind: IpKind,
    /// Multiaddresses the provider listens on, as text.
    pub addrs: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("offer is {size} bytes, over the limit of {MAX_OFFER_BYTES}")]
    TooLarge { size: usize },
    #[error("offer is malformed: {0}")]
    Malformed(String),
    #[error("offer signature does not match its provider")]
    BadSignature,
    #[error("offer expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("offer is issued in the future ({issued_at}, now {now})")]
    NotYetValid { issued_at: u64, now: u64 },
    #[error("offer lifetime of {secs} s is over the limit of {MAX_LIFETIME_SECS} s")]
    LifetimeTooLong { secs: u64 },
    #[error("offer has a bad {0}")]
    BadField(&'static str),
    #[error("offer sequence {seq} is not newer than {known}, already seen")]
    Replayed { seq: u64, known: u64 },
}

impl Offer {
    fn check_shape(&self) -> Result<(), OfferError> {
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return Err(OfferError::BadField("service list"));
        }
        if self.addrs.len() > MAX_ADDRS || self.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
            return Err(OfferError::BadField("address list"));
        }
        if self.expires_at <= self.issued_at {
            return Err(OfferError::BadField("validity period"));
        }
        let secs = self.expires_at - self.issued_at;
        if secs > MAX_LIFETIME_SECS {
            return Err(OfferError::LifetimeTooLong { secs });
        }
        Ok(())
    }

    pub fn has_service(&self, service: &Service) -> bool {
        self.services.contains(service)
    }
}

/// An offer as it travels: its encoded body and the provider's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOffer {
    body: Vec<u8>,
    signature: Vec<u8>,
}

fn signing_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + body.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(body);
    m
}

impl SignedOffer {
    /// Signs `offer` with `identity`, which must be the offer's provider.
    pub fn sign(offer: &Offer, identity: &crate::Identity) -> Result<Self, OfferError> {
        if offer.provider != identity.node_id() {
            return Err(OfferError::BadField("provider (not the signing identity)"));
        }
        offer.check_shape()?;
        let body = postcard::to_stdvec(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;
        let signature = identity.sign(&signing_bytes(&body)).to_vec();
        let signed = SignedOffer { body, signature };
        let size = signed.to_bytes().len();
        if size > MAX_OFFER_BYTES {
            return Err(OfferError::TooLarge { size });
        }
        Ok(signed)
    }

    /// Decodes wire bytes, refusing oversized input before reading it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OfferError> {
        if bytes.len() > MAX_OFFER_BYTES {
            return Err(OfferError::TooLarge { size: bytes.len() });
        }
        let (signed, rest): (SignedOffer, _) =
            postcard::take_from_bytes(bytes).map_err(|e| OfferError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(OfferError::Malformed("trailing bytes".into()));
        }
        Ok(signed)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding two byte vectors into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// The provider the body names, read without checking anything. Only for recognising
    /// bytes already verified; never trust it otherwise.
    pub fn claimed_provider(&self) -> Option<NodeId> {
        // The body starts with the provider's 32 key bytes (postcard writes the array as
        // it is). They are not checked to be a curve point: that costs a tenth of a
        // signature check, and every copy of an offer that arrives asks this first.
        let key: [u8; 32] = self.body.get(..32)?.try_into().ok()?;
        Some(NodeId::from_public_key_unchecked(key))
    }

    /// Checks shape, signature and validity at `now` (unix seconds).
    pub fn verify(&self, now: u64) -> Result<VerifiedOffer, OfferError> {
        let (offer, rest): (Offer, _) = postcard::take_from_bytes(&self.body)
            .map_err(|e| OfferError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(OfferError::Malformed("trailing bytes in body".into()));
        }
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| OfferError::BadSignature)?;
        if !offer
            .provider
            .verify(&signing_bytes(&self.body), &signature)
        {
            return Err(OfferError::BadSignature);
        }
        offer.check_shape()?;
        if offer.expires_at <= now {
            return Err(OfferError::Expired {
                expires_at: offer.expires_at,
                now,
            });
        }
        if offer.issued_at > now + MAX_CLOCK_SKEW_SECS {
            return Err(OfferError::NotYetValid {
                issued_at: offer.issued_at,
                now,
            });
        }
        Ok(VerifiedOffer {
            offer,
            signed: self.clone(),
        })
    }
}

/// An offer whose signature and times have been checked. Only [`SignedOffer::verify`] makes
/// one, so holding one means the checks passed (at the time they ran).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedOffer {
    offer: Offer,
    signed: SignedOffer,
}

impl VerifiedOffer {
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    pub fn signed(&self) -> &SignedOffer {
        &self.signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Amount, Identity};

    const NOW: u64 = 1_800_000_000;

    fn offer_of(id: &Identity) -> Offer {
        Offer {
            provider: id.node_id(),
            seq: 7,
            issued_at: NOW,
            expires_at: NOW + 180,
            services: vec![Service::proxy()],
            price: Price {
                per_gib: Amount::from_nano(50_000_000),
                per_hour: Amount::from_nano(10_000_000),
            },
            country: "de".parse().unwrap(),
            ip_kind: IpKind::Residential,
            addrs: vec!["/ip4/127.0.0.1/tcp/4451".into()],
        }
    }

    fn resign_body(signed: &SignedOffer, body: Vec<u8>) -> SignedOffer {
        SignedOffer {
            body,
            signature: signed.signature.clone(),
        }
    }

    #[test]
    fn a_signed_offer_verifies_after_a_round_trip() {
        let id = Identity::generate();
        let signed = SignedOffer::sign(&offer_of(&id), &id).unwrap();
        let back = SignedOffer::from_bytes(&signed.to_bytes()).unwrap();
        let v = back.verify(NOW + 1).unwrap();
        assert_eq!(v.offer(), &offer_of(&id));
        assert_eq!(v.offer().country.as_str(), "DE");
    }

    #[test]
    fn the_claimed_provider_is_read_off_the_body_unchecked() {
        let id = Identity::generate();
        let signed = SignedOffer::sign(&offer_of(&id), &id).unwrap();
        assert_eq!(signed.claimed_provider(), Some(id.node_id()));
        let short = SignedOffer {
            body: signed.body[..31].to_vec(),
            signature: signed.signature.clone(),
        };
        assert_eq!(short.claimed_provider(), None);
    }

    #[test]
    fn a_tampered_field_breaks_the_signature() {
        let id = Identity::generate();
        let signed = SignedOffer::sign(&offer_of(&id), &id).unwrap();
        let mut cheaper = offer_of(&id);
        cheaper.price.per_gib = Amount::from_nano(1);
        let forged = resign_body(&signed, postcard::to_stdvec(&cheaper).unwrap());
        assert_eq!(forged.verify(NOW), Err(OfferError::BadSignature));

        let mut flipped = signed.clone();
        let last = flipped.body.len() - 1;
        flipped.body[last] ^= 1;
        assert!(flipped.verify(NOW).is_err());
    }

    #[test]
    fn an_offer_signed_by_another_key_is_refused() {
        let provider = Identity::generate();
        let mallory = Identity::generate();
        // Mallory cannot sign in the provider's name...
        assert!(SignedOffer::sign(&offer_of(&provider), &mallory).is_err());
        // ...and a body naming the provider with Mallory's signature fails verification.
        let body = postcard::to_stdvec(&offer_of(&provider)).unwrap();
        let forged = SignedOffer {
            signature: mallory.sign(&signing_bytes(&body)).to_vec(),
            body,
        };
        assert_eq!(forged.verify(NOW), Err(OfferError::BadSignature));
    }

    #[test]
    fn expired_and_future_offers_are_refused() {
        let id = Identity::generate();
        let signed = SignedOffer::sign(&offer_of(&id), &id).unwrap();
        assert!(matches!(
            signed.verify(NOW + 180),
            Err(OfferError::Expired { .. })
        ));
        assert!(matches!(
            signed.verify(NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(OfferError::NotYetValid { .. })
        ));
        assert!(signed.verify(NOW - MAX_CLOCK_SKEW_SECS).is_ok());
    }

    #[test]
    fn overlong_lifetimes_are_refused_even_when_signed() {
        let id = Identity::generate();
        let mut o = offer_of(&id);
        o.expires_at = o.issued_at + MAX_LIFETIME_SECS + 1;
        let body = postcard::to_stdvec(&o).unwrap();
        let signed = SignedOffer {
            signature: id.sign(&signing_bytes(&body)).to_vec(),
            body,
        };
        assert!(matches!(
            signed.verify(NOW),
            Err(OfferError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn oversized_offers_are_refused() {
        let id = Identity::generate();
        let mut o = offer_of(&id);
        o.addrs = vec!["/dns4/".to_string() + &"a".repeat(240); MAX_ADDRS];
        assert!(matches!(
            SignedOffer::sign(&o, &id),
            Err(OfferError::TooLarge { .. })
        ));
        let big = vec![0u8; MAX_OFFER_BYTES + 1];
        assert!(matches!(
            SignedOffer::from_bytes(&big),
            Err(OfferError::TooLarge { .. })
        ));
        o.addrs = vec!["x".repeat(MAX_ADDR_LEN + 1)];
        assert_eq!(
            SignedOffer::sign(&o, &id),
            Err(OfferError::BadField("address list"))
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&[][..], &[0xff; 10][..], &[3, 1, 2, 3][..]] {
            let r = SignedOffer::from_bytes(bytes).and_then(|s| s.verify(NOW).map(|_| ()));
            assert!(r.is_err());
        }
    }

    #[test]
    fn well_known_services_are_valid_names() {
        assert_eq!(Service::new("proxy"), Ok(Service::proxy()));
        assert_eq!(Service::new("hub"), Ok(Service::hub()));
        assert_eq!(Service::hub().as_str(), "hub");
    }

    #[test]
    fn country_codes_are_checked() {
        assert_eq!("br".parse::<Country>().unwrap().as_str(), "BR");
        assert!("BRA".parse::<Country>().is_err());
        assert!("1A".parse::<Country>().is_err());
    }
}
