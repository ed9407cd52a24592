//! Two cores driven against each other on a virtual clock, through a link that frames every
//! message with the real codec and can delay or drop what one side sends.

use std::collections::VecDeque;

use proptest::prelude::*;
use warren_types::Amount;

use super::*;
use crate::wire::{self, FrameReader, MAX_CONTROL_MSG};
use warren_types::Identity;

const ID: SessionId = SessionId([0x42; 16]);
const OTHER: SessionId = SessionId([0x17; 16]);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn price() -> Price {
    Price {
        per_gib: Amount::from_nano(50_000_000),
        per_hour: Amount::from_nano(10_000_000),
    }
}

/// One direction of the link: frames in flight, each arriving `delay` after it was sent.
struct Pipe {
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    delay: Duration,
    /// Loses everything sent from now on (what is already in flight still arrives).
    dropping: bool,
    reader: FrameReader,
}

impl Pipe {
    fn new(delay: Duration) -> Self {
        Pipe {
            in_flight: VecDeque::new(),
            delay,
            dropping: false,
            reader: FrameReader::new(MAX_CONTROL_MSG),
        }
    }

    fn send(&mut self, now: Instant, msg: &ControlMsg) {
        if !self.dropping {
            let frame = wire::encode(msg, MAX_CONTROL_MSG).expect("control messages encode");
            self.in_flight.push_back((now + self.delay, frame));
        }
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at)
    }

    /// Everything that has arrived by `now`, decoded as the receiving driver would.
    fn deliver(&mut self, now: Instant) -> Vec<ControlMsg> {
        let mut out = Vec::new();
        while self.next_arrival().is_some_and(|at| at <= now) {
            let Some((_, frame)) = self.in_flight.pop_front() else {
                break;
            };
            self.reader.push(&frame);
            while let Some(body) = self.reader.next_frame().expect("frame in bounds") {
                out.push(wire::decode(&body, MAX_CONTROL_MSG).expect("decodes"));
            }
        }
        out
    }
}

/// What one side did, stamped with the virtual time.
#[derive(Default)]
struct Log {
    events: Vec<(Instant, SessionEvent)>,
    errors: Vec<SessionError>,
    sent: Vec<(Instant, ControlMsg)>,
}

impl Log {
    fn events(&self) -> Vec<SessionEvent> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }

    fn keepalives(&self) -> Vec<Instant> {
        self.sent
            .iter()
            .filter(|(_, m)| *m == ControlMsg::Keepalive)
            .map(|(at, _)| *at)
            .collect()
    }

    fn closed_at(&self) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, SessionEvent::Closed { .. }))
            .map(|(at, _)| *at)
    }
}

/// A consumer and (once its Open arrives) a provider, joined by two pipes.
struct Pair {
    start: Instant,
    now: Instant,
    config: SessionConfig,
    decision: Result<(), SessionRefusal>,
    /// What the provider says it already holds, in its Accept.
    base: Amount,
    consumer: Session,
    provider: Option<Session>,
    to_provider: Pipe,
    to_consumer: Pipe,
    c: Log,
    p: Log,
}

impl Pair {
    fn new(decision: Result<(), SessionRefusal>, delay: Duration) -> Self {
        Pair::paying(decision, delay, None, Amount::ZERO)
    }

    /// A pair whose consumer pays through `pay`, and whose provider answers with `base`.
    fn paying(
        decision: Result<(), SessionRefusal>,
        delay: Duration,
        pay: Option<PayTerms>,
        base: Amount,
    ) -> Self {
        let now = Instant::now();
        let config = SessionConfig::default();
        Pair {
            start: now,
            now,
            config,
            decision,
            base,
            consumer: Session::consumer(now, ID, 9, price(), pay, config),
            provider: None,
            to_provider: Pipe::new(delay),
            to_consumer: Pipe::new(delay),
            c: Log::default(),
            p: Log::default(),
        }
    }

    /// A pair whose session has opened on both sides.
    fn open(delay: Duration) -> Self {
        let mut pair = Pair::new(Ok(()), delay);
        pair.run_for(delay * 2 + ms(1));
        assert!(matches!(pair.consumer.state(), State::Open { .. }));
        assert!(matches!(pair.provider().state(), State::Open { .. }));
        pair
    }

    fn provider(&self) -> &Session {
        self.provider.as_ref().expect("the Open has arrived")
    }

    fn provider_mut(&mut self) -> &mut Session {
        self.provider.as_mut().expect("the Open has arrived")
    }

