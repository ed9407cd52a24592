//! UDP flows at the exit: datagrams framed on the flow's stream (see [`crate::udp`]) leave
//! from one unconnected socket per address family, and replies come back framed with their
//! source, but only from addresses this flow has sent to, so the exit is no open relay.
//!
//! Everything is bounded: destinations per flow, the name cache, the frame buffer, and the
//! flow's life (it ends after [`UDP_IDLE_TIMEOUT`] without traffic).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_types::{DomainName, FlowRefusal, Host, Redacted, RefusalKind, Target};

use super::connector::Exit;
use crate::splice::Meter;
use crate::udp::{MAX_FRAME, decode_addr, write_datagram};

/// A UDP flow with no datagram in either direction for this long ends.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Distinct destinations (address and port) one UDP flow may send to.
pub const MAX_UDP_DESTINATIONS: usize = 64;
/// Names one flow keeps resolved.
const DNS_CACHE_ENTRIES: usize = 32;
/// The system resolver does not report TTLs; a minute keeps a chatty flow from resolving
/// per datagram without pinning a stale answer for long.
const DNS_CACHE_TTL: Duration = Duration::from_secs(60);
/// Failures are remembered briefly, so a flood of datagrams to a dead name does not stall
/// the flow for a resolver timeout each.
const DNS_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The largest reply payload that still fits one frame with an IPv6 source (1 + 16 + 2).
const MAX_REPLY: usize = MAX_FRAME - 19;
/// Consecutive socket errors after which the flow gives up instead of spinning.
const MAX_SOCKET_ERRORS: u32 = 64;

/// Carries one UDP flow until the stream ends, `stop` is cancelled or the flow is idle for
/// [`UDP_IDLE_TIMEOUT`]; those end it with `Ok`. Payload bytes are counted into `meter`.
///
/// Datagrams the policy refuses are dropped (UDP has no per-datagram refusal) and logged at
/// debug level with the destination redacted. Returns an error when a frame is malformed
/// (`BadRequest`), the session's byte cap is reached (`Cap`) or the stream or sockets fail
/// (`Internal`). Name resolution waits in line with the flow's datagrams, for at most the
/// exit's resolve timeout.
pub async fn relay_udp<S>(
    exit: &Exit,
    mut stream: S,
    meter: Arc<Meter>,
    stop: &CancellationToken,
) -> Result<(), FlowRefusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = Relay {
        exit,
        meter,
        v4: None,
        v6: None,
        buf: Vec::new(),
        sent_to: HashSet::new(),
        dns: DnsCache::default(),
        stats: Stats::default(),
        consecutive_errors: 0,
    };
    let mut frames = FrameReader::default();
    let idle = tokio::time::sleep(UDP_IDLE_TIMEOUT);
    tokio::pin!(idle);
    let end = loop {
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            () = &mut idle => break Ok(()),
            frame = frames.next(&mut stream) => match frame {
                Ok(Some((dest, payload))) => {
                    idle.as_mut().reset(Instant::now() + UDP_IDLE_TIMEOUT);
                    if let Err(refusal) = relay.send(dest, &payload).await {
                        break Err(refusal);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    break Err(FlowRefusal::new(
                        RefusalKind::BadRequest,
                        "malformed datagram frame",
                    ));
                }
                Err(_) => break Err(stream_failed()),
            },
            ready = readable(relay.v4.as_ref()) => {
                match relay.forward_reply(ready, false, &mut stream).await {
                    Ok(true) => idle.as_mut().reset(Instant::now() + UDP_IDLE_TIMEOUT),
                    Ok(false) => {}
                    Err(refusal) => break Err(refusal),
                }
            }
            ready = readable(relay.v6.as_ref()) => {
                match relay.forward_reply(ready, true, &mut stream).await {
                    Ok(true) => idle.as_mut().reset(Instant::now() + UDP_IDLE_TIMEOUT),
                    Ok(false) => {}
                    Err(refusal) => break Err(refusal),
                }
            }
        }
    };
    let s = &relay.stats;
    debug!(
        sent = s.sent,
        replies = s.replies,
        dropped = s.dropped,
        strangers = s.strangers,
        destinations = relay.sent_to.len(),
        "udp flow ended"
    );
    end
}

