//! The exit connector: resolves a flow's destination at the exit, checks every resolved
//! address against the [`ExitPolicy`] and connects to exactly an address it checked.
//!
//! Never re-resolving between check and connect is what makes the policy DNS-rebinding safe:
//! a name that answers with a public address to the check and `127.0.0.1` to the connect
//! cannot exist here, because the connect uses the checked address itself.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};
use warren_types::{DomainName, FlowRefusal, Host, Redacted, RefusalKind, Target};

use super::policy::{Denial, ExitPolicy};

/// How long name resolution may take before the flow is refused.
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting (all attempts together) may take before the flow is refused.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Resolved addresses considered per name; more would only slow a refusal down.
pub const MAX_ADDRESSES: usize = 16;
/// How long one connection attempt runs alone before the next address is tried alongside it
/// (RFC 8305's connection attempt delay), so a black-holed IPv6 route costs a quarter
/// second, not the whole connect timeout.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The provider's exit: policy plus timeouts. Cheap to clone; clones share the policy.
#[derive(Clone, Debug)]
pub struct Exit {
    policy: Arc<ExitPolicy>,
    resolve_timeout: Duration,
    connect_timeout: Duration,
}

impl Exit {
    pub fn new(policy: ExitPolicy) -> Self {
        Exit {
            policy: Arc::new(policy),
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    pub fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
        self.resolve_timeout = timeout;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn policy(&self) -> &ExitPolicy {
        &self.policy
    }

    /// The addresses of this host's network interfaces, for [`ExitPolicy::new`]. Logs a
    /// warning and returns none if the interfaces cannot be listed.
    pub fn own_addresses() -> Vec<IpAddr> {
        match if_addrs::get_if_addrs() {
            Ok(interfaces) => {
                let mut ips: Vec<IpAddr> = interfaces.iter().map(|i| i.ip()).collect();
                ips.sort_unstable();
                ips.dedup();
                ips
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "could not list this host's network addresses, so the exit policy cannot \
                     deny them by address; private and loopback ranges are still denied"
                );
                Vec::new()
            }
        }
    }

    /// Resolves `target` (if it is a name) and returns the addresses the policy allows, in
    /// the resolver's order. Refuses with the policy's reason when none is allowed.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, FlowRefusal> {
        if target.port == 0 {
            return Err(FlowRefusal::new(
                RefusalKind::BadRequest,
                "port 0 is not a destination",
            ));
        }
        match &target.host {
            Host::Ip(ip) => {
                self.policy.check(None, *ip, target.port)?;
                Ok(vec![SocketAddr::new(*ip, target.port)])
            }
            Host::Domain(name) => {
                let ips = self.lookup(name).await?;
                self.allowed(Some(name), &ips, target.port)
            }
        }
    }

    /// Connects a TCP flow. Safe to cancel: dropping the future abandons every attempt.
    pub async fn connect_tcp(&self, target: &Target) -> Result<TcpStream, FlowRefusal> {
        let result = match self.resolve(target).await {
            Ok(addrs) => self.connect_any(addrs).await,
            Err(refusal) => Err(refusal),
        };
        match &result {
            Ok(_) => debug!(dest = %Redacted(target), "exit connected"),
            Err(refusal) => {
                let kind = refusal.kind;
                debug!(dest = %Redacted(target), ?kind, reason = %refusal, "exit refused");
            }
        }
        result
    }

