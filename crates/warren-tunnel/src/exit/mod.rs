//! Provider-side exit: the policy that decides which destinations a flow may reach, and the
//! connector that resolves, checks and connects.

mod connector;
mod policy;
mod udp_relay;

pub use connector::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESOLVE_TIMEOUT, Exit, MAX_ADDRESSES};
pub use policy::{
    DEFAULT_MAX_FLOWS_PER_SESSION, DEFAULT_MAX_SESSIONS, Denial, ExitCaps, ExitConfigError,
    ExitPolicy, ExitRules, RawRule, RuleAction, SMTP_PORTS, canonical,
};
pub use udp_relay::{MAX_UDP_DESTINATIONS, UDP_IDLE_TIMEOUT, relay_udp};
