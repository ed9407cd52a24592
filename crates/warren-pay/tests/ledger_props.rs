//! Property tests: random sequences of deposits, escrows, promises from several consumers to
//! several providers, replays of old promises, batches and hub restarts, run through a
//! [`Hub`] against each ledger and checked step by step against a plain model of the rules:
//!
//! - money is conserved (available + escrow + fees = everything deposited);
//! - nothing is paid twice: what a (channel, provider) pair was paid in total equals its
//!   settled amount, which never exceeds the largest cumulative promise it was sent;
//! - the fee is exactly floor(paid × bps / 10,000) and never above 5 % of what was paid;
//! - an escrow never goes negative, and a channel is marked overdrawn exactly when a promise
//!   asked for more than it held;
//! - a restart (memory: a copy of the books; SQLite: the file reopened; PostgreSQL: a new
//!   pool) changes nothing.
//!
//! Memory runs 256 cases, SQLite 32, PostgreSQL 12 when WARREN_TEST_POSTGRES is set.

mod ledger_support;

use std::collections::HashMap;
use std::path::PathBuf;

use ledger_support::*;
use proptest::prelude::*;
use warren_pay::ledger::{
    EntryKind, Ledger, LedgerError, MAX_STORED, MemoryLedger, PgLedger, SqliteLedger,
};
use warren_pay::{ChannelId, FeeBps, Hub, HubError, SettleOutcome, SignedPromise};
use warren_types::Amount;

const HUB: u32 = 1000;
/// Node numbers 0..NODES take every role: consumer, provider, both.
const NODES: u8 = 5;
const SLOTS: u8 = 2;

#[derive(Clone, Debug)]
enum Msg {
    /// A new promise: the pair's largest cumulative so far plus `grow`, signed by
    /// `consumer` against channel `slot` of `owner` (usually the consumer itself).
    New {
        consumer: u8,
        owner: u8,
        slot: u8,
        provider: u8,
        grow: u64,
    },
    /// A promise sent before (a replay, or an older one), picked by index.
    Old(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Deposit { who: u8, amount: u64 },
    Open { who: u8, slot: u8, amount: u64 },
    Add { who: u8, slot: u8, amount: u64 },
    Settle { send: Msg, fee: u16 },
    Batch { sends: Vec<Msg>, fee: u16 },
    Restart,
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => 0u64..1_000_000,
        1 => Just(MAX_STORED.nano()),
        1 => Just(u64::MAX),
    ]
}

fn send() -> impl Strategy<Value = Msg> {
    let new = (
        0..NODES,
        0..NODES,
        any::<bool>(),
        0..SLOTS,
        0..NODES,
        prop_oneof![
            20 => 0u64..200_000,
            1 => Just(u64::MAX),
        ],
    )
        .prop_map(|(consumer, other, honest, slot, provider, grow)| Msg::New {
            consumer,
            // Most promises are against the signer's own channel.
            owner: if honest || other % 4 != 0 {
                consumer
            } else {
                other
            },
            slot,
            provider,
            grow,
        });
    prop_oneof![3 => new, 1 => any::<usize>().prop_map(Msg::Old)]
}

fn fee() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(1), Just(100), Just(250), Just(500)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NODES, amount()).prop_map(|(who, amount)| Op::Deposit { who, amount }),
        2 => (0..NODES, 0..SLOTS, amount()).prop_map(|(who, slot, amount)| Op::Open { who, slot, amount }),
        1 => (0..NODES, 0..SLOTS, amount()).prop_map(|(who, slot, amount)| Op::Add { who, slot, amount }),
        6 => (send(), fee()).prop_map(|(send, fee)| Op::Settle { send, fee }),
        2 => (prop::collection::vec(send(), 1..16), fee()).prop_map(|(sends, fee)| Op::Batch { sends, fee }),
        1 => Just(Op::Restart),
    ]
}

fn chan(owner: u8, slot: u8) -> ChannelId {
    channel(u32::from(owner) * 10 + u32::from(slot))
}

