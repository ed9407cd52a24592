//! Content among in-process nodes: a peer that serves corrupted chunks is dropped and the
//! download completes, correct, from an honest one; from liars alone nothing is kept; a
//! download resumes; replication keeps the newest within the quota; the gateway serves a
//! blob while it downloads, the pieces a reader waits for first.

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
    fn each_offer(&self, _: &mut dyn FnMut(&[u8])) {}
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
#[derive(Clone)]
struct Manner {
    /// Flip a bit in every piece sent.
    corrupt: bool,
    /// Answer this many piece requests, then fall silent.
    pieces: usize,
    /// Send each piece only once a permit is there (the test hands them out).
    gate: Option<Arc<tokio::sync::Semaphore>>,
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
            let manner = manner.clone();
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
                        if let Some(gate) = &manner.gate {
                            gate.acquire().await.expect("gate open").forget();
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
        gate: None,
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
        gate: None,
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
        gate: None,
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

/// `GET path` on `addr` (HTTP/1.1, one request); the head and the body.
async fn http_get(
    addr: std::net::SocketAddr,
    path: String,
    range: Option<&'static str>,
) -> (String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("API up");
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{range}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..at]).into_owned();
    (head, all[at + 4..].to_vec())
}

/// Waits (bounded) until `served` reaches `n`.
async fn wait_served(served: &AtomicUsize, n: usize) {
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        while served.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the holder did not send {n} pieces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_a_blob_while_it_downloads_and_what_a_reader_waits_for_first() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let original = bytes(10 * (1 << 20));
    let store = BlobStore::open(dirs[0].path().join("held")).unwrap();
    let (id, size) = store.import_bytes(&original).unwrap();
    let cancel = CancellationToken::new();
    // A holder that sends a piece per permit: the test decides how far the download gets.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let manner = Manner {
        corrupt: false,
        pieces: usize::MAX,
        gate: Some(gate.clone()),
    };
    let (holder_net, addrs, served) = holder(store, manner, cancel.clone()).await;
    let mut net = memory_net(Identity::generate());
    net.bootstrap = addrs;
    let mut config = NodeConfig::new(net);
    config.data_dir = Some(dirs[1].path().to_path_buf());
    config.api = Some("127.0.0.1:0".parse().unwrap());
    let fetcher = NodeHandle::spawn(config).await.expect("node starts");
    wait_connected(&fetcher, &[holder_net.local_id()]).await;
    let api = fetcher.api_addr().expect("API listening");
    let path = format!("/content/{id}");

    // Two pieces in: a range inside the first is answered, the download far from done.
    gate.add_permits(2);
    let (head, body) = tokio::time::timeout(
        Duration::from_secs(20),
        http_get(api, path.clone(), Some("bytes=1000-200999")),
    )
    .await
    .expect("the first range arrives while downloading");
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-range: bytes 1000-200999/{size}")),
        "{head}"
    );
    assert!(
        body == original[1000..201_000],
        "the first range's bytes differ"
    );
    let (have, _) = fetcher.content_progress(&id).expect("a download under way");
    assert!(
        have < size / 2,
        "only a few pieces were let through, have {have}"
    );

    // A reader jumps to the end (a seek): that piece moves to the head of the queue. In
    // order it would come after seven more; it comes after the two already asked for (and
    // at most one more sent before the seek was seen).
    wait_served(&served, 2).await;
    let mut tail = tokio::spawn(http_get(api, path.clone(), Some("bytes=-1000")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut let_through = 2;
    let answer = loop {
        assert!(
            let_through < 2 + 4,
            "the piece a reader waits for was not fetched first"
        );
        gate.add_permits(1);
        let_through += 1;
        wait_served(&served, let_through).await;
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(500), &mut tail).await {
            break answer;
        }
    };
    let (head, body) = answer.unwrap();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        body == original[original.len() - 1000..],
        "the tail's bytes differ"
    );
    let (have, _) = fetcher.content_progress(&id).expect("still downloading");
    assert!(have < size, "the tail came before the rest");

    // A whole read started now streams what is in and waits for the rest.
    let whole = tokio::spawn(http_get(api, path.clone(), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !whole.is_finished(),
        "the answer cannot end before the pieces are in"
    );
    gate.add_permits(100);
    let (head, body) = tokio::time::timeout(Duration::from_secs(30), whole)
        .await
        .expect("the whole blob arrives")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body == original,
        "the streamed blob differs from the original"
    );
    // And the download became a blob of the store, served as before.
    fetcher.fetch(id).await.expect("the download completes");
    let (head, body) = http_get(api, path.clone(), Some("bytes=5-9")).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, original[5..10]);
    cancel.cancel();
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_removes_a_blob_rotten_on_disk_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    config.data_dir = Some(dir.path().join("node"));
    config.content.scrub_every = Duration::from_millis(200);
    let node = NodeHandle::spawn(config).await.expect("node starts");
    let mut ids = Vec::new();
    for (i, len) in [3 << 20, 1 << 20].into_iter().enumerate() {
        let file = dir.path().join(format!("clip{i}.mp4"));
        std::fs::write(&file, bytes(len + i)).unwrap();
        let id = node.publish(file, "main", None).await.unwrap().id;
        ids.push(id.parse::<ContentId>().unwrap());
    }
    let (rotten, sound) = (ids[0], ids[1]);
    // A bit flips on disk under the first blob (same length, same name).
    let path = node
        .content_path(&rotten)
        .expect("published blobs are held");
    let mut held = std::fs::read(&path).unwrap();
    held[(2 << 20) + 7] ^= 0x04;
    std::fs::write(&path, &held).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while node.content_path(&rotten).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "the scrub did not find the rotten blob");
    assert!(!path.exists(), "the rotten bytes are gone");
    let kept = node.content_path(&sound).expect("the sound blob is kept");
    assert_eq!(std::fs::read(kept).unwrap(), bytes((1 << 20) + 1));
    node.shutdown().await;
}

