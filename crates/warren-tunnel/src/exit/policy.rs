//! The exit policy: which destinations a provider lets its consumers reach, and the caps on
//! sessions and flows. Pure: no I/O, so every decision is unit-testable.
//!
//! Decisions are made on the *resolved* address (and the name the consumer asked for, for
//! domain rules), after canonicalising IPv6 forms that embed an IPv4 address, so neither DNS
//! rebinding nor `::ffff:127.0.0.1` reaches the provider's own network.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use warren_types::{DomainName, FlowRefusal, RefusalKind};

/// Concurrent sessions a provider carries unless `[exit] max_sessions` says otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 32;
/// Concurrent flows in one session unless `[exit] max_flows_per_session` says otherwise.
pub const DEFAULT_MAX_FLOWS_PER_SESSION: usize = 256;
/// Ports denied by default: SMTP submission and relay, so an exit is not a spam cannon.
pub const SMTP_PORTS: [u16; 3] = [25, 465, 587];

/// The raw `[exit]` table of the node's config file, as written by the operator.
///
/// Turn it into an [`ExitPolicy`] with [`ExitPolicy::new`] and into [`ExitCaps`] with
/// [`ExitCaps::from_rules`]; both validate and name the offending rule and field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRules {
    /// Concurrent sessions (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Concurrent flows in one session (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flows_per_session: Option<u32>,
    /// Payload bytes (both directions) one session may carry; 0 or absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_session: Option<u64>,
    /// `[[exit.rule]]` entries, tried in order before the defaults; the first match wins.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RawRule>,
}

/// One `[[exit.rule]]`, unvalidated. Every condition given must match for the rule to apply.
///
/// A matching `deny` refuses. A matching `allow` with a `cidr` allows, even addresses and
/// ports the defaults deny; a matching `allow` without a `cidr` lifts only the port defaults
/// (SMTP), because a name's addresses are up to whoever runs its DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub action: RuleAction,
    /// A network (`203.0.113.0/24`) or a single address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Matches the name the consumer asked for, label-aligned (`example.com` matches
    /// `www.example.com`, not `badexample.com`). Never matches a flow to a bare address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_suffix: Option<String>,
    /// Ports and ranges: `"25,465,8000-8100"` (a bare integer is accepted too).
    #[serde(
        default,
        deserialize_with = "ports_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ports: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

/// Accepts `ports = "25,465"` and the natural slip `ports = 25`.
fn ports_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of ports and ranges such as \"25,465,8000-8100\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

/// Limits on what a provider carries at once, with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExitCaps {
    pub max_sessions: usize,
    pub max_flows_per_session: usize,
    /// `None`: unlimited.
    pub max_bytes_per_session: Option<u64>,
}

impl Default for ExitCaps {
    fn default() -> Self {
        ExitCaps {
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_flows_per_session: DEFAULT_MAX_FLOWS_PER_SESSION,
            max_bytes_per_session: None,
        }
    }
}

impl ExitCaps {
    pub fn from_rules(raw: &ExitRules) -> Result<Self, ExitConfigError> {
        let positive = |v: Option<u32>, field: &'static str, default: usize| match v {
            None => Ok(default),
            Some(0) => Err(ExitConfigError::ZeroCap { field }),
            Some(n) => Ok(n as usize),
        };
        Ok(ExitCaps {
            max_sessions: positive(raw.max_sessions, "max_sessions", DEFAULT_MAX_SESSIONS)?,
            max_flows_per_session: positive(
                raw.max_flows_per_session,
                "max_flows_per_session",
                DEFAULT_MAX_FLOWS_PER_SESSION,
            )?,
            max_bytes_per_session: raw.max_bytes_per_session.filter(|&n| n > 0),
        })
    }
}

/// What is wrong with the `[exit]` table. Rule numbers count from 1 in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitConfigError {
    #[error("[exit] {field} must be at least 1 (leave it out for the default)")]
    ZeroCap { field: &'static str },
    #[error(
        "[[exit.rule]] number {rule}: give at least one of cidr, domain_suffix or ports \
         (a rule without conditions would match everything)"
    )]
    EmptyRule { rule: usize },
    #[error(
        "[[exit.rule]] number {rule}: cidr {value:?} is not an address or network \
         such as \"203.0.113.0/24\" or \"2001:db8::/32\""
    )]
    BadCidr { rule: usize, value: String },
    #[error(
        "[[exit.rule]] number {rule}: domain_suffix {value:?} is not a domain name \
         such as \"example.com\""
    )]
    BadDomainSuffix { rule: usize, value: String },
    #[error("[[exit.rule]] number {rule}: ports {value:?}: {reason}")]
    BadPorts {
        rule: usize,
        value: String,
        reason: &'static str,
    },
}