/// The rules, written out plainly: what every ledger must agree with.
#[derive(Default, Debug)]
struct Model {
    deposited: u64,
    fees: u64,
    available: HashMap<u8, u64>,
    earned: HashMap<u8, u64>,
    /// channel -> (owner, funded, left, overdrawn)
    channels: HashMap<ChannelId, (u8, u64, u64, bool)>,
    /// (channel, provider) -> (settled, paid in total, largest cumulative sent)
    pairs: HashMap<(ChannelId, u8), (u64, u64, u64)>,
    /// Every promise sent that was meant for a real channel, with who signed it.
    sent: Vec<(SignedPromise, u8, ChannelId, u8, u64)>,
    /// Every history entry, oldest first: (whose, kind, amount, fee, counterparty).
    log: Vec<(u8, EntryKind, u64, u64, Option<u8>)>,
}

const STORED_MAX: u64 = i64::MAX as u64;

impl Model {
    fn deposit(&mut self, who: u8, amount: u64) -> Result<(), &'static str> {
        if amount > STORED_MAX {
            return Err("AmountTooLarge");
        }
        if self.deposited + amount > STORED_MAX {
            return Err("SupplyCap");
        }
        self.deposited += amount;
        *self.available.entry(who).or_default() += amount;
        self.log.push((who, EntryKind::Deposit, amount, 0, None));
        Ok(())
    }

    fn escrow(&mut self, who: u8, slot: u8, amount: u64, open: bool) -> Result<(), &'static str> {
        if amount > STORED_MAX {
            return Err("AmountTooLarge");
        }
        let id = chan(who, slot);
        match (open, self.channels.get(&id)) {
            (true, Some(_)) => return Err("ChannelExists"),
            (false, None) => return Err("UnknownChannel"),
            (false, Some((owner, ..))) if *owner != who => return Err("NotChannelOwner"),
            _ => {}
        }
        let available = self.available.entry(who).or_default();
        if *available < amount {
            return Err("Insufficient");
        }
        *available -= amount;
        let c = self.channels.entry(id).or_insert((who, 0, 0, false));
        c.1 += amount;
        c.2 += amount;
        let kind = if open {
            EntryKind::EscrowOpened
        } else {
            EntryKind::EscrowAdded
        };
        self.log.push((who, kind, amount, 0, None));
        Ok(())
    }

    /// What settling should do: the expected outcome, or the refusal's name.
    fn settle(
        &mut self,
        consumer: u8,
        id: ChannelId,
        provider: u8,
        cumulative: u64,
        bps: u16,
    ) -> Result<(u64, u64, u64, bool, u64), &'static str> {
        let Some(c) = self.channels.get_mut(&id) else {
            return Err("UnknownChannel");
        };
        if c.0 != consumer {
            return Err("NotChannelOwner");
        }
        let pair = self.pairs.entry((id, provider)).or_default();
        pair.2 = pair.2.max(cumulative);
        let growth = cumulative.saturating_sub(pair.0);
        let paid = growth.min(c.2);
        let fee = (u128::from(paid) * u128::from(bps.min(500)) / 10_000) as u64;
        let overdrawn = growth > c.2;
        c.2 -= paid;
        c.3 |= overdrawn;
        pair.0 += paid;
        pair.1 += paid;
        self.fees += fee;
        *self.available.entry(provider).or_default() += paid - fee;
        *self.earned.entry(provider).or_default() += paid - fee;
        if paid > 0 {
            // Newest first, a self-payment reads Earned then Paid: log them the other way.
            self.log
                .push((consumer, EntryKind::Paid, paid, fee, Some(provider)));
            self.log
                .push((provider, EntryKind::Earned, paid - fee, fee, Some(consumer)));
        }
        Ok((paid, fee, pair.0, overdrawn, c.2))
    }
}

