//! HTTP proxy front: `CONNECT host:port` tunnels (HTTPS and anything else over TCP) and
//! plain-HTTP requests in absolute form (`GET http://host/path HTTP/1.1`).
//!
//! Each client connection carries one request. For absolute-form requests the head is
//! rewritten to origin form with `Connection: close` and hop-by-hop and `Proxy-*` headers
//! removed, then the connection is spliced to the origin, so the request body and the
//! response pass through untouched; the origin closes after its response and the client opens
//! a new connection for its next request. Keeping client connections alive across requests
//! would mean parsing every response to find where it ends; browsers open several connections
//! per proxy anyway, and HTTPS, nearly all traffic today, goes through CONNECT.
//!
//! Host names are handed to the [`FlowOpener`] unresolved. Refusals are answered with
//! [`RefusalKind::http_status`] and a short text body saying why.
//!
//! [`FlowOpener`]: crate::FlowOpener

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};
use warren_types::{FlowProto, FlowRefusal, Redacted, RefusalKind, Target};

use super::{FrontConfig, accept_loop, close_gracefully};
use crate::FlowOpener;
use crate::splice::{Meter, splice};

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted in a request head.
const MAX_HEADERS: usize = 100;

const NOT_CONNECTED: &str = "Warren: not connected — run `warren connect` first\n";
const NOT_A_SERVER: &str = "Warren: this is an HTTP proxy, not a web server. Set it as your \
     browser's or system's HTTP and HTTPS proxy, or use it with `curl -x`.\n";
const USE_CONNECT: &str = "Warren: https:// URLs go through the proxy with CONNECT; set this \
     proxy for HTTPS as well and the client will send CONNECT host:443.\n";

/// Serves the HTTP proxy on an already-bound listener until `shutdown` is cancelled, then
/// returns once every client connection has been closed.
///
/// Cancel-safe: dropping the future closes the listener and every client connection.
pub async fn serve_http_proxy(
    listener: TcpListener,
    opener: Arc<dyn FlowOpener>,
    config: FrontConfig,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    accept_loop("http", listener, config, shutdown, move |stream, client| {
        let conn = Conn {
            opener: opener.clone(),
            config,
            shutdown: stop.clone(),
        };
        let span = debug_span!("http", client = %Redacted(client));
        async move {
            match conn.run(stream).await {
                Ok(()) => debug!("connection closed"),
                Err(e) => debug!(error = %e, "connection ended"),
            }
        }
        .instrument(span)
    })
    .await;
}

/// Why one client connection ended early. Logged at debug; never affects other connections.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("client did not send its request head in time")]
    HeadTimeout,
    #[error("request head is larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("request is malformed: {0}")]
    Malformed(&'static str),
    #[error("request rejected with status {0}")]
    Rejected(u16),
    #[error("flow refused ({kind:?}): {message}")]
    Refused { kind: RefusalKind, message: String },
    #[error("i/o failed while {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(during: &'static str) -> impl FnOnce(io::Error) -> HttpError {
    move |source| HttpError::Io { during, source }
}

/// What a parsed request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// `CONNECT host:port`: answer 200, then tunnel.
    Connect(Target),
    /// An absolute-form request: send `head` (rewritten to origin form), then splice.
    Forward { target: Target, head: Vec<u8> },
    /// A request this proxy does not serve, with its status and explanation.
    Reject { status: u16, body: String },
}

struct Conn {
    opener: Arc<dyn FlowOpener>,
    config: FrontConfig,
    shutdown: CancellationToken,
}

