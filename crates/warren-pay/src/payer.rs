//! The consumer's payment core for one session, without I/O: it checks the provider's
//! invoices against its own counters and answers the acceptable ones with signed cumulative
//! promises against its escrow at a hub.
//!
//! The driver feeds it the consumer's own cumulative payload counters, the provider's
//! invoices and the escrow it may still spend; it sends what
//! [`poll_transmit`](Payer::poll_transmit) yields to the provider and ends the session with
//! reason "overbilled" on [`PayerEvent::Overbilled`]. The core holds the consumer's
//! [`Identity`] to sign promises itself.
//!
//! **Checking an invoice.** It must verify under the provider's key, name this session,
//! provider, consumer and price, have a `seq` above the last one, a cumulative amount not
//! below the last one, and bill exactly
//! [`session_cost`](crate::window::session_cost) of the counters and duration it names.
//! Failing any of these is an [`InvoiceError`]: the provider broke the protocol.
//!
//! **Accepting it.** A well-formed invoice is paid when
//!
//! ```text
//! invoice.cumulative ≤ allowed = expected + ceil(expected × 2 %) + price.cost(1 MiB, 2 s)
//! expected = price.cost(own_up + own_down, own_secs)
//! ```
//!
//! (see [`crate::window`]), with `own_secs` the whole seconds since [`Payer::new`]. One that
//! is too high waits: it is re-checked as the consumer's counters and clock advance (bytes
//! that were in flight arrive), and a newer invoice replaces it. If no waiting invoice has
//! become acceptable [`PayerConfig::overbill_grace`] (2 s) after the first too-high one, the
//! core emits [`PayerEvent::Overbilled`] and ends. Nothing above `allowed` is ever
//! promised, so a provider over-bills by at most the tolerance.
//!
//! **Promising.** For an accepted invoice the consumer promises
//!
//! ```text
//! base + min(accepted, escrow_available)
//! ```
//!
//! where `base` is what it had promised this provider on this channel before the session
//! (promises are cumulative per (channel, provider)) and `escrow_available` what the node
//! lets this session spend beyond `base`. It never promises beyond that: when the escrow
//! runs short it emits [`PayerEvent::EscrowExhausted`] once, stops raising its promise, and
//! the provider pauses and ends the session; raising the figure with
//! [`set_escrow_available`](Payer::set_escrow_available) pays what was accepted at once.
//! A promise not yet polled is replaced by a newer one.
//!
//! **Free offers.** At a zero price every honest invoice is for zero and none is sent; an
//! invoice for more than zero is over-billing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use warren_types::{Amount, Identity, NodeId, Price};

use crate::records::{ChannelId, Invoice, PayError, Promise, SignedInvoice, SignedPromise};
use crate::window::{self, reached};

/// What the consumer agreed with this provider for this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerTerms {
    /// The session's id (the 16 bytes of `warren_session::SessionId`).
    pub session: [u8; 16],
    pub provider: NodeId,
    /// The hub holding the consumer's escrow, and the channel there.
    pub hub: NodeId,
    pub channel: ChannelId,
    pub price: Price,
    /// What the consumer had already promised this provider on this channel (the last
    /// cumulative promise, zero for a first session).
    pub base: Amount,
    /// The most this session may promise beyond `base`. Update it with
    /// [`Payer::set_escrow_available`].
    pub escrow_available: Amount,
}

/// Timers of the consumer's payment core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayerConfig {
    /// How long a too-high invoice may wait for the consumer's counters to catch up before
    /// the session ends as overbilled.
    pub overbill_grace: Duration,
}

impl Default for PayerConfig {
    fn default() -> Self {
        PayerConfig {
            overbill_grace: Duration::from_secs(2),
        }
    }
}

/// Where the consumer's side of the payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayerState {
    Open,
    /// The provider billed above the tolerance; nothing more is promised.
    Overbilled,
}

/// What the driver should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayerEvent {
    /// End the session with reason "overbilled": the provider billed `invoiced` where at
    /// most `allowed` was acceptable.
    Overbilled { invoiced: Amount, allowed: Amount },
    /// An accepted invoice for `accepted` is above the `available` escrow: the consumer stops
    /// raising its promise until the node raises the figure (top up, or end the session).
    EscrowExhausted { accepted: Amount, available: Amount },
}

