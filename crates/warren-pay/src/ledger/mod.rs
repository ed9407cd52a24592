//! A hub's books: accounts, consumer escrows, what each (channel, provider) pair has been
//! settled for, and the hub's fees. The [`Ledger`] trait is what a hub needs; every method
//! is one transaction, so a crash at any point leaves either all of an operation or none.
//!
//! Settlement is planned by one piece of code, [`plan_settlements`], from the rows a batch
//! touches, and every implementation ([`MemoryLedger`], [`SqliteLedger`], [`PgLedger`]) loads
//! those rows, runs the plan and writes its result back inside its transaction. So the three
//! settle identically by construction, and [`crate::settle::settle`] is the only arithmetic.
//!
//! Amounts are stored as signed 64-bit integers (the databases' integer), so no amount above
//! `i64::MAX` nano-WRN (about 9.2 billion WRN) is ever stored: deposits and escrows beyond it
//! are refused with [`LedgerError::AmountTooLarge`], and the total ever deposited is capped
//! there too ([`LedgerError::SupplyCap`]), which keeps every sum and balance within range.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use warren_types::{Amount, NodeId};

use crate::records::{ChannelId, Promise};
use crate::settle::{FeeBps, SettleState, settle};

mod memory;
mod postgres;
mod sqlite;

pub use memory::MemoryLedger;
pub use postgres::PgLedger;
pub use sqlite::{Durability, SqliteLedger};

/// The most any stored amount, balance or total may be: the databases' signed integer.
pub const MAX_STORED: Amount = Amount::from_nano(i64::MAX as u64);

/// The books of one payment hub. Every method is one transaction.
///
/// Methods are cancel-safe in the database sense: dropping a future before it completes
/// either commits the whole operation or rolls all of it back, never half.
pub trait Ledger: Send + Sync + 'static {
    /// Credits `amount` to `account`'s available balance (the faucet, a top-up). Returns the
    /// new available balance.
    fn deposit(
        &self,
        account: NodeId,
        amount: Amount,
        memo: &str,
    ) -> impl Future<Output = Result<Amount, LedgerError>> + Send;

    /// Opens escrow channel `channel` for `consumer`, moving `amount` of its available
    /// balance into it. Refused if the channel exists or the balance is short.
    fn open_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> impl Future<Output = Result<Escrow, LedgerError>> + Send;

    /// Moves `amount` more of `consumer`'s available balance into its channel `channel`.
    /// An overdrawn channel stays marked; the money pays the promises it could not cover.
    fn add_to_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> impl Future<Output = Result<Escrow, LedgerError>> + Send;

    /// Settles promises in arrival order, all in one transaction: each pays the growth of its
    /// cumulative amount over what its (channel, provider) pair was settled for, up to what
    /// the escrow holds, minus `fee` to the hub. A replayed or older promise pays nothing.
    /// A promise naming an unknown channel, or one that is not its consumer's, is refused
    /// alone; the others still settle. The outer error means nothing was committed.
    fn settle_batch(
        &self,
        batch: &[(Promise, FeeBps)],
    ) -> impl Future<Output = Result<Vec<Result<SettleOutcome, SettleRefusal>>, LedgerError>> + Send;

    /// Settles one promise (see [`Ledger::settle_batch`]).
    fn settle(
        &self,
        promise: &Promise,
        fee: FeeBps,
    ) -> impl Future<Output = Result<SettleOutcome, LedgerError>> + Send {
        let batch = [(promise.clone(), fee)];
        async move {
            let mut results = self.settle_batch(&batch).await?;
            match results.pop() {
                Some(result) => result.map_err(LedgerError::Refused),
                None => Err(LedgerError::Corrupt(
                    "a batch of one settled nothing".to_string(),
                )),
            }
        }
    }

    /// What `account` holds: available, in escrow (all its channels), earned by settlement.
    fn balance(&self, account: NodeId)
    -> impl Future<Output = Result<Balance, LedgerError>> + Send;

    /// Channel `channel`, if it exists.
    fn escrow(
        &self,
        channel: ChannelId,
    ) -> impl Future<Output = Result<Option<Escrow>, LedgerError>> + Send;

    /// `consumer`'s channels, in channel id order.
    fn channels(
        &self,
        consumer: NodeId,
    ) -> impl Future<Output = Result<Vec<Escrow>, LedgerError>> + Send;

    /// What the (channel, provider) pair has been settled for so far (cumulative).
    fn settled(
        &self,
        channel: ChannelId,
        provider: NodeId,
    ) -> impl Future<Output = Result<Amount, LedgerError>> + Send;

    /// The latest `limit` entries touching `account`, newest first.
    fn history(
        &self,
        account: NodeId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, LedgerError>> + Send;

    /// Sums over the whole ledger, for invariant checks.
    fn totals(&self) -> impl Future<Output = Result<Totals, LedgerError>> + Send;
}

