//! The two payment cores of `warren-pay` as [`drive`](super::drive) runs them: [`Billed`]
//! at the provider (invoices out, promises in, the meter's gate) and [`Paying`] at the
//! consumer (invoices in, promises out, each promise's bound on disk before it is sent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::{debug, info, warn};
use warren_pay::rpc::ChannelView;
use warren_pay::window::MIB;
use warren_pay::{
    ChannelId, Payee, PayeeConfig, PayeeEvent, Payer, PayerEvent, PromiseError, SignedInvoice,
    SignedPromise,
};
use warren_session::wire::CloseReason;
use warren_tunnel::splice::Meter;
use warren_types::{Amount, NodeId};

use super::Billing;
use crate::telemetry::{Counters, Event, Telemetry};
use crate::wallet::Wallet;

/// Where a session's payment core reports: the node's telemetry and the session's id.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub telemetry: Arc<Telemetry>,
    pub session: String,
}

impl Report {
    fn invoice(&self, role: &str, cumulative: Amount) {
        self.telemetry.emit(Event::Invoice {
            role: role.into(),
            session: self.session.clone(),
            cumulative,
        });
    }

    fn payment(&self, role: &str, cumulative: Amount) {
        self.telemetry.emit(Event::Payment {
            role: role.into(),
            session: self.session.clone(),
            cumulative,
        });
    }
}

/// The provider keeps the best promise of a session in the wallet at least this often, so a
/// crash loses at most this much of its earnings.
const KEEP_EVERY: Duration = Duration::from_secs(1);
/// A provider settles at its hub on its own once this much is promised to it and unsettled.
pub const SETTLE_THRESHOLD: Amount = Amount::from_nano(warren_types::amount::NANO_PER_WRN);
/// The consumer wakes this often to re-check an invoice that was too high while the bytes
/// in flight arrive.
const RECHECK: Duration = Duration::from_millis(50);
/// A consumer records, before promising above it, a bound this many bytes' worth above the
/// promise, so it writes its wallet once per 32 MiB of traffic rather than for every
/// promise. A crash can cost it at most this much with one provider: the next session's
/// escrow is counted from the bound, not from the promise.
const RESERVE_BYTES: u64 = 32 * MIB;

/// How often, by default, a provider looks again at a paid session's channel at the hub: a
/// consumer that promised the same escrow to several providers shows as a channel drained
/// by the others' settlements, or overdrawn, and the session's credit shrinks to match.
pub const RECHECK_ESCROW: Duration = Duration::from_secs(10);

/// What the hub can still pay this provider from a channel beyond `base` (the promise held
/// when the session opened): what is left, plus what it already settled beyond `base`.
pub(crate) fn available_beyond(view: &ChannelView, base: Amount) -> Amount {
    view.left
        .checked_add(view.settled)
        .unwrap_or(Amount::from_nano(u64::MAX))
        .saturating_sub(base)
}

/// The payment core's timers as the node runs them: invoices after 2 MiB (half the largest
/// window, so an honest consumer's promise arrives before the gate closes), no more than
/// 100 a second unless 4 MiB went by.
pub fn payee_config() -> PayeeConfig {
    PayeeConfig {
        invoice_bytes: 2 * MIB,
        min_invoice_gap: Duration::from_millis(10),
        ..PayeeConfig::default()
    }
}

/// The provider's side of a paid session.
pub(crate) struct Billed {
    payee: Payee,
    wallet: Arc<Wallet>,
    meter: Arc<Meter>,
    /// The best promise not yet handed to the wallet, and when it last took one.
    unkept: Option<SignedPromise>,
    kept_at: Instant,
    closing: Option<CloseReason>,
    /// What the promises cover of the session, for the API.
    paid: Arc<AtomicU64>,
    recheck: Duration,
    next_check: Instant,
    check: Option<tokio::task::JoinHandle<Result<ChannelView, String>>>,
    report: Report,
}

impl Billed {
    pub(crate) fn new(
        payee: Payee,
        wallet: Arc<Wallet>,
        meter: Arc<Meter>,
        paid: Arc<AtomicU64>,
        report: Report,
    ) -> Self {
        let billed = Billed {
            payee,
            wallet,
            meter,
            paid,
            report,
            recheck: RECHECK_ESCROW,
            next_check: Instant::now() + RECHECK_ESCROW,
            check: None,
            unkept: None,
            kept_at: Instant::now(),
            closing: None,
        };
        billed.gate();
        billed
    }

    pub(crate) fn recheck_every(mut self, every: Duration) -> Self {
        self.recheck = every;
        self.next_check = Instant::now() + every;
        self
    }

