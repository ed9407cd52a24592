//! The session payment cores driven against each other on a virtual clock: properties of
//! the credit window and the tolerance, and deterministic simulations of cheating consumers
//! and providers. Everything runs in virtual time, in milliseconds of real time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde::Serialize;
use warren_pay::window::{self, MIB};
use warren_pay::{
    ChannelId, FeeBps, Invoice, InvoiceError, Payee, PayeeConfig, PayeeEvent, PayeeState,
    PayeeTerms, Payer, PayerConfig, PayerEvent, PayerState, PayerTerms, Promise, PromiseError,
    SettleState, SignedInvoice, SignedPromise, settle,
};
use warren_types::{Amount, Identity, NodeId, Price};

const SESSION: [u8; 16] = [7; 16];
const CHANNEL: ChannelId = ChannelId([4; 16]);
const TICK: Duration = Duration::from_millis(10);

fn provider() -> Identity {
    Identity::from_secret([1; 32])
}

fn consumer() -> Identity {
    Identity::from_secret([2; 32])
}

fn hub() -> NodeId {
    Identity::from_secret([3; 32]).node_id()
}

fn nano(n: u64) -> Amount {
    Amount::from_nano(n)
}

fn price(per_gib: u64, per_hour: u64) -> Price {
    Price {
        per_gib: nano(per_gib),
        per_hour: nano(per_hour),
    }
}