/// What one account holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Free to move into escrow (or, later, to withdraw).
    pub available: Amount,
    /// Left in all of its escrow channels.
    pub escrow: Amount,
    /// Credited to it by settlement over its life (after the hub's fee); already counted
    /// in `available`.
    pub earned: Amount,
}

/// A consumer's escrow channel at this hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escrow {
    pub channel: ChannelId,
    pub consumer: NodeId,
    /// Moved into the channel over its life.
    pub funded: Amount,
    /// Not yet paid out.
    pub left: Amount,
    /// A promise once asked for more than was left: providers refuse the channel.
    pub overdrawn: bool,
}

/// What settling one promise did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleOutcome {
    /// Taken out of the escrow.
    pub paid: Amount,
    /// The hub's part of `paid`.
    pub fee: Amount,
    /// The provider's part of `paid` (`paid - fee`).
    pub to_provider: Amount,
    /// The pair's cumulative settled amount now.
    pub settled: Amount,
    /// This promise asked for more than the escrow held (the channel is now marked).
    pub overdrawn: bool,
    /// What the escrow holds now.
    pub escrow_left: Amount,
}

impl SettleOutcome {
    /// A promise not above what was already settled: it paid nothing and changed nothing.
    pub fn is_replay(&self) -> bool {
        self.paid == Amount::ZERO && !self.overdrawn
    }
}

/// Why the ledger refused one promise of a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettleRefusal {
    #[error("channel {channel} is not open at this hub")]
    UnknownChannel { channel: ChannelId },
    #[error("channel {channel} belongs to {owner}, not to {claimed} who signed the promise")]
    NotChannelOwner {
        channel: ChannelId,
        owner: NodeId,
        claimed: NodeId,
    },
}

/// Why a ledger operation failed. Nothing of the operation was committed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("amount {amount} WRN is more than the ledger stores (at most {MAX_STORED} WRN)")]
    AmountTooLarge { amount: Amount },
    #[error(
        "depositing {amount} WRN would take the ledger's total supply past {MAX_STORED} WRN \
         ({deposited} WRN deposited so far)"
    )]
    SupplyCap { deposited: Amount, amount: Amount },
    #[error("account {account} has {available} WRN available, {wanted} WRN is needed")]
    Insufficient {
        account: NodeId,
        available: Amount,
        wanted: Amount,
    },
    #[error("channel {channel} is already open")]
    ChannelExists { channel: ChannelId },
    #[error("channel {channel} is not open at this hub")]
    UnknownChannel { channel: ChannelId },
    #[error("channel {channel} belongs to {owner}, not to {claimed}")]
    NotChannelOwner {
        channel: ChannelId,
        owner: NodeId,
        claimed: NodeId,
    },
    #[error("promise refused: {0}")]
    Refused(SettleRefusal),
    #[error("ledger database failed while {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("ledger migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("ledger holds an impossible value: {0}")]
    Corrupt(String),
}

/// What kind of movement a history entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Money came in (faucet, top-up): `amount` added to available.
    Deposit,
    /// A channel was opened with `amount` from available.
    EscrowOpened,
    /// `amount` more moved from available into a channel.
    EscrowAdded,
    /// `amount` left the account's channel to pay `counterparty` (a provider); `fee` of it
    /// went to the hub.
    Paid,
    /// `amount` (after the hub's `fee`) came from `counterparty`'s channel (a consumer).
    Earned,
}

/// One line of an account's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Grows with every entry the ledger writes; newer entries have larger numbers.
    pub seq: u64,
    /// Unix seconds when it was written.
    pub at: u64,
    pub kind: EntryKind,
    pub amount: Amount,
    pub fee: Amount,
    pub channel: Option<ChannelId>,
    pub counterparty: Option<NodeId>,
    pub memo: String,
}

/// Sums over the whole ledger. Money is conserved when
/// `available + escrow + fees == deposited`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Everything ever deposited.
    pub deposited: Amount,
    /// All accounts' available balances.
    pub available: Amount,
    /// All channels' escrow left.
    pub escrow: Amount,
    /// The hub's fees.
    pub fees: Amount,
    /// All providers' settlement earnings (informational: already inside `available`).
    pub earned: Amount,
}

