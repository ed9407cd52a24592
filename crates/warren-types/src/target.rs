//! Where a flow goes (`Target`), how it travels (`FlowProto`), why it may be refused
//! (`FlowRefusal`), and `Redacted<T>`, which keeps destinations out of logs.
//!
//! These are shared by the consumer's fronts (SOCKS5, HTTP), the wire messages of a session
//! and the provider's exit connector, so one vocabulary serves every front end.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// Longest domain name accepted (RFC 1035: 253 characters in text form).
pub const MAX_DOMAIN_LEN: usize = 253;

/// A validated, lower-cased DNS name without a trailing dot.
///
/// Resolution happens at the exit, never at the consumer, so the name travels as text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` is `suffix` or ends with `.suffix` (label-aligned).
    pub fn has_suffix(&self, suffix: &DomainName) -> bool {
        let (name, suffix) = (self.0.as_str(), suffix.0.as_str());
        name == suffix
            || (name.len() > suffix.len()
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
    }
}

impl FromStr for DomainName {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() || s.len() > MAX_DOMAIN_LEN {
            return Err(TargetError::DomainLength(s.len()));
        }
        for label in s.split('.') {
            let ok_chars = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if label.is_empty() || label.len() > 63 || !ok_chars {
                return Err(TargetError::DomainLabel);
            }
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(TargetError::DomainIsIp);
        }
        Ok(DomainName(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for DomainName {
    type Error = TargetError;
    fn try_from(s: String) -> Result<Self, TargetError> {
        s.parse()
    }
}

impl From<DomainName> for String {
    fn from(d: DomainName) -> String {
        d.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({})", self.0)
    }
}

/// The host part of a destination: an address, or a name the exit resolves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Host {
    Ip(IpAddr),
    Domain(DomainName),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Domain(d) => write!(f, "{d}"),
        }
    }
}

/// A destination: host and port. `Display` shows it in `host:port` form; log it only
/// through [`Redacted`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub fn new(host: Host, port: u16) -> Self {
        Target { host, port }
    }

    /// Parses `host:port`, `[v6]:port` or `v4:port` (an authority, as in HTTP CONNECT).
    pub fn parse_authority(s: &str) -> Result<Self, TargetError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, port) = rest.split_once("]:").ok_or(TargetError::MissingPort)?;
            let ip: Ipv6Addr = v6.parse().map_err(|_| TargetError::BadIpv6)?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(TargetError::MissingPort)?;
            let host = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) => Host::Domain(host.parse()?),
            };
            (host, port)
        };
        let port: u16 = port.parse().map_err(|_| TargetError::BadPort)?;
        if port == 0 {
            return Err(TargetError::BadPort);
        }
        Ok(Target { host, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("domain name must be 1 to {MAX_DOMAIN_LEN} characters, got {0}")]
    DomainLength(usize),
    #[error("domain name labels must be 1 to 63 letters, digits, '-' or '_'")]
    DomainLabel,
    #[error("an IP address is not a domain name")]
    DomainIsIp,
    #[error("destination needs a port (host:port)")]
    MissingPort,
    #[error("port must be a number from 1 to 65535")]
    BadPort,
    #[error("bad IPv6 address in brackets")]
    BadIpv6,
}

/// Transport of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowProto {
    /// A byte stream to one TCP destination.
    Tcp,
    /// Datagrams, each framed with its destination (a SOCKS5 UDP association).
    Udp,
}

/// Why a flow (or a session) could not be carried. Travels on the wire; each front maps it to
/// its own error (SOCKS5 reply code, HTTP status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The consumer has no open session.
    NotConnected,
    /// The provider's exit policy refuses the destination.
    Policy,
    /// The provider's caps (flows per session, bytes per session) are reached.
    Cap,
    /// The provider does not know the session the flow names.
    NoSession,
    /// The destination name did not resolve.
    DnsFailed,
    /// The destination refused the connection.
    ConnectionRefused,
    /// No route to the destination's network or host.
    Unreachable,
    /// The destination did not answer in time.
    Timeout,
    /// The request itself was malformed.
    BadRequest,
    /// Something failed inside Warren.
    Internal,
}

