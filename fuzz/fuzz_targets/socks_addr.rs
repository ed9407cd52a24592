//! A SOCKS5 address (`ATYP | ADDR | PORT`), as read from a SOCKS5 client or a UDP flow's
//! datagram frames: decoding never panics, and whatever decodes re-encodes and decodes to
//! the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_tunnel::udp::{decode_addr, encode_addr};

fuzz_target!(|data: &[u8]| {
    let Ok((target, used)) = decode_addr(data) else {
        return;
    };
    assert!(used <= data.len());
    let mut encoded = Vec::new();
    encode_addr(&target, &mut encoded);
    let (again, used_again) = decode_addr(&encoded).expect("an encoded address decodes");
    assert_eq!(again, target);
    assert_eq!(used_again, encoded.len());
});
