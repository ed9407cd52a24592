//! The signed records of payment: a consumer's cumulative `Promise` against its escrow
//! channel at a hub. (Invoices, signed by providers, live beside it.)

use serde::{Deserialize, Serialize};
use warren_types::{Amount, Identity, NodeId};

const PROMISE_DOMAIN: &[u8] = b"warren/promise/v1\0";
/// A signed promise is never larger than this on the wire.
pub const MAX_PROMISE_BYTES: usize = 512;

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

impl SignedPromise {
    /// Signs `promise` with the consumer's identity (which must be `promise.consumer`).
    pub fn sign(promise: &Promise, consumer: &Identity) -> Result<Self, PayError> {
        if consumer.node_id() != promise.consumer {
            return Err(PayError::BadSignature);
        }
        let body = postcard::to_stdvec(promise).map_err(|e| PayError::Malformed(e.to_string()))?;
        let signature = consumer.sign(&signing_bytes(PROMISE_DOMAIN, &body));
        Ok(SignedPromise { body, signature })
    }

    /// Decodes and checks the consumer's signature; only then is the promise trusted.
    pub fn verify(&self) -> Result<Promise, PayError> {
        if self.body.len() > MAX_PROMISE_BYTES {
            return Err(PayError::TooLarge(self.body.len()));
        }
        let promise: Promise =
            postcard::from_bytes(&self.body).map_err(|e| PayError::Malformed(e.to_string()))?;
        if !promise
            .consumer
            .verify(&signing_bytes(PROMISE_DOMAIN, &self.body), &self.signature)
        {
            return Err(PayError::BadSignature);
        }
        Ok(promise)
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PayError> {
        if bytes.len() > MAX_PROMISE_BYTES + 80 {
            return Err(PayError::TooLarge(bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| PayError::Malformed(e.to_string()))
    }
}
