//! Raw byte streams to peers (libp2p-stream), for sessions and flows. Other crates see
//! [`NetStream`], a tokio `AsyncRead + AsyncWrite`, and never a libp2p type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use libp2p::StreamProtocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use warren_types::NodeId;

use crate::task::{node_to_peer, peer_to_node};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0} is not a valid stream protocol name (it must start with '/')")]
    BadProtocol(&'static str),
    #[error("protocol {0} already has an acceptor")]
    AlreadyAccepting(&'static str),
    #[error("node id {0} has no libp2p peer id")]
    BadPeer(NodeId),
    #[error("the peer does not speak {0}")]
    Unsupported(&'static str),
    #[error("could not open a stream: {0}")]
    Io(#[source] io::Error),
}

fn protocol(name: &'static str) -> Result<StreamProtocol, StreamError> {
    StreamProtocol::try_from_owned(name.to_string()).map_err(|_| StreamError::BadProtocol(name))
}

/// Opens and accepts raw streams. Cheap to clone; each clone opens one stream at a time.
#[derive(Clone)]
pub struct Streams {
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

impl Streams {
    pub(crate) fn new(control: libp2p_stream::Control) -> Self {
        Streams { control }
    }

    /// Opens a stream for `proto` to `peer`, dialling it if not connected (on addresses the
    /// swarm already knows; see [`crate::Network::connect`]). Cancel-safe.
    pub async fn open(&self, peer: NodeId, proto: &'static str) -> Result<NetStream, StreamError> {
        let pid = node_to_peer(&peer).ok_or(StreamError::BadPeer(peer))?;
        let mut control = self.control.clone();
        match control.open_stream(pid, protocol(proto)?).await {
            Ok(s) => Ok(NetStream(s.compat())),
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
                Err(StreamError::Unsupported(proto))
            }
            Err(libp2p_stream::OpenStreamError::Io(e)) => Err(StreamError::Io(e)),
            Err(e) => Err(StreamError::Io(io::Error::other(e.to_string()))),
        }
    }

    /// Starts accepting streams for `proto`. Drop the [`Incoming`] to stop. Poll it promptly:
    /// the swarm drops (resets) a stream that arrives while the previous one is still waiting.
    pub fn accept(&self, proto: &'static str) -> Result<Incoming, StreamError> {
        let mut control = self.control.clone();
        let inner = control
            .accept(protocol(proto)?)
            .map_err(|_| StreamError::AlreadyAccepting(proto))?;
        Ok(Incoming { inner })
    }
}

/// Inbound streams of one protocol.
pub struct Incoming {
    inner: libp2p_stream::IncomingStreams,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Incoming")
    }
}

impl Incoming {
    /// The next inbound stream and the peer that opened it; `None` once the network stopped.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<(NodeId, NetStream)> {
        loop {
            let (peer, stream) = self.inner.next().await?;
            // Every Warren peer has an ed25519 key; others cannot take part.
            if let Some(node) = peer_to_node(&peer) {
                return Some((node, NetStream(stream.compat())));
            }
        }
    }
}

/// A byte stream to a peer, multiplexed over the connection (QUIC or yamux).
pub struct NetStream(Compat<libp2p::Stream>);

impl std::fmt::Debug for NetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetStream")
    }
}

impl AsyncRead for NetStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
