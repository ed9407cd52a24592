//! The provider's payment core for one session, without I/O: it bills the consumer with
//! signed cumulative invoices, checks the promises that come back, and says whether to keep
//! carrying traffic.
//!
//! The driver feeds it the session's cumulative payload counters, the consumer's promises
//! and the escrow figure from the hub; it sends what [`poll_transmit`](Payee::poll_transmit)
//! yields to the consumer, carries traffic only while [`carry`](Payee::carry) is true, and
//! ends the session with reason "unpaid" on [`PayeeEvent::Unpaid`]. The core holds the
//! provider's [`Identity`] to sign invoices itself.
//!
//! **Invoices.** Each invoice bills `session_cost(up, down, secs)` with `secs` the whole
//! seconds since [`Payee::new`] (see [`crate::window`]). One is issued, when there is
//! something new to bill (the cost grew since the last invoice), as soon as any of these
//! holds:
//! - [`PayeeConfig::invoice_interval`] (1 s) passed since the last invoice;
//! - 4 MiB of payload went by since the last invoice ([`MAX_INVOICE_GAP_BYTES`]);
//! - [`PayeeConfig::invoice_bytes`] (1 MiB) went by, or traffic is paused, and
//!   [`PayeeConfig::min_invoice_gap`] (50 ms) passed since the last invoice.
//!
//! Billing at a quarter of the 4 MiB window keeps an honest consumer's promise for one
//! invoice arriving before the window fills; the gap keeps a fast session to about 20
//! invoices a second (the 4 MiB rule overrides it, as the protocol requires). An invoice
//! not yet polled is replaced by a newer one: they are cumulative, so only the latest
//! matters and nothing queues up.
//!
//! **Promises.** A promise counts if its signature verifies, it names this consumer, this
//! provider, the session's hub and channel, and its cumulative amount is above the best
//! one held (promises are cumulative per (channel, provider) across sessions). Anything
//! else is an error and changes nothing; replays and older promises are
//! [`PromiseError::NotNewer`]. What this session has been paid is
//!
//! ```text
//! paid = min(best.cumulative − base, escrow_available)
//! ```
//!
//! where `base` is what the provider already held before the session and `escrow_available`
//! is what the hub can still pay this provider from the channel beyond `base`.
//!
//! **Carrying.** `carry()` is `owed − paid ≤ W` (see [`crate::window`]), re-evaluated on
//! every call that takes `now`. Once it has been false for [`PayeeConfig::grace`] (2 s)
//! without a promise covering the debt, the core emits [`PayeeEvent::Unpaid`] and ends.
//!
//! **Free offers.** At a zero price nothing is ever owed: no invoice is issued, no promise
//! is needed and `carry()` is always true. A node may also skip the core altogether.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use warren_types::{Amount, Identity, NodeId, Price};

use crate::records::{ChannelId, Invoice, PayError, SignedInvoice, SignedPromise};
use crate::window::{self, MIB, TrafficWindow, reached};

/// An invoice goes out at the latest after this many payload bytes (SPEC §3: "at least every
/// second or every 4 MiB").
pub const MAX_INVOICE_GAP_BYTES: u64 = 4 * MIB;

/// What the provider agreed with this consumer for this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayeeTerms {
    /// The session's id (the 16 bytes of `warren_session::SessionId`).
    pub session: [u8; 16],
    pub consumer: NodeId,
    /// The hub holding the consumer's escrow, and the channel there.
    pub hub: NodeId,
    pub channel: ChannelId,
    pub price: Price,
    /// The highest cumulative promise the provider already held for (channel, provider)
    /// before this session (zero for a first session).
    pub base: Amount,
    /// What the hub can pay this provider from the channel beyond `base`: the channel's
    /// balance at the hub minus what the provider holds unsettled on it. Update it with
    /// [`Payee::set_escrow_available`].
    pub escrow_available: Amount,
}