    /// Does everything due at `now` until nothing changes.
    fn pump(&mut self) {
        let now = self.now;
        for _ in 0..1000 {
            let mut progress = false;
            if self.consumer.poll_timeout().is_some_and(|t| t <= now) {
                self.consumer.handle_timeout(now);
                progress = true;
            }
            if let Some(p) = &mut self.provider
                && p.poll_timeout().is_some_and(|t| t <= now)
            {
                p.handle_timeout(now);
                progress = true;
            }
            while let Some(m) = self.consumer.poll_transmit() {
                self.to_provider.send(now, &m);
                self.c.sent.push((now, m));
                progress = true;
            }
            if let Some(p) = &mut self.provider {
                while let Some(m) = p.poll_transmit() {
                    self.to_consumer.send(now, &m);
                    self.p.sent.push((now, m));
                    progress = true;
                }
            }
            for m in self.to_provider.deliver(now) {
                progress = true;
                match &mut self.provider {
                    None => {
                        let p = Session::provider(now, &m, self.decision, self.base, self.config)
                            .expect("the first message is an Open");
                        self.provider = Some(p);
                    }
                    Some(p) => {
                        if let Err(e) = p.handle_input(now, m) {
                            self.p.errors.push(e);
                        }
                    }
                }
            }
            for m in self.to_consumer.deliver(now) {
                progress = true;
                if let Err(e) = self.consumer.handle_input(now, m) {
                    self.c.errors.push(e);
                }
            }
            while let Some(e) = self.consumer.poll_event() {
                self.c.events.push((now, e));
                progress = true;
            }
            if let Some(p) = &mut self.provider {
                while let Some(e) = p.poll_event() {
                    self.p.events.push((now, e));
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the cores never settled at one instant");
    }

    /// Advances virtual time by `d`, stopping at every deadline and arrival on the way.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            let next = [
                self.consumer.poll_timeout(),
                self.provider.as_ref().and_then(Session::poll_timeout),
                self.to_provider.next_arrival(),
                self.to_consumer.next_arrival(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => self.now = t.max(self.now),
                _ => {
                    self.now = end;
                    self.pump();
                    return;
                }
            }
        }
    }
}

#[test]
fn an_accepted_session_opens_on_both_sides_and_counts_time_from_the_open() {
    let delay = ms(10);
    let mut pair = Pair::new(Ok(()), delay);
    assert_eq!(pair.consumer.duration(pair.now), Duration::ZERO);
    pair.run_for(secs(3));
    let t0 = pair.start;
    assert_eq!(pair.c.events, vec![(t0 + 2 * delay, SessionEvent::Opened)]);
    assert_eq!(pair.p.events, vec![(t0 + delay, SessionEvent::Opened)]);
    assert_eq!(
        *pair.consumer.state(),
        State::Open {
            since: t0 + 2 * delay
        }
    );
    assert_eq!(pair.consumer.duration(pair.now), secs(3) - 2 * delay);
    assert_eq!(pair.provider().duration(pair.now), secs(3) - delay);
    assert_eq!(pair.provider().price(), price());
    assert_eq!(pair.provider().offer_seq(), 9);
    assert_eq!(pair.provider().id(), ID);
    assert_eq!(pair.provider().role(), Role::Provider);
    assert!(pair.c.errors.is_empty() && pair.p.errors.is_empty());
}

#[test]
fn a_session_that_never_opens_lasts_no_time() {
    let now = Instant::now();
    let s = Session::consumer(now, ID, 1, price(), None, SessionConfig::default());
    assert_eq!(s.duration(now + secs(4)), Duration::ZERO);
    assert!(!s.is_closed());
}

#[test]
fn a_refusal_reaches_the_consumer_with_its_reason() {
    for reason in [
        SessionRefusal::AtCapacity,
        SessionRefusal::PriceChanged,
        SessionRefusal::Policy,
        SessionRefusal::Banned,
        SessionRefusal::NotProviding,
    ] {
        let mut pair = Pair::new(Err(reason), ms(5));
        pair.run_for(secs(10));
        assert_eq!(pair.c.events(), vec![SessionEvent::Refused(reason)]);
        assert_eq!(pair.p.events(), vec![SessionEvent::Refused(reason)]);
        assert_eq!(*pair.consumer.state(), State::Refused { reason });
        assert!(pair.consumer.is_closed() && pair.provider().is_closed());
        assert_eq!(pair.consumer.poll_timeout(), None);
        assert_eq!(pair.consumer.duration(pair.now), Duration::ZERO);
        // A refusal is the end: no Close follows it from either side.
        let sent: Vec<_> = pair.c.sent.iter().map(|(_, m)| m.name()).collect();
        assert_eq!(sent, ["Open"]);
        let sent: Vec<_> = pair.p.sent.iter().map(|(_, m)| m.name()).collect();
        assert_eq!(sent, ["Refuse"]);
    }
}

#[test]
fn keepalives_keep_an_idle_session_open_for_a_minute() {
    let mut pair = Pair::open(ms(50));
    pair.run_for(secs(60));
    assert!(matches!(pair.consumer.state(), State::Open { .. }));
    assert!(matches!(pair.provider().state(), State::Open { .. }));
    assert_eq!(pair.c.events(), vec![SessionEvent::Opened]);
    assert_eq!(pair.p.events(), vec![SessionEvent::Opened]);
    for log in [&pair.c, &pair.p] {
        let sent: Vec<Instant> = log.sent.iter().map(|(at, _)| *at).collect();
        // Never silent for longer than the interval, and no chattier than needed.
        for gap in sent.windows(2) {
            assert_eq!(gap[1] - gap[0], secs(1));
        }
        assert!((59..=61).contains(&log.keepalives().len()));
    }
}

#[test]
fn a_silent_provider_times_the_consumer_out() {
    let delay = ms(30);
    let mut pair = Pair::open(delay);
    pair.run_for(ms(2500));
    pair.to_consumer.dropping = true;
    let silent_from = pair.now;
    pair.run_for(secs(10));

    let closed = pair.c.closed_at().expect("the consumer closed");
    let idle = pair.config.idle_timeout;
    // The last message heard was sent at most one keepalive interval before the silence.
    assert!(closed <= silent_from + delay + idle, "closed too late");
    assert!(closed >= silent_from + idle - pair.config.keepalive_interval);
    assert_eq!(
        pair.c.events(),
        vec![
            SessionEvent::Opened,
            SessionEvent::Closed {
                reason: CloseReason::Timeout,
                by_peer: false
            }
        ]
    );
    // The consumer's Close still reaches the provider.
    assert_eq!(
        *pair.provider().state(),
        State::Closed {
            reason: CloseReason::Timeout,
            by_peer: true
        }
    );
    assert_eq!(pair.p.closed_at(), Some(closed + delay));
}

#[test]
fn a_silent_consumer_times_the_provider_out() {
    let mut pair = Pair::open(ms(30));
    pair.to_provider.dropping = true;
    let silent_from = pair.now;
    pair.run_for(secs(10));
    let closed = pair.p.closed_at().expect("the provider closed");
    assert!(closed <= silent_from + ms(30) + pair.config.idle_timeout);
    assert_eq!(
        pair.p.events().last(),
        Some(&SessionEvent::Closed {
            reason: CloseReason::Timeout,
            by_peer: false
        })
    );
    assert_eq!(
        pair.c.events().last(),
        Some(&SessionEvent::Closed {
            reason: CloseReason::Timeout,
            by_peer: true
        })
    );
}

#[test]
fn an_unanswered_open_times_out() {
    let mut pair = Pair::new(Ok(()), Duration::ZERO);
    pair.to_provider.dropping = true;
    pair.run_for(secs(20));
    assert!(pair.provider.is_none());
    assert_eq!(
        pair.c.events,
        vec![(
            pair.start + pair.config.open_timeout,
            SessionEvent::Closed {
                reason: CloseReason::Timeout,
                by_peer: false
            }
        )]
    );
    let sent: Vec<_> = pair.c.sent.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(
        sent[1..],
        [ControlMsg::Close {
            reason: CloseReason::Timeout
        }]
    );
}

#[test]
fn a_lost_accept_times_out_both_sides() {
    let mut pair = Pair::new(Ok(()), ms(10));
    pair.to_consumer.dropping = true;
    pair.run_for(secs(20));
    assert_eq!(
        pair.c.events(),
        vec![SessionEvent::Closed {
            reason: CloseReason::Timeout,
            by_peer: false
        }]
    );
    // A consumer waiting for an answer has nothing to say, so the provider's idle timer
    // (from the Open) and the consumer's open timer run out together: whichever fires
    // first, the provider ends with a timeout, not with a session left open.
    let p = pair.p.events();
    assert_eq!(p[0], SessionEvent::Opened);
    assert!(
        matches!(
            p[1..],
            [SessionEvent::Closed {
                reason: CloseReason::Timeout,
                ..
            }]
        ),
        "{p:?}"
    );
    assert!(pair.p.closed_at() <= Some(pair.start + pair.config.open_timeout + ms(20)));
}

#[test]
fn closing_from_the_consumer_reaches_the_provider() {
    let mut pair = Pair::open(ms(20));
    pair.run_for(secs(2));
    let now = pair.now;
    pair.consumer.close(now, CloseReason::Consumer);
    pair.consumer.close(now, CloseReason::Shutdown); // a second close changes nothing
    let sent_before = pair.c.sent.len();
    pair.run_for(secs(10));

    assert_eq!(
        pair.c.sent[sent_before..],
        [(
            now,
            ControlMsg::Close {
                reason: CloseReason::Consumer
            }
        )]
    );
    assert_eq!(
        pair.c.events(),
        vec![
            SessionEvent::Opened,
            SessionEvent::Closed {
                reason: CloseReason::Consumer,
                by_peer: false
            }
        ]
    );
    assert_eq!(
        pair.p.events(),
        vec![
            SessionEvent::Opened,
            SessionEvent::Closed {
                reason: CloseReason::Consumer,
                by_peer: true
            }
        ]
    );
    // Time stops counting at the close, on both sides.
    assert_eq!(
        pair.consumer.duration(pair.now),
        now - (pair.start + ms(40))
    );
    assert_eq!(
        pair.provider().duration(pair.now),
        now + ms(20) - (pair.start + ms(20))
    );
    assert_eq!(pair.consumer.poll_timeout(), None);
    assert_eq!(pair.provider().poll_timeout(), None);
}

#[test]
fn closing_from_the_provider_reaches_the_consumer() {
    let mut pair = Pair::open(ms(20));
    pair.run_for(ms(1500));
    let now = pair.now;
    pair.provider_mut().close(now, CloseReason::Provider);
    let sent_before = pair.p.sent.len();
    pair.run_for(secs(10));
    assert_eq!(pair.p.sent.len(), sent_before + 1);
    assert_eq!(
        *pair.consumer.state(),
        State::Closed {
            reason: CloseReason::Provider,
            by_peer: true
        }
    );
    assert_eq!(
        *pair.provider().state(),
        State::Closed {
            reason: CloseReason::Provider,
            by_peer: false
        }
    );
    // The consumer answers a Close with nothing.
    assert!(pair.c.sent.iter().all(|(at, _)| *at < now + ms(20)));
}

#[test]
fn closing_while_opening_sends_only_the_close() {
    let now = Instant::now();
    let mut s = Session::consumer(now, ID, 1, price(), None, SessionConfig::default());
    s.close(now, CloseReason::Consumer);
    assert_eq!(
        s.poll_transmit(),
        Some(ControlMsg::Close {
            reason: CloseReason::Consumer
        })
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_misbehaving_provider_is_closed_with_a_protocol_error() {
    let mut pair = Pair::open(ms(5));
    // A buggy provider accepts a second time.
    let now = pair.now;
    pair.to_consumer.send(
        now,
        &ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    );
    pair.run_for(secs(1));
    assert_eq!(
        pair.c.errors,
        vec![SessionError::Unexpected {
            session: ID,
            peer: Role::Provider,
            msg: "Accept",
            state: "open"
        }]
    );
    assert_eq!(
        pair.p.events().last(),
        Some(&SessionEvent::Closed {
            reason: CloseReason::ProtocolError,
            by_peer: true
        })
    );
}

/// A consumer that has sent its Open (polled), at `now`.
fn opening(now: Instant) -> Session {
    let mut s = Session::consumer(now, ID, 1, price(), None, SessionConfig::default());
    assert!(matches!(s.poll_transmit(), Some(ControlMsg::Open { .. })));
    s
}

/// A provider that has accepted and sent its Accept, at `now`.
fn accepted(now: Instant) -> Session {
    let open = ControlMsg::Open {
        session: ID,
        offer_seq: 1,
        price: price(),
        pay: None,
    };
    let mut s =
        Session::provider(now, &open, Ok(()), Amount::ZERO, SessionConfig::default()).unwrap();
    assert_eq!(
        s.poll_transmit(),
        Some(ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        })
    );
    assert_eq!(s.poll_event(), Some(SessionEvent::Opened));
    s
}

/// Checks that `s` closed itself with a protocol error and queued exactly one Close.
fn assert_protocol_close(s: &mut Session) {
    assert_eq!(
        *s.state(),
        State::Closed {
            reason: CloseReason::ProtocolError,
            by_peer: false
        }
    );
    assert_eq!(
        s.poll_transmit(),
        Some(ControlMsg::Close {
            reason: CloseReason::ProtocolError
        })
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::Closed {
            reason: CloseReason::ProtocolError,
            by_peer: false
        })
    );
}

#[test]
fn an_answer_for_another_session_is_a_protocol_error() {
    let now = Instant::now();
    for answer in [
        ControlMsg::Accept {
            session: OTHER,
            base: Amount::ZERO,
        },
        ControlMsg::Refuse {
            session: OTHER,
            reason: SessionRefusal::Policy,
        },
    ] {
        let mut s = opening(now);
        assert_eq!(
            s.handle_input(now, answer),
            Err(SessionError::WrongSession {
                expected: ID,
                got: OTHER,
                peer: Role::Provider
            })
        );
        assert_protocol_close(&mut s);
    }
}

#[test]
fn messages_out_of_place_are_protocol_errors() {
    let now = Instant::now();
    let open = ControlMsg::Open {
        session: ID,
        offer_seq: 1,
        price: price(),
        pay: None,
    };
    let cases: Vec<(Session, ControlMsg, &str)> = vec![
        (accepted(now), open.clone(), "open"),
        (
            accepted(now),
            ControlMsg::Accept {
                session: ID,
                base: Amount::ZERO,
            },
            "open",
        ),
        (
            accepted(now),
            ControlMsg::Refuse {
                session: ID,
                reason: SessionRefusal::Banned,
            },
            "open",
        ),
        (opening(now), ControlMsg::Keepalive, "opening"),
        (opening(now), open.clone(), "opening"),
    ];
    for (mut s, msg, state) in cases {
        let name = msg.name();
        let err = s.handle_input(now, msg).expect_err(name);
        assert_eq!(
            err,
            SessionError::Unexpected {
                session: ID,
                peer: s.role().peer(),
                msg: name,
                state
            }
        );
        assert!(err.to_string().contains(name));
        assert_protocol_close(&mut s);
    }

    let mut s = opening(now);
    s.handle_input(
        now,
        ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    )
    .unwrap();
    assert_eq!(s.poll_event(), Some(SessionEvent::Opened));
    let err = s.handle_input(
        now,
        ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    );
    assert!(matches!(err, Err(SessionError::Unexpected { .. })));
    assert_protocol_close(&mut s);
}

#[test]
fn a_provider_session_needs_an_open() {
    let err = Session::provider(
        Instant::now(),
        &ControlMsg::Keepalive,
        Ok(()),
        Amount::ZERO,
        SessionConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err, SessionError::NotAnOpen { got: "Keepalive" });
}

#[test]
fn a_message_flood_is_a_protocol_error() {
    let mut now = Instant::now();
    let mut s = accepted(now);
    let limit = SessionConfig::default().max_msgs_per_sec;
    assert_eq!(limit, 200);
    let step = 999 / u64::from(limit);
    // The Open counted too: one fewer fills the first second.
    for _ in 1..limit {
        s.handle_input(now, ControlMsg::Keepalive).unwrap();
    }
    // A steady `limit` a second is allowed for as long as it goes on, whatever it carries.
    for _ in 0..10 {
        now += secs(1);
        for i in 0..u64::from(limit) {
            let msg = if i % 2 == 0 {
                ControlMsg::Keepalive
            } else {
                ControlMsg::Promise { record: vec![1; 8] }
            };
            s.handle_input(now + ms(i * step), msg).unwrap();
        }
    }
    now += secs(1);
    for _ in 0..limit {
        s.handle_input(now, ControlMsg::Keepalive).unwrap();
    }
    assert_eq!(
        s.handle_input(now + ms(999), ControlMsg::Keepalive),
        Err(SessionError::Flood {
            session: ID,
            peer: Role::Consumer,
            limit
        })
    );
    // Only the newest promise waited for the driver, however many came.
    assert_eq!(s.poll_event(), Some(SessionEvent::Promise(vec![1; 8])));
    assert_protocol_close(&mut s);
}

#[test]
fn after_the_end_input_is_ignored_and_nothing_more_is_sent() {
    let now = Instant::now();
    let mut s = accepted(now);
    s.handle_input(
        now,
        ControlMsg::Close {
            reason: CloseReason::Consumer,
        },
    )
    .unwrap();
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::Closed {
            reason: CloseReason::Consumer,
            by_peer: true
        })
    );
    for msg in [
        ControlMsg::Keepalive,
        ControlMsg::Accept {
            session: OTHER,
            base: Amount::ZERO,
        },
        ControlMsg::Close {
            reason: CloseReason::Timeout,
        },
    ] {
        assert_eq!(s.handle_input(now, msg), Ok(()));
    }
    s.handle_timeout(now + secs(60));
    s.close(now + secs(60), CloseReason::Provider);
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_event(), None);
    assert_eq!(
        *s.state(),
        State::Closed {
            reason: CloseReason::Consumer,
            by_peer: true
        }
    );
}