impl Conn {
    async fn run(self, mut stream: TcpStream) -> Result<(), HttpError> {
        let mut buf = vec![0u8; MAX_HEAD];
        let read = tokio::time::timeout(
            self.config.handshake_timeout,
            read_head(&mut stream, &mut buf),
        )
        .await;
        let (head_len, filled) = match read {
            Ok(Ok(lengths)) => lengths,
            Ok(Err(HeadError::Closed)) => return Ok(()),
            Ok(Err(HeadError::Io(e))) => return Err(io_err("reading the request")(e)),
            Ok(Err(HeadError::TooLarge)) => {
                let body = format!(
                    "Warren: the request head is over {MAX_HEAD} bytes or {MAX_HEADERS} headers\n"
                );
                answer(stream, 431, &body).await;
                return Err(HttpError::HeadTooLarge);
            }
            Ok(Err(HeadError::Malformed(why))) => {
                answer(stream, 400, &format!("Warren: malformed request ({why})\n")).await;
                return Err(HttpError::Malformed(why));
            }
            Err(_) => {
                answer(stream, 408, "Warren: the request did not arrive in time\n").await;
                return Err(HttpError::HeadTimeout);
            }
        };
        // Bytes the client sent past the head (a request body, an early TLS ClientHello)
        // belong to the flow.
        let early = &buf[head_len..filled];
        match interpret(&buf[..head_len]) {
            Action::Reject { status, body } => {
                answer(stream, status, &body).await;
                Err(HttpError::Rejected(status))
            }
            Action::Connect(target) => {
                debug!(dest = %Redacted(&target), "CONNECT");
                let reply = b"HTTP/1.1 200 Connection established\r\n\r\n";
                self.open_and_splice(stream, target, reply, early).await
            }
            Action::Forward { target, head } => {
                debug!(dest = %Redacted(&target), "forwarding a plain-HTTP request");
                let mut first = head;
                first.extend_from_slice(early);
                self.open_and_splice_request(stream, target, &first).await
            }
        }
    }

    /// Opens a TCP flow to `target`; a refusal is answered to the client with its status.
    async fn open_flow(
        &self,
        stream: TcpStream,
        target: Target,
    ) -> Result<(TcpStream, crate::BoxStream), HttpError> {
        match self.opener.open(target, FlowProto::Tcp).await {
            Ok(flow) => Ok((stream, flow)),
            Err(refusal) => {
                answer(stream, refusal.kind.http_status(), &refusal_body(&refusal)).await;
                Err(HttpError::Refused {
                    kind: refusal.kind,
                    message: refusal.message,
                })
            }
        }
    }

    /// A plain-HTTP request: like [`Conn::open_and_splice`], but the response head is rewritten
    /// to say `Connection: close`. Otherwise an origin that ignores our close and answers
    /// keep-alive would receive the client's next request, meant for another site, on this
    /// connection.
    async fn open_and_splice_request(
        &self,
        stream: TcpStream,
        target: Target,
        request: &[u8],
    ) -> Result<(), HttpError> {
        let (mut stream, mut flow) = self.open_flow(stream, target).await?;
        flow.write_all(request)
            .await
            .map_err(io_err("sending the request"))?;
        flow.flush().await.map_err(io_err("sending the request"))?;
        // Interim (1xx) heads pass unchanged; the final head gets the close.
        for _ in 0..MAX_INTERIM_RESPONSES {
            let mut buf = vec![0u8; MAX_HEAD];
            let (head_len, filled, status) = match read_response_head(&mut flow, &mut buf).await {
                Ok(parsed) => parsed,
                Err(HeadError::Closed) => return Ok(()),
                Err(_) => {
                    answer(
                        stream,
                        502,
                        "Warren: the server sent a malformed response\n",
                    )
                    .await;
                    return Err(HttpError::Malformed("malformed response head"));
                }
            };
            let head = &buf[..head_len];
            let interim = (100..200).contains(&status) && status != 101;
            let out = if interim {
                head.to_vec()
            } else {
                close_response_head(head)
            };
            stream
                .write_all(&out)
                .await
                .map_err(io_err("answering the client"))?;
            stream
                .write_all(&buf[head_len..filled])
                .await
                .map_err(io_err("answering the client"))?;
            if !interim {
                break;
            }
        }
        let meter = Arc::new(Meter::default());
        meter.add_up(request.len() as u64);
        let end = splice(stream, flow, meter.clone(), &self.shutdown).await;
        debug!(?end, up = meter.up(), down = meter.down(), "flow ended");
        Ok(())
    }

