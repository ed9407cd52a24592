//! A hub's answer as a wallet reads it: decoding never panics, and whatever decodes
//! re-encodes and decodes to the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_pay::rpc::{self, HubResponse, PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = rpc::decode::<HubResponse>(data) else {
        return;
    };
    let frame = rpc::encode(&answer).expect("a decoded answer re-encodes");
    let again: HubResponse = rpc::decode(&frame[PREFIX..]).expect("a re-encoded answer decodes");
    assert_eq!(again, answer);
});
