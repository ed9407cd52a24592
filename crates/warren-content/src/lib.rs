//! Warren's publishing core, without I/O: content ids and a publisher's signed, append-only
//! channel of entries.
//!
//! - A [`ContentId`] is the BLAKE3 hash of a blob's bytes (the root of its verified-streaming
//!   tree, so chunks can be checked one by one as they arrive).
//! - A channel is a publisher's feed: entry `n` names the hash of entry `n − 1`, so the
//!   entries form a chain that only its key can extend. [`Channel::append`] takes an entry
//!   only if it is signed by the channel's publisher, is the next in sequence and names the
//!   last entry's hash; anything else (a forgery, a fork, a gap, a replay) is refused with
//!   the reason, and nothing changes.

pub mod channel;

pub use channel::{
    Channel, ChannelError, ContentId, Entry, EntryError, EntryHash, MAX_MEDIA_TYPE, MAX_TITLE,
    SignedEntry,
};
