//! The messages a session and its flows exchange, and their framing: every message on a
//! stream is `len: u16 big-endian` followed by a postcard body of at most a fixed size.
//!
//! Nothing here does I/O: [`encode`] makes a frame, [`decode`] reads a body, and
//! [`FrameReader`] cuts bodies out of whatever chunks a stream delivers, buffering at most
//! one incomplete frame.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use warren_types::{Amount, FlowProto, FlowRefusal, NodeId, Price, Target};

/// Protocol of the session's control stream: one long-lived stream per session, opened by
/// the consumer, carrying [`ControlMsg`]s both ways.
pub const CONTROL_PROTOCOL: &str = "/warren/session/1";
/// Protocol of a flow stream: one stream per flow, opened by the consumer, starting with a
/// [`FlowHeader`] answered by a [`FlowReply`], then raw payload.
pub const FLOW_PROTOCOL: &str = "/warren/flow/1";
/// Largest [`ControlMsg`] body.
pub const MAX_CONTROL_MSG: usize = 4096;
/// Largest [`FlowHeader`] or [`FlowReply`] body.
pub const MAX_FLOW_HEADER: usize = 1024;
/// Longest refusal message a [`FlowReply`] carries, in bytes; longer ones are cut on a
/// character boundary, so a chatty exit cannot push a reply over [`MAX_FLOW_HEADER`].
pub const MAX_REFUSAL_MESSAGE: usize = 256;
/// Largest payment record an [`Invoice`](ControlMsg::Invoice) or
/// [`Promise`](ControlMsg::Promise) carries, in bytes. A signed record of `warren-pay` is well
/// under it (about 600 bytes at most); a longer one is refused both when encoded and when
/// decoded, so the whole message stays far inside [`MAX_CONTROL_MSG`].
pub const MAX_RECORD: usize = 1024;

/// Bytes of the length prefix in front of every body.
const PREFIX: usize = 2;

/// What was wrong with bytes read from (or about to go onto) a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{count} trailing bytes after a {what}")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("could not encode a {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
}

/// The last path segment of `T`'s name, without generics, for error messages.
fn short_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The most a body can be under `max`: the u16 prefix cannot say more than 65535.
fn body_limit(max: usize) -> usize {
    max.min(usize::from(u16::MAX))
}

/// Encodes `msg` as one frame (length prefix included), refusing a body over `max` bytes.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, WireError> {
    // Serialising after a two-byte placeholder avoids a second copy for the prefix.
    let frame = postcard::to_extend(msg, vec![0u8; PREFIX]).map_err(|e| WireError::Encode {
        what: short_name::<T>(),
        detail: e.to_string(),
    })?;
    let size = frame.len() - PREFIX;
    let limit = body_limit(max);
    if size > limit {
        return Err(WireError::TooLarge { size, max: limit });
    }
    let mut frame = frame;
    // `size <= u16::MAX` was checked just above.
    frame[..PREFIX].copy_from_slice(&(size as u16).to_be_bytes());
    Ok(frame)
}

/// Decodes one body (without its prefix), refusing one over `max` bytes or with bytes left
/// over: a message has exactly one encoding.
pub fn decode<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, WireError> {
    let limit = body_limit(max);
    if body.len() > limit {
        return Err(WireError::TooLarge {
            size: body.len(),
            max: limit,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Malformed {
        what: short_name::<T>(),
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            what: short_name::<T>(),
            count: rest.len(),
        });
    }
    Ok(msg)
}

/// Cuts frames out of a byte stream without doing I/O.
///
/// [`push`](Self::push) takes every byte it is given and cuts complete frames out at once;
/// only the frame still incomplete is buffered, and that buffer never holds more than
/// `max + 2` bytes, whatever length the peer declares. Complete frames wait for
/// [`next_frame`](Self::next_frame): a driver that takes them all after each push never holds
/// more than one read's worth of them.
///
/// ```
/// use warren_session::wire::{self, ControlMsg, FrameReader, MAX_CONTROL_MSG};
///
/// let mut reader = FrameReader::new(MAX_CONTROL_MSG);
/// // Whatever chunks the stream delivers: here two messages in one read.
/// let mut read = wire::encode(&ControlMsg::Keepalive, MAX_CONTROL_MSG)?;
/// read.extend(wire::encode(&ControlMsg::Keepalive, MAX_CONTROL_MSG)?);
/// reader.push(&read);
/// while let Some(body) = reader.next_frame()? {
///     let msg: ControlMsg = wire::decode(&body, MAX_CONTROL_MSG)?;
///     assert_eq!(msg, ControlMsg::Keepalive);
/// }
/// reader.finish()?; // at end of stream: nothing cut off mid-frame
/// # Ok::<(), wire::WireError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrameReader {
    /// The frame being received, prefix included; at most `max + PREFIX` bytes.
    partial: Vec<u8>,
    /// Complete bodies not yet taken.
    ready: VecDeque<Vec<u8>>,
    max: usize,
    /// Once a frame is refused the stream is out of step: later bytes are dropped and every
    /// later call says so again.
    failed: Option<WireError>,
}

