//! The formulas that bound the money at risk in a session, on each side: what a session
//! costs, the provider's credit window `W`, and the consumer's tolerance for invoices.
//!
//! All are computed with [`Price::cost`], the one cost function (one fraction, rounded up
//! to a whole nano-WRN, saturating at `u64::MAX`), so both sides get identical figures.
//!
//! **Cost.** `cost(up, down, secs) = price.cost(up + down, secs s)` where `up`/`down` are
//! cumulative payload bytes and `secs` whole seconds since the session opened
//! ([`session_cost`]).
//!
//! **Credit window** (provider side, [`credit_window`]):
//!
//! ```text
//! W = price.cost(min(recent, 4 MiB), 2 s)
//! ```
//!
//! where `recent` is the payload bytes (both directions) the provider carried in the last
//! 2 s, measured by [`TrafficWindow`]: the bytes since the newest sample taken at least 2 s
//! ago, or since the session opened if it is younger (samples are at least 100 ms apart, so
//! the span measured is between 2 s and 2.1 s plus any time with no traffic reported). So
//! `W` is "2 s of traffic, at most 4 MiB, plus 2 s of the per-hour price". The provider
//! carries traffic while `unpaid = owed − paid ≤ W`, where `owed` is the cost of everything
//! carried so far and `paid` what valid promises cover. Because `ceil(a + b) ≤ ceil(a) +
//! ceil(b)`, an honest consumer who has paid for everything older than 2 s and older than
//! 4 MiB is never paused; a consumer who stops paying gets at most `W` plus whatever one
//! counter update carries past it.
//!
//! **Tolerance** (consumer side, [`tolerance`], [`allowed`]):
//!
//! ```text
//! expected  = price.cost(own_up + own_down, own_secs s)
//! tolerance = ceil(expected × 2 / 100) + price.cost(1 MiB, 2 s)
//! allowed   = expected + tolerance
//! ```
//!
//! with the consumer's own counters and whole seconds since its side opened. The 1 MiB
//! covers bytes in flight (the provider counts bytes down when it sends them, the consumer
//! when they arrive); the 2 s covers the consumer opening one latency after the provider
//! and the two sides rounding to whole seconds at different moments. An invoice above
//! `allowed` is not paid.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use warren_types::{Amount, Price};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// How far back the credit window looks at traffic, and how much time it credits.
pub const WINDOW_SPAN: Duration = Duration::from_secs(2);
/// The most traffic the credit window credits.
pub const WINDOW_MAX_BYTES: u64 = 4 * MIB;
/// The consumer accepts invoices up to this percentage above what it expects ...
pub const TOLERANCE_PERCENT: u64 = 2;
/// ... plus this many bytes' worth ...
pub const TOLERANCE_BYTES: u64 = MIB;
/// ... plus this much time's worth.
pub const TOLERANCE_SKEW: Duration = Duration::from_secs(2);

/// Samples of the traffic window are at least this far apart.
const SAMPLE_SPACING: Duration = Duration::from_millis(100);
/// 2 s / 100 ms + the baseline + slack; a hard bound whatever the caller does.
const MAX_SAMPLES: usize = 32;

/// What a session with these cumulative counters has cost after `secs` whole seconds.
pub fn session_cost(price: Price, up: u64, down: u64, secs: u64) -> Amount {
    price.cost(up.saturating_add(down), Duration::from_secs(secs))
}

