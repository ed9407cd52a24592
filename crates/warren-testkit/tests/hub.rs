//! Payment hubs between in-process nodes on the memory transport: a hub announces itself, a
//! consumer tops up from its faucet into escrow, a hub without a faucet refuses clearly, and
//! a provider settles a consumer's signed promise: paid less the hub's 1 %, never twice.

use std::time::Duration;

use warren_node::session::consumer::{ConnectError, ConnectRequest};
use warren_node::wallet::WalletError;
use warren_node::{HubConfig, NodeConfig, NodeHandle, OfferFilter, ProvideConfig};
use warren_pay::rpc::{HubRequest, HubResponse, RpcErrorKind, SettleResult};
use warren_pay::{Promise, SignedPromise};
use warren_testkit::memory_net;
use warren_types::amount::NANO_PER_WRN;
use warren_types::{Amount, Identity, NodeId, Offer, Price, Service};

const WAIT: Duration = Duration::from_secs(20);

fn wrn(n: u64) -> Amount {
    Amount::from_nano(n * NANO_PER_WRN)
}

async fn hub(faucet: bool) -> NodeHandle {
    let mut config = NodeConfig::new(memory_net(Identity::generate()));
    config.hub = Some(HubConfig {
        faucet,
        ..HubConfig::default()
    });
    NodeHandle::spawn(config).await.unwrap()
}