/// Timers of the provider's payment core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayeeConfig {
    /// Invoice at least this often while there is something new to bill.
    pub invoice_interval: Duration,
    /// Invoice after this many payload bytes (both directions), subject to `min_invoice_gap`.
    pub invoice_bytes: u64,
    /// Do not invoice more often than this, unless 4 MiB went by.
    pub min_invoice_gap: Duration,
    /// End the session as unpaid after traffic was paused this long.
    pub grace: Duration,
}

impl Default for PayeeConfig {
    fn default() -> Self {
        PayeeConfig {
            invoice_interval: Duration::from_secs(1),
            invoice_bytes: MIB,
            min_invoice_gap: Duration::from_millis(50),
            grace: Duration::from_secs(2),
        }
    }
}

/// Where the provider's side of the payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayeeState {
    /// Billing and carrying (or paused: see [`Payee::carry`]).
    Open,
    /// The consumer left a debt above the window for longer than the grace; traffic stays
    /// stopped. Promises are still accepted (they are still worth settling).
    Unpaid,
}

/// What the driver should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayeeEvent {
    /// End the session with reason "unpaid": the consumer owed `owed` and had paid `paid`
    /// (both for this session only) when the grace ran out.
    Unpaid { owed: Amount, paid: Amount },
}

/// Why a promise did not count. None of these changes what has been paid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromiseError {
    #[error("promise is not a valid signed record: {0}")]
    Record(#[from] PayError),
    #[error("promise names the wrong {field} for this session")]
    WrongParty { field: &'static str },
    #[error("promise for {got} is not above the {have} already held (a replay or an older one)")]
    NotNewer { got: Amount, have: Amount },
}

/// At most one terminal event; the cap only makes the bound explicit.
const MAX_EVENTS: usize = 2;

/// The provider's payment core for one session. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Payee {
    identity: Identity,
    provider: NodeId,
    terms: PayeeTerms,
    config: PayeeConfig,
    state: PayeeState,
    opened: Instant,
    up: u64,
    down: u64,
    traffic: TrafficWindow,
    // Billing.
    seq: u64,
    last_invoice_at: Instant,
    next_tick: Instant,
    invoiced: Amount,
    invoiced_bytes: u64,
    outgoing: Option<SignedInvoice>,
    // Payment.
    best: Option<SignedPromise>,
    best_cumulative: Amount,
    escrow_available: Amount,
    // Carrying, as of the last evaluation.
    owed: Amount,
    window: Amount,
    carrying: bool,
    paused_since: Option<Instant>,
    /// Whole seconds of the session as of the last evaluation.
    secs_at_update: u64,
    events: VecDeque<PayeeEvent>,
}

impl Payee {
    /// Starts billing a session that opened at `now`. `provider` signs the invoices; its
    /// node id is the provider the promises must name.
    pub fn new(now: Instant, terms: PayeeTerms, provider: Identity, config: PayeeConfig) -> Self {
        let best_cumulative = terms.base;
        let escrow_available = terms.escrow_available;
        let mut payee = Payee {
            provider: provider.node_id(),
            identity: provider,
            terms,
            config,
            state: PayeeState::Open,
            opened: now,
            up: 0,
            down: 0,
            traffic: TrafficWindow::new(now),
            seq: 0,
            last_invoice_at: now,
            next_tick: now.checked_add(config.invoice_interval).unwrap_or(now),
            invoiced: Amount::ZERO,
            invoiced_bytes: 0,
            outgoing: None,
            best: None,
            best_cumulative,
            escrow_available,
            owed: Amount::ZERO,
            window: Amount::ZERO,
            carrying: true,
            paused_since: None,
            secs_at_update: 0,
            events: VecDeque::with_capacity(MAX_EVENTS),
        };
        payee.update(now);
        payee
    }