    /// Opens a TCP flow to `target`; on success sends `reply` to the client and `first` to the
    /// flow, then splices. On refusal answers with the refusal's status.
    async fn open_and_splice(
        &self,
        stream: TcpStream,
        target: Target,
        reply: &[u8],
        first: &[u8],
    ) -> Result<(), HttpError> {
        let (mut stream, mut flow) = self.open_flow(stream, target).await?;
        let meter = Arc::new(Meter::default());
        if !reply.is_empty() {
            stream
                .write_all(reply)
                .await
                .map_err(io_err("answering the client"))?;
        }
        if !first.is_empty() {
            flow.write_all(first)
                .await
                .map_err(io_err("sending the request"))?;
            flow.flush().await.map_err(io_err("sending the request"))?;
            meter.add_up(first.len() as u64);
        }
        let end = splice(stream, flow, meter.clone(), &self.shutdown).await;
        debug!(?end, up = meter.up(), down = meter.down(), "flow ended");
        Ok(())
    }
}

fn refusal_body(refusal: &FlowRefusal) -> String {
    match refusal.kind {
        RefusalKind::NotConnected => NOT_CONNECTED.to_owned(),
        _ => format!("Warren: {}\n", refusal.message),
    }
}

enum HeadError {
    /// The client closed before sending anything.
    Closed,
    TooLarge,
    Malformed(&'static str),
    Io(io::Error),
}

/// Reads until `buf` holds a complete request head; returns the head's length and how much
/// of `buf` is filled (the rest of the filled part came after the head). Never reads more
/// than `buf` holds, so a long head ends as [`HeadError::TooLarge`].
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(usize, usize), HeadError> {
    let parse = |bytes: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let status = httparse::Request::new(&mut headers).parse(bytes)?;
        Ok(complete(status).map(|len| (len, ())))
    };
    let (len, filled, ()) = read_until_head(stream, buf, "request", parse).await?;
    Ok((len, filled))
}

/// Reads a response head into `buf`: (head length, bytes read, status code).
async fn read_response_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(usize, usize, u16), HeadError> {
    let parse = |bytes: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let status = response.parse(bytes)?;
        Ok(complete(status).map(|len| (len, response.code.unwrap_or(0))))
    };
    read_until_head(stream, buf, "response", parse).await
}

fn complete(status: httparse::Status<usize>) -> Option<usize> {
    match status {
        httparse::Status::Complete(len) => Some(len),
        httparse::Status::Partial => None,
    }
}

/// The loop both heads share: read into `buf` until `parse` finds a complete head (its
/// length and what the parser read from it).
async fn read_until_head<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    buf: &mut [u8],
    what: &'static str,
    parse: impl Fn(&[u8]) -> Result<Option<(usize, T)>, httparse::Error>,
) -> Result<(usize, usize, T), HeadError> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(match (filled, what) {
                (0, _) => HeadError::Closed,
                (_, "request") => HeadError::Malformed("the request head was cut short"),
                _ => HeadError::Malformed("the response head was cut short"),
            });
        }
        filled += n;
        match parse(&buf[..filled]) {
            Ok(Some((len, found))) => return Ok((len, filled, found)),
            Ok(None) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(parse_error(e))),
        }
    }
}

/// Servers send more headers than clients (cookies, security policies).
const MAX_RESPONSE_HEADERS: usize = 256;

/// `100 Continue` and friends before the final response.
const MAX_INTERIM_RESPONSES: usize = 4;