/// 1 WRN per GiB and 0.36 WRN per hour (0.1 milli-WRN per second).
fn wrn_per_gib() -> Price {
    price(1_000_000_000, 360_000_000)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn payee_terms(price: Price, base: Amount, escrow: Amount) -> PayeeTerms {
    PayeeTerms {
        session: SESSION,
        consumer: consumer().node_id(),
        hub: hub(),
        channel: CHANNEL,
        price,
        base,
        escrow_available: escrow,
    }
}

fn payer_terms(provider: NodeId, price: Price, base: Amount, escrow: Amount) -> PayerTerms {
    PayerTerms {
        session: SESSION,
        provider,
        hub: hub(),
        channel: CHANNEL,
        price,
        base,
        escrow_available: escrow,
    }
}

fn plenty() -> Amount {
    nano(u64::MAX / 4)
}

/// The most a step's increment and the slack of the clock can add beyond `W`.
fn w_cap(price: Price) -> Amount {
    window::credit_window(price, u64::MAX)
}

fn add(a: Amount, b: Amount) -> Amount {
    a.checked_add(b).expect("test amounts do not overflow")
}

/// One session: a provider's payee and a consumer's payer joined by a link that delays
/// control messages by `ctl_latency` and payload by `data_latency` (bytes down are counted
/// by the provider when sent and by the consumer when they arrive; bytes up are counted by
/// both when sent, which favours neither).
struct Pair {
    price: Price,
    provider_id: Identity,
    payee: Payee,
    payer: Payer,
    ctl_latency: Duration,
    data_latency: Duration,
    to_consumer: VecDeque<(Instant, Vec<u8>)>,
    to_provider: VecDeque<(Instant, Vec<u8>)>,
    data_down: VecDeque<(Instant, u64)>,
    p_up: u64,
    p_down: u64,
    c_down: u64,
    /// The consumer sends its promises (a cheat stops).
    consumer_pays: bool,
    /// A cheating provider adds this many bytes down to every invoice it sends.
    inflate_bytes: u64,
    payee_events: Vec<(Instant, PayeeEvent)>,
    payer_events: Vec<(Instant, PayerEvent)>,
    invoices_sent: Vec<(Instant, Amount)>,
    promises_received: Vec<SignedPromise>,
    /// The session ended (either side's event); nothing moves any more.
    ended: bool,
    /// The most any single increment of traffic cost.
    max_increment_cost: Amount,
    /// The highest `paid()` the provider counted at a moment it carried traffic.
    max_paid_while_carrying: Amount,
    paused_steps: u64,
}

impl Pair {
    #[allow(clippy::too_many_arguments)]
    fn new(
        start: Instant,
        price: Price,
        provider_id: Identity,
        base: Amount,
        consumer_escrow: Amount,
        provider_escrow: Amount,
        ctl_latency: Duration,
        data_latency: Duration,
    ) -> Self {
        let payee = Payee::new(
            start,
            payee_terms(price, base, provider_escrow),
            provider_id.clone(),
            PayeeConfig::default(),
        );
        // The consumer learns of the open one control latency later.
        let payer = Payer::new(
            start + ctl_latency,
            payer_terms(provider_id.node_id(), price, base, consumer_escrow),
            consumer(),
            PayerConfig::default(),
        );
        Pair {
            price,
            provider_id,
            payee,
            payer,
            ctl_latency,
            data_latency,
            to_consumer: VecDeque::new(),
            to_provider: VecDeque::new(),
            data_down: VecDeque::new(),
            p_up: 0,
            p_down: 0,
            c_down: 0,
            consumer_pays: true,
            inflate_bytes: 0,
            payee_events: Vec::new(),
            payer_events: Vec::new(),
            invoices_sent: Vec::new(),
            promises_received: Vec::new(),
            ended: false,
            max_increment_cost: Amount::ZERO,
            max_paid_while_carrying: Amount::ZERO,
            paused_steps: 0,
        }
    }

    /// Advances to `now` and offers `down`/`up` payload bytes, which the provider carries
    /// only while its core says so.
    fn step(&mut self, now: Instant, down: u64, up: u64) {
        if self.ended {
            return;
        }
        self.deliver(now);
        self.payee.handle_timeout(now);
        self.payer.handle_timeout(now);
        self.collect(now);
        if self.ended {
            return;
        }
        if self.payee.carry() {
            // The credit-window property, stepwise: with unpaid ≤ W when the provider
            // decided to carry, one increment adds at most its own cost.
            let w_before = self.payee.window();
            assert!(self.payee.unpaid() <= w_before);
            self.max_paid_while_carrying = self.max_paid_while_carrying.max(self.payee.paid());
            let inc = up.saturating_add(down);
            let inc_cost = self.price.cost(inc, Duration::ZERO);
            self.max_increment_cost = self.max_increment_cost.max(inc_cost);
            self.p_up += up;
            self.p_down += down;
            self.payee.on_traffic(now, self.p_up, self.p_down);
            assert!(
                self.payee.unpaid() <= add(w_before, inc_cost),
                "unpaid {} above W {} + increment {}",
                self.payee.unpaid(),
                w_before,
                inc_cost
            );
            if down > 0 {
                self.data_down
                    .push_back((now + self.data_latency, self.p_down));
            }
        } else {
            self.paused_steps += 1;
        }
        self.payer.on_traffic(now, self.p_up, self.c_down);
        self.pump(now);
        self.collect(now);
    }

    fn deliver(&mut self, now: Instant) {
        while let Some(&(at, down)) = self.data_down.front() {
            if at > now {
                break;
            }
            self.c_down = down;
            self.data_down.pop_front();
        }
        while self.to_consumer.front().is_some_and(|(at, _)| *at <= now) {
            let (_, bytes) = self.to_consumer.pop_front().unwrap();
            let invoice = SignedInvoice::from_bytes(&bytes).expect("invoice decodes");
            self.payer.on_traffic(now, self.p_up, self.c_down);
            self.payer
                .handle_invoice(now, &invoice)
                .expect("the provider's invoices are well formed");
        }
        while self.to_provider.front().is_some_and(|(at, _)| *at <= now) {
            let (_, bytes) = self.to_provider.pop_front().unwrap();
            let promise = SignedPromise::from_bytes(&bytes).expect("promise decodes");
            self.payee
                .handle_promise(now, &promise)
                .expect("the consumer's promises are valid and growing");
            self.promises_received.push(promise);
        }
    }

    fn pump(&mut self, now: Instant) {
        if let Some(invoice) = self.payee.poll_transmit() {
            let invoice = if self.inflate_bytes > 0 {
                let mut inv = invoice.verify().unwrap();
                inv.bytes_down += self.inflate_bytes;
                inv.cumulative = inv.computed_cost();
                SignedInvoice::sign(&inv, &self.provider_id).unwrap()
            } else {
                invoice
            };
            let amount = invoice.verify().unwrap().cumulative;
            self.invoices_sent.push((now, amount));
            self.to_consumer
                .push_back((now + self.ctl_latency, invoice.to_bytes()));
        }
        // A consumer who stops paying signs its promises and drops them.
        if let Some(promise) = self.payer.poll_transmit()
            && self.consumer_pays
        {
            self.to_provider
                .push_back((now + self.ctl_latency, promise.to_bytes()));
        }
    }

    fn collect(&mut self, now: Instant) {
        while let Some(e) = self.payee.poll_event() {
            self.payee_events.push((now, e));
            self.ended = true;
        }
        while let Some(e) = self.payer.poll_event() {
            if matches!(e, PayerEvent::Overbilled { .. }) {
                self.ended = true;
            }
            self.payer_events.push((now, e));
        }
    }

    fn ended_unpaid(&self) -> bool {
        self.payee_events
            .iter()
            .any(|(_, e)| matches!(e, PayeeEvent::Unpaid { .. }))
    }

    fn overbilled(&self) -> bool {
        self.payer_events
            .iter()
            .any(|(_, e)| matches!(e, PayerEvent::Overbilled { .. }))
    }
}

/// A bound on what a consumer can owe when the session ends unpaid: the window at its
/// largest, one increment, and the time billed through the pause and its grace.
fn unpaid_bound(pair: &Pair, extra_secs: u64) -> Amount {
    add(
        add(w_cap(pair.price), pair.max_increment_cost),
        pair.price.cost(0, Duration::from_secs(3 + extra_secs)),
    )
}

// ---------------------------------------------------------------------------------------
// Deterministic simulations.

#[test]
fn honest_session_is_paid_and_never_ends() {
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        nano(5_000),
        plenty(),
        plenty(),
        ms(20),
        ms(35),
    );
    let mut now = start;
    // 60 s: bursts, idle stretches and a fast stretch.
    for i in 0..6000u64 {
        now += TICK;
        let down = match (i / 500) % 4 {
            0 => 20 * 1024,
            1 => 0,
            2 => 300 * 1024,
            _ => (i % 7) * 4096,
        };
        pair.step(now, down, down / 20);
    }
    assert!(
        !pair.ended,
        "{:?} {:?}",
        pair.payee_events, pair.payer_events
    );
    assert!(pair.payer_events.is_empty());
    // Invoices came at least every second whenever something was owed.
    for w in pair.invoices_sent.windows(2) {
        assert!(w[1].0 - w[0].0 <= Duration::from_secs(1) + TICK);
    }
    // Let the last invoice round trip settle.
    for _ in 0..200 {
        now += TICK;
        pair.step(now, 0, 0);
    }
    let owed = pair.payee.owed();
    assert!(
        pair.payee.unpaid() <= pair.payee.window(),
        "{pair_unpaid}",
        pair_unpaid = pair.payee.unpaid()
    );
    assert_eq!(pair.payee.paid(), pair.payer.promised());
    assert!(pair.payee.paid() <= owed);
    // The promise the provider holds is cumulative from the base.
    let best = pair.payee.latest_promise().unwrap().verify().unwrap();
    assert_eq!(best.cumulative, add(nano(5_000), pair.payer.promised()));
}

