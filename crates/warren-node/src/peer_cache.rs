//! The peers a node has met, kept in `peers.json` in the data dir so that a restart (or a
//! country cut off from its bootstrap nodes) can rejoin without the bootstrap list.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_net::{KnownPeer, NetState};

const FILE: &str = "peers.json";
/// A cache file larger than this is not read (it is ours, so it was damaged or replaced).
const MAX_FILE_BYTES: u64 = 1 << 20;
const SAVE_EVERY: Duration = Duration::from_secs(30);

pub(crate) fn load(dir: &Path) -> Vec<KnownPeer> {
    let path = dir.join(FILE);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            warn!(
                "ignoring the peer cache {}: it is over 1 MiB",
                path.display()
            );
            return Vec::new();
        }
        Err(_) => return Vec::new(),
        Ok(_) => {}
    }
    match std::fs::read(&path).map(|b| serde_json::from_slice::<Vec<KnownPeer>>(&b)) {
        Ok(Ok(peers)) => peers,
        Ok(Err(e)) => {
            warn!("ignoring the damaged peer cache {}: {e}", path.display());
            Vec::new()
        }
        Err(e) => {
            warn!("could not read the peer cache {}: {e}", path.display());
            Vec::new()
        }
    }
}

/// Writes the cache atomically (a temporary file renamed over the old one).
pub(crate) fn save(dir: &Path, peers: &[KnownPeer]) {
    if peers.is_empty() {
        return;
    }
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let result = serde_json::to_vec_pretty(peers)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match result {
        Ok(()) => debug!(peers = peers.len(), "saved the peer cache"),
        Err(e) => warn!("could not save the peer cache to {}: {e}", path.display()),
    }
}

pub(crate) async fn save_loop(
    dir: std::path::PathBuf,
    state: watch::Receiver<NetState>,
    cancel: CancellationToken,
) {
    let mut last: std::sync::Arc<Vec<KnownPeer>> = Default::default();
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let peers = state.borrow().known_peers.clone();
                if peers != last {
                    save(&dir, &peers);
                    last = peers;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_types::Identity;

    #[test]
    fn the_cache_round_trips_and_survives_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let peers = vec![KnownPeer {
            id: Identity::generate().node_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4451".into()],
        }];
        save(dir.path(), &peers);
        assert_eq!(load(dir.path()), peers);
        std::fs::write(dir.path().join(FILE), b"[{").unwrap();
        assert!(load(dir.path()).is_empty());
    }
}
