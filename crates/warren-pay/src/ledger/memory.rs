//! The ledger in memory: the same rules as the databases, for tests and simulations. Each
//! operation takes one lock, checks everything, then applies all of its changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use warren_types::{Amount, NodeId};

use super::{
    Balance, ChannelState, Entry, Escrow, HistoryRow, Ledger, LedgerError, SettleOutcome,
    SettleRefusal, Totals, batch_keys, entries_for, kind, now_unix, plan_settlements, to_stored,
};
use crate::records::{ChannelId, Promise};
use crate::settle::FeeBps;

#[derive(Clone, Copy, Debug, Default)]
struct Account {
    available: Amount,
    earned: Amount,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    consumer: NodeId,
    funded: Amount,
    left: Amount,
    overdrawn: bool,
}

#[derive(Clone, Debug, Default)]
struct State {
    accounts: HashMap<NodeId, Account>,
    channels: HashMap<ChannelId, Channel>,
    settled: HashMap<(ChannelId, NodeId), Amount>,
    deposited: Amount,
    fees: Amount,
    history: Vec<HistoryRow>,
}

/// A history row that is not a settlement.
fn row(
    kind: &str,
    account: NodeId,
    channel: Option<ChannelId>,
    amount: Amount,
    memo: &str,
) -> HistoryRow {
    HistoryRow {
        seq: 0,
        at: now_unix(),
        kind: kind.to_string(),
        account: account.public_key().to_vec(),
        counterparty: None,
        channel: channel.map(|c| c.0.to_vec()),
        amount: amount.nano() as i64,
        fee: 0,
        memo: memo.to_string(),
    }
}

impl State {
    fn record(&mut self, mut row: HistoryRow) {
        row.seq = self.history.len() as i64 + 1;
        self.history.push(row);
    }

    fn available(&self, account: NodeId) -> Amount {
        self.accounts
            .get(&account)
            .map(|a| a.available)
            .unwrap_or_default()
    }

    fn escrow(&self, channel: ChannelId, c: &Channel) -> Escrow {
        Escrow {
            channel,
            consumer: c.consumer,
            funded: c.funded,
            left: c.left,
            overdrawn: c.overdrawn,
        }
    }

    /// Takes `amount` from `consumer`'s available balance, or says why not.
    fn take_available(&mut self, consumer: NodeId, amount: Amount) -> Result<(), LedgerError> {
        let available = self.available(consumer);
        let rest = available
            .checked_sub(amount)
            .ok_or(LedgerError::Insufficient {
                account: consumer,
                available,
                wanted: amount,
            })?;
        self.accounts.entry(consumer).or_default().available = rest;
        Ok(())
    }
}