/// Why an invoice was refused as malformed. None of these changes what is promised; the
/// provider broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("invoice is not a valid signed record: {0}")]
    Record(#[from] PayError),
    #[error("invoice names the wrong {field} for this session")]
    WrongParty { field: &'static str },
    #[error("invoice is for a price other than the agreed one")]
    WrongPrice,
    #[error("invoice bills {claimed} but its own counters cost {computed}")]
    Inconsistent { claimed: Amount, computed: Amount },
    #[error("invoice #{got} is not after #{last} (a replay or out of order)")]
    Stale { got: u64, last: u64 },
    #[error("invoice bills {got}, less than the {last} billed before")]
    Decreasing { got: Amount, last: Amount },
}

/// At most one Overbilled and a few EscrowExhausted; the cap bounds a flapping escrow.
const MAX_EVENTS: usize = 4;

/// The consumer's payment core for one session. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Payer {
    identity: Identity,
    consumer: NodeId,
    terms: PayerTerms,
    config: PayerConfig,
    state: PayerState,
    opened: Instant,
    up: u64,
    down: u64,
    last_seq: u64,
    last_billed: Amount,
    /// The newest invoice not yet acceptable.
    waiting: Option<Invoice>,
    overbilled_since: Option<Instant>,
    /// The highest invoice amount accepted (session-relative).
    accepted: Amount,
    /// The highest amount promised (session-relative, `base` excluded).
    promised: Amount,
    escrow_available: Amount,
    escrow_reported: bool,
    outgoing: Option<SignedPromise>,
    events: VecDeque<PayerEvent>,
}

impl Payer {
    /// Starts paying for a session that opened (at the consumer) at `now`. `consumer` signs
    /// the promises.
    ///
    /// Build it when the provider's Accept arrives: its clock is the consumer's measure of
    /// the session's duration, and one started more than the 2 s skew late would take the
    /// provider's honest per-hour billing for over-billing.
    pub fn new(now: Instant, terms: PayerTerms, consumer: Identity, config: PayerConfig) -> Self {
        let escrow_available = terms.escrow_available;
        Payer {
            consumer: consumer.node_id(),
            identity: consumer,
            terms,
            config,
            state: PayerState::Open,
            opened: now,
            up: 0,
            down: 0,
            last_seq: 0,
            last_billed: Amount::ZERO,
            waiting: None,
            overbilled_since: None,
            accepted: Amount::ZERO,
            promised: Amount::ZERO,
            escrow_available,
            escrow_reported: false,
            outgoing: None,
            events: VecDeque::with_capacity(MAX_EVENTS),
        }
    }

    /// Feeds the consumer's own cumulative payload counters (consumer → exit, exit →
    /// consumer). Each only grows. A waiting invoice is re-checked.
    pub fn on_traffic(&mut self, now: Instant, up: u64, down: u64) {
        self.up = self.up.max(up);
        self.down = self.down.max(down);
        self.evaluate(now);
    }

    /// Feeds an invoice from the provider. `Ok` means it was well formed: it was paid, or
    /// waits to be (see the [module docs](self)); poll for a promise and events afterwards.
    /// After the session ended as overbilled, invoices are checked but never paid.
    pub fn handle_invoice(
        &mut self,
        now: Instant,
        signed: &SignedInvoice,
    ) -> Result<(), InvoiceError> {
        let invoice = signed.verify()?;
        let wrong = |field| Err(InvoiceError::WrongParty { field });
        if invoice.session != self.terms.session {
            return wrong("session");
        }
        if invoice.provider != self.terms.provider {
            return wrong("provider");
        }
        if invoice.consumer != self.consumer {
            return wrong("consumer");
        }
        if invoice.price != self.terms.price {
            return Err(InvoiceError::WrongPrice);
        }
        let computed = invoice.computed_cost();
        if invoice.cumulative != computed {
            return Err(InvoiceError::Inconsistent {
                claimed: invoice.cumulative,
                computed,
            });
        }
        if invoice.seq <= self.last_seq {
            return Err(InvoiceError::Stale {
                got: invoice.seq,
                last: self.last_seq,
            });
        }
        if invoice.cumulative < self.last_billed {
            return Err(InvoiceError::Decreasing {
                got: invoice.cumulative,
                last: self.last_billed,
            });
        }
        self.last_seq = invoice.seq;
        self.last_billed = invoice.cumulative;
        if invoice.cumulative > self.accepted {
            self.waiting = Some(invoice);
        }
        self.evaluate(now);
        Ok(())
    }