    /// Feeds the session's cumulative payload counters (consumer → exit, exit → consumer).
    /// Each only grows; a lower value than one already seen is ignored. Check
    /// [`carry`](Self::carry) afterwards.
    pub fn on_traffic(&mut self, now: Instant, up: u64, down: u64) {
        self.up = self.up.max(up);
        self.down = self.down.max(down);
        self.traffic.record(now, self.total());
        self.update(now);
    }

    /// Feeds a promise from the consumer. On `Ok` it is the best promise held (see
    /// [`latest_promise`](Self::latest_promise)), the one to settle at the hub. Errors
    /// change nothing; a [`NotNewer`](PromiseError::NotNewer) may simply be ignored, the
    /// others mean the consumer broke the protocol.
    pub fn handle_promise(
        &mut self,
        now: Instant,
        signed: &SignedPromise,
    ) -> Result<(), PromiseError> {
        let promise = signed.verify()?;
        let wrong = |field| Err(PromiseError::WrongParty { field });
        if promise.consumer != self.terms.consumer {
            return wrong("consumer");
        }
        if promise.provider != self.provider {
            return wrong("provider");
        }
        if promise.hub != self.terms.hub {
            return wrong("hub");
        }
        if promise.channel != self.terms.channel {
            return wrong("channel");
        }
        if promise.cumulative <= self.best_cumulative {
            return Err(PromiseError::NotNewer {
                got: promise.cumulative,
                have: self.best_cumulative,
            });
        }
        self.best_cumulative = promise.cumulative;
        self.best = Some(signed.clone());
        self.update(now);
        Ok(())
    }

    /// Updates what the hub can pay this provider from the channel beyond `base` (see
    /// [`PayeeTerms::escrow_available`]). Zero once the hub reports the channel overdrawn.
    pub fn set_escrow_available(&mut self, now: Instant, available: Amount) {
        self.escrow_available = available;
        self.update(now);
    }

