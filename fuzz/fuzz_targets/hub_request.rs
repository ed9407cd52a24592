//! A hub request body as a hub reads it off a stream: decoding and the bounds check never
//! panic, and whatever passes re-encodes within the frame limit and decodes to the same
//! request. Every promise in a settle request is parsed as the hub would parse it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_pay::SignedPromise;
use warren_pay::rpc::{self, HubRequest, PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = rpc::decode_request(data) else {
        return;
    };
    if let HubRequest::Settle { promises } = &request {
        for bytes in promises {
            if let Ok(p) = SignedPromise::from_bytes(bytes) {
                let _ = p.verify();
            }
        }
    }
    let frame = rpc::encode(&request).expect("a decoded request re-encodes");
    let len = rpc::body_len(frame[..PREFIX].try_into().unwrap()).expect("within the limit");
    assert_eq!(len, frame.len() - PREFIX, "the prefix is the body length");
    let again = rpc::decode_request(&frame[PREFIX..]).expect("a re-encoded request decodes");
    assert_eq!(again, request);
});
