//! SOCKS5 front (RFC 1928): CONNECT and UDP ASSOCIATE, without authentication, for clients
//! on the consumer's own machine or network.
//!
//! Domain names in requests are handed to the [`FlowOpener`] as [`Host::Domain`] and resolved
//! at the exit, so no DNS query leaves the consumer. A refusal is answered with its mapped
//! reply code ([`RefusalKind::socks_reply`]), never a silent close.
//!
//! The protocol is parsed here rather than with fast-socks5's server API: that crate logs each
//! request's destination and the client's offered methods through `log` at debug level, which
//! a `tracing` subscriber's log bridge passes on unredacted, against the rule that
//! destinations reach logs only through [`Redacted`]. Its error replies also use a single
//! `write` (a short write would corrupt the reply) and answer a truncated address with
//! "connection refused". The request grammar is small, and the address form is shared with
//! [`crate::udp`].
//!
//! [`FlowOpener`]: crate::FlowOpener

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, trace};
use warren_types::{FlowProto, Host, Redacted, RefusalKind, Target};

use super::{FrontConfig, accept_loop, close_gracefully};
use crate::splice::{Meter, splice};
use crate::udp::{self, ATYP_DOMAIN, ATYP_V4, ATYP_V6};
use crate::{BoxStream, FlowOpener};

const VERSION: u8 = 0x05;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

const CMD_CONNECT: u8 = 0x01;
const CMD_UDP_ASSOCIATE: u8 = 0x03;

const REPLY_SUCCEEDED: u8 = 0x00;
const REPLY_GENERAL_FAILURE: u8 = 0x01;
const REPLY_HOST_UNREACHABLE: u8 = 0x04;
const REPLY_COMMAND_NOT_SUPPORTED: u8 = 0x07;
const REPLY_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

/// Largest request address: ATYP, length byte, 255 bytes of name, port.
const MAX_ADDR: usize = 1 + 1 + 255 + 2;
/// Receive buffer for client datagrams: the largest UDP payload fits.
const UDP_BUF: usize = 64 * 1024;

/// Serves SOCKS5 on an already-bound listener until `shutdown` is cancelled, then returns once
/// every client connection has been closed.
///
/// Cancel-safe: dropping the future closes the listener and every client connection.
pub async fn serve_socks5(
    listener: TcpListener,
    opener: Arc<dyn FlowOpener>,
    config: FrontConfig,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    accept_loop(
        "socks5",
        listener,
        config,
        shutdown,
        move |stream, client| {
            let conn = Conn {
                opener: opener.clone(),
                config,
                shutdown: stop.clone(),
                client,
            };
            let span = debug_span!("socks5", client = %Redacted(client));
            async move {
                match conn.run(stream).await {
                    Ok(()) => debug!("connection closed"),
                    Err(e) => debug!(error = %e, "connection ended"),
                }
            }
            .instrument(span)
        },
    )
    .await;
}

/// Why one client connection ended early. Logged at debug; never affects other connections.
#[derive(Debug, thiserror::Error)]
enum Socks5Error {
    #[error("client did not finish its request in time")]
    HandshakeTimeout,
    #[error("i/o failed while {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("client spoke SOCKS version {0}, not 5")]
    BadVersion(u8),
    #[error("client offered no acceptable authentication method")]
    NoAcceptableMethod,
    #[error("address type {0:#04x} is not supported")]
    BadAddressType(u8),
    #[error("requested domain name is not valid")]
    BadDomain,
    #[error("command {0:#04x} is not supported")]
    UnsupportedCommand(u8),
    #[error("flow refused ({kind:?}): {message}")]
    Refused { kind: RefusalKind, message: String },
}

fn io_err(during: &'static str) -> impl FnOnce(io::Error) -> Socks5Error {
    move |source| Socks5Error::Io { during, source }
}

/// A request the client may be served for.
#[derive(Debug)]
struct Request {
    command: u8,
    target: Target,
}

struct Conn {
    opener: Arc<dyn FlowOpener>,
    config: FrontConfig,
    shutdown: CancellationToken,
    client: SocketAddr,
}