/// Runs `until` while `fetch` goes on (polling it keeps the download started); a download
/// that ends first fails the test.
async fn meanwhile<T>(
    fetch: std::pin::Pin<&mut impl std::future::Future<Output = Result<u64, String>>>,
    until: impl std::future::Future<Output = T>,
) -> T {
    tokio::select! {
        r = fetch => panic!("the download ended early: {r:?}"),
        t = until => t,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_found_in_the_dht_joins_a_download_running_on_a_neighbour() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let original = bytes(8 * (1 << 20));
    let store = |i: usize| {
        let s = BlobStore::open(dirs[i].path().join("held")).unwrap();
        s.import_bytes(&original).unwrap();
        s
    };
    let id = ContentId::of(&original);
    // The DHT key holders announce a blob under (`content::blob_key` in warren-node).
    let key = [b"warren/blob/".as_slice(), &id.0].concat();
    let cancel = CancellationToken::new();
    // Both holders send a piece per permit: the test decides who has sent what, and when.
    let gated = |gate: &Arc<tokio::sync::Semaphore>| Manner {
        corrupt: false,
        pieces: usize::MAX,
        gate: Some(gate.clone()),
    };

    // The far holder joins the DHT through a bootstrap node and announces the blob there.
    let boot = node(&dirs[2], Vec::new()).await;
    let far_gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (far, _, far_served) = holder(store(0), gated(&far_gate), cancel.clone()).await;
    far.connect(boot.node_id(), boot.dial_addrs())
        .await
        .expect("the far holder reaches the bootstrap node");
    far.provide(key.clone()).await.unwrap();
    let announced = tokio::time::timeout(Duration::from_secs(20), async {
        while !boot
            .network()
            .find_providers(key.clone(), 1)
            .await
            .unwrap()
            .contains(&far.local_id())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        announced.is_ok(),
        "the far holder's record never reached the DHT"
    );

    // The fetcher is connected to the near holder and to the bootstrap node, not to the far
    // holder. It joins by explicit connects, not a bootstrap list, so no DHT query of its own
    // (which would meet the far holder) runs at start: Kademlia's automatic one follows a new
    // peer only after half a second, and the download begins at once.
    let near_gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (near, near_addrs, near_served) = holder(store(1), gated(&near_gate), cancel.clone()).await;
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    config.data_dir = Some(dirs[3].path().to_path_buf());
    config.api = Some("127.0.0.1:0".parse().unwrap());
    let fetcher = NodeHandle::spawn(config).await.expect("node starts");
    let api = fetcher.api_addr().expect("API listening");
    let net = fetcher.network();
    net.connect(boot.node_id(), boot.dial_addrs())
        .await
        .unwrap();
    net.connect(near.local_id(), near_addrs).await.unwrap();
    wait_connected(&fetcher, &[boot.node_id(), near.local_id()]).await;
    assert!(
        !net.state().connected.contains(&far.local_id()),
        "the far holder is already a neighbour, so the test would show nothing"
    );

    let size = {
        let fetch = fetcher.fetch(id);
        tokio::pin!(fetch);
        // The download runs on the neighbour.
        near_gate.add_permits(1);
        meanwhile(fetch.as_mut(), wait_served(&near_served, 1)).await;
        // The far holder, found through the DHT, joins it and serves a piece.
        far_gate.add_permits(1);
        meanwhile(fetch.as_mut(), wait_served(&far_served, 1)).await;
        // Both hold requests the gates keep waiting: the download's progress names two sources.
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            http_get(api, format!("/api/v1/content/{id}"), None),
        );
        let (head, body) = meanwhile(fetch.as_mut(), status)
            .await
            .expect("the API answers");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["fetch"]["state"], "running", "{status}");
        assert_eq!(status["fetch"]["sources"], 2, "{status}");

        near_gate.add_permits(100);
        far_gate.add_permits(100);
        tokio::time::timeout(Duration::from_secs(30), fetch)
            .await
            .expect("the download ends")
            .expect("the download completes")
    };
    assert_eq!(size, original.len() as u64);
    let got = std::fs::read(fetcher.content_path(&id).unwrap()).unwrap();
    assert!(
        got == original,
        "the fetched blob differs from the original"
    );
    assert!(near_served.load(Ordering::Relaxed) >= 1);
    assert!(far_served.load(Ordering::Relaxed) >= 1);

    cancel.cancel();
    fetcher.shutdown().await;
    boot.shutdown().await;
}