/// Why the policy refuses a destination. `Display` gives the reason a consumer sees; it
/// never contains the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denial {
    /// A `[[exit.rule]]` with `action = "deny"` matched (numbered from 1).
    Rule(usize),
    Loopback,
    /// RFC 1918.
    Private,
    /// Carrier-grade NAT, 100.64.0.0/10 (RFC 6598).
    SharedAddressSpace,
    LinkLocal,
    /// fec0::/10, deprecated but still routed locally by some stacks.
    SiteLocal,
    Multicast,
    /// 0.0.0.0/8 and `::`, which reach the local host on common systems.
    Unspecified,
    Broadcast,
    /// IPv6 fc00::/7.
    UniqueLocal,
    /// 64:ff9b:1::/48 (RFC 8215), a NAT64 prefix private to one network.
    LocalNat64,
    /// An address of the provider's own host.
    OwnHost,
    /// SMTP ports, denied by default.
    SmtpPort(u16),
}

impl Denial {
    /// A short label, used when a name resolves only to denied addresses.
    pub fn label(self) -> String {
        match self {
            Denial::Rule(n) => format!("exit rule {n}"),
            Denial::Loopback => "loopback".into(),
            Denial::Private => "private network".into(),
            Denial::SharedAddressSpace => "carrier-grade NAT".into(),
            Denial::LinkLocal => "link-local".into(),
            Denial::SiteLocal => "site-local".into(),
            Denial::Multicast => "multicast".into(),
            Denial::Unspecified => "unspecified".into(),
            Denial::Broadcast => "broadcast".into(),
            Denial::UniqueLocal => "unique local".into(),
            Denial::LocalNat64 => "local-use NAT64".into(),
            Denial::OwnHost => "the exit's own host".into(),
            Denial::SmtpPort(p) => format!("port {p}"),
        }
    }

    /// True when the reason is the kind of address, not a rule or the port.
    pub fn is_address_kind(self) -> bool {
        !matches!(self, Denial::Rule(_) | Denial::SmtpPort(_))
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Rule(n) => write!(f, "denied by exit rule {n}"),
            Denial::SmtpPort(p) => write!(f, "port {p} (SMTP) is denied by default"),
            Denial::OwnHost => f.write_str("destination is an address of the exit's own host"),
            Denial::Private => f.write_str("destination is a private (RFC 1918) address"),
            Denial::SharedAddressSpace => {
                f.write_str("destination is a carrier-grade NAT (RFC 6598) address")
            }
            Denial::Unspecified => f.write_str("destination is an unspecified address"),
            Denial::UniqueLocal => f.write_str("destination is a unique local IPv6 address"),
            Denial::LocalNat64 => f.write_str("destination is a local-use NAT64 address"),
            Denial::Broadcast => f.write_str("destination is the broadcast address"),
            other => write!(f, "destination is a {} address", other.label()),
        }
    }
}

impl From<Denial> for FlowRefusal {
    fn from(d: Denial) -> Self {
        FlowRefusal::new(RefusalKind::Policy, d.to_string())
    }
}

/// A set of ports as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    fn parse(s: &str) -> Result<Self, &'static str> {
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err("empty entry; write ports and ranges separated by commas");
            }
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (item, item),
            };
            let port = |p: &str| match p.parse::<u16>() {
                Ok(0) | Err(_) => Err("ports are numbers from 1 to 65535"),
                Ok(n) => Ok(n),
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err("a range must go from low to high, as in 8000-8100");
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }

    fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    action: RuleAction,
    cidr: Option<IpNet>,
    domain_suffix: Option<DomainName>,
    ports: Option<PortSet>,
}

