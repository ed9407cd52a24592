//! Moves a flow's bytes between two streams with large buffers, counting payload bytes into
//! a session's [`Meter`] and stopping when the session ends or its byte cap is reached.
//!
//! Backpressure is end to end: each direction holds one buffer and only reads again once the
//! previous write finished, so a slow reader stalls its writer instead of growing memory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;

/// Buffer per direction. Large, because small writes over yamux cost several times more.
pub const SPLICE_BUF: usize = 256 * 1024;

/// Payload bytes of one session in both directions, shared by all its flows, and a gate
/// that pauses them (a provider owed more than the credit window stops carrying until paid).
#[derive(Debug)]
pub struct Meter {
    up: AtomicU64,
    down: AtomicU64,
    cap: u64,
    paused: AtomicBool,
    /// Flows wait (as if paused) once the total reaches this, until it is raised.
    limit: AtomicU64,
    resumed: Arc<Notify>,
    /// The driver is woken once the total reaches this.
    watermark: AtomicU64,
    crossed: Notify,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::with_cap(None)
    }
}

impl Meter {
    /// A meter that refuses to carry more than `cap` bytes (up + down) in total.
    pub fn with_cap(cap: Option<u64>) -> Self {
        Meter {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cap: cap.unwrap_or(u64::MAX),
            paused: AtomicBool::new(false),
            limit: AtomicU64::new(u64::MAX),
            resumed: Arc::new(Notify::new()),
            watermark: AtomicU64::new(u64::MAX),
            crossed: Notify::new(),
        }
    }

    /// Lets flows carry until the session's total (up + down) reaches `limit`; they then wait
    /// as if paused until it is raised. Each read is cut to fit under it, so concurrent flows
    /// overshoot it by at most one read each, and a flow alone not at all. A provider sets it
    /// to what has been paid for plus the credit window.
    pub fn set_limit(&self, limit: u64) {
        let before = self.limit.swap(limit, Ordering::SeqCst);
        if limit > before {
            self.resumed.notify_waiters();
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Asks to be woken ([`Meter::crossed`]) once the total reaches `at`; replaces any earlier
    /// mark. A mark already reached wakes at once.
    pub fn set_watermark(&self, at: u64) {
        self.watermark.store(at, Ordering::SeqCst);
        if self.total() >= at {
            self.fire_watermark();
        }
    }

    /// Completes once the total passed the watermark (a crossing since the last call counts).
    pub async fn crossed(&self) {
        self.crossed.notified().await
    }

    fn fire_watermark(&self) {
        if self.watermark.swap(u64::MAX, Ordering::SeqCst) != u64::MAX {
            self.crossed.notify_one();
        }
    }

    fn check_watermark(&self) {
        if self.total() >= self.watermark.load(Ordering::Relaxed) {
            self.fire_watermark();
        }
    }

    /// Whether flows must wait now: paused, or at the limit. Datagrams met while held are
    /// dropped.
    pub fn is_held(&self) -> bool {
        self.is_paused() || self.total() >= self.limit.load(Ordering::SeqCst)
    }

    /// Stops every flow of the session from reading more (both directions) until
    /// [`Meter::resume`]. Bytes already read are still delivered.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Bytes from the consumer towards the destination.
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Bytes from the destination back to the consumer.
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.up().saturating_add(self.down())
    }

    /// True once the byte cap is used up.
    pub fn exhausted(&self) -> bool {
        self.total() >= self.cap
    }

    pub fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
        self.check_watermark();
    }

