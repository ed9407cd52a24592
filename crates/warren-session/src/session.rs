//! The session state machine, one per session on each side, without I/O: the driver feeds
//! it received [`ControlMsg`]s and the time, and carries out what it asks (send a message,
//! wake at a deadline, report an event).
//!
//! Driving it, in the style of quinn-proto:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use warren_session::{ControlMsg, Session, SessionConfig, SessionEvent, SessionId};
//! use warren_types::Amount;
//!
//! let mut now = Instant::now();
//! let id = SessionId([7; 16]);
//! let config = SessionConfig::default();
//! // An unpaid session: no pay terms in the Open.
//! let mut consumer = Session::consumer(now, id, 1, Default::default(), None, config);
//! let open = consumer.poll_transmit().expect("the Open message");
//! // ... which travels to the provider's node, which decides to accept (holding nothing
//! // from this consumer yet):
//! let mut provider = Session::provider(now, &open, Ok(()), Amount::ZERO, config)?;
//! let accept = provider.poll_transmit().expect("the Accept message");
//! consumer.handle_input(now, accept)?;
//! assert_eq!(consumer.poll_event(), Some(SessionEvent::Opened));
//!
//! // Payment records ride on the open session, each way its own.
//! provider.send_invoice(b"signed invoice".to_vec())?;
//! let invoice = provider.poll_transmit().expect("the Invoice message");
//! consumer.handle_input(now, invoice)?;
//! assert_eq!(
//!     consumer.poll_event(),
//!     Some(SessionEvent::Invoice(b"signed invoice".to_vec()))
//! );
//!
//! // With nothing to say, each side sends a Keepalive once a second.
//! now += Duration::from_secs(1);
//! assert_eq!(consumer.poll_timeout(), Some(now));
//! consumer.handle_timeout(now);
//! assert_eq!(consumer.poll_transmit(), Some(ControlMsg::Keepalive));
//! # Ok::<(), warren_session::SessionError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use warren_types::{Amount, Price};

use crate::wire::{CloseReason, ControlMsg, MAX_RECORD, PayTerms, SessionId, SessionRefusal};

/// Timers and limits of a session. Both sides should use the same values; the defaults fit
/// a control stream that shares a connection with busy flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send a Keepalive when nothing was sent for this long. Keep it well below
    /// `idle_timeout` so a few lost keepalives do not end the session, and above zero.
    pub keepalive_interval: Duration,
    /// Close with [`CloseReason::Timeout`] when nothing was received for this long.
    pub idle_timeout: Duration,
    /// The consumer closes with [`CloseReason::Timeout`] when neither Accept nor Refuse came
    /// within this long of the Open.
    pub open_timeout: Duration,
    /// Close with [`CloseReason::ProtocolError`] when the peer sends more messages than this
    /// within one second. An idle peer sends about one (a Keepalive), but a paid session
    /// also carries an invoice (provider) or a promise (consumer) every few MiB of traffic:
    /// at 4 MiB a record, a 1 Gbit/s session is about 30 a second and a 5 Gbit/s one about
    /// 150. The default, 200, leaves room for that and for bursts, and still stops a flood
    /// long before it costs anything.
    pub max_msgs_per_sec: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            open_timeout: Duration::from_secs(5),
            max_msgs_per_sec: 200,
        }
    }
}

/// Which side of the session this core is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Consumer,
    Provider,
}

impl Role {
    fn peer(self) -> Role {
        match self {
            Role::Consumer => Role::Provider,
            Role::Provider => Role::Consumer,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Consumer => "consumer",
            Role::Provider => "provider",
        })
    }
}

/// Where a session is.
///
/// There is no `Closing` state: a Close is the last word and needs no answer, so a side
/// that closes is done at once; its driver sends the queued Close and finishes the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Consumer only: the Open was sent at `since`; waiting for Accept or Refuse.
    Opening { since: Instant },
    /// Carrying traffic since `since`.
    Open { since: Instant },
    /// The provider refused the Open (on the provider, the refusal it sent).
    Refused { reason: SessionRefusal },
    /// Ended; `by_peer` when the peer sent the Close, otherwise this side closed it (on
    /// request, on a timeout or on a protocol error).
    Closed { reason: CloseReason, by_peer: bool },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Opening { .. } => "opening",
            State::Open { .. } => "open",
            State::Refused { .. } => "refused",
            State::Closed { .. } => "closed",
        }
    }
}