/// The most payload bytes that cost at most `budget` after `secs` whole seconds: the largest
/// `b` with `session_cost(price, b, 0, secs) ≤ budget`. `u64::MAX` when bytes are free;
/// zero when the time alone costs more than `budget`.
pub fn bytes_within(price: Price, budget: Amount, secs: u64) -> u64 {
    const GIB: u128 = 1 << 30;
    const SECS_PER_HOUR: u128 = 3600;
    if price.per_gib == Amount::ZERO {
        return u64::MAX;
    }
    // cost = ceil((per_gib·b·3600 + per_hour·secs·GiB) / (GiB·3600)) ≤ budget
    //   ⟺ per_gib·b·3600 ≤ budget·GiB·3600 − per_hour·secs·GiB (all integers).
    let room = u128::from(budget.nano()) * GIB * SECS_PER_HOUR;
    let time = u128::from(price.per_hour.nano())
        .checked_mul(u128::from(secs))
        .and_then(|t| t.checked_mul(GIB));
    let Some(left) = time.and_then(|t| room.checked_sub(t)) else {
        return 0;
    };
    let bytes = left / (u128::from(price.per_gib.nano()) * SECS_PER_HOUR);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// The provider's credit window `W` given the bytes carried in the last [`WINDOW_SPAN`].
pub fn credit_window(price: Price, recent_bytes: u64) -> Amount {
    price.cost(recent_bytes.min(WINDOW_MAX_BYTES), WINDOW_SPAN)
}

/// How much above `expected` the consumer still pays: 2 % of it, rounded up, plus 1 MiB and
/// 2 s worth. Saturates at `u64::MAX` nano-WRN.
pub fn tolerance(price: Price, expected: Amount) -> Amount {
    let percent = (u128::from(expected.nano()) * u128::from(TOLERANCE_PERCENT)).div_ceil(100);
    let percent = Amount::from_nano(u64::try_from(percent).unwrap_or(u64::MAX));
    saturating_add(percent, price.cost(TOLERANCE_BYTES, TOLERANCE_SKEW))
}

/// The most the consumer pays when it expects `expected`: `expected + tolerance`.
pub fn allowed(price: Price, expected: Amount) -> Amount {
    saturating_add(expected, tolerance(price, expected))
}

/// A free offer: no invoices, no promises, no hub.
pub fn is_free(price: Price) -> bool {
    price.per_gib == Amount::ZERO && price.per_hour == Amount::ZERO
}

pub(crate) fn saturating_add(a: Amount, b: Amount) -> Amount {
    a.checked_add(b).unwrap_or(Amount::from_nano(u64::MAX))
}

/// How many bytes went by in the last [`WINDOW_SPAN`], from a bounded set of samples of a
/// cumulative byte counter.
#[derive(Debug, Clone)]
pub struct TrafficWindow {
    /// (when, cumulative bytes then), oldest first; never empty. The first is the baseline:
    /// the newest sample at least `WINDOW_SPAN` old, or the session's start.
    samples: VecDeque<(Instant, u64)>,
}

impl TrafficWindow {
    /// A window for a counter that was zero at `start`.
    pub fn new(start: Instant) -> Self {
        let mut samples = VecDeque::with_capacity(MAX_SAMPLES);
        samples.push_back((start, 0));
        TrafficWindow { samples }
    }

    /// Notes that the counter stood at `total` at `now`.
    pub fn record(&mut self, now: Instant, total: u64) {
        self.prune(now);
        let Some(&(last_at, _)) = self.samples.back() else {
            self.samples.push_back((now, total));
            return;
        };
        if now.saturating_duration_since(last_at) >= SAMPLE_SPACING {
            if self.samples.len() >= MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back((now, total));
        }
    }

    /// Bytes counted between the baseline and `total` at `now`.
    pub fn recent(&self, now: Instant, total: u64) -> u64 {
        let baseline = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| reached(now, *at, WINDOW_SPAN))
            .or(self.samples.front())
            .map_or(0, |&(_, bytes)| bytes);
        total.saturating_sub(baseline)
    }

    /// Drops samples older than the baseline.
    fn prune(&mut self, now: Instant) {
        while self.samples.len() >= 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(at, _)| reached(now, at, WINDOW_SPAN))
        {
            self.samples.pop_front();
        }
    }
}

