//! The ledger's rules, one scenario each, run against every ledger: memory, SQLite and (when
//! WARREN_TEST_POSTGRES names a database) PostgreSQL. And the hub's checks in front of it.

mod ledger_support;

use ledger_support::*;
use warren_pay::ledger::{EntryKind, Ledger, LedgerError, MAX_STORED, MemoryLedger, SettleRefusal};
use warren_pay::{FeeBps, Hub, HubError, PayError};
use warren_types::Amount;

const HUB: u32 = 1000;

/// Runs `scenario` against every ledger.
macro_rules! on_every_ledger {
    ($name:ident, $scenario:ident) => {
        #[test]
        fn $name() {
            let rt = runtime();
            rt.block_on(async {
                $scenario(&MemoryLedger::new()).await;
                let dir = tempfile::tempdir().expect("a temporary directory");
                let l = sqlite(dir.path()).await;
                $scenario(&l).await;
                l.close().await;
                if let Some(url) = pg_url() {
                    let schema = fresh_schema();
                    let l = postgres(&url, &schema).await;
                    $scenario(&l).await;
                    l.close().await;
                    drop_schema(&url, &schema).await;
                }
            });
        }
    };
}

on_every_ledger!(
    settles_growth_minus_fee_and_replays_pay_nothing,
    settle_rules
);
on_every_ledger!(overdrawing_pays_in_arrival_order_and_marks, overdraw_rules);
on_every_ledger!(refuses_what_it_cannot_do, refusals);
on_every_ledger!(history_shows_each_side, history_rules);
on_every_ledger!(a_batch_settles_in_order_and_refuses_alone, batch_rules);
on_every_ledger!(hub_checks_before_it_settles, hub_rules);

async fn settle_rules<L: Ledger>(l: &L) {
    let hub = node(HUB);
    let ch = channel(1);
    assert_eq!(
        l.deposit(node(1), nano(1_000_000), "faucet").await.unwrap(),
        nano(1_000_000)
    );
    let e = l.open_escrow(node(1), ch, nano(600_000)).await.unwrap();
    assert_eq!(
        (e.left, e.funded, e.overdrawn),
        (nano(600_000), nano(600_000), false)
    );
    let b = l.balance(node(1)).await.unwrap();
    assert_eq!((b.available, b.escrow), (nano(400_000), nano(600_000)));

    // 1 % of 100,000 is 1,000.
    let o = l
        .settle(&promise(hub, ch, 1, 2, 100_000), FeeBps::DEFAULT)
        .await
        .unwrap();
    assert_eq!(
        (o.paid, o.fee, o.to_provider),
        (nano(100_000), nano(1_000), nano(99_000))
    );
    assert_eq!(
        (o.settled, o.escrow_left, o.overdrawn),
        (nano(100_000), nano(500_000), false)
    );
    // A replay and an older promise pay nothing.
    for cum in [100_000, 50_000, 0] {
        let o = l
            .settle(&promise(hub, ch, 1, 2, cum), FeeBps::DEFAULT)
            .await
            .unwrap();
        assert!(o.is_replay(), "{cum}: {o:?}");
        assert_eq!(o.settled, nano(100_000));
    }
    // Growth is paid, the fee rounds down: 1 % of 150 is 1.
    let o = l
        .settle(&promise(hub, ch, 1, 2, 100_150), FeeBps::DEFAULT)
        .await
        .unwrap();
    assert_eq!((o.paid, o.fee), (nano(150), nano(1)));
    // A fee above the cap is applied at the cap.
    let o = l
        .settle(&promise(hub, ch, 1, 3, 10_000), FeeBps(900))
        .await
        .unwrap();
    assert_eq!((o.paid, o.fee), (nano(10_000), nano(500)));

    assert_eq!(l.settled(ch, node(2)).await.unwrap(), nano(100_150));
    assert_eq!(l.settled(ch, node(3)).await.unwrap(), nano(10_000));
    assert_eq!(l.settled(ch, node(4)).await.unwrap(), Amount::ZERO);
    let p = l.balance(node(2)).await.unwrap();
    assert_eq!(
        (p.available, p.earned, p.escrow),
        (nano(99_149), nano(99_149), Amount::ZERO)
    );
    let t = conserved(l).await;
    assert_eq!(t.fees, nano(1_000 + 1 + 500));
    assert_eq!(t.deposited, nano(1_000_000));
    assert_eq!(t.escrow, nano(600_000 - 110_150));
}

