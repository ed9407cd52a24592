//! `FrameReader` fed a stream in two chunks, split where the first byte says: it never
//! panics and never buffers more than one frame's worth (`max + 2` bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_session::wire::{FrameReader, MAX_CONTROL_MSG};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(stream.len());
    let (first, second) = stream.split_at(at);
    let mut reader = FrameReader::new(MAX_CONTROL_MSG);
    for chunk in [first, second] {
        reader.push(chunk);
        assert!(reader.buffered() <= MAX_CONTROL_MSG + 2);
        while let Ok(Some(body)) = reader.next_frame() {
            assert!(body.len() <= MAX_CONTROL_MSG);
        }
    }
    let _ = reader.finish();
});
