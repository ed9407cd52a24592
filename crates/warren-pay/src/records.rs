//! The signed records of payment: a provider's cumulative [`Invoice`] for one session and a
//! consumer's cumulative [`Promise`] against its escrow channel at a hub.
//!
//! Each travels as a postcard body plus an ed25519 signature over a domain string and that
//! body, so an invoice can never be passed off as a promise or the other way round. Bodies
//! are bounded ([`MAX_INVOICE_BYTES`], [`MAX_PROMISE_BYTES`]) and must decode exactly, with
//! no trailing bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warren_types::{Amount, Identity, NodeId, Price};

const PROMISE_DOMAIN: &[u8] = b"warren/promise/v1\0";
const INVOICE_DOMAIN: &[u8] = b"warren/invoice/v1\0";
/// A signed promise is never larger than this on the wire.
pub const MAX_PROMISE_BYTES: usize = 512;
/// A signed invoice's body is never larger than this (a real one is under 200 bytes).
pub const MAX_INVOICE_BYTES: usize = 512;
/// What the envelope (body length prefix and signature) adds to a body on the wire.
const ENVELOPE_OVERHEAD: usize = 80;

/// A consumer's escrow channel at one hub: 16 random bytes chosen when the escrow is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelId(pub [u8; 16]);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// "I owe `provider` a total of `cumulative` from channel `channel` at `hub`."
///
/// Cumulative per (channel, provider) across all sessions: a later promise replaces an
/// earlier one, and the hub pays only the growth over what it already settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub hub: NodeId,
    pub channel: ChannelId,
    pub consumer: NodeId,
    pub provider: NodeId,
    pub cumulative: Amount,
}

/// A promise and the consumer's signature over its postcard encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPromise {
    body: Vec<u8>,
    #[serde(with = "sig_bytes")]
    signature: [u8; 64],
}

/// "For session `session` you owe me `cumulative`": what a provider bills, signed by it.
///
/// Cumulative within one session (it starts from zero at the session's open; the consumer
/// adds its own per-provider base when it promises). `cumulative` is always
/// [`session_cost`](crate::window::session_cost) of the counters and duration the invoice
/// names, at the price it names: the consumer checks that, so an invoice says exactly what
/// it charges for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// The session's id (the 16 bytes of `warren_session::SessionId`).
    pub session: [u8; 16],
    pub provider: NodeId,
    pub consumer: NodeId,
    /// Grows by one with each invoice of the session, from 1.
    pub seq: u64,
    /// Payload bytes consumer → exit the provider counted, since the session opened.
    pub bytes_up: u64,
    /// Payload bytes exit → consumer the provider counted, since the session opened.
    pub bytes_down: u64,
    /// Whole seconds since the session opened, at the provider.
    pub duration_secs: u64,
    /// The price agreed for the session.
    pub price: Price,
    /// What the session has cost so far.
    pub cumulative: Amount,
}

impl Invoice {
    /// What this invoice's counters and duration cost at its price: the one cost formula.
    /// An honest invoice has `cumulative == self.computed_cost()`.
    pub fn computed_cost(&self) -> Amount {
        crate::window::session_cost(
            self.price,
            self.bytes_up,
            self.bytes_down,
            self.duration_secs,
        )
    }
}

/// An invoice and the provider's signature over its postcard encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInvoice {
    body: Vec<u8>,
    #[serde(with = "sig_bytes")]
    signature: [u8; 64],
}

mod sig_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = serde::Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("record is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("record is malformed: {0}")]
    Malformed(String),
    #[error("signature does not verify for the named signer")]
    BadSignature,
    #[error("amount arithmetic overflowed")]
    Overflow,
}