impl Rule {
    fn from_raw(raw: &RawRule, number: usize) -> Result<Self, ExitConfigError> {
        if raw.cidr.is_none() && raw.domain_suffix.is_none() && raw.ports.is_none() {
            return Err(ExitConfigError::EmptyRule { rule: number });
        }
        let cidr = raw
            .cidr
            .as_deref()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| ExitConfigError::BadCidr {
                        rule: number,
                        value: s.to_owned(),
                    })
            })
            .transpose()?;
        let domain_suffix = raw
            .domain_suffix
            .as_deref()
            .map(|s| {
                // "*.example.com" and ".example.com" are common ways to write the same suffix.
                let bare = s.trim();
                let bare = bare.strip_prefix("*.").unwrap_or(bare);
                let bare = bare.strip_prefix('.').unwrap_or(bare);
                bare.parse::<DomainName>()
                    .map_err(|_| ExitConfigError::BadDomainSuffix {
                        rule: number,
                        value: s.to_owned(),
                    })
            })
            .transpose()?;
        let ports = raw
            .ports
            .as_deref()
            .map(|s| {
                PortSet::parse(s).map_err(|reason| ExitConfigError::BadPorts {
                    rule: number,
                    value: s.to_owned(),
                    reason,
                })
            })
            .transpose()?;
        Ok(Rule {
            action: raw.action,
            cidr,
            domain_suffix,
            ports,
        })
    }

    fn matches(
        &self,
        requested: Option<&DomainName>,
        raw: IpAddr,
        canon: IpAddr,
        port: u16,
    ) -> bool {
        if let Some(net) = &self.cidr {
            // Allow rules see only the canonical address, so `allow ::/0` cannot let
            // `::ffff:127.0.0.1` through; deny rules match either spelling.
            let hit =
                net.contains(&canon) || (self.action == RuleAction::Deny && net.contains(&raw));
            if !hit {
                return false;
            }
        }
        if let Some(suffix) = &self.domain_suffix
            && !requested.is_some_and(|name| name.has_suffix(suffix))
        {
            return false;
        }
        self.ports.as_ref().is_none_or(|p| p.contains(port))
    }
}

/// The validated exit policy. Cheap to query, immutable once built.
#[derive(Clone, Debug)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
    exit_allow: Vec<IpNet>,
    own: HashSet<IpAddr>,
}

impl ExitPolicy {
    /// Builds the policy from the operator's rules, the `--exit-allow` networks (which widen
    /// the default deny list for addresses, never for SMTP ports) and the addresses of this
    /// host (from [`crate::exit::Exit::own_addresses`], plus any public address the node
    /// learned, since a NAT's outside address is not on any interface).
    pub fn new(
        rules: &ExitRules,
        exit_allow: Vec<IpNet>,
        own_addresses: Vec<IpAddr>,
    ) -> Result<Self, ExitConfigError> {
        let rules = rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, raw)| Rule::from_raw(raw, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExitPolicy {
            rules,
            exit_allow: exit_allow.into_iter().map(|n| n.trunc()).collect(),
            own: own_addresses.into_iter().map(canonical).collect(),
        })
    }

    /// Decides one destination: `requested` is the name the consumer asked for (if any),
    /// `resolved` the address the exit will contact.
    pub fn check(
        &self,
        requested: Option<&DomainName>,
        resolved: IpAddr,
        port: u16,
    ) -> Result<(), FlowRefusal> {
        self.evaluate(requested, resolved, port)
            .map_err(FlowRefusal::from)
    }

    /// Like [`check`](Self::check), with the reason as a [`Denial`].
    pub fn evaluate(
        &self,
        requested: Option<&DomainName>,
        resolved: IpAddr,
        port: u16,
    ) -> Result<(), Denial> {
        let canon = canonical(resolved);
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(requested, resolved, canon, port) {
                return match rule.action {
                    RuleAction::Deny => Err(Denial::Rule(i + 1)),
                    RuleAction::Allow if rule.cidr.is_some() => Ok(()),
                    // Without a cidr an allow rule lifts the port defaults only: the addresses
                    // a name resolves to are chosen by whoever runs its DNS, and pointing
                    // `x.allowed.example` at 127.0.0.1 must not open the provider's host.
                    RuleAction::Allow => self.address_denial(canon).map_or(Ok(()), Err),
                };
            }
        }
        if let Some(denial) = self.address_denial(canon) {
            return Err(denial);
        }
        if SMTP_PORTS.contains(&port) {
            return Err(Denial::SmtpPort(port));
        }
        Ok(())
    }
}

impl ExitPolicy {
    /// The default deny list for addresses, minus what `--exit-allow` widens.
    fn address_denial(&self, canon: IpAddr) -> Option<Denial> {
        if self.exit_allow.iter().any(|net| net.contains(&canon)) {
            return None;
        }
        default_denial(canon).or_else(|| self.own.contains(&canon).then_some(Denial::OwnHost))
    }
}

