//! Consumer-side fronts: each accepted client connection becomes one flow.
//!
//! [`serve_socks5`] and [`serve_http_proxy`] read a client's request, ask a [`FlowOpener`]
//! for a flow to the destination (which is never resolved here: names travel to the exit),
//! answer the client in its own protocol, then splice bytes until either side ends. Both share
//! the accept loop below: one task per connection, a connection cap, and a shutdown token
//! that ends every connection.
//!
//! [`FlowOpener`]: crate::FlowOpener

mod http;
mod socks5;
#[cfg(test)]
mod testing;

pub use http::serve_http_proxy;
pub use socks5::serve_socks5;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_types::Redacted;

/// Settings shared by the SOCKS5 and HTTP fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontConfig {
    /// How long a client may take to send its complete request (SOCKS5 greeting and command,
    /// or the HTTP request head) before it is answered with an error and closed.
    pub handshake_timeout: Duration,
    /// Client connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Pause after an accept error that is not about one connection (out of file descriptors,
/// say), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest a connection is kept open after its error answer, to drain what the client
/// still sends (see [`close_gracefully`]).
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained from a client during [`close_gracefully`].
const LINGER_BYTES: usize = 1024 * 1024;

/// Accepts connections until `shutdown` is cancelled and runs `handle` for each in its own
/// task, at most `config.max_connections` at once. Returns once every connection task ended
/// (they all watch `shutdown`). Dropping the future aborts the connection tasks.
async fn accept_loop<H, F>(
    front: &'static str,
    listener: TcpListener,
    config: FrontConfig,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res
                    && e.is_panic()
                {
                    warn!(front, "a connection task panicked; other connections are unaffected");
                }
            }
            res = listener.accept() => match res {
                Ok((stream, client)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(front, client = %Redacted(client), "connection limit reached, closing");
                        continue;
                    };
                    // Interactive protocols (SSH, TLS handshakes) stall behind Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let conn = handle(stream, client);
                    let stop = shutdown.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = conn => {}
                        }
                    });
                }
                Err(e) if is_per_connection(&e) => {
                    debug!(front, error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    warn!(front, error = %e, "accepting connections failed; retrying shortly");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Closes a connection after an error answer without losing that answer.
///
/// Closing a socket that still holds unread input makes the kernel send a reset, and a reset
/// can make the client discard the answer before reading it (an HTTP client that sent a body,
/// a SOCKS client that sent data optimistically). So: send our FIN, then read and discard
/// until the client closes too, for at most [`LINGER`] and [`LINGER_BYTES`].
async fn close_gracefully(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
