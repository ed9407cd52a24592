//! The payment records a session carries, as each side reads them: a provider parses a
//! consumer's promise, a consumer a provider's invoice, from the same bytes. Parsing and
//! verifying never panic, and a record that parses re-encodes to bytes that parse to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_pay::{SignedInvoice, SignedPromise};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = SignedPromise::from_bytes(data) {
        let _ = p.verify();
        let again = SignedPromise::from_bytes(&p.to_bytes()).expect("a parsed promise re-parses");
        assert_eq!(again.to_bytes(), p.to_bytes());
    }
    if let Ok(i) = SignedInvoice::from_bytes(data) {
        if let Ok(invoice) = i.verify() {
            let _ = invoice.computed_cost();
        }
        let again = SignedInvoice::from_bytes(&i.to_bytes()).expect("a parsed invoice re-parses");
        assert_eq!(again.to_bytes(), i.to_bytes());
    }
});