impl FrameReader {
    /// A reader for bodies of at most `max` bytes (and never more than 65535, which is all
    /// the prefix can say).
    pub fn new(max: usize) -> Self {
        FrameReader {
            partial: Vec::new(),
            ready: VecDeque::new(),
            max: body_limit(max),
            failed: None,
        }
    }

    /// Takes bytes as they came off the stream. Frames they complete become available from
    /// [`next_frame`](Self::next_frame); a declared length over the limit makes the reader
    /// fail (frames completed before it are still handed out first).
    pub fn push(&mut self, mut bytes: &[u8]) {
        while self.failed.is_none() {
            if self.partial.len() < PREFIX {
                let n = (PREFIX - self.partial.len()).min(bytes.len());
                self.partial.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.partial.len() < PREFIX {
                    return;
                }
                let len = self.declared();
                if len > self.max {
                    self.failed = Some(WireError::TooLarge {
                        size: len,
                        max: self.max,
                    });
                    self.partial = Vec::new();
                    return;
                }
                // Reserve once, bounded by the limit just checked.
                self.partial.reserve_exact(len);
            }
            let need = PREFIX + self.declared() - self.partial.len();
            let n = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if n < need {
                return;
            }
            // The buffer becomes the body: one allocation per frame, no second copy.
            let mut body = std::mem::take(&mut self.partial);
            body.drain(..PREFIX);
            self.ready.push_back(body);
        }
    }

    /// The body length the buffered prefix declares.
    fn declared(&self) -> usize {
        usize::from(u16::from_be_bytes([self.partial[0], self.partial[1]]))
    }

    /// The next complete body, `Ok(None)` when more bytes are needed, or an error once the
    /// peer declared a body over the limit (the stream cannot be resynchronised after that).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if let Some(body) = self.ready.pop_front() {
            return Ok(Some(body));
        }
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Bytes held of the frame still incomplete (never more than `max + 2`).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Call at end of stream: an error if it ended inside a frame or after a refused one.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.partial.len() {
            0 => Ok(()),
            buffered => Err(WireError::Truncated { buffered }),
        }
    }
}

/// A session's id, chosen at random by the consumer (the caller supplies it; this crate has
/// no randomness). `Display` and `Debug` show the first 8 hex digits, enough to tell sessions
/// apart in logs; [`to_hex`](Self::to_hex) and `FromStr` use all 32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// All 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..4]))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session id is 32 hex digits, got {0:?}")]
pub struct SessionIdError(String);

impl FromStr for SessionId {
    type Err = SessionIdError;

    fn from_str(s: &str) -> Result<Self, SessionIdError> {
        let err = || SessionIdError(s.chars().take(64).collect());
        let digits = s.as_bytes();
        if digits.len() != 32 {
            return Err(err());
        }
        let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (nibble(pair[0]), nibble(pair[1]));
            *byte = (hi.ok_or_else(err)? << 4) | lo.ok_or_else(err)?;
        }
        Ok(SessionId(id))
    }
}

/// How a consumer pays for a session: its escrow channel at a hub. The provider bills the
/// session against that channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PayTerms {
    /// The hub holding the consumer's escrow.
    pub hub: NodeId,
    /// The consumer's escrow channel at that hub (`warren-pay`'s `ChannelId`).
    pub channel: [u8; 16],
}