impl Conn {
    async fn run(self, mut stream: TcpStream) -> Result<(), Socks5Error> {
        let request =
            match tokio::time::timeout(self.config.handshake_timeout, handshake(&mut stream)).await
            {
                Ok(Ok(request)) => request,
                Ok(Err(e)) => {
                    close_gracefully(stream).await;
                    return Err(e);
                }
                Err(_) => return Err(Socks5Error::HandshakeTimeout),
            };
        match request.command {
            CMD_CONNECT => self.connect(stream, request.target).await,
            CMD_UDP_ASSOCIATE => self.udp_associate(stream).await,
            // BIND would need the exit to accept inbound connections for us; nothing else
            // is defined.
            other => {
                let _ = reply(&mut stream, REPLY_COMMAND_NOT_SUPPORTED, None).await;
                close_gracefully(stream).await;
                Err(Socks5Error::UnsupportedCommand(other))
            }
        }
    }

    async fn connect(&self, mut stream: TcpStream, target: Target) -> Result<(), Socks5Error> {
        debug!(dest = %Redacted(&target), "CONNECT");
        let flow = match self.opener.open(target, FlowProto::Tcp).await {
            Ok(flow) => flow,
            Err(refusal) => {
                let _ = reply(&mut stream, refusal.kind.socks_reply(), None).await;
                close_gracefully(stream).await;
                return Err(Socks5Error::Refused {
                    kind: refusal.kind,
                    message: refusal.message,
                });
            }
        };
        reply(&mut stream, REPLY_SUCCEEDED, None)
            .await
            .map_err(io_err("replying"))?;
        let meter = Arc::new(Meter::default());
        let end = splice(stream, flow, meter.clone(), &self.shutdown).await;
        debug!(?end, up = meter.up(), down = meter.down(), "flow ended");
        Ok(())
    }

