//! The wire side of the socketmap protocol: netstring framing and request parsing
//! ([`codec`]), and the one place that turns a decision into the reply text Postfix
//! reads ([`answer`]). Pure code, no I/O.

pub mod answer;
pub mod codec;