/// A message on a session's control stream.
///
/// On the wire a message is its variant's index (a postcard varint, in declaration order)
/// followed by its fields, so variants are only ever added at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Consumer → provider, first on the stream: the offer (by sequence number) and the
    /// price the consumer agreed to, so the provider can refuse a stale price, and how the
    /// consumer pays (`None`: it does not).
    Open {
        session: SessionId,
        offer_seq: u64,
        price: Price,
        pay: Option<PayTerms>,
    },
    /// Provider → consumer: the session is open. `base` is what the provider already holds
    /// from the consumer's channel (cumulative over earlier sessions; zero when unpaid), the
    /// figure the consumer's promises build on.
    Accept { session: SessionId, base: Amount },
    /// Provider → consumer: the session will not open; the stream ends after it.
    Refuse {
        session: SessionId,
        reason: SessionRefusal,
    },
    /// Either way, when nothing else was sent for a while: proves the peer is alive.
    Keepalive,
    /// Either way: the last message of the session.
    Close { reason: CloseReason },
    /// Provider → consumer, only while open: a signed, cumulative invoice (opaque here, at
    /// most [`MAX_RECORD`] bytes). A later one supersedes an earlier one.
    Invoice {
        #[serde(with = "record")]
        record: Vec<u8>,
    },
    /// Consumer → provider, only while open: a signed, cumulative promise against the
    /// consumer's channel (opaque here, at most [`MAX_RECORD`] bytes). A later one
    /// supersedes an earlier one.
    Promise {
        #[serde(with = "record")]
        record: Vec<u8>,
    },
}

impl ControlMsg {
    /// The message's name, for errors and logs (it never includes the contents).
    pub fn name(&self) -> &'static str {
        match self {
            ControlMsg::Open { .. } => "Open",
            ControlMsg::Accept { .. } => "Accept",
            ControlMsg::Refuse { .. } => "Refuse",
            ControlMsg::Keepalive => "Keepalive",
            ControlMsg::Close { .. } => "Close",
            ControlMsg::Invoice { .. } => "Invoice",
            ControlMsg::Promise { .. } => "Promise",
        }
    }
}

/// A payment record's bytes, refused over [`MAX_RECORD`] both ways. On the wire it is what
/// postcard makes of any byte string: a varint length, then the bytes.
mod record {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer, ser};

    use super::MAX_RECORD;

    pub(super) fn serialize<S: Serializer>(record: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if record.len() > MAX_RECORD {
            return Err(ser::Error::custom(format_args!(
                "a payment record of {} bytes is over the {MAX_RECORD}-byte limit",
                record.len()
            )));
        }
        s.serialize_bytes(record)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(RecordVisitor)
    }

    struct RecordVisitor;

    impl RecordVisitor {
        fn check<E: de::Error>(len: usize) -> Result<(), E> {
            if len > MAX_RECORD {
                return Err(E::invalid_length(len, &RecordVisitor));
            }
            Ok(())
        }
    }

    impl<'de> Visitor<'de> for RecordVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a payment record of at most {MAX_RECORD} bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Self::check(v.len())?;
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Self::check(v.len())?;
            Ok(v)
        }

        // Formats that write bytes as a sequence (none that carries sessions today).
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_RECORD));
            while let Some(b) = seq.next_element::<u8>()? {
                Self::check(out.len() + 1)?;
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A reason code this version of Warren does not know: a newer peer sent it. Only decoding
/// makes one, so a known reason always has exactly one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnknownCode(u8);

impl UnknownCode {
    pub fn code(self) -> u8 {
        self.0
    }
}

/// Why a provider refused to open a session.
///
/// On the wire each reason is a one-byte code that never changes meaning; a code from a
/// newer peer decodes to [`Unknown`](Self::Unknown) instead of failing, so new reasons can
/// be added without breaking older nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRefusal {
    #[error("the provider is at capacity; try another provider or try again later")]
    AtCapacity,
    #[error(
        "the provider's price changed since the offer you chose; refresh the offers and connect again"
    )]
    PriceChanged,
    #[error("the provider's policy does not allow this session")]
    Policy,
    #[error("the provider refuses sessions from this node")]
    Banned,
    #[error("the provider is not selling bandwidth right now; choose another provider")]
    NotProviding,
    #[error(
        "the provider needs payment through a hub: top up with `warren wallet topup WRN` and connect again"
    )]
    NoEscrow,
    #[error(
        "the provider refused for a reason this version does not know (code {}); updating Warren may explain it",
        .0.code()
    )]
    Unknown(UnknownCode),
}

impl SessionRefusal {
    fn code(self) -> u8 {
        match self {
            SessionRefusal::AtCapacity => 0,
            SessionRefusal::PriceChanged => 1,
            SessionRefusal::Policy => 2,
            SessionRefusal::Banned => 3,
            SessionRefusal::NotProviding => 4,
            SessionRefusal::NoEscrow => 5,
            SessionRefusal::Unknown(c) => c.0,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => SessionRefusal::AtCapacity,
            1 => SessionRefusal::PriceChanged,
            2 => SessionRefusal::Policy,
            3 => SessionRefusal::Banned,
            4 => SessionRefusal::NotProviding,
            5 => SessionRefusal::NoEscrow,
            other => SessionRefusal::Unknown(UnknownCode(other)),
        }
    }
}

