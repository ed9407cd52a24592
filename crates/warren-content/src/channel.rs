//! Content ids, signed channel entries, and the channel that checks them into a chain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use warren_types::{Identity, NodeId};

/// Signatures over entries start with this, so an entry's signature means nothing elsewhere.
const ENTRY_DOMAIN: &[u8] = b"warren/channel-entry/v1\0";
/// Longest title, in bytes.
pub const MAX_TITLE: usize = 256;
/// Longest media type (`video/mp4`), in bytes.
pub const MAX_MEDIA_TYPE: usize = 64;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 64;
/// A signed entry's body is never larger than this.
const MAX_BODY: usize = 1024;

/// A blob's id: the BLAKE3 hash of its bytes. Shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentId(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| format!("{s:?} is not a content id (64 hex digits)"))?;
        let id: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a content id (64 hex digits)"))?;
        Ok(ContentId(id))
    }
}

/// The hash of a signed entry (body and signature): what the next entry names as `prev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryHash(pub [u8; 32]);

/// One publication in a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub publisher: NodeId,
    /// The channel's name, as its publisher calls it (the key is the channel's identity).
    pub channel: String,
    /// 0 for the first entry, then one more each time.
    pub seq: u64,
    /// The hash of entry `seq − 1`; `None` only for entry 0.
    pub prev: Option<EntryHash>,
    pub content: ContentId,
    pub title: String,
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// Unix seconds, as the publisher's clock said.
    pub published_at: u64,
}

/// Why an entry could not be read or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the entry is malformed: {0}")]
    Malformed(String),
    #[error("the entry is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the entry's {0} is too long")]
    FieldTooLong(&'static str),
    #[error("the entry's signature does not verify under its publisher's key")]
    BadSignature,
    #[error("only the publisher's own key can sign its entries")]
    NotPublisher,
}

/// An entry with its publisher's signature, as it is stored and sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl fmt::Debug for SignedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedEntry")
            .field("body_len", &self.body.len())
            .finish()
    }
}

fn signing_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENTRY_DOMAIN.len() + body.len());
    m.extend_from_slice(ENTRY_DOMAIN);
    m.extend_from_slice(body);
    m
}

fn check_shape(entry: &Entry) -> Result<(), EntryError> {
    if entry.title.len() > MAX_TITLE {
        return Err(EntryError::FieldTooLong("title"));
    }
    if entry.media_type.len() > MAX_MEDIA_TYPE {
        return Err(EntryError::FieldTooLong("media type"));
    }
    if entry.channel.len() > MAX_CHANNEL_NAME {
        return Err(EntryError::FieldTooLong("channel name"));
    }
    if (entry.seq == 0) != entry.prev.is_none() {
        return Err(EntryError::Malformed(
            "only entry 0 has no previous entry".into(),
        ));
    }
    Ok(())
}

impl SignedEntry {
    /// Signs `entry` with `publisher`, which must be the entry's publisher.
    pub fn sign(entry: &Entry, publisher: &Identity) -> Result<Self, EntryError> {
        if entry.publisher != publisher.node_id() {
            return Err(EntryError::NotPublisher);
        }
        check_shape(entry)?;
        let body = postcard::to_stdvec(entry).map_err(|e| EntryError::Malformed(e.to_string()))?;
        if body.len() > MAX_BODY {
            return Err(EntryError::TooLarge);
        }
        let signature = publisher.sign(&signing_bytes(&body)).to_vec();
        Ok(SignedEntry { body, signature })
    }

