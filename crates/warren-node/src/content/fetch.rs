//! Fetching a blob from several peers at once.
//!
//! Sources are the peers the DHT names as holders and the peers this node is connected to
//! (followers of a channel, mDNS neighbours), each asked whether it holds the blob whole.
//! A download starts as soon as one connected peer has it; holders the DHT names join it
//! as they answer, up to six sources.
//! One worker per source takes the next missing piece from a shared queue, keeping four
//! pieces under way (asked for on its stream, or being written, two at once while it
//! reads and verifies the next); at the end, a source with nothing left to take asks for pieces
//! still in flight elsewhere. A piece that does not verify is thrown away, the peer
//! is penalised and dropped, and the piece goes back into the queue for the others. The
//! download lives in the store's `.part`/`.have` files, so it resumes after a restart.
//!
//! While it runs, the download is [`Live`]: the gateway reads its verified pieces as they
//! come in and moves the pieces a reader waits for to the head of the queue, so a video
//! plays (and seeks) while it downloads.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use warren_content::blob::{PIECE_BYTES, PieceBuf, PieceDecoder, PieceError, piece_count};
use warren_content::{ContentId, Partial, PieceWriter, StoreError};
use warren_types::NodeId;

use super::proto::{BlobClient, PeerError};
use super::{Content, blob_key, blocking, lock};

/// Most peers fetched from at once.
const MAX_SOURCES: usize = 6;
/// Most peers asked whether they hold a blob.
const MAX_PROBES: usize = 32;
/// Pieces each source has under way: asked for on its stream, or being written.
const PIPELINE: usize = 4;
/// Pieces each source writes at once while it reads and verifies the next.
const WRITES: usize = 2;
/// Rounds of looking for sources before a download gives up.
const ROUNDS: usize = 6;

/// Where a download stands.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// Verified bytes held.
    pub have: u64,
    /// The blob's size, once known.
    pub size: Option<u64>,
    /// Peers being fetched from now.
    pub sources: usize,
    /// "running", "done" or "failed".
    pub state: String,
    pub error: Option<String>,
}

impl Progress {
    pub(super) fn start(progress: Option<(u64, u64)>) -> Self {
        Progress {
            have: progress.map_or(0, |p| p.0),
            size: progress.map(|p| p.1),
            sources: 0,
            state: "running".into(),
            error: None,
        }
    }

    pub fn finished(&self) -> bool {
        self.state != "running"
    }
}

/// A download under way, as readers see it: its size, which pieces are verified and in,
/// and the queue of pieces still to ask for.
pub(crate) struct Live {
    size: u64,
    /// A read handle on the `.part` file; it stays valid when the file becomes the blob.
    file: File,
    have: Vec<AtomicBool>,
    queue: Mutex<VecDeque<u64>>,
}

