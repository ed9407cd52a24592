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

/// Encodes piece `piece` of a blob from its data and post-order outboard, as they are,
/// over `out` from `start` on (at most `out.len()`), reusing the bytes there, and cuts `out`
/// to the piece's end: a buffer reused from piece to piece is not cleared first (a piece is
/// a megabyte of zeroes). The holder trusts what it verified when it took the blob in
/// (hashed whole on import, piece by piece on download), and the receiver checks every
/// chunk group anyway. Rot on the holder's disk is found by the receiver (which refuses the
/// piece) and by the holder's scrub ([`crate::BlobStore::verify`]).
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
    let corrupt = |reason: String| PieceError::Corrupt { piece, reason };
    let steps = steps(tree, size, piece);
    if steps
        .iter()
        .any(|s| matches!(s, Step::Group { whole: false, .. }))
    {
        // Part of a chunk group (not at a piece's bounds): the library's encoder.
        out.truncate(start);
        let outboard = PostOrderOutboard {
            root: blake3::Hash::from_bytes(id.0),
            tree,
            data: outboard,
        };
        let chunks = piece_chunks(size, piece);
        return bao_tree::io::sync::encode_ranges(data, outboard, &chunks, out).map_err(
            |e| match e {
                EncodeError::Io(e) => PieceError::Io(e),
                other => corrupt(other.to_string()),
            },
        );
    }
    let nodes: Vec<TreeNode> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Pair { node, .. } => Some(*node),
            Step::Group { .. } => None,
        })
        .collect();
    let mut pairs = read_pairs(tree, &outboard, &nodes)?.into_iter();
    let mut at = start;
    for step in steps {
        let len = step.bytes();
        if out.len() < at + len {
            out.resize(at + len, 0);
        }
        let slot = &mut out[at..at + len];
        match step {
            Step::Pair { node, .. } => {
                let pair = pairs.next().flatten();
                slot.copy_from_slice(
                    &pair.ok_or_else(|| corrupt(format!("no hashes for node {node:?}")))?,
                );
            }
            Step::Group { start_chunk, .. } => {
                data.read_exact_at(start_chunk.to_bytes(), slot)?;
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
/// their offsets in the blob. On error the piece must be treated as missing; nothing of
/// it was written.
pub fn decode_piece<W: WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    mut target: W,
) -> Result<(), PieceError> {
    let verified = decode_slice(id, size, piece, encoded, PieceBuf::new())?;
    target.write_all_at(verified.offset(), verified.bytes())?;
    Ok(())
}

/// [`decode_piece`], also writing the verified hashes it meets into `outboard` (a post-order
/// outboard being built): once every piece went through here, `outboard` is the blob's
/// whole outboard and the blob need not be hashed again.
pub fn decode_piece_with_outboard<W: WriteAt, O: WriteAt>(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    mut target: W,
    outboard: O,
) -> Result<(), PieceError> {
    let verified = decode_slice(id, size, piece, encoded, PieceBuf::new())?;
    target.write_all_at(verified.offset(), verified.bytes())?;
    verified.write_hashes(outboard)?;
    Ok(())
}

/// Runs a [`PieceDecoder`] over a whole encoded piece held in memory, into `buf`.
pub fn decode_slice(
    id: ContentId,
    size: u64,
    piece: u64,
    encoded: &[u8],
    buf: PieceBuf,
) -> Result<VerifiedPiece, PieceError> {
    if encoded.len() as u64 > MAX_ENCODED_PIECE {
        return Err(PieceError::TooLong {
            piece,
            len: encoded.len(),
        });
    }
    let mut decoder = PieceDecoder::new(id, size, piece, buf)?;
    let mut rest = encoded;
    while let Some(need) = decoder.need() {
        let (now, tail) = rest.split_at_checked(need.bytes()).ok_or_else(|| {
            decoder.corrupt(format!("it ends {} bytes short", need.bytes() - rest.len()))
        })?;
        rest = tail;
        match need {
            Need::Pair => decoder.pair(now.try_into().expect("64 bytes"))?,
            Need::Group(_) => {
                decoder.group_slot().copy_from_slice(now);
                decoder.group()?;
            }
        }
    }
    if !rest.is_empty() {
        return Err(decoder.corrupt(format!("{} bytes after the piece", rest.len())));
    }
    decoder.finish()
}

/// Alignment of a [`PieceBuf`]'s bytes: what a direct (`O_DIRECT`) write needs of its
/// buffer's address and length, and of the file offset (pieces start at multiples of it).
pub const PIECE_ALIGN: usize = 4096;

/// Room for one piece's bytes at an address aligned to [`PIECE_ALIGN`], with the padding
/// to a multiple of it, so a direct write can take them as they are. Reused from piece to
/// piece.
#[derive(Debug)]
pub struct PieceBuf {
    bytes: Vec<u8>,
}

impl Default for PieceBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PieceBuf {
    pub fn new() -> PieceBuf {
        PieceBuf {
            bytes: vec![0u8; PIECE_BYTES as usize + PIECE_ALIGN],
        }
    }

    /// The aligned window's first `len` bytes (at most a piece, padded).
    fn window(&mut self, len: usize) -> &mut [u8] {
        let skip = self.bytes.as_ptr().align_offset(PIECE_ALIGN);
        &mut self.bytes[skip..skip + len]
    }

    fn window_ref(&self, len: usize) -> &[u8] {
        let skip = self.bytes.as_ptr().align_offset(PIECE_ALIGN);
        &self.bytes[skip..skip + len]
    }
}

/// What a [`PieceDecoder`] takes next from the encoded piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A parent's pair of hashes: 64 bytes, for [`PieceDecoder::pair`].
    Pair,
    /// A chunk group of this many bytes, read into [`PieceDecoder::group_slot`] and then
    /// checked by [`PieceDecoder::group`].
    Group(usize),
}

impl Need {
    /// How many encoded bytes it is.
    pub fn bytes(self) -> usize {
        match self {
            Need::Pair => 64,
            Need::Group(len) => len,
        }
    }
}

/// One step of a piece's encoding, in the order bao-tree sends them (pre-order).
#[derive(Clone, Copy, Debug)]
enum Step {
    Pair {
        node: TreeNode,
        is_root: bool,
        left: bool,
        right: bool,
    },
    Group {
        start_chunk: ChunkNum,
        len: usize,
        is_root: bool,
        /// The whole group is asked for (always, for a piece's ranges).
        whole: bool,
    },
}

impl Step {
    /// Its encoded length.
    fn bytes(self) -> usize {
        match self {
            Step::Pair { .. } => 64,
            Step::Group { len, .. } => len,
        }
    }
}

/// The steps of piece `piece`'s encoding.
fn steps(tree: BaoTree, size: u64, piece: u64) -> Vec<Step> {
    let chunks = piece_chunks(size, piece);
    let ranges = bao_tree::io::sync::truncate_ranges(&chunks, size);
    tree.ranges_pre_order_chunks_iter_ref(ranges, 0)
        .map(|item| match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => Step::Pair {
                node,
                is_root,
                left,
                right,
            },
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ranges,
            } => Step::Group {
                start_chunk,
                len: size,
                is_root,
                whole: ranges.is_all(),
            },
        })
        .collect()
}

