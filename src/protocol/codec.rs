//! The socketmap wire format: netstrings (`LEN:DATA,`) carrying `NAME KEY` requests
//! and `STATUS DATA` replies (socketmap_table(5)).
//!
//! The decoder is strict: the length is ASCII digits with no sign and no leading zero
//! (except `0:`), it may not exceed the configured maximum, and the byte after the
//! payload must be a comma. Payloads may contain any byte, commas included.

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// The default request limit (`server.max_request_size`).
pub use crate::config::DEFAULT_MAX_REQUEST;
/// The largest reply Postfix accepts by default (100000 bytes).
pub const MAX_REPLY: usize = 100_000;

/// Digits needed for any length we accept; more digits than this is an oversize request.
const MAX_LEN_DIGITS: usize = 10;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("netstring length is not a decimal number (byte {0:#04x})")]
    BadLength(u8),
    #[error("netstring length has a leading zero")]
    LeadingZero,
    #[error("netstring of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("netstring is not terminated by ',' (found byte {0:#04x})")]
    MissingComma(u8),
    #[error("request has no space between map name and key")]
    NoKey,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("reply of {0} bytes exceeds Postfix's limit of {MAX_REPLY} bytes")]
    ReplyTooLong(usize),
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes one netstring into its payload bytes.
#[derive(Debug, Clone)]
pub struct NetstringCodec {
    max_len: usize,
}

impl NetstringCodec {
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }
}

impl Default for NetstringCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_REQUEST)
    }
}

/// Parses the length prefix. `Ok(None)` means more bytes are needed.
fn parse_prefix(buf: &[u8], max_len: usize) -> Result<Option<(usize, usize)>, CodecError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i == 0 => return Err(CodecError::BadLength(b)),
            b':' => return Ok(Some((len, i + 1))),
            b'0'..=b'9' => {
                if i == 1 && buf[0] == b'0' {
                    return Err(CodecError::LeadingZero);
                }
                if i >= MAX_LEN_DIGITS {
                    return Err(CodecError::TooLong {
                        len: usize::MAX,
                        max: max_len,
                    });
                }
                len = len * 10 + usize::from(b - b'0');
                if len > max_len {
                    return Err(CodecError::TooLong { len, max: max_len });
                }
            }
            other => return Err(CodecError::BadLength(other)),
        }
    }
    Ok(None)
}

impl Decoder for NetstringCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let Some((len, header)) = parse_prefix(src, self.max_len)? else {
            return Ok(None);
        };
        let total = header + len + 1;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let terminator = src[header + len];
        if terminator != b',' {
            return Err(CodecError::MissingComma(terminator));
        }
        src.advance(header);
        let payload = src.split_to(len);
        src.advance(1);
        Ok(Some(payload))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(CodecError::Truncated),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for NetstringCodec {
    type Error = CodecError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let data = item.as_ref();
        if data.len() > MAX_REPLY {
            return Err(CodecError::ReplyTooLong(data.len()));
        }
        encode_netstring(data, dst);
        Ok(())
    }
}

/// Appends `data` as a netstring.
pub fn encode_netstring(data: &[u8], dst: &mut BytesMut) {
    let digits = data.len().to_string();
    dst.reserve(digits.len() + data.len() + 2);
    dst.put_slice(digits.as_bytes());
    dst.put_u8(b':');
    dst.put_slice(data);
    dst.put_u8(b',');
}

/// A parsed socketmap request: `NAME KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub map: String,
    pub key: String,
}

