//! Content among in-process nodes: a peer that serves corrupted chunks is dropped and the
//! download completes, correct, from an honest one; from liars alone nothing is kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warren_content::{BlobStore, ContentId};
use warren_net::{Network, OfferBook, Verdict};
use warren_node::{NodeConfig, NodeHandle};
use warren_testkit::memory_net;
use warren_types::{Identity, NodeId};

struct NoOffers;

impl OfferBook for NoOffers {
    fn offer_received(&self, _: NodeId, _: &[u8]) -> Verdict {
        Verdict::Ignore
    }
    fn offers_snapshot(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

fn bytes(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn node(data: &tempfile::TempDir, bootstrap: Vec<String>) -> NodeHandle {
    let mut net = memory_net(Identity::generate());
    net.bootstrap = bootstrap;
    let mut config = NodeConfig::new(net);
    config.data_dir = Some(data.path().to_path_buf());
    NodeHandle::spawn(config).await.expect("node starts")
}

/// A peer that holds the blob and speaks `/warren/blob/1`, but flips a bit in every piece
/// it sends. Counts the pieces it sent.
async fn liar(
    store: BlobStore,
    cancel: CancellationToken,
) -> (Network, Vec<String>, Arc<AtomicUsize>) {
    let (net, _task) = Network::spawn(
        memory_net(Identity::generate()),
        Arc::new(NoOffers),
        cancel.clone(),
    )
    .await
    .expect("liar's network");
    let mut incoming = net.streams().accept("/warren/blob/1").unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let store = store.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 41];
                while s.read_exact(&mut req).await.is_ok() {
                    let id = ContentId(req[1..33].try_into().unwrap());
                    let piece = u64::from_le_bytes(req[33..].try_into().unwrap());
                    let Some(size) = store.size(&id) else {
                        let _ = s.write_all(&[1]).await;
                        continue;
                    };
                    if req[0] == 0 {
                        let mut out = vec![0u8];
                        out.extend_from_slice(&size.to_le_bytes());
                        out.extend_from_slice(&0u16.to_le_bytes());
                        let _ = s.write_all(&out).await;
                    } else {
                        let mut enc = store.encode_piece(&id, piece).unwrap();
                        let at = enc.len() / 2;
                        enc[at] ^= 0x10;
                        let mut out = vec![0u8];
                        out.extend_from_slice(&(enc.len() as u32).to_le_bytes());
                        out.extend_from_slice(&enc);
                        count.fetch_add(1, Ordering::Relaxed);
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                    let _ = s.flush().await;
                }
            });
        }
    });
    let addrs = wait_listen(&net).await;
    (net, addrs, served)
}

async fn wait_listen(net: &Network) -> Vec<String> {
    let mut state = net.watch_state();
    loop {
        let addrs = state.borrow().listen_addrs.clone();
        if !addrs.is_empty() {
            return addrs
                .into_iter()
                .map(|a| format!("{a}/p2p/{}", net.local_id()))
                .collect();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), state.changed()).await;
    }
}

async fn wait_connected(node: &NodeHandle, peers: &[NodeId]) {
    let mut state = node.network().watch_state();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if peers.iter().all(|p| state.borrow().connected.contains(p)) {
                return;
            }
            let _ = state.changed().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "peers did not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_chunks_is_dropped_and_the_download_completes() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let original = bytes(6 * (1 << 20) + 4321);
    let file = dirs[3].path().join("video.webm");
    std::fs::write(&file, &original).unwrap();

    let honest = node(&dirs[0], Vec::new()).await;
    let published = honest
        .publish(file.clone(), "news", Some("day 3".into()))
        .await
        .unwrap();
    let id: ContentId = published.id.parse().unwrap();

    let cancel = CancellationToken::new();
    let lies = BlobStore::open(dirs[1].path().join("liar")).unwrap();
    lies.import_bytes(&original).unwrap();
    let (liar_net, liar_addrs, served) = liar(lies, cancel.clone()).await;

    let mut bootstrap = honest.dial_addrs();
    bootstrap.extend(liar_addrs.clone());
    let fetcher = node(&dirs[2], bootstrap).await;
    wait_connected(&fetcher, &[honest.node_id(), liar_net.local_id()]).await;

    let size = fetcher.fetch(id).await.expect("the download completes");
    assert_eq!(size, original.len() as u64);
    let got = std::fs::read(fetcher.content_path(&id).unwrap()).unwrap();
    assert!(
        got == original,
        "the fetched blob differs from the original"
    );
    assert!(
        served.load(Ordering::Relaxed) >= 1,
        "the liar was never asked, so the test showed nothing"
    );

    // Once the honest holders are gone, a node that reaches only the liar keeps nothing
    // and says why.
    for n in [honest, fetcher] {
        n.shutdown().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let alone = node(&dir, liar_addrs).await;
    wait_connected(&alone, &[liar_net.local_id()]).await;
    let err = alone
        .fetch(id)
        .await
        .expect_err("only corrupt pieces on offer");
    assert!(err.contains("no reachable peer holds"), "{err}");
    assert!(alone.content_path(&id).is_none());
    assert!(served.load(Ordering::Relaxed) >= 2);

    cancel.cancel();
    alone.shutdown().await;
}