#[test]
fn fast_session_pauses_for_payment_but_is_never_cut_off() {
    // 60 MiB/s with 20 ms control latency and payload trailing the invoices by 15 ms: the
    // window throttles the provider now and then, and the consumer's counters lag the
    // invoices; neither side ends the session.
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        Amount::ZERO,
        plenty(),
        plenty(),
        ms(20),
        ms(35),
    );
    let mut now = start;
    for _ in 0..2000 {
        now += TICK;
        pair.step(now, 600 * 1024, 10 * 1024);
    }
    assert!(
        !pair.ended,
        "{:?} {:?}",
        pair.payee_events, pair.payer_events
    );
    assert!(pair.payer_events.is_empty());
    // It moved most of the traffic offered (60 MiB/s × 20 s).
    assert!(pair.p_down > 800 * MIB, "{} MiB", pair.p_down / MIB);
}

#[test]
fn a_consumer_who_stops_paying_is_paused_then_cut_off() {
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        Amount::ZERO,
        plenty(),
        plenty(),
        ms(20),
        ms(20),
    );
    let mut now = start;
    let mut stopped_at = None;
    for i in 0..3000u64 {
        now += TICK;
        if i == 1000 {
            pair.consumer_pays = false;
            stopped_at = Some(now);
        }
        pair.step(now, 64 * 1024, 4 * 1024);
    }
    assert!(pair.ended_unpaid(), "{:?}", pair.payee_events);
    assert!(!pair.overbilled());
    let (ended_at, PayeeEvent::Unpaid { owed, paid }) = pair.payee_events[0];
    // Ended within a few seconds of the last promise: at most ~W of traffic, then the grace.
    let stopped_at = stopped_at.unwrap();
    assert!(
        ended_at - stopped_at < Duration::from_secs(6),
        "{:?}",
        ended_at - stopped_at
    );
    assert_eq!(pair.payee.state(), PayeeState::Unpaid);
    assert!(!pair.payee.carry());
    let unpaid = owed.saturating_sub(paid);
    assert!(unpaid <= unpaid_bound(&pair, 0), "unpaid {unpaid}");
    // The traffic carried after the last payment is what the window allowed: at 6.4 MiB/s
    // its 2 s are capped at 4 MiB.
    assert!(unpaid > Amount::ZERO);
}