/// Splits a request payload at its first space.
pub fn parse_request(payload: &[u8]) -> Result<Request, CodecError> {
    let text = std::str::from_utf8(payload).map_err(|_| CodecError::NotUtf8)?;
    let (map, key) = text.split_once(' ').ok_or(CodecError::NoKey)?;
    Ok(Request {
        map: map.to_owned(),
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut NetstringCodec, input: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame.to_vec());
        }
        if let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame.to_vec());
        }
        Ok(out)
    }

    fn decode_chunked(input: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, CodecError> {
        let mut codec = NetstringCodec::new(DEFAULT_MAX_REQUEST);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf)? {
                out.push(frame.to_vec());
            }
        }
        if let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn decodes_postfix_request() {
        let mut c = NetstringCodec::default();
        let frames = decode_all(&mut c, b"20:postfix example.com.,").unwrap();
        assert_eq!(frames, vec![b"postfix example.com.".to_vec()]);
        let req = parse_request(&frames[0]).unwrap();
        assert_eq!(req.map, "postfix");
        assert_eq!(req.key, "example.com.");
    }

    #[test]
    fn empty_netstring_is_valid() {
        let mut c = NetstringCodec::default();
        assert_eq!(decode_all(&mut c, b"0:,").unwrap(), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn rejects_leading_zero() {
        let mut c = NetstringCodec::default();
        assert!(matches!(
            decode_all(&mut c, b"03:abc,"),
            Err(CodecError::LeadingZero)
        ));
    }

    #[test]
    fn rejects_sign_and_junk() {
        for input in [
            &b"+3:abc,"[..],
            b"-3:abc,",
            b" 3:abc,",
            b"3 :abc,",
            b":abc,",
            b"x",
        ] {
            let mut c = NetstringCodec::default();
            assert!(
                matches!(decode_all(&mut c, input), Err(CodecError::BadLength(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn rejects_missing_comma() {
        let mut c = NetstringCodec::default();
        assert!(matches!(
            decode_all(&mut c, b"3:abc;"),
            Err(CodecError::MissingComma(b';'))
        ));
    }

    #[test]
    fn rejects_oversize_before_reading_payload() {
        let mut c = NetstringCodec::new(100);
        let mut buf = BytesMut::from(&b"101:"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::TooLong { len: 101, max: 100 })
        ));
        // An absurd length overflows nothing and is rejected as too long.
        let mut buf = BytesMut::from(&b"99999999999999999999999999:"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::TooLong { .. })
        ));
    }

    #[test]
    fn payload_may_contain_commas_and_colons() {
        let mut c = NetstringCodec::default();
        let frames = decode_all(&mut c, b"7:a,b:c,d,2:,,,").unwrap();
        assert_eq!(frames, vec![b"a,b:c,d".to_vec(), b",,".to_vec()]);
    }

    #[test]
    fn truncated_stream_is_an_error_at_eof() {
        let mut c = NetstringCodec::default();
        assert!(matches!(
            decode_all(&mut c, b"10:abc"),
            Err(CodecError::Truncated)
        ));
    }

    #[test]
    fn request_needs_a_space() {
        assert!(matches!(parse_request(b"postfix"), Err(CodecError::NoKey)));
        assert!(matches!(
            parse_request(b"postfix \xff"),
            Err(CodecError::NotUtf8)
        ));
        let r = parse_request(b"postfix key with space").unwrap();
        assert_eq!(r.key, "key with space");
    }

    #[test]
    fn encoder_refuses_oversize_reply() {
        let mut c = NetstringCodec::default();
        let mut dst = BytesMut::new();
        let big = vec![b'a'; MAX_REPLY + 1];
        assert!(matches!(
            c.encode(&big[..], &mut dst),
            Err(CodecError::ReplyTooLong(_))
        ));
        c.encode(&b"NOTFOUND "[..], &mut dst).unwrap();
        assert_eq!(&dst[..], b"9:NOTFOUND ,");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut c = NetstringCodec::new(256);
            let _ = decode_all(&mut c, &input);
        }

        #[test]
        fn digit_heavy_bytes_never_panic(input in "[0-9:,]{0,64}") {
            let mut c = NetstringCodec::new(256);
            let _ = decode_all(&mut c, input.as_bytes());
        }

        #[test]
        fn round_trips(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_netstring(f, &mut wire);
            }
            let mut c = NetstringCodec::default();
            let decoded = decode_all(&mut c, &wire).unwrap();
            prop_assert_eq!(&decoded, &frames);
            for chunk in [1usize, 16, 128, 4096] {
                prop_assert_eq!(&decode_chunked(&wire, chunk).unwrap(), &frames);
            }
        }

        #[test]
        fn chunking_does_not_change_errors(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let whole = decode_chunked(&input, 4096).map_err(|e| e.to_string());
            for chunk in [1usize, 16, 128] {
                let split = decode_chunked(&input, chunk).map_err(|e| e.to_string());
                prop_assert_eq!(&split, &whole);
            }
        }
    }
}