impl Totals {
    /// Every nano-WRN deposited is in exactly one place.
    pub fn conserved(&self) -> bool {
        u128::from(self.available.nano())
            + u128::from(self.escrow.nano())
            + u128::from(self.fees.nano())
            == u128::from(self.deposited.nano())
    }
}

/// An amount as the databases store it, or the error that it is too large.
pub(crate) fn to_stored(amount: Amount) -> Result<i64, LedgerError> {
    i64::try_from(amount.nano()).map_err(|_| LedgerError::AmountTooLarge { amount })
}

/// A stored integer back as an amount; a negative one means the store is damaged.
pub(crate) fn from_stored(value: i64, what: &str) -> Result<Amount, LedgerError> {
    u64::try_from(value)
        .map(Amount::from_nano)
        .map_err(|_| LedgerError::Corrupt(format!("{what} is negative ({value})")))
}

pub(crate) fn node_from_stored(bytes: &[u8], what: &str) -> Result<NodeId, LedgerError> {
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| LedgerError::Corrupt(format!("{what} is {} bytes", bytes.len())))?;
    NodeId::from_public_key(key)
        .map_err(|_| LedgerError::Corrupt(format!("{what} is not an ed25519 key")))
}

pub(crate) fn channel_from_stored(bytes: &[u8]) -> Result<ChannelId, LedgerError> {
    bytes
        .try_into()
        .map(ChannelId)
        .map_err(|_| LedgerError::Corrupt(format!("channel id is {} bytes", bytes.len())))
}

/// Unix seconds now, for history entries.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A channel as a batch sees it: its owner's key bytes (compared, never decoded), what is
/// left and whether it is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelState {
    pub consumer: [u8; 32],
    pub left: Amount,
    pub overdrawn: bool,
}

/// One settlement that moved money, for the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Payment {
    pub channel: ChannelId,
    pub consumer: NodeId,
    pub provider: NodeId,
    pub paid: Amount,
    pub fee: Amount,
}

/// What a batch of settlements writes: the final state of every channel and pair it changed,
/// the credit to every provider, the fees, and one history row per payment.
#[derive(Debug, Default)]
pub(crate) struct SettlePlan {
    pub outcomes: Vec<Result<SettleOutcome, SettleRefusal>>,
    pub channels: BTreeMap<ChannelId, ChannelState>,
    pub pairs: BTreeMap<(ChannelId, NodeId), Amount>,
    /// Sorted by provider so databases lock account rows in one order.
    pub credits: BTreeMap<NodeId, Amount>,
    pub fees: Amount,
    pub payments: Vec<Payment>,
}

/// The channels and pairs a batch touches, each once, in first-seen order.
pub(crate) fn batch_keys(
    batch: &[(Promise, FeeBps)],
) -> (Vec<ChannelId>, Vec<(ChannelId, NodeId)>) {
    let mut channels = Vec::new();
    let mut seen_channels = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    let mut seen_pairs = std::collections::HashSet::new();
    for (p, _) in batch {
        if seen_channels.insert(p.channel) {
            channels.push(p.channel);
        }
        if seen_pairs.insert((p.channel, p.provider)) {
            pairs.push((p.channel, p.provider));
        }
    }
    (channels, pairs)
}