    async fn udp_associate(&self, mut stream: TcpStream) -> Result<(), Socks5Error> {
        // The request's address names where the client will send from, not a destination
        // (RFC 1928 §7), so it is not passed on: the exit would only learn the client's local
        // address, and its policy would refuse a loopback one. Each datagram names its own
        // destination.
        let hint = Target::new(Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
        let flow = match self.opener.open(hint, FlowProto::Udp).await {
            Ok(flow) => flow,
            Err(refusal) => {
                let _ = reply(&mut stream, refusal.kind.socks_reply(), None).await;
                close_gracefully(stream).await;
                return Err(Socks5Error::Refused {
                    kind: refusal.kind,
                    message: refusal.message,
                });
            }
        };
        // The address the client reached us on is one it can also send datagrams to (unlike
        // the listener's, which may be a wildcard).
        let local_ip = match stream.local_addr() {
            Ok(addr) => addr.ip().to_canonical(),
            Err(e) => {
                let _ = reply(&mut stream, REPLY_GENERAL_FAILURE, None).await;
                return Err(io_err("reading the local address")(e));
            }
        };
        let socket = match UdpSocket::bind((local_ip, 0)).await {
            Ok(socket) => socket,
            Err(e) => {
                let _ = reply(&mut stream, REPLY_GENERAL_FAILURE, None).await;
                close_gracefully(stream).await;
                return Err(io_err("binding the UDP relay socket")(e));
            }
        };
        let bound = socket.local_addr().map_err(io_err("binding"))?;
        reply(&mut stream, REPLY_SUCCEEDED, Some(bound))
            .await
            .map_err(io_err("replying"))?;
        debug!("UDP association open");
        tokio::select! {
            () = relay_udp(stream, socket, flow, self.client.ip().to_canonical()) => {}
            () = self.shutdown.cancelled() => {}
        }
        debug!("UDP association ended");
        Ok(())
    }
}

/// Reads the method negotiation and the request. Answers the client itself whenever the
/// protocol has an answer for the problem.
async fn handshake(stream: &mut TcpStream) -> Result<Request, Socks5Error> {
    let mut greeting = [0u8; 2];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(io_err("reading the greeting"))?;
    let [version, n_methods] = greeting;
    if version != VERSION {
        // A SOCKS4 or HTTP client would not understand a SOCKS5 answer.
        return Err(Socks5Error::BadVersion(version));
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..usize::from(n_methods)];
    stream
        .read_exact(methods)
        .await
        .map_err(io_err("reading the methods"))?;
    if !methods.contains(&METHOD_NO_AUTH) {
        let _ = stream.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream
        .write_all(&[VERSION, METHOD_NO_AUTH])
        .await
        .map_err(io_err("choosing the method"))?;

    match read_request(stream).await {
        Ok(request) => Ok(request),
        Err((code, e)) => {
            let _ = reply(stream, code, None).await;
            Err(e)
        }
    }
}

/// Reads the request; on failure returns the reply code the problem deserves.
async fn read_request(stream: &mut TcpStream) -> Result<Request, (u8, Socks5Error)> {
    // A client that sends half a request and then closes its side may still read our answer.
    let failed = |e| (REPLY_GENERAL_FAILURE, io_err("reading the request")(e));
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.map_err(failed)?;
    let [version, command, _reserved, atyp] = head;
    if version != VERSION {
        return Err((REPLY_GENERAL_FAILURE, Socks5Error::BadVersion(version)));
    }
    let mut addr = [0u8; MAX_ADDR];
    addr[0] = atyp;
    let len = match atyp {
        ATYP_V4 => 1 + 4 + 2,
        ATYP_V6 => 1 + 16 + 2,
        ATYP_DOMAIN => {
            stream.read_exact(&mut addr[1..2]).await.map_err(failed)?;
            2 + usize::from(addr[1]) + 2
        }
        other => {
            return Err((
                REPLY_ADDRESS_TYPE_NOT_SUPPORTED,
                Socks5Error::BadAddressType(other),
            ));
        }
    };
    let start = if atyp == ATYP_DOMAIN { 2 } else { 1 };
    stream
        .read_exact(&mut addr[start..len])
        .await
        .map_err(failed)?;
    let target = parse_addr(&addr[..len])
        .map(|(target, _)| target)
        .ok_or((REPLY_HOST_UNREACHABLE, Socks5Error::BadDomain))?;
    Ok(Request { command, target })
}

/// Decodes `ATYP | ADDR | PORT`, also accepting an IP address sent as a domain name (some
/// clients do), which [`udp::decode_addr`] rejects because it is not a DNS name.
fn parse_addr(buf: &[u8]) -> Option<(Target, usize)> {
    match udp::decode_addr(buf) {
        Ok(decoded) => Some(decoded),
        Err(udp::AddrError::BadDomain) => ip_literal_as_domain(buf),
        Err(_) => None,
    }
}

fn ip_literal_as_domain(buf: &[u8]) -> Option<(Target, usize)> {
    let len = usize::from(*buf.get(1)?);
    let name = std::str::from_utf8(buf.get(2..2 + len)?).ok()?;
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let ip: IpAddr = name.parse().ok()?;
    let port = buf.get(2 + len..4 + len)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    Some((Target::new(Host::Ip(ip), port), 4 + len))
}

/// Sends a reply; `bound` defaults to 0.0.0.0:0, which clients of CONNECT ignore.
async fn reply(stream: &mut TcpStream, code: u8, bound: Option<SocketAddr>) -> io::Result<()> {
    let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut msg = Vec::with_capacity(22);
    msg.extend_from_slice(&[VERSION, code, 0x00]);
    let bound = Target::new(Host::Ip(bound.ip().to_canonical()), bound.port());
    udp::encode_addr(&bound, &mut msg);
    stream.write_all(&msg).await?;
    stream.flush().await
}

/// Relays one UDP association until the control connection closes or the flow ends.
///
/// The two directions run as separate loops rather than one `select!` loop because
/// [`udp::read_datagram`] is not cancel-safe: a frame half read when another branch won
/// would be lost and the stream desynchronised.
async fn relay_udp(mut control: TcpStream, socket: UdpSocket, flow: BoxStream, client_ip: IpAddr) {
    // Only the client's host may use the relay, and only from the first port it sends from:
    // anyone else on the network could otherwise send through the consumer's session.
    let client: OnceLock<SocketAddr> = OnceLock::new();
    let (mut flow_rx, mut flow_tx) = tokio::io::split(flow);

    let up = async {
        let mut buf = vec![0u8; UDP_BUF];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                // Reported by some platforms after an ICMP error for an earlier send.
                Err(e) if is_transient_udp(&e) => continue,
                Err(e) => {
                    debug!(error = %e, "UDP relay socket failed");
                    return;
                }
            };
            if from.ip().to_canonical() != client_ip || *client.get_or_init(|| from) != from {
                continue;
            }
            let Some((dest, payload)) = parse_udp_header(&buf[..n]) else {
                continue;
            };
            match udp::write_datagram(&mut flow_tx, &dest, payload).await {
                Ok(()) => {}
                // Too large to frame: drop it, as a router would.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                Err(_) => return,
            }
        }
    };

