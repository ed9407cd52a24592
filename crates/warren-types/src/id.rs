//! Node identities: an ed25519 key pair whose public half, written the way libp2p writes a
//! `PeerId`, is the node id everywhere (offers, sessions, payments, channels).

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The libp2p `PeerId` of an ed25519 key is an identity multihash over the protobuf encoding
/// of the public key: `0x00 0x24` (identity, 36 bytes), then `0x08 0x01` (key type ed25519)
/// and `0x12 0x20` (32 bytes of key). Writing it here keeps libp2p out of this crate while
/// the ids stay byte-for-byte the ones libp2p prints.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A node's id: its ed25519 public key. Displays and parses as the libp2p `PeerId` string
/// (`12D3KooW…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    #[error("node id {0:?} is not base58")]
    NotBase58(String),
    #[error("node id {0:?} is not an ed25519 peer id (expected one starting with 12D3KooW)")]
    NotEd25519(String),
    #[error("node id {0:?} does not hold a valid ed25519 public key")]
    BadKey(String),
}

thread_local! {
    /// The key this thread last decoded into a curve point. An offer's provider is decoded
    /// when the offer's body is read and again straight after, to check its signature; the
    /// decoding (a field square root) costs a tenth of the signature check, and every node
    /// checks every offer once.
    static LAST_KEY: Cell<Option<VerifyingKey>> = const { Cell::new(None) };
}

/// `bytes` as a curve point, or `None` when they are not one.
fn decode_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    if let Some(key) = LAST_KEY.get()
        && key.as_bytes() == bytes
    {
        return Some(key);
    }
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    LAST_KEY.set(Some(key));
    Some(key)
}

impl NodeId {
    /// Wraps raw public key bytes, checking that they are a valid curve point.
    pub fn from_public_key(bytes: [u8; 32]) -> Result<Self, NodeIdError> {
        decode_key(&bytes).ok_or_else(|| NodeIdError::BadKey(bs58::encode(bytes).into_string()))?;
        Ok(Self(bytes))
    }

    /// Wraps 32 bytes without checking that they are a key: for recognising bytes
    /// already verified, never for trusting them.
    pub(crate) fn from_public_key_unchecked(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0
    }

    /// Checks `signature` over `message` with this node's key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Some(key) = decode_key(&self.0) else {
            return false;
        };
        key.verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// A short form for people: the last 8 characters of the id.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 38];
        bytes[..6].copy_from_slice(&PEER_ID_PREFIX);
        bytes[6..].copy_from_slice(&self.0);
        f.write_str(&bs58::encode(bytes).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|_| NodeIdError::NotBase58(s.to_string()))?;
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return Err(NodeIdError::NotEd25519(s.to_string()));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Self::from_public_key(key).map_err(|_| NodeIdError::BadKey(s.to_string()))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <[u8; 32]>::deserialize(deserializer)?;
            NodeId::from_public_key(bytes).map_err(serde::de::Error::custom)
        }
    }
}

/// A node's secret key. The 32 secret bytes are also the entropy of its 24-word recovery
/// phrase, so the phrase and the key are one and the same secret.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        // The OS random source failing leaves no safe way to make a key at all.
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        Self::from_secret(secret)
    }

    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self::from_secret(self.secret())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_its_string() {
        let id = Identity::generate().node_id();
        let s = id.to_string();
        assert!(s.starts_with("12D3KooW"), "{s}");
        assert_eq!(s.parse::<NodeId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    }

    #[test]
    fn bad_node_ids_are_refused_with_the_reason() {
        assert!(matches!(
            "0OIl".parse::<NodeId>(),
            Err(NodeIdError::NotBase58(_))
        ));
        assert!(matches!(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse::<NodeId>(),
            Err(NodeIdError::NotEd25519(_))
        ));
    }

    #[test]
    fn the_decoded_key_memo_never_answers_for_other_bytes() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"hello");
        // Decode a's key, then ask about b's: the memo holds a's point.
        let a_id = NodeId::from_public_key(a.node_id().public_key()).unwrap();
        assert!(!b.node_id().verify(b"hello", &sig));
        assert!(a_id.verify(b"hello", &sig));
        // Bytes that are no curve point stay refused right after a valid key was decoded.
        // About half of all y coordinates are on the curve; find one that is not.
        let not_a_point = (1u8..=255)
            .map(|y| [y; 32])
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap();
        assert!(NodeId::from_public_key(not_a_point).is_err());
        assert!(!NodeId::from_public_key_unchecked(not_a_point).verify(b"hello", &sig));
    }

    #[test]
    fn signatures_verify_only_for_the_signer_and_message() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"hello");
        assert!(a.node_id().verify(b"hello", &sig));
        assert!(!a.node_id().verify(b"hellp", &sig));
        assert!(!b.node_id().verify(b"hello", &sig));
    }
}