fn signing_bytes(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

/// Encodes `record` and signs it under `domain`; `signer` must be the party the record
/// names as its signer.
fn sign_record<T: Serialize>(
    domain: &[u8],
    record: &T,
    named_signer: NodeId,
    signer: &Identity,
    max: usize,
) -> Result<(Vec<u8>, [u8; 64]), PayError> {
    if signer.node_id() != named_signer {
        return Err(PayError::BadSignature);
    }
    let body = postcard::to_stdvec(record).map_err(|e| PayError::Malformed(e.to_string()))?;
    if body.len() > max {
        return Err(PayError::TooLarge(body.len()));
    }
    let signature = signer.sign(&signing_bytes(domain, &body));
    Ok((body, signature))
}

/// Decodes `body` exactly and checks the signature of the signer it names.
fn verify_record<T: DeserializeOwned>(
    domain: &[u8],
    body: &[u8],
    signature: &[u8; 64],
    max: usize,
    named_signer: impl Fn(&T) -> NodeId,
) -> Result<T, PayError> {
    if body.len() > max {
        return Err(PayError::TooLarge(body.len()));
    }
    let (record, rest): (T, _) =
        postcard::take_from_bytes(body).map_err(|e| PayError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PayError::Malformed(format!(
            "{} bytes after the record",
            rest.len()
        )));
    }
    if !named_signer(&record).verify(&signing_bytes(domain, body), signature) {
        return Err(PayError::BadSignature);
    }
    Ok(record)
}

/// Decodes a signed envelope from the wire, refusing oversized input before decoding.
fn envelope_from_bytes<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, PayError> {
    if bytes.len() > max + ENVELOPE_OVERHEAD {
        return Err(PayError::TooLarge(bytes.len()));
    }
    let (env, rest): (T, _) =
        postcard::take_from_bytes(bytes).map_err(|e| PayError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PayError::Malformed(format!(
            "{} bytes after the record",
            rest.len()
        )));
    }
    Ok(env)
}

impl SignedPromise {
    /// Signs `promise` with the consumer's identity (which must be `promise.consumer`).
    pub fn sign(promise: &Promise, consumer: &Identity) -> Result<Self, PayError> {
        let (body, signature) = sign_record(
            PROMISE_DOMAIN,
            promise,
            promise.consumer,
            consumer,
            MAX_PROMISE_BYTES,
        )?;
        Ok(SignedPromise { body, signature })
    }

    /// Decodes and checks the consumer's signature; only then is the promise trusted.
    pub fn verify(&self) -> Result<Promise, PayError> {
        verify_record(
            PROMISE_DOMAIN,
            &self.body,
            &self.signature,
            MAX_PROMISE_BYTES,
            |p: &Promise| p.consumer,
        )
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the wire form (the signature is checked by [`verify`](Self::verify)).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PayError> {
        envelope_from_bytes(bytes, MAX_PROMISE_BYTES)
    }
}

impl SignedInvoice {
    /// Signs `invoice` with the provider's identity (which must be `invoice.provider`).
    pub fn sign(invoice: &Invoice, provider: &Identity) -> Result<Self, PayError> {
        let (body, signature) = sign_record(
            INVOICE_DOMAIN,
            invoice,
            invoice.provider,
            provider,
            MAX_INVOICE_BYTES,
        )?;
        Ok(SignedInvoice { body, signature })
    }

