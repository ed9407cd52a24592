//! A ControlMsg body as read off a stream: decoding never panics, a payment record that
//! decodes is within its limit, and whatever decodes re-encodes within the limit and decodes
//! to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_session::wire::{self, ControlMsg, MAX_CONTROL_MSG, MAX_RECORD};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode::<ControlMsg>(data, MAX_CONTROL_MSG) else {
        return;
    };
    if let ControlMsg::Invoice { record } | ControlMsg::Promise { record } = &msg {
        assert!(
            record.len() <= MAX_RECORD,
            "a decoded record is within its limit"
        );
    }
    let frame = wire::encode(&msg, MAX_CONTROL_MSG).expect("a decoded ControlMsg re-encodes");
    let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
    assert_eq!(len, frame.len() - 2, "the prefix is the body length");
    let again: ControlMsg =
        wire::decode(&frame[2..], MAX_CONTROL_MSG).expect("a re-encoded ControlMsg decodes");
    assert_eq!(again, msg);
});