/// What the driver should learn about. `Opened`, `Refused` and `Closed` each happen at most
/// once per session; `Invoice` and `Promise` come while the session is open, and at most one
/// of each waits at a time: a newer record replaces an older one not yet polled (records are
/// cumulative, so the newest says all the older ones did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session is open (consumer: Accept received; provider: Accept queued).
    Opened,
    /// The provider refused (consumer: Refuse received; provider: Refuse queued).
    Refused(SessionRefusal),
    /// The session ended.
    Closed { reason: CloseReason, by_peer: bool },
    /// Consumer only: the provider sent an invoice (opaque signed bytes, at most
    /// [`MAX_RECORD`]).
    Invoice(Vec<u8>),
    /// Provider only: the consumer sent a promise (opaque signed bytes, at most
    /// [`MAX_RECORD`]).
    Promise(Vec<u8>),
}

/// What was wrong with the peer's side of the conversation, or with a record this side
/// tried to send.
///
/// From [`Session::handle_input`] the session has closed with [`CloseReason::ProtocolError`]
/// by the time the error is returned, and a Close is queued. [`NotAnOpen`](Self::NotAnOpen)
/// (from [`Session::provider`]) and the errors of [`Session::send_invoice`] and
/// [`Session::send_promise`] ([`CannotSend`](Self::CannotSend), or
/// [`RecordTooLarge`](Self::RecordTooLarge) with `from` this side) change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session {session}: the {peer} sent {msg}, which is out of place while {state}")]
    Unexpected {
        session: SessionId,
        peer: Role,
        msg: &'static str,
        state: &'static str,
    },
    #[error("session {expected}: the {peer} sent a message for session {got}")]
    WrongSession {
        expected: SessionId,
        got: SessionId,
        peer: Role,
    },
    #[error("session {session}: the {peer} sent more than {limit} messages within one second")]
    Flood {
        session: SessionId,
        peer: Role,
        limit: u32,
    },
    #[error("a provider session starts from an Open message, not {got}")]
    NotAnOpen { got: &'static str },
    #[error("session {session}: the {from}'s {msg} of {size} bytes is over the {max}-byte limit")]
    RecordTooLarge {
        session: SessionId,
        from: Role,
        msg: &'static str,
        size: usize,
        max: usize,
    },
    #[error("session {session}: a {role} cannot send {msg} while {state}")]
    CannotSend {
        session: SessionId,
        role: Role,
        msg: &'static str,
        state: &'static str,
    },
}

/// At most Opened, one pending payment record and one terminal event are ever queued; the
/// cap only makes the bound explicit.
const MAX_EVENTS: usize = 4;
/// The rate limit's window.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// One side of one session. See the [module docs](self) for how to drive it.
#[derive(Debug, Clone)]
pub struct Session {
    role: Role,
    id: SessionId,
    offer_seq: u64,
    price: Price,
    pay: Option<PayTerms>,
    /// Provider: what it told the consumer in the Accept; consumer: what the Accept said
    /// (zero until then).
    base: Amount,
    config: SessionConfig,
    state: State,
    opened_at: Option<Instant>,
    ended_at: Option<Instant>,
    last_sent: Instant,
    last_received: Instant,
    window_start: Instant,
    window_count: u32,
    /// At most the opening message, one Keepalive and one payment record (a side only ever
    /// sends one kind), or a record and the Close after it: bounded by construction (see
    /// `queue` and `queue_record`).
    transmit: VecDeque<ControlMsg>,
    events: VecDeque<SessionEvent>,
    bytes_up: u64,
    bytes_down: u64,
}