async fn overdraw_rules<L: Ledger>(l: &L) {
    let hub = node(HUB);
    let ch = channel(2);
    l.deposit(node(1), nano(1_000), "").await.unwrap();
    l.open_escrow(node(1), ch, nano(1_000)).await.unwrap();
    // Two providers promised 700 each: the first to arrive is paid in full, the second
    // gets what is left and the channel is marked.
    let a = l
        .settle(&promise(hub, ch, 1, 2, 700), FeeBps(0))
        .await
        .unwrap();
    assert_eq!((a.paid, a.overdrawn), (nano(700), false));
    let b = l
        .settle(&promise(hub, ch, 1, 3, 700), FeeBps(0))
        .await
        .unwrap();
    assert_eq!(
        (b.paid, b.overdrawn, b.settled, b.escrow_left),
        (nano(300), true, nano(300), Amount::ZERO)
    );
    let e = l.escrow(ch).await.unwrap().unwrap();
    assert!(e.overdrawn);
    assert_eq!(e.left, Amount::ZERO);
    // The rest is owed: re-sent, it pays nothing until the escrow is topped up...
    let again = l
        .settle(&promise(hub, ch, 1, 3, 700), FeeBps(0))
        .await
        .unwrap();
    assert_eq!((again.paid, again.overdrawn), (Amount::ZERO, true));
    l.deposit(node(1), nano(500), "").await.unwrap();
    let e = l.add_to_escrow(node(1), ch, nano(500)).await.unwrap();
    assert!(e.overdrawn, "the mark stays");
    assert_eq!((e.left, e.funded), (nano(500), nano(1_500)));
    // ...and then the remainder, never more.
    let rest = l
        .settle(&promise(hub, ch, 1, 3, 700), FeeBps(0))
        .await
        .unwrap();
    assert_eq!(
        (rest.paid, rest.settled, rest.overdrawn),
        (nano(400), nano(700), false)
    );
    let replay = l
        .settle(&promise(hub, ch, 1, 3, 700), FeeBps(0))
        .await
        .unwrap();
    assert!(replay.is_replay());
    conserved(l).await;
}

async fn refusals<L: Ledger>(l: &L) {
    let hub = node(HUB);
    let too_big = Amount::from_nano(MAX_STORED.nano() + 1);
    assert!(matches!(
        l.deposit(node(1), too_big, "").await,
        Err(LedgerError::AmountTooLarge { .. })
    ));
    l.deposit(node(1), MAX_STORED, "").await.unwrap();
    assert!(matches!(
        l.deposit(node(2), nano(1), "").await,
        Err(LedgerError::SupplyCap { .. })
    ));
    assert!(matches!(
        l.open_escrow(node(2), channel(3), nano(1)).await,
        Err(LedgerError::Insufficient { .. })
    ));
    l.open_escrow(node(1), channel(3), nano(10)).await.unwrap();
    assert!(matches!(
        l.open_escrow(node(1), channel(3), nano(10)).await,
        Err(LedgerError::ChannelExists { .. })
    ));
    assert!(matches!(
        l.open_escrow(node(1), channel(4), too_big).await,
        Err(LedgerError::AmountTooLarge { .. })
    ));
    assert!(matches!(
        l.add_to_escrow(node(2), channel(3), nano(1)).await,
        Err(LedgerError::NotChannelOwner { .. })
    ));
    assert!(matches!(
        l.add_to_escrow(node(1), channel(9), nano(1)).await,
        Err(LedgerError::UnknownChannel { .. })
    ));
    assert!(matches!(
        l.settle(&promise(hub, channel(9), 1, 2, 5), FeeBps(0))
            .await,
        Err(LedgerError::Refused(SettleRefusal::UnknownChannel { .. }))
    ));
    // A promise signed by someone else against this channel.
    assert!(matches!(
        l.settle(&promise(hub, channel(3), 2, 3, 5), FeeBps(0))
            .await,
        Err(LedgerError::Refused(SettleRefusal::NotChannelOwner { .. }))
    ));
    // A promise beyond what the ledger stores only overdraws.
    let o = l
        .settle(&promise(hub, channel(3), 1, 2, u64::MAX), FeeBps(100))
        .await
        .unwrap();
    assert_eq!((o.paid, o.overdrawn), (nano(10), true));
    // Nothing refused changed anything.
    let t = conserved(l).await;
    assert_eq!(t.deposited, MAX_STORED);
}

