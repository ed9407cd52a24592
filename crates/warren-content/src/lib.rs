//! Warren's publishing core: content ids, a publisher's signed, append-only channel of
//! entries, verified streaming of blobs, and the stores that keep them on disk.
//!
//! - A [`ContentId`] is the BLAKE3 hash of a blob's bytes: the root of its verified-streaming
//!   tree, so pieces can be checked one by one as they arrive ([`blob`]).
//! - A channel is a publisher's feed: entry `n` names the hash of entry `n − 1`, so the
//!   entries form a chain that only its key can extend. [`Channel::append`] takes an entry
//!   only if it is signed by the channel's publisher, is the next in sequence and names the
//!   last entry's hash; anything else (a forgery, a fork, a gap, a replay) is refused with
//!   the reason, and nothing changes.
//! - [`BlobStore`] and [`ChannelStore`] keep blobs, downloads under way and channels in a
//!   node's data dir. Their calls block; the node runs them off its async runtime.

pub mod blob;
pub mod channel;
pub mod feeds;
pub mod store;

pub use channel::{
    Channel, ChannelError, ContentId, Entry, EntryError, EntryHash, MAX_CHANNEL_NAME,
    MAX_MEDIA_TYPE, MAX_TITLE, SignedEntry,
};
pub use feeds::ChannelStore;
pub use store::{BlobStore, Partial, PieceWriter, StoreError};
