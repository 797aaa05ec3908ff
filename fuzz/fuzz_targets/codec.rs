//! The socketmap codec and request parser on arbitrary bytes, fed in arbitrary chunks
//! as a client could send them: never a panic, every decoded frame re-encodes to the
//! bytes it came from, and a frame never exceeds the configured limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mta_stsd::protocol::codec::{NetstringCodec, encode_netstring, parse_request};
use tokio_util::codec::Decoder;

const MAX: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = NetstringCodec::new(MAX);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX, "frame over the limit");
                    let used = before - buf.len();
                    let mut again = BytesMut::new();
                    encode_netstring(&frame, &mut again);
                    // Leading zeros in the length are refused, so the encoding is
                    // the one canonical form of what was read.
                    assert_eq!(&again[..], &stream[consumed..consumed + used]);
                    consumed += used;
                    if let Ok(req) = parse_request(&frame) {
                        assert!(!req.map.contains(' '));
                        assert_eq!(req.map.len() + 1 + req.key.len(), frame.len());
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