/// Whether `after` has passed since `start` at `now`; a deadline past the end of time never
/// comes.
pub(crate) fn reached(now: Instant, start: Instant, after: Duration) -> bool {
    start
        .checked_add(after)
        .is_some_and(|deadline| now >= deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(per_gib: u64, per_hour: u64) -> Price {
        Price {
            per_gib: Amount::from_nano(per_gib),
            per_hour: Amount::from_nano(per_hour),
        }
    }

    #[test]
    fn window_is_two_seconds_of_traffic_capped_at_four_mib() {
        // 1 WRN per GiB, 3.6 WRN per hour = 1 milli-WRN per second.
        let p = price(1 << 30, 3_600_000_000);
        assert_eq!(credit_window(p, 0), Amount::from_nano(2_000_000));
        assert_eq!(
            credit_window(p, MIB),
            Amount::from_nano((1 << 20) + 2_000_000)
        );
        assert_eq!(credit_window(p, 100 * MIB), credit_window(p, 4 * MIB));
        assert_eq!(credit_window(price(0, 0), 100 * MIB), Amount::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn bytes_within_is_the_largest_affordable_count(
            per_gib in 1u64..u64::MAX,
            per_hour in proptest::prelude::any::<u64>(),
            budget in proptest::prelude::any::<u64>(),
            secs in 0u64..10_000_000,
        ) {
            let p = price(per_gib, per_hour);
            let budget = Amount::from_nano(budget);
            let b = bytes_within(p, budget, secs);
            if b > 0 {
                proptest::prop_assert!(session_cost(p, b, 0, secs) <= budget);
            }
            if b < u64::MAX {
                proptest::prop_assert!(
                    b == 0 && session_cost(p, 0, 0, secs) > budget
                        || session_cost(p, b + 1, 0, secs) > budget
                );
            }
        }
    }

    #[test]
    fn bytes_within_at_one_wrn_per_gib() {
        let p = price(1 << 30, 0);
        assert_eq!(bytes_within(p, Amount::from_nano(1 << 20), 0), 1 << 20);
        assert_eq!(bytes_within(price(0, 5), Amount::ZERO, 9), u64::MAX);
        // Time alone already costs more than the budget.
        assert_eq!(bytes_within(price(1, 3600), Amount::from_nano(1), 2), 0);
    }

    #[test]
    fn tolerance_is_two_percent_plus_a_mib_and_two_seconds() {
        let p = price(1 << 30, 3_600_000_000);
        let expected = Amount::from_nano(1_000_001);
        // ceil(2 % of 1_000_001) = 20_001; 1 MiB = 1_048_576; 2 s = 2_000_000.
        assert_eq!(
            tolerance(p, expected),
            Amount::from_nano(20_001 + 1_048_576 + 2_000_000)
        );
        assert_eq!(
            allowed(p, Amount::from_nano(u64::MAX)),
            Amount::from_nano(u64::MAX)
        );
        assert_eq!(allowed(price(0, 0), Amount::ZERO), Amount::ZERO);
    }

    #[test]
    fn traffic_window_measures_the_last_two_seconds() {
        let t0 = Instant::now();
        let mut w = TrafficWindow::new(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 1 MiB every 500 ms.
        for i in 1..=10u64 {
            w.record(at(i * 500), i * MIB);
        }
        // At 5 s the baseline is the sample at 3 s: 4 MiB in the last 2 s.
        assert_eq!(w.recent(at(5000), 10 * MIB), 4 * MIB);
        // Idle: after another 2 s nothing is recent.
        w.record(at(7000), 10 * MIB);
        assert_eq!(w.recent(at(7000), 10 * MIB), 0);
        // Young session: everything since the start counts.
        let w2 = TrafficWindow::new(t0);
        assert_eq!(w2.recent(at(300), 3 * MIB), 3 * MIB);
    }

    #[test]
    fn traffic_window_stays_bounded() {
        let t0 = Instant::now();
        let mut w = TrafficWindow::new(t0);
        for i in 0..100_000u64 {
            w.record(t0 + Duration::from_millis(i), i);
        }
        assert!(w.samples.len() <= 22, "{}", w.samples.len());
        let mut w = TrafficWindow::new(t0);
        for i in 0..1000u64 {
            w.record(t0 + Duration::from_millis(i * 100), i);
        }
        assert!(w.samples.len() <= MAX_SAMPLES);
    }
}