    pub fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
        self.check_watermark();
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// A reader that adds what it reads to a [`Meter`], waits while the meter is paused, and fails
/// once the meter's cap is used up.
struct Counted<S> {
    inner: S,
    meter: Arc<Meter>,
    direction: Direction,
    /// Registered before the pause flag is re-checked, so a resume is never missed.
    resume: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> Counted<S> {
    fn new(inner: S, meter: Arc<Meter>, direction: Direction) -> Self {
        Counted {
            inner,
            meter,
            direction,
            resume: None,
        }
    }

    /// Ready once the meter is neither paused nor at its limit.
    fn poll_unpaused(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.meter.is_held() {
                self.resume = None;
                return Poll::Ready(());
            }
            let meter = self.meter.clone();
            let wait = self
                .resume
                .get_or_insert_with(|| Box::pin(meter.resumed.clone().notified_owned()));
            wait.as_mut().enable();
            if !self.meter.is_held() {
                self.resume = None;
                return Poll::Ready(());
            }
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => self.resume = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.meter.exhausted() {
            return Poll::Ready(Err(io::Error::other("session byte cap reached")));
        }
        if self.poll_unpaused(cx).is_pending() {
            return Poll::Pending;
        }
        // Never read past the limit: what is read is carried (and billed).
        let room = self.meter.limit().saturating_sub(self.meter.total());
        let want = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(buf.remaining());
        // Zeroes only what was never initialised: a reused buffer costs nothing.
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        let res = Pin::new(&mut self.inner).poll_read(cx, &mut part);
        let n = part.filled().len();
        buf.advance(n);
        let n = n as u64;
        match self.direction {
            Direction::Up => self.meter.add_up(n),
            Direction::Down => self.meter.add_down(n),
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A consumer-side flow stream that counts what is written as up and what is read as down
/// into its session's [`Meter`], and fails once its session ends (see [`Metered::with_stop`]).
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
    stop: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

impl<S> std::fmt::Debug for Metered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("meter", &self.meter)
            .finish()
    }
}

impl<S> Metered<S> {
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        Metered {
            inner,
            meter,
            stop: None,
        }
    }

    /// Reads and writes fail once `stop` is cancelled, waking a task that waits on them: a
    /// flow never outlives its session, even when the far end went silent.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = Some(Box::pin(stop.cancelled_owned()));
        self
    }

    fn stopped(&mut self, cx: &mut Context<'_>) -> bool {
        self.stop
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

fn session_ended() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the session ended")
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(session_ended()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.meter.add_down((buf.filled().len() - before) as u64);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(session_ended()));
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            self.meter.add_up(*n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions reached end of stream.
    Done,
    /// The session was closed (`stop` was cancelled).
    Stopped,
    /// A read or write failed, or the byte cap was reached.
    Failed,
}

/// Copies `consumer -> remote` (counted as up) and `remote -> consumer` (counted as down)
/// until both directions end, `stop` is cancelled, or an error occurs.
pub async fn splice<A, B>(
    consumer: A,
    remote: B,
    meter: Arc<Meter>,
    stop: &CancellationToken,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Counted::new(consumer, meter.clone(), Direction::Up);
    let mut b = Counted::new(remote, meter, Direction::Down);
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUF, SPLICE_BUF) => {
            match res {
                Ok(_) => SpliceEnd::Done,
                Err(_) => SpliceEnd::Failed,
            }
        }
        () = stop.cancelled() => SpliceEnd::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions_and_ends() {
        let (client, client_far) = tokio::io::duplex(1024);
        let (remote, remote_far) = tokio::io::duplex(1024);
        let meter = Arc::new(Meter::default());
        let stop = CancellationToken::new();
        let m = meter.clone();
        let task = tokio::spawn(async move { splice(client_far, remote_far, m, &stop).await });
        let (mut client, mut remote) = (client, remote);
        client.write_all(&[1u8; 5000]).await.unwrap();
        let mut got = vec![0u8; 5000];
        remote.read_exact(&mut got).await.unwrap();
        remote.write_all(&[2u8; 300]).await.unwrap();
        let mut back = vec![0u8; 300];
        client.read_exact(&mut back).await.unwrap();
        drop(client);
        drop(remote);
        assert_eq!(task.await.unwrap(), SpliceEnd::Done);
        assert_eq!((meter.up(), meter.down()), (5000, 300));
    }

    #[tokio::test]
    async fn cap_stops_the_flow() {
        let (mut client, client_far) = tokio::io::duplex(64 * 1024);
        let (mut remote, remote_far) = tokio::io::duplex(64 * 1024);
        let meter = Arc::new(Meter::with_cap(Some(1000)));
        let stop = CancellationToken::new();
        let m = meter.clone();
        let task = tokio::spawn(async move { splice(client_far, remote_far, m, &stop).await });
        client.write_all(&[1u8; 1500]).await.unwrap();
        let mut got = vec![0u8; 1500];
        remote.read_exact(&mut got).await.unwrap();
        // The splice may already have ended, so this write may fail.
        let _ = client.write_all(&[1u8; 10]).await;
        assert_eq!(task.await.unwrap(), SpliceEnd::Failed);
    }

    #[tokio::test]
    async fn a_metered_stream_fails_when_its_session_ends() {
        let (mut near, far) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let meter = Arc::new(Meter::default());
        let mut flow = Metered::new(far, meter.clone()).with_stop(stop.clone());
        near.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        flow.read_exact(&mut got).await.unwrap();
        flow.write_all(b"hello").await.unwrap();
        assert_eq!((meter.up(), meter.down()), (5, 3));
        // A read waiting on a silent peer wakes up when the session ends.
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            flow.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        stop.cancel();
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_paused_meter_holds_both_directions_until_resumed() {
        let (mut client, client_far) = tokio::io::duplex(64 * 1024);
        let (mut remote, remote_far) = tokio::io::duplex(64 * 1024);
        let meter = Arc::new(Meter::default());
        let stop = CancellationToken::new();
        let m = meter.clone();
        let task = tokio::spawn(async move { splice(client_far, remote_far, m, &stop).await });
        client.write_all(b"before").await.unwrap();
        let mut got = [0u8; 6];
        remote.read_exact(&mut got).await.unwrap();
        meter.pause();
        client.write_all(b"during").await.unwrap();
        remote.write_all(b"back").await.unwrap();
        // Nothing moves while paused (bounded wait: 200 ms of nothing).
        let mut buf = [0u8; 6];
        let stalled = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            remote.read_exact(&mut buf),
        )
        .await;
        assert!(stalled.is_err(), "bytes moved while paused");
        assert_eq!((meter.up(), meter.down()), (6, 0));
        meter.resume();
        remote.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"during");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop((client, remote));
        assert_eq!(task.await.unwrap(), SpliceEnd::Done);
    }