/// The response head with every connection-scoped header dropped and `Connection: close`
/// added, so the client opens a new proxy connection for its next request.
fn close_response_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut out = String::with_capacity(head.len() + 32);
    out.push_str(lines.next().unwrap_or_default());
    out.push_str("\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        let drop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if !drop {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "bad HTTP version",
    }
}

/// Headers that concern only the hop between client and proxy (RFC 9110 §7.6.1), or that
/// this proxy sets itself. Any `Proxy-*` header is dropped too.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Decides what to do with a complete request head.
fn interpret(head: &[u8]) -> Action {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(uri), Some(version)) =
        (req.parse(head), req.method, req.path, req.version)
    else {
        return reject(400, "Warren: malformed request\n");
    };

    if method == "CONNECT" {
        return match Target::parse_authority(uri) {
            Ok(target) => Action::Connect(target),
            Err(e) => reject(400, &format!("Warren: CONNECT needs host:port ({e})\n")),
        };
    }
    let rest = match uri.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &uri[7..],
        _ if uri
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://")) =>
        {
            return reject(400, USE_CONNECT);
        }
        _ if uri.starts_with('/') || uri == "*" => return reject(400, NOT_A_SERVER),
        _ => {
            return reject(400, "Warren: only http:// URLs and CONNECT are proxied\n");
        }
    };
    let (target, authority, origin) = match split_absolute(rest) {
        Ok(parts) => parts,
        Err(e) => return reject(400, &format!("Warren: bad URL ({e})\n")),
    };

    // Headers the client marks as hop-by-hop in `Connection` go too, except the two that
    // frame the body: dropping those would desynchronise the origin.
    let nominated: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| t != "content-length" && t != "transfer-encoding")
        .collect();

    let mut out = Vec::with_capacity(head.len() + 64);
    let mut line = String::new();
    let _ = write!(
        line,
        "{method} {origin} HTTP/1.{version}\r\nHost: {authority}\r\n"
    );
    out.extend_from_slice(line.as_bytes());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str())
            || name.starts_with("proxy-")
            || nominated.contains(&name)
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Action::Forward { target, head: out }
}

fn reject(status: u16, body: &str) -> Action {
    Action::Reject {
        status,
        body: body.to_owned(),
    }
}

