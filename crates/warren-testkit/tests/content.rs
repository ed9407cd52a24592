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

/// How a hand-made holder of a blob behaves.
#[derive(Clone, Copy)]
struct Manner {
    /// Flip a bit in every piece sent.
    corrupt: bool,
    /// Answer this many piece requests, then fall silent.
    pieces: usize,
}

/// A peer that holds the blob and speaks `/warren/blob/1` in the given manner. Counts the
/// pieces it sent.
async fn holder(
    store: BlobStore,
    manner: Manner,
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
                        if count.load(Ordering::Relaxed) >= manner.pieces {
                            // Silent from now on: the stream stays open, nothing comes.
                            std::future::pending::<()>().await;
                        }
                        let mut enc = store.encode_piece(&id, piece).unwrap();
                        if manner.corrupt {
                            let at = enc.len() / 2;
                            enc[at] ^= 0x10;
                        }
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
    let manner = Manner {
        corrupt: true,
        pieces: usize::MAX,
    };
    let (liar_net, liar_addrs, served) = holder(lies, manner, cancel.clone()).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_only_the_missing_pieces() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let original = bytes(10 * (1 << 20));
    let cancel = CancellationToken::new();
    let store = |i: usize| {
        let s = BlobStore::open(dirs[i].path().join("held")).unwrap();
        s.import_bytes(&original).unwrap();
        s
    };
    let id = ContentId::of(&original);

    // A holder that sends four pieces, then falls silent.
    let stingy = Manner {
        corrupt: false,
        pieces: 4,
    };
    let (first, first_addrs, first_served) = holder(store(0), stingy, cancel.clone()).await;
    let fetcher = node(&dirs[2], first_addrs).await;
    wait_connected(&fetcher, &[first.local_id()]).await;
    let fetch = fetcher.fetch(id);
    let kept = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::pin!(fetch);
        loop {
            tokio::select! {
                r = &mut fetch => panic!("the download ended early: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if let Some((have, _)) = fetcher.content_progress(&id)
                && have >= 4 << 20
            {
                return have;
            }
        }
    })
    .await
    .expect("four pieces arrive");
    assert_eq!(kept, 4 << 20);
    // The node stops mid-download (the user closed it).
    fetcher.shutdown().await;
    assert_eq!(first_served.load(Ordering::Relaxed), 4);

    // Started again on the same data dir, with another holder that sends everything.
    let all = Manner {
        corrupt: false,
        pieces: usize::MAX,
    };
    let (second, second_addrs, second_served) = holder(store(1), all, cancel.clone()).await;
    let fetcher = node(&dirs[2], second_addrs).await;
    wait_connected(&fetcher, &[second.local_id()]).await;
    let size = fetcher.fetch(id).await.expect("the download completes");
    assert_eq!(size, original.len() as u64);
    assert_eq!(
        second_served.load(Ordering::Relaxed),
        6,
        "only the six missing pieces were asked for"
    );
    let got = std::fs::read(fetcher.content_path(&id).unwrap()).unwrap();
    assert!(
        got == original,
        "the resumed blob differs from the original"
    );
    cancel.cancel();
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replicates_newest_first_within_its_quota() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let publisher = node(&dirs[0], Vec::new()).await;
    let mut ids = Vec::new();
    let mut channel = None;
    for i in 0..3u8 {
        let file = dirs[2].path().join(format!("clip-{i}.webm"));
        let mut data = bytes(3 << 20);
        data[0] = i;
        std::fs::write(&file, &data).unwrap();
        let p = publisher
            .publish(file, "news", Some(format!("clip {i}")))
            .await
            .unwrap();
        ids.push(p.id.parse::<ContentId>().unwrap());
        channel = Some(p.channel.parse::<NodeId>().unwrap());
    }

    let mut net = memory_net(Identity::generate());
    net.bootstrap = publisher.dial_addrs();
    let mut config = NodeConfig::new(net);
    config.data_dir = Some(dirs[1].path().to_path_buf());
    // Room for two of the three 3 MiB clips.
    config.content.quota = 7 << 20;
    config.content.sync_every = Duration::from_millis(300);
    let follower = NodeHandle::spawn(config).await.unwrap();
    wait_connected(&follower, &[publisher.node_id()]).await;
    follower.follow(channel.unwrap()).await;

    let newest = [ids[2], ids[1]];
    let held = tokio::time::timeout(Duration::from_secs(30), async {
        while !newest.iter().all(|id| follower.content_path(id).is_some()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "the two newest clips were not replicated");
    // A few more rounds: the oldest never fits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        follower.content_path(&ids[0]).is_none(),
        "the oldest clip was replicated beyond the quota"
    );
    assert!(follower.content_progress(&ids[0]).is_none(), "nor begun");
    follower.shutdown().await;
    publisher.shutdown().await;
}