/// A node joined through `via` that has seen the offers of every node in `hubs`.
async fn node(identity: Identity, via: &NodeHandle, hubs: &[NodeId]) -> NodeHandle {
    let mut net = memory_net(identity);
    net.bootstrap = via.dial_addrs();
    let node = NodeHandle::spawn(NodeConfig::new(net)).await.unwrap();
    assert!(
        node.wait_for_catalog(WAIT, |c| hubs.iter().all(|h| c.contains(h)))
            .await,
        "the node never saw the hubs' offers"
    );
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_tops_up_and_a_provider_settles_its_promise_once() {
    let hub = hub(true).await;
    let h = hub.node_id();
    // The hub announces itself with an offer of the service "hub" alone, at price 0.
    let offer = own_offer(&hub, |o| o.services == [Service::hub()]).await;
    assert_eq!(offer.price, Price::default());

    let consumer_key = Identity::generate();
    let consumer = node(consumer_key.clone(), &hub, &[h]).await;
    let provider = node(Identity::generate(), &hub, &[h]).await;

    // Before any top-up the wallet already knows the hub from its offer, and holds nothing.
    let w = consumer.wallet().view().await.unwrap();
    assert_eq!(w.hub, Some(h));
    assert_eq!((w.balance, w.escrow), (Amount::ZERO, Amount::ZERO));

    let w = consumer.wallet().topup(wrn(10), None).await.unwrap();
    assert_eq!(w.hub, Some(h));
    assert_eq!((w.balance, w.escrow), (Amount::ZERO, wrn(10)));
    let channel = consumer.wallet().channel(h).expect("a channel at the hub");
    assert_eq!(w.channel, Some(hex(channel.0)));
    // A second top-up adds to the same channel.
    let w = consumer.wallet().topup(wrn(2), Some(h)).await.unwrap();
    assert_eq!(w.escrow, wrn(12));
    assert_eq!(consumer.wallet().channel(h), Some(channel));

    // The consumer promises the provider 1 WRN from its channel.
    let promise = Promise {
        hub: h,
        channel,
        consumer: consumer.node_id(),
        provider: provider.node_id(),
        cumulative: wrn(1),
    };
    let signed = SignedPromise::sign(&promise, &consumer_key).unwrap();
    // A promise made out to someone else is not the provider's to keep.
    assert!(matches!(
        consumer.wallet().add_promise(signed.clone()),
        Err(WalletError::BadPromise(_))
    ));
    assert!(provider.wallet().add_promise(signed.clone()).unwrap());
    assert!(!provider.wallet().add_promise(signed.clone()).unwrap());
    let w = provider.wallet().view().await.unwrap();
    assert_eq!((w.earned_unsettled, w.pending_promises), (wrn(1), 1));

    let report = provider.wallet().settle().await.unwrap();
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!((report.promises, report.paid_promises), (1, 1));
    let fee = Amount::from_nano(NANO_PER_WRN / 100);
    assert_eq!(
        (report.earned, report.fees),
        (wrn(1).saturating_sub(fee), fee)
    );
    assert_eq!(report.pending_promises, 0);
    let w = provider.wallet().view().await.unwrap();
    assert_eq!(w.earned_settled, wrn(1).saturating_sub(fee));
    assert_eq!(w.balance, wrn(1).saturating_sub(fee));
    assert_eq!((w.earned_unsettled, w.pending_promises), (Amount::ZERO, 0));
    assert_eq!(consumer.wallet().view().await.unwrap().escrow, wrn(11));

    // A replay pays nothing: handed in again through the wallet, or straight to the hub.
    assert!(provider.wallet().add_promise(signed.clone()).unwrap());
    let report = provider.wallet().settle().await.unwrap();
    assert_eq!((report.promises, report.paid_promises), (1, 0));
    assert_eq!(report.earned, Amount::ZERO);
    let answer = provider
        .wallet()
        .request(
            h,
            HubRequest::Settle {
                promises: vec![signed.to_bytes()],
            },
        )
        .await
        .unwrap();
    match answer {
        HubResponse::Settled(r) => {
            assert!(matches!(&r[..], [SettleResult::Settled(s)] if s.paid == Amount::ZERO))
        }
        other => panic!("{other:?}"),
    }
    let w = provider.wallet().view().await.unwrap();
    assert_eq!(w.earned_settled, wrn(1).saturating_sub(fee));
    assert_eq!(consumer.wallet().view().await.unwrap().escrow, wrn(11));

    // Both sides see it in their history, newest first.
    let kinds: Vec<String> = consumer
        .wallet()
        .history(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "paid",
            "escrow_added",
            "deposit",
            "escrow_opened",
            "deposit"
        ]
    );
    let earned = provider.wallet().history(10).await.unwrap();
    assert_eq!(earned.len(), 1);
    assert_eq!(earned[0].kind, "earned");
    assert_eq!(earned[0].counterparty, Some(consumer.node_id()));

    for n in [consumer, provider, hub] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_a_faucet_refuses_top_ups_clearly() {
    let dry = hub(false).await;
    let lone = NodeHandle::spawn(NodeConfig::new(memory_net(Identity::generate())))
        .await
        .unwrap();
    // No hub known yet: the wallet shows nothing and a top-up says what to do.
    let w = lone.wallet().view().await.unwrap();
    assert_eq!((w.hub, w.escrow), (None, Amount::ZERO));
    let e = lone.wallet().topup(wrn(1), None).await.unwrap_err();
    assert!(matches!(e, WalletError::NoHub), "{e}");
    assert!(e.to_string().contains("no payment hub known yet"), "{e}");

    let consumer = node(Identity::generate(), &dry, &[dry.node_id()]).await;
    let e = consumer.wallet().topup(wrn(1), None).await.unwrap_err();
    assert_eq!(e.refusal(), Some(RpcErrorKind::FaucetOff), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no faucet") && text.contains("--faucet"),
        "{text}"
    );
    // Nothing moved, and zero is refused before asking anyone.
    let w = consumer.wallet().view().await.unwrap();
    assert_eq!(
        (w.balance, w.escrow, w.channel),
        (Amount::ZERO, Amount::ZERO, None)
    );
    assert!(matches!(
        consumer.wallet().topup(Amount::ZERO, None).await,
        Err(WalletError::ZeroAmount)
    ));

    for n in [consumer, lone, dry] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_offer_sells_no_bandwidth_and_a_providing_hub_names_both() {
    let hub_only = hub(true).await;
    let mut config = NodeConfig::new({
        let mut net = memory_net(Identity::generate());
        net.bootstrap = hub_only.dial_addrs();
        net
    });
    config.hub = Some(HubConfig::default());
    let mut plan = ProvideConfig::new(Price::default(), "DE".parse().unwrap());
    plan.offer_lifetime = Duration::from_secs(600);
    config.provide = Some(plan);
    let mut both = NodeHandle::spawn(config).await.unwrap();
    own_offer(&both, |o| o.services == [Service::proxy(), Service::hub()]).await;
    assert!(
        both.hub_info()
            .is_some_and(|i| !i.faucet && i.fee_bps == 100)
    );

    let consumer = node(
        Identity::generate(),
        &hub_only,
        &[hub_only.node_id(), both.node_id()],
    )
    .await;
    let proxies = OfferFilter {
        service: Some(Service::proxy()),
        ..OfferFilter::default()
    };
    assert_eq!(consumer.offers(&proxies).len(), 1);
    // Connect only ever picks bandwidth offers: the hub alone is never tried.
    let req = ConnectRequest {
        provider: Some(hub_only.node_id()),
        ..ConnectRequest::default()
    };
    assert!(matches!(
        consumer.connect(req).await,
        Err(ConnectError::NoOffers(_))
    ));
    // A hub that stops selling still announces itself as a hub.
    both.stop_providing().await;
    own_offer(&both, |o| o.services == [Service::hub()]).await;
    assert!(both.status().provider.is_none());

    for n in [consumer, both, hub_only] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_keeps_its_channel_and_promises_across_restarts() {
    let hub = hub(true).await;
    let h = hub.node_id();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (consumer_key, provider_key) = (Identity::generate(), Identity::generate());
    let start = |key: &Identity, dir: &std::path::Path| {
        let mut net = memory_net(key.clone());
        net.bootstrap = hub.dial_addrs();
        let mut config = NodeConfig::new(net);
        config.data_dir = Some(dir.to_path_buf());
        NodeHandle::spawn(config)
    };

    let consumer = start(&consumer_key, dirs.0.path()).await.unwrap();
    assert!(consumer.wait_for_catalog(WAIT, |c| c.contains(&h)).await);
    consumer.wallet().topup(wrn(3), None).await.unwrap();
    let channel = consumer.wallet().channel(h).unwrap();
    let provider = start(&provider_key, dirs.1.path()).await.unwrap();
    let promise = Promise {
        hub: h,
        channel,
        consumer: consumer_key.node_id(),
        provider: provider_key.node_id(),
        cumulative: wrn(2),
    };
    let signed = SignedPromise::sign(&promise, &consumer_key).unwrap();
    assert!(provider.wallet().add_promise(signed).unwrap());
    consumer.shutdown().await;
    provider.shutdown().await;

    // Back on the same data directories: the same channel, the same promise to settle.
    let consumer = start(&consumer_key, dirs.0.path()).await.unwrap();
    assert_eq!(consumer.wallet().channel(h), Some(channel));
    assert!(consumer.wait_for_catalog(WAIT, |c| c.contains(&h)).await);
    let w = consumer.wallet().topup(wrn(1), None).await.unwrap();
    assert_eq!(w.escrow, wrn(4));
    let provider = start(&provider_key, dirs.1.path()).await.unwrap();
    assert_eq!(provider.wallet().earned_unsettled(), wrn(2));
    assert!(provider.wait_for_catalog(WAIT, |c| c.contains(&h)).await);
    let report = provider.wallet().settle().await.unwrap();
    assert_eq!((report.paid_promises, report.pending_promises), (1, 0));
    assert_eq!(consumer.wallet().view().await.unwrap().escrow, wrn(2));
    provider.shutdown().await;

    // A damaged wallet file stops the node with a message that says what to do.
    std::fs::write(dirs.1.path().join("promises.json"), b"[{").unwrap();
    let e = start(&provider_key, dirs.1.path()).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("promises.json") && text.contains("move it away"),
        "{text}"
    );

    consumer.shutdown().await;
    hub.shutdown().await;
}

/// Waits until `node`'s own offer, as its catalog holds it, passes `check`.
async fn own_offer(node: &NodeHandle, check: impl Fn(&Offer) -> bool) -> Offer {
    let id = node.node_id();
    assert!(
        node.wait_for_catalog(WAIT, |c| c.get(&id).is_some_and(&check))
            .await,
        "the node's own offer never became what the test expects: {:?}",
        node.own_offer()
    );
    node.offers(&OfferFilter::default())
        .into_iter()
        .find(|o| o.provider == id)
        .unwrap()
}

fn hex(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