    /// Looks at the channel again at the hub, on a task of its own; its answer is taken on a
    /// later turn.
    fn recheck(&mut self, now: Instant) {
        if let Some(task) = &self.check
            && task.is_finished()
            && let Some(task) = self.check.take()
        {
            let terms = self.payee.terms();
            match task.now_or_never() {
                Some(Ok(Ok(view))) => {
                    let available = available_beyond(&view, terms.base);
                    if view.overdrawn || available < terms.escrow_available {
                        debug!(%available, overdrawn = view.overdrawn, "the channel holds less than at the start");
                    }
                    self.payee.set_escrow_available(now, available);
                    self.gate();
                }
                Some(Ok(Err(e))) => debug!("escrow re-check failed: {e}"),
                _ => {}
            }
        }
        if self.check.is_none() && now >= self.next_check {
            self.next_check = now + self.recheck;
            let wallet = self.wallet.clone();
            let (hub, channel) = (self.payee.terms().hub, self.payee.terms().channel);
            self.check = Some(tokio::spawn(async move {
                wallet
                    .channel_at(hub, channel)
                    .await
                    .map_err(|e| e.to_string())
            }));
        }
    }

    /// Sets the flows' gate from the core, and asks to be woken a MiB of traffic on (or at
    /// the gate), so invoices follow the traffic however fast it goes.
    fn gate(&self) {
        self.paid.store(self.payee.paid().nano(), Ordering::Relaxed);
        let limit = self.payee.byte_limit();
        self.meter.set_limit(limit);
        let total = self.meter.total();
        if total < limit {
            self.meter
                .set_watermark(total.saturating_add(MIB).min(limit));
        }
    }

    /// Hands the best promise to the wallet (kept on disk for settlement).
    async fn keep(&mut self) {
        let Some(promise) = self.unkept.take() else {
            return;
        };
        self.kept_at = Instant::now();
        let wallet = self.wallet.clone();
        match tokio::task::spawn_blocking(move || wallet.add_promise(promise)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("could not keep a promise for settlement: {e}"),
            Err(e) => warn!("could not keep a promise for settlement: {e}"),
        }
        if self.wallet.earned_unsettled() >= SETTLE_THRESHOLD {
            settle_in_background(self.wallet.clone(), self.report.telemetry.clone());
        }
    }

    /// At the session's end: keeps the last promise and settles what is held.
    pub(crate) async fn finish(mut self) {
        if let Some(task) = self.check.take() {
            task.abort();
        }
        self.meter.set_limit(self.meter.total());
        if let Some(p) = self.payee.latest_promise() {
            self.unkept = Some(p.clone());
        }
        self.keep().await;
        settle_in_background(self.wallet.clone(), self.report.telemetry.clone());
    }
}

/// Settles every held promise on a task of its own; the wallet runs one settlement at a time.
pub(crate) fn settle_in_background(wallet: Arc<Wallet>, telemetry: Arc<Telemetry>) {
    tokio::spawn(async move {
        match wallet.settle().await {
            Ok(report) => {
                for e in report.errors {
                    Counters::inc(&telemetry.counters.settle_errors);
                    warn!("settlement: {e}");
                }
            }
            Err(e) => {
                Counters::inc(&telemetry.counters.settle_errors);
                warn!("settlement failed: {e}");
            }
        }
    });
}

impl Billing for Billed {
    fn on_record(&mut self, now: Instant, record: &[u8]) {
        let promise = match SignedPromise::from_bytes(record) {
            Ok(p) => p,
            Err(e) => {
                debug!("unreadable promise: {e}");
                return;
            }
        };
        let counters = &self.report.telemetry.counters;
        match self.payee.handle_promise(now, &promise) {
            Ok(()) => {
                Counters::inc(&counters.promises_received);
                self.report.payment("provider", self.payee.promised());
                self.unkept = Some(promise);
            }
            Err(PromiseError::NotNewer { .. }) => {}
            Err(e) => {
                Counters::inc(&counters.promises_refused);
                debug!("promise refused: {e}");
            }
        }
        self.gate();
    }

    fn on_traffic(&mut self, now: Instant, meter: &Meter) {
        self.payee.on_traffic(now, meter.up(), meter.down());
        if let Some(PayeeEvent::Unpaid { owed, paid }) = self.payee.poll_event() {
            info!(%owed, %paid, "the consumer stopped paying; ending the session");
            self.closing = Some(CloseReason::Unpaid);
        }
        self.gate();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.payee.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let keep = self.unkept.as_ref().map(|_| self.kept_at + KEEP_EVERY);
        // A check under way is looked at again shortly; else the next one is due.
        let check = match &self.check {
            Some(_) => Instant::now() + Duration::from_millis(100),
            None => self.next_check,
        };
        [self.payee.poll_timeout(), keep, Some(check)]
            .into_iter()
            .flatten()
            .min()
    }