/// Resolves when `socket` has something to read; never, when there is no socket yet.
async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

fn stream_failed() -> FlowRefusal {
    FlowRefusal::new(RefusalKind::Internal, "the UDP flow's stream failed")
}

fn cap_reached() -> FlowRefusal {
    FlowRefusal::new(RefusalKind::Cap, "the session's byte cap is reached")
}

/// `::ffff:a.b.c.d` as plain IPv4, so what was sent and what replies match, and the IPv4
/// socket is used for IPv4 destinations however they were written.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[derive(Debug, Default)]
struct Stats {
    sent: u64,
    replies: u64,
    dropped: u64,
    strangers: u64,
}

struct Relay<'a> {
    exit: &'a Exit,
    meter: Arc<Meter>,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// One receive buffer for both sockets, allocated with the first socket.
    buf: Vec<u8>,
    /// Where this flow has sent; replies from anywhere else are dropped.
    sent_to: HashSet<SocketAddr>,
    dns: DnsCache,
    stats: Stats,
    /// Receive errors since the last datagram that arrived.
    consecutive_errors: u32,
}

impl Relay<'_> {
    /// Sends one datagram, or drops it when the policy, the destination bound or the network
    /// says no. Errors only when the flow must end.
    async fn send(&mut self, dest: Target, payload: &[u8]) -> Result<(), FlowRefusal> {
        if self.meter.exhausted() {
            return Err(cap_reached());
        }
        if self.meter.is_held() {
            self.drop_datagram(&dest, "the session is paused until paid");
            return Ok(());
        }
        let addr = match self.destination(&dest).await {
            Ok(addr) => addr,
            Err(refusal) => {
                self.drop_datagram(&dest, &refusal.message);
                return Ok(());
            }
        };
        if !self.sent_to.contains(&addr) && self.sent_to.len() >= MAX_UDP_DESTINATIONS {
            self.drop_datagram(&dest, "the flow reached its limit of destinations");
            return Ok(());
        }
        let socket = match self.socket_for(addr).await {
            Ok(socket) => socket,
            Err(e) => {
                debug!(error = %e, "could not bind a UDP socket for the exit");
                self.drop_datagram(&dest, "the exit could not open a UDP socket");
                return Ok(());
            }
        };
        match socket.send_to(payload, addr).await {
            Ok(_) => {
                self.sent_to.insert(addr);
                self.stats.sent += 1;
                self.meter.add_up(payload.len() as u64);
            }
            Err(e) => {
                debug!(error = %e.kind(), "udp send failed");
                self.drop_datagram(&dest, "the exit could not send the datagram");
            }
        }
        Ok(())
    }

    fn drop_datagram(&mut self, dest: &Target, reason: &str) {
        self.stats.dropped += 1;
        debug!(dest = %Redacted(dest), reason, "udp datagram dropped");
    }

    /// The checked address to send to.
    async fn destination(&mut self, dest: &Target) -> Result<SocketAddr, FlowRefusal> {
        if dest.port == 0 {
            return Err(FlowRefusal::new(
                RefusalKind::BadRequest,
                "port 0 is not a destination",
            ));
        }
        let addr = match &dest.host {
            Host::Ip(ip) => {
                self.exit.policy().check(None, *ip, dest.port)?;
                SocketAddr::new(*ip, dest.port)
            }
            Host::Domain(name) => {
                let ips = self.dns.resolve(self.exit, name).await?;
                let allowed = self.exit.allowed(Some(name), &ips, dest.port)?;
                allowed.into_iter().next().ok_or_else(|| {
                    FlowRefusal::new(RefusalKind::DnsFailed, "the name has no addresses")
                })?
            }
        };
        Ok(unmapped(addr))
    }

    /// The socket for `addr`'s family, bound on first use.
    async fn socket_for(&mut self, addr: SocketAddr) -> io::Result<&UdpSocket> {
        let (slot, any) = match addr {
            SocketAddr::V4(_) => (&mut self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (&mut self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        let socket = match slot.take() {
            Some(socket) => socket,
            None => UdpSocket::bind(SocketAddr::new(any, 0)).await?,
        };
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_REPLY];
        }
        Ok(slot.insert(socket))
    }

    /// Reads one datagram from a ready socket and frames it back if it comes from a
    /// destination of this flow. Returns whether a reply was forwarded.
    async fn forward_reply<W: AsyncWrite + Unpin>(
        &mut self,
        ready: io::Result<()>,
        v6: bool,
        w: &mut W,
    ) -> Result<bool, FlowRefusal> {
        let socket = if v6 { &self.v6 } else { &self.v4 };
        let Some(socket) = socket else {
            return Ok(false);
        };
        let received = ready.and_then(|()| socket.try_recv_from(&mut self.buf));
        let (n, src) = match received {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => {
                // Some systems report ICMP errors for earlier datagrams here; they are no
                // reason to end the flow unless they never stop.
                self.stats.dropped += 1;
                debug!(error = %e.kind(), "udp receive failed");
                self.consecutive_errors += 1;
                if self.consecutive_errors >= MAX_SOCKET_ERRORS {
                    return Err(FlowRefusal::new(
                        RefusalKind::Internal,
                        "the exit's UDP socket keeps failing",
                    ));
                }
                return Ok(false);
            }
        };
        self.consecutive_errors = 0;
        let src = unmapped(src);
        if !self.sent_to.contains(&src) {
            self.stats.strangers += 1;
            return Ok(false);
        }
        if self.meter.exhausted() {
            return Err(cap_reached());
        }
        if self.meter.is_held() {
            // Paused until paid: a reply now is lost, as datagrams may be.
            return Ok(false);
        }
        let payload = self.buf.get(..n).unwrap_or_default();
        let peer = Target::new(Host::Ip(src.ip()), src.port());
        write_datagram(w, &peer, payload)
            .await
            .map_err(|_| stream_failed())?;
        self.meter.add_down(n as u64);
        self.stats.replies += 1;
        Ok(true)
    }
}

