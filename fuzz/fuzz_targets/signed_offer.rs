//! A signed offer as it arrives by gossip or a catalogue pull: decoding and verifying never
//! panic. Random bytes will not carry a valid signature, so this covers decoding and the
//! checks in front of the signature; whatever decodes re-encodes and decodes to the same offer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_types::SignedOffer;

/// A fixed clock (unix seconds), so a run is reproducible.
const NOW: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = SignedOffer::from_bytes(data) else {
        return;
    };
    let again = SignedOffer::from_bytes(&signed.to_bytes()).expect("a re-encoded offer decodes");
    assert_eq!(again, signed);
    let _ = signed.claimed_provider();
    if let Ok(verified) = signed.verify(NOW) {
        assert_eq!(verified.signed(), &signed);
        assert!(verified.offer().expires_at > NOW);
    }
});