impl Serialize for SessionRefusal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for SessionRefusal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(SessionRefusal::from_code)
    }
}

/// Why a session ended.
///
/// Like [`SessionRefusal`], a one-byte code on the wire with an [`Unknown`](Self::Unknown)
/// fallback, so reasons added later still close an older peer's session cleanly instead of
/// reading as a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The consumer ended it (disconnect, switched provider).
    Consumer,
    /// The provider ended it (stopped selling, operator's choice).
    Provider,
    /// The peer stopped answering, or never answered the Open.
    Timeout,
    /// The node is shutting down.
    Shutdown,
    /// The peer broke the protocol (unexpected or malformed message, flood).
    ProtocolError,
    /// The provider's byte cap for the session was reached.
    ByteCap,
    /// The provider ended it: the consumer did not pay (no promise, or too little, in time).
    Unpaid,
    /// The consumer ended it: the provider billed more than the consumer measured.
    Overbilled,
    /// A reason from a newer peer.
    Unknown(UnknownCode),
}

impl CloseReason {
    fn code(self) -> u8 {
        match self {
            CloseReason::Consumer => 0,
            CloseReason::Provider => 1,
            CloseReason::Timeout => 2,
            CloseReason::Shutdown => 3,
            CloseReason::ProtocolError => 4,
            CloseReason::ByteCap => 5,
            CloseReason::Unpaid => 6,
            CloseReason::Overbilled => 7,
            CloseReason::Unknown(c) => c.0,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => CloseReason::Consumer,
            1 => CloseReason::Provider,
            2 => CloseReason::Timeout,
            3 => CloseReason::Shutdown,
            4 => CloseReason::ProtocolError,
            5 => CloseReason::ByteCap,
            6 => CloseReason::Unpaid,
            7 => CloseReason::Overbilled,
            other => CloseReason::Unknown(UnknownCode(other)),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Consumer => f.write_str("the consumer closed the session"),
            CloseReason::Provider => f.write_str("the provider closed the session"),
            CloseReason::Timeout => f.write_str("the peer stopped answering"),
            CloseReason::Shutdown => f.write_str("the node is shutting down"),
            CloseReason::ProtocolError => f.write_str("the session protocol was broken"),
            CloseReason::ByteCap => {
                f.write_str("the provider's byte limit for the session was reached")
            }
            CloseReason::Unpaid => f.write_str("the consumer did not pay for the traffic"),
            CloseReason::Overbilled => {
                f.write_str("the provider billed more than the consumer measured")
            }
            CloseReason::Unknown(c) => write!(
                f,
                "the session ended for a reason this version does not know (code {})",
                c.0
            ),
        }
    }
}

impl Serialize for CloseReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for CloseReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(CloseReason::from_code)
    }
}

/// First message on a flow stream, consumer → provider: which session pays for the flow,
/// where it goes and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowHeader {
    pub session: SessionId,
    pub target: Target,
    pub proto: FlowProto,
}

/// The provider's answer to a [`FlowHeader`]. After `Ok` the stream carries payload; after
/// `Refused` it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowReply {
    Ok,
    /// The message is cut to [`MAX_REFUSAL_MESSAGE`] bytes both when encoded and when decoded.
    Refused(
        #[serde(
            serialize_with = "serialize_refusal",
            deserialize_with = "deserialize_refusal"
        )]
        FlowRefusal,
    ),
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

fn serialize_refusal<S: Serializer>(r: &FlowRefusal, s: S) -> Result<S::Ok, S::Error> {
    if r.message.len() <= MAX_REFUSAL_MESSAGE {
        return r.serialize(s);
    }
    FlowRefusal::new(r.kind, truncated(&r.message, MAX_REFUSAL_MESSAGE)).serialize(s)
}