/// Verifies one piece as its bao-tree encoding arrives, without I/O: the caller reads
/// what [`PieceDecoder::need`] asks for and hands it over; chunk groups are read straight
/// into the piece's aligned buffer ([`PieceDecoder::group_slot`]) and checked there, so
/// the bytes cross memory once and are hashed while in cache. It checks what bao-tree's
/// `decode_ranges` checks (every pair against its parent, every group against its hash,
/// from the content id down) and only a finished piece becomes a [`VerifiedPiece`]: no
/// unverified byte leaves it.
#[derive(Debug)]
pub struct PieceDecoder {
    id: ContentId,
    size: u64,
    piece: u64,
    tree: BaoTree,
    steps: Vec<Step>,
    next: usize,
    /// The hashes still to be checked against, the next one on top.
    stack: Vec<blake3::Hash>,
    pairs: Vec<(TreeNode, [u8; 64])>,
    buf: PieceBuf,
}

impl PieceDecoder {
    /// A decoder for piece `piece` of the blob `id`, `size` bytes long, into `buf`.
    pub fn new(
        id: ContentId,
        size: u64,
        piece: u64,
        buf: PieceBuf,
    ) -> Result<PieceDecoder, PieceError> {
        check_piece(size, piece)?;
        let tree = tree(size);
        let steps = steps(tree, size, piece);
        Ok(PieceDecoder {
            id,
            size,
            piece,
            tree,
            steps,
            next: 0,
            stack: vec![blake3::Hash::from_bytes(id.0)],
            pairs: Vec::new(),
            buf,
        })
    }

    /// What comes next, or `None` once the piece is whole.
    pub fn need(&self) -> Option<Need> {
        if self.stack.is_empty() {
            return None;
        }
        match self.steps.get(self.next)? {
            Step::Pair { .. } => Some(Need::Pair),
            Step::Group { len, .. } => Some(Need::Group(*len)),
        }
    }

    /// Takes the pair of hashes [`Need::Pair`] asked for.
    ///
    /// # Panics
    /// If the decoder did not ask for a pair.
    pub fn pair(&mut self, pair: &[u8; 64]) -> Result<(), PieceError> {
        let Some(&Step::Pair {
            node,
            is_root,
            left,
            right,
        }) = self.steps.get(self.next)
        else {
            panic!("PieceDecoder::pair called when it needs {:?}", self.need());
        };
        let want = self.stack.pop().expect("need() checked the stack");
        let (l, r) = pair.split_at(32);
        let l = blake3::Hash::from_slice(l).expect("32 bytes");
        let r = blake3::Hash::from_slice(r).expect("32 bytes");
        if parent_cv(&l, &r, is_root) != want {
            self.stack.clear();
            return Err(self.corrupt(format!("the hashes of {node:?} do not match")));
        }
        if right {
            self.stack.push(r);
        }
        if left {
            self.stack.push(l);
        }
        self.pairs.push((node, *pair));
        self.next += 1;
        Ok(())
    }

