//! The two content protocols, each a stream of requests answered in order.
//!
//! `/warren/blob/1`, request `[op u8][content id 32][piece u64 LE]`:
//! - op 0 (size): `[0][size u64][len u16][signed entry]` if held whole (`len` 0 when the
//!   holder knows no entry naming it), `[1]` if not;
//! - op 1 (piece): `[0][len u32][len bytes of bao-encoded piece]`, or `[1]` if not held.
//!
//! `/warren/channel/1`, request `[channel id 32][after u64 LE]`: `[count u16]` then `count`
//! records `[len u16][signed entry]`, the entries from `after` on, at most
//! [`MAX_SYNC_ENTRIES`] (ask again from the new length for more).
//!
//! Everything read is bounded before it is allocated; a stream serves at most
//! [`MAX_REQUESTS_PER_STREAM`] requests, and at most [`MAX_STREAMS`] streams are served at
//! once (more are dropped, and the opener sees a reset).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_content::blob::{MAX_ENCODED_PIECE, Need, PieceDecoder, PieceError, VerifiedPiece};
use warren_content::{ContentId, SignedEntry};
use warren_net::{Incoming, NetStream};
use warren_types::NodeId;

use super::{Content, lock};

pub(crate) const BLOB_PROTOCOL: &str = "/warren/blob/1";
pub(crate) const CHANNEL_PROTOCOL: &str = "/warren/channel/1";
pub(crate) const MAX_SYNC_ENTRIES: usize = 256;
const MAX_REQUESTS_PER_STREAM: usize = 1 << 20;
const MAX_STREAMS: usize = 64;
/// A peer that sends nothing for this long has its stream closed.
const IDLE: Duration = Duration::from_secs(60);

const OP_SIZE: u8 = 0;
const OP_PIECE: u8 = 1;
const HAVE: u8 = 0;
const MISSING: u8 = 1;

pub(super) fn serve(
    content: Arc<Content>,
    cancel: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, warren_net::StreamError> {
    let streams = content.net().streams().clone();
    let slots = Arc::new(Semaphore::new(MAX_STREAMS));
    let blob = streams.accept(BLOB_PROTOCOL)?;
    let channel = streams.accept(CHANNEL_PROTOCOL)?;
    Ok(vec![
        tokio::spawn(accept_loop(
            blob,
            content.clone(),
            slots.clone(),
            cancel.clone(),
            |c, peer, s| Box::pin(serve_blob(c, peer, s)),
        )),
        tokio::spawn(accept_loop(
            channel,
            content,
            slots,
            cancel,
            |c, peer, s| Box::pin(serve_channel(c, peer, s)),
        )),
    ])
}

type Served = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

async fn accept_loop(
    mut incoming: Incoming,
    content: Arc<Content>,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    handler: fn(Arc<Content>, NodeId, NetStream) -> Served,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!("too many content streams; dropping one");
                    continue;
                };
                let fut = handler(content.clone(), peer, stream);
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        r = fut => if let Err(e) = r { debug!(%peer, "content stream ended: {e}") },
                    }
                    drop(slot);
                });
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes, or returns `Ok(false)` on a clean end before the first.
async fn read_request(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let first = tokio::time::timeout(IDLE, s.read(&mut buf[..1]))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    if first == 0 {
        return Ok(false);
    }
    tokio::time::timeout(IDLE, s.read_exact(&mut buf[1..]))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    Ok(true)
}

/// Answers queued ahead of the one being sent: the next pieces are read and encoded while
/// the current one goes out. Bounds a stream's memory to a few pieces.
const AHEAD: usize = 2;

/// An answer on its way: ready bytes, or a piece being read and encoded (into a buffer
/// that holds its header first, and that the writer hands back for another piece).
enum Answer {
    Ready(Vec<u8>),
    Piece(
        ContentId,
        tokio::task::JoinHandle<(Vec<u8>, Result<(), warren_content::StoreError>)>,
    ),
}

/// The bytes before an encoded piece: `HAVE` and its length.
const PIECE_HEAD: usize = 5;

