//! The arithmetic a hub applies to one promise: how much to pay, the fee, what is left in
//! the escrow. Pure; every ledger calls it inside its own transaction, so SQLite, PostgreSQL
//! and the in-memory ledger settle identically.

use serde::{Deserialize, Serialize};
use warren_types::Amount;

/// A fee in basis points (1 % = 100). The protocol cap is 5 % (500).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeBps(pub u16);

impl FeeBps {
    pub const DEFAULT: FeeBps = FeeBps(100);
    pub const CAP: FeeBps = FeeBps(500);
}

/// What the ledger holds before this promise is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleState {
    /// What is left in the consumer's escrow channel.
    pub escrow_left: Amount,
    /// What this (channel, provider) pair has already been settled for (cumulative).
    pub settled: Amount,
}

/// What to do: move `paid` out of the escrow; `paid - fee` to the provider, `fee` to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleDecision {
    pub paid: Amount,
    pub fee: Amount,
    /// The new cumulative settled amount for the pair.
    pub settled: Amount,
    /// The promise asked for more than the escrow held: the channel is now overdrawn and
    /// providers must refuse it.
    pub overdrawn: bool,
}

/// Applies a promise of `cumulative` to `state` with `fee`.
///
/// A promise not above `state.settled` (a replay or an older one) pays nothing. Otherwise the
/// growth is paid, up to what the escrow holds; the fee is `paid × fee / 10_000`, rounded
/// down (the provider never pays more than the rate), and never above [`FeeBps::CAP`].
pub fn settle(state: SettleState, cumulative: Amount, fee: FeeBps) -> SettleDecision {
    let fee = fee.0.min(FeeBps::CAP.0);
    let growth = cumulative.saturating_sub(state.settled);
    let paid = if growth.nano() > state.escrow_left.nano() {
        state.escrow_left
    } else {
        growth
    };
    let fee_nano = (u128::from(paid.nano()) * u128::from(fee) / 10_000) as u64;
    SettleDecision {
        paid,
        fee: Amount::from_nano(fee_nano),
        settled: Amount::from_nano(state.settled.nano() + paid.nano()),
        overdrawn: growth.nano() > state.escrow_left.nano(),
    }
}
