//! The blob store in a node's data dir: complete blobs with their outboards, and partial
//! downloads that survive a restart.
//!
//! ```text
//! blobs/<id>          a complete blob's bytes
//! blobs/<id>.obao4    its post-order outboard (16 KiB chunk groups)
//! blobs/<id>.part         a download under way: verified pieces at their offsets
//! blobs/<id>.part.obao4   its outboard so far: the verified hashes the pieces brought
//! blobs/<id>.have         the download's size and which pieces are in the .part file
//! ```
//!
//! Every piece that enters a `.part` file has verified against the id, and the hashes that
//! proved it are kept in the download's outboard; once every piece is in, that outboard is
//! whole, so a finished download becomes a blob without being hashed again. Files appear
//! by rename, so a crash leaves either the old state or the new one. Calls block; run them
//! off the async runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bao_tree::io::sync::WriteAt;
use serde::{Deserialize, Serialize};

use crate::ContentId;
use crate::blob::{
    self, MAX_BLOB_BYTES, PieceBuf, PieceError, VerifiedPiece, piece_bytes, piece_count,
};

const OUTBOARD: &str = "obao4";

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("this node does not hold {0}")]
    NotFound(ContentId),
    #[error("the file's bytes hash to {got}, not to {want}")]
    HashMismatch { want: ContentId, got: ContentId },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Piece(#[from] PieceError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of blobs. Cheap to clone; every call goes to the file system.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store in `dir`, clearing temporary files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        for entry in fs::read_dir(&dir).map_err(at(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a complete blob's bytes are.
    pub fn data_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn outboard_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.{OUTBOARD}"))
    }

    /// Where a download's verified pieces are.
    pub fn part_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn have_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.have"))
    }

    fn part_outboard_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.part.{OUTBOARD}"))
    }

    fn temp_path(&self) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS has randomness");
        self.dir.join(format!("tmp-{}", hex::encode(r)))
    }

    /// The size of a complete blob held here.
    pub fn size(&self, id: &ContentId) -> Option<u64> {
        let data = fs::metadata(self.data_path(id)).ok()?;
        fs::metadata(self.outboard_path(id)).ok()?;
        Some(data.len())
    }

    pub fn contains(&self, id: &ContentId) -> bool {
        self.size(id).is_some()
    }

    /// Every complete blob and its size.
    pub fn list(&self) -> Vec<(ContentId, u64)> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(ContentId, u64)> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<ContentId>().ok())
            .filter_map(|id| Some((id, self.size(&id)?)))
            .collect();
        out.sort();
        out
    }

    /// Bytes taken by complete blobs and downloads under way.
    pub fn total_bytes(&self) -> u64 {
        let held: u64 = self.list().iter().map(|(_, s)| s).sum();
        let parts: u64 = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        held + parts
    }

    /// Forgets a blob (complete or partial).
    pub fn remove(&self, id: &ContentId) -> Result<(), StoreError> {
        for path in [
            self.data_path(id),
            self.outboard_path(id),
            self.part_path(id),
            self.part_outboard_path(id),
            self.have_path(id),
            // An entry a download brought along (the node keeps it beside the blob).
            self.dir.join(format!("{id}.entry")),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&path)(e)),
            }
        }
        Ok(())
    }

    /// Copies the file at `path` into the store; returns its id and size. Reading it twice
    /// (copy, then hash) keeps memory flat whatever the file's size.
    pub fn import_file(&self, path: &Path) -> Result<(ContentId, u64), StoreError> {
        let mut src = File::open(path).map_err(at(path))?;
        let size = src.metadata().map_err(at(path))?.len();
        if size > MAX_BLOB_BYTES {
            return Err(PieceError::TooLarge.into());
        }
        let tmp = self.temp_path();
        let copied = {
            let mut dst = File::create(&tmp).map_err(at(&tmp))?;
            io::copy(&mut src, &mut dst).map_err(at(path))?
        };
        let result = self.adopt(&tmp, copied, None);
        let _ = fs::remove_file(&tmp);
        result.map(|id| (id, copied))
    }

    /// Puts `bytes` into the store (small blobs, tests).
    pub fn import_bytes(&self, bytes: &[u8]) -> Result<(ContentId, u64), StoreError> {
        let tmp = self.temp_path();
        fs::write(&tmp, bytes).map_err(at(&tmp))?;
        let result = self.adopt(&tmp, bytes.len() as u64, None);
        let _ = fs::remove_file(&tmp);
        result.map(|id| (id, bytes.len() as u64))
    }

    /// Hashes the file at `data` (of `size` bytes), writes its outboard, and moves both into
    /// place under the hash. With `want`, refuses a file that hashes to something else.
    fn adopt(
        &self,
        data: &Path,
        size: u64,
        want: Option<ContentId>,
    ) -> Result<ContentId, StoreError> {
        let tmp_outboard = self.temp_path();
        let id = {
            let reader = BufReader::with_capacity(1 << 20, File::open(data).map_err(at(data))?);
            let mut writer =
                BufWriter::new(File::create(&tmp_outboard).map_err(at(&tmp_outboard))?);
            let id = blob::outboard(reader.take(size), size, &mut writer).map_err(at(data))?;
            writer.flush().map_err(at(&tmp_outboard))?;
            id
        };
        if let Some(want) = want
            && want != id
        {
            let _ = fs::remove_file(&tmp_outboard);
            return Err(StoreError::HashMismatch { want, got: id });
        }
        let outboard = self.outboard_path(&id);
        fs::rename(&tmp_outboard, &outboard).map_err(at(&outboard))?;
        let dest = self.data_path(&id);
        fs::rename(data, &dest).map_err(at(&dest))?;
        Ok(id)
    }

    /// Hashes a held blob whole and checks it against its id and its outboard; a blob that
    /// fails is removed (it can be fetched again).
    pub fn verify(&self, id: &ContentId) -> Result<(), StoreError> {
        let size = self.size(id).ok_or(StoreError::NotFound(*id))?;
        let path = self.data_path(id);
        let reader = BufReader::with_capacity(1 << 20, File::open(&path).map_err(at(&path))?);
        let mut fresh = Vec::new();
        let got = blob::outboard(reader.take(size), size, &mut fresh).map_err(at(&path))?;
        let outboard = self.outboard_path(id);
        let held = fs::read(&outboard).map_err(at(&outboard))?;
        if got != *id || held != fresh {
            let _ = self.remove(id);
            return Err(StoreError::HashMismatch { want: *id, got });
        }
        Ok(())
    }

    /// Encodes piece `piece` of a complete blob for a peer, as held (see
    /// [`blob::encode_piece_at`]; [`BlobStore::verify`] finds rot).
    pub fn encode_piece(&self, id: &ContentId, piece: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.encode_piece_at(id, piece, &mut out, 0)?;
        Ok(out)
    }

    /// [`BlobStore::encode_piece`] written over `out` from `start` on, in a buffer reused
    /// from piece to piece ([`blob::encode_piece_at`]); on error `out` holds no piece.
    pub fn encode_piece_at(
        &self,
        id: &ContentId,
        piece: u64,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), StoreError> {
        let size = self.size(id).ok_or(StoreError::NotFound(*id))?;
        let data = File::open(self.data_path(id)).map_err(|_| StoreError::NotFound(*id))?;
        let outboard = File::open(self.outboard_path(id)).map_err(|_| StoreError::NotFound(*id))?;
        out.reserve((start + blob::MAX_ENCODED_PIECE as usize).saturating_sub(out.len()));
        blob::encode_piece_at(*id, size, &data, &outboard, piece, out, start).inspect_err(
            |_| {
                out.truncate(start);
            },
        )?;
        Ok(())
    }

    /// Opens (or resumes) the download of `id`, `size` bytes long. A download begun before
    /// with another size starts over (the size is checked by the last piece in any case).
    pub fn partial(&self, id: ContentId, size: u64) -> Result<Partial, StoreError> {
        if size > MAX_BLOB_BYTES {
            return Err(PieceError::TooLarge.into());
        }
        let part = self.part_path(&id);
        let have_path = self.have_path(&id);
        let pieces = piece_count(size) as usize;
        let mut have = vec![false; pieces];
        if let Ok(bytes) = fs::read(&have_path)
            && let Ok(meta) = postcard::from_bytes::<HaveFile>(&bytes)
            && meta.size == size
            && meta.have.len() == pieces.div_ceil(8)
        {
            for (i, h) in have.iter_mut().enumerate() {
                *h = meta.have[i / 8] & (1 << (i % 8)) != 0;
            }
        }
        let part_outboard = self.part_outboard_path(&id);
        // Pieces recorded without the hashes that proved them (a download begun by an
        // older version) cannot finish without hashing: start over instead.
        if !part_outboard.exists() {
            have.fill(false);
        }
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .map_err(at(path))
        };
        let file = open(&part)?;
        let outboard = open(&part_outboard)?;
        if have.iter().all(|h| !h) {
            file.set_len(0).map_err(at(&part))?;
            outboard.set_len(0).map_err(at(&part_outboard))?;
        }
        Ok(Partial {
            store: self.clone(),
            id,
            size,
            file,
            outboard,
            have,
            unsaved: 0,
            finished: false,
        })
    }

    /// How far a download of `id` has come: (verified bytes, size), from its `.have` file.
    pub fn progress(&self, id: &ContentId) -> Option<(u64, u64)> {
        if let Some(size) = self.size(id) {
            return Some((size, size));
        }
        let meta: HaveFile = postcard::from_bytes(&fs::read(self.have_path(id)).ok()?).ok()?;
        let pieces = piece_count(meta.size);
        let have = (0..pieces)
            .filter(|i| {
                meta.have
                    .get(*i as usize / 8)
                    .is_some_and(|b| b & (1 << (i % 8)) != 0)
            })
            .map(|i| {
                let r = piece_bytes(meta.size, i);
                r.end - r.start
            })
            .sum();
        Some((have, meta.size))
    }
}