    #[tokio::test]
    async fn a_flow_stops_exactly_at_the_limit_and_goes_on_when_it_is_raised() {
        let (mut client, client_far) = tokio::io::duplex(64 * 1024);
        let (mut remote, remote_far) = tokio::io::duplex(64 * 1024);
        let meter = Arc::new(Meter::default());
        meter.set_limit(1000);
        meter.set_watermark(600);
        let stop = CancellationToken::new();
        let m = meter.clone();
        let task = tokio::spawn(async move { splice(client_far, remote_far, m, &stop).await });
        client.write_all(&[7u8; 1500]).await.unwrap();
        let mut got = vec![0u8; 1000];
        remote.read_exact(&mut got).await.unwrap();
        // The driver hears of the crossing even though it was not waiting yet.
        tokio::time::timeout(std::time::Duration::from_secs(5), meter.crossed())
            .await
            .expect("the watermark fired");
        let mut more = [0u8; 1];
        let stalled = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            remote.read_exact(&mut more),
        )
        .await;
        assert!(stalled.is_err(), "bytes moved past the limit");
        assert_eq!(meter.total(), 1000);
        meter.set_limit(1400);
        let mut rest = vec![0u8; 400];
        remote.read_exact(&mut rest).await.unwrap();
        assert_eq!(meter.total(), 1400);
        meter.set_limit(u64::MAX);
        let mut last = vec![0u8; 100];
        remote.read_exact(&mut last).await.unwrap();
        drop((client, remote));
        assert_eq!(task.await.unwrap(), SpliceEnd::Done);
        assert_eq!(meter.up(), 1500);
    }

    #[tokio::test]
    async fn stop_ends_a_quiet_flow() {
        let (_client, client_far) = tokio::io::duplex(1024);
        let (_remote, remote_far) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            splice(client_far, remote_far, Arc::new(Meter::default()), &s).await
        });
        stop.cancel();
        assert_eq!(task.await.unwrap(), SpliceEnd::Stopped);
    }
}