async fn history_rules<L: Ledger>(l: &L) {
    let hub = node(HUB);
    let ch = channel(5);
    l.deposit(node(1), nano(10_000), "faucet").await.unwrap();
    l.open_escrow(node(1), ch, nano(5_000)).await.unwrap();
    l.add_to_escrow(node(1), ch, nano(1_000)).await.unwrap();
    l.settle(&promise(hub, ch, 1, 2, 1_000), FeeBps(100))
        .await
        .unwrap();
    l.settle(&promise(hub, ch, 1, 2, 1_000), FeeBps(100))
        .await
        .unwrap(); // replay: no entry
    l.settle(&promise(hub, ch, 1, 1, 200), FeeBps(100))
        .await
        .unwrap(); // paying itself

    let h = l.history(node(1), 10).await.unwrap();
    let kinds: Vec<_> = h
        .iter()
        .map(|e| (e.kind, e.amount.nano(), e.fee.nano()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EntryKind::Earned, 198, 2),
            (EntryKind::Paid, 200, 2),
            (EntryKind::Paid, 1_000, 10),
            (EntryKind::EscrowAdded, 1_000, 0),
            (EntryKind::EscrowOpened, 5_000, 0),
            (EntryKind::Deposit, 10_000, 0),
        ]
    );
    assert_eq!(h.last().unwrap().memo, "faucet");
    assert_eq!(h[2].counterparty, Some(node(2)));
    assert_eq!(h[2].channel, Some(ch));
    assert!(h.windows(2).all(|w| w[0].seq >= w[1].seq), "newest first");

    let p = l.history(node(2), 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].kind, p[0].amount, p[0].counterparty),
        (EntryKind::Earned, nano(990), Some(node(1)))
    );
    assert_eq!(l.history(node(1), 2).await.unwrap().len(), 2);
    assert!(l.history(node(3), 10).await.unwrap().is_empty());
    let chans = l.channels(node(1)).await.unwrap();
    assert_eq!(chans.len(), 1);
    assert_eq!(chans[0].left, nano(6_000 - 1_200));
}

async fn batch_rules<L: Ledger>(l: &L) {
    let hub = node(HUB);
    let ch = channel(6);
    l.deposit(node(1), nano(1_000), "").await.unwrap();
    l.open_escrow(node(1), ch, nano(1_000)).await.unwrap();
    let fee = FeeBps(100);
    let batch = vec![
        (promise(hub, ch, 1, 2, 300), fee),
        (promise(hub, channel(99), 1, 2, 300), fee), // unknown channel
        (promise(hub, ch, 1, 2, 200), fee),          // older: nothing
        (promise(hub, ch, 1, 2, 500), fee),          // +200
        (promise(hub, ch, 2, 3, 100), fee),          // not the channel's consumer
        (promise(hub, ch, 1, 3, 600), fee),          // 500 left: overdraws
        (promise(hub, ch, 1, 2, 900), fee),          // nothing left
    ];
    let out = l.settle_batch(&batch).await.unwrap();
    let paid: Vec<Option<u64>> = out
        .iter()
        .map(|r| r.as_ref().ok().map(|o| o.paid.nano()))
        .collect();
    assert_eq!(
        paid,
        vec![
            Some(300),
            None,
            Some(0),
            Some(200),
            None,
            Some(500),
            Some(0)
        ]
    );
    assert!(matches!(out[1], Err(SettleRefusal::UnknownChannel { .. })));
    assert!(matches!(out[4], Err(SettleRefusal::NotChannelOwner { .. })));
    assert!(out[5].as_ref().unwrap().overdrawn && out[6].as_ref().unwrap().overdrawn);
    assert_eq!(l.settled(ch, node(2)).await.unwrap(), nano(500));
    assert_eq!(l.settled(ch, node(3)).await.unwrap(), nano(500));
    // Fees are per settlement, rounded down each time: 3 + 2 + 5.
    assert_eq!(conserved(l).await.fees, nano(10));
    assert!(l.settle_batch(&[]).await.unwrap().is_empty());
}

