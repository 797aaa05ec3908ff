//! The wire side of the socketmap protocol: netstring framing and request parsing
//! ([`codec`]). Pure code, no I/O. What a reply says is [`crate::answer`]'s.

pub mod codec;