#[test]
fn byte_counters_only_grow() {
    let mut s = accepted(Instant::now());
    assert_eq!(s.bytes(), (0, 0));
    s.record_bytes(10, 20);
    s.record_bytes(5, 30);
    assert_eq!(s.bytes(), (10, 30));
    s.record_bytes(100, 0);
    assert_eq!(s.bytes(), (100, 30));
    s.close(Instant::now(), CloseReason::ByteCap);
    // The last counts after the close still land.
    s.record_bytes(120, 40);
    assert_eq!(s.bytes(), (120, 40));
}

#[test]
fn a_chatty_peer_and_a_lazy_driver_grow_no_queue() {
    let mut now = Instant::now();
    let mut s = accepted(now);
    // The driver never polls, for two minutes of keepalives both ways.
    for _ in 0..1200 {
        now += ms(100);
        s.handle_input(now, ControlMsg::Keepalive).unwrap();
        s.handle_timeout(now);
        assert!(s.transmit.len() <= 1);
        assert!(s.events.is_empty());
    }
    assert_eq!(s.poll_transmit(), Some(ControlMsg::Keepalive));
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn huge_timeouts_never_fire() {
    let now = Instant::now();
    let config = SessionConfig {
        keepalive_interval: Duration::MAX,
        idle_timeout: Duration::MAX,
        open_timeout: Duration::MAX,
        max_msgs_per_sec: 200,
    };
    let mut s = Session::consumer(now, ID, 1, price(), None, config);
    s.handle_timeout(now + secs(86_400));
    assert!(!s.is_closed());
    s.handle_input(
        now,
        ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    )
    .unwrap();
    s.handle_timeout(now + secs(86_400));
    assert!(matches!(s.state(), State::Open { .. }));
}

fn terms() -> PayTerms {
    PayTerms {
        hub: Identity::from_secret([5; 32]).node_id(),
        channel: [0xc4; 16],
    }
}

#[test]
fn pay_terms_travel_in_the_open_and_the_base_in_the_accept() {
    let delay = ms(10);
    let base = Amount::from_nano(1_234_567);
    let mut pair = Pair::paying(Ok(()), delay, Some(terms()), base);
    assert_eq!(pair.consumer.pay_terms(), Some(&terms()));
    assert_eq!(pair.consumer.base(), Amount::ZERO, "no Accept yet");
    pair.run_for(secs(1));
    assert_eq!(pair.provider().pay_terms(), Some(&terms()));
    assert_eq!(pair.provider().base(), base);
    assert_eq!(pair.consumer.base(), base);
    assert_eq!(
        pair.c.sent[0].1,
        ControlMsg::Open {
            session: ID,
            offer_seq: 9,
            price: price(),
            pay: Some(terms()),
        }
    );
    assert_eq!(pair.p.sent[0].1, ControlMsg::Accept { session: ID, base });

    // And an unpaid session says so on both sides.
    let pair = Pair::open(delay);
    assert_eq!(pair.provider().pay_terms(), None);
    assert_eq!(pair.consumer.pay_terms(), None);
    assert_eq!(pair.consumer.base(), Amount::ZERO);
}

#[test]
fn invoices_and_promises_pass_through_an_open_session() {
    let delay = ms(20);
    let mut pair = Pair::paying(Ok(()), delay, Some(terms()), Amount::ZERO);
    pair.run_for(ms(100));
    let now = pair.now;
    pair.provider_mut()
        .send_invoice(b"invoice 1".to_vec())
        .unwrap();
    pair.consumer.send_promise(b"promise 1".to_vec()).unwrap();
    pair.run_for(delay);
    assert_eq!(
        pair.c.events.last(),
        Some(&(now + delay, SessionEvent::Invoice(b"invoice 1".to_vec())))
    );
    assert_eq!(
        pair.p.events.last(),
        Some(&(now + delay, SessionEvent::Promise(b"promise 1".to_vec())))
    );
    // A few rounds, the way payments go: each side answers what it got.
    for i in 2..5u8 {
        pair.provider_mut().send_invoice(vec![i; 300]).unwrap();
        pair.run_for(delay);
        assert_eq!(
            pair.c.events().last(),
            Some(&SessionEvent::Invoice(vec![i; 300]))
        );
        pair.consumer.send_promise(vec![i; 200]).unwrap();
        pair.run_for(delay);
        assert_eq!(
            pair.p.events().last(),
            Some(&SessionEvent::Promise(vec![i; 200]))
        );
    }
    // A record at the limit goes through too.
    pair.provider_mut()
        .send_invoice(vec![7; MAX_RECORD])
        .unwrap();
    pair.run_for(secs(10));
    assert_eq!(
        pair.c.events().last(),
        Some(&SessionEvent::Invoice(vec![7; MAX_RECORD]))
    );
    assert!(matches!(pair.consumer.state(), State::Open { .. }));
    assert!(matches!(pair.provider().state(), State::Open { .. }));
    assert!(pair.c.errors.is_empty() && pair.p.errors.is_empty());
}

#[test]
fn payment_records_out_of_place_are_protocol_errors() {
    let now = Instant::now();
    let invoice = ControlMsg::Invoice {
        record: vec![1; 10],
    };
    let promise = ControlMsg::Promise {
        record: vec![2; 10],
    };
    let mut open_consumer = opening(now);
    open_consumer
        .handle_input(
            now,
            ControlMsg::Accept {
                session: ID,
                base: Amount::ZERO,
            },
        )
        .unwrap();
    assert_eq!(open_consumer.poll_event(), Some(SessionEvent::Opened));
    let cases: Vec<(Session, ControlMsg, &str)> = vec![
        // Before the open.
        (opening(now), invoice.clone(), "opening"),
        (opening(now), promise.clone(), "opening"),
        // The wrong way.
        (accepted(now), invoice, "open"),
        (open_consumer, promise, "open"),
    ];
    for (mut s, msg, state) in cases {
        let name = msg.name();
        let err = s.handle_input(now, msg).expect_err(name);
        assert_eq!(
            err,
            SessionError::Unexpected {
                session: ID,
                peer: s.role().peer(),
                msg: name,
                state
            }
        );
        assert_protocol_close(&mut s);
    }
}

#[test]
fn an_oversized_record_from_the_peer_is_a_protocol_error() {
    let now = Instant::now();
    let mut s = accepted(now);
    let err = s
        .handle_input(
            now,
            ControlMsg::Promise {
                record: vec![0; MAX_RECORD + 1],
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::RecordTooLarge {
            session: ID,
            from: Role::Consumer,
            msg: "Promise",
            size: MAX_RECORD + 1,
            max: MAX_RECORD
        }
    );
    assert!(err.to_string().contains("consumer's Promise"), "{err}");
    assert_protocol_close(&mut s);

    let mut s = opening(now);
    s.handle_input(
        now,
        ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    )
    .unwrap();
    assert_eq!(s.poll_event(), Some(SessionEvent::Opened));
    let err = s
        .handle_input(
            now,
            ControlMsg::Invoice {
                record: vec![0; MAX_RECORD + 1],
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::RecordTooLarge {
            from: Role::Provider,
            ..
        }
    ));
    assert_protocol_close(&mut s);
}

#[test]
fn sending_a_record_out_of_place_is_refused_and_changes_nothing() {
    let now = Instant::now();
    // Oversized: refused, the session stays open and nothing is queued.
    let mut p = accepted(now);
    assert_eq!(
        p.send_invoice(vec![0; MAX_RECORD + 1]),
        Err(SessionError::RecordTooLarge {
            session: ID,
            from: Role::Provider,
            msg: "Invoice",
            size: MAX_RECORD + 1,
            max: MAX_RECORD
        })
    );
    assert!(matches!(p.state(), State::Open { .. }));
    assert_eq!(p.poll_transmit(), None);
    assert_eq!(p.poll_event(), None);
    // The wrong role.
    assert_eq!(
        p.send_promise(vec![1]),
        Err(SessionError::CannotSend {
            session: ID,
            role: Role::Provider,
            msg: "Promise",
            state: "open"
        })
    );
    // Before the open and after the end.
    let mut c = opening(now);
    let err = c.send_promise(vec![1]).unwrap_err();
    assert_eq!(
        err,
        SessionError::CannotSend {
            session: ID,
            role: Role::Consumer,
            msg: "Promise",
            state: "opening"
        }
    );
    assert!(
        err.to_string()
            .contains("cannot send Promise while opening")
    );
    assert!(matches!(
        c.send_invoice(vec![1]),
        Err(SessionError::CannotSend { .. })
    ));
    assert_eq!(c.poll_transmit(), None);
    assert!(!c.is_closed());
    p.close(now, CloseReason::Provider);
    assert!(matches!(
        p.send_invoice(vec![1]),
        Err(SessionError::CannotSend {
            state: "closed",
            ..
        })
    ));
    assert_eq!(
        p.poll_transmit(),
        Some(ControlMsg::Close {
            reason: CloseReason::Provider
        })
    );
    assert_eq!(p.poll_transmit(), None);
}

#[test]
fn a_burst_of_records_leaves_only_the_newest_queued() {
    let now = Instant::now();
    let mut p = accepted(now);
    // A keepalive is waiting too: the newest invoice takes the first one's place.
    p.handle_timeout(now + secs(1));
    p.send_invoice(vec![0]).unwrap();
    p.handle_timeout(now + secs(2));
    for i in 1..10u8 {
        p.send_invoice(vec![i]).unwrap();
        assert!(p.transmit.len() <= 2);
    }
    assert_eq!(p.poll_transmit(), Some(ControlMsg::Keepalive));
    assert_eq!(
        p.poll_transmit(),
        Some(ControlMsg::Invoice { record: vec![9] })
    );
    assert_eq!(p.poll_transmit(), None);
    // Once sent, the next one queues afresh.
    p.send_invoice(vec![10]).unwrap();
    assert_eq!(
        p.poll_transmit(),
        Some(ControlMsg::Invoice { record: vec![10] })
    );

    let mut c = opening(now);
    c.handle_input(
        now,
        ControlMsg::Accept {
            session: ID,
            base: Amount::ZERO,
        },
    )
    .unwrap();
    for i in 0..10u8 {
        c.send_promise(vec![i]).unwrap();
    }
    assert_eq!(c.transmit.len(), 1);
    assert_eq!(
        c.poll_transmit(),
        Some(ControlMsg::Promise { record: vec![9] })
    );
    // Received ones likewise: a driver slow to poll finds only the newest invoice.
    for i in 0..10u8 {
        c.handle_input(now, ControlMsg::Invoice { record: vec![i] })
            .unwrap();
    }
    assert_eq!(c.poll_event(), Some(SessionEvent::Opened));
    assert_eq!(c.poll_event(), Some(SessionEvent::Invoice(vec![9])));
    assert_eq!(c.poll_event(), None);
}

#[test]
fn a_record_waiting_when_this_side_closes_goes_out_before_the_close() {
    let now = Instant::now();
    let mut p = accepted(now);
    p.handle_timeout(now + secs(1));
    p.send_invoice(vec![4; 40]).unwrap();
    p.close(now + secs(1), CloseReason::Unpaid);
    assert_eq!(
        p.poll_transmit(),
        Some(ControlMsg::Invoice {
            record: vec![4; 40]
        })
    );
    assert_eq!(
        p.poll_transmit(),
        Some(ControlMsg::Close {
            reason: CloseReason::Unpaid
        })
    );
    assert_eq!(p.poll_transmit(), None);

    // But when the peer closed, there is no one to send it to.
    let mut p = accepted(now);
    p.send_invoice(vec![4; 40]).unwrap();
    p.handle_input(
        now,
        ControlMsg::Close {
            reason: CloseReason::Overbilled,
        },
    )
    .unwrap();
    assert_eq!(p.poll_transmit(), None);
    assert_eq!(
        p.poll_event(),
        Some(SessionEvent::Closed {
            reason: CloseReason::Overbilled,
            by_peer: true
        })
    );
}

#[derive(Debug, Clone)]
enum Step {
    Input(ControlMsg),
    Timeout,
    Close(CloseReason),
    /// This side sends a payment record (of its own kind or not), of this many bytes.
    Record(usize),
    Poll,
}

fn any_msg() -> impl Strategy<Value = ControlMsg> {
    let id = prop_oneof![Just(ID), Just(OTHER)];
    prop_oneof![
        (id.clone(), any::<u64>()).prop_map(|(session, offer_seq)| ControlMsg::Open {
            session,
            offer_seq,
            price: price(),
            pay: None,
        }),
        (id.clone(), any::<u64>()).prop_map(|(session, base)| ControlMsg::Accept {
            session,
            base: Amount::from_nano(base)
        }),
        id.prop_map(|session| ControlMsg::Refuse {
            session,
            reason: SessionRefusal::AtCapacity
        }),
        Just(ControlMsg::Keepalive),
        Just(ControlMsg::Close {
            reason: CloseReason::Provider
        }),
        // Just over the limit sometimes.
        (0..=MAX_RECORD + 1).prop_map(|n| ControlMsg::Invoice { record: vec![1; n] }),
        (0..=MAX_RECORD + 1).prop_map(|n| ControlMsg::Promise { record: vec![2; n] }),
    ]
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any_msg().prop_map(Step::Input),
        3 => Just(Step::Timeout),
        1 => Just(Step::Close(CloseReason::Consumer)),
        2 => (0..=MAX_RECORD + 1).prop_map(Step::Record),
        3 => Just(Step::Poll),
    ]
}

proptest! {
    /// Whatever the peer sends and whenever: no panic, at most two lifecycle events (Opened
    /// first), payment records only in their direction, within bounds and while open, queues
    /// that never grow, a deadline exactly while not ended, and after the end at most the
    /// one final message.
    #[test]
    fn any_input_keeps_the_invariants(
        consumer in any::<bool>(),
        steps in prop::collection::vec((0u64..3000, any_step()), 0..80),
    ) {
        let start = Instant::now();
        let mut now = start;
        let config = SessionConfig::default();
        let mut s = if consumer {
            Session::consumer(now, ID, 1, price(), None, config)
        } else {
            let open = ControlMsg::Open { session: ID, offer_seq: 1, price: price(), pay: None };
            Session::provider(now, &open, Ok(()), Amount::ZERO, config).unwrap()
        };
        let mut events = Vec::new();
        let mut sent_after_end = Vec::new();
        let mut ended = false;
        for (advance, step) in steps {
            now += ms(advance);
            let was_open = matches!(s.state(), State::Open { .. });
            match step {
                Step::Input(m) => { let _ = s.handle_input(now, m); }
                Step::Timeout => s.handle_timeout(now),
                Step::Close(r) => s.close(now, r),
                Step::Record(n) => {
                    let record = vec![3; n];
                    let sent = if consumer {
                        s.send_promise(record.clone())
                    } else {
                        s.send_invoice(record.clone())
                    };
                    prop_assert_eq!(sent.is_ok(), was_open && n <= MAX_RECORD);
                    // The other kind is never this side's to send.
                    let wrong = if consumer { s.send_invoice(record) } else { s.send_promise(record) };
                    let is_cannot_send = matches!(wrong, Err(SessionError::CannotSend { .. }));
                    prop_assert!(is_cannot_send);
                }
                Step::Poll => {}
            }
            prop_assert!(s.transmit.len() <= 3);
            prop_assert!(s.events.len() <= 3);
            while let Some(m) = s.poll_transmit() {
                let theirs = if consumer {
                    matches!(m, ControlMsg::Invoice { .. })
                } else {
                    matches!(m, ControlMsg::Promise { .. })
                };
                prop_assert!(!theirs, "sent {:?}", m);
                if ended {
                    sent_after_end.push(m);
                }
            }
            while let Some(e) = s.poll_event() {
                match &e {
                    SessionEvent::Invoice(r) => {
                        prop_assert!(consumer && was_open && r.len() <= MAX_RECORD);
                    }
                    SessionEvent::Promise(r) => {
                        prop_assert!(!consumer && was_open && r.len() <= MAX_RECORD);
                    }
                    _ => events.push(e),
                }
            }
            prop_assert_eq!(s.poll_timeout().is_none(), s.is_closed());
            prop_assert!(s.duration(now) <= now - start);
            ended = s.is_closed();
        }
        prop_assert!(events.len() <= 2);
        if events.len() == 2 {
            prop_assert_eq!(&events[0], &SessionEvent::Opened);
        }
        prop_assert!(sent_after_end.is_empty(), "sent {:?} after the end", sent_after_end);
    }
}