/// The in-memory ledger. Clones share the same books; [`MemoryLedger::reopen`] copies them,
/// as a restarted process would find them on disk.
#[derive(Clone, Debug, Default)]
pub struct MemoryLedger {
    state: Arc<Mutex<State>>,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent ledger holding a copy of these books.
    pub fn reopen(&self) -> Self {
        let state = self.lock().clone();
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation checks before it changes anything, so a panic while holding the
        // lock cannot leave the books half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ledger for MemoryLedger {
    async fn deposit(
        &self,
        account: NodeId,
        amount: Amount,
        memo: &str,
    ) -> Result<Amount, LedgerError> {
        to_stored(amount)?;
        let mut s = self.lock();
        let supply = s
            .deposited
            .checked_add(amount)
            .filter(|t| to_stored(*t).is_ok())
            .ok_or(LedgerError::SupplyCap {
                deposited: s.deposited,
                amount,
            })?;
        // Below the supply cap, so no balance can overflow.
        let a = s.accounts.entry(account).or_default();
        a.available = Amount::from_nano(a.available.nano() + amount.nano());
        let available = a.available;
        s.deposited = supply;
        s.record(row(kind::DEPOSIT, account, None, amount, memo));
        Ok(available)
    }

    async fn open_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, LedgerError> {
        to_stored(amount)?;
        let mut s = self.lock();
        if s.channels.contains_key(&channel) {
            return Err(LedgerError::ChannelExists { channel });
        }
        s.take_available(consumer, amount)?;
        let c = Channel {
            consumer,
            funded: amount,
            left: amount,
            overdrawn: false,
        };
        s.channels.insert(channel, c);
        s.record(row(kind::ESCROW_OPEN, consumer, Some(channel), amount, ""));
        Ok(s.escrow(channel, &c))
    }

    async fn add_to_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, LedgerError> {
        to_stored(amount)?;
        let mut s = self.lock();
        let mut c = *s
            .channels
            .get(&channel)
            .ok_or(LedgerError::UnknownChannel { channel })?;
        if c.consumer != consumer {
            return Err(LedgerError::NotChannelOwner {
                channel,
                owner: c.consumer,
                claimed: consumer,
            });
        }
        s.take_available(consumer, amount)?;
        // Both come out of the supply, which is below the cap.
        c.funded = Amount::from_nano(c.funded.nano() + amount.nano());
        c.left = Amount::from_nano(c.left.nano() + amount.nano());
        s.channels.insert(channel, c);
        s.record(row(kind::ESCROW_ADD, consumer, Some(channel), amount, ""));
        Ok(s.escrow(channel, &c))
    }

    async fn settle_batch(
        &self,
        batch: &[(Promise, FeeBps)],
    ) -> Result<Vec<Result<SettleOutcome, SettleRefusal>>, LedgerError> {
        let mut s = self.lock();
        let (channel_keys, pair_keys) = batch_keys(batch);
        let channels = channel_keys
            .iter()
            .filter_map(|id| {
                s.channels.get(id).map(|c| {
                    let state = ChannelState {
                        consumer: c.consumer.public_key(),
                        left: c.left,
                        overdrawn: c.overdrawn,
                    };
                    (*id, state)
                })
            })
            .collect();
        let settled = pair_keys
            .iter()
            .filter_map(|k| s.settled.get(k).map(|a| (*k, *a)))
            .collect();
        let plan = plan_settlements(batch, channels, settled)?;

        // Check every credit before changing anything.
        let mut credited = Vec::with_capacity(plan.credits.len());
        for (provider, credit) in &plan.credits {
            let a = s.accounts.get(provider).copied().unwrap_or_default();
            let sum = |x: Amount| x.checked_add(*credit).filter(|t| to_stored(*t).is_ok());
            match (sum(a.available), sum(a.earned)) {
                (Some(available), Some(earned)) => {
                    credited.push((*provider, Account { available, earned }))
                }
                _ => return Err(LedgerError::Corrupt("a provider balance overflowed".into())),
            }
        }
        let fees = s
            .fees
            .checked_add(plan.fees)
            .ok_or_else(|| LedgerError::Corrupt("fees overflowed".into()))?;

        for (id, c) in &plan.channels {
            if let Some(ch) = s.channels.get_mut(id) {
                ch.left = c.left;
                ch.overdrawn = c.overdrawn;
            }
        }
        s.settled.extend(plan.pairs.iter().map(|(k, v)| (*k, *v)));
        s.accounts.extend(credited);
        s.fees = fees;
        for p in &plan.payments {
            let mut r = row(kind::SETTLE, p.consumer, Some(p.channel), p.paid, "");
            r.counterparty = Some(p.provider.public_key().to_vec());
            r.fee = p.fee.nano() as i64;
            s.record(r);
        }
        Ok(plan.outcomes)
    }

    async fn balance(&self, account: NodeId) -> Result<Balance, LedgerError> {
        let s = self.lock();
        let a = s.accounts.get(&account).copied().unwrap_or_default();
        let escrow = s
            .channels
            .values()
            .filter(|c| c.consumer == account)
            .map(|c| c.left.nano())
            .sum();
        Ok(Balance {
            available: a.available,
            escrow: Amount::from_nano(escrow),
            earned: a.earned,
        })
    }

    async fn escrow(&self, channel: ChannelId) -> Result<Option<Escrow>, LedgerError> {
        let s = self.lock();
        Ok(s.channels.get(&channel).map(|c| s.escrow(channel, c)))
    }

    async fn channels(&self, consumer: NodeId) -> Result<Vec<Escrow>, LedgerError> {
        let s = self.lock();
        let mut out: Vec<Escrow> = s
            .channels
            .iter()
            .filter(|(_, c)| c.consumer == consumer)
            .map(|(id, c)| s.escrow(*id, c))
            .collect();
        out.sort_by_key(|e| e.channel);
        Ok(out)
    }

    async fn settled(&self, channel: ChannelId, provider: NodeId) -> Result<Amount, LedgerError> {
        let s = self.lock();
        Ok(s.settled
            .get(&(channel, provider))
            .copied()
            .unwrap_or_default())
    }

    async fn history(&self, account: NodeId, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        let rows: Vec<HistoryRow> = {
            let s = self.lock();
            let me = account.public_key();
            s.history
                .iter()
                .rev()
                .filter(|r| r.account == me || r.counterparty.as_deref() == Some(&me[..]))
                .take(limit)
                .cloned()
                .collect()
        };
        entries_for(account, rows, limit)
    }

    async fn totals(&self) -> Result<Totals, LedgerError> {
        let s = self.lock();
        let sum = |it: &mut dyn Iterator<Item = Amount>| {
            Amount::from_nano(it.map(|a| a.nano()).sum::<u64>())
        };
        Ok(Totals {
            deposited: s.deposited,
            available: sum(&mut s.accounts.values().map(|a| a.available)),
            escrow: sum(&mut s.channels.values().map(|c| c.left)),
            fees: s.fees,
            earned: sum(&mut s.accounts.values().map(|a| a.earned)),
        })
    }
}
