//! Publishing: the node's blobs and channels, the protocols that serve them to peers,
//! fetching from several peers at once, and replication of the channels it follows.
//!
//! What is verified where: an entry is checked by [`Channel::append`] before it is kept,
//! served or gossiped on; a piece of a blob by [`warren_content::Partial::add_piece`] before
//! a byte of it is written; a finished download is hashed whole once more. A peer that sends
//! a forged entry or a corrupt piece is penalised through the network's peer scores.

pub mod api;
mod fetch;
mod proto;
mod replicate;
mod scrub;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_content::channel::ChannelError;
use warren_content::{BlobStore, Channel, ChannelStore, ContentId, Entry, SignedEntry};
use warren_net::{Network, Verdict};
use warren_types::{Identity, NodeId};

pub use fetch::Progress;

/// What a node runner sets about content.
#[derive(Clone, Debug)]
pub struct ContentConfig {
    /// Most bytes of blobs the node keeps for the channels it follows; what is published
    /// here or fetched by hand is always kept, and counts towards it.
    pub quota: u64,
    /// How often followed channels are synchronised with peers (news also arrives by
    /// gossip at once).
    pub sync_every: Duration,
    /// How often every held blob is hashed whole again, to find rot on disk before peers
    /// do (the first pass comes one period after the start).
    pub scrub_every: Duration,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            quota: 10 << 30,
            sync_every: Duration::from_secs(30),
            scrub_every: Duration::from_secs(24 * 3600),
        }
    }
}

/// The channel a node publishes under `name`: a key of its own, derived from the node's
/// identity, so a recovery phrase restores every channel too.
pub(crate) fn channel_identity(node: &Identity, name: &str) -> Identity {
    let mut input = node.secret().to_vec();
    input.extend_from_slice(name.as_bytes());
    Identity::from_secret(blake3::derive_key("warren channel key v1", &input))
}

pub(crate) const TOPIC_PREFIX: &str = "warren/channel/1/";

pub(crate) fn topic(channel: &NodeId) -> String {
    format!("{TOPIC_PREFIX}{channel}")
}

/// The DHT key under which holders of a blob announce themselves.
/// Locks `m`; a task that panicked while holding it does not make it unusable for the
/// rest of the node.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn blob_key(id: &ContentId) -> Vec<u8> {
    [b"warren/blob/".as_slice(), &id.0].concat()
}

/// The DHT key under which holders of a channel announce themselves.
pub(crate) fn channel_key(channel: &NodeId) -> Vec<u8> {
    [b"warren/channel/".as_slice(), &channel.public_key()].concat()
}

/// A media type from a file name's extension; `application/octet-stream` when unknown.
pub(crate) fn media_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mov" => "video/quicktime",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "epub" => "application/epub+zip",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// What survives a restart besides the blobs and logs: own channel names and follows.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    own: BTreeMap<String, NodeId>,
    follows: BTreeSet<NodeId>,
}

#[derive(Default)]
struct Inner {
    channels: HashMap<NodeId, Channel>,
    /// Own channels by name.
    own: BTreeMap<String, NodeId>,
    follows: BTreeSet<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ContentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
}

impl From<warren_content::StoreError> for ContentError {
    fn from(e: warren_content::StoreError) -> Self {
        match e {
            warren_content::StoreError::NotFound(_) => ContentError::NotFound(e.to_string()),
            other => ContentError::Failed(other.to_string()),
        }
    }
}

/// Runs blocking store work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ContentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContentError::Failed(format!("a storage task failed: {e}")))
}

/// The node's content: stores, channels, follows, fetches under way.
pub(crate) struct Content {
    identity: Identity,
    pub(crate) blobs: BlobStore,
    feeds: ChannelStore,
    saved_path: PathBuf,
    pub(crate) config: ContentConfig,
    inner: Mutex<Inner>,
    net: OnceLock<Network>,
    /// The node's token: downloads end with the node.
    cancel: OnceLock<CancellationToken>,
    /// Wakes replication (a follow, news by gossip).
    wake: Notify,
    fetches: Mutex<HashMap<ContentId, watch::Receiver<Progress>>>,
    /// Downloads under way whose pieces can be read as they come in.
    live: Mutex<HashMap<ContentId, Arc<fetch::Live>>>,
    /// Keeps a node without a data dir's content in a temporary dir, removed with it.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("blobs", &self.blobs.dir())
            .finish()
    }
}