fn error_name(e: &LedgerError) -> &'static str {
    match e {
        LedgerError::AmountTooLarge { .. } => "AmountTooLarge",
        LedgerError::SupplyCap { .. } => "SupplyCap",
        LedgerError::Insufficient { .. } => "Insufficient",
        LedgerError::ChannelExists { .. } => "ChannelExists",
        LedgerError::UnknownChannel { .. } => "UnknownChannel",
        LedgerError::NotChannelOwner { .. } => "NotChannelOwner",
        other => panic!("unexpected ledger failure: {other}"),
    }
}

fn hub_error_name(e: &HubError) -> &'static str {
    use warren_pay::ledger::SettleRefusal;
    match e {
        HubError::Refused(SettleRefusal::UnknownChannel { .. }) => "UnknownChannel",
        HubError::Refused(SettleRefusal::NotChannelOwner { .. }) => "NotChannelOwner",
        other => panic!("unexpected hub failure: {other}"),
    }
}

/// A ledger under test that can be restarted.
trait Backend {
    type L: Ledger + Clone;
    fn ledger(&self) -> &Self::L;
    async fn restart(&mut self);
    async fn finish(self);
}

struct Memory(MemoryLedger);

impl Backend for Memory {
    type L = MemoryLedger;
    fn ledger(&self) -> &MemoryLedger {
        &self.0
    }
    async fn restart(&mut self) {
        self.0 = self.0.reopen();
    }
    async fn finish(self) {}
}

struct Sqlite {
    ledger: SqliteLedger,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Backend for Sqlite {
    type L = SqliteLedger;
    fn ledger(&self) -> &SqliteLedger {
        &self.ledger
    }
    async fn restart(&mut self) {
        self.ledger.close().await;
        self.ledger = sqlite(&self.dir).await;
    }
    async fn finish(self) {
        self.ledger.close().await;
    }
}

struct Postgres(PgLedger, String, String);

impl Backend for Postgres {
    type L = PgLedger;
    fn ledger(&self) -> &PgLedger {
        &self.0
    }
    async fn restart(&mut self) {
        self.0.close().await;
        self.0 = postgres(&self.1, &self.2).await;
    }
    async fn finish(self) {
        self.0.close().await;
        drop_schema(&self.1, &self.2).await;
    }
}

/// Turns a `Msg` into a signed promise and what the model knows of it.
fn make(model: &Model, s: &Msg) -> Option<(SignedPromise, u8, ChannelId, u8, u64)> {
    match s {
        Msg::New {
            consumer,
            owner,
            slot,
            provider,
            grow,
        } => {
            let id = chan(*owner, *slot);
            let sent_max = model.pairs.get(&(id, *provider)).map_or(0, |p| p.2);
            let cum = sent_max.saturating_add(*grow);
            let p = promise(
                node(HUB),
                id,
                u32::from(*consumer),
                u32::from(*provider),
                cum,
            );
            Some((
                signed(&p, u32::from(*consumer)),
                *consumer,
                id,
                *provider,
                cum,
            ))
        }
        Msg::Old(i) if !model.sent.is_empty() => Some(model.sent[i % model.sent.len()].clone()),
        Msg::Old(_) => None,
    }
}

fn check_outcome(
    got: &Result<SettleOutcome, HubError>,
    want: Result<(u64, u64, u64, bool, u64), &'static str>,
    bps: u16,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(o), Ok((paid, fee, settled, overdrawn, left))) => {
            prop_assert_eq!(
                (
                    o.paid.nano(),
                    o.fee.nano(),
                    o.settled.nano(),
                    o.overdrawn,
                    o.escrow_left.nano()
                ),
                (paid, fee, settled, overdrawn, left)
            );
            prop_assert_eq!(o.to_provider.nano(), paid - fee);
            prop_assert!(u128::from(o.fee.nano()) * 10_000 <= u128::from(o.paid.nano()) * 500);
            prop_assert_eq!(
                u128::from(o.fee.nano()),
                u128::from(o.paid.nano()) * u128::from(bps.min(500)) / 10_000
            );
        }
        (Err(e), Err(name)) => prop_assert_eq!(hub_error_name(e), name),
        (got, want) => prop_assert!(false, "ledger said {:?}, the model {:?}", got, want),
    }
    Ok(())
}