    /// The addresses `name` resolves to, deduplicated, at most [`MAX_ADDRESSES`]. Unchecked.
    pub(super) async fn lookup(&self, name: &DomainName) -> Result<Vec<IpAddr>, FlowRefusal> {
        let lookup = tokio::net::lookup_host((name.as_str(), 0));
        let addrs = match tokio::time::timeout(self.resolve_timeout, lookup).await {
            Err(_) => {
                return Err(FlowRefusal::new(
                    RefusalKind::DnsFailed,
                    "name resolution at the exit timed out",
                ));
            }
            Ok(Err(_)) => {
                return Err(FlowRefusal::new(
                    RefusalKind::DnsFailed,
                    "the name did not resolve at the exit",
                ));
            }
            Ok(Ok(addrs)) => addrs,
        };
        let mut ips = Vec::new();
        for addr in addrs {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
                if ips.len() == MAX_ADDRESSES {
                    break;
                }
            }
        }
        if ips.is_empty() {
            return Err(FlowRefusal::new(
                RefusalKind::DnsFailed,
                "the name has no addresses",
            ));
        }
        Ok(ips)
    }

    /// The subset of `ips` the policy allows for `port`, or a refusal naming why none is.
    pub(super) fn allowed(
        &self,
        requested: Option<&DomainName>,
        ips: &[IpAddr],
        port: u16,
    ) -> Result<Vec<SocketAddr>, FlowRefusal> {
        let mut allowed = Vec::new();
        let mut denials: Vec<Denial> = Vec::new();
        for &ip in ips {
            match self.policy.evaluate(requested, ip, port) {
                Ok(()) => allowed.push(SocketAddr::new(ip, port)),
                Err(d) if !denials.contains(&d) => denials.push(d),
                Err(_) => {}
            }
        }
        if allowed.is_empty() {
            Err(all_denied(&denials))
        } else {
            Ok(allowed)
        }
    }

    /// Tries `addrs` in order, starting the next one when the current fails or has run for
    /// [`ATTEMPT_DELAY`]; the first connection wins and the others are dropped.
    async fn connect_any(&self, addrs: Vec<SocketAddr>) -> Result<TcpStream, FlowRefusal> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut waiting = addrs.into_iter();
        let mut running = FuturesUnordered::new();
        let mut last_error = None;
        loop {
            if running.is_empty() {
                match waiting.next() {
                    Some(addr) => running.push(attempt(addr)),
                    None => break,
                }
            }
            let more = waiting.len() > 0;
            tokio::select! {
                Some(result) = running.next() => match result {
                    Ok(stream) => return Ok(stream),
                    Err(refusal) => {
                        last_error = Some(refusal);
                        if let Some(addr) = waiting.next() {
                            running.push(attempt(addr));
                        }
                    }
                },
                () = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                    if let Some(addr) = waiting.next() {
                        running.push(attempt(addr));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(FlowRefusal::new(
                        RefusalKind::Timeout,
                        "the destination did not answer in time",
                    ));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| FlowRefusal::new(RefusalKind::Internal, "no address to connect to")))
    }
}

async fn attempt(addr: SocketAddr) -> Result<TcpStream, FlowRefusal> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_refusal(&e))?;
    // Flows carry interactive protocols (TLS handshakes, SSH); Nagle would add latency to
    // every small write. Failing to set it costs speed, not correctness.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY on an exit connection");
    }
    Ok(stream)
}

/// The refusal for a name whose every address was denied: the shared reason when it is a
/// rule or a port, else the kinds of address found.
fn all_denied(denials: &[Denial]) -> FlowRefusal {
    match denials {
        [one] if !one.is_address_kind() => FlowRefusal::from(*one),
        _ => {
            let labels: Vec<String> = denials.iter().map(|d| d.label()).collect();
            FlowRefusal::new(
                RefusalKind::Policy,
                format!(
                    "the name resolves only to denied addresses ({})",
                    labels.join(", ")
                ),
            )
        }
    }
}

