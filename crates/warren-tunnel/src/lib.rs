#![doc = include_str!("../README.md")]

pub mod exit;
pub mod front;
pub mod splice;
pub mod udp;

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use warren_types::{FlowProto, FlowRefusal, Target};

/// A bidirectional byte stream a flow travels on (a libp2p stream on the wire, a TCP
/// stream or an in-memory duplex in tests).
pub trait FlowStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> FlowStream for T {}

/// A boxed [`FlowStream`].
pub type BoxStream = Box<dyn FlowStream>;

/// The future [`FlowOpener::open`] returns.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<BoxStream, FlowRefusal>> + Send>>;

/// Opens flows on the consumer side: the node implements it with a session to a provider;
/// tests implement it with direct TCP.
///
/// `open` resolves once the far end has accepted the flow (the destination is connected for
/// TCP, the association is ready for UDP), or fails with the refusal the front must report.
/// For [`FlowProto::Udp`] the returned stream carries datagrams framed by [`udp`].
pub trait FlowOpener: Send + Sync + 'static {
    fn open(&self, target: Target, proto: FlowProto) -> OpenFuture;
}
