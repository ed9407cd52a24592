//! Sessions on the wire: the I/O shell around `warren_session`'s sans-IO core (the control
//! stream), and the two roles built on it: [`consumer`] (connect, failover, opening flows)
//! and [`provider`] (accepting sessions and flows, the exit).

pub mod consumer;
pub mod provider;

use std::io;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use warren_net::NetStream;
use warren_session::wire::{self, CloseReason, ControlMsg, FrameReader, MAX_CONTROL_MSG};
use warren_session::{Session, SessionEvent};
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

/// Runs a session's control stream until the session closes: feeds what arrives into the
/// core, writes what it wants sent, fires its timers, and reports its events.
///
/// `on_event` sees every event, payment records (`Invoice`, `Promise`) included; the core
/// keeps at most one of each waiting, so a burst that arrives in one read reaches it as the
/// newest record only, and the events still waiting when the session ends (a last record,
/// then `Closed`) are reported before this returns.
///
/// Cancel-safe only in the sense that dropping it drops the stream (the peer then sees the
/// session end).
pub(crate) async fn drive(
    mut session: Session,
    mut stream: NetStream,
    reader: FrameReader,
    mut close: mpsc::Receiver<CloseReason>,
    meter: Arc<Meter>,
    mut on_event: impl FnMut(SessionEvent) + Send,
) -> Session {
    let mut reader = reader;
    let mut buf = vec![0u8; 4096];
    let mut peer_open = true;
    loop {
        // A peer that sends but never reads would block this write for ever; past the idle
        // timeout it is as good as gone.
        let flushed = tokio::time::timeout(FLUSH_TIMEOUT, flush(&mut session, &mut stream)).await;
        if !matches!(flushed, Ok(Ok(()))) && !session.is_closed() {
            session.close(Instant::now(), CloseReason::Timeout);
        }
        while let Some(ev) = session.poll_event() {
            on_event(ev);
        }
        if session.is_closed() {
            // One last try to send the Close the core queued.
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
                let _ = flush(&mut session, &mut stream).await;
                let _ = stream.shutdown().await;
            })
            .await;
            return session;
        }
        let deadline = session.poll_timeout();
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
            () = sleep => session.handle_timeout(Instant::now()),
            reason = close.recv() => {
                session.close(Instant::now(), reason.unwrap_or(CloseReason::Shutdown));
            }
        }
        session.record_bytes(meter.up(), meter.down());
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