    /// Where the chunk group [`Need::Group`] asked for goes: read it in, then call
    /// [`PieceDecoder::group`].
    ///
    /// # Panics
    /// If the decoder did not ask for a chunk group.
    pub fn group_slot(&mut self) -> &mut [u8] {
        let (start_chunk, len, _) = self.next_group("group_slot");
        let at = (start_chunk.to_bytes() - self.offset()) as usize;
        &mut self.buf.window(at + len)[at..]
    }

    /// The chunk group asked for next: its first chunk, its length, whether it is the whole
    /// blob.
    fn next_group(&self, caller: &str) -> (ChunkNum, usize, bool) {
        match self.steps.get(self.next) {
            Some(&Step::Group {
                start_chunk,
                len,
                is_root,
                ..
            }) => (start_chunk, len, is_root),
            _ => panic!(
                "PieceDecoder::{caller} called when it needs {:?}",
                self.need()
            ),
        }
    }

    /// Checks the chunk group read into [`PieceDecoder::group_slot`].
    ///
    /// # Panics
    /// If the decoder did not ask for a chunk group.
    pub fn group(&mut self) -> Result<(), PieceError> {
        let (start_chunk, len, is_root) = self.next_group("group");
        let want = self.stack.pop().expect("need() checked the stack");
        let at = (start_chunk.to_bytes() - self.offset()) as usize;
        let data = &self.buf.window_ref(at + len)[at..];
        if hash_subtree(start_chunk.0, data, is_root) != want {
            self.stack.clear();
            return Err(self.corrupt(format!(
                "the chunk group at byte {} does not match its hash",
                start_chunk.to_bytes()
            )));
        }
        self.next += 1;
        Ok(())
    }

    /// The piece, once [`PieceDecoder::need`] has nothing more to ask.
    pub fn finish(mut self) -> Result<VerifiedPiece, PieceError> {
        if let Some(need) = self.need() {
            return Err(self.corrupt(format!("it stops before a {}-byte part", need.bytes())));
        }
        if self.next != self.steps.len() {
            return Err(self.corrupt("a hash check failed".into()));
        }
        let len = self.len();
        let padded = len.next_multiple_of(PIECE_ALIGN);
        self.buf.window(padded)[len..].fill(0);
        Ok(VerifiedPiece {
            id: self.id,
            size: self.size,
            piece: self.piece,
            tree: self.tree,
            pairs: self.pairs,
            buf: self.buf,
        })
    }

    /// The error for this piece's sender.
    pub fn corrupt(&self, reason: String) -> PieceError {
        PieceError::Corrupt {
            piece: self.piece,
            reason,
        }
    }

    fn offset(&self) -> u64 {
        piece_bytes(self.size, self.piece).start
    }

    fn len(&self) -> usize {
        let r = piece_bytes(self.size, self.piece);
        (r.end - r.start) as usize
    }
}

/// A piece whose every byte and hash checked against its content id ([`PieceDecoder`]).
#[derive(Debug)]
pub struct VerifiedPiece {
    id: ContentId,
    size: u64,
    piece: u64,
    tree: BaoTree,
    pairs: Vec<(TreeNode, [u8; 64])>,
    buf: PieceBuf,
}

impl VerifiedPiece {
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// The size of the blob it belongs to.
    pub fn blob_size(&self) -> u64 {
        self.size
    }

    pub fn piece(&self) -> u64 {
        self.piece
    }

    /// Where its bytes go in the blob.
    pub fn offset(&self) -> u64 {
        piece_bytes(self.size, self.piece).start
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        let r = piece_bytes(self.size, self.piece);
        self.buf.window_ref((r.end - r.start) as usize)
    }

    /// Its bytes and zeroes up to a multiple of [`PIECE_ALIGN`], at an aligned address: a
    /// direct write takes them as they are (the file is cut to the blob's size at the end).
    pub fn padded(&self) -> &[u8] {
        self.buf
            .window_ref(self.bytes().len().next_multiple_of(PIECE_ALIGN))
    }

    /// Writes the hashes that proved it into `outboard` (a post-order outboard being
    /// built), one call per run of adjacent ones.
    pub fn write_hashes<O: WriteAt>(&self, mut outboard: O) -> io::Result<()> {
        write_pairs(self.tree, &mut outboard, &self.pairs)
    }

    /// The buffer back, for the next piece.
    pub fn into_buf(self) -> PieceBuf {
        self.buf
    }
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
