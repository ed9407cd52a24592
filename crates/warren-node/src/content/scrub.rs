//! The scrub: every held blob is hashed whole again, now and then, in the background.
//!
//! A holder serves pieces as they are on its disk (it verified them when they came in), so
//! rot on disk would reach peers, who refuse it. The scrub finds it first: a blob that no
//! longer hashes to its id is removed, and replication fetches it again if a followed
//! channel names it. The scrub runs one blob at a time and rests three times as long as
//! it worked, so it takes at most a quarter of one core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_content::StoreError;

use super::{Content, blocking};

/// Rest after hashing, as a multiple of the time the hashing took.
const REST: u32 = 3;

pub(super) async fn run(content: Arc<Content>, cancel: CancellationToken) {
    let every = content.config.scrub_every;
    loop {
        // The first pass comes one period after the start, not at it: restarts stay cheap.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let removed = tokio::select! {
            () = cancel.cancelled() => return,
            removed = pass(&content) => removed,
        };
        if removed > 0 {
            content.wake.notify_one();
        }
    }
}

/// Hashes every held blob once; returns how many were rotten and removed.
async fn pass(content: &Arc<Content>) -> usize {
    let mut removed = 0;
    for (id, size) in content.blobs.list() {
        let started = Instant::now();
        let blobs = content.blobs.clone();
        match blocking(move || blobs.verify(&id)).await {
            Ok(Ok(())) => debug!(%id, size, "scrubbed"),
            Ok(Err(StoreError::HashMismatch { .. })) => {
                warn!(%id, "a held blob no longer matches its id (disk rot?); removed it");
                removed += 1;
            }
            // Removed meanwhile, or unreadable: the next pass looks again.
            Ok(Err(e)) => debug!(%id, "not scrubbed: {e}"),
            Err(e) => debug!(%id, "not scrubbed: {e}"),
        }
        tokio::time::sleep(
            started
                .elapsed()
                .saturating_mul(REST)
                .min(Duration::from_secs(60)),
        )
        .await;
    }
    removed
}
