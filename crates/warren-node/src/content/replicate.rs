//! Replication of followed channels: at start the node announces what it holds; then, on
//! every tick, follow or piece of news, it syncs each followed channel's entries from its
//! holders and fetches the blobs it lacks, newest first, as long as they fit the quota.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warren_content::{ContentId, SignedEntry};
use warren_types::NodeId;

use super::proto::{MAX_SYNC_ENTRIES, sync_from};
use super::{Content, blob_key, channel_key, topic};

/// Most peers a channel is synced from in one round.
const MAX_SYNC_PEERS: usize = 8;
/// Most answers asked of one peer in one round (× 256 entries).
const MAX_SYNC_PAGES: usize = 64;

/// How often held blobs and channels are announced again (records are only stored by the
/// peers reachable at the time of the announcement).
const REANNOUNCE: Duration = Duration::from_secs(15 * 60);

pub(super) async fn run(content: Arc<Content>, cancel: CancellationToken) {
    let mut state = content.net().watch_state();
    let mut alone = state.borrow().connected.is_empty();
    announce_held(&content).await;
    let mut tick = tokio::time::interval(content.config.sync_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reannounce =
        tokio::time::interval_at(tokio::time::Instant::now() + REANNOUNCE, REANNOUNCE);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
            () = content.wake.notified() => {}
            _ = reannounce.tick() => {
                announce_held(&content).await;
                continue;
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_alone = state.borrow_and_update().connected.is_empty();
                // First peers after none (start, or the end of a shutdown): tell them.
                let joined = alone && !now_alone;
                alone = now_alone;
                if !joined {
                    continue;
                }
                announce_held(&content).await;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = round(&content) => {}
        }
    }
}

/// Announces every blob and served channel in the DHT, and joins the channels' topics.
async fn announce_held(content: &Arc<Content>) {
    let net = content.net();
    for channel in content.served_channels() {
        let _ = net.subscribe(topic(&channel)).await;
        if content.channel_len(&channel) > 0 {
            let _ = net.provide(channel_key(&channel)).await;
        }
    }
    let blobs = content.blobs.clone();
    let held = tokio::task::spawn_blocking(move || blobs.list())
        .await
        .unwrap_or_default();
    for (id, _) in held {
        let _ = net.provide(blob_key(&id)).await;
    }
}

async fn round(content: &Arc<Content>) {
    // What gossip brought since the last round is fetched first: syncing may wait on
    // peers that stopped answering.
    fetch_missing(content).await;
    for channel in content.follows() {
        let before = content.channel_len(&channel);
        sync_channel(content, &channel).await;
        if content.channel_len(&channel) > 0 {
            let _ = content.net().provide(channel_key(&channel)).await;
        }
        let after = content.channel_len(&channel);
        if after > before {
            info!(%channel, new = after - before, "channel updated");
        }
    }
    fetch_missing(content).await;
}

/// Brings `channel` up to date from the peers that hold it: connected peers first (the
/// DHT is searched meanwhile), then the holders the DHT names.
pub(super) async fn sync_channel(content: &Arc<Content>, channel: &NodeId) {
    let net = content.net();
    let me = net.local_id();
    let lookup = {
        let content = content.clone();
        let channel = *channel;
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                content
                    .net()
                    .find_providers(channel_key(&channel), MAX_SYNC_PEERS),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
        })
    };
    let state = net.state();
    let mut asked = BTreeSet::from([me]);
    let mut near: Vec<NodeId> = state
        .connected
        .iter()
        .copied()
        .filter(|p| !state.banned.contains(p))
        .take(MAX_SYNC_PEERS + 8)
        .collect();
    // Each group all at once: peers that no longer answer (their link just went down and
    // the connections are not yet known dead) cost the round one stream-open timeout in
    // all, not one each, before the blobs of what was found are fetched.
    near.retain(|p| asked.insert(*p));
    futures::future::join_all(
        near.into_iter()
            .map(|peer| sync_with(content, peer, channel)),
    )
    .await;
    let mut far = lookup.await.unwrap_or_default();
    far.retain(|p| !state.banned.contains(p) && asked.insert(*p));
    futures::future::join_all(
        far.into_iter()
            .map(|peer| sync_with(content, peer, channel)),
    )
    .await;
}

async fn sync_with(content: &Arc<Content>, peer: NodeId, channel: &NodeId) {
    for _ in 0..MAX_SYNC_PAGES {
        let after = content.channel_len(channel);
        let records = match sync_from(content, peer, channel, after).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%peer, "channel sync failed: {e}");
                return;
            }
        };
        let full = records.len() == MAX_SYNC_ENTRIES;
        for bytes in records {
            let admitted = SignedEntry::from_bytes(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|s| content.admit(*channel, s).map_err(|e| e.to_string()));
            if let Err(e) = admitted {
                debug!(%peer, "a synced entry was refused: {e}");
                content.net().penalise(peer).await;
                return;
            }
        }
        if !full {
            return;
        }
    }
}

/// Fetches the blobs of followed channels this node lacks, newest first, within the quota.
async fn fetch_missing(content: &Arc<Content>) {
    let follows: BTreeSet<NodeId> = content.follows().into_iter().collect();
    let mut wanted: Vec<(u64, u64, ContentId, u64)> = Vec::new();
    {
        let inner = content.inner();
        for id in &follows {
            if let Some(ch) = inner.channels.get(id) {
                for e in ch.entries() {
                    wanted.push((e.published_at, e.seq, e.content, e.size));
                }
            }
        }
    }
    wanted.sort_by_key(|w| std::cmp::Reverse((w.0, w.1)));
    let mut seen = BTreeSet::new();
    // Disk in use, read once a round; what this round fetches is added as it completes.
    let blobs = content.blobs.clone();
    let mut used = tokio::task::spawn_blocking(move || blobs.total_bytes())
        .await
        .unwrap_or(u64::MAX);
    for (_, _, id, size) in wanted {
        if !seen.insert(id) || content.blobs.contains(&id) {
            continue;
        }
        if used.saturating_add(size) > content.config.quota {
            debug!(%id, size, used, quota = content.config.quota, "over the quota; not replicating");
            continue;
        }
        let mut progress = content.fetch(id);
        while !progress.borrow_and_update().finished() {
            if progress.changed().await.is_err() {
                break;
            }
        }
        if progress.borrow().error.is_none() {
            used = used.saturating_add(size);
        }
    }
}