async fn serve_blob(content: Arc<Content>, _peer: NodeId, s: NetStream) -> std::io::Result<()> {
    let (mut rx, mut tx) = tokio::io::split(s);
    let (queue, mut answers) = tokio::sync::mpsc::channel::<Answer>(AHEAD);
    // Piece buffers the writer is done with (at most AHEAD + 2 exist per stream).
    let spare: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let read = async {
        let mut req = [0u8; 41];
        for _ in 0..MAX_REQUESTS_PER_STREAM {
            if !read_request(&mut rx, &mut req).await? {
                break;
            }
            let id = ContentId(req[1..33].try_into().expect("32 bytes"));
            let piece = u64::from_le_bytes(req[33..41].try_into().expect("8 bytes"));
            let answer = match req[0] {
                OP_SIZE => Answer::Ready(size_answer(&content, &id)),
                OP_PIECE => {
                    let blobs = content.blobs.clone();
                    let mut buf = lock(&spare).pop().unwrap_or_default();
                    Answer::Piece(
                        id,
                        tokio::task::spawn_blocking(move || {
                            buf.resize(buf.len().max(PIECE_HEAD), 0);
                            let r = blobs.encode_piece_at(&id, piece, &mut buf, PIECE_HEAD);
                            (buf, r)
                        }),
                    )
                }
                _ => return Err(std::io::Error::other("unknown blob request")),
            };
            if queue.send(answer).await.is_err() {
                break;
            }
        }
        drop(queue);
        Ok::<_, std::io::Error>(())
    };
    let write = async {
        while let Some(answer) = answers.recv().await {
            match answer {
                Answer::Ready(bytes) => tx.write_all(&bytes).await?,
                Answer::Piece(id, encoding) => {
                    let (mut buf, encoded) = encoding.await.map_err(std::io::Error::other)?;
                    match encoded {
                        Ok(()) => {
                            let len = (buf.len() - PIECE_HEAD) as u32;
                            buf[0] = HAVE;
                            buf[1..PIECE_HEAD].copy_from_slice(&len.to_le_bytes());
                            tx.write_all(&buf).await?;
                            lock(&spare).push(buf);
                        }
                        Err(warren_content::StoreError::Piece(
                            warren_content::blob::PieceError::Corrupt { .. },
                        )) => {
                            // Its outboard is damaged on disk: forget the blob (it can
                            // be fetched again) and say so.
                            tracing::warn!(%id, "a held blob's outboard is damaged; removing it");
                            let _ = content.blobs.remove(&id);
                            tx.write_all(&[MISSING]).await?;
                        }
                        Err(_) => tx.write_all(&[MISSING]).await?,
                    }
                }
            }
            tx.flush().await?;
        }
        tx.shutdown().await
    };
    // The reader ends first (the peer closed, or an error); the writer drains what is
    // queued. An error on either side ends both.
    let ((), ()) = tokio::try_join!(read, write)?;
    Ok(())
}

/// The answer to "do you hold `id` whole?".
fn size_answer(content: &Content, id: &ContentId) -> Vec<u8> {
    match content.blobs.size(id) {
        Some(size) => {
            let entry = content
                .signed_entry_for(id)
                .map(|e| e.to_bytes())
                .unwrap_or_default();
            let mut out = Vec::with_capacity(11 + entry.len());
            out.push(HAVE);
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&(entry.len() as u16).to_le_bytes());
            out.extend_from_slice(&entry);
            out
        }
        None => vec![MISSING],
    }
}

async fn serve_channel(
    content: Arc<Content>,
    _peer: NodeId,
    mut s: NetStream,
) -> std::io::Result<()> {
    let mut req = [0u8; 40];
    for _ in 0..MAX_REQUESTS_PER_STREAM {
        if !read_request(&mut s, &mut req).await? {
            break;
        }
        let key: [u8; 32] = req[..32].try_into().expect("32 bytes");
        let after = u64::from_le_bytes(req[32..].try_into().expect("8 bytes"));
        let entries = match NodeId::from_public_key(key) {
            Ok(channel) => content.entries_after(&channel, after, MAX_SYNC_ENTRIES),
            Err(_) => Vec::new(),
        };
        let mut out = Vec::with_capacity(2 + entries.iter().map(|e| e.len() + 2).sum::<usize>());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for e in &entries {
            out.extend_from_slice(&(e.len() as u16).to_le_bytes());
            out.extend_from_slice(e);
        }
        s.write_all(&out).await?;
        s.flush().await?;
    }
    s.shutdown().await
}

/// Why talking to a peer about content failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("could not reach the peer: {0}")]
    Open(#[from] warren_net::StreamError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the peer did not answer in time")]
    Timeout,
}

/// A client stream of `/warren/blob/1`.
pub(crate) struct BlobClient {
    s: NetStream,
}

