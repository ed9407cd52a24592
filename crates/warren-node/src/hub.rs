//! The payment-hub role (`warren node --hub`) and the client side of its protocol.
//!
//! A hub node keeps its ledger in `hub/hub.db` (SQLite) in the data directory, or in memory
//! when it has none (tests, `warren testnet`), and answers `/warren/hub/1` streams: one
//! request frame, one answer frame ([`warren_pay::rpc`]), each read or written within 10 s,
//! at most [`MAX_CONCURRENT`] at a time. The account a request acts on is the stream's peer,
//! which libp2p has authenticated. The node's own wallet calls its hub in-process.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_net::{NetStream, Network};
use warren_pay::ledger::Ledger;
use warren_pay::rpc::{self, HubInfo, HubRequest, HubResponse, RpcError, RpcErrorKind};
use warren_pay::{Hub, MemoryLedger, SqliteLedger};
use warren_types::NodeId;

pub use warren_pay::FeeBps;

/// How long reading a request, or writing an answer, may take; a client's whole call too.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests a hub works on at once; a stream beyond that is dropped (its opener sees a reset).
pub const MAX_CONCURRENT: usize = 64;
/// The ledger's directory inside the node's data directory.
pub const LEDGER_DIR: &str = "hub";

/// How a node runs as a payment hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Tops accounts up for free: test networks only.
    pub faucet: bool,
    /// Taken from every settlement; at most [`FeeBps::CAP`] (5 %).
    pub fee: FeeBps,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            faucet: false,
            fee: FeeBps::DEFAULT,
        }
    }
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubStartError {
    #[error("the hub fee of {pct} % is above the protocol cap of 5 %; pass a lower --hub-fee", pct = percent(.0.0))]
    FeeAboveCap(FeeBps),
    #[error("could not open the hub's ledger in {dir}: {reason}")]
    Ledger { dir: String, reason: String },
    #[error("could not serve the hub protocol: {0}")]
    Protocol(String),
}

/// Basis points as a percentage for people: 100 → "1", 150 → "1.5".
pub fn percent(bps: u16) -> String {
    let (whole, frac) = (bps / 100, bps % 100);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:02}").trim_end_matches('0'))
    }
}

/// A hub over some ledger, as the node holds it.
pub(crate) trait HubService: Send + Sync + fmt::Debug {
    fn answer(&self, peer: NodeId, request: HubRequest) -> BoxFuture<'_, HubResponse>;
    fn info(&self) -> HubInfo;
    fn close(&self) -> BoxFuture<'_, ()>;
}

#[derive(Debug)]
struct Served<L>(Hub<L>);

impl HubService for Served<SqliteLedger> {
    fn answer(&self, peer: NodeId, request: HubRequest) -> BoxFuture<'_, HubResponse> {
        Box::pin(rpc::answer(&self.0, peer, request))
    }
    fn info(&self) -> HubInfo {
        info_of(&self.0)
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.ledger().close())
    }
}

impl HubService for Served<MemoryLedger> {
    fn answer(&self, peer: NodeId, request: HubRequest) -> BoxFuture<'_, HubResponse> {
        Box::pin(rpc::answer(&self.0, peer, request))
    }
    fn info(&self) -> HubInfo {
        info_of(&self.0)
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn info_of<L: Ledger>(hub: &Hub<L>) -> HubInfo {
    HubInfo {
        hub: hub.id(),
        fee_bps: hub.fee().0,
        faucet: hub.has_faucet(),
    }
}

/// Opens the hub's ledger: SQLite in `data_dir/hub/`, or memory without a data directory.
pub(crate) async fn open(
    config: HubConfig,
    id: NodeId,
    data_dir: Option<&Path>,
) -> Result<Arc<dyn HubService>, HubStartError> {
    if config.fee.0 > FeeBps::CAP.0 {
        return Err(HubStartError::FeeAboveCap(config.fee));
    }
    let build = |e: warren_pay::HubError| HubStartError::Protocol(e.to_string());
    Ok(match data_dir {
        Some(dir) => {
            let dir = dir.join(LEDGER_DIR);
            let ledger = SqliteLedger::open(&dir)
                .await
                .map_err(|e| HubStartError::Ledger {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                })?;
            let hub = Hub::new(ledger, id, config.fee)
                .map_err(build)?
                .faucet(config.faucet);
            Arc::new(Served(hub))
        }
        None => {
            let hub = Hub::new(MemoryLedger::new(), id, config.fee)
                .map_err(build)?
                .faucet(config.faucet);
            Arc::new(Served(hub))
        }
    })
}

/// Answers hub streams on `net` until `cancel` fires.
pub(crate) fn spawn(
    hub: Arc<dyn HubService>,
    net: &Network,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HubStartError> {
    let mut incoming = net
        .streams()
        .accept(rpc::PROTOCOL)
        .map_err(|e| HubStartError::Protocol(e.to_string()))?;
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                next = incoming.next() => {
                    let Some((peer, stream)) = next else { break };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!("too many hub requests at once; dropping one");
                        continue;
                    };
                    tokio::spawn(serve(hub.clone(), peer, stream, slot));
                }
            }
        }
    }))
}

