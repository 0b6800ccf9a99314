//! The keyevent subscriber's RESP2 parser, on any bytes Redis (or anything else on the socket)
//! could send: no panic, no hang, and the notifications do not depend on how the bytes were
//! cut into reads (the input's first byte picks where a second read starts).

#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::fuzzing::{parse_frames, parse_notifications};

fuzz_target!(|data: &[u8]| {
    let _ = parse_frames(data);
    let whole = parse_notifications(&[data]);
    let cut = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let (a, b) = data.split_at(cut);
    let in_two = parse_notifications(&[a, b]);
    assert_eq!(whole, in_two, "cut at {cut}");
    let bytewise: Vec<&[u8]> = data.chunks(1).collect();
    if data.len() <= 256 {
        assert_eq!(whole, parse_notifications(&bytewise), "one byte per read");
    }
});