    async fn prepare(&mut self) {
        if self.unkept.is_some() && self.kept_at.elapsed() >= KEEP_EVERY {
            self.keep().await;
        }
        self.recheck(Instant::now());
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let invoice: SignedInvoice = self.payee.poll_transmit()?;
        Counters::inc(&self.report.telemetry.counters.invoices_sent);
        self.report.invoice("provider", self.payee.invoiced());
        Some(invoice.to_bytes())
    }

    fn poll_close(&mut self) -> Option<CloseReason> {
        self.closing.take()
    }
}

/// The consumer's side of a paid session.
pub(crate) struct Paying {
    payer: Payer,
    wallet: Arc<Wallet>,
    hub: NodeId,
    channel: ChannelId,
    provider: NodeId,
    /// What the wallet has on disk as this provider's bound.
    reserved: Amount,
    /// A promise waiting for its bound to reach the disk.
    outgoing: Option<(SignedPromise, Amount)>,
    /// The session's promised amount (beyond its base), for the status.
    promised: Arc<AtomicU64>,
    last_now: Instant,
    closing: Option<CloseReason>,
    report: Report,
}

impl Paying {
    pub(crate) fn new(
        payer: Payer,
        wallet: Arc<Wallet>,
        reserved: Amount,
        promised: Arc<AtomicU64>,
        report: Report,
    ) -> Self {
        let terms = payer.terms().clone();
        Paying {
            payer,
            wallet,
            hub: terms.hub,
            channel: terms.channel,
            provider: terms.provider,
            reserved,
            outgoing: None,
            promised,
            last_now: Instant::now(),
            closing: None,
            report,
        }
    }

    fn take_events(&mut self) {
        while let Some(ev) = self.payer.poll_event() {
            match ev {
                PayerEvent::Overbilled { invoiced, allowed } => {
                    warn!(%invoiced, %allowed, "the provider billed above the tolerance; ending the session");
                    self.closing = Some(CloseReason::Overbilled);
                }
                PayerEvent::EscrowExhausted {
                    accepted,
                    available,
                } => warn!(
                    %accepted, %available,
                    "the escrow is used up; the provider will stop carrying traffic (`warren wallet topup` adds more)"
                ),
            }
        }
        if let Some(p) = self.payer.poll_transmit() {
            // Promises are cumulative: a newer one replaces one not yet sent. The core just
            // signed it for `base + promised`.
            let terms = self.payer.terms();
            let cumulative = terms.base.checked_add(self.payer.promised());
            if let Some(cumulative) = cumulative {
                self.outgoing = Some((p, cumulative));
            }
        }
    }
}

impl Billing for Paying {
    fn on_record(&mut self, now: Instant, record: &[u8]) {
        self.last_now = now;
        let invoice = match SignedInvoice::from_bytes(record) {
            Ok(i) => i,
            Err(e) => {
                debug!("unreadable invoice: {e}");
                return;
            }
        };
        Counters::inc(&self.report.telemetry.counters.invoices_received);
        match self.payer.handle_invoice(now, &invoice) {
            Ok(()) => self.report.invoice("consumer", self.payer.billed()),
            Err(e) => debug!("invoice refused: {e}"),
        }
        self.take_events();
    }

    fn on_traffic(&mut self, now: Instant, meter: &Meter) {
        self.last_now = now;
        self.payer.on_traffic(now, meter.up(), meter.down());
        self.take_events();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.payer.handle_timeout(now);
        self.take_events();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let recheck = self
            .payer
            .waiting_invoice()
            .map(|_| self.last_now + RECHECK);
        match (self.payer.poll_timeout(), recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn prepare(&mut self) {
        let Some((_, cumulative)) = &self.outgoing else {
            return;
        };
        if *cumulative <= self.reserved {
            return;
        }
        let step = self
            .payer
            .terms()
            .price
            .cost(RESERVE_BYTES, Duration::ZERO)
            .max(Amount::from_nano(1));
        let bound = cumulative.checked_add(step).unwrap_or(*cumulative);
        match self
            .wallet
            .reserve(self.hub, self.channel, self.provider, bound)
            .await
        {
            Ok(()) => self.reserved = bound,
            // Not sent until it is on disk: the provider pauses, and the next turn retries.
            Err(e) => warn!("could not record a promise before sending it: {e}"),
        }
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match &self.outgoing {
            Some((_, cumulative)) if *cumulative <= self.reserved => {
                let (promise, cumulative) = self.outgoing.take()?;
                self.promised
                    .store(self.payer.promised().nano(), Ordering::Relaxed);
                Counters::inc(&self.report.telemetry.counters.promises_sent);
                self.report.payment("consumer", cumulative);
                Some(promise.to_bytes())
            }
            _ => None,
        }
    }

    fn poll_close(&mut self) -> Option<CloseReason> {
        self.closing.take()
    }
}