impl Content {
    /// Opens the stores under `data_dir` (a temporary dir without one) and loads channels.
    pub(crate) fn open(
        identity: Identity,
        data_dir: Option<&Path>,
        config: ContentConfig,
    ) -> Result<Arc<Content>, String> {
        let (root, temp) = match data_dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("warren-content-")
                    .tempdir()
                    .map_err(|e| format!("could not make a temporary content dir: {e}"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let blobs = BlobStore::open(root.join("blobs")).map_err(|e| e.to_string())?;
        let feeds = ChannelStore::open(root.join("channels")).map_err(|e| e.to_string())?;
        let saved_path = root.join("content.json");
        let saved: Saved = match std::fs::read(&saved_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged: {e}", saved_path.display()))?,
            Err(_) => Saved::default(),
        };
        let (channels, warnings) = feeds.load();
        for w in warnings {
            warn!("channel log repaired: {w}");
        }
        let inner = Inner {
            channels: channels.into_iter().map(|c| (c.publisher(), c)).collect(),
            own: saved.own,
            follows: saved.follows,
        };
        Ok(Arc::new(Content {
            identity,
            blobs,
            feeds,
            saved_path,
            config,
            inner: Mutex::new(inner),
            net: OnceLock::new(),
            cancel: OnceLock::new(),
            wake: Notify::new(),
            fetches: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            _temp: temp,
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub(crate) fn net(&self) -> &Network {
        self.net.get().expect("the network is attached at start")
    }

    fn save(&self) {
        let saved = {
            let inner = self.inner();
            Saved {
                own: inner.own.clone(),
                follows: inner.follows.clone(),
            }
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&saved) else {
            return;
        };
        let tmp = self.saved_path.with_extension("json.tmp");
        if let Err(e) =
            std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.saved_path))
        {
            warn!("could not save {}: {e}", self.saved_path.display());
        }
    }

    /// Attaches the network and starts serving, announcing and replicating.
    pub(crate) fn start(
        self: &Arc<Self>,
        net: Network,
        cancel: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, warren_net::StreamError> {
        let _ = self.net.set(net);
        let _ = self.cancel.set(cancel.clone());
        let mut tasks = proto::serve(self.clone(), cancel.clone())?;
        tasks.push(tokio::spawn(replicate::run(self.clone(), cancel.clone())));
        tasks.push(tokio::spawn(scrub::run(self.clone(), cancel)));
        Ok(tasks)
    }

    /// Judges an entry gossiped on a channel's topic: kept and passed on if it is the
    /// channel's next, refused (and the sender penalised) if forged or a fork.
    pub(crate) fn topic_message(&self, topic: &str, from: NodeId, bytes: &[u8]) -> Verdict {
        let Some(channel) = topic
            .strip_prefix(TOPIC_PREFIX)
            .and_then(|c| c.parse::<NodeId>().ok())
        else {
            return Verdict::Ignore;
        };
        let Ok(signed) = SignedEntry::from_bytes(bytes) else {
            return Verdict::Reject;
        };
        match self.admit(channel, signed) {
            Ok(true) => {
                self.wake.notify_one();
                Verdict::Accept
            }
            Ok(false) => Verdict::Ignore,
            Err(ChannelError::OutOfOrder { .. }) => {
                // We missed entries: the next sync fetches them in order.
                self.wake.notify_one();
                Verdict::Ignore
            }
            Err(e) => {
                debug!(peer = %from, "refused a gossiped entry: {e}");
                Verdict::Reject
            }
        }
    }

    /// Takes an entry of `channel` if it is the next one and this node holds or follows the
    /// channel. `Ok(false)`: nothing new (a replay, or a channel of no interest).
    pub(crate) fn admit(&self, channel: NodeId, signed: SignedEntry) -> Result<bool, ChannelError> {
        let mut inner = self.inner();
        let wanted = inner.follows.contains(&channel) || inner.channels.contains_key(&channel);
        if !wanted {
            return Ok(false);
        }
        let ch = inner
            .channels
            .entry(channel)
            .or_insert_with(|| Channel::new(channel));
        match ch.append(signed.clone()) {
            Ok(_) => {}
            Err(ChannelError::Replay { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.feeds.append(&signed) {
            warn!("could not write a channel entry to disk: {e}");
        }
        Ok(true)
    }

    /// Signed entries of `channel` from `after` on (at most `limit`), for a peer that syncs.
    pub(crate) fn entries_after(&self, channel: &NodeId, after: u64, limit: usize) -> Vec<Vec<u8>> {
        let inner = self.inner();
        let Some(ch) = inner.channels.get(channel) else {
            return Vec::new();
        };
        ch.signed()
            .iter()
            .skip(after.min(usize::MAX as u64) as usize)
            .take(limit)
            .map(SignedEntry::to_bytes)
            .collect()
    }

    /// How many entries this node holds of `channel`.
    pub(crate) fn channel_len(&self, channel: &NodeId) -> u64 {
        self.inner().channels.get(channel).map_or(0, Channel::len)
    }

    pub(crate) fn follows(&self) -> Vec<NodeId> {
        self.inner().follows.iter().copied().collect()
    }

    /// Channels whose entries and blobs this node offers to others: its own and followed.
    fn served_channels(&self) -> Vec<NodeId> {
        let inner = self.inner();
        inner
            .own
            .values()
            .chain(inner.follows.iter())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The entry naming `id`, if any held channel has one (its media type, its size).
    pub(crate) fn entry_for(&self, id: &ContentId) -> Option<Entry> {
        self.signed_entry_for(id)?.verify().ok()
    }

    /// A signed entry naming `id`: from a held channel, or the one a download brought
    /// along (kept beside the blob, so a blob fetched by id alone keeps its media type).
    pub(crate) fn signed_entry_for(&self, id: &ContentId) -> Option<SignedEntry> {
        let held = {
            let inner = self.inner();
            inner.channels.values().find_map(|c| {
                c.entries()
                    .iter()
                    .rposition(|e| e.content == *id)
                    .map(|i| c.signed()[i].clone())
            })
        };
        held.or_else(|| {
            let bytes = std::fs::read(self.loose_path(id)).ok()?;
            let signed = SignedEntry::from_bytes(&bytes).ok()?;
            (signed.verify().ok()?.content == *id).then_some(signed)
        })
    }

    fn loose_path(&self, id: &ContentId) -> PathBuf {
        self.blobs.dir().join(format!("{id}.entry"))
    }

    /// Keeps an entry a peer sent along with a blob, once checked: signed, naming `id`.
    pub(crate) fn keep_loose_entry(&self, id: &ContentId, signed: &SignedEntry) {
        if signed.verify().is_ok_and(|e| e.content == *id) {
            let _ = std::fs::write(self.loose_path(id), signed.to_bytes());
        }
    }

    /// Publishes the file at `path` in the channel `name` (made on first use).
    pub(crate) async fn publish(
        self: &Arc<Self>,
        path: PathBuf,
        name: String,
        title: Option<String>,
        media_type: Option<String>,
    ) -> Result<Published, ContentError> {
        if name.is_empty() || name.len() > warren_content::MAX_CHANNEL_NAME {
            return Err(ContentError::BadRequest(format!(
                "a channel name has 1 to {} bytes",
                warren_content::MAX_CHANNEL_NAME
            )));
        }
        if !path.is_file() {
            return Err(ContentError::BadRequest(format!(
                "{} is not a file the node can read",
                path.display()
            )));
        }
        let title = title.unwrap_or_else(|| {
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        });
        if title.len() > warren_content::MAX_TITLE {
            return Err(ContentError::BadRequest(format!(
                "the title is longer than {} bytes",
                warren_content::MAX_TITLE
            )));
        }
        let media_type = media_type.unwrap_or_else(|| media_type_of(&path).to_string());
        if media_type.len() > warren_content::MAX_MEDIA_TYPE || media_type.contains(['\r', '\n']) {
            return Err(ContentError::BadRequest(
                "the media type is not valid".into(),
            ));
        }
        let blobs = self.blobs.clone();
        let import_path = path.clone();
        let (id, size) = blocking(move || blobs.import_file(&import_path)).await??;

        let key = channel_identity(&self.identity, &name);
        let channel = key.node_id();
        let (signed, seq) = {
            let mut inner = self.inner();
            inner.own.insert(name.clone(), channel);
            let ch = inner
                .channels
                .entry(channel)
                .or_insert_with(|| Channel::new(channel));
            let signed = ch
                .publish(
                    &key,
                    &name,
                    id,
                    &title,
                    &media_type,
                    size,
                    crate::unix_now(),
                )
                .map_err(|e| ContentError::Failed(e.to_string()))?;
            (signed, ch.len() - 1)
        };
        self.feeds
            .append(&signed)
            .map_err(|e| ContentError::Failed(e.to_string()))?;
        self.save();
        let net = self.net();
        let _ = net.subscribe(topic(&channel)).await;
        let _ = net.publish(topic(&channel), signed.to_bytes()).await;
        let _ = net.provide(blob_key(&id)).await;
        let _ = net.provide(channel_key(&channel)).await;
        info!(%channel, seq, size, "published");
        Ok(Published {
            id: id.to_string(),
            channel: channel.to_string(),
            name,
            seq,
            size,
        })
    }

    /// Follows `channel`: its entries and blobs are replicated from now on.
    pub(crate) async fn follow(self: &Arc<Self>, channel: NodeId) {
        let new = self.inner().follows.insert(channel);
        if new {
            self.save();
            let _ = self.net().subscribe(topic(&channel)).await;
        }
        self.wake.notify_one();
    }

    pub(crate) async fn unfollow(self: &Arc<Self>, channel: NodeId) -> bool {
        let was = self.inner().follows.remove(&channel);
        if was {
            self.save();
            let own = self.inner().own.values().any(|c| *c == channel);
            if !own {
                let _ = self.net().unsubscribe(topic(&channel)).await;
            }
        }
        was
    }

    /// Starts (or joins) the download of `id`; the receiver follows its progress.
    pub(crate) fn fetch(self: &Arc<Self>, id: ContentId) -> watch::Receiver<Progress> {
        let mut fetches = lock(&self.fetches);
        if let Some(rx) = fetches.get(&id)
            && !rx.borrow().finished()
        {
            return rx.clone();
        }
        let size_hint = self.entry_for(&id).map(|e| e.size);
        let (tx, rx) = watch::channel(Progress::start(self.blobs.progress(&id)));
        fetches.insert(id, rx.clone());
        let cancel = self.cancel.get().cloned().unwrap_or_default();
        let run = fetch::run(self.clone(), id, size_hint, tx);
        tokio::spawn(async move {
            // Cut short, the download stays in its .part/.have files for the next start.
            tokio::select! {
                () = cancel.cancelled() => {}
                () = run => {}
            }
        });
        rx
    }

    /// Verified bytes held of `id` and its size: from the download under way if there is
    /// one (its record on disk is written only every few pieces), else from the store.
    pub(crate) fn progress(&self, id: &ContentId) -> Option<(u64, u64)> {
        if let Some(size) = self.blobs.size(id) {
            return Some((size, size));
        }
        if let Some(p) = self.fetch_progress(id)
            && !p.finished()
            && let Some(size) = p.size
        {
            return Some((p.have, size));
        }
        self.blobs.progress(id)
    }

    /// The download of `id` under way, once its size is known.
    pub(crate) fn live(&self, id: &ContentId) -> Option<Arc<fetch::Live>> {
        let live = lock(&self.live);
        live.get(id).cloned()
    }

    pub(crate) fn set_live(&self, id: ContentId, download: Option<Arc<fetch::Live>>) {
        let mut live = lock(&self.live);
        match download {
            Some(d) => live.insert(id, d),
            None => live.remove(&id),
        };
    }

    /// The progress of the download of `id`, if one was started since the node began.
    pub(crate) fn fetch_progress(&self, id: &ContentId) -> Option<Progress> {
        let fetches = lock(&self.fetches);
        fetches.get(id).map(|rx| rx.borrow().clone())
    }

    /// Views of every channel held or followed, own first.
    pub(crate) fn channel_views(&self) -> Vec<api::ChannelView> {
        let inner = self.inner();
        let own: BTreeMap<NodeId, String> =
            inner.own.iter().map(|(n, c)| (*c, n.clone())).collect();
        let mut ids: BTreeSet<NodeId> = inner.channels.keys().copied().collect();
        ids.extend(inner.follows.iter().copied());
        ids.extend(own.keys().copied());
        let mut views: Vec<api::ChannelView> = ids
            .into_iter()
            .map(|id| {
                let ch = inner.channels.get(&id);
                let name = own
                    .get(&id)
                    .cloned()
                    .or_else(|| {
                        ch.and_then(|c| c.entries().last())
                            .map(|e| e.channel.clone())
                    })
                    .unwrap_or_default();
                api::ChannelView {
                    id: id.to_string(),
                    name,
                    own: own.contains_key(&id),
                    following: inner.follows.contains(&id),
                    entries: ch.map_or(0, Channel::len),
                    latest: ch
                        .and_then(|c| c.entries().last())
                        .map(|e| self.entry_view(e)),
                }
            })
            .collect();
        views.sort_by_key(|v| (!v.own, v.name.clone()));
        views
    }

    pub(crate) fn entry_view(&self, e: &Entry) -> api::EntryView {
        api::EntryView {
            seq: e.seq,
            id: e.content.to_string(),
            title: e.title.clone(),
            media_type: e.media_type.clone(),
            size: e.size,
            published_at: e.published_at,
            held: self.blobs.contains(&e.content),
        }
    }

    /// One channel's entries, newest first.
    pub(crate) fn channel_detail(&self, id: &NodeId) -> Option<api::ChannelDetail> {
        let view = self
            .channel_views()
            .into_iter()
            .find(|v| v.id == id.to_string())?;
        let entries = {
            let inner = self.inner();
            inner
                .channels
                .get(id)
                .map(|c| c.entries().iter().rev().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        Some(api::ChannelDetail {
            channel: view,
            entries: entries.iter().map(|e| self.entry_view(e)).collect(),
        })
    }

    /// Finds a channel by id, or by the name of one of this node's own channels.
    pub(crate) fn resolve(&self, text: &str) -> Result<NodeId, ContentError> {
        if let Ok(id) = text.parse::<NodeId>() {
            return Ok(id);
        }
        self.inner().own.get(text).copied().ok_or_else(|| {
            ContentError::NotFound(format!(
                "{text:?} is neither a channel id nor the name of a channel this node publishes"
            ))
        })
    }

    /// Writes a channel's log and the blobs held of it into `dir` (a USB stick).
    pub(crate) async fn export(
        self: &Arc<Self>,
        channel: NodeId,
        dir: PathBuf,
    ) -> Result<api::ExportReport, ContentError> {
        let ch = self
            .inner()
            .channels
            .get(&channel)
            .cloned()
            .ok_or_else(|| {
                ContentError::NotFound(format!("this node holds no channel {channel}"))
            })?;
        let blobs = self.blobs.clone();
        blocking(move || -> Result<api::ExportReport, ContentError> {
            let blob_dir = dir.join("blobs");
            std::fs::create_dir_all(&blob_dir).map_err(|e| {
                ContentError::BadRequest(format!("cannot write to {}: {e}", blob_dir.display()))
            })?;
            warren_content::feeds::write_log(
                &dir.join(warren_content::feeds::log_name(&channel)),
                &ch,
            )
            .map_err(|e| ContentError::Failed(e.to_string()))?;
            let mut report = api::ExportReport {
                channel: channel.to_string(),
                entries: ch.len(),
                blobs: 0,
                missing: 0,
            };
            let ids: BTreeSet<ContentId> = ch.entries().iter().map(|e| e.content).collect();
            for id in ids {
                if blobs.contains(&id) {
                    let dest = blob_dir.join(id.to_string());
                    std::fs::copy(blobs.data_path(&id), &dest).map_err(|e| {
                        ContentError::Failed(format!("could not copy to {}: {e}", dest.display()))
                    })?;
                    report.blobs += 1;
                } else {
                    report.missing += 1;
                }
            }
            Ok(report)
        })
        .await?
    }

    /// Reads channels and blobs exported into `dir`, verifying every signature and hash,
    /// and follows the channels.
    pub(crate) async fn import(
        self: &Arc<Self>,
        dir: PathBuf,
    ) -> Result<api::ImportReport, ContentError> {
        let blobs = self.blobs.clone();
        let read_dir = dir.clone();
        let (channels, imported) =
            blocking(move || -> Result<(Vec<Channel>, u64), ContentError> {
                let listing = std::fs::read_dir(&read_dir).map_err(|e| {
                    ContentError::BadRequest(format!("cannot read {}: {e}", read_dir.display()))
                })?;
                let mut channels = Vec::new();
                for entry in listing.flatten() {
                    let path = entry.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("log") {
                        continue;
                    }
                    let want = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse::<NodeId>().ok());
                    let ch = warren_content::feeds::read_log(&path, want)
                        .map_err(|e| ContentError::BadRequest(format!("refused: {e}")))?;
                    channels.push(ch);
                }
                if channels.is_empty() {
                    return Err(ContentError::BadRequest(format!(
                        "{} holds no channel logs (<channel id>.log)",
                        read_dir.display()
                    )));
                }
                let mut imported = 0;
                for ch in &channels {
                    for e in ch.entries() {
                        let file = read_dir.join("blobs").join(e.content.to_string());
                        if !file.is_file() || blobs.contains(&e.content) {
                            continue;
                        }
                        let (got, _) = blobs.import_file(&file)?;
                        if got != e.content {
                            let _ = blobs.remove(&got);
                            return Err(ContentError::BadRequest(format!(
                                "refused: {} does not hash to its name (it is {got})",
                                file.display()
                            )));
                        }
                        imported += 1;
                    }
                }
                Ok((channels, imported))
            })
            .await??;
        let mut report = api::ImportReport {
            channels: Vec::new(),
            blobs: imported,
        };
        for ch in channels {
            let id = ch.publisher();
            // The part held already must be the same chain, not a fork of it.
            let held = self.channel_len(&id);
            let common = held.min(ch.len()) as usize;
            let ours = self.entries_after(&id, 0, common);
            let theirs: Vec<Vec<u8>> = ch.signed()[..common]
                .iter()
                .map(SignedEntry::to_bytes)
                .collect();
            if ours != theirs {
                return Err(ContentError::Conflict(format!(
                    "channel {id}: the import is a fork of the channel this node holds"
                )));
            }
            self.inner().follows.insert(id);
            let mut added = 0;
            for signed in ch.signed().iter().skip(common) {
                match self.admit(id, signed.clone()) {
                    Ok(true) => added += 1,
                    Ok(false) => {}
                    Err(e) => {
                        return Err(ContentError::Conflict(format!(
                            "channel {id}: the import does not continue what this node holds: {e}"
                        )));
                    }
                }
            }
            report.channels.push(api::ImportedChannel {
                id: id.to_string(),
                entries: ch.len(),
                new_entries: added,
            });
            let _ = self.net().subscribe(topic(&id)).await;
        }
        self.save();
        self.wake.notify_one();
        Ok(report)
    }
}

/// What `publish` answers.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Published {
    /// The content id (BLAKE3, 64 hex digits).
    pub id: String,
    /// The channel's id.
    pub channel: String,
    /// The channel's name.
    pub name: String,
    pub seq: u64,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_name_has_its_own_stable_key() {
        let node = Identity::generate();
        let news = channel_identity(&node, "news");
        assert_eq!(news.node_id(), channel_identity(&node, "news").node_id());
        assert_ne!(news.node_id(), channel_identity(&node, "photos").node_id());
        assert_ne!(news.node_id(), node.node_id());
        // The same name under another node is another channel.
        let other = Identity::generate();
        assert_ne!(news.node_id(), channel_identity(&other, "news").node_id());
        // Restored from the same secret (a recovery phrase), the channel is the same.
        let restored = Identity::from_secret(node.secret());
        assert_eq!(
            news.node_id(),
            channel_identity(&restored, "news").node_id()
        );
    }

    #[test]
    fn media_types_follow_the_extension() {
        assert_eq!(media_type_of(Path::new("a/b/Clip.MP4")), "video/mp4");
        assert_eq!(media_type_of(Path::new("x.webm")), "video/webm");
        assert_eq!(
            media_type_of(Path::new("noext")),
            "application/octet-stream"
        );
    }
}
