//! Verified streaming of blobs, without I/O of its own.
//!
//! A blob is cut into pieces of [`PIECE_BYTES`]. A piece travels bao-encoded: the parent
//! hashes from the root down to it, then its 16 KiB chunk groups with the hashes between
//! them. A receiver that knows only the [`ContentId`] checks every chunk group against the
//! root before it writes it anywhere, so a piece from a lying peer is refused whole and
//! nothing of it is kept unverified.

use std::io;
use std::ops::Range;

use bao_tree::io::EncodeError;
use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{ReadAt, Size, WriteAt};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};

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

/// Encodes piece `piece` of a blob from its data and post-order outboard, as they are, and
/// appends it to `out`: the holder trusts what it verified when it took the blob in (hashed
/// whole on import, piece by piece on download), and the receiver checks every chunk group
/// anyway. Rot on the holder's disk is found by the receiver (which refuses the piece) and
/// by the holder's scrub ([`crate::BlobStore::verify`]).
pub fn encode_piece<D: ReadAt + Size, O: ReadAt>(
    id: ContentId,
    size: u64,
    data: D,
    outboard: O,
    piece: u64,
    out: &mut Vec<u8>,
) -> Result<(), PieceError> {
    let start = out.len();
    encode_piece_at(id, size, data, outboard, piece, out, start)
}

/// [`encode_piece`] written over `out` from `start` on (at most `out.len()`), reusing the
/// bytes there, and `out` cut to the piece's end: a buffer reused from piece to piece is
/// not cleared first (a piece is a megabyte of zeroes).
///
/// The output is bao-tree's `encode_ranges` byte for byte. Each chunk group is read
/// straight into `out`, and the piece's hashes with one read per run of adjacent ones.
pub fn encode_piece_at<D: ReadAt + Size, O: ReadAt>(
    id: ContentId,
    size: u64,
    data: D,
    outboard: O,
    piece: u64,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), PieceError> {
    assert!(start <= out.len(), "encode_piece_at: start past the buffer");
    check_piece(size, piece)?;
    let tree = tree(size);
    let chunks = piece_chunks(size, piece);
    let ranges = bao_tree::io::sync::truncate_ranges(&chunks, size);
    let corrupt = |reason: String| PieceError::Corrupt { piece, reason };
    let nodes: Vec<TreeNode> = tree
        .ranges_pre_order_chunks_iter_ref(ranges, 0)
        .filter_map(|item| match item {
            BaoChunk::Parent { node, .. } => Some(node),
            BaoChunk::Leaf { .. } => None,
        })
        .collect();
    let mut pairs = read_pairs(tree, &outboard, &nodes)?.into_iter();
    let mut at = start;
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        let len = match &item {
            BaoChunk::Parent { .. } => 64,
            BaoChunk::Leaf { size, .. } => *size,
        };
        if out.len() < at + len {
            out.resize(at + len, 0);
        }
        let slot = &mut out[at..at + len];
        match item {
            BaoChunk::Parent { node, .. } => {
                let pair = pairs.next().flatten();
                slot.copy_from_slice(
                    &pair.ok_or_else(|| corrupt(format!("no hashes for node {node:?}")))?,
                );
            }
            BaoChunk::Leaf {
                start_chunk,
                ranges,
                ..
            } if ranges.is_all() => {
                data.read_exact_at(start_chunk.to_bytes(), slot)?;
            }
            BaoChunk::Leaf { .. } => {
                // Part of a chunk group (not at a piece's bounds): the library's encoder.
                out.truncate(start);
                let outboard = PostOrderOutboard {
                    root: blake3::Hash::from_bytes(id.0),
                    tree,
                    data: outboard,
                };
                return bao_tree::io::sync::encode_ranges(data, outboard, &chunks, out).map_err(
                    |e| match e {
                        EncodeError::Io(e) => PieceError::Io(e),
                        other => corrupt(other.to_string()),
                    },
                );
            }
        }
        at += len;
    }
    out.truncate(at);
    Ok(())
}

/// The hash pairs of `nodes` in a post-order outboard, in order (`None` where the tree has
/// no pair for a node), read with one call per run of adjacent pairs: a piece's own hashes
/// sit together, only those above it are scattered.
fn read_pairs<O: ReadAt>(
    tree: BaoTree,
    outboard: &O,
    nodes: &[TreeNode],
) -> io::Result<Vec<Option<[u8; 64]>>> {
    let mut found = vec![None; nodes.len()];
    let mut at: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((tree.post_order_offset(*n)?.value(), i)))
        .collect();
    at.sort_unstable();
    let mut buf = Vec::new();
    for run in at.chunk_by(|a, b| b.0 == a.0 + 1) {
        buf.resize(run.len() * 64, 0);
        outboard.read_exact_at(run[0].0 * 64, &mut buf)?;
        for ((_, i), pair) in run.iter().zip(buf.chunks_exact(64)) {
            found[*i] = Some(pair.try_into().expect("64 bytes"));
        }
    }
    Ok(found)
}