    /// Decodes and checks the provider's signature; only then is the invoice trusted.
    pub fn verify(&self) -> Result<Invoice, PayError> {
        verify_record(
            INVOICE_DOMAIN,
            &self.body,
            &self.signature,
            MAX_INVOICE_BYTES,
            |i: &Invoice| i.provider,
        )
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the wire form (the signature is checked by [`verify`](Self::verify)).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PayError> {
        envelope_from_bytes(bytes, MAX_INVOICE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn invoice(provider: &Identity, consumer: &Identity) -> Invoice {
        let price = Price {
            per_gib: Amount::from_nano(50_000_000),
            per_hour: Amount::from_nano(3_600_000),
        };
        let mut inv = Invoice {
            session: [7; 16],
            provider: provider.node_id(),
            consumer: consumer.node_id(),
            seq: 3,
            bytes_up: 1 << 20,
            bytes_down: 5 << 20,
            duration_secs: 12,
            price,
            cumulative: Amount::ZERO,
        };
        inv.cumulative = inv.computed_cost();
        inv
    }

    fn promise(consumer: &Identity, provider: &Identity) -> Promise {
        Promise {
            hub: id(9).node_id(),
            channel: ChannelId([1; 16]),
            consumer: consumer.node_id(),
            provider: provider.node_id(),
            cumulative: Amount::from_nano(123_456),
        }
    }

    #[test]
    fn invoice_round_trips_and_verifies() {
        let (p, c) = (id(1), id(2));
        let inv = invoice(&p, &c);
        let signed = SignedInvoice::sign(&inv, &p).unwrap();
        let wire = signed.to_bytes();
        assert!(wire.len() < 300, "{} bytes", wire.len());
        let back = SignedInvoice::from_bytes(&wire).unwrap();
        assert_eq!(back.verify().unwrap(), inv);
    }

    #[test]
    fn invoice_is_signed_only_by_its_provider() {
        let (p, c) = (id(1), id(2));
        let inv = invoice(&p, &c);
        assert_eq!(
            SignedInvoice::sign(&inv, &c),
            Err(PayError::BadSignature),
            "only the named provider may sign"
        );
        let mut signed = SignedInvoice::sign(&inv, &p).unwrap();
        signed.signature[0] ^= 1;
        assert_eq!(signed.verify(), Err(PayError::BadSignature));
    }

    #[test]
    fn a_tampered_invoice_does_not_verify() {
        let (p, c) = (id(1), id(2));
        let signed = SignedInvoice::sign(&invoice(&p, &c), &p).unwrap();
        let mut inflated = invoice(&p, &c);
        inflated.bytes_down += 1 << 30;
        inflated.cumulative = inflated.computed_cost();
        let forged = SignedInvoice {
            body: postcard::to_stdvec(&inflated).unwrap(),
            signature: signed.signature,
        };
        assert_eq!(forged.verify(), Err(PayError::BadSignature));
    }

    #[test]
    fn a_promise_signature_is_not_an_invoice_signature() {
        // Same signer, same bytes signed under the other domain: never accepted.
        let (p, c) = (id(1), id(2));
        let inv = invoice(&p, &c);
        let body = postcard::to_stdvec(&inv).unwrap();
        let signature = p.sign(&signing_bytes(PROMISE_DOMAIN, &body));
        let crossed = SignedInvoice { body, signature };
        assert_eq!(crossed.verify(), Err(PayError::BadSignature));
    }

    #[test]
    fn promise_round_trips_and_refuses_the_wrong_signer() {
        let (p, c) = (id(1), id(2));
        let pr = promise(&c, &p);
        let signed = SignedPromise::sign(&pr, &c).unwrap();
        let back = SignedPromise::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.verify().unwrap(), pr);
        assert_eq!(SignedPromise::sign(&pr, &p), Err(PayError::BadSignature));
    }

    #[test]
    fn oversized_or_trailing_input_is_refused() {
        let (p, c) = (id(1), id(2));
        assert!(matches!(
            SignedInvoice::from_bytes(&vec![0; MAX_INVOICE_BYTES + ENVELOPE_OVERHEAD + 1]),
            Err(PayError::TooLarge(_))
        ));
        assert!(matches!(
            SignedPromise::from_bytes(&vec![0; MAX_PROMISE_BYTES + ENVELOPE_OVERHEAD + 1]),
            Err(PayError::TooLarge(_))
        ));
        let mut wire = SignedInvoice::sign(&invoice(&p, &c), &p)
            .unwrap()
            .to_bytes();
        wire.push(0);
        assert!(matches!(
            SignedInvoice::from_bytes(&wire),
            Err(PayError::Malformed(_))
        ));
        // A body with junk after the record, even if signed, is not a record.
        let mut body = postcard::to_stdvec(&invoice(&p, &c)).unwrap();
        body.push(0);
        let signature = p.sign(&signing_bytes(INVOICE_DOMAIN, &body));
        assert!(matches!(
            SignedInvoice { body, signature }.verify(),
            Err(PayError::Malformed(_))
        ));
        let big = SignedInvoice {
            body: vec![0; MAX_INVOICE_BYTES + 1],
            signature: [0; 64],
        };
        assert!(matches!(big.verify(), Err(PayError::TooLarge(_))));
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            if let Ok(s) = SignedInvoice::from_bytes(&bytes) {
                let _ = s.verify();
            }
            if let Ok(s) = SignedPromise::from_bytes(&bytes) {
                let _ = s.verify();
            }
        }
    }
}