/// The address a packet to `ip` really reaches when `ip` embeds an IPv4 address: mapped
/// (`::ffff:a.b.c.d`), translated (`::ffff:0:a.b.c.d`), compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`). Anything else is returned as is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        // `::` and `::1` are IPv6's own unspecified and loopback, not compatible addresses.
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// The default deny list (SPEC §4), on a canonical address.
fn default_denial(ip: IpAddr) -> Option<Denial> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, _, _] = v4.octets();
            match (a, b) {
                _ if v4 == Ipv4Addr::BROADCAST => Some(Denial::Broadcast),
                (0, _) => Some(Denial::Unspecified),
                (127, _) => Some(Denial::Loopback),
                (10, _) | (192, 168) => Some(Denial::Private),
                (172, b) if (16..32).contains(&b) => Some(Denial::Private),
                (100, b) if (64..128).contains(&b) => Some(Denial::SharedAddressSpace),
                (169, 254) => Some(Denial::LinkLocal),
                (224..=239, _) => Some(Denial::Multicast),
                _ => None,
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some(Denial::Unspecified)
            } else if v6.is_loopback() {
                Some(Denial::Loopback)
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some(Denial::LinkLocal)
            } else if s[0] & 0xffc0 == 0xfec0 {
                Some(Denial::SiteLocal)
            } else if s[0] & 0xff00 == 0xff00 {
                Some(Denial::Multicast)
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some(Denial::UniqueLocal)
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                Some(Denial::LocalNat64)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> DomainName {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn default_policy() -> ExitPolicy {
        ExitPolicy::new(&ExitRules::default(), vec![], vec![]).unwrap()
    }

    fn rule(
        action: RuleAction,
        cidr: Option<&str>,
        suffix: Option<&str>,
        ports: Option<&str>,
    ) -> RawRule {
        RawRule {
            action,
            cidr: cidr.map(Into::into),
            domain_suffix: suffix.map(Into::into),
            ports: ports.map(Into::into),
        }
    }

    fn with_rules(rules: Vec<RawRule>) -> ExitPolicy {
        let raw = ExitRules {
            rules,
            ..ExitRules::default()
        };
        ExitPolicy::new(&raw, vec![], vec![]).unwrap()
    }

    const PUBLIC_V4: &str = "93.184.216.34";
    const PUBLIC_V6: &str = "2606:2800:220:1:248:1893:25c8:1946";

    #[test]
    fn default_denies_each_range() {
        let p = default_policy();
        let cases = [
            ("127.0.0.1", Denial::Loopback),
            ("127.255.255.254", Denial::Loopback),
            ("::1", Denial::Loopback),
            ("10.0.0.1", Denial::Private),
            ("10.255.255.255", Denial::Private),
            ("172.16.0.1", Denial::Private),
            ("172.31.255.255", Denial::Private),
            ("192.168.1.1", Denial::Private),
            ("100.64.0.1", Denial::SharedAddressSpace),
            ("100.127.255.255", Denial::SharedAddressSpace),
            ("169.254.169.254", Denial::LinkLocal),
            ("fe80::1", Denial::LinkLocal),
            ("febf::1", Denial::LinkLocal),
            ("fec0::1", Denial::SiteLocal),
            ("224.0.0.1", Denial::Multicast),
            ("239.255.255.250", Denial::Multicast),
            ("ff02::1", Denial::Multicast),
            ("ff0e::1", Denial::Multicast),
            ("0.0.0.0", Denial::Unspecified),
            ("0.1.2.3", Denial::Unspecified),
            ("::", Denial::Unspecified),
            ("255.255.255.255", Denial::Broadcast),
            ("fc00::1", Denial::UniqueLocal),
            ("fd12:3456:789a::1", Denial::UniqueLocal),
            ("64:ff9b:1::a00:1", Denial::LocalNat64),
        ];
        for (addr, want) in cases {
            assert_eq!(p.evaluate(None, ip(addr), 443), Err(want), "{addr}");
            let refusal = p.check(None, ip(addr), 443).unwrap_err();
            assert_eq!(refusal.kind, RefusalKind::Policy);
        }
        for addr in [
            PUBLIC_V4,
            PUBLIC_V6,
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "11.0.0.1",
            "223.255.255.255",
            "240.0.0.1",
        ] {
            assert_eq!(p.evaluate(None, ip(addr), 443), Ok(()), "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_as_ipv4() {
        let p = default_policy();
        let cases = [
            ("::ffff:127.0.0.1", Denial::Loopback),
            ("::ffff:10.1.2.3", Denial::Private),
            ("::ffff:0:192.168.0.1", Denial::Private),
            ("::127.0.0.1", Denial::Loopback),
            ("::169.254.169.254", Denial::LinkLocal),
            ("64:ff9b::127.0.0.1", Denial::Loopback),
            ("64:ff9b::10.0.0.1", Denial::Private),
            ("2002:7f00:1::", Denial::Loopback),
            ("2002:c0a8:101::1", Denial::Private),
            ("2002:a9fe:a9fe:1234::1", Denial::LinkLocal),
        ];
        for (addr, want) in cases {
            assert_eq!(p.evaluate(None, ip(addr), 443), Err(want), "{addr}");
        }
        assert_eq!(p.evaluate(None, ip("::ffff:93.184.216.34"), 443), Ok(()));
        assert_eq!(p.evaluate(None, ip("64:ff9b::93.184.216.34"), 443), Ok(()));
        assert_eq!(p.evaluate(None, ip("2002:5db8:d822::1"), 443), Ok(()));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::")), ip("::"));
    }

    #[test]
    fn smtp_ports_denied_by_default() {
        let p = default_policy();
        for port in SMTP_PORTS {
            let r = p.check(None, ip(PUBLIC_V4), port).unwrap_err();
            assert_eq!(r.kind, RefusalKind::Policy);
            assert_eq!(
                r.message,
                format!("port {port} (SMTP) is denied by default")
            );
        }
        assert!(p.check(None, ip(PUBLIC_V4), 26).is_ok());
        assert!(p.check(None, ip(PUBLIC_V6), 24).is_ok());
    }

    #[test]
    fn own_host_addresses_denied() {
        let own = vec![ip("198.51.100.7"), ip("2001:db8::7")];
        let p = ExitPolicy::new(&ExitRules::default(), vec![], own).unwrap();
        assert_eq!(
            p.evaluate(None, ip("198.51.100.7"), 80),
            Err(Denial::OwnHost)
        );
        assert_eq!(
            p.evaluate(None, ip("::ffff:198.51.100.7"), 80),
            Err(Denial::OwnHost)
        );
        assert_eq!(
            p.evaluate(None, ip("2001:db8::7"), 80),
            Err(Denial::OwnHost)
        );
        assert_eq!(p.evaluate(None, ip("198.51.100.8"), 80), Ok(()));
        let msg = p.check(None, ip("198.51.100.7"), 80).unwrap_err().message;
        assert_eq!(msg, "destination is an address of the exit's own host");
    }

    #[test]
    fn exit_allow_widens_addresses_not_smtp() {
        let p = ExitPolicy::new(
            &ExitRules::default(),
            vec![net("127.0.0.0/8")],
            vec![ip("127.0.0.1")],
        )
        .unwrap();
        assert_eq!(p.evaluate(None, ip("127.0.0.1"), 8080), Ok(()));
        assert_eq!(p.evaluate(None, ip("::ffff:127.0.0.1"), 8080), Ok(()));
        assert_eq!(
            p.evaluate(None, ip("127.0.0.1"), 25),
            Err(Denial::SmtpPort(25))
        );
        assert_eq!(p.evaluate(None, ip("::1"), 8080), Err(Denial::Loopback));
        assert_eq!(p.evaluate(None, ip("10.0.0.1"), 8080), Err(Denial::Private));
    }

    #[test]
    fn user_deny_rules() {
        let p = with_rules(vec![
            rule(RuleAction::Deny, Some("203.0.113.0/24"), None, None),
            rule(RuleAction::Deny, None, Some("example.com"), None),
            rule(RuleAction::Deny, None, None, Some("6881-6889, 1234")),
            rule(RuleAction::Deny, Some("2001:db8::/32"), None, Some("53")),
        ]);
        let public = ip(PUBLIC_V4);
        assert_eq!(
            p.evaluate(None, ip("203.0.113.9"), 443),
            Err(Denial::Rule(1))
        );
        assert_eq!(
            p.evaluate(None, ip("::ffff:203.0.113.9"), 443),
            Err(Denial::Rule(1))
        );
        assert_eq!(
            p.evaluate(Some(&name("example.com")), public, 443),
            Err(Denial::Rule(2))
        );
        assert_eq!(
            p.evaluate(Some(&name("www.example.com")), public, 443),
            Err(Denial::Rule(2))
        );
        assert_eq!(
            p.evaluate(Some(&name("badexample.com")), public, 443),
            Ok(())
        );
        assert_eq!(p.evaluate(None, public, 443), Ok(()));
        assert_eq!(p.evaluate(None, public, 6885), Err(Denial::Rule(3)));
        assert_eq!(p.evaluate(None, public, 1234), Err(Denial::Rule(3)));
        assert_eq!(p.evaluate(None, public, 6890), Ok(()));
        assert_eq!(
            p.evaluate(None, ip("2001:db8::1"), 53),
            Err(Denial::Rule(4))
        );
        assert_eq!(p.evaluate(None, ip("2001:db8::1"), 443), Ok(()));
        let r = p.check(None, ip("203.0.113.9"), 443).unwrap_err();
        assert_eq!(
            (r.kind, r.message.as_str()),
            (RefusalKind::Policy, "denied by exit rule 1")
        );
    }

    #[test]
    fn user_allow_rules_and_order() {
        let p = with_rules(vec![
            rule(RuleAction::Allow, Some("10.1.0.0/16"), None, Some("443")),
            rule(RuleAction::Deny, Some("10.0.0.0/8"), None, None),
            rule(
                RuleAction::Allow,
                None,
                Some("mail.example.org"),
                Some("587"),
            ),
            rule(RuleAction::Allow, Some("::/0"), None, None),
        ]);
        // The first matching rule wins, so the narrower allow beats the later deny.
        assert_eq!(p.evaluate(None, ip("10.1.2.3"), 443), Ok(()));
        assert_eq!(p.evaluate(None, ip("10.1.2.3"), 80), Err(Denial::Rule(2)));
        assert_eq!(p.evaluate(None, ip("10.2.0.1"), 443), Err(Denial::Rule(2)));
        let mail = name("mail.example.org");
        assert_eq!(p.evaluate(Some(&mail), ip(PUBLIC_V4), 587), Ok(()));
        assert_eq!(
            p.evaluate(Some(&mail), ip(PUBLIC_V4), 25),
            Err(Denial::SmtpPort(25))
        );
        // A name-only allow cannot open what the address defaults deny: the name's owner
        // picks its addresses.
        assert_eq!(
            p.evaluate(Some(&mail), ip("127.0.0.1"), 587),
            Err(Denial::Loopback)
        );
        // An allow rule on IPv6 does not open IPv4 reached through an embedding.
        assert_eq!(p.evaluate(None, ip("fd00::1"), 80), Ok(()));
        assert_eq!(
            p.evaluate(None, ip("::ffff:127.0.0.1"), 80),
            Err(Denial::Loopback)
        );
        assert_eq!(
            p.evaluate(None, ip("64:ff9b::c0a8:1"), 80),
            Err(Denial::Private)
        );
    }

    #[test]
    fn port_only_allow_lifts_smtp_but_not_addresses() {
        let p = ExitPolicy::new(
            &ExitRules {
                rules: vec![rule(RuleAction::Allow, None, None, Some("25"))],
                ..ExitRules::default()
            },
            vec![net("127.0.0.0/8")],
            vec![ip("198.51.100.7")],
        )
        .unwrap();
        assert_eq!(p.evaluate(None, ip(PUBLIC_V4), 25), Ok(()));
        assert_eq!(p.evaluate(None, ip("127.0.0.1"), 25), Ok(()));
        assert_eq!(p.evaluate(None, ip("10.0.0.1"), 25), Err(Denial::Private));
        assert_eq!(
            p.evaluate(None, ip("198.51.100.7"), 25),
            Err(Denial::OwnHost)
        );
        assert_eq!(
            p.evaluate(None, ip(PUBLIC_V4), 465),
            Err(Denial::SmtpPort(465))
        );
    }

    #[test]
    fn messages_never_name_the_destination() {
        let own = vec![ip("198.51.100.7")];
        let raw = ExitRules {
            rules: vec![
                rule(RuleAction::Deny, Some("203.0.113.0/24"), None, None),
                rule(RuleAction::Deny, None, Some("secret.example"), None),
            ],
            ..ExitRules::default()
        };
        let p = ExitPolicy::new(&raw, vec![], own).unwrap();
        let secret = name("www.secret.example");
        let cases: [(Option<&DomainName>, &str, u16); 7] = [
            (None, "203.0.113.77", 4431),
            (Some(&secret), "93.184.216.34", 4431),
            (None, "198.51.100.7", 4431),
            (None, "10.9.8.7", 4431),
            (None, "::ffff:10.9.8.7", 4431),
            (None, "fd00::abcd", 4431),
            (None, "93.184.216.34", 25),
        ];
        for (requested, addr, port) in cases {
            let msg = p.check(requested, ip(addr), port).unwrap_err().message;
            assert!(!msg.contains(addr), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
            assert!(!msg.contains(&port.to_string()) || port == 25, "{msg}");
            assert!(!msg.contains("203.0.113"), "{msg}");
        }
    }

    #[test]
    fn caps_defaults_and_validation() {
        assert_eq!(
            ExitCaps::from_rules(&ExitRules::default()),
            Ok(ExitCaps::default())
        );
        let raw = ExitRules {
            max_sessions: Some(4),
            max_flows_per_session: Some(16),
            max_bytes_per_session: Some(0),
            rules: vec![],
        };
        assert_eq!(
            ExitCaps::from_rules(&raw),
            Ok(ExitCaps {
                max_sessions: 4,
                max_flows_per_session: 16,
                max_bytes_per_session: None,
            })
        );
        let raw = ExitRules {
            max_bytes_per_session: Some(1 << 30),
            ..ExitRules::default()
        };
        assert_eq!(
            ExitCaps::from_rules(&raw).unwrap().max_bytes_per_session,
            Some(1 << 30)
        );
        let raw = ExitRules {
            max_sessions: Some(0),
            ..ExitRules::default()
        };
        let err = ExitCaps::from_rules(&raw).unwrap_err();
        assert_eq!(
            err,
            ExitConfigError::ZeroCap {
                field: "max_sessions"
            }
        );
        assert!(err.to_string().contains("max_sessions"));
    }

    #[test]
    fn rule_validation_names_rule_and_field() {
        let ok = rule(RuleAction::Allow, Some("192.0.2.1"), None, None);
        let build = |bad: RawRule| {
            let raw = ExitRules {
                rules: vec![ok.clone(), bad],
                ..ExitRules::default()
            };
            ExitPolicy::new(&raw, vec![], vec![]).unwrap_err()
        };
        let err = build(rule(RuleAction::Deny, None, None, None));
        assert_eq!(err, ExitConfigError::EmptyRule { rule: 2 });
        assert!(err.to_string().contains("number 2"), "{err}");

        let err = build(rule(RuleAction::Deny, Some("10.0.0.0/33"), None, None));
        assert!(
            matches!(err, ExitConfigError::BadCidr { rule: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("cidr"), "{err}");
        let err = build(rule(RuleAction::Deny, Some("example.com"), None, None));
        assert!(
            matches!(err, ExitConfigError::BadCidr { rule: 2, .. }),
            "{err:?}"
        );

        let err = build(rule(RuleAction::Deny, None, Some("exa mple.com"), None));
        assert!(matches!(
            err,
            ExitConfigError::BadDomainSuffix { rule: 2, .. }
        ));
        assert!(err.to_string().contains("domain_suffix"), "{err}");

        for bad in [
            "8100-8000",
            "0",
            "65536",
            "25,,465",
            "",
            "http",
            "1-2-3",
            "-5",
        ] {
            let err = build(rule(RuleAction::Deny, None, None, Some(bad)));
            assert!(
                matches!(err, ExitConfigError::BadPorts { rule: 2, .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("ports"), "{err}");
        }
    }

    #[test]
    fn rule_spellings_accepted() {
        let p = with_rules(vec![
            rule(RuleAction::Deny, Some("198.51.100.9"), None, None),
            rule(RuleAction::Deny, Some("203.0.113.77/24"), None, None),
            rule(RuleAction::Deny, None, Some("*.Example.COM."), None),
            rule(
                RuleAction::Deny,
                None,
                Some(".example.net"),
                Some(" 80 , 8000 - 8001 "),
            ),
        ]);
        assert_eq!(
            p.evaluate(None, ip("198.51.100.9"), 1),
            Err(Denial::Rule(1))
        );
        assert_eq!(p.evaluate(None, ip("198.51.100.10"), 1), Ok(()));
        assert_eq!(p.evaluate(None, ip("203.0.113.1"), 1), Err(Denial::Rule(2)));
        let www = name("www.example.com");
        assert_eq!(
            p.evaluate(Some(&www), ip(PUBLIC_V4), 1),
            Err(Denial::Rule(3))
        );
        let net_name = name("example.net");
        assert_eq!(
            p.evaluate(Some(&net_name), ip(PUBLIC_V4), 8001),
            Err(Denial::Rule(4))
        );
        assert_eq!(p.evaluate(Some(&net_name), ip(PUBLIC_V4), 443), Ok(()));
    }

    /// A tiny self-describing value, so the serde contract of [`ExitRules`] is tested without
    /// pulling a TOML parser into this crate.
    mod value {
        use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
        use serde::de::{Deserializer, IntoDeserializer, Visitor};

        #[derive(Clone, Debug)]
        pub enum V {
            U(u64),
            I(i64),
            S(&'static str),
            Seq(Vec<V>),
            Map(Vec<(&'static str, V)>),
        }

        impl IntoDeserializer<'_, Error> for V {
            type Deserializer = V;
            fn into_deserializer(self) -> V {
                self
            }
        }

        impl<'de> Deserializer<'de> for V {
            type Error = Error;

            fn deserialize_any<W: Visitor<'de>>(self, v: W) -> Result<W::Value, Error> {
                match self {
                    V::U(n) => v.visit_u64(n),
                    V::I(n) => v.visit_i64(n),
                    V::S(s) => v.visit_str(s),
                    V::Seq(items) => {
                        let mut seq = SeqDeserializer::new(items.into_iter());
                        let out = v.visit_seq(&mut seq)?;
                        seq.end()?;
                        Ok(out)
                    }
                    V::Map(entries) => {
                        let mut map = MapDeserializer::new(entries.into_iter());
                        let out = v.visit_map(&mut map)?;
                        map.end()?;
                        Ok(out)
                    }
                }
            }

            fn deserialize_option<W: Visitor<'de>>(self, v: W) -> Result<W::Value, Error> {
                v.visit_some(self)
            }

            fn deserialize_enum<W: Visitor<'de>>(
                self,
                _name: &'static str,
                _variants: &'static [&'static str],
                v: W,
            ) -> Result<W::Value, Error> {
                match self {
                    V::S(s) => v.visit_enum(s.into_deserializer()),
                    other => other.deserialize_any(v),
                }
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf unit unit_struct newtype_struct seq tuple
                tuple_struct map struct identifier ignored_any
            }
        }
    }

    #[test]
    fn deserializes_the_documented_table() {
        use value::V;
        let table = V::Map(vec![
            ("max_sessions", V::U(8)),
            ("max_flows_per_session", V::U(64)),
            ("max_bytes_per_session", V::U(0)),
            (
                "rule",
                V::Seq(vec![
                    V::Map(vec![
                        ("action", V::S("deny")),
                        ("cidr", V::S("203.0.113.0/24")),
                        ("domain_suffix", V::S("example.com")),
                        ("ports", V::S("25,465,8000-8100")),
                    ]),
                    V::Map(vec![("action", V::S("allow")), ("ports", V::I(8080))]),
                ]),
            ),
        ]);
        let raw = ExitRules::deserialize(table).unwrap();
        assert_eq!(raw.max_sessions, Some(8));
        assert_eq!(raw.rules.len(), 2);
        assert_eq!(raw.rules[0].action, RuleAction::Deny);
        assert_eq!(raw.rules[0].ports.as_deref(), Some("25,465,8000-8100"));
        assert_eq!(raw.rules[1].ports.as_deref(), Some("8080"));
        assert_eq!(raw.rules[1].cidr, None);
        let policy = ExitPolicy::new(&raw, vec![], vec![]).unwrap();
        let name = name("a.example.com");
        assert_eq!(
            policy.evaluate(Some(&name), ip("203.0.113.5"), 8050),
            Err(Denial::Rule(1))
        );
        assert_eq!(
            ExitRules::deserialize(V::Map(vec![])).unwrap(),
            ExitRules::default()
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        use value::V;
        let err = ExitRules::deserialize(V::Map(vec![("max_session", V::U(8))])).unwrap_err();
        assert!(err.to_string().contains("max_session"), "{err}");
        let bad_rule = V::Map(vec![(
            "rule",
            V::Seq(vec![V::Map(vec![
                ("action", V::S("deny")),
                ("port", V::S("25")),
            ])]),
        )]);
        let err = ExitRules::deserialize(bad_rule).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        let bad_action = V::Map(vec![(
            "rule",
            V::Seq(vec![V::Map(vec![
                ("action", V::S("block")),
                ("ports", V::S("25")),
            ])]),
        )]);
        assert!(ExitRules::deserialize(bad_action).is_err());
        let no_action = V::Map(vec![(
            "rule",
            V::Seq(vec![V::Map(vec![("ports", V::S("25"))])]),
        )]);
        let err = ExitRules::deserialize(no_action).unwrap_err();
        assert!(err.to_string().contains("action"), "{err}");
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
            // Bias towards the embedding prefixes, where the interesting cases are.
            any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
            any::<u32>()
                .prop_map(|n| IpAddr::V6(Ipv6Addr::from((0x64_ff9b_u128 << 96) | n as u128))),
            any::<u64>().prop_map(|n| IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | n as u128))),
        ]
    }

    proptest! {
        #[test]
        fn check_never_panics_and_never_names_the_address(addr in any_ip(), port in any::<u16>()) {
            let p = ExitPolicy::new(
                &ExitRules {
                    rules: vec![
                        rule(RuleAction::Deny, Some("203.0.113.0/24"), None, Some("1-1000")),
                        rule(RuleAction::Allow, Some("::/0"), None, Some("443")),
                    ],
                    ..ExitRules::default()
                },
                vec![net("127.0.0.0/8")],
                vec![ip("198.51.100.7")],
            )
            .unwrap();
            if let Err(r) = p.check(None, addr, port) {
                prop_assert_eq!(r.kind, RefusalKind::Policy);
                prop_assert!(!r.message.contains(&addr.to_string()));
            }
            // Canonicalising twice changes nothing.
            prop_assert_eq!(canonical(canonical(addr)), canonical(addr));
        }
    }
}
