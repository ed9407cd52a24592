//! Verified streaming of blobs, without I/O of its own.
//!
//! A blob is cut into pieces of [`PIECE_BYTES`]. A piece travels bao-encoded: the parent
//! hashes from the root down to it, then its 16 KiB chunk groups with the hashes between
//! them. A receiver that knows only the [`ContentId`] checks every chunk group against the
//! root before it writes it anywhere, so a piece from a lying peer is refused whole and
//! nothing of it is kept unverified.

use std::io;
use std::ops::Range;

use bao_tree::io::outboard::{EmptyOutboard, PostOrderOutboard};
use bao_tree::io::sync::{Outboard, OutboardMut, ReadAt, Size, WriteAt};
use bao_tree::io::{DecodeError, EncodeError};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

use crate::ContentId;

/// Chunk groups of 16 × 1 KiB: the unit of verification, and of the outboard's leaves.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// The unit of fetching: one request asks for one piece.
pub const PIECE_BYTES: u64 = 1 << 20;
/// The largest blob a node takes on (a claimed size above it is refused before any disk
/// is set aside for it).
pub const MAX_BLOB_BYTES: u64 = 1 << 40;
/// The longest encoded piece: the data, the hashes inside it (63 pairs for 64 groups) and
/// at most one pair per level above it.
pub const MAX_ENCODED_PIECE: u64 = PIECE_BYTES + 64 * (64 + 64);

/// The hash tree of a blob of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK_SIZE)
}

/// How many pieces a blob of `size` bytes has (an empty blob has one, empty, piece).
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(PIECE_BYTES).max(1)
}

/// The bytes piece `piece` covers.
pub fn piece_bytes(size: u64, piece: u64) -> Range<u64> {
    let start = (piece * PIECE_BYTES).min(size);
    start..(start + PIECE_BYTES).min(size)
}

/// The chunks piece `piece` covers; the last piece runs to the end of the blob, so its
/// short last chunk (and, for an empty blob, the empty one) is included.
fn piece_chunks(size: u64, piece: u64) -> ChunkRanges {
    let start = ChunkNum::full_chunks(piece * PIECE_BYTES);
    if piece + 1 >= piece_count(size) {
        ChunkRanges::from(start..)
    } else {
        ChunkRanges::from(start..ChunkNum::full_chunks((piece + 1) * PIECE_BYTES))
    }
}

/// Why a piece could not be made or taken.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("piece {piece} is out of range: the blob has {pieces} pieces")]
    OutOfRange { piece: u64, pieces: u64 },
    #[error("piece {piece} does not verify against the content id ({reason})")]
    Corrupt { piece: u64, reason: String },
    #[error("piece {piece} is longer than any honest encoding ({len} bytes)")]
    TooLong { piece: u64, len: usize },
    #[error("the blob is larger than {MAX_BLOB_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn check_piece(size: u64, piece: u64) -> Result<(), PieceError> {
    if size > MAX_BLOB_BYTES {
        return Err(PieceError::TooLarge);
    }
    let pieces = piece_count(size);
    if piece >= pieces {
        return Err(PieceError::OutOfRange { piece, pieces });
    }
    Ok(())
}

/// Encodes piece `piece` of a blob from its data and post-order outboard, as they are: the
/// holder trusts what it verified when it took the blob in (hashed whole on import, piece
/// by piece on download), and the receiver checks every chunk group anyway. Rot on the
/// holder's disk is found by the receiver (which refuses the piece) and by the holder's
/// scrub ([`crate::BlobStore::verify`]).
pub fn encode_piece<D: ReadAt + Size, O: ReadAt>(
    id: ContentId,
    size: u64,
    data: D,
    outboard: O,
    piece: u64,
    out: &mut Vec<u8>,
) -> Result<(), PieceError> {
    check_piece(size, piece)?;
    let outboard = PostOrderOutboard {
        root: blake3::Hash::from_bytes(id.0),
        tree: tree(size),
        data: outboard,
    };
    let ranges = piece_chunks(size, piece);
    bao_tree::io::sync::encode_ranges(data, outboard, &ranges, out).map_err(|e| match e {
        EncodeError::Io(e) => PieceError::Io(e),
        other => PieceError::Corrupt {
            piece,
            reason: other.to_string(),
        },
    })
}

/// Checks an encoded piece against `id` and writes its verified bytes into `target` at
/// their offsets in the blob. On error the piece must be treated as missing; whatever was
/// written of it had verified.
pub fn decode_piece<W: WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    target: W,
) -> Result<(), PieceError> {
    let outboard = EmptyOutboard {
        tree: tree(size),
        root: blake3::Hash::from_bytes(id.0),
    };
    decode_into(size, piece, encoded, target, outboard)
}

/// [`decode_piece`], also writing the verified hashes it meets into `outboard` (a post-order
/// outboard being built): once every piece went through here, `outboard` is the blob's
/// whole outboard and the blob need not be hashed again.
pub fn decode_piece_with_outboard<W: WriteAt, O: ReadAt + WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    target: W,
    outboard: O,
) -> Result<(), PieceError> {
    let outboard = PostOrderOutboard {
        root: blake3::Hash::from_bytes(id.0),
        tree: tree(size),
        data: outboard,
    };
    decode_into(size, piece, encoded, target, outboard)
}

/// Decodes against the outboard's root (the content id).
fn decode_into<W: WriteAt, O: OutboardMut + Outboard>(
    size: u64,
    piece: u64,
    encoded: &[u8],
    target: W,
    outboard: O,
) -> Result<(), PieceError> {
    check_piece(size, piece)?;
    if encoded.len() as u64 > MAX_ENCODED_PIECE {
        return Err(PieceError::TooLong {
            piece,
            len: encoded.len(),
        });
    }
    let ranges = piece_chunks(size, piece);
    let mut reader = encoded;
    bao_tree::io::sync::decode_ranges(&mut reader, &ranges, target, outboard).map_err(|e| {
        match e {
            // A short answer is the sender's fault like a wrong one: both are "corrupt".
            DecodeError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => PieceError::Io(e),
            other => PieceError::Corrupt {
                piece,
                reason: other.to_string(),
            },
        }
    })?;
    if !reader.is_empty() {
        return Err(PieceError::Corrupt {
            piece,
            reason: format!("{} bytes after the piece", reader.len()),
        });
    }
    Ok(())
}

/// The length of a post-order outboard of a blob of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    tree(size).outboard_size()
}

/// Computes the post-order outboard of `data` (`size` bytes) into `outboard`; returns the
/// content id.
pub fn outboard(data: impl io::Read, size: u64, outboard: impl io::Write) -> io::Result<ContentId> {
    let hash = bao_tree::io::sync::outboard_post_order(data, tree(size), outboard)?;
    Ok(ContentId(*hash.as_bytes()))
}

#[cfg(test)]
mod tests;