impl BlobClient {
    pub(crate) async fn open(content: &Content, peer: NodeId) -> Result<Self, PeerError> {
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            content.net().streams().open(peer, BLOB_PROTOCOL),
        )
        .await
        .map_err(|_| PeerError::Timeout)??;
        Ok(BlobClient { s })
    }

    pub(crate) async fn send(
        &mut self,
        op: u8,
        id: &ContentId,
        piece: u64,
    ) -> Result<(), PeerError> {
        let mut req = [0u8; 41];
        req[0] = op;
        req[1..33].copy_from_slice(&id.0);
        req[33..].copy_from_slice(&piece.to_le_bytes());
        self.s.write_all(&req).await?;
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), PeerError> {
        self.s.flush().await?;
        Ok(())
    }

    /// Asks whether the peer holds `id` whole: its size, and the entry naming it if the
    /// peer knows one (unchecked: the caller verifies it).
    pub(crate) async fn size(
        &mut self,
        id: &ContentId,
    ) -> Result<Option<(u64, Option<SignedEntry>)>, PeerError> {
        self.send(OP_SIZE, id, 0).await?;
        self.flush().await?;
        let status = self.s.read_u8().await?;
        match status {
            HAVE => {
                let size = self.s.read_u64_le().await?;
                let len = self.s.read_u16_le().await? as usize;
                if len > 2048 {
                    return Err(PeerError::Protocol(format!("a {len}-byte entry")));
                }
                let mut bytes = vec![0u8; len];
                self.s.read_exact(&mut bytes).await?;
                let entry = (len > 0)
                    .then(|| SignedEntry::from_bytes(&bytes).ok())
                    .flatten();
                Ok(Some((size, entry)))
            }
            MISSING => Ok(None),
            other => Err(PeerError::Protocol(format!("status {other}"))),
        }
    }

    pub(crate) async fn request_piece(
        &mut self,
        id: &ContentId,
        piece: u64,
    ) -> Result<(), PeerError> {
        self.send(OP_PIECE, id, piece).await
    }

    /// Reads the answer to the oldest piece request through `decoder`, which checks every
    /// hash pair and chunk group as it arrives (groups land straight in the piece's
    /// buffer): the verified piece, or the buffer back if the peer no longer has it. The
    /// length is checked before anything is read; a piece that does not verify is a
    /// [`PeerError::Protocol`] (blame the peer).
    pub(crate) async fn read_piece(
        &mut self,
        mut decoder: PieceDecoder,
    ) -> Result<Option<VerifiedPiece>, PeerError> {
        match self.s.read_u8().await? {
            HAVE => {}
            MISSING => return Ok(None),
            other => return Err(PeerError::Protocol(format!("status {other}"))),
        }
        let len = u64::from(self.s.read_u32_le().await?);
        if len > MAX_ENCODED_PIECE {
            return Err(PeerError::Protocol(format!("a {len}-byte piece")));
        }
        let bad = |e: PieceError| PeerError::Protocol(e.to_string());
        let mut left = len as usize;
        while let Some(need) = decoder.need() {
            left = left.checked_sub(need.bytes()).ok_or_else(|| {
                bad(decoder.corrupt(format!("it is {len} bytes, too short for the piece")))
            })?;
            match need {
                Need::Pair => {
                    let mut pair = [0u8; 64];
                    self.s.read_exact(&mut pair).await?;
                    decoder.pair(&pair).map_err(bad)?;
                }
                Need::Group(_) => {
                    self.s.read_exact(decoder.group_slot()).await?;
                    decoder.group().map_err(bad)?;
                }
            }
        }
        if left > 0 {
            return Err(bad(decoder.corrupt(format!("{left} bytes after the piece"))));
        }
        Ok(Some(decoder.finish().map_err(bad)?))
    }
}

/// Asks `peer` for `channel`'s entries from `after` on; the raw records, bounded.
pub(crate) async fn sync_from(
    content: &Content,
    peer: NodeId,
    channel: &NodeId,
    after: u64,
) -> Result<Vec<Vec<u8>>, PeerError> {
    let work = async {
        let mut s = content.net().streams().open(peer, CHANNEL_PROTOCOL).await?;
        let mut req = [0u8; 40];
        req[..32].copy_from_slice(&channel.public_key());
        req[32..].copy_from_slice(&after.to_le_bytes());
        s.write_all(&req).await?;
        s.flush().await?;
        let count = s.read_u16_le().await? as usize;
        if count > MAX_SYNC_ENTRIES {
            return Err(PeerError::Protocol(format!(
                "{count} entries in one answer"
            )));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let len = s.read_u16_le().await? as usize;
            if len > 2048 {
                return Err(PeerError::Protocol(format!("a {len}-byte entry")));
            }
            let mut e = vec![0u8; len];
            s.read_exact(&mut e).await?;
            out.push(e);
        }
        let _ = s.shutdown().await;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .map_err(|_| PeerError::Timeout)?
}