/// Compares the whole ledger with the model.
async fn check_books<L: Ledger>(l: &L, m: &Model) -> Result<(), TestCaseError> {
    let t = l.totals().await.unwrap();
    prop_assert!(t.conserved(), "not conserved: {:?}", t);
    prop_assert_eq!(t.deposited.nano(), m.deposited);
    prop_assert_eq!(t.fees.nano(), m.fees);
    for who in 0..NODES {
        let b = l.balance(node(u32::from(who))).await.unwrap();
        let escrow: u64 = m
            .channels
            .values()
            .filter(|c| c.0 == who)
            .map(|c| c.2)
            .sum();
        prop_assert_eq!(
            b.available.nano(),
            m.available.get(&who).copied().unwrap_or(0)
        );
        prop_assert_eq!(b.earned.nano(), m.earned.get(&who).copied().unwrap_or(0));
        prop_assert_eq!(b.escrow.nano(), escrow);
    }
    for (id, (owner, funded, left, overdrawn)) in &m.channels {
        let e = l
            .escrow(*id)
            .await
            .unwrap()
            .expect("a channel the model holds");
        prop_assert_eq!(e.consumer, node(u32::from(*owner)));
        prop_assert_eq!(
            (e.funded.nano(), e.left.nano(), e.overdrawn),
            (*funded, *left, *overdrawn)
        );
    }
    for ((id, provider), (settled, paid, sent_max)) in &m.pairs {
        let s = l.settled(*id, node(u32::from(*provider))).await.unwrap();
        prop_assert_eq!(s.nano(), *settled);
        // Nothing paid twice: all it was ever paid is its settled amount, at most the
        // largest promise it holds.
        prop_assert_eq!(*paid, *settled);
        prop_assert!(*settled <= *sent_max);
    }
    Ok(())
}