impl Live {
    fn new(part: &Partial) -> Result<Live, StoreError> {
        Ok(Live {
            size: part.size(),
            file: part.reader()?,
            have: (0..piece_count(part.size()))
                .map(|p| AtomicBool::new(part.has_piece(p)))
                .collect(),
            queue: Mutex::new(VecDeque::new()),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether piece `piece` is verified and readable.
    pub(crate) fn has(&self, piece: u64) -> bool {
        self.have
            .get(piece as usize)
            .is_some_and(|h| h.load(Ordering::Acquire))
    }

    /// Moves the missing pieces among `pieces` to the head of the queue, in order.
    pub(crate) fn prioritise(&self, pieces: Range<u64>) {
        let mut queue = lock(&self.queue);
        for piece in pieces.rev() {
            if let Some(at) = queue.iter().position(|p| *p == piece) {
                queue.remove(at);
                queue.push_front(piece);
            }
        }
    }

    /// Reads verified bytes at `offset` into `buf`, which must lie within pieces held.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let last = (offset + buf.len() as u64).saturating_sub(1) / PIECE_BYTES;
        if !(offset / PIECE_BYTES..=last).all(|p| self.has(p)) {
            return Err(std::io::Error::other("those bytes are not verified yet"));
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// Takes the download's [`Live`] out of the node's map when the download ends in any way.
struct Unlive<'a>(&'a Content, ContentId);

impl Drop for Unlive<'_> {
    fn drop(&mut self) {
        self.0.set_live(self.1, None);
    }
}

pub(super) async fn run(
    content: Arc<Content>,
    id: ContentId,
    size_hint: Option<u64>,
    tx: watch::Sender<Progress>,
) {
    // Shared with the storage tasks, which count each piece in as it is written.
    let tx = Arc::new(tx);
    match fetch(&content, id, size_hint, &tx).await {
        Ok(size) => {
            tx.send_modify(|p| {
                p.have = size;
                p.size = Some(size);
                p.sources = 0;
                p.state = "done".into();
            });
            let _ = content.net().provide(blob_key(&id)).await;
        }
        Err(e) => {
            info!(%id, "download failed: {e}");
            tx.send_modify(|p| {
                p.sources = 0;
                p.state = "failed".into();
                p.error = Some(e);
            });
        }
    }
}

async fn fetch(
    content: &Arc<Content>,
    id: ContentId,
    size_hint: Option<u64>,
    tx: &Arc<watch::Sender<Progress>>,
) -> Result<u64, String> {
    if let Some(size) = content.blobs.size(&id) {
        return Ok(size);
    }
    let mut bad: BTreeSet<NodeId> = BTreeSet::new();
    let mut partial: Option<Arc<Mutex<Partial>>> = None;
    let mut live: Option<Arc<Live>> = None;
    let _unlive = Unlive(content, id);
    // Every piece write of this download, so the last can be waited for before it ends.
    let writes = TaskTracker::new();
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(round as u64)).await;
        }
        let Sources { now, later } = find_sources(content, &id).await;
        let usable = |bad: &BTreeSet<NodeId>, (p, s): &(NodeId, u64)| {
            !bad.contains(p) && size_hint.is_none_or(|h| h == *s)
        };
        let mut now: Vec<(NodeId, u64)> = now.into_iter().filter(|f| usable(&bad, f)).collect();
        let mut later = later;
        if now.is_empty()
            && let Some(search) = later.take()
        {
            // The neighbours that answered are of no use (dropped before, or another
            // size): the DHT's finds are this round's sources.
            let found = keep_entry(content, &id, search.await.unwrap_or_default());
            now = found.into_iter().filter(|f| usable(&bad, f)).collect();
        }
        let Some(&(_, first_size)) = now.first() else {
            debug!(%id, round, "no peer holds it yet");
            continue;
        };
        // Without a signed size, the first answer sets it; the last piece proves it.
        let size = size_hint.unwrap_or(first_size);
        let part = match &partial {
            Some(p) => p.clone(),
            None => {
                let blobs = content.blobs.clone();
                let (p, l) = blocking(move || {
                    let p = blobs.partial(id, size)?;
                    let l = Live::new(&p)?;
                    Ok::<_, StoreError>((p, l))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                let l = Arc::new(l);
                content.set_live(id, Some(l.clone()));
                live = Some(l);
                let p = Arc::new(Mutex::new(p));
                partial = Some(p.clone());
                p
            }
        };
        let live = live.clone().expect("set with the download");
        *lock(&live.queue) = lock(&part).missing().into();
        let download = Download {
            id,
            live: live.clone(),
            part: part.clone(),
            tx: tx.clone(),
            writes: writes.clone(),
        };
        // The sources of this round: those found at once start now; those the DHT names
        // later join while the download runs.
        {
            let mut sources: BTreeSet<NodeId> = BTreeSet::new();
            let mut workers = FuturesUnordered::new();
            let join = |peers: Vec<(NodeId, u64)>,
                        sources: &mut BTreeSet<NodeId>,
                        workers: &mut FuturesUnordered<_>| {
                for (peer, _) in peers.into_iter().filter(|(_, s)| *s == size) {
                    if sources.len() < MAX_SOURCES && sources.insert(peer) {
                        let download = &download;
                        workers.push(async move { (peer, worker(content, peer, download).await) });
                    }
                }
                let n = workers.len();
                tx.send_modify(|p| {
                    p.size = Some(size);
                    p.have = lock(&part).have_bytes();
                    p.sources = n;
                });
            };
            join(now, &mut sources, &mut workers);
            // Once every piece is in, a source still waiting on a slow answer is not waited
            // for: its request is simply dropped.
            let mut done = tx.subscribe();
            let all_in = async {
                while done.changed().await.is_ok() {
                    if lock(&part).is_complete() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::pin!(all_in);
            loop {
                if workers.is_empty() && later.is_none() {
                    break;
                }
                tokio::select! {
                    Some((peer, result)) = workers.next() => {
                        let n = workers.len();
                        tx.send_modify(|p| p.sources = n);
                        match result {
                        Ok(()) => {}
                        Err(WorkerError::Corrupt(e)) => {
                            warn!(%peer, %id, "a peer sent a piece that does not verify; dropping it ({e})");
                            content.net().penalise(peer).await;
                            bad.insert(peer);
                        }
                        Err(WorkerError::Peer(e)) => debug!(%peer, %id, "source failed: {e}"),
                        Err(WorkerError::Local(e)) => return Err(e),
                    }},
                    more = async { later.as_mut().expect("checked by the guard").await },
                        if later.is_some() =>
                    {
                        later = None;
                        let more = keep_entry(content, &id, more.unwrap_or_default());
                        let more = more.into_iter().filter(|f| usable(&bad, f)).collect();
                        join(more, &mut sources, &mut workers);
                    }
                    () = &mut all_in => break,
                }
            }
        }
        if let Some(search) = later.take() {
            search.abort();
        }
        drop(download);
        if lock(&part).is_complete() {
            drop(part);
            // A piece fetched twice in the end game may still be being written (the same
            // verified bytes): wait for that before the download becomes a blob.
            writes.close();
            writes.wait().await;
            let part = partial.take().expect("set above");
            let part = Arc::try_unwrap(part)
                .map_err(|_| "a worker still holds the download".to_string())?
                .into_inner()
                .unwrap_or_else(|p| p.into_inner());
            let size = blocking(move || part.finish())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            info!(%id, size, "download complete");
            return Ok(size);
        }
    }
    Err(format!(
        "no reachable peer holds {id} (asked {ROUNDS} times); it may be offline, try again later"
    ))
}

/// What a probe finds: a peer, the size it claims, and the entry it signed for the blob.
type Found = (NodeId, u64, Option<warren_content::SignedEntry>);

/// Where a round of a download gets its sources.
struct Sources {
    /// Peers found to hold the blob whole, with the size each claims.
    now: Vec<(NodeId, u64)>,
    /// The DHT search still under way when connected peers already had it: its finds
    /// join the running download.
    later: Option<tokio::task::JoinHandle<Vec<Found>>>,
}

/// Peers that hold `id` whole. Connected peers are asked at once while the DHT is
/// searched; when a neighbour has it, the download starts without waiting for the search.
async fn find_sources(content: &Arc<Content>, id: &ContentId) -> Sources {
    let net = content.net();
    let me = net.local_id();
    let state = net.state();
    let usable = |p: &NodeId| *p != me && !state.banned.contains(p);
    let near: Vec<NodeId> = state
        .connected
        .iter()
        .copied()
        .filter(usable)
        .take(MAX_PROBES)
        .collect();
    let far = {
        let content = content.clone();
        let id = *id;
        let skip: BTreeSet<NodeId> = near.iter().copied().chain([me]).collect();
        let banned = state.banned.clone();
        tokio::spawn(async move {
            let found = tokio::time::timeout(
                Duration::from_secs(10),
                content.net().find_providers(blob_key(&id), 16),
            )
            .await;
            let Ok(Ok(found)) = found else {
                return Vec::new();
            };
            let others: Vec<NodeId> = found
                .into_iter()
                .filter(|p| !skip.contains(p) && !banned.contains(p))
                .take(MAX_PROBES)
                .collect();
            probe(&content, &id, others).await
        })
    };
    let found = probe(content, id, near).await;
    if found.is_empty() {
        let found = far.await.unwrap_or_default();
        return Sources {
            now: keep_entry(content, id, found),
            later: None,
        };
    }
    Sources {
        now: keep_entry(content, id, found),
        later: Some(far),
    }
}

/// The peers and sizes of `found`; keeps the first entry naming `id` that verifies, so
/// the blob keeps its media type and title.
fn keep_entry(content: &Content, id: &ContentId, found: Vec<Found>) -> Vec<(NodeId, u64)> {
    let mut kept = content.signed_entry_for(id).is_some();
    found
        .into_iter()
        .map(|(peer, size, entry)| {
            if !kept
                && let Some(e) = entry
                && e.verify().is_ok_and(|v| v.content == *id && v.size == size)
            {
                content.keep_loose_entry(id, &e);
                kept = true;
            }
            (peer, size)
        })
        .collect()
}

/// Asks each of `peers` at once whether it holds `id` whole. Once one has it, the others
/// get a short grace to answer: a peer that stopped answering must not hold up the rest.
async fn probe(content: &Arc<Content>, id: &ContentId, peers: Vec<NodeId>) -> Vec<Found> {
    use futures::StreamExt;

    let mut probes: futures::stream::FuturesUnordered<_> = peers
        .into_iter()
        .map(|peer| async move {
            let ask = async {
                let mut c = BlobClient::open(content, peer).await?;
                c.size(id).await
            };
            match tokio::time::timeout(Duration::from_secs(5), ask).await {
                Ok(Ok(Some((size, entry)))) => Some((peer, size, entry)),
                _ => None,
            }
        })
        .collect();
    let mut found = Vec::new();
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace {
            Some(deadline) => match tokio::time::timeout_at(deadline, probes.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => probes.next().await,
        };
        match next {
            None => break,
            Some(Some(source)) => {
                found.push(source);
                grace.get_or_insert_with(|| {
                    tokio::time::Instant::now() + Duration::from_millis(300)
                });
            }
            Some(None) => {}
        }
    }
    found
}

enum WorkerError {
    /// The peer sent something that does not verify: its fault.
    Corrupt(String),
    /// The peer went away or broke the protocol.
    Peer(PeerError),
    /// Our disk failed.
    Local(String),
}

/// What every source of one download shares.
struct Download {
    id: ContentId,
    live: Arc<Live>,
    part: Arc<Mutex<Partial>>,
    tx: Arc<watch::Sender<Progress>>,
    /// Every piece write, so the last can be waited for before the download ends.
    writes: TaskTracker,
}

async fn worker(content: &Arc<Content>, peer: NodeId, d: &Download) -> Result<(), WorkerError> {
    let mut inflight: VecDeque<u64> = VecDeque::new();
    let result = pull(content, peer, d, &mut inflight).await;
    if !inflight.is_empty() {
        let mut q = lock(&d.live.queue);
        for p in inflight {
            q.push_front(p);
        }
    }
    result
}

/// What a piece's write task gives back: the piece, how it went, and the writer and buffer
/// for the next one.
type Written = (u64, Result<(), StoreError>, PieceWriter, PieceBuf);

async fn pull(
    content: &Arc<Content>,
    peer: NodeId,
    d: &Download,
    inflight: &mut VecDeque<u64>,
) -> Result<(), WorkerError> {
    let Download {
        id,
        live,
        part,
        tx,
        writes,
    } = d;
    let id = *id;
    let mut client = BlobClient::open(content, peer)
        .await
        .map_err(WorkerError::Peer)?;
    // Each source verifies pieces as they stream in, and writes them on handles of its
    // own, up to WRITES at once while it reads the next; the download is locked only to
    // count a piece in.
    let mut writers: Vec<PieceWriter> = (0..WRITES)
        .map(|_| lock(part).writer())
        .collect::<Result<_, _>>()
        .map_err(|e| WorkerError::Local(e.to_string()))?;
    let mut buffers: Vec<PieceBuf> = Vec::new();
    let mut writing: VecDeque<tokio::task::JoinHandle<Written>> = VecDeque::new();
    // Pieces asked for and not yet read, in order (`inflight` also holds those being
    // written).
    let mut unread: VecDeque<u64> = VecDeque::new();
    loop {
        while inflight.len() < PIPELINE {
            // Skipping what this source already has under way, or what is in already (a
            // failed source puts back every piece it had, some also taken by others).
            let queued = {
                let mut queue = lock(&live.queue);
                std::iter::from_fn(|| queue.pop_front())
                    .find(|p| !inflight.contains(p) && !live.has(*p))
            };
            // The end game: with the queue empty, ask for a piece another source has had
            // in flight, so one slow or silent peer cannot hold the last pieces back.
            let next = queued.or_else(|| {
                lock(part)
                    .missing()
                    .into_iter()
                    .find(|p| !inflight.contains(p))
            });
            let Some(piece) = next else {
                break;
            };
            client
                .request_piece(&id, piece)
                .await
                .map_err(WorkerError::Peer)?;
            inflight.push_back(piece);
            unread.push_back(piece);
        }
        if unread.is_empty() || writers.is_empty() {
            // Nothing to read, or every writer busy: wait for the oldest write.
            let Some(task) = writing.pop_front() else {
                return Ok(());
            };
            let (piece, result, writer, buf) = task
                .await
                .map_err(|e| WorkerError::Local(format!("a storage task failed: {e}")))?;
            writers.push(writer);
            buffers.push(buf);
            match result {
                Ok(()) => {
                    if let Some(at) = inflight.iter().position(|p| *p == piece) {
                        inflight.remove(at);
                    }
                }
                Err(StoreError::Piece(
                    e @ (PieceError::Corrupt { .. } | PieceError::TooLong { .. }),
                )) => return Err(WorkerError::Corrupt(e.to_string())),
                Err(e) => return Err(WorkerError::Local(e.to_string())),
            }
            continue;
        }
        let piece = *unread.front().expect("checked above");
        client.flush().await.map_err(WorkerError::Peer)?;
        let decoder = PieceDecoder::new(id, live.size(), piece, buffers.pop().unwrap_or_default())
            .map_err(|e| WorkerError::Local(e.to_string()))?;
        let read = tokio::time::timeout(Duration::from_secs(30), client.read_piece(decoder))
            .await
            .map_err(|_| WorkerError::Peer(PeerError::Timeout))?;
        let verified = match read {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err(WorkerError::Peer(PeerError::Protocol(
                    "it no longer holds the blob".into(),
                )));
            }
            Err(PeerError::Protocol(e)) => return Err(WorkerError::Corrupt(e)),
            Err(e) => return Err(WorkerError::Peer(e)),
        };
        unread.pop_front();
        let mut writer = writers.pop().expect("checked above");
        let p = part.clone();
        let l = live.clone();
        let t = tx.clone();
        writing.push_back(writes.spawn_blocking(move || {
            let r = writer.write_verified(&verified).and_then(|()| {
                let mut part = lock(&p);
                part.mark(piece)?;
                Ok(part.have_bytes())
            });
            let r = r.map(|have| {
                if let Some(h) = l.have.get(piece as usize) {
                    h.store(true, Ordering::Release);
                }
                // Readers waiting on the piece (the gateway) wake on this.
                t.send_modify(|p| p.have = have);
            });
            (piece, r, writer, verified.into_buf())
        }));
    }
}