/// Applies `batch` in order to the rows it reads (`channels`: every existing channel the
/// batch names; `settled`: every existing pair it names, absent meaning zero) and says what
/// to write. The one place settlement happens, for every ledger.
pub(crate) fn plan_settlements(
    batch: &[(Promise, FeeBps)],
    mut channels: HashMap<ChannelId, ChannelState>,
    mut settled: HashMap<(ChannelId, NodeId), Amount>,
) -> Result<SettlePlan, LedgerError> {
    let overflow = || LedgerError::Corrupt("a settlement sum overflowed".to_string());
    let mut plan = SettlePlan {
        outcomes: Vec::with_capacity(batch.len()),
        ..SettlePlan::default()
    };
    for (promise, fee) in batch {
        let Some(channel) = channels.get_mut(&promise.channel) else {
            plan.outcomes.push(Err(SettleRefusal::UnknownChannel {
                channel: promise.channel,
            }));
            continue;
        };
        if channel.consumer != promise.consumer.public_key() {
            let owner = node_from_stored(&channel.consumer, "channel owner")?;
            plan.outcomes.push(Err(SettleRefusal::NotChannelOwner {
                channel: promise.channel,
                owner,
                claimed: promise.consumer,
            }));
            continue;
        }
        let key = (promise.channel, promise.provider);
        let before = settled.get(&key).copied().unwrap_or(Amount::ZERO);
        let decision = settle(
            SettleState {
                escrow_left: channel.left,
                settled: before,
            },
            promise.cumulative,
            *fee,
        );
        let to_provider = decision
            .paid
            .checked_sub(decision.fee)
            .ok_or_else(overflow)?;
        if decision.paid > Amount::ZERO || (decision.overdrawn && !channel.overdrawn) {
            channel.left = channel
                .left
                .checked_sub(decision.paid)
                .ok_or_else(overflow)?;
            channel.overdrawn |= decision.overdrawn;
            plan.channels.insert(promise.channel, *channel);
        }
        if decision.paid > Amount::ZERO {
            settled.insert(key, decision.settled);
            plan.pairs.insert(key, decision.settled);
            let credit = plan.credits.entry(promise.provider).or_default();
            *credit = credit.checked_add(to_provider).ok_or_else(overflow)?;
            plan.fees = plan.fees.checked_add(decision.fee).ok_or_else(overflow)?;
            plan.payments.push(Payment {
                channel: promise.channel,
                consumer: promise.consumer,
                provider: promise.provider,
                paid: decision.paid,
                fee: decision.fee,
            });
        }
        plan.outcomes.push(Ok(SettleOutcome {
            paid: decision.paid,
            fee: decision.fee,
            to_provider,
            settled: decision.settled,
            overdrawn: decision.overdrawn,
            escrow_left: channel.left,
        }));
    }
    Ok(plan)
}

/// History rows as stored: `kind` is one of these strings.
pub(crate) mod kind {
    pub const DEPOSIT: &str = "deposit";
    pub const ESCROW_OPEN: &str = "escrow_open";
    pub const ESCROW_ADD: &str = "escrow_add";
    pub const SETTLE: &str = "settle";
}

/// A stored history row, before it is seen from one account's side.
#[derive(Clone, Debug)]
pub(crate) struct HistoryRow {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub account: Vec<u8>,
    pub counterparty: Option<Vec<u8>>,
    pub channel: Option<Vec<u8>>,
    pub amount: i64,
    pub fee: i64,
    pub memo: String,
}

/// Turns stored rows (newest first) into `account`'s entries. A settlement appears as
/// `Paid` to its consumer and `Earned` (after the fee) to its provider; both if they are one.
pub(crate) fn entries_for(
    account: NodeId,
    rows: Vec<HistoryRow>,
    limit: usize,
) -> Result<Vec<Entry>, LedgerError> {
    let mine = account.public_key();
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for row in rows {
        let seq = u64::try_from(row.seq)
            .map_err(|_| LedgerError::Corrupt(format!("history seq {}", row.seq)))?;
        let at = u64::try_from(row.at).unwrap_or(0);
        let amount = from_stored(row.amount, "history amount")?;
        let fee = from_stored(row.fee, "history fee")?;
        let channel = row
            .channel
            .as_deref()
            .map(channel_from_stored)
            .transpose()?;
        let base = |kind, amount, counterparty| Entry {
            seq,
            at,
            kind,
            amount,
            fee,
            channel,
            counterparty,
            memo: row.memo.clone(),
        };
        let simple = match row.kind.as_str() {
            kind::DEPOSIT => Some(EntryKind::Deposit),
            kind::ESCROW_OPEN => Some(EntryKind::EscrowOpened),
            kind::ESCROW_ADD => Some(EntryKind::EscrowAdded),
            kind::SETTLE => None,
            other => return Err(LedgerError::Corrupt(format!("history kind {other:?}"))),
        };
        if let Some(kind) = simple {
            out.push(base(kind, amount, None));
            continue;
        }
        let consumer = node_from_stored(&row.account, "history account")?;
        let provider = row
            .counterparty
            .as_deref()
            .map(|b| node_from_stored(b, "history counterparty"))
            .transpose()?
            .ok_or_else(|| LedgerError::Corrupt("a settlement without a provider".into()))?;
        if provider.public_key() == mine {
            let earned = amount
                .checked_sub(fee)
                .ok_or_else(|| LedgerError::Corrupt("a fee above its payment".into()))?;
            out.push(base(EntryKind::Earned, earned, Some(consumer)));
        }
        if consumer.public_key() == mine {
            out.push(base(EntryKind::Paid, amount, Some(provider)));
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// A limit as SQL wants it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