/// Maps a connect error to a refusal. Messages are fixed text: an `io::Error` may one day
/// carry the address, and the reason travels to the consumer and into logs.
pub(super) fn connect_refusal(e: &io::Error) -> FlowRefusal {
    use io::ErrorKind as K;
    let (kind, message) = match e.kind() {
        K::ConnectionRefused => (
            RefusalKind::ConnectionRefused,
            "the destination refused the connection",
        ),
        K::ConnectionReset | K::ConnectionAborted => (
            RefusalKind::ConnectionRefused,
            "the destination reset the connection",
        ),
        K::TimedOut => (
            RefusalKind::Timeout,
            "the destination did not answer in time",
        ),
        K::NetworkUnreachable => (
            RefusalKind::Unreachable,
            "the destination's network is unreachable from the exit",
        ),
        K::HostUnreachable => (
            RefusalKind::Unreachable,
            "the destination host is unreachable from the exit",
        ),
        K::AddrNotAvailable | K::NetworkDown => (
            RefusalKind::Unreachable,
            "the exit has no route to the destination",
        ),
        K::PermissionDenied => (
            RefusalKind::Policy,
            "the exit's host does not allow connections to this destination",
        ),
        _ => (
            RefusalKind::Unreachable,
            "the exit could not connect to the destination",
        ),
    };
    FlowRefusal::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::policy::ExitRules;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn exit(allow_loopback: bool) -> Exit {
        let allow = if allow_loopback {
            vec!["127.0.0.0/8".parse().unwrap()]
        } else {
            vec![]
        };
        let policy = ExitPolicy::new(&ExitRules::default(), allow, Exit::own_addresses()).unwrap();
        Exit::new(policy)
    }

    async fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    fn localhost(port: u16) -> Target {
        Target::new(Host::Domain("localhost".parse().unwrap()), port)
    }

    fn loopback(port: u16) -> Target {
        Target::new(Host::Ip("127.0.0.1".parse().unwrap()), port)
    }

    async fn round_trip(mut client: TcpStream, l: &TcpListener) {
        let (mut server, _) = l.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(client.nodelay().unwrap());
    }

    #[tokio::test]
    async fn connects_by_ip_and_by_name_when_allowed() {
        let (l, port) = listener().await;
        let exit = exit(true);
        let s = exit.connect_tcp(&loopback(port)).await.unwrap();
        round_trip(s, &l).await;
        let s = exit.connect_tcp(&localhost(port)).await.unwrap();
        assert!(s.peer_addr().unwrap().ip().is_loopback());
        round_trip(s, &l).await;
    }

    #[tokio::test]
    async fn loopback_refused_by_default() {
        let (_l, port) = listener().await;
        let exit = exit(false);
        let r = exit.connect_tcp(&loopback(port)).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::Policy);
        assert_eq!(r.message, "destination is a loopback address");
        let r = exit.connect_tcp(&localhost(port)).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::Policy);
        assert!(
            r.message
                .starts_with("the name resolves only to denied addresses (loopback"),
            "{}",
            r.message
        );
        assert!(!r.message.contains("localhost"));
        let mapped = Target::new(Host::Ip("::ffff:127.0.0.1".parse().unwrap()), port);
        let r = exit.connect_tcp(&mapped).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::Policy);
    }

    #[tokio::test]
    async fn smtp_refused_even_when_loopback_allowed() {
        let r = exit(true).connect_tcp(&localhost(25)).await.unwrap_err();
        assert_eq!(
            (r.kind, r.message.as_str()),
            (RefusalKind::Policy, "port 25 (SMTP) is denied by default")
        );
    }

    #[tokio::test]
    async fn closed_port_is_connection_refused() {
        let (l, port) = listener().await;
        drop(l);
        let exit = exit(true);
        let r = exit.connect_tcp(&loopback(port)).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::ConnectionRefused);
        let r = exit.connect_tcp(&localhost(port)).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn port_zero_is_a_bad_request() {
        let r = exit(true).connect_tcp(&loopback(0)).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::BadRequest);
    }

    #[tokio::test]
    async fn later_address_used_when_earlier_fail() {
        let (l, port) = listener().await;
        let (closed, closed_port) = listener().await;
        drop(closed);
        let exit = exit(true);
        let addrs = vec![
            SocketAddr::from(([127, 0, 0, 1], closed_port)),
            SocketAddr::from(([127, 0, 0, 1], port)),
        ];
        let s = exit.connect_any(addrs).await.unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
        round_trip(s, &l).await;
    }

    #[test]
    fn io_errors_map_to_refusal_kinds() {
        use io::ErrorKind as K;
        let cases = [
            (K::ConnectionRefused, RefusalKind::ConnectionRefused),
            (K::TimedOut, RefusalKind::Timeout),
            (K::NetworkUnreachable, RefusalKind::Unreachable),
            (K::HostUnreachable, RefusalKind::Unreachable),
            (K::PermissionDenied, RefusalKind::Policy),
            (K::Other, RefusalKind::Unreachable),
        ];
        for (io_kind, want) in cases {
            assert_eq!(connect_refusal(&io::Error::from(io_kind)).kind, want);
        }
    }

    #[test]
    fn refusal_for_names_lists_denied_kinds() {
        let policy = ExitPolicy::new(&ExitRules::default(), vec![], vec![]).unwrap();
        let exit = Exit::new(policy);
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let r = exit.allowed(None, &ips, 443).unwrap_err();
        assert_eq!(
            r.message,
            "the name resolves only to denied addresses (private network, loopback)"
        );
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let r = exit.allowed(None, &[public], 587).unwrap_err();
        assert_eq!(r.message, "port 587 (SMTP) is denied by default");
        let both = [ips[0], public];
        assert_eq!(
            exit.allowed(None, &both, 443).unwrap(),
            vec![SocketAddr::new(public, 443)]
        );
    }
}