async fn run<B: Backend>(mut backend: B, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    for op in ops {
        let l = backend.ledger().clone();
        match op {
            Op::Deposit { who, amount } => {
                let got = l
                    .deposit(node(u32::from(who)), Amount::from_nano(amount), "t")
                    .await;
                match (got, m.deposit(who, amount)) {
                    (Ok(a), Ok(())) => prop_assert_eq!(a.nano(), m.available[&who]),
                    (Err(e), Err(name)) => prop_assert_eq!(error_name(&e), name),
                    (got, want) => prop_assert!(false, "deposit: {:?} vs {:?}", got, want),
                }
            }
            Op::Open { who, slot, amount } | Op::Add { who, slot, amount } => {
                let open = matches!(op, Op::Open { .. });
                let (n, id, a) = (
                    node(u32::from(who)),
                    chan(who, slot),
                    Amount::from_nano(amount),
                );
                let got = if open {
                    l.open_escrow(n, id, a).await
                } else {
                    l.add_to_escrow(n, id, a).await
                };
                match (got, m.escrow(who, slot, amount, open)) {
                    (Ok(e), Ok(())) => prop_assert_eq!(e.left.nano(), m.channels[&id].2),
                    (Err(e), Err(name)) => prop_assert_eq!(error_name(&e), name),
                    (got, want) => prop_assert!(false, "escrow: {:?} vs {:?}", got, want),
                }
            }
            Op::Settle { send, fee } => {
                let Some(s) = make(&m, &send) else { continue };
                let hub = Hub::new(l, node(HUB), FeeBps(fee)).unwrap();
                let got = hub.settle(&s.0).await;
                let want = m.settle(s.1, s.2, s.3, s.4, fee);
                check_outcome(&got, want, fee)?;
                if want.is_ok() {
                    m.sent.push(s);
                }
            }
            Op::Batch { sends, fee } => {
                let mut batch = Vec::new();
                for send in &sends {
                    // Later promises of the batch build on the earlier ones.
                    if let Some(s) = make(&m, send) {
                        if let Some(p) = m.pairs.get_mut(&(s.2, s.3)) {
                            p.2 = p.2.max(s.4);
                        } else if m.channels.contains_key(&s.2) {
                            m.pairs.insert((s.2, s.3), (0, 0, s.4));
                        }
                        batch.push(s);
                    }
                }
                let hub = Hub::new(l, node(HUB), FeeBps(fee)).unwrap();
                let signed: Vec<SignedPromise> = batch.iter().map(|s| s.0.clone()).collect();
                let got = hub.settle_many(&signed).await.unwrap();
                prop_assert_eq!(got.len(), batch.len());
                for (g, s) in got.iter().zip(batch) {
                    let want = m.settle(s.1, s.2, s.3, s.4, fee);
                    check_outcome(g, want, fee)?;
                    if want.is_ok() {
                        m.sent.push(s);
                    }
                }
            }
            Op::Restart => backend.restart().await,
        }
        check_books(backend.ledger(), &m).await?;
    }
    // Everything ever sent, sent again after a restart: only what an overdrawn channel
    // still owed and has since been funded for is paid (the model says what); a second
    // round pays nothing at all.
    backend.restart().await;
    let l = backend.ledger().clone();
    let hub = Hub::new(l.clone(), node(HUB), FeeBps::DEFAULT).unwrap();
    let again: Vec<SignedPromise> = m.sent.iter().map(|s| s.0.clone()).collect();
    let firsts: Vec<_> = m.sent.clone();
    for (r, s) in hub.settle_many(&again).await.unwrap().iter().zip(firsts) {
        let want = m.settle(s.1, s.2, s.3, s.4, FeeBps::DEFAULT.0);
        check_outcome(r, want, FeeBps::DEFAULT.0)?;
    }
    check_books(&l, &m).await?;
    let before = l.totals().await.unwrap();
    for r in hub.settle_many(&again).await.unwrap() {
        let o = r.unwrap();
        prop_assert!(o.paid == Amount::ZERO, "a replay paid: {:?}", o);
    }
    prop_assert_eq!(l.totals().await.unwrap(), before);
    // Each account's history, whole and its latest few.
    for who in 0..NODES {
        let want: Vec<_> = m
            .log
            .iter()
            .rev()
            .filter(|e| e.0 == who)
            .map(|e| (e.1, e.2, e.3, e.4.map(|n| node(u32::from(n)))))
            .collect();
        for limit in [10_000, 3] {
            let got: Vec<_> = l
                .history(node(u32::from(who)), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.kind, e.amount.nano(), e.fee.nano(), e.counterparty))
                .collect();
            prop_assert_eq!(&got[..], &want[..want.len().min(limit)]);
        }
    }
    backend.finish().await;
    Ok(())
}

/// A few accounts funded and channels opened first (so most promises meet a channel), then
/// anything.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let setup = prop::collection::vec((0..NODES, 0..SLOTS, 0u64..2_000_000, 0u64..1_000_000), 0..6);
    (setup, prop::collection::vec(op(), 1..60)).prop_map(|(setup, rest)| {
        let mut ops = Vec::new();
        for (who, slot, deposit, escrow) in setup {
            ops.push(Op::Deposit {
                who,
                amount: deposit,
            });
            ops.push(Op::Open {
                who,
                slot,
                amount: escrow,
            });
        }
        ops.extend(rest);
        ops
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn memory_ledger_keeps_the_rules(ops in ops()) {
        runtime().block_on(run(Memory(MemoryLedger::new()), ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn sqlite_ledger_keeps_the_rules(ops in ops()) {
        runtime().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().to_path_buf();
            let ledger = sqlite(&dir).await;
            run(Sqlite { ledger, dir, _tmp: tmp }, ops).await
        })?;
    }
}

#[test]
fn postgres_ledger_keeps_the_rules() {
    let Some(url) = pg_url() else { return };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
    runner
        .run(&ops(), |ops| {
            runtime().block_on(async {
                let schema = fresh_schema();
                let l = postgres(&url, &schema).await;
                run(Postgres(l, url.clone(), schema), ops).await
            })
        })
        .unwrap();
}