#[derive(Serialize, Deserialize)]
struct HaveFile {
    size: u64,
    /// One bit per piece, lowest bit first.
    have: Vec<u8>,
}

/// A download under way. One at a time per blob: the node keeps a map of them.
#[derive(Debug)]
pub struct Partial {
    store: BlobStore,
    id: ContentId,
    size: u64,
    file: File,
    /// The download's outboard, filled in by the pieces as they verify.
    outboard: File,
    have: Vec<bool>,
    /// Pieces marked since the `.have` file was last written.
    unsaved: usize,
    /// Set once the download became a blob: nothing more to save.
    finished: bool,
}

/// How many pieces are marked between two writes of the `.have` file.
pub const SAVE_EVERY: usize = 8;

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.finished && self.unsaved > 0 {
            let _ = self.save_have();
        }
    }
}

/// Verifies and writes pieces of one download (see [`Partial::writer`]).
#[derive(Debug)]
pub struct PieceWriter {
    id: ContentId,
    size: u64,
    file: File,
    outboard: File,
    /// The `.part` file opened for direct (`O_DIRECT`, Linux) writes, while the file system
    /// takes them: a verified piece is written from its aligned buffer in one call past the
    /// page cache. Buffered writes of a large download cost more CPU than verifying it (on
    /// the development VM, 2.3 CPU-s a GiB against 0.1 direct); the kernel keeps buffered
    /// readers of the file coherent with direct writes.
    direct: Option<File>,
    /// The buffer [`PieceWriter::write_piece`] decodes into.
    buf: Option<PieceBuf>,
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

impl PieceWriter {
    /// Checks an encoded piece against the content id and writes its bytes in place. On
    /// error nothing unverified was written; the piece is not yet counted either way.
    pub fn write_piece(&mut self, piece: u64, encoded: &[u8]) -> Result<(), StoreError> {
        let buf = self.buf.take().unwrap_or_default();
        let verified = blob::decode_slice(self.id, self.size, piece, encoded, buf)?;
        let written = self.write_verified(&verified);
        self.buf = Some(verified.into_buf());
        written
    }

