//! Sessions on the wire: the I/O shell around `warren_session`'s sans-IO core (the control
//! stream), and the two roles built on it: [`consumer`] (connect, failover, opening flows)
//! and [`provider`] (accepting sessions and flows, the exit).

pub mod billing;
pub mod consumer;
pub mod provider;

use std::io;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;
use warren_net::NetStream;
use warren_session::wire::{self, CloseReason, ControlMsg, FrameReader, MAX_CONTROL_MSG};
use warren_session::{Role, Session, SessionEvent};
use warren_tunnel::splice::Meter;

/// How long one write of control messages may take.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes one length-prefixed message.
pub(crate) async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
    max: usize,
) -> io::Result<()> {
    let frame =
        wire::encode(msg, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one length-prefixed message of at most `max` bytes. Not cancel-safe.
pub(crate) async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> io::Result<T> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the {max} byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    wire::decode(&body, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The payment side of a session, run by [`drive`] beside the session core: one of the two
/// payment cores of `warren-pay` behind it ([`billing`]), or `None` for a session at no
/// price.
pub(crate) trait Billing: Send {
    /// A payment record arrived from the peer: an invoice at the consumer, a promise at the
    /// provider (opaque signed bytes, at most `MAX_RECORD`).
    fn on_record(&mut self, now: Instant, record: &[u8]);
    /// Called on every turn of the loop with the session's meter.
    fn on_traffic(&mut self, now: Instant, meter: &Meter);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    /// Makes durable what must be before the next record goes out (a consumer records what
    /// it is about to promise). Runs before [`poll_transmit`](Self::poll_transmit).
    fn prepare(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// The next record to send the peer.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// Why the session must end now (unpaid, overbilled), once.
    fn poll_close(&mut self) -> Option<CloseReason>;
}

/// `None` is a session at no price: nothing to bill, nothing to pay.
impl<T: Billing> Billing for Option<T> {
    fn on_record(&mut self, now: Instant, record: &[u8]) {
        if let Some(b) = self {
            b.on_record(now, record);
        }
    }
    fn on_traffic(&mut self, now: Instant, meter: &Meter) {
        if let Some(b) = self {
            b.on_traffic(now, meter);
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        if let Some(b) = self {
            b.handle_timeout(now);
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.as_ref().and_then(|b| b.poll_timeout())
    }
    async fn prepare(&mut self) {
        if let Some(b) = self {
            b.prepare().await;
        }
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.as_mut().and_then(|b| b.poll_transmit())
    }
    fn poll_close(&mut self) -> Option<CloseReason> {
        self.as_mut().and_then(|b| b.poll_close())
    }
}

/// Runs a session's control stream until the session closes: feeds what arrives into the
/// session core and the payment records into `billing`, writes what either wants sent, fires
/// their timers, and reports the session's events.
///
/// `on_event` sees every event, payment records (`Invoice`, `Promise`) included, after
/// `billing` did; the core keeps at most one of each waiting, so a burst that arrives in
/// one read reaches them as the newest record only (they are cumulative), and the events
/// still waiting when the session ends (a last record, then `Closed`) are reported before
/// this returns. The loop also wakes when the meter passes its watermark, so a billing core
/// hears of traffic as it happens.
///
/// Cancel-safe only in the sense that dropping it drops the stream (the peer then sees the
/// session end).
pub(crate) async fn drive<B: Billing>(
    mut session: Session,
    mut stream: NetStream,
    reader: FrameReader,
    mut close: mpsc::Receiver<CloseReason>,
    meter: Arc<Meter>,
    billing: &mut B,
    mut on_event: impl FnMut(SessionEvent) + Send,
) -> Session {
    let mut reader = reader;
    let mut buf = vec![0u8; 4096];
    let mut peer_open = true;
    loop {
        let now = Instant::now();
        deliver_events(&mut session, billing, &mut on_event);
        if !session.is_closed() {
            session.record_bytes(meter.up(), meter.down());
            billing.on_traffic(now, &meter);
            if let Some(reason) = billing.poll_close() {
                session.close(now, reason);
            }
        }
        if !session.is_closed() {
            billing.prepare().await;
            while let Some(record) = billing.poll_transmit() {
                let queued = match session.role() {
                    Role::Provider => session.send_invoice(record),
                    Role::Consumer => session.send_promise(record),
                };
                if let Err(e) = queued {
                    debug!(session = %session.id(), "payment record not sent: {e}");
                }
            }
        }
        // A peer that sends but never reads would block this write for ever; past the idle
        // timeout it is as good as gone.
        let flushed = tokio::time::timeout(FLUSH_TIMEOUT, flush(&mut session, &mut stream)).await;
        if !matches!(flushed, Ok(Ok(()))) && !session.is_closed() {
            session.close(Instant::now(), CloseReason::Timeout);
        }
        if session.is_closed() {
            deliver_events(&mut session, billing, &mut on_event);
            // One last try to send the Close the core queued.
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
                let _ = flush(&mut session, &mut stream).await;
                let _ = stream.shutdown().await;
            })
            .await;
            return session;
        }
        let deadline = match (session.poll_timeout(), billing.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = stream.read(&mut buf), if peer_open => match n {
                Ok(0) | Err(_) => {
                    // The stream (or the whole connection) is gone: the session is lost.
                    peer_open = false;
                    session.close(Instant::now(), CloseReason::Timeout);
                }
                Ok(n) => {
                    reader.push(&buf[..n]);
                    loop {
                        match reader.next_frame() {
                            Ok(Some(body)) => {
                                let now = Instant::now();
                                match wire::decode::<ControlMsg>(&body, MAX_CONTROL_MSG) {
                                    Ok(msg) => {
                                        let _ = session.handle_input(now, msg);
                                    }
                                    Err(_) => session.close(now, CloseReason::ProtocolError),
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                session.close(Instant::now(), CloseReason::ProtocolError);
                                break;
                            }
                        }
                    }
                }
            },
            () = sleep => {
                let now = Instant::now();
                session.handle_timeout(now);
                billing.handle_timeout(now);
            }
            () = meter.crossed() => {}
            reason = close.recv() => {
                session.close(Instant::now(), reason.unwrap_or(CloseReason::Shutdown));
            }
        }
    }
}

/// Hands the session's waiting events to `on_event`, payment records to `billing` first.
fn deliver_events<B: Billing>(
    session: &mut Session,
    billing: &mut B,
    on_event: &mut impl FnMut(SessionEvent),
) {
    while let Some(ev) = session.poll_event() {
        if let SessionEvent::Invoice(record) | SessionEvent::Promise(record) = &ev {
            billing.on_record(Instant::now(), record);
        }
        on_event(ev);
    }
}

async fn flush(session: &mut Session, stream: &mut NetStream) -> io::Result<()> {
    let mut wrote = false;
    while let Some(msg) = session.poll_transmit() {
        let frame = wire::encode(&msg, MAX_CONTROL_MSG)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        stream.write_all(&frame).await?;
        wrote = true;
    }
    if wrote {
        stream.flush().await?;
    }
    Ok(())
}