fn deserialize_refusal<'de, D: Deserializer<'de>>(d: D) -> Result<FlowRefusal, D::Error> {
    let mut r = FlowRefusal::deserialize(d)?;
    let keep = truncated(&r.message, MAX_REFUSAL_MESSAGE).len();
    r.message.truncate(keep);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;
    use warren_types::{Host, Identity, RefusalKind};

    fn session_id() -> impl Strategy<Value = SessionId> {
        any::<[u8; 16]>().prop_map(SessionId)
    }

    fn price() -> impl Strategy<Value = Price> {
        (any::<u64>(), any::<u64>()).prop_map(|(g, h)| Price {
            per_gib: Amount::from_nano(g),
            per_hour: Amount::from_nano(h),
        })
    }

    fn refusal() -> impl Strategy<Value = SessionRefusal> {
        any::<u8>().prop_map(SessionRefusal::from_code)
    }

    fn close_reason() -> impl Strategy<Value = CloseReason> {
        any::<u8>().prop_map(CloseReason::from_code)
    }

    fn pay_terms() -> impl Strategy<Value = PayTerms> {
        // Any secret makes a valid key: a node id decodes only if it is a curve point.
        (any::<[u8; 32]>(), any::<[u8; 16]>()).prop_map(|(secret, channel)| PayTerms {
            hub: Identity::from_secret(secret).node_id(),
            channel,
        })
    }

    fn record() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..=MAX_RECORD)
    }

    fn control_msg() -> impl Strategy<Value = ControlMsg> {
        prop_oneof![
            (
                session_id(),
                any::<u64>(),
                price(),
                prop::option::of(pay_terms())
            )
                .prop_map(|(session, offer_seq, price, pay)| ControlMsg::Open {
                    session,
                    offer_seq,
                    price,
                    pay,
                }),
            (session_id(), any::<u64>()).prop_map(|(session, base)| ControlMsg::Accept {
                session,
                base: Amount::from_nano(base)
            }),
            (session_id(), refusal())
                .prop_map(|(session, reason)| ControlMsg::Refuse { session, reason }),
            Just(ControlMsg::Keepalive),
            close_reason().prop_map(|reason| ControlMsg::Close { reason }),
            record().prop_map(|record| ControlMsg::Invoice { record }),
            record().prop_map(|record| ControlMsg::Promise { record }),
        ]
    }

    fn target() -> impl Strategy<Value = Target> {
        let domain = "[a-z0-9]{1,20}(\\.[a-z0-9-]{1,20}){0,4}\\.[a-z]{2,6}"
            .prop_filter_map("valid domain", |s| s.parse().ok())
            .prop_map(Host::Domain);
        let ip = any::<IpAddr>().prop_map(Host::Ip);
        (prop_oneof![domain, ip], 1..=u16::MAX).prop_map(|(host, port)| Target::new(host, port))
    }

    fn flow_header() -> impl Strategy<Value = FlowHeader> {
        (
            session_id(),
            target(),
            prop_oneof![Just(FlowProto::Tcp), Just(FlowProto::Udp)],
        )
            .prop_map(|(session, target, proto)| FlowHeader {
                session,
                target,
                proto,
            })
    }

    fn refusal_kind() -> impl Strategy<Value = RefusalKind> {
        prop::sample::select(vec![
            RefusalKind::NotConnected,
            RefusalKind::Policy,
            RefusalKind::Cap,
            RefusalKind::NoSession,
            RefusalKind::DnsFailed,
            RefusalKind::ConnectionRefused,
            RefusalKind::Unreachable,
            RefusalKind::Timeout,
            RefusalKind::BadRequest,
            RefusalKind::Internal,
        ])
    }

    fn flow_reply(max_message_chars: usize) -> impl Strategy<Value = FlowReply> {
        prop_oneof![
            Just(FlowReply::Ok),
            (
                refusal_kind(),
                prop::collection::vec(any::<char>(), 0..=max_message_chars)
            )
                .prop_map(|(kind, chars)| FlowReply::Refused(FlowRefusal::new(
                    kind,
                    chars.into_iter().collect::<String>()
                ))),
        ]
    }

    /// Encodes, strips the prefix after checking it, decodes.
    fn round_trip<T: Serialize + DeserializeOwned>(msg: &T, max: usize) -> T {
        let frame = encode(msg, max).expect("encodes");
        let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
        assert_eq!(len, frame.len() - 2, "prefix is the body length");
        decode(&frame[2..], max).expect("decodes")
    }

    proptest! {
        #[test]
        fn control_messages_round_trip(msg in control_msg()) {
            prop_assert_eq!(round_trip(&msg, MAX_CONTROL_MSG), msg);
        }

        #[test]
        fn decode_never_panics_on_mutated_control_messages(
            msg in control_msg(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut frame = encode(&msg, MAX_CONTROL_MSG).expect("encodes");
            let body = &mut frame[2..];
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] ^= byte;
            }
            if let Ok(back) = decode::<ControlMsg>(body, MAX_CONTROL_MSG) {
                // Whatever decodes is in bounds and re-encodes.
                if let ControlMsg::Invoice { record } | ControlMsg::Promise { record } = &back {
                    prop_assert!(record.len() <= MAX_RECORD);
                }
                prop_assert_eq!(round_trip(&back, MAX_CONTROL_MSG), back);
            }
        }

        #[test]
        fn flow_headers_round_trip(h in flow_header()) {
            prop_assert_eq!(round_trip(&h, MAX_FLOW_HEADER), h);
        }

        #[test]
        fn flow_replies_round_trip(r in flow_reply(64)) {
            // 64 chars are at most 256 bytes of UTF-8, so nothing is cut.
            prop_assert_eq!(round_trip(&r, MAX_FLOW_HEADER), r);
        }

        #[test]
        fn long_refusal_messages_are_cut_on_a_char_boundary(r in flow_reply(1000)) {
            let back: FlowReply = round_trip(&r, MAX_FLOW_HEADER);
            match (r, back) {
                (FlowReply::Ok, FlowReply::Ok) => {}
                (FlowReply::Refused(sent), FlowReply::Refused(got)) => {
                    prop_assert_eq!(got.kind, sent.kind);
                    prop_assert!(got.message.len() <= MAX_REFUSAL_MESSAGE);
                    prop_assert!(sent.message.starts_with(&got.message));
                    // Cut only as much as needed: one more char would not have fitted.
                    if got.message.len() < sent.message.len() {
                        let next = sent.message[got.message.len()..].chars().next();
                        let next_len = next.map_or(0, char::len_utf8);
                        prop_assert!(got.message.len() + next_len > MAX_REFUSAL_MESSAGE);
                    }
                }
                (sent, got) => prop_assert!(false, "{sent:?} came back as {got:?}"),
            }
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<ControlMsg>(&bytes, MAX_CONTROL_MSG);
            let _ = decode::<FlowHeader>(&bytes, MAX_FLOW_HEADER);
            let _ = decode::<FlowReply>(&bytes, MAX_FLOW_HEADER);
            let mut reader = FrameReader::new(MAX_FLOW_HEADER);
            reader.push(&bytes);
            prop_assert!(reader.buffered() <= MAX_FLOW_HEADER + 2);
            while let Ok(Some(_)) = reader.next_frame() {}
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            h in flow_header(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            // Random bytes rarely get past the first field; flipping bytes of a real
            // message reaches the inner decoders (addresses, domain names).
            let mut frame = encode(&h, MAX_FLOW_HEADER).expect("encodes");
            let body = &mut frame[2..];
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] ^= byte;
            }
            let _ = decode::<FlowHeader>(body, MAX_FLOW_HEADER);
            let _ = decode::<ControlMsg>(body, MAX_CONTROL_MSG);
            let _ = decode::<FlowReply>(body, MAX_FLOW_HEADER);
        }

        #[test]
        fn frame_reader_yields_the_same_frames_in_any_chunking(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=300), 0..12),
            chunk_sizes in prop::collection::vec(1usize..700, 1..50),
        ) {
            const MAX: usize = 300;
            let stream: Vec<u8> = bodies
                .iter()
                .flat_map(|b| {
                    let mut f = (b.len() as u16).to_be_bytes().to_vec();
                    f.extend_from_slice(b);
                    f
                })
                .collect();
            let mut reader = FrameReader::new(MAX);
            let mut got = Vec::new();
            let mut rest: &[u8] = &stream;
            let mut sizes = chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let size = (*sizes.next().expect("cycle")).min(rest.len());
                reader.push(&rest[..size]);
                prop_assert!(reader.buffered() <= MAX + 2);
                while let Some(body) = reader.next_frame().expect("frames are in bounds") {
                    got.push(body);
                }
                rest = &rest[size..];
            }
            prop_assert_eq!(reader.finish(), Ok(()));
            prop_assert_eq!(got, bodies);
        }
    }

    #[test]
    fn oversized_bodies_are_refused_both_ways() {
        let big = FlowReply::Refused(FlowRefusal::new(RefusalKind::Policy, "x".repeat(200)));
        assert!(matches!(
            encode(&big, 100),
            Err(WireError::TooLarge { max: 100, .. })
        ));
        let body = vec![0u8; MAX_CONTROL_MSG + 1];
        assert_eq!(
            decode::<ControlMsg>(&body, MAX_CONTROL_MSG),
            Err(WireError::TooLarge {
                size: MAX_CONTROL_MSG + 1,
                max: MAX_CONTROL_MSG
            })
        );
    }

    #[test]
    fn oversized_payment_records_are_refused_both_ways() {
        let at_limit = vec![0xab; MAX_RECORD];
        for msg in [
            ControlMsg::Invoice {
                record: at_limit.clone(),
            },
            ControlMsg::Promise {
                record: at_limit.clone(),
            },
        ] {
            let frame = encode(&msg, MAX_CONTROL_MSG).expect("a record at the limit encodes");
            assert_eq!(decode::<ControlMsg>(&frame[2..], MAX_CONTROL_MSG), Ok(msg));
        }
        let over = vec![0xab; MAX_RECORD + 1];
        for (tag, msg) in [
            (
                5u8,
                ControlMsg::Invoice {
                    record: over.clone(),
                },
            ),
            (
                6,
                ControlMsg::Promise {
                    record: over.clone(),
                },
            ),
        ] {
            let err = encode(&msg, MAX_CONTROL_MSG).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Encode {
                        what: "ControlMsg",
                        ..
                    }
                ),
                "{err}"
            );
            // Made by hand, as a peer would: the tag, the varint length (1025), the bytes.
            let mut body = vec![tag];
            body.extend_from_slice(&[0x81, 0x08]);
            body.extend_from_slice(&over);
            assert!(body.len() <= MAX_CONTROL_MSG);
            let err = decode::<ControlMsg>(&body, MAX_CONTROL_MSG).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Malformed {
                        what: "ControlMsg",
                        ..
                    }
                ),
                "{err}"
            );
            // A length far over the limit is refused before any bytes are read.
            let err = decode::<ControlMsg>(&[tag, 0xff, 0xff, 0x03], MAX_CONTROL_MSG);
            assert!(matches!(err, Err(WireError::Malformed { .. })), "{err:?}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&ControlMsg::Keepalive, MAX_CONTROL_MSG).unwrap();
        frame.push(0);
        assert_eq!(
            decode::<ControlMsg>(&frame[2..], MAX_CONTROL_MSG),
            Err(WireError::TrailingBytes {
                what: "ControlMsg",
                count: 1
            })
        );
    }

    #[test]
    fn unknown_message_types_are_malformed() {
        let err = decode::<ControlMsg>(&[200], MAX_CONTROL_MSG).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Malformed {
                    what: "ControlMsg",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn frame_reader_refuses_a_declared_length_over_the_limit_and_stays_refused() {
        let mut reader = FrameReader::new(16);
        // A good frame, then one that declares 17 bytes.
        reader.push(&[0, 1, 7, 0, 17, 1, 2, 3]);
        assert_eq!(reader.buffered(), 0, "nothing of the bad frame is kept");
        assert_eq!(reader.next_frame(), Ok(Some(vec![7])));
        let err = WireError::TooLarge { size: 17, max: 16 };
        assert_eq!(reader.next_frame(), Err(err.clone()));
        reader.push(&[0, 1, 9]);
        assert_eq!(reader.buffered(), 0);
        assert_eq!(reader.next_frame(), Err(err.clone()));
        assert_eq!(reader.finish(), Err(err));
    }

    #[test]
    fn frame_reader_buffers_only_the_incomplete_frame() {
        let mut reader = FrameReader::new(4);
        // Two whole frames, an empty one, and the first byte of a prefix.
        reader.push(&[0, 4, 1, 1, 1, 1, 0, 4, 2, 2, 2, 2, 0, 0, 0]);
        assert_eq!(reader.buffered(), 1);
        assert_eq!(reader.next_frame(), Ok(Some(vec![1, 1, 1, 1])));
        assert_eq!(reader.next_frame(), Ok(Some(vec![2, 2, 2, 2])));
        assert_eq!(reader.next_frame(), Ok(Some(vec![])));
        assert_eq!(reader.next_frame(), Ok(None));
        assert_eq!(reader.finish(), Err(WireError::Truncated { buffered: 1 }));
        reader.push(&[3, 5, 5]);
        assert_eq!(reader.buffered(), 4);
        assert_eq!(reader.next_frame(), Ok(None));
        reader.push(&[5]);
        assert_eq!(reader.next_frame(), Ok(Some(vec![5, 5, 5])));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn reasons_keep_their_codes_and_unknown_codes_survive() {
        // The codes are the wire format: a change here breaks compatibility.
        let refusals = [
            (SessionRefusal::AtCapacity, 0u8),
            (SessionRefusal::PriceChanged, 1),
            (SessionRefusal::Policy, 2),
            (SessionRefusal::Banned, 3),
            (SessionRefusal::NotProviding, 4),
            (SessionRefusal::NoEscrow, 5),
        ];
        for (r, code) in refusals {
            assert_eq!(postcard::to_stdvec(&r).unwrap(), vec![code]);
        }
        let closes = [
            (CloseReason::Consumer, 0u8),
            (CloseReason::Provider, 1),
            (CloseReason::Timeout, 2),
            (CloseReason::Shutdown, 3),
            (CloseReason::ProtocolError, 4),
            (CloseReason::ByteCap, 5),
            (CloseReason::Unpaid, 6),
            (CloseReason::Overbilled, 7),
        ];
        for (r, code) in closes {
            assert_eq!(postcard::to_stdvec(&r).unwrap(), vec![code]);
        }
        // So are the message tags, and the shape of the payment messages.
        let record = vec![1, 2, 3];
        let tags = [
            (
                ControlMsg::Close {
                    reason: CloseReason::Unpaid,
                },
                vec![4, 6],
            ),
            (
                ControlMsg::Invoice {
                    record: record.clone(),
                },
                vec![5, 3, 1, 2, 3],
            ),
            (ControlMsg::Promise { record }, vec![6, 3, 1, 2, 3]),
            (
                ControlMsg::Accept {
                    session: SessionId([9; 16]),
                    base: Amount::from_nano(300),
                },
                [&[1][..], &[9; 16], &[0xac, 0x02]].concat(),
            ),
        ];
        for (msg, body) in tags {
            assert_eq!(postcard::to_stdvec(&msg).unwrap(), body, "{msg:?}");
        }
        let hub = Identity::from_secret([3; 32]).node_id();
        let open = ControlMsg::Open {
            session: SessionId([9; 16]),
            offer_seq: 1,
            price: Price::default(),
            pay: Some(PayTerms {
                hub,
                channel: [7; 16],
            }),
        };
        let body = postcard::to_stdvec(&open).unwrap();
        let tail = [&[1][..], &hub.public_key(), &[7; 16]].concat();
        assert_eq!(body[..1], [0]);
        assert!(body.ends_with(&tail), "{body:?}");
        // A Close from a newer peer (with a code this version does not know) still decodes
        // as a Close.
        let msg: ControlMsg = decode(&[4, 8], MAX_CONTROL_MSG).unwrap();
        let ControlMsg::Close {
            reason: CloseReason::Unknown(code),
        } = msg
        else {
            panic!("decoded {msg:?}");
        };
        assert_eq!(code.code(), 8);
        assert!(
            CloseReason::Unknown(code)
                .to_string()
                .contains("does not know")
        );
    }

    #[test]
    fn session_ids_show_short_and_parse_long() {
        let id = SessionId(*b"\x01\x23\x45\x67\x89\xab\xcd\xef\x00\x11\x22\x33\x44\x55\x66\x77");
        assert_eq!(id.to_string(), "01234567");
        assert_eq!(format!("{id:?}"), "01234567");
        assert_eq!(id.to_hex(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_hex().parse::<SessionId>(), Ok(id));
        assert_eq!(
            "0123456789ABCDEF0011223344556677".parse::<SessionId>(),
            Ok(id)
        );
        assert!("01234567".parse::<SessionId>().is_err());
        assert!(
            "0123456789abcdef001122334455667g"
                .parse::<SessionId>()
                .is_err()
        );
        assert!(
            "+123456789abcdef0011223344556677"
                .parse::<SessionId>()
                .is_err()
        );
        // 32 bytes but not 32 ASCII digits.
        let odd = format!("é{}", "1".repeat(30));
        assert_eq!(odd.len(), 32);
        assert!(odd.parse::<SessionId>().is_err());
    }

    #[test]
    fn refusal_and_close_reasons_read_as_sentences() {
        assert!(
            SessionRefusal::AtCapacity
                .to_string()
                .starts_with("the provider")
        );
        assert_eq!(
            CloseReason::Consumer.to_string(),
            "the consumer closed the session"
        );
        assert_eq!(
            CloseReason::Unpaid.to_string(),
            "the consumer did not pay for the traffic"
        );
        assert_eq!(
            CloseReason::Overbilled.to_string(),
            "the provider billed more than the consumer measured"
        );
        assert_eq!(
            SessionRefusal::NoEscrow.to_string(),
            "the provider needs payment through a hub: top up with `warren wallet topup WRN` and connect again"
        );
    }
}