    /// Checks the signature and the shape; the entry it holds.
    pub fn verify(&self) -> Result<Entry, EntryError> {
        if self.body.len() > MAX_BODY {
            return Err(EntryError::TooLarge);
        }
        let (entry, rest): (Entry, &[u8]) = postcard::take_from_bytes(&self.body)
            .map_err(|e| EntryError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EntryError::Malformed("trailing bytes".into()));
        }
        check_shape(&entry)?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EntryError::BadSignature)?;
        if !entry
            .publisher
            .verify(&signing_bytes(&self.body), &signature)
        {
            return Err(EntryError::BadSignature);
        }
        Ok(entry)
    }

    /// The hash the next entry names as `prev`.
    pub fn hash(&self) -> EntryHash {
        let mut h = blake3::Hasher::new();
        h.update(&(self.body.len() as u64).to_le_bytes());
        h.update(&self.body);
        h.update(&self.signature);
        EntryHash(*h.finalize().as_bytes())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses wire bytes (bounded); [`verify`](Self::verify) still has to be called.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_BODY + 80 {
            return Err(EntryError::TooLarge);
        }
        let (signed, rest): (SignedEntry, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EntryError::Malformed("trailing bytes".into()));
        }
        Ok(signed)
    }
}

/// Why a channel refused an entry. Nothing changes when one is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error("the entry is by {got}, not by this channel's publisher")]
    WrongPublisher { got: NodeId },
    #[error("entry #{got} is a replay: the channel already holds it")]
    Replay { got: u64 },
    #[error(
        "entry #{got} is a fork: the channel already holds a different entry #{got} from this publisher"
    )]
    Fork { got: u64 },
    #[error("entry #{got} is out of order: the next entry is #{expected}")]
    OutOfOrder { got: u64, expected: u64 },
    #[error("entry #{got} does not name the previous entry's hash")]
    BrokenChain { got: u64 },
}

/// A publisher's channel as a node holds it: the chain of verified entries from #0.
#[derive(Debug, Clone)]
pub struct Channel {
    publisher: NodeId,
    entries: Vec<SignedEntry>,
    /// The entries' decoded bodies, beside them.
    decoded: Vec<Entry>,
}

impl Channel {
    /// An empty channel of `publisher`.
    pub fn new(publisher: NodeId) -> Self {
        Channel {
            publisher,
            entries: Vec::new(),
            decoded: Vec::new(),
        }
    }

    pub fn publisher(&self) -> NodeId {
        self.publisher
    }

    /// How many entries it holds (the next entry's `seq`).
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.decoded
    }

    pub fn signed(&self) -> &[SignedEntry] {
        &self.entries
    }

    /// Checks `signed` and, if it is this channel's next entry, appends it; returns the
    /// entry. A copy of an entry held already is a [`ChannelError::Replay`], a different
    /// entry under a held `seq` a [`ChannelError::Fork`].
    pub fn append(&mut self, signed: SignedEntry) -> Result<&Entry, ChannelError> {
        let entry = signed.verify()?;
        if entry.publisher != self.publisher {
            return Err(ChannelError::WrongPublisher {
                got: entry.publisher,
            });
        }
        let next = self.len();
        if entry.seq < next {
            let held = usize::try_from(entry.seq)
                .ok()
                .and_then(|i| self.entries.get(i));
            return Err(if held == Some(&signed) {
                ChannelError::Replay { got: entry.seq }
            } else {
                ChannelError::Fork { got: entry.seq }
            });
        }
        if entry.seq > next {
            return Err(ChannelError::OutOfOrder {
                got: entry.seq,
                expected: next,
            });
        }
        if entry.prev != self.entries.last().map(SignedEntry::hash) {
            return Err(ChannelError::BrokenChain { got: entry.seq });
        }
        self.entries.push(signed);
        self.decoded.push(entry);
        Ok(self.decoded.last().expect("just pushed"))
    }

    /// Builds the next entry of this channel for `content`, signed by `publisher`, and
    /// appends it.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        publisher: &Identity,
        channel: &str,
        content: ContentId,
        title: &str,
        media_type: &str,
        size: u64,
        published_at: u64,
    ) -> Result<SignedEntry, ChannelError> {
        let entry = Entry {
            publisher: publisher.node_id(),
            channel: channel.to_string(),
            seq: self.len(),
            prev: self.entries.last().map(SignedEntry::hash),
            content,
            title: title.to_string(),
            media_type: media_type.to_string(),
            size,
            published_at,
        };
        let signed = SignedEntry::sign(&entry, publisher)?;
        self.append(signed.clone())?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests;