/// Serves one stream: one request, one answer. A request that cannot be read in time is
/// dropped; one that is malformed gets an error answer.
async fn serve(
    hub: Arc<dyn HubService>,
    peer: NodeId,
    mut stream: NetStream,
    _slot: OwnedSemaphorePermit,
) {
    let body = match tokio::time::timeout(IO_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            debug!(peer = %peer.short(), "unreadable hub request: {e}");
            if e.kind() == io::ErrorKind::InvalidData {
                let answer =
                    HubResponse::Error(RpcError::new(RpcErrorKind::BadRequest, e.to_string()));
                let _ = tokio::time::timeout(IO_TIMEOUT, write_frame(&mut stream, &answer)).await;
            }
            return;
        }
        Err(_) => {
            debug!(peer = %peer.short(), "hub request timed out");
            return;
        }
    };
    let answer = match rpc::decode_request(&body) {
        Ok(request) => hub.answer(peer, request).await,
        Err(e) => HubResponse::Error(e),
    };
    let written = tokio::time::timeout(IO_TIMEOUT, async {
        write_frame(&mut stream, &answer).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!(peer = %peer.short(), "could not send a hub answer");
    }
}

/// Reads one frame's body. Refuses an oversized length before allocating. Not cancel-safe.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; rpc::PREFIX];
    r.read_exact(&mut prefix).await?;
    let len = rpc::body_len(prefix).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
) -> io::Result<()> {
    let frame = rpc::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    w.write_all(&frame).await?;
    w.flush().await
}

/// Why a call to a hub failed (its refusals are answers, not errors).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("could not reach hub {hub}: {reason}")]
    Unreachable { hub: NodeId, reason: String },
    #[error("hub {hub} did not answer within {secs} s", secs = IO_TIMEOUT.as_secs())]
    Timeout { hub: NodeId },
    #[error("hub {hub} answered something unreadable: {reason}")]
    Protocol { hub: NodeId, reason: String },
}

/// Asks `hub` once: connects (on `addrs`, from its offer, unless already connected), opens a
/// stream, sends `request`, reads the answer. The whole call takes at most [`IO_TIMEOUT`].
pub(crate) async fn call(
    net: &Network,
    hub: NodeId,
    addrs: Vec<String>,
    request: &HubRequest,
) -> Result<HubResponse, CallError> {
    let attempt =
        async {
            let mut dial_error = None;
            if !addrs.is_empty()
                && let Err(e) = net.connect(hub, addrs).await
            {
                dial_error = Some(e.to_string());
            }
            let mut stream = net.streams().open(hub, rpc::PROTOCOL).await.map_err(|e| {
                CallError::Unreachable {
                    hub,
                    reason: match &dial_error {
                        Some(d) => format!("{d}; {e}"),
                        None => e.to_string(),
                    },
                }
            })?;
            let unreachable = |e: io::Error| CallError::Unreachable {
                hub,
                reason: e.to_string(),
            };
            write_frame(&mut stream, request)
                .await
                .map_err(unreachable)?;
            let body = read_frame(&mut stream).await.map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    CallError::Protocol {
                        hub,
                        reason: e.to_string(),
                    }
                } else {
                    CallError::Unreachable {
                        hub,
                        reason: format!("the stream ended before the answer ({e})"),
                    }
                }
            })?;
            rpc::decode::<HubResponse>(&body).map_err(|e| CallError::Protocol {
                hub,
                reason: e.to_string(),
            })
        };
    tokio::time::timeout(IO_TIMEOUT, attempt)
        .await
        .map_err(|_| CallError::Timeout { hub })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_read_as_percentages() {
        assert_eq!(percent(100), "1");
        assert_eq!(percent(150), "1.5");
        assert_eq!(percent(5), "0.05");
        assert_eq!(percent(500), "5");
        assert_eq!(percent(0), "0");
    }

    #[tokio::test]
    async fn frames_are_bounded_on_the_stream_too() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, &HubRequest::Balance).await.unwrap();
        let body = read_frame(&mut b).await.unwrap();
        assert_eq!(rpc::decode_request(&body).unwrap(), HubRequest::Balance);
        // A length over the limit is refused before the body is read.
        a.write_all(&((rpc::MAX_FRAME + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        let e = read_frame(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A stream that ends mid-body is an error, not a short message.
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
    }
}