    /// Updates the most this session may promise beyond `base`. Raising it promises at once
    /// what was accepted but not yet covered.
    pub fn set_escrow_available(&mut self, now: Instant, available: Amount) {
        if available > self.escrow_available {
            self.escrow_reported = false;
        }
        self.escrow_available = available;
        self.evaluate(now);
    }

    /// Call when the deadline from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.evaluate(now);
    }

    /// The next promise to send. At most one waits: a newer one replaces it.
    pub fn poll_transmit(&mut self) -> Option<SignedPromise> {
        self.outgoing.take()
    }

    pub fn poll_event(&mut self) -> Option<PayerEvent> {
        self.events.pop_front()
    }

    /// When a too-high invoice runs out of time; `None` otherwise.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != PayerState::Open {
            return None;
        }
        self.overbilled_since
            .and_then(|since| since.checked_add(self.config.overbill_grace))
    }

    pub fn state(&self) -> PayerState {
        self.state
    }

    /// What the consumer's own counters say the session has cost, at `now`.
    pub fn expected(&self, now: Instant) -> Amount {
        window::session_cost(self.terms.price, self.up, self.down, self.secs(now))
    }

    /// The most the consumer would pay at `now`: `expected + tolerance`.
    pub fn allowed(&self, now: Instant) -> Amount {
        window::allowed(self.terms.price, self.expected(now))
    }

    /// The highest invoice amount accepted in this session.
    pub fn accepted(&self) -> Amount {
        self.accepted
    }

    /// The highest amount promised in this session (without `base`).
    pub fn promised(&self) -> Amount {
        self.promised
    }

    /// The cumulative amount of the last well-formed invoice (zero before the first).
    pub fn billed(&self) -> Amount {
        self.last_billed
    }

    /// The newest invoice that was too high and is waiting to become acceptable.
    pub fn waiting_invoice(&self) -> Option<&Invoice> {
        self.waiting.as_ref()
    }

    pub fn terms(&self) -> &PayerTerms {
        &self.terms
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.opened).as_secs()
    }

    fn event(&mut self, e: PayerEvent) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(e);
        }
    }

    fn evaluate(&mut self, now: Instant) {
        if self.state != PayerState::Open {
            return;
        }
        if let Some(billed) = self.waiting.as_ref().map(|i| i.cumulative) {
            let allowed = self.allowed(now);
            if billed <= allowed {
                self.accepted = self.accepted.max(billed);
                self.waiting = None;
                self.overbilled_since = None;
            } else {
                let since = *self.overbilled_since.get_or_insert(now);
                if reached(now, since, self.config.overbill_grace) {
                    self.state = PayerState::Overbilled;
                    self.waiting = None;
                    self.outgoing = None;
                    self.event(PayerEvent::Overbilled {
                        invoiced: billed,
                        allowed,
                    });
                    return;
                }
            }
        }
        self.pay();
    }

    /// Raises the promise to what was accepted, as far as the escrow allows.
    fn pay(&mut self) {
        let target = self.accepted.min(self.escrow_available);
        if self.accepted > self.escrow_available && !self.escrow_reported {
            self.escrow_reported = true;
            self.event(PayerEvent::EscrowExhausted {
                accepted: self.accepted,
                available: self.escrow_available,
            });
        }
        if target <= self.promised {
            return;
        }
        // A base this close to u64::MAX cannot be promised on; stay at the last promise.
        let Some(cumulative) = self.terms.base.checked_add(target) else {
            return;
        };
        let promise = Promise {
            hub: self.terms.hub,
            channel: self.terms.channel,
            consumer: self.consumer,
            provider: self.terms.provider,
            cumulative,
        };
        // Signing fails only if the identity is not the promise's consumer, and the core
        // took the consumer from the identity.
        if let Ok(signed) = SignedPromise::sign(&promise, &self.identity) {
            self.outgoing = Some(signed);
            self.promised = target;
        }
    }
}
