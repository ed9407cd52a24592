use proptest::prelude::*;

use super::*;

fn publisher() -> Identity {
    Identity::from_secret([7; 32])
}

fn chain(n: usize) -> Vec<SignedEntry> {
    let me = publisher();
    let mut ch = Channel::new(me.node_id());
    (0..n)
        .map(|i| {
            let blob = format!("blob {i}");
            ch.publish(
                &me,
                "news",
                ContentId::of(blob.as_bytes()),
                &format!("entry {i}"),
                "text/plain",
                blob.len() as u64,
                1_700_000_000 + i as u64,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn a_chain_replays_in_order_into_a_fresh_channel() {
    let entries = chain(5);
    let mut ch = Channel::new(publisher().node_id());
    for (i, e) in entries.iter().enumerate() {
        let got = ch.append(e.clone()).unwrap();
        assert_eq!(got.seq, i as u64);
        assert_eq!(got.title, format!("entry {i}"));
    }
    assert_eq!(ch.len(), 5);
    assert_eq!(ch.entries()[3].content, ContentId::of(b"blob 3"));
    // Over the wire and back, unchanged.
    let again = SignedEntry::from_bytes(&entries[4].to_bytes()).unwrap();
    assert_eq!(again, entries[4]);
}

#[test]
fn forged_entries_are_refused() {
    let entries = chain(2);
    let mut ch = Channel::new(publisher().node_id());
    ch.append(entries[0].clone()).unwrap();
    // Someone else's key, naming themselves: not this channel's publisher.
    let mallory = Identity::from_secret([9; 32]);
    let mut forged = entries[1].verify().unwrap();
    forged.publisher = mallory.node_id();
    let signed = SignedEntry::sign(&forged, &mallory).unwrap();
    assert!(matches!(
        ch.append(signed),
        Err(ChannelError::WrongPublisher { .. })
    ));
    // Naming the publisher but signed by someone else: the signature fails.
    let mut claimed = SignedEntry::sign(&forged, &mallory).unwrap();
    let mut body = entries[1].verify().unwrap();
    body.title = "not what was published".into();
    claimed.body = postcard::to_stdvec(&body).unwrap();
    assert_eq!(
        ch.append(claimed),
        Err(ChannelError::Entry(EntryError::BadSignature))
    );
    // Nor can anyone sign in the publisher's name.
    assert_eq!(
        SignedEntry::sign(&body, &mallory),
        Err(EntryError::NotPublisher)
    );
    assert_eq!(ch.len(), 1);
}

#[test]
fn forks_replays_and_gaps_are_refused_by_name() {
    let me = publisher();
    let entries = chain(3);
    let mut ch = Channel::new(me.node_id());
    ch.append(entries[0].clone()).unwrap();
    ch.append(entries[1].clone()).unwrap();
    assert_eq!(
        ch.append(entries[1].clone()),
        Err(ChannelError::Replay { got: 1 })
    );
    // The publisher itself signing a second, different #1: a fork.
    let mut other = entries[1].verify().unwrap();
    other.title = "rewritten history".into();
    let fork = SignedEntry::sign(&other, &me).unwrap();
    assert_eq!(ch.append(fork), Err(ChannelError::Fork { got: 1 }));
    // A #3 before #2 arrived.
    let mut ch2 = Channel::new(me.node_id());
    ch2.append(entries[0].clone()).unwrap();
    assert_eq!(
        ch2.append(entries[2].clone()),
        Err(ChannelError::OutOfOrder {
            got: 2,
            expected: 1
        })
    );
    // A #2 that does not name #1's hash.
    let mut broken = entries[2].verify().unwrap();
    broken.prev = Some(entries[0].hash());
    let broken = SignedEntry::sign(&broken, &me).unwrap();
    assert_eq!(ch.append(broken), Err(ChannelError::BrokenChain { got: 2 }));
    ch.append(entries[2].clone()).unwrap();
    assert_eq!(ch.len(), 3);
}

#[test]
fn truncated_and_oversized_entries_are_malformed_never_a_panic() {
    let bytes = chain(1)[0].to_bytes();
    // No prefix of a signed entry is an entry that verifies.
    for cut in 0..bytes.len() {
        if let Ok(e) = SignedEntry::from_bytes(&bytes[..cut]) {
            assert!(e.verify().is_err(), "a {cut}-byte prefix verified");
        }
    }
    let me = publisher();
    let long = Entry {
        publisher: me.node_id(),
        channel: "news".into(),
        seq: 0,
        prev: None,
        content: ContentId::of(b""),
        title: "x".repeat(MAX_TITLE + 1),
        media_type: "text/plain".into(),
        size: 0,
        published_at: 0,
    };
    assert_eq!(
        SignedEntry::sign(&long, &me),
        Err(EntryError::FieldTooLong("title"))
    );
    assert!(SignedEntry::from_bytes(&vec![0u8; 4096]).is_err());
    // Entry 0 must have no previous entry, and only entry 0.
    let mut odd = long.clone();
    odd.title = "ok".into();
    odd.prev = Some(EntryHash([1; 32]));
    assert!(matches!(
        SignedEntry::sign(&odd, &me),
        Err(EntryError::Malformed(_))
    ));
}

#[test]
fn content_ids_print_and_parse_as_hex() {
    let id = ContentId::of(b"hello");
    assert_eq!(id.to_string().len(), 64);
    assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
    assert!("abc".parse::<ContentId>().is_err());
    assert!("zz".repeat(32).parse::<ContentId>().is_err());
}

proptest! {
    /// Whatever order a chain's entries arrive in, and however often, a node that keeps
    /// offering what it has ends with exactly the chain, in order.
    #[test]
    fn any_arrival_order_converges_to_the_chain(
        order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
        dupes in proptest::collection::vec(0..8usize, 0..8),
    ) {
        let entries = chain(8);
        let mut pending: Vec<SignedEntry> = order.iter().chain(&dupes).map(|&i| entries[i].clone()).collect();
        let mut ch = Channel::new(publisher().node_id());
        for _ in 0..16 {
            pending.retain(|e| match ch.append(e.clone()) {
                Ok(_) => false,
                Err(ChannelError::OutOfOrder { .. }) => true,
                Err(ChannelError::Replay { .. }) => false,
                Err(other) => panic!("unexpected {other:?}"),
            });
        }
        prop_assert_eq!(ch.signed(), &entries[..]);
    }

    /// Flipping any bit of a signed entry never yields a different entry that verifies.
    #[test]
    fn a_tampered_entry_never_verifies_as_something_else(byte in 0usize..2000, bit in 0u8..8) {
        let original = chain(2)[1].clone();
        let mut bytes = original.to_bytes();
        let i = byte % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(e) = SignedEntry::from_bytes(&bytes)
            && let Ok(entry) = e.verify()
        {
            prop_assert_eq!(entry, original.verify().unwrap());
        }
    }
}