/// Writes verified hash pairs into a post-order outboard, one call per run of adjacent
/// pairs.
fn write_pairs<O: WriteAt>(
    tree: BaoTree,
    outboard: &mut O,
    pairs: &[(TreeNode, [u8; 64])],
) -> io::Result<()> {
    let mut at: Vec<(u64, &[u8; 64])> = pairs
        .iter()
        .filter_map(|(n, pair)| Some((tree.post_order_offset(*n)?.value(), pair)))
        .collect();
    at.sort_unstable_by_key(|(offset, _)| *offset);
    at.dedup_by_key(|(offset, _)| *offset);
    let mut buf = Vec::new();
    for run in at.chunk_by(|a, b| b.0 == a.0 + 1) {
        buf.clear();
        for (_, pair) in run {
            buf.extend_from_slice(&pair[..]);
        }
        outboard.write_all_at(run[0].0 * 64, &buf)?;
    }
    Ok(())
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
    decode_into(id, size, piece, encoded, target, None::<&mut [u8]>)
}

/// [`decode_piece`], also writing the verified hashes it meets into `outboard` (a post-order
/// outboard being built): once every piece went through here, `outboard` is the blob's
/// whole outboard and the blob need not be hashed again.
pub fn decode_piece_with_outboard<W: WriteAt, O: WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    target: W,
    outboard: O,
) -> Result<(), PieceError> {
    decode_into(id, size, piece, encoded, target, Some(outboard))
}

/// Decodes against the content id, as bao-tree's `decode_ranges` does, but straight from
/// `encoded` (no copy of each chunk group through a buffer); the hashes go into `outboard`
/// once the whole piece verified, one write per run of adjacent ones.
fn decode_into<W: WriteAt, O: WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    mut target: W,
    outboard: Option<O>,
) -> Result<(), PieceError> {
    check_piece(size, piece)?;
    if encoded.len() as u64 > MAX_ENCODED_PIECE {
        return Err(PieceError::TooLong {
            piece,
            len: encoded.len(),
        });
    }
    let corrupt = |reason: String| PieceError::Corrupt { piece, reason };
    let tree = tree(size);
    let chunks = piece_chunks(size, piece);
    let ranges = bao_tree::io::sync::truncate_ranges(&chunks, size);
    // The hashes still to be checked against, the next one on top.
    let mut stack = vec![blake3::Hash::from_bytes(id.0)];
    let mut pairs: Vec<(TreeNode, [u8; 64])> = Vec::new();
    let mut rest = encoded;
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        let Some(want) = stack.pop() else {
            break;
        };
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let (pair, tail) = rest
                    .split_first_chunk::<64>()
                    .ok_or_else(|| corrupt(format!("it ends inside the hashes of {node:?}")))?;
                rest = tail;
                let (l, r) = pair.split_at(32);
                let l = blake3::Hash::from_slice(l).expect("32 bytes");
                let r = blake3::Hash::from_slice(r).expect("32 bytes");
                if parent_cv(&l, &r, is_root) != want {
                    return Err(corrupt(format!("the hashes of {node:?} do not match")));
                }
                if right {
                    stack.push(r);
                }
                if left {
                    stack.push(l);
                }
                pairs.push((node, *pair));
            }
            BaoChunk::Leaf {
                start_chunk,
                size: len,
                is_root,
                ..
            } => {
                if rest.len() < len {
                    return Err(corrupt(format!(
                        "it ends inside the chunk group at byte {}",
                        start_chunk.to_bytes()
                    )));
                }
                let (data, tail) = rest.split_at(len);
                rest = tail;
                if hash_subtree(start_chunk.0, data, is_root) != want {
                    return Err(corrupt(format!(
                        "the chunk group at byte {} does not match its hash",
                        start_chunk.to_bytes()
                    )));
                }
                target.write_all_at(start_chunk.to_bytes(), data)?;
            }
        }
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the piece", rest.len())));
    }
    if let Some(mut outboard) = outboard {
        write_pairs(tree, &mut outboard, &pairs)?;
    }
    Ok(())
}

/// The BLAKE3 chaining value of the chunks from `start_chunk` on (the hash itself when they
/// are the whole blob).
fn hash_subtree(start_chunk: u64, data: &[u8], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::HasherExt;
    if is_root {
        return blake3::hash(data);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start_chunk * 1024);
    hasher.update(data);
    blake3::Hash::from(hasher.finalize_non_root())
}

/// The BLAKE3 chaining value of a parent from its children's.
fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{Mode, merge_subtrees_non_root, merge_subtrees_root};
    let (left, right) = (left.as_bytes(), right.as_bytes());
    if is_root {
        merge_subtrees_root(left, right, Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(left, right, Mode::Hash))
    }
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
