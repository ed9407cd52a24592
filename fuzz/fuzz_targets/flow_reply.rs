//! A FlowReply body as read off a stream: decoding never panics, and whatever decodes
//! re-encodes within the limit and decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_session::wire::{self, FlowReply, MAX_FLOW_HEADER};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode::<FlowReply>(data, MAX_FLOW_HEADER) else {
        return;
    };
    let frame = wire::encode(&msg, MAX_FLOW_HEADER).expect("a decoded FlowReply re-encodes");
    let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
    assert_eq!(len, frame.len() - 2, "the prefix is the body length");
    let again: FlowReply =
        wire::decode(&frame[2..], MAX_FLOW_HEADER).expect("a re-encoded FlowReply decodes");
    assert_eq!(again, msg);
});
