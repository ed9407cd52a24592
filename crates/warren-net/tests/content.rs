//! What the content network needs from the swarm: provider records found across the DHT,
//! gossip on topics of its own, and misbehaviour counted against a peer. Nodes run on the
//! in-memory transport; every wait is on an event or on state, bounded by a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_net::{NetConfig, NetState, Network, OfferBook, Verdict};
use warren_types::{Identity, NodeId};

const TOPIC: &str = "warren/channel/1/00c0ffee";

/// One topic message as a book saw it.
#[derive(Clone, Debug)]
struct Seen {
    topic: String,
    from: NodeId,
    bytes: Vec<u8>,
}

/// A book with no offers that records topic messages and rejects those starting "bad".
struct Book {
    seen: watch::Sender<Vec<Seen>>,
}

impl Book {
    fn new() -> Arc<Book> {
        Arc::new(Book {
            seen: watch::Sender::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }

    /// Waits until some message seen satisfies `f`; false on timeout.
    async fn wait_for(&self, timeout: Duration, f: impl Fn(&Seen) -> bool) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|seen| seen.iter().any(&f)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl OfferBook for Book {
    fn offer_received(&self, _from: NodeId, _bytes: &[u8]) -> Verdict {
        Verdict::Ignore
    }

    fn each_offer(&self, _: &mut dyn FnMut(&[u8])) {}

    fn topic_message(&self, topic: &str, from: NodeId, bytes: &[u8]) -> Verdict {
        self.seen.send_modify(|seen| {
            seen.push(Seen {
                topic: topic.to_string(),
                from,
                bytes: bytes.to_vec(),
            })
        });
        if bytes.starts_with(b"bad") {
            Verdict::Reject
        } else {
            Verdict::Accept
        }
    }
}

struct Node {
    net: Network,
    book: Arc<Book>,
    cancel: CancellationToken,
}

impl Node {
    /// A memory-transport node that dials `bootstrap` (and runs a DHT bootstrap) if any.
    async fn spawn(bootstrap: Vec<String>) -> Node {
        let mut config = NetConfig::in_memory(Identity::generate());
        config.bootstrap = bootstrap;
        config.gossip_heartbeat = Duration::from_millis(100);
        let book = Book::new();
        let cancel = CancellationToken::new();
        let (net, _task) = Network::spawn(config, book.clone(), cancel.clone())
            .await
            .expect("spawn");
        Node { net, book, cancel }
    }

    fn id(&self) -> NodeId {
        self.net.local_id()
    }

    /// An address to dial this node at, with its id.
    fn addr(&self) -> String {
        let state = self.net.state();
        format!("{}/p2p/{}", state.listen_addrs[0], self.id())
    }

    /// Waits until the swarm's state satisfies `f`.
    async fn wait_state(&self, what: &str, f: impl Fn(&NetState) -> bool) {
        let mut rx = self.net.watch_state();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting: {what}"))
            .expect("network stopped");
    }

    /// Returns once the swarm task has run every command sent before: commands run in
    /// order, and a lookup for no providers is answered at once.
    async fn sync(&self) {
        self.net.find_providers(Vec::new(), 0).await.unwrap();
    }

    async fn wait_connected(&self, peer: NodeId) {
        self.wait_state("connection", |s| s.connected.contains(&peer))
            .await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs `attempt` (which starts something and waits a bounded while for its effect) until
/// it reports success or `total` has passed: for effects that need the network to settle
/// first (a DHT to learn its peers, a gossip mesh to form).
async fn retry<F: Future<Output = bool>>(
    total: Duration,
    mut attempt: impl FnMut(u32) -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + total;
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        if attempt(i).await {
            return true;
        }
        i += 1;
    }
    false
}

#[tokio::test]
async fn a_provider_is_found_across_the_dht_and_can_be_reached() {
    // A line: B knows A, C knows only B.
    let a = Node::spawn(Vec::new()).await;
    let b = Node::spawn(vec![a.addr()]).await;
    b.wait_connected(a.id()).await;
    let c = Node::spawn(vec![b.addr()]).await;
    c.wait_connected(b.id()).await;

    let key = b"a content id".to_vec();
    a.net.provide(key.clone()).await.unwrap();

    // The DHT may still be learning its peers: look again until the provider shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let found = loop {
        // Only paces the retries; each lookup itself waits on the network.
        pace.tick().await;
        let found = c.net.find_providers(key.clone(), 4).await.unwrap();
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            break found;
        }
    };
    assert_eq!(found, vec![a.id()], "C never found A as the key's provider");
    // The provider never finds itself.
    assert!(
        !a.net
            .find_providers(key.clone(), 4)
            .await
            .unwrap()
            .contains(&a.id())
    );

    // The provider's address came with it: C opens a stream to A by id alone.
    let mut incoming = a.net.streams().accept("/test/1").unwrap();
    let echo = tokio::spawn(async move {
        let (from, mut s) = incoming.next().await.expect("a stream");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.flush().await.unwrap();
        from
    });
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        c.net.streams().open(a.id(), "/test/1"),
    )
    .await
    .expect("open timed out")
    .expect("open");
    s.write_all(b"ping").await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(echo.await.unwrap(), c.id());
    // And C now remembers where A is.
    c.wait_state("A among known peers", |s| {
        s.known_peers
            .iter()
            .any(|k| k.id == a.id() && !k.addrs.is_empty())
    })
    .await;

    // A node that stops providing is still found until its records expire, but a key
    // nobody provides finds nobody.
    a.net.stop_providing(key).await.unwrap();
    assert!(
        c.net
            .find_providers(b"nobody has this".to_vec(), 4)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn topic_gossip_reaches_subscribers_and_rejected_messages_stop() {
    let a = Node::spawn(Vec::new()).await;
    let b = Node::spawn(Vec::new()).await;
    let c = Node::spawn(Vec::new()).await;
    // C refuses A outright (five offences ban), so the DHT cannot connect them behind the
    // test's back: the only path from A to C is through B.
    for _ in 0..5 {
        c.net.penalise(a.id()).await;
    }
    c.wait_state("A banned at C", |s| s.banned.contains(&a.id()))
        .await;
    b.net.dial(a.addr()).await.unwrap();
    c.net.dial(b.addr()).await.unwrap();
    b.wait_connected(a.id()).await;
    c.wait_connected(b.id()).await;
    for n in [&a, &b, &c] {
        n.net.subscribe(TOPIC.to_string()).await.unwrap();
    }

    // Until subscriptions and the mesh have spread, a message may reach nobody: publish
    // afresh until one crosses both hops. Messages are 2 KiB, the most a content message
    // is meant to be.
    let message = |i: u32, tag: &str| {
        let mut m = format!("{tag}-{i}-").into_bytes();
        m.resize(2048, b'.');
        m
    };
    let crossed = retry(Duration::from_secs(15), |i| {
        let (a, c) = (&a, &c);
        async move {
            a.net
                .publish(TOPIC.to_string(), message(i, "hello"))
                .await
                .unwrap();
            c.book
                .wait_for(Duration::from_millis(500), |s| {
                    s.bytes.starts_with(b"hello")
                })
                .await
        }
    })
    .await;
    assert!(crossed, "no message crossed A-B-C");
    let at_b = b.book.seen();
    let at_c = c.book.seen();
    assert!(at_b.iter().all(|s| s.topic == TOPIC && s.from == a.id()));
    assert!(at_c.iter().all(|s| s.topic == TOPIC && s.from == b.id()));
    assert!(at_c.iter().all(|s| s.bytes.len() == 2048));
    assert!(
        a.book.seen().is_empty(),
        "a node does not hear its own messages"
    );

    // B rejects this one, so it must not go on to C. A's next message follows it on the
    // same connection; once C has that one, C would already have had the rejected one.
    a.net
        .publish(TOPIC.to_string(), b"bad message".to_vec())
        .await
        .unwrap();
    let after = retry(Duration::from_secs(10), |i| {
        let (a, c) = (&a, &c);
        async move {
            a.net
                .publish(TOPIC.to_string(), message(i, "after"))
                .await
                .unwrap();
            c.book
                .wait_for(Duration::from_millis(500), |s| {
                    s.bytes.starts_with(b"after")
                })
                .await
        }
    })
    .await;
    assert!(after, "the message after the rejected one never reached C");
    assert!(
        b.book.seen().iter().any(|s| s.bytes == b"bad message"),
        "B judged the rejected message"
    );
    assert!(
        !c.book.seen().iter().any(|s| s.bytes.starts_with(b"bad")),
        "a rejected message was forwarded"
    );
    assert!(!c.net.state().connected.contains(&a.id()));

    // After leaving the topic, C's book hears nothing more on it.
    c.net.unsubscribe(TOPIC.to_string()).await.unwrap();
    c.sync().await;
    let before = c.book.seen().len();
    let b_got_it = retry(Duration::from_secs(10), |i| {
        let (a, b) = (&a, &b);
        async move {
            a.net
                .publish(TOPIC.to_string(), message(i, "late"))
                .await
                .unwrap();
            b.book
                .wait_for(Duration::from_millis(500), |s| s.bytes.starts_with(b"late"))
                .await
        }
    })
    .await;
    assert!(b_got_it);
    assert_eq!(c.book.seen().len(), before);
}

#[tokio::test]
async fn penalising_a_peer_enough_bans_it() {
    let a = Node::spawn(Vec::new()).await;
    let b = Node::spawn(vec![a.addr()]).await;
    b.wait_connected(a.id()).await;
    a.wait_connected(b.id()).await;

    // Four offences lower the score; the fifth bans (see `PeerScores`).
    for _ in 0..4 {
        a.net.penalise(b.id()).await;
    }
    a.sync().await;
    assert!(a.net.state().banned.is_empty());
    a.net.penalise(b.id()).await;
    a.wait_state("B banned", |s| {
        s.banned == vec![b.id()] && !s.connected.contains(&b.id())
    })
    .await;
    // Penalising oneself is ignored.
    for _ in 0..5 {
        a.net.penalise(a.id()).await;
    }
    a.sync().await;
    assert_eq!(a.net.state().banned, vec![b.id()]);
}