#[test]
fn a_provider_who_inflates_invoices_is_refused_and_the_session_ends_overbilled() {
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        Amount::ZERO,
        plenty(),
        plenty(),
        ms(20),
        ms(20),
    );
    let mut now = start;
    let mut inflated_from = None;
    for i in 0..3000u64 {
        now += TICK;
        if i == 500 {
            // 3 MiB more than sent: above 2 % + 1 MiB + 2 s of the ~10 MiB carried.
            pair.inflate_bytes = 3 * MIB;
            inflated_from = Some(now);
        }
        pair.step(now, 20 * 1024, 1024);
        let t = now - start;
        // Whatever happens, nothing above the consumer's allowance is ever promised.
        assert!(pair.payer.promised() <= pair.payer.allowed(start + t));
    }
    assert!(pair.overbilled(), "{:?}", pair.payer_events);
    let (at, PayerEvent::Overbilled { invoiced, allowed }) = pair
        .payer_events
        .iter()
        .copied()
        .find(|(_, e)| matches!(e, PayerEvent::Overbilled { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(invoiced > allowed);
    assert_eq!(pair.payer.state(), PayerState::Overbilled);
    // Refused after the grace for counters to catch up, not at once.
    let waited = at - inflated_from.unwrap();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Everything before the inflation was paid; nothing after.
    let honest_billed = pair
        .invoices_sent
        .iter()
        .filter(|(t, _)| *t < inflated_from.unwrap())
        .map(|(_, a)| *a)
        .max()
        .unwrap();
    assert_eq!(pair.payer.promised(), honest_billed);
}

#[test]
fn a_small_inflation_within_the_tolerance_is_paid() {
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        Amount::ZERO,
        plenty(),
        plenty(),
        ms(20),
        ms(20),
    );
    pair.inflate_bytes = MIB / 2;
    let mut now = start;
    for _ in 0..2000 {
        now += TICK;
        pair.step(now, 50 * 1024, 1024);
    }
    assert!(!pair.ended, "{:?}", pair.payer_events);
    // The consumer paid the inflated invoices: the provider over-billed by at most the
    // tolerance.
    let over = pair
        .payer
        .promised()
        .saturating_sub(pair.payer.expected(now));
    assert!(over <= window::tolerance(pair.price, pair.payer.expected(now)));
    assert!(over > Amount::ZERO);
}

/// The hub as a number: one escrow, paid out in arrival order with the settlement
/// arithmetic every ledger uses; a promise beyond what is left marks the channel overdrawn.
struct HubModel {
    escrow_left: Amount,
    settled: [Amount; 2],
    overdrawn: bool,
    paid_total: Amount,
}

impl HubModel {
    fn settle(&mut self, who: usize, promise: &SignedPromise) -> Amount {
        let p = promise.verify().unwrap();
        let d = settle(
            SettleState {
                escrow_left: self.escrow_left,
                settled: self.settled[who],
            },
            p.cumulative,
            FeeBps::DEFAULT,
        );
        self.escrow_left = self.escrow_left.checked_sub(d.paid).unwrap();
        self.settled[who] = d.settled;
        self.paid_total = add(self.paid_total, d.paid);
        self.overdrawn |= d.overdrawn;
        d.paid
    }

    /// What the hub reports a provider can still be paid from the channel: what it already
    /// paid it plus what is left, or only what it paid once the channel is overdrawn.
    fn available_to(&self, who: usize) -> Amount {
        if self.overdrawn {
            self.settled[who]
        } else {
            add(self.settled[who], self.escrow_left)
        }
    }
}

#[test]
fn a_consumer_who_double_spends_its_escrow_across_two_providers() {
    let start = Instant::now();
    let price = wrn_per_gib();
    // An escrow worth 24 MiB; two sessions of 2 MiB/s each.
    let escrow = price.cost(24 * MIB, Duration::ZERO);
    let mut hub = HubModel {
        escrow_left: escrow,
        settled: [Amount::ZERO; 2],
        overdrawn: false,
        paid_total: Amount::ZERO,
    };
    // The cheat: each session is told it may spend the whole escrow.
    let ids = [provider(), Identity::from_secret([5; 32])];
    let mut pairs: Vec<Pair> = ids
        .iter()
        .map(|id| {
            Pair::new(
                start,
                price,
                id.clone(),
                Amount::ZERO,
                escrow,
                escrow,
                ms(20),
                ms(20),
            )
        })
        .collect();
    let mut max_available = [Amount::ZERO; 2];
    let mut now = start;
    let mut settlements = Vec::new();
    for i in 0..4000u64 {
        now += TICK;
        for pair in &mut pairs {
            pair.step(now, 20 * 1024, 1024);
        }
        // Each provider settles once a second, A on the second and B on the half second,
        // and then asks the hub what it can still be paid.
        for (who, pair) in pairs.iter_mut().enumerate() {
            if i % 100 == 50 * who as u64 {
                if let Some(p) = pair.payee.latest_promise().cloned() {
                    let paid = hub.settle(who, &p);
                    settlements.push((who, paid, hub.overdrawn));
                }
                let available = hub.available_to(who);
                max_available[who] = max_available[who].max(available);
                pair.payee.set_escrow_available(now, available);
            }
        }
    }
    // Both sessions were cut off as unpaid once the escrow was gone.
    for pair in &pairs {
        assert!(pair.ended_unpaid(), "{:?}", pair.payee_events);
    }
    // The consumer promised more than its escrow in total ...
    let promised = add(pairs[0].payer.promised(), pairs[1].payer.promised());
    assert!(promised > escrow, "promised {promised} of {escrow}");
    // ... the hub paid out exactly the escrow, in arrival order, and no more ...
    assert!(hub.overdrawn);
    assert_eq!(hub.paid_total, escrow);
    assert_eq!(hub.escrow_left, Amount::ZERO);
    let first_overdraw = settlements.iter().position(|s| s.2).unwrap();
    assert!(
        settlements[first_overdraw + 1..]
            .iter()
            .all(|s| s.1 == Amount::ZERO)
    );
    // ... and each provider gave the cheat at most W (plus one increment and the time of
    // the grace) beyond what it had counted as payable by the hub, which the hub's
    // figure capped.
    for (who, pair) in pairs.iter().enumerate() {
        let owed = pair.payee.owed();
        assert!(pair.max_paid_while_carrying <= max_available[who]);
        assert!(
            owed <= add(pair.max_paid_while_carrying, unpaid_bound(pair, 0)),
            "provider {who}: owed {owed}, counted paid {}",
            pair.max_paid_while_carrying
        );
        let received = hub.settled[who];
        let loss = owed.saturating_sub(received);
        // The loss beyond W is the part of the escrow the other provider settled first.
        let taken_by_other = pair.max_paid_while_carrying.saturating_sub(received);
        assert!(loss <= add(unpaid_bound(pair, 0), taken_by_other));
    }
}

#[test]
fn a_provider_replaying_a_promise_gains_nothing() {
    let start = Instant::now();
    let mut pair = Pair::new(
        start,
        wrn_per_gib(),
        provider(),
        Amount::ZERO,
        plenty(),
        plenty(),
        ms(20),
        ms(20),
    );
    let mut now = start;
    for _ in 0..500 {
        now += TICK;
        pair.step(now, 30 * 1024, 0);
    }
    assert!(pair.promises_received.len() >= 3);
    let paid = pair.payee.paid();
    for old in pair.promises_received.clone() {
        assert!(matches!(
            pair.payee.handle_promise(now, &old),
            Err(PromiseError::NotNewer { .. })
        ));
    }
    assert_eq!(pair.payee.paid(), paid);
    // At the hub, a promise already settled pays nothing the second time.
    let best = pair.payee.latest_promise().unwrap().verify().unwrap();
    let first = settle(
        SettleState {
            escrow_left: plenty(),
            settled: Amount::ZERO,
        },
        best.cumulative,
        FeeBps::DEFAULT,
    );
    let again = settle(
        SettleState {
            escrow_left: plenty().checked_sub(first.paid).unwrap(),
            settled: first.settled,
        },
        best.cumulative,
        FeeBps::DEFAULT,
    );
    assert_eq!(again.paid, Amount::ZERO);
}

// ---------------------------------------------------------------------------------------
// The provider's checks on promises.

fn signed_promise(consumer: &Identity, provider: NodeId, cumulative: Amount) -> SignedPromise {
    let p = Promise {
        hub: hub(),
        channel: CHANNEL,
        consumer: consumer.node_id(),
        provider,
        cumulative,
    };
    SignedPromise::sign(&p, consumer).unwrap()
}

/// The wire shape of a signed record, to forge one the API will not sign.
#[derive(Serialize)]
struct RawSigned {
    body: Vec<u8>,
    signature: Vec<u8>,
}

fn fresh_payee(price: Price, base: Amount, escrow: Amount) -> (Instant, Payee) {
    let now = Instant::now();
    let payee = Payee::new(
        now,
        payee_terms(price, base, escrow),
        provider(),
        PayeeConfig::default(),
    );
    (now, payee)
}

#[test]
fn promises_signed_by_another_key_or_for_another_party_are_refused() {
    let (now, mut payee) = fresh_payee(wrn_per_gib(), Amount::ZERO, plenty());
    let me = provider().node_id();
    // Signed by someone else while naming the consumer.
    let body = postcard::to_stdvec(&Promise {
        hub: hub(),
        channel: CHANNEL,
        consumer: consumer().node_id(),
        provider: me,
        cumulative: nano(1000),
    })
    .unwrap();
    let mut msg = b"warren/promise/v1\0".to_vec();
    msg.extend_from_slice(&body);
    let signature = Identity::from_secret([66; 32]).sign(&msg).to_vec();
    let forged =
        SignedPromise::from_bytes(&postcard::to_stdvec(&RawSigned { body, signature }).unwrap())
            .unwrap();
    assert!(matches!(
        payee.handle_promise(now, &forged),
        Err(PromiseError::Record(warren_pay::PayError::BadSignature))
    ));
    // A valid promise from another consumer.
    let stranger = Identity::from_secret([67; 32]);
    assert_eq!(
        payee.handle_promise(now, &signed_promise(&stranger, me, nano(1000))),
        Err(PromiseError::WrongParty { field: "consumer" })
    );
    // To another provider.
    let other = Identity::from_secret([68; 32]).node_id();
    assert_eq!(
        payee.handle_promise(now, &signed_promise(&consumer(), other, nano(1000))),
        Err(PromiseError::WrongParty { field: "provider" })
    );
    // On another hub or channel.
    let c = consumer();
    let wrong_hub = Promise {
        hub: other,
        channel: CHANNEL,
        consumer: c.node_id(),
        provider: me,
        cumulative: nano(1000),
    };
    assert_eq!(
        payee.handle_promise(now, &SignedPromise::sign(&wrong_hub, &c).unwrap()),
        Err(PromiseError::WrongParty { field: "hub" })
    );
    let wrong_channel = Promise {
        hub: hub(),
        channel: ChannelId([9; 16]),
        ..wrong_hub
    };
    assert_eq!(
        payee.handle_promise(now, &SignedPromise::sign(&wrong_channel, &c).unwrap()),
        Err(PromiseError::WrongParty { field: "channel" })
    );
    assert_eq!(payee.paid(), Amount::ZERO);
    assert!(payee.latest_promise().is_none());
    // And the right one counts.
    payee
        .handle_promise(now, &signed_promise(&c, me, nano(1000)))
        .unwrap();
    assert_eq!(payee.paid(), nano(1000));
}

#[test]
fn promises_count_from_the_base_and_only_up_to_the_escrow() {
    let (now, mut payee) = fresh_payee(wrn_per_gib(), nano(10_000), nano(500));
    let me = provider().node_id();
    // A promise at or below what the provider held before the session is no payment.
    assert!(matches!(
        payee.handle_promise(now, &signed_promise(&consumer(), me, nano(10_000))),
        Err(PromiseError::NotNewer { .. })
    ));
    payee
        .handle_promise(now, &signed_promise(&consumer(), me, nano(10_300)))
        .unwrap();
    assert_eq!(payee.paid(), nano(300));
    payee
        .handle_promise(now, &signed_promise(&consumer(), me, nano(11_000)))
        .unwrap();
    // The hub can pay only 500 more: that is all that counts.
    assert_eq!(payee.paid(), nano(500));
    payee.set_escrow_available(now, nano(2_000));
    assert_eq!(payee.paid(), nano(1_000));
}

#[test]
fn invoices_go_out_every_second_and_every_4_mib() {
    let config = PayeeConfig {
        // Make the byte trigger the 4 MiB rule alone.
        invoice_bytes: u64::MAX,
        ..PayeeConfig::default()
    };
    let start = Instant::now();
    let mut payee = Payee::new(
        start,
        payee_terms(wrn_per_gib(), Amount::ZERO, plenty()),
        provider(),
        config,
    );
    payee.on_traffic(start + ms(5), 0, 4 * MIB - 1);
    assert!(payee.poll_transmit().is_none());
    payee.on_traffic(start + ms(6), 0, 4 * MIB);
    let inv = payee
        .poll_transmit()
        .expect("4 MiB went by")
        .verify()
        .unwrap();
    assert_eq!(inv.seq, 1);
    assert_eq!(inv.bytes_down, 4 * MIB);
    assert_eq!(inv.cumulative, inv.computed_cost());
    // Nothing new: no invoice even when the second passes, until time itself costs.
    assert_eq!(payee.poll_timeout(), Some(start + ms(1006)));
    payee.handle_timeout(start + ms(1006));
    let inv = payee
        .poll_transmit()
        .expect("a second went by and time costs");
    let inv = inv.verify().unwrap();
    assert_eq!((inv.seq, inv.duration_secs), (2, 1));
    let me = provider().node_id();
    payee
        .handle_promise(
            start + ms(1006),
            &signed_promise(&consumer(), me, inv.cumulative),
        )
        .unwrap();
    // Per-hour price alone: one invoice a second, each paid.
    let mut t = start + ms(1006);
    for seq in 3..10 {
        t = payee.poll_timeout().unwrap();
        payee.handle_timeout(t);
        let inv = payee.poll_transmit().unwrap().verify().unwrap();
        assert_eq!(inv.seq, seq);
        payee
            .handle_promise(t, &signed_promise(&consumer(), me, inv.cumulative))
            .unwrap();
        assert!(payee.carry());
    }
    assert_eq!(t, start + ms(8006));
}

#[test]
fn a_free_offer_needs_no_payment_and_always_carries() {
    let free = Price::default();
    assert!(window::is_free(free));
    let start = Instant::now();
    let mut payee = Payee::new(
        start,
        payee_terms(free, Amount::ZERO, Amount::ZERO),
        provider(),
        PayeeConfig::default(),
    );
    let mut payer = Payer::new(
        start,
        payer_terms(provider().node_id(), free, Amount::ZERO, Amount::ZERO),
        consumer(),
        PayerConfig::default(),
    );
    assert_eq!(payee.poll_timeout(), None);
    let mut total = 0;
    for i in 1..=1000u64 {
        let now = start + ms(i * 100);
        total += 10 * MIB;
        payee.on_traffic(now, total / 10, total);
        payer.on_traffic(now, total / 10, total);
        assert!(payee.carry());
        assert!(payee.poll_transmit().is_none());
        assert!(payee.poll_event().is_none());
        assert_eq!(payer.poll_timeout(), None);
    }
    assert_eq!(payee.owed(), Amount::ZERO);
    assert_eq!(payee.state(), PayeeState::Open);
    assert!(payer.poll_transmit().is_none());
    // An invoice for more than zero at a zero price is over-billing.
    let now = start + Duration::from_secs(101);
    let inv = Invoice {
        session: SESSION,
        provider: provider().node_id(),
        consumer: consumer().node_id(),
        seq: 1,
        bytes_up: 0,
        bytes_down: 1,
        duration_secs: 1,
        price: price(1, 0),
        cumulative: nano(1),
    };
    assert_eq!(
        payer.handle_invoice(now, &SignedInvoice::sign(&inv, &provider()).unwrap()),
        Err(InvoiceError::WrongPrice)
    );
}

// ---------------------------------------------------------------------------------------
// The consumer's checks on invoices.

fn invoice(seq: u64, up: u64, down: u64, secs: u64, price: Price) -> Invoice {
    let mut inv = Invoice {
        session: SESSION,
        provider: provider().node_id(),
        consumer: consumer().node_id(),
        seq,
        bytes_up: up,
        bytes_down: down,
        duration_secs: secs,
        price,
        cumulative: Amount::ZERO,
    };
    inv.cumulative = inv.computed_cost();
    inv
}

fn fresh_payer(price: Price, base: Amount, escrow: Amount) -> (Instant, Payer) {
    let now = Instant::now();
    let payer = Payer::new(
        now,
        payer_terms(provider().node_id(), price, base, escrow),
        consumer(),
        PayerConfig::default(),
    );
    (now, payer)
}

#[test]
fn malformed_invoices_are_errors_and_change_nothing() {
    let p = wrn_per_gib();
    let (start, mut payer) = fresh_payer(p, Amount::ZERO, plenty());
    let now = start + Duration::from_secs(10);
    payer.on_traffic(now, MIB, 10 * MIB);
    let sign = |inv: &Invoice| SignedInvoice::sign(inv, &provider()).unwrap();
    payer
        .handle_invoice(now, &sign(&invoice(5, MIB, 10 * MIB, 10, p)))
        .unwrap();
    assert!(payer.poll_transmit().is_some());
    let before = payer.promised();
    // Replayed or older.
    assert!(matches!(
        payer.handle_invoice(now, &sign(&invoice(5, MIB, 10 * MIB, 10, p))),
        Err(InvoiceError::Stale { got: 5, last: 5 })
    ));
    // Going down.
    assert!(matches!(
        payer.handle_invoice(now, &sign(&invoice(6, MIB, 9 * MIB, 10, p))),
        Err(InvoiceError::Decreasing { .. })
    ));
    // Billing something other than its own counters.
    let mut lying = invoice(7, MIB, 10 * MIB, 10, p);
    lying.cumulative = nano(lying.cumulative.nano() + 1);
    assert!(matches!(
        payer.handle_invoice(now, &sign(&lying)),
        Err(InvoiceError::Inconsistent { .. })
    ));
    // For another session, or signed by another provider.
    let mut other = invoice(8, MIB, 10 * MIB, 10, p);
    other.session = [8; 16];
    assert_eq!(
        payer.handle_invoice(now, &sign(&other)),
        Err(InvoiceError::WrongParty { field: "session" })
    );
    let impostor = Identity::from_secret([70; 32]);
    let mut theirs = invoice(8, MIB, 10 * MIB, 10, p);
    theirs.provider = impostor.node_id();
    assert_eq!(
        payer.handle_invoice(now, &SignedInvoice::sign(&theirs, &impostor).unwrap()),
        Err(InvoiceError::WrongParty { field: "provider" })
    );
    assert_eq!(payer.promised(), before);
    assert!(payer.poll_transmit().is_none());
    assert!(payer.poll_event().is_none());
}

#[test]
fn the_consumer_never_promises_beyond_its_escrow() {
    let p = wrn_per_gib();
    let escrow = p.cost(3 * MIB, Duration::ZERO);
    let (start, mut payer) = fresh_payer(p, nano(777), escrow);
    let now = start + Duration::from_secs(5);
    payer.on_traffic(now, 0, 5 * MIB);
    let inv = invoice(1, 0, 5 * MIB, 5, p);
    payer
        .handle_invoice(now, &SignedInvoice::sign(&inv, &provider()).unwrap())
        .unwrap();
    let promise = payer.poll_transmit().unwrap().verify().unwrap();
    assert_eq!(promise.cumulative, add(nano(777), escrow));
    assert_eq!(
        payer.poll_event(),
        Some(PayerEvent::EscrowExhausted {
            accepted: inv.cumulative,
            available: escrow
        })
    );
    // More invoices: no promise beyond the escrow, and the event is not repeated.
    let inv2 = invoice(2, 0, 5 * MIB, 6, p);
    payer
        .handle_invoice(now, &SignedInvoice::sign(&inv2, &provider()).unwrap())
        .unwrap();
    assert!(payer.poll_transmit().is_none());
    assert!(payer.poll_event().is_none());
    // A top-up pays what was accepted at once.
    payer.set_escrow_available(now, plenty());
    let promise = payer.poll_transmit().unwrap().verify().unwrap();
    assert_eq!(promise.cumulative, add(nano(777), inv2.cumulative));
}

// ---------------------------------------------------------------------------------------
// Properties.

fn any_price() -> impl Strategy<Value = Price> {
    // Up to 10 WRN per GiB and 10 WRN per hour; at least something per GiB so traffic costs.
    (1u64..=10_000_000_000, 0u64..=10_000_000_000).prop_map(|(g, h)| price(g, h))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A consumer who stops paying at a random moment gets at most `W` beyond what it paid
    /// (plus the one increment in flight when the provider last said "carry", and the time
    /// billed through the pause): the stepwise bound is asserted inside `Pair::step`.
    #[test]
    fn a_consumer_who_stops_paying_gets_at_most_the_window(
        price in any_price(),
        steps in prop::collection::vec((1u64..1500, 0u64..(6 * MIB), 0u64..MIB), 1..150),
        stop_frac in 0.0f64..1.0,
        latency in 0u64..100,
    ) {
        let start = Instant::now();
        let mut pair = Pair::new(
            start, price, provider(), Amount::ZERO, plenty(), plenty(), ms(latency), ms(latency),
        );
        let stop_at = (steps.len() as f64 * stop_frac) as usize;
        let mut now = start;
        let max_dt = steps.iter().map(|s| s.0).max().unwrap_or(0);
        for (i, &(dt, down, up)) in steps.iter().enumerate() {
            if i == stop_at {
                pair.consumer_pays = false;
            }
            now += ms(dt);
            pair.step(now, down, up);
            if pair.ended {
                prop_assert!(pair.ended_unpaid());
                prop_assert!(!pair.payee.carry());
            }
            // Globally: the debt never passes the window at its largest, one increment, and
            // the time billed while paused (the grace, plus one step of the virtual clock).
            let bound = unpaid_bound(&pair, max_dt.div_ceil(1000));
            prop_assert!(pair.payee.unpaid() <= bound, "unpaid {} > {}", pair.payee.unpaid(), bound);
        }
        prop_assert!(!pair.overbilled());
    }

    /// An honest provider's invoices are all accepted at once by an honest consumer whose
    /// counters trail by up to 1 MiB of bytes in flight and whose clock started up to
    /// 500 ms later, with invoices taking up to 500 ms to arrive.
    #[test]
    fn honest_invoices_are_always_accepted(
        price in any_price(),
        steps in prop::collection::vec((0u64..2000, 0u64..(2 * MIB), 0u64..(8 * MIB), 0u64..=MIB), 1..80),
        open_delay in 0u64..500,
        invoice_delay in 0u64..500,
    ) {
        let p0 = Instant::now();
        let mut payee = Payee::new(p0, payee_terms(price, nano(42), plenty()), provider(), PayeeConfig::default());
        let mut payer = Payer::new(
            p0 + ms(open_delay),
            payer_terms(provider().node_id(), price, nano(42), plenty()),
            consumer(),
            PayerConfig::default(),
        );
        let (mut t, mut up, mut down, mut c_down) = (p0, 0u64, 0u64, 0u64);
        let mut payer_now = p0 + ms(open_delay);
        for &(dt, du, dd, lag) in &steps {
            t += ms(dt);
            up += du;
            down += dd;
            payee.on_traffic(t, up, down);
            payee.handle_timeout(t);
            if let Some(inv) = payee.poll_transmit() {
                let billed = inv.verify().unwrap();
                payer_now = payer_now.max(t + ms(invoice_delay));
                c_down = c_down.max(down.saturating_sub(lag));
                payer.on_traffic(payer_now, up, c_down);
                payer.handle_invoice(payer_now, &inv).unwrap();
                prop_assert!(payer.waiting_invoice().is_none(), "refused {:?}", billed);
                prop_assert_eq!(payer.accepted(), billed.cumulative);
                let promise = payer.poll_transmit().unwrap();
                prop_assert_eq!(promise.verify().unwrap().cumulative, add(nano(42), billed.cumulative));
                payee.handle_promise(t, &promise).unwrap();
                prop_assert_eq!(payee.paid(), billed.cumulative);
            }
        }
        prop_assert!(payer.poll_event().is_none());
    }

    /// Whatever an invoice inflates (bytes or seconds), it is paid if and only if it is
    /// within the tolerance of what the consumer counted: a provider over-bills by at most
    /// the tolerance, an inflation by up to 1 MiB and 2 s is always paid, and one by more
    /// than the tolerance is refused and ends the session.
    #[test]
    fn inflated_invoices_are_refused_beyond_the_tolerance(
        price in any_price(),
        up in 0u64..(1 << 34),
        down in 0u64..(1 << 36),
        secs in 0u64..100_000,
        extra_bytes in prop_oneof![0u64..=MIB, 0u64..(1 << 34)],
        extra_secs in prop_oneof![0u64..=2, 0u64..10_000],
    ) {
        let (start, mut payer) = fresh_payer(price, Amount::ZERO, plenty());
        let now = start + Duration::from_secs(secs) + ms(500);
        payer.on_traffic(now, up, down);
        let honest = payer.expected(now);
        prop_assert_eq!(honest, window::session_cost(price, up, down, secs));
        let inv = invoice(1, up, down + extra_bytes, secs + extra_secs, price);
        payer.handle_invoice(now, &SignedInvoice::sign(&inv, &provider()).unwrap()).unwrap();
        let tolerance = window::tolerance(price, honest);
        let within = inv.cumulative.saturating_sub(honest) <= tolerance;
        if extra_bytes <= MIB && extra_secs <= 2 {
            prop_assert!(within);
        }
        if within {
            let promise = payer.poll_transmit().unwrap().verify().unwrap();
            prop_assert_eq!(promise.cumulative, inv.cumulative);
        } else {
            // Not paid; it waits out the grace, during which the consumer's own clock
            // advances (its counters here do not).
            prop_assert!(payer.poll_transmit().is_none());
            let deadline = payer.poll_timeout().unwrap();
            prop_assert_eq!(deadline, now + PayerConfig::default().overbill_grace);
            payer.handle_timeout(deadline);
            let expected_then = payer.expected(deadline);
            let allowed_then = window::allowed(price, expected_then);
            if inv.cumulative <= allowed_then {
                let promise = payer.poll_transmit().unwrap().verify().unwrap();
                prop_assert_eq!(promise.cumulative, inv.cumulative);
            } else {
                prop_assert_eq!(
                    payer.poll_event(),
                    Some(PayerEvent::Overbilled { invoiced: inv.cumulative, allowed: allowed_then })
                );
                prop_assert_eq!(payer.state(), PayerState::Overbilled);
                prop_assert!(payer.poll_transmit().is_none());
                prop_assert_eq!(payer.promised(), Amount::ZERO);
            }
            // Over-billing is bounded by the tolerance at the time of payment.
            prop_assert!(
                payer.promised().saturating_sub(expected_then)
                    <= window::tolerance(price, expected_then)
            );
            return Ok(());
        }
        prop_assert!(payer.promised().saturating_sub(honest) <= tolerance);
    }

    /// Replayed or older promises never raise what the provider counts as paid; the paid
    /// amount is always the best promise over the base, capped by the escrow.
    #[test]
    fn replayed_or_older_promises_never_count(
        amounts in prop::collection::vec(0u64..1_000_000, 1..40),
        base in 0u64..1000,
        escrow in 0u64..2_000_000,
    ) {
        let (now, mut payee) = fresh_payee(wrn_per_gib(), nano(base), nano(escrow));
        let me = provider().node_id();
        let mut best = base;
        let mut seen: Vec<SignedPromise> = Vec::new();
        for &a in &amounts {
            let sp = signed_promise(&consumer(), me, nano(a));
            let r = payee.handle_promise(now, &sp);
            if a > best {
                prop_assert!(r.is_ok());
                best = a;
            } else {
                let is_not_newer = matches!(r, Err(PromiseError::NotNewer { .. }));
                prop_assert!(is_not_newer);
            }
            seen.push(sp);
            let paid = payee.paid();
            prop_assert_eq!(paid, nano((best - base).min(escrow)));
            // Replaying the last few changes nothing.
            for old in seen.iter().rev().take(3) {
                let replayed = payee.handle_promise(now, old);
                let is_not_newer = matches!(replayed, Err(PromiseError::NotNewer { .. }));
                prop_assert!(is_not_newer);
            }
            prop_assert_eq!(payee.paid(), paid);
        }
        // Nor does replaying them all at the end.
        let paid = payee.paid();
        for old in &seen {
            prop_assert!(payee.handle_promise(now, old).is_err());
        }
        prop_assert_eq!(payee.paid(), paid);
    }
}

#[test]
fn the_byte_limit_holds_a_consumer_that_never_pays_to_the_largest_window() {
    let p = price(1_000_000_000, 0);
    let (start, mut payee) = fresh_payee(p, Amount::ZERO, plenty());
    let w_max = window::credit_window(p, window::WINDOW_MAX_BYTES);
    let limit = payee.byte_limit();
    assert_eq!(limit, window::bytes_within(p, w_max, 0));
    assert!((4 * MIB - 8..=4 * MIB + 8).contains(&limit), "{limit}");
    // A flow that reads up to the gate never owes more than W_max.
    payee.on_traffic(start + ms(100), limit, 0);
    assert!(payee.unpaid() <= w_max);
    // A promise for the first MiB moves the gate by a MiB.
    let one_mib = window::session_cost(p, MIB, 0, 0);
    payee
        .handle_promise(
            start + ms(150),
            &signed_promise(&consumer(), provider().node_id(), one_mib),
        )
        .unwrap();
    let moved = payee.byte_limit();
    assert!(
        moved >= limit + MIB - 8 && moved <= limit + MIB + 8,
        "{moved}"
    );
    // Paused (owed past the window at the current rate) means no byte more.
    let (start, mut slow) = fresh_payee(wrn_per_gib(), Amount::ZERO, plenty());
    slow.on_traffic(start + Duration::from_secs(30), 3 * MIB, 0);
    assert!(!slow.carry());
    assert_eq!(slow.byte_limit(), 3 * MIB);
    // Bytes at no price are never gated by the limit.
    let (_, free) = fresh_payee(price(0, 360_000_000), Amount::ZERO, plenty());
    assert_eq!(free.byte_limit(), u64::MAX);
}