async fn hub_rules<L: Ledger + Clone>(l: &L) {
    let me = node(HUB);
    assert!(matches!(
        Hub::new(l.clone(), me, FeeBps(501)),
        Err(HubError::FeeAboveCap { fee: 501 })
    ));
    let hub = Hub::new(l.clone(), me, FeeBps(500)).unwrap();
    assert!(matches!(
        hub.topup(node(1), nano(5)).await,
        Err(HubError::FaucetOff)
    ));
    let hub = hub.faucet(true);
    assert_eq!(
        hub.topup(node(1), nano(10_000)).await.unwrap(),
        nano(10_000)
    );
    let ch = channel(7);
    hub.open_escrow(node(1), ch, nano(10_000)).await.unwrap();

    let good = signed(&promise(me, ch, 1, 2, 1_000), 1);
    let o = hub.settle(&good).await.unwrap();
    assert_eq!((o.paid, o.fee), (nano(1_000), nano(50)));
    assert!(hub.settle(&good).await.unwrap().is_replay());

    // Signed by the provider instead of the consumer it names.
    let forged = warren_pay::SignedPromise::sign(&promise(me, ch, 1, 2, 5_000), &identity(2));
    assert!(forged.is_err(), "sign() itself refuses the wrong signer");
    let mut bytes = signed(&promise(me, ch, 1, 2, 5_000), 1).to_bytes();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let tampered = warren_pay::SignedPromise::from_bytes(&bytes).unwrap();
    assert!(matches!(
        hub.settle(&tampered).await,
        Err(HubError::BadPromise {
            source: PayError::BadSignature
        })
    ));
    let elsewhere = signed(&promise(node(HUB + 1), ch, 1, 2, 5_000), 1);
    assert!(matches!(
        hub.settle(&elsewhere).await,
        Err(HubError::WrongHub { .. })
    ));
    // Consumer 3 signs a promise against consumer 1's channel.
    let theirs = signed(&promise(me, ch, 3, 2, 5_000), 3);
    assert!(matches!(
        hub.settle(&theirs).await,
        Err(HubError::Refused(SettleRefusal::NotChannelOwner { .. }))
    ));

    let many = [
        signed(&promise(me, ch, 1, 2, 2_000), 1),
        tampered,
        elsewhere,
        signed(&promise(me, ch, 1, 3, 1_000), 1),
        good,
    ];
    let out = hub.settle_many(&many).await.unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_ref().unwrap().paid, nano(1_000));
    assert!(matches!(out[1], Err(HubError::BadPromise { .. })));
    assert!(matches!(out[2], Err(HubError::WrongHub { .. })));
    assert_eq!(out[3].as_ref().unwrap().paid, nano(1_000));
    assert!(out[4].as_ref().unwrap().is_replay());
    let b = hub.balance(node(2)).await.unwrap();
    assert_eq!(b.available, nano(2_000 - 100));
    assert_eq!(hub.escrow(ch).await.unwrap().unwrap().left, nano(7_000));
    conserved(hub.ledger()).await;
}

#[test]
fn a_sqlite_ledger_keeps_its_books_across_reopening() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let hub = node(HUB);
        {
            let l = sqlite(dir.path()).await;
            l.deposit(node(1), nano(1_000), "").await.unwrap();
            l.open_escrow(node(1), channel(1), nano(800)).await.unwrap();
            l.settle(&promise(hub, channel(1), 1, 2, 300), FeeBps(100))
                .await
                .unwrap();
            l.close().await;
        }
        let l = sqlite(dir.path()).await;
        assert_eq!(l.settled(channel(1), node(2)).await.unwrap(), nano(300));
        assert!(
            l.settle(&promise(hub, channel(1), 1, 2, 300), FeeBps(100))
                .await
                .unwrap()
                .is_replay()
        );
        let t = conserved(&l).await;
        assert_eq!(
            (t.fees, t.escrow, t.available),
            (nano(3), nano(500), nano(497))
        );
        assert!(l.path().ends_with("hub.db"));
    });
}