impl RefusalKind {
    /// The SOCKS5 reply code (RFC 1928 §6) for this refusal.
    pub fn socks_reply(self) -> u8 {
        match self {
            RefusalKind::NotConnected
            | RefusalKind::NoSession
            | RefusalKind::Internal
            | RefusalKind::BadRequest => 0x01,
            RefusalKind::Policy | RefusalKind::Cap => 0x02,
            RefusalKind::Unreachable => 0x03,
            RefusalKind::DnsFailed => 0x04,
            RefusalKind::ConnectionRefused => 0x05,
            RefusalKind::Timeout => 0x06,
        }
    }

    /// The HTTP status an HTTP proxy answers with.
    pub fn http_status(self) -> u16 {
        match self {
            RefusalKind::NotConnected | RefusalKind::NoSession => 503,
            RefusalKind::Policy | RefusalKind::Cap => 403,
            RefusalKind::BadRequest => 400,
            RefusalKind::Timeout => 504,
            RefusalKind::Internal => 500,
            RefusalKind::DnsFailed | RefusalKind::ConnectionRefused | RefusalKind::Unreachable => {
                502
            }
        }
    }
}

/// A refusal with a human reason. The reason never contains the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct FlowRefusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl FlowRefusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        FlowRefusal {
            kind,
            message: message.into(),
        }
    }
}

static REDACT: AtomicBool = AtomicBool::new(true);

/// Turns redaction off (for debugging on one's own machine) or back on. On by default.
pub fn set_redaction(enabled: bool) {
    REDACT.store(enabled, Ordering::Relaxed);
}

/// Whether [`Redacted`] hides its content (the default).
pub fn redaction_enabled() -> bool {
    REDACT.load(Ordering::Relaxed)
}

/// Wraps a destination, client address or payment id for logging: `Display` and `Debug`
/// print `[redacted]` unless redaction was switched off with [`set_redaction`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Redacted<T>(pub T);

impl<T> Redacted<T> {
    pub fn new(inner: T) -> Self {
        Redacted(inner)
    }
}

impl<T: fmt::Display> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if redaction_enabled() {
            f.write_str("[redacted]")
        } else {
            self.0.fmt(f)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if redaction_enabled() {
            f.write_str("[redacted]")
        } else {
            self.0.fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        let t = Target::parse_authority("Example.COM:443").unwrap();
        assert_eq!(t.host, Host::Domain("example.com".parse().unwrap()));
        assert_eq!(t.port, 443);
        let t = Target::parse_authority("[::1]:8080").unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.to_string(), "[::1]:8080");
        let t = Target::parse_authority("10.1.2.3:80").unwrap();
        assert_eq!(t.to_string(), "10.1.2.3:80");
        assert_eq!(
            Target::parse_authority("example.com"),
            Err(TargetError::MissingPort)
        );
        assert_eq!(
            Target::parse_authority("example.com:0"),
            Err(TargetError::BadPort)
        );
        assert_eq!(
            Target::parse_authority("exa mple.com:80"),
            Err(TargetError::DomainLabel)
        );
        assert!(Target::parse_authority("[::1:80").is_err());
    }

    #[test]
    fn domain_rules() {
        assert!("a..b".parse::<DomainName>().is_err());
        assert!("".parse::<DomainName>().is_err());
        assert!("x".repeat(64).parse::<DomainName>().is_err());
        assert!("1.2.3.4".parse::<DomainName>().is_err());
        let d: DomainName = "www.Example.com.".parse().unwrap();
        assert_eq!(d.as_str(), "www.example.com");
        let s: DomainName = "example.com".parse().unwrap();
        let other: DomainName = "badexample.com".parse().unwrap();
        assert!(d.has_suffix(&s));
        assert!(s.has_suffix(&s));
        assert!(!other.has_suffix(&s));
    }

    #[test]
    fn redacted_hides_by_default() {
        let t = Target::parse_authority("secret.example:443").unwrap();
        assert_eq!(format!("{}", Redacted(&t)), "[redacted]");
        assert_eq!(format!("{:?}", Redacted(&t)), "[redacted]");
    }
}