    let down = async {
        let mut packet = Vec::with_capacity(UDP_BUF);
        loop {
            let (source, payload) = match udp::read_datagram(&mut flow_rx).await {
                Ok(Some(datagram)) => datagram,
                Ok(None) | Err(_) => return,
            };
            // Replies before the client's first datagram have nowhere to go.
            let Some(&to) = client.get() else { continue };
            packet.clear();
            packet.extend_from_slice(&[0, 0, 0]);
            udp::encode_addr(&source, &mut packet);
            packet.extend_from_slice(&payload);
            // A send can fail for one datagram (too large, a transient ICMP error); like a
            // router, drop it and go on. The loop ends with the flow.
            if let Err(e) = socket.send_to(&packet, to).await {
                trace!(error = %e, "dropped a datagram for the UDP client");
            }
        }
    };

    // RFC 1928 §7: the association lives as long as its TCP connection. Anything the client
    // sends on it is meaningless and discarded.
    let control_open = async {
        let mut buf = [0u8; 512];
        while let Ok(n) = control.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };

    tokio::select! {
        () = up => {}
        () = down => {}
        () = control_open => {}
    }
}

fn is_transient_udp(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Splits a client datagram (`RSV RSV FRAG ATYP ADDR PORT DATA`) into destination and
/// payload. Fragments are dropped: reassembly is optional in RFC 1928 and no common client
/// fragments.
fn parse_udp_header(datagram: &[u8]) -> Option<(Target, &[u8])> {
    let frag = *datagram.get(2)?;
    if frag != 0 {
        return None;
    }
    let rest = datagram.get(3..)?;
    let (dest, used) = parse_addr(rest)?;
    Some((dest, rest.get(used..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::testing::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;
    use std::time::Duration;

    async fn start(opener: Arc<dyn FlowOpener>, config: FrontConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_socks5(listener, opener, config, shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    /// Greets with NO AUTH and checks the server chose it.
    async fn greet(s: &mut TcpStream) {
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
    }

    fn request(cmd: u8, target: &Target) -> Vec<u8> {
        let mut req = vec![5, cmd, 0];
        udp::encode_addr(target, &mut req);
        req
    }

    /// Reads a full reply; returns the code and the bound address.
    async fn read_reply(s: &mut TcpStream) -> (u8, Target) {
        let mut head = [0u8; 3];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 5);
        let mut addr = vec![0u8; 1];
        s.read_exact(&mut addr).await.unwrap();
        let rest = match addr[0] {
            ATYP_V4 => 6,
            ATYP_V6 => 18,
            other => panic!("unexpected reply ATYP {other}"),
        };
        addr.resize(1 + rest, 0);
        s.read_exact(&mut addr[1..]).await.unwrap();
        (head[1], udp::decode_addr(&addr).unwrap().0)
    }

    async fn socks_connect(proxy: SocketAddr, target: &Target) -> (TcpStream, u8) {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        greet(&mut s).await;
        s.write_all(&request(CMD_CONNECT, target)).await.unwrap();
        let (code, _) = read_reply(&mut s).await;
        (s, code)
    }

    /// A full CONNECT through the proxy to an echo server, with a short round trip.
    async fn assert_serves(proxy: SocketAddr, echo: SocketAddr) {
        let target = Target::new(Host::Ip(echo.ip()), echo.port());
        let (mut s, code) = socks_connect(proxy, &target).await;
        assert_eq!(code, REPLY_SUCCEEDED);
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    }

    #[tokio::test]
    async fn connect_by_ipv4_moves_megabytes_both_ways() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let target = Target::new(Host::Ip(echo.ip()), echo.port());
        let (s, code) = socks_connect(server.addr, &target).await;
        assert_eq!(code, REPLY_SUCCEEDED);
        assert_echoes(s, 4 * 1024 * 1024).await;
        assert_eq!(opener.seen(), vec![(target, FlowProto::Tcp)]);
        server.stop().await;
    }

    #[tokio::test]
    async fn connect_by_ipv6() {
        let Ok(echo) = echo_server("[::1]:0").await else {
            eprintln!("no ::1 on this machine; skipping");
            return;
        };
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let target = Target::new(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), echo.port());
        let (s, code) = socks_connect(server.addr, &target).await;
        assert_eq!(code, REPLY_SUCCEEDED);
        assert_echoes(s, 256 * 1024).await;
        assert_eq!(opener.seen(), vec![(target, FlowProto::Tcp)]);
        server.stop().await;
    }

    #[tokio::test]
    async fn connect_by_domain_is_not_resolved_locally() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let target = Target::new(Host::Domain("LocalHost".parse().unwrap()), echo.port());
        // Greeting, request and data in one write, as optimistic clients send them.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut burst = vec![5, 1, 0];
        burst.extend(request(CMD_CONNECT, &target));
        burst.extend_from_slice(b"early");
        s.write_all(&burst).await.unwrap();
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
        assert_eq!(read_reply(&mut s).await.0, REPLY_SUCCEEDED);
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"early");
        let seen = opener.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].0.host,
            Host::Domain("localhost".parse().unwrap()),
            "the front must pass the name on, not resolve it"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn ip_literal_sent_as_domain_becomes_an_ip() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let opener = TestOpener::new(&[echo.port()]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut s).await;
        let mut req = vec![5, CMD_CONNECT, 0, ATYP_DOMAIN, 9];
        req.extend_from_slice(b"127.0.0.1");
        req.extend_from_slice(&echo.port().to_be_bytes());
        s.write_all(&req).await.unwrap();
        assert_eq!(read_reply(&mut s).await.0, REPLY_SUCCEEDED);
        assert_eq!(opener.seen()[0].0.host, Host::Ip(echo.ip()));
        server.stop().await;
    }

    #[tokio::test]
    async fn refusals_map_to_reply_codes() {
        for (kind, code) in [
            (RefusalKind::NotConnected, 0x01),
            (RefusalKind::Policy, 0x02),
            (RefusalKind::Unreachable, 0x03),
            (RefusalKind::ConnectionRefused, 0x05),
            (RefusalKind::Timeout, 0x06),
        ] {
            let server = start(RefusingOpener::new(kind), FrontConfig::default()).await;
            let target = Target::parse_authority("example.com:443").unwrap();
            let (mut s, got) = socks_connect(server.addr, &target).await;
            assert_eq!(got, code, "{kind:?}");
            assert_closed(&mut s).await;
            // UDP ASSOCIATE is refused the same way.
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            greet(&mut s).await;
            let hint = Target::new(Host::Ip(Ipv4Addr::UNSPECIFIED.into()), 0);
            s.write_all(&request(CMD_UDP_ASSOCIATE, &hint))
                .await
                .unwrap();
            assert_eq!(read_reply(&mut s).await.0, code, "{kind:?} (UDP)");
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn udp_associate_round_trip() {
        let opener = TestOpener::new(&[]);
        let server = start(opener.clone(), FrontConfig::default()).await;
        let mut control = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut control).await;
        let hint = Target::new(Host::Ip(Ipv4Addr::UNSPECIFIED.into()), 0);
        control
            .write_all(&request(CMD_UDP_ASSOCIATE, &hint))
            .await
            .unwrap();
        let (code, relay) = read_reply(&mut control).await;
        assert_eq!(code, REPLY_SUCCEEDED);
        let Host::Ip(relay_ip) = relay.host else {
            panic!("relay address must be an IP")
        };
        assert_eq!(relay_ip, server.addr.ip());
        let relay = SocketAddr::new(relay_ip, relay.port);
        assert_eq!(opener.seen(), vec![(hint, FlowProto::Udp)]);

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; UDP_BUF];
        for (dest, payload) in [
            ("dns.example:53", &b"query"[..]),
            ("[2001:db8::1]:5353", &b""[..]),
            ("192.0.2.7:9", &[7u8; 1200][..]),
        ] {
            let dest = Target::parse_authority(dest).unwrap();
            let mut datagram = vec![0, 0, 0];
            udp::encode_addr(&dest, &mut datagram);
            datagram.extend_from_slice(payload);
            client.send_to(&datagram, relay).await.unwrap();
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("echo arrives")
                    .unwrap();
            assert_eq!(from, relay);
            // The echo comes back from the destination it was sent to.
            assert_eq!(parse_udp_header(&buf[..n]), Some((dest, payload)));
        }

        // Fragments are dropped: the next answer is the one for the unfragmented datagram.
        let dest = Target::parse_authority("192.0.2.7:9").unwrap();
        for (frag, payload) in [(1u8, &b"frag"[..]), (0, &b"whole"[..])] {
            let mut datagram = vec![0, 0, frag];
            udp::encode_addr(&dest, &mut datagram);
            datagram.extend_from_slice(payload);
            client.send_to(&datagram, relay).await.unwrap();
        }
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(parse_udp_header(&buf[..n]).unwrap().1, b"whole");

        // Another port is not the client the association is locked to.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut datagram = vec![0, 0, 0];
        udp::encode_addr(&dest, &mut datagram);
        datagram.extend_from_slice(b"stranger");
        stranger.send_to(&datagram, relay).await.unwrap();
        let mut datagram = vec![0, 0, 0];
        udp::encode_addr(&dest, &mut datagram);
        datagram.extend_from_slice(b"client");
        client.send_to(&datagram, relay).await.unwrap();
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(parse_udp_header(&buf[..n]).unwrap().1, b"client");
        let mut one = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), stranger.recv_from(&mut one))
                .await
                .is_err(),
            "a stranger gets nothing back"
        );

        // Closing the control connection ends the association and its flow.
        drop(control);
        opener.wait_udp_flows_closed().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn bind_and_unknown_commands_are_not_supported() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let server = start(TestOpener::new(&[echo.port()]), FrontConfig::default()).await;
        for cmd in [0x02, 0x09] {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            greet(&mut s).await;
            let target = Target::new(Host::Ip(echo.ip()), echo.port());
            s.write_all(&request(cmd, &target)).await.unwrap();
            assert_eq!(read_reply(&mut s).await.0, REPLY_COMMAND_NOT_SUPPORTED);
            assert_closed(&mut s).await;
        }
        assert_serves(server.addr, echo).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn malformed_clients_are_answered_or_closed() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let server = start(TestOpener::new(&[echo.port()]), FrontConfig::default()).await;

        // Wrong version in the greeting: no SOCKS5 answer makes sense, just a close.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&[4, 1, 0, 80, 0, 0, 0, 1, 0]).await.unwrap();
        assert_closed(&mut s).await;

        // No acceptable method (username/password only).
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        let mut answer = [0u8; 2];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0xFF]);
        assert_closed(&mut s).await;

        // No methods at all.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&[5, 0]).await.unwrap();
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0xFF]);
        assert_closed(&mut s).await;

        // Wrong version in the request.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut s).await;
        s.write_all(&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80])
            .await
            .unwrap();
        assert_eq!(read_reply(&mut s).await.0, REPLY_GENERAL_FAILURE);
        assert_closed(&mut s).await;

        // Unknown address type.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut s).await;
        s.write_all(&[5, 1, 0, 0x05, 1, 2, 3, 4, 0, 80])
            .await
            .unwrap();
        assert_eq!(read_reply(&mut s).await.0, REPLY_ADDRESS_TYPE_NOT_SUPPORTED);
        assert_closed(&mut s).await;

        // A domain name that is not one.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut s).await;
        s.write_all(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80])
            .await
            .unwrap();
        assert_eq!(read_reply(&mut s).await.0, REPLY_HOST_UNREACHABLE);
        assert_closed(&mut s).await;

        // Truncated requests, the client closing its side: an error reply or a close.
        for cut in [
            &[5, 1][..],
            &[5, 1, 0, 1, 127, 0][..],
            &[5, 1, 0, 3, 20, b'a'][..],
            &[5, 1, 0, 4, 0, 0, 0][..],
        ] {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            greet(&mut s).await;
            s.write_all(cut).await.unwrap();
            s.shutdown().await.unwrap();
            let rest = read_to_close(&mut s).await;
            assert!(
                rest.is_empty() || rest[..2] == [5, REPLY_GENERAL_FAILURE],
                "{rest:?}"
            );
        }

        // A client that stops halfway is closed after the handshake timeout.
        let quick = FrontConfig {
            handshake_timeout: Duration::from_millis(200),
            ..FrontConfig::default()
        };
        let slow_server = start(TestOpener::new(&[echo.port()]), quick).await;
        let mut s = TcpStream::connect(slow_server.addr).await.unwrap();
        s.write_all(&[5, 1]).await.unwrap();
        assert_closed(&mut s).await;
        slow_server.stop().await;

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
        let strategy = proptest::collection::vec(any::<u8>(), 0..600);
        // Garbage that happens to begin with a valid greeting exercises the request parser.
        let prefixed = strategy.clone().prop_map(|g| {
            let mut v = vec![5, 1, 0, 5];
            v.extend(g);
            v
        });
        let mut runner =
            proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(64));
        for strategy in [strategy.boxed(), prefixed.boxed()] {
            runner
                .run(&strategy, |garbage| {
                    rt.block_on(async {
                        let mut s = TcpStream::connect(server.addr).await.unwrap();
                        let _ = s.write_all(&garbage).await;
                        let _ = s.shutdown().await;
                        // Whatever the answer, the connection must end.
                        tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
                            .await
                            .expect("server closes the connection");
                    });
                    Ok(())
                })
                .unwrap();
        }
        rt.block_on(async {
            assert_serves(server.addr, echo).await;
            server.stop().await;
        });
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let config = FrontConfig {
            max_connections: 1,
            ..FrontConfig::default()
        };
        let server = start(TestOpener::new(&[echo.port()]), config).await;
        let mut first = TcpStream::connect(server.addr).await.unwrap();
        greet(&mut first).await;
        let mut second = TcpStream::connect(server.addr).await.unwrap();
        assert_closed(&mut second).await;
        drop(first);
        // The permit comes back once the first connection's task ends.
        let target = Target::new(Host::Ip(echo.ip()), echo.port());
        loop {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            if s.write_all(&[5, 1, 0]).await.is_ok() {
                let mut choice = [0u8; 2];
                if s.read_exact(&mut choice).await.is_ok() {
                    s.write_all(&request(CMD_CONNECT, &target)).await.unwrap();
                    assert_eq!(read_reply(&mut s).await.0, REPLY_SUCCEEDED);
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_ends_open_flows() {
        let echo = echo_server("127.0.0.1:0").await.unwrap();
        let server = start(TestOpener::new(&[echo.port()]), FrontConfig::default()).await;
        let target = Target::new(Host::Ip(echo.ip()), echo.port());
        let (mut s, code) = socks_connect(server.addr, &target).await;
        assert_eq!(code, REPLY_SUCCEEDED);
        server.stop().await;
        assert_closed(&mut s).await;
    }

    proptest! {
        #[test]
        fn udp_header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_udp_header(&bytes);
        }
    }
}