/// A per-flow cache of resolved names: bounded, short-lived, and dropped with the flow, so
/// the exit keeps no history of where its consumers go.
#[derive(Debug, Default)]
struct DnsCache {
    entries: HashMap<DomainName, (Instant, Result<Vec<IpAddr>, FlowRefusal>)>,
}

impl DnsCache {
    async fn resolve(
        &mut self,
        exit: &Exit,
        name: &DomainName,
    ) -> Result<Vec<IpAddr>, FlowRefusal> {
        let now = Instant::now();
        if let Some((expires, answer)) = self.entries.get(name)
            && *expires > now
        {
            return answer.clone();
        }
        let answer = exit.lookup(name).await;
        let ttl = if answer.is_ok() {
            DNS_CACHE_TTL
        } else {
            DNS_NEGATIVE_TTL
        };
        if self.entries.len() >= DNS_CACHE_ENTRIES && !self.entries.contains_key(name) {
            self.entries.retain(|_, (expires, _)| *expires > now);
            if self.entries.len() >= DNS_CACHE_ENTRIES {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries
            .insert(name.clone(), (Instant::now() + ttl, answer.clone()));
        answer
    }
}

/// Reads datagram frames without losing bytes when the read is cancelled (as it is, in a
/// `select!`, whenever a reply arrives first): bytes wait in `buf` until a frame is whole.
#[derive(Debug, Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Option<(Target, Vec<u8>)>> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            // The buffer holds less than one whole frame, so it stays under MAX_FRAME plus
            // one read.
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    fn take_frame(&mut self) -> io::Result<Option<(Target, Vec<u8>)>> {
        let Some(&[hi, lo]) = self.buf.get(..2) else {
            return Ok(None);
        };
        let end = 2 + u16::from_be_bytes([hi, lo]) as usize;
        let Some(body) = self.buf.get(2..end) else {
            return Ok(None);
        };
        let (dest, used) =
            decode_addr(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let payload = body.get(used..).unwrap_or_default().to_vec();
        self.buf.drain(..end);
        Ok(Some((dest, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::policy::{ExitPolicy, ExitRules};
    use crate::udp::read_datagram;
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    /// How long a test waits for a datagram that must not come.
    const QUIET: Duration = Duration::from_millis(300);

    fn exit(allow_loopback: bool) -> Exit {
        let allow = if allow_loopback {
            vec!["127.0.0.0/8".parse().unwrap()]
        } else {
            vec![]
        };
        Exit::new(ExitPolicy::new(&ExitRules::default(), allow, vec![]).unwrap())
    }

    struct Flow {
        consumer: DuplexStream,
        meter: Arc<Meter>,
        stop: CancellationToken,
        task: JoinHandle<Result<(), FlowRefusal>>,
    }

    fn start(exit: Exit, meter: Meter) -> Flow {
        let (consumer, far) = tokio::io::duplex(256 * 1024);
        let meter = Arc::new(meter);
        let stop = CancellationToken::new();
        let (m, s) = (meter.clone(), stop.clone());
        let task = tokio::spawn(async move { relay_udp(&exit, far, m, &s).await });
        Flow {
            consumer,
            meter,
            stop,
            task,
        }
    }

    /// A UDP echo server on 127.0.0.1; replies from `reply_from` if given (a stranger).
    async fn echo_server(reply_from: Option<UdpSocket>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let out = reply_from.as_ref().unwrap_or(&socket);
                let _ = out.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    fn ip_target(addr: SocketAddr) -> Target {
        Target::new(Host::Ip(addr.ip()), addr.port())
    }

    async fn expect_reply(consumer: &mut DuplexStream) -> (Target, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), read_datagram(consumer))
            .await
            .expect("a reply in time")
            .unwrap()
            .expect("a reply, not the end of the flow")
    }

    async fn expect_silence(consumer: &mut DuplexStream) {
        let got = tokio::time::timeout(QUIET, read_datagram(consumer)).await;
        assert!(got.is_err(), "expected no datagram, got {got:?}");
    }

    #[tokio::test]
    async fn echo_by_ip_comes_back_with_its_source() {
        let echo = echo_server(None).await;
        let mut flow = start(exit(true), Meter::default());
        write_datagram(&mut flow.consumer, &ip_target(echo), b"hello")
            .await
            .unwrap();
        let (from, payload) = expect_reply(&mut flow.consumer).await;
        assert_eq!((from, payload.as_slice()), (ip_target(echo), &b"hello"[..]));
        write_datagram(&mut flow.consumer, &ip_target(echo), b"")
            .await
            .unwrap();
        assert_eq!(expect_reply(&mut flow.consumer).await.1, b"");
        assert_eq!((flow.meter.up(), flow.meter.down()), (5, 5));
        drop(flow.consumer);
        assert_eq!(flow.task.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn echo_by_name_is_resolved_at_the_exit() {
        let echo = echo_server(None).await;
        let mut flow = start(exit(true), Meter::default());
        let by_name = Target::new(Host::Domain("localhost".parse().unwrap()), echo.port());
        for _ in 0..2 {
            write_datagram(&mut flow.consumer, &by_name, b"name")
                .await
                .unwrap();
            let (from, payload) = expect_reply(&mut flow.consumer).await;
            assert_eq!((from, payload.as_slice()), (ip_target(echo), &b"name"[..]));
        }
        flow.stop.cancel();
        assert_eq!(flow.task.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn refused_destination_is_dropped() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let mut flow = start(exit(false), Meter::default());
        write_datagram(&mut flow.consumer, &ip_target(addr), b"nope")
            .await
            .unwrap();
        let by_name = Target::new(Host::Domain("localhost".parse().unwrap()), addr.port());
        write_datagram(&mut flow.consumer, &by_name, b"nope")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(QUIET, server.recv_from(&mut buf)).await;
        assert!(got.is_err(), "the datagram must not leave the exit");
        expect_silence(&mut flow.consumer).await;
        assert_eq!(flow.meter.up(), 0);
        assert!(
            !flow.task.is_finished(),
            "a refused datagram does not end the flow"
        );
    }

    #[tokio::test]
    async fn replies_from_strangers_are_dropped() {
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let reflector = echo_server(Some(stranger)).await;
        let echo = echo_server(None).await;
        let mut flow = start(exit(true), Meter::default());
        write_datagram(&mut flow.consumer, &ip_target(reflector), b"x")
            .await
            .unwrap();
        expect_silence(&mut flow.consumer).await;
        write_datagram(&mut flow.consumer, &ip_target(echo), b"y")
            .await
            .unwrap();
        let (from, _) = expect_reply(&mut flow.consumer).await;
        assert_eq!(from, ip_target(echo));
        assert_eq!(flow.meter.down(), 1);
    }

    #[tokio::test]
    async fn destinations_per_flow_are_bounded() {
        let mut sinks = Vec::new();
        for _ in 0..MAX_UDP_DESTINATIONS {
            sinks.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        let echo = echo_server(None).await;
        let mut flow = start(exit(true), Meter::default());
        for sink in &sinks {
            let to = ip_target(sink.local_addr().unwrap());
            write_datagram(&mut flow.consumer, &to, b"s").await.unwrap();
        }
        let mut buf = [0u8; 4];
        for sink in &sinks {
            tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
        }
        write_datagram(&mut flow.consumer, &ip_target(echo), b"e")
            .await
            .unwrap();
        expect_silence(&mut flow.consumer).await;
        // A destination the flow already has still works.
        let first = sinks[0].local_addr().unwrap();
        write_datagram(&mut flow.consumer, &ip_target(first), b"again")
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sinks[0].recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 4);
    }

    #[tokio::test]
    async fn byte_cap_ends_the_flow() {
        let echo = echo_server(None).await;
        let mut flow = start(exit(true), Meter::with_cap(Some(3)));
        write_datagram(&mut flow.consumer, &ip_target(echo), b"hello")
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), flow.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end.unwrap_err().kind, RefusalKind::Cap);
    }

    #[tokio::test]
    async fn malformed_frame_is_a_bad_request() {
        let mut flow = start(exit(true), Meter::default());
        flow.consumer.write_all(&[0, 3, 9, 9, 9]).await.unwrap();
        let end = flow.task.await.unwrap();
        assert_eq!(end.unwrap_err().kind, RefusalKind::BadRequest);
    }

    #[tokio::test]
    async fn frame_cut_short_fails_the_flow() {
        let mut flow = start(exit(true), Meter::default());
        flow.consumer.write_all(&[0, 10, 1]).await.unwrap();
        drop(flow.consumer);
        let end = flow.task.await.unwrap();
        assert_eq!(end.unwrap_err().kind, RefusalKind::Internal);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_flow_ends() {
        let flow = start(exit(true), Meter::default());
        let started = Instant::now();
        assert_eq!(flow.task.await.unwrap(), Ok(()));
        assert!(started.elapsed() >= UDP_IDLE_TIMEOUT);
        drop(flow.consumer);
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let t = Target::new(Host::Ip("192.0.2.1".parse().unwrap()), 53);
        let mut frame = Vec::new();
        let mut body = Vec::new();
        crate::udp::encode_addr(&t, &mut body);
        body.extend_from_slice(&[7u8; 100]);
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
        frame.extend_from_slice(&body);
        let writer = tokio::spawn(async move {
            for chunk in frame.chunks(7) {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = FrameReader::default();
        let (dest, payload) = reader.next(&mut b).await.unwrap().unwrap();
        assert_eq!((dest, payload), (t, vec![7u8; 100]));
        writer.await.unwrap();
        assert!(reader.next(&mut b).await.unwrap().is_none());
    }
}