    /// Writes a piece verified as it arrived ([`blob::PieceDecoder`]) and the hashes that
    /// proved it: directly, padded to the alignment (the file is cut to the blob's size
    /// when the download finishes), or buffered if the file system refuses that.
    pub fn write_verified(&mut self, piece: &VerifiedPiece) -> Result<(), StoreError> {
        if piece.id() != self.id || piece.blob_size() != self.size {
            return Err(io::Error::other(format!(
                "a piece of {} handed to the download of {}",
                piece.id(),
                self.id
            ))
            .into());
        }
        let mut written = false;
        if let Some(file) = &mut self.direct {
            match WriteAt::write_all_at(file, piece.offset(), piece.padded()) {
                Ok(()) => written = true,
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => self.direct = None,
                Err(e) => return Err(e.into()),
            }
        }
        if !written {
            WriteAt::write_all_at(&mut self.file, piece.offset(), piece.bytes())?;
        }
        piece.write_hashes(&mut self.outboard)?;
        Ok(())
    }
}

impl Partial {
    pub fn id(&self) -> ContentId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pieces still to fetch, in order.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.have.len() as u64)
            .filter(|i| !self.have[*i as usize])
            .collect()
    }

    pub fn has_piece(&self, piece: u64) -> bool {
        self.have.get(piece as usize).copied().unwrap_or(false)
    }

    /// Verified bytes so far.
    pub fn have_bytes(&self) -> u64 {
        (0..self.have.len() as u64)
            .filter(|i| self.have[*i as usize])
            .map(|i| {
                let r = piece_bytes(self.size, i);
                r.end - r.start
            })
            .sum()
    }

    pub fn is_complete(&self) -> bool {
        self.have.iter().all(|h| *h)
    }

    /// Checks an encoded piece a peer sent and keeps it. A piece that does not verify
    /// changes nothing the download counts on ([`PieceError::Corrupt`]: blame the sender).
    pub fn add_piece(&mut self, piece: u64, encoded: &[u8]) -> Result<(), StoreError> {
        if self.has_piece(piece) {
            return Ok(());
        }
        self.writer()?.write_piece(piece, encoded)?;
        self.mark(piece)
    }

    /// A read handle on the download's file, for serving verified pieces before the
    /// download is finished; it stays valid when the file becomes the blob.
    pub fn reader(&self) -> Result<File, StoreError> {
        let part = self.store.part_path(&self.id);
        self.file.try_clone().map_err(at(&part))
    }

    /// A handle that verifies and writes pieces without holding the download, so several
    /// sources' pieces are checked at once; [`Partial::mark`] then records each.
    pub fn writer(&self) -> Result<PieceWriter, StoreError> {
        let part = self.store.part_path(&self.id);
        Ok(PieceWriter {
            id: self.id,
            size: self.size,
            file: self.file.try_clone().map_err(at(&part))?,
            outboard: self.outboard.try_clone().map_err(at(&part))?,
            direct: open_direct(&part),
            buf: None,
        })
    }

    /// Records that `piece` was verified and written by a [`PieceWriter`]. The record is
    /// saved every [`SAVE_EVERY`] pieces and when the download is dropped, so a crash
    /// loses at most that many pieces of progress.
    pub fn mark(&mut self, piece: u64) -> Result<(), StoreError> {
        let Some(h) = self.have.get_mut(piece as usize) else {
            return Err(PieceError::OutOfRange {
                piece,
                pieces: self.have.len() as u64,
            }
            .into());
        };
        if !*h {
            *h = true;
            self.unsaved += 1;
        }
        if self.unsaved >= SAVE_EVERY || self.is_complete() {
            self.save_have()?;
        }
        Ok(())
    }

    fn save_have(&mut self) -> Result<(), StoreError> {
        self.unsaved = 0;
        let mut bits = vec![0u8; self.have.len().div_ceil(8)];
        for (i, h) in self.have.iter().enumerate() {
            if *h {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        let bytes = postcard::to_stdvec(&HaveFile {
            size: self.size,
            have: bits,
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
        let tmp = self.store.temp_path();
        fs::write(&tmp, bytes).map_err(at(&tmp))?;
        let dest = self.store.have_path(&self.id);
        fs::rename(&tmp, &dest).map_err(at(&dest))?;
        Ok(())
    }

    /// Once every piece is in, makes the download a blob of the store: its pieces all
    /// verified against the id and its outboard holds the hashes that proved them, so
    /// nothing is hashed again ([`BlobStore::verify`] does that on demand).
    pub fn finish(mut self) -> Result<u64, StoreError> {
        if !self.is_complete() {
            return Err(io::Error::other("the download is not complete").into());
        }
        self.finished = true;
        let part = self.store.part_path(&self.id);
        let part_outboard = self.store.part_outboard_path(&self.id);
        self.file.set_len(self.size).map_err(at(&part))?;
        self.outboard
            .set_len(blob::outboard_len(self.size))
            .map_err(at(&part_outboard))?;
        let outboard = self.store.outboard_path(&self.id);
        fs::rename(&part_outboard, &outboard).map_err(at(&outboard))?;
        let dest = self.store.data_path(&self.id);
        fs::rename(&part, &dest).map_err(at(&dest))?;
        let _ = fs::remove_file(self.store.have_path(&self.id));
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests;