impl Session {
    fn new(
        now: Instant,
        role: Role,
        id: SessionId,
        offer_seq: u64,
        price: Price,
        pay: Option<PayTerms>,
        config: SessionConfig,
    ) -> Self {
        Session {
            role,
            id,
            offer_seq,
            price,
            pay,
            base: Amount::ZERO,
            config,
            state: State::Opening { since: now },
            opened_at: None,
            ended_at: None,
            last_sent: now,
            last_received: now,
            window_start: now,
            window_count: 0,
            transmit: VecDeque::with_capacity(3),
            events: VecDeque::with_capacity(3),
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// Consumer: starts Opening and queues the Open, which carries the offer's sequence
    /// number, the price the consumer agreed to and how it pays (`None`: it does not).
    pub fn consumer(
        now: Instant,
        id: SessionId,
        offer_seq: u64,
        price: Price,
        pay: Option<PayTerms>,
        config: SessionConfig,
    ) -> Self {
        let mut s = Session::new(now, Role::Consumer, id, offer_seq, price, pay, config);
        s.queue(
            now,
            ControlMsg::Open {
                session: id,
                offer_seq,
                price,
                pay,
            },
        );
        s
    }

    /// Provider: built from the Open that started the control stream and the node's
    /// decision on it (`Ok(())` to accept, `Err(reason)` to refuse); queues Accept or
    /// Refuse. An Accept carries `base`, what the provider already holds from the
    /// consumer's channel (zero for an unpaid session). Fails only when `open` is not an
    /// Open, and then nothing is queued: the driver just drops the stream.
    pub fn provider(
        now: Instant,
        open: &ControlMsg,
        decision: Result<(), SessionRefusal>,
        base: Amount,
        config: SessionConfig,
    ) -> Result<Self, SessionError> {
        let &ControlMsg::Open {
            session,
            offer_seq,
            price,
            pay,
        } = open
        else {
            return Err(SessionError::NotAnOpen { got: open.name() });
        };
        let mut s = Session::new(now, Role::Provider, session, offer_seq, price, pay, config);
        s.base = base;
        // The Open is the first message of the rate window.
        s.window_count = 1;
        match decision {
            Ok(()) => {
                s.queue(now, ControlMsg::Accept { session, base });
                s.open(now);
            }
            Err(reason) => {
                s.queue(now, ControlMsg::Refuse { session, reason });
                s.refused(now, reason);
            }
        }
        Ok(s)
    }

    /// Feeds a message from the peer. Call `poll_transmit` and `poll_event` afterwards. An
    /// error means the peer broke the protocol: the session has closed with
    /// [`CloseReason::ProtocolError`] and queued a Close to tell it. Once the session has
    /// ended, input is ignored.
    pub fn handle_input(&mut self, now: Instant, msg: ControlMsg) -> Result<(), SessionError> {
        if self.is_closed() {
            return Ok(());
        }
        if !self.count_received(now) {
            return Err(self.protocol_error(
                now,
                SessionError::Flood {
                    session: self.id,
                    peer: self.role.peer(),
                    limit: self.config.max_msgs_per_sec,
                },
            ));
        }
        self.last_received = now;
        match (self.state, msg) {
            (_, ControlMsg::Close { reason }) => {
                // The peer has gone: anything still queued would go nowhere.
                self.transmit.clear();
                self.end(
                    now,
                    State::Closed {
                        reason,
                        by_peer: true,
                    },
                );
                Ok(())
            }
            (State::Open { .. }, ControlMsg::Keepalive) => Ok(()),
            (State::Open { .. }, ControlMsg::Invoice { record }) if self.role == Role::Consumer => {
                self.receive_record(now, "Invoice", record, SessionEvent::Invoice)
            }
            (State::Open { .. }, ControlMsg::Promise { record }) if self.role == Role::Provider => {
                self.receive_record(now, "Promise", record, SessionEvent::Promise)
            }
            // Only a consumer is ever Opening.
            (State::Opening { .. }, ControlMsg::Accept { session, base }) => {
                self.check_session(now, session)?;
                self.base = base;
                self.open(now);
                Ok(())
            }
            (State::Opening { .. }, ControlMsg::Refuse { session, reason }) => {
                self.check_session(now, session)?;
                self.transmit.clear();
                self.refused(now, reason);
                Ok(())
            }
            (state, msg) => Err(self.protocol_error(
                now,
                SessionError::Unexpected {
                    session: self.id,
                    peer: self.role.peer(),
                    msg: msg.name(),
                    state: state.name(),
                },
            )),
        }
    }

    /// Call when the deadline from [`poll_timeout`](Self::poll_timeout) has passed (calling
    /// it early does nothing harmful).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Opening { since } => {
                if reached(now, since, self.config.open_timeout) {
                    self.close(now, CloseReason::Timeout);
                }
            }
            State::Open { .. } => {
                if reached(now, self.last_received, self.config.idle_timeout) {
                    self.close(now, CloseReason::Timeout);
                } else if reached(now, self.last_sent, self.config.keepalive_interval) {
                    self.queue(now, ControlMsg::Keepalive);
                }
            }
            State::Refused { .. } | State::Closed { .. } => {}
        }
    }

    /// Provider, while open: queues an Invoice carrying `record` (opaque signed bytes, at
    /// most [`MAX_RECORD`]). An Invoice still waiting to be sent is replaced in place: the
    /// newest cumulative invoice says all the older ones did, and a driver slow to poll
    /// finds one message, not a pile. On a consumer, before the open or after the end it
    /// returns [`SessionError::CannotSend`] and changes nothing.
    pub fn send_invoice(&mut self, record: Vec<u8>) -> Result<(), SessionError> {
        self.send_record(Role::Provider, "Invoice", record, |record| {
            ControlMsg::Invoice { record }
        })
    }

    /// Consumer, while open: queues a Promise carrying `record`, replacing one still waiting
    /// to be sent; otherwise as [`send_invoice`](Self::send_invoice).
    pub fn send_promise(&mut self, record: Vec<u8>) -> Result<(), SessionError> {
        self.send_record(Role::Consumer, "Promise", record, |record| {
            ControlMsg::Promise { record }
        })
    }

    /// The next message to send, in order. After the session ends this yields at most the
    /// one Refuse or Close that ended it (after a payment record still waiting when this
    /// side closed), then nothing.
    pub fn poll_transmit(&mut self) -> Option<ControlMsg> {
        self.transmit.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Opening { since } => since.checked_add(self.config.open_timeout),
            State::Open { .. } => {
                let idle = self.last_received.checked_add(self.config.idle_timeout);
                let keepalive = self.last_sent.checked_add(self.config.keepalive_interval);
                match (idle, keepalive) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Refused { .. } | State::Closed { .. } => None,
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Ends the session from this side: queues a Close with `reason` and goes Closed. The
    /// Close takes the place of anything not yet sent except a payment record: the last
    /// invoice or promise is the last word on money, so it goes out just before the Close.
    /// Does nothing once the session has ended.
    pub fn close(&mut self, now: Instant, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.transmit.retain(is_record);
        self.queue(now, ControlMsg::Close { reason });
        self.end(
            now,
            State::Closed {
                reason,
                by_peer: false,
            },
        );
    }

    /// Feeds the cumulative payload counters (bytes consumer → exit, exit → consumer).
    /// Each only grows: a lower value than one already seen is ignored, so counters read
    /// from several flows out of order cannot make the session's total go back.
    pub fn record_bytes(&mut self, up: u64, down: u64) {
        self.bytes_up = self.bytes_up.max(up);
        self.bytes_down = self.bytes_down.max(down);
    }

    /// Cumulative payload bytes (up, down) recorded so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_up, self.bytes_down)
    }

    /// How long the session has been open: zero before it opened (and for a refused one),
    /// frozen once it ended.
    pub fn duration(&self, now: Instant) -> Duration {
        match self.opened_at {
            None => Duration::ZERO,
            Some(opened) => self
                .ended_at
                .unwrap_or(now)
                .saturating_duration_since(opened),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The price agreed in the Open.
    pub fn price(&self) -> Price {
        self.price
    }

    /// The sequence number of the offer the Open named.
    pub fn offer_seq(&self) -> u64 {
        self.offer_seq
    }

    /// How the consumer pays, as the Open said (`None`: an unpaid session).
    pub fn pay_terms(&self) -> Option<&PayTerms> {
        self.pay.as_ref()
    }

    /// What the provider already held from the consumer's channel when the session opened,
    /// as its Accept said (on a consumer, zero until the Accept arrives).
    pub fn base(&self) -> Amount {
        self.base
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// True once the session was refused or closed, by either side.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Refused { .. } | State::Closed { .. })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Queues `msg`. A Keepalive already waiting is enough: a driver that is slow to poll
    /// must not find a pile of them.
    fn queue(&mut self, now: Instant, msg: ControlMsg) {
        self.last_sent = now;
        if msg == ControlMsg::Keepalive && self.transmit.contains(&ControlMsg::Keepalive) {
            return;
        }
        self.transmit.push_back(msg);
    }

    fn event(&mut self, e: SessionEvent) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(e);
        }
    }

    /// Checks and queues a payment record this side sends: `msg` (named `name`) is only
    /// `from`'s to send.
    fn send_record(
        &mut self,
        from: Role,
        name: &'static str,
        record: Vec<u8>,
        msg: fn(Vec<u8>) -> ControlMsg,
    ) -> Result<(), SessionError> {
        if self.role != from || !matches!(self.state, State::Open { .. }) {
            return Err(SessionError::CannotSend {
                session: self.id,
                role: self.role,
                msg: name,
                state: self.state.name(),
            });
        }
        if record.len() > MAX_RECORD {
            return Err(SessionError::RecordTooLarge {
                session: self.id,
                from: self.role,
                msg: name,
                size: record.len(),
                max: MAX_RECORD,
            });
        }
        self.queue_record(msg(record));
        Ok(())
    }

    /// Queues a payment record, replacing in place one of the same kind not yet sent. It
    /// does not count as sending for the keepalive timer, which needs `now`; at worst a
    /// Keepalive follows a record a little sooner than it had to.
    fn queue_record(&mut self, msg: ControlMsg) {
        let kind = mem::discriminant(&msg);
        match self
            .transmit
            .iter_mut()
            .find(|m| mem::discriminant(*m) == kind)
        {
            Some(waiting) => *waiting = msg,
            None => self.transmit.push_back(msg),
        }
    }

    /// Takes a payment record from the peer (the caller checked the state and direction):
    /// refuses one over the limit, otherwise reports it, replacing one of the same kind not
    /// yet polled.
    fn receive_record(
        &mut self,
        now: Instant,
        msg: &'static str,
        record: Vec<u8>,
        event: fn(Vec<u8>) -> SessionEvent,
    ) -> Result<(), SessionError> {
        if record.len() > MAX_RECORD {
            return Err(self.protocol_error(
                now,
                SessionError::RecordTooLarge {
                    session: self.id,
                    from: self.role.peer(),
                    msg,
                    size: record.len(),
                    max: MAX_RECORD,
                },
            ));
        }
        let e = event(record);
        let kind = mem::discriminant(&e);
        match self
            .events
            .iter_mut()
            .find(|old| mem::discriminant(*old) == kind)
        {
            Some(waiting) => *waiting = e,
            None => self.event(e),
        }
        Ok(())
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open { since: now };
        self.opened_at = Some(now);
        self.event(SessionEvent::Opened);
    }

    fn refused(&mut self, now: Instant, reason: SessionRefusal) {
        self.state = State::Refused { reason };
        self.ended_at = Some(now);
        self.event(SessionEvent::Refused(reason));
    }

    /// Enters a Closed state and reports it.
    fn end(&mut self, now: Instant, state: State) {
        self.state = state;
        self.ended_at = Some(now);
        if let State::Closed { reason, by_peer } = state {
            self.event(SessionEvent::Closed { reason, by_peer });
        }
    }

    fn protocol_error(&mut self, now: Instant, e: SessionError) -> SessionError {
        self.close(now, CloseReason::ProtocolError);
        e
    }

    fn check_session(&mut self, now: Instant, got: SessionId) -> Result<(), SessionError> {
        if got == self.id {
            return Ok(());
        }
        Err(self.protocol_error(
            now,
            SessionError::WrongSession {
                expected: self.id,
                got,
                peer: self.role.peer(),
            },
        ))
    }

    /// Counts a received message in the current one-second window; false when it is one
    /// too many.
    fn count_received(&mut self, now: Instant) -> bool {
        if reached(now, self.window_start, RATE_WINDOW) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(1);
        self.window_count <= self.config.max_msgs_per_sec
    }
}

/// Whether `msg` is a payment record.
fn is_record(msg: &ControlMsg) -> bool {
    matches!(msg, ControlMsg::Invoice { .. } | ControlMsg::Promise { .. })
}

/// Whether `after` has passed since `start` at `now`; a deadline past the end of time never
/// comes.
fn reached(now: Instant, start: Instant, after: Duration) -> bool {
    start
        .checked_add(after)
        .is_some_and(|deadline| now >= deadline)
}

#[cfg(test)]
mod tests;