/// Splits what follows `http://` into the destination (port 80 by default), the authority
/// for the `Host` header, and the origin-form target (`/path?query`).
fn split_absolute(rest: &str) -> Result<(Target, &str, String), warren_types::TargetError> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // Credentials in the URL are for the origin's login, not its address.
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    let target = if has_port {
        Target::parse_authority(authority)?
    } else {
        Target::parse_authority(&format!("{authority}:80"))?
    };
    // The fragment is the client's business; it never goes on the wire.
    let path = path.split('#').next().unwrap_or("");
    let origin = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    Ok((target, authority, origin))
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Sends a short text/plain answer and closes the connection.
async fn answer(mut stream: TcpStream, status: u16, body: &str) {
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        close_gracefully(stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::testing::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use warren_types::Host;

    async fn start(opener: Arc<dyn FlowOpener>, config: FrontConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_http_proxy(listener, opener, config, shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    /// Sends `request` and returns everything the proxy answers before closing.
    async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut s))
            .await
            .expect("proxy answers and closes");
        String::from_utf8_lossy(&got).into_owned()
    }

    fn status_of(response: &str) -> u16 {
        response
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
    }

    fn body_of(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// A CONNECT through the proxy to an echo server, with a short round trip.
    async fn assert_serves(proxy: SocketAddr, echo: SocketAddr) {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let expected = b"HTTP/1.1 200 Connection established\r\n\r\n";
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    }

    /// A one-shot-per-connection origin server: reports each request it received (head and
    /// Content-Length body) and answers `hello`.
    async fn origin_server() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let head_end = loop {
                        let n = s.read(&mut buf).await.unwrap();
                        assert!(n > 0, "request head ends early");
                        got.extend_from_slice(&buf[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < head_end + body_len {
                        let n = s.read(&mut buf).await.unwrap();
                        assert!(n > 0, "request body ends early");
                        got.extend_from_slice(&buf[..n]);
                    }
                    s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await
                    .unwrap();
                    tx.send(got).await.unwrap();
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn connect_tunnels_and_forwards_early_bytes() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\nearly",
            port = echo.port()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let expected = b"HTTP/1.1 200 Connection established\r\n\r\nearly";
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert_echoes(s, 2 * 1024 * 1024).await;
        assert_eq!(
            opener.seen(),
            vec![(
                Target::new(Host::Domain("localhost".parse().unwrap()), echo.port()),
                FlowProto::Tcp
            )]
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn absolute_get_is_rewritten_to_origin_form() {
        let (origin, mut requests) = origin_server().await;
        let opener = TestOpener::new(&[origin.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let port = origin.port();
        let req = format!(
            "GET http://LOCALHOST:{port}/path/x?q=1#frag HTTP/1.1\r\n\
             Host: localhost:{port}\r\n\
             User-Agent: test\r\n\
             Proxy-Connection: keep-alive\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
             Connection: keep-alive, X-Hop\r\n\
             X-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Accept: */*\r\n\r\n"
        );
        let response = exchange(server.addr, req.as_bytes()).await;
        assert_eq!(status_of(&response), 200);
        assert_eq!(body_of(&response), "hello");

        let seen = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(seen.starts_with("GET /path/x?q=1 HTTP/1.1\r\n"), "{seen}");
        let lower = seen.to_ascii_lowercase();
        for gone in ["proxy-", "keep-alive", "x-hop", "te:", "frag"] {
            assert!(
                !lower.contains(gone),
                "{gone} must not reach the origin: {seen}"
            );
        }
        assert_eq!(
            lower.lines().filter(|l| l.starts_with("host:")).count(),
            1,
            "{seen}"
        );
        assert!(
            seen.contains(&format!("Host: LOCALHOST:{port}\r\n")),
            "{seen}"
        );
        assert!(seen.contains("User-Agent: test\r\n"));
        assert!(seen.contains("Accept: */*\r\n"));
        assert!(seen.ends_with("Connection: close\r\n\r\n"), "{seen}");
        assert_eq!(
            opener.seen()[0].0,
            Target::new(Host::Domain("localhost".parse().unwrap()), port)
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn absolute_post_carries_its_body() {
        let (origin, mut requests) = origin_server().await;
        let server = start(TestOpener::new(&[origin.port()]), FrontConfig::default()).await;
        let req = format!(
            "POST http://127.0.0.1:{}?x HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
            origin.port()
        );
        let response = exchange(server.addr, req.as_bytes()).await;
        assert_eq!(status_of(&response), 200);
        let seen = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /?x HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("Content-Length: 11\r\n"));
        assert!(seen.ends_with("\r\n\r\nhello world"), "{seen}");
        server.stop().await;
    }

    #[tokio::test]
    async fn refusals_map_to_statuses_with_reasons() {
        for (kind, status) in [
            (RefusalKind::Policy, 403),
            (RefusalKind::NotConnected, 503),
            (RefusalKind::Unreachable, 502),
            (RefusalKind::Timeout, 504),
        ] {
            let server = start(RefusingOpener::new(kind), FrontConfig::default()).await;
            for req in [
                &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
                &b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            ] {
                let response = exchange(server.addr, req).await;
                assert_eq!(status_of(&response), status, "{kind:?}: {response}");
                assert!(response.contains("Connection: close\r\n"));
                assert!(response.contains("Content-Type: text/plain"));
                let body = body_of(&response);
                if kind == RefusalKind::NotConnected {
                    assert!(body.contains("warren connect"), "{body}");
                } else {
                    assert!(body.contains(&RefusingOpener::message(kind)), "{body}");
                }
            }
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn bad_requests_are_answered_and_the_server_stays_healthy() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let many_headers: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                400,
                "malformed",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
                400,
                "proxy",
            ),
            (
                b"GET https://example.com/ HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "CONNECT",
            ),
            (
                b"GET ftp://example.com/ HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "http://",
            ),
            (b"GET http:///x HTTP/1.1\r\n\r\n".to_vec(), 400, "bad URL"),
            (
                b"CONNECT example.com HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "host:port",
            ),
            (
                b"CONNECT [::1:443 HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "host:port",
            ),
            (
                b"GET http://a b/ HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "malformed",
            ),
            (b"GET http://x/ HTTP/1.1\r\n".to_vec(), 400, "cut short"),
            (
                format!(
                    "GET http://x/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                    "a".repeat(20_000)
                )
                .into_bytes(),
                431,
                "bytes",
            ),
            (
                format!("GET http://x/ HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
                431,
                "headers",
            ),
        ];
        for (req, status, says) in cases {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(&req).await.unwrap();
            // Ending our side lets the proxy see where a cut-short head ends.
            s.shutdown().await.unwrap();
            let got = read_to_close(&mut s).await;
            let response = String::from_utf8_lossy(&got);
            assert_eq!(status_of(&response), status, "{response}");
            assert!(body_of(&response).contains(says), "{response}");
            assert_serves(server.addr, echo).await;
        }
        assert!(
            opener.seen().iter().all(|(t, _)| t.port == echo.port()),
            "no bad request opened a flow"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn slow_heads_get_408() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let config = FrontConfig {
            handshake_timeout: Duration::from_millis(200),
            ..FrontConfig::default()
        };
        let server = start(TestOpener::new(&[echo.port()]), config).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET http://x/ HTTP/1.1\r\n").await.unwrap();
        let response = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
        assert_eq!(status_of(&response), 408, "{response}");
        assert_serves(server.addr, echo).await;
        server.stop().await;
    }

    #[test]
    fn random_garbage_never_hurts_the_server() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, echo) = rt.block_on(async {
            let echo = echo_server("127.0.0.1:0").await.unwrap();
            let config = FrontConfig {
                handshake_timeout: Duration::from_millis(300),
                ..FrontConfig::default()
            };
            (start(TestOpener::new(&[echo.port()]), config).await, echo)
        });
        let mut runner =
            proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(64));
        runner
            .run(
                &proptest::collection::vec(any::<u8>(), 0..2000),
                |garbage| {
                    rt.block_on(async {
                        let mut s = TcpStream::connect(server.addr).await.unwrap();
                        let _ = s.write_all(&garbage).await;
                        let _ = s.shutdown().await;
                        tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
                            .await
                            .expect("server closes the connection");
                    });
                    Ok(())
                },
            )
            .unwrap();
        rt.block_on(async {
            assert_serves(server.addr, echo).await;
            server.stop().await;
        });
    }

    #[test]
    fn response_heads_are_closed() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\n";
        let out = String::from_utf8(close_response_head(head)).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn absolute_uris_split() {
        let split = |s: &str| {
            let (t, a, o) = split_absolute(s).unwrap();
            (t.to_string(), a.to_owned(), o)
        };
        assert_eq!(
            split("example.com"),
            ("example.com:80".into(), "example.com".into(), "/".into())
        );
        assert_eq!(
            split("user:pw@Example.com:8080/a?b"),
            (
                "example.com:8080".into(),
                "Example.com:8080".into(),
                "/a?b".into()
            )
        );
        assert_eq!(
            split("[::1]?q"),
            ("[::1]:80".into(), "[::1]".into(), "/?q".into())
        );
        assert_eq!(
            split("10.0.0.1:81#top"),
            ("10.0.0.1:81".into(), "10.0.0.1:81".into(), "/".into())
        );
        assert!(split_absolute("").is_err());
        assert!(split_absolute("host:0/").is_err());
        assert!(split_absolute("host:/").is_err());
    }
}