    /// Call when the deadline from [`poll_timeout`](Self::poll_timeout) has passed (calling
    /// it at other times just re-evaluates).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.update(now);
    }

    /// The next invoice to send. At most one waits: a newer one replaces it.
    pub fn poll_transmit(&mut self) -> Option<SignedInvoice> {
        self.outgoing.take()
    }

    pub fn poll_event(&mut self) -> Option<PayeeEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None` when nothing is
    /// timed (a free offer, or after the session ended unpaid).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != PayeeState::Open || window::is_free(self.terms.price) {
            return None;
        }
        let mut next = self.next_tick;
        if self.early_invoice_wanted()
            && let Some(at) = self
                .last_invoice_at
                .checked_add(self.config.min_invoice_gap)
        {
            next = next.min(at);
        }
        if let Some(at) = self
            .paused_since
            .and_then(|since| since.checked_add(self.config.grace))
        {
            next = next.min(at);
        }
        Some(next)
    }

    /// Whether to carry the consumer's traffic: false while the unpaid amount is above the
    /// credit window, and for good once the session ended unpaid.
    pub fn carry(&self) -> bool {
        self.carrying
    }

    pub fn state(&self) -> PayeeState {
        self.state
    }

    /// What the session has cost so far, as of the last call that took `now`.
    pub fn owed(&self) -> Amount {
        self.owed
    }

    /// What valid promises cover of this session, capped by the escrow available.
    pub fn paid(&self) -> Amount {
        self.best_cumulative
            .saturating_sub(self.terms.base)
            .min(self.escrow_available)
    }

    /// `owed − paid` (zero when paid ahead).
    pub fn unpaid(&self) -> Amount {
        self.owed.saturating_sub(self.paid())
    }

    /// The credit window `W`, as of the last call that took `now`.
    pub fn window(&self) -> Amount {
        self.window
    }

    /// The most payload bytes (both directions, cumulative) the session may reach before
    /// its unpaid amount would pass the largest credit window, `W_max = cost(4 MiB, 2 s)`,
    /// at the current duration: a hard gate for the flows, which [`carry`](Self::carry)
    /// (the window at the current rate) can only tighten. The total carried so far while
    /// not carrying; `u64::MAX` when bytes are free (time-only prices are held by `carry`).
    pub fn byte_limit(&self) -> u64 {
        if !self.carrying {
            return self.total();
        }
        let price = self.terms.price;
        if price.per_gib == Amount::ZERO {
            return u64::MAX;
        }
        let budget = window::saturating_add(
            self.paid(),
            window::credit_window(price, window::WINDOW_MAX_BYTES),
        );
        window::bytes_within(price, budget, self.secs_at_update)
    }

    /// The cumulative amount of the last invoice issued.
    pub fn invoiced(&self) -> Amount {
        self.invoiced
    }

    /// The cumulative amount of the best promise held (the session's `base` until one came).
    pub fn promised(&self) -> Amount {
        self.best_cumulative
    }

    /// The best promise received in this session, to settle at the hub; `None` until one
    /// came.
    pub fn latest_promise(&self) -> Option<&SignedPromise> {
        self.best.as_ref()
    }

    pub fn terms(&self) -> &PayeeTerms {
        &self.terms
    }

    fn total(&self) -> u64 {
        self.up.saturating_add(self.down)
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.opened).as_secs()
    }

    /// Whether an invoice is wanted before the next interval tick (it waits only for the gap).
    fn early_invoice_wanted(&self) -> bool {
        self.owed > self.invoiced
            && (self.total().saturating_sub(self.invoiced_bytes) >= self.config.invoice_bytes
                || !self.carrying)
    }

    /// Re-evaluates what is owed, the window, whether to carry, and whether to invoice.
    fn update(&mut self, now: Instant) {
        if self.state != PayeeState::Open {
            return;
        }
        let price = self.terms.price;
        self.secs_at_update = self.secs(now);
        self.owed = window::session_cost(price, self.up, self.down, self.secs_at_update);
        self.window = window::credit_window(price, self.traffic.recent(now, self.total()));
        self.carrying = self.unpaid() <= self.window;
        if self.carrying {
            self.paused_since = None;
        } else if self.paused_since.is_none() {
            self.paused_since = Some(now);
        }
        self.maybe_invoice(now);
        if let Some(since) = self.paused_since
            && reached(now, since, self.config.grace)
        {
            self.state = PayeeState::Unpaid;
            self.carrying = false;
            self.outgoing = None;
            if self.events.len() < MAX_EVENTS {
                self.events.push_back(PayeeEvent::Unpaid {
                    owed: self.owed,
                    paid: self.paid(),
                });
            }
        }
    }

    fn maybe_invoice(&mut self, now: Instant) {
        let tick = now >= self.next_tick;
        if tick {
            self.next_tick = now.checked_add(self.config.invoice_interval).unwrap_or(now);
        }
        if self.owed <= self.invoiced {
            return;
        }
        let gap_passed = reached(now, self.last_invoice_at, self.config.min_invoice_gap);
        let due = tick
            || self.total().saturating_sub(self.invoiced_bytes) >= MAX_INVOICE_GAP_BYTES
            || (gap_passed && self.early_invoice_wanted());
        if !due {
            return;
        }
        let invoice = Invoice {
            session: self.terms.session,
            provider: self.provider,
            consumer: self.terms.consumer,
            seq: self.seq.saturating_add(1),
            bytes_up: self.up,
            bytes_down: self.down,
            duration_secs: self.secs(now),
            price: self.terms.price,
            cumulative: self.owed,
        };
        // Signing fails only if the identity is not the invoice's provider, and the core
        // took the provider from the identity.
        let Ok(signed) = SignedInvoice::sign(&invoice, &self.identity) else {
            return;
        };
        self.seq = invoice.seq;
        self.outgoing = Some(signed);
        self.invoiced = invoice.cumulative;
        self.invoiced_bytes = self.total();
        self.last_invoice_at = now;
        self.next_tick = now.checked_add(self.config.invoice_interval).unwrap_or(now);
    }
}
