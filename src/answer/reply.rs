//! A reply to one request: what was decided (its kind, for logs and metrics) and the
//! text the client reads, as the client's renderer wrote it. Cloning is cheap: the
//! text is static or shared.

use std::sync::Arc;

/// What a reply tells the MTA, whatever its wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Verified TLS to the policy's MX hosts (MTA-STS `enforce`).
    Secure,
    /// No policy applies: the MTA's default TLS behaviour.
    NotFound,
    /// Opportunistic DANE decides per MX host (RFC 7672).
    Dane,
    /// Mandatory DANE: every MX host must match its TLSA records.
    DaneOnly,
    /// Defer the delivery and try again later.
    Temp,
}

impl Kind {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secure => "secure",
            Kind::NotFound => "notfound",
            Kind::Dane => "dane",
            Kind::DaneOnly => "dane_only",
            Kind::Temp => "temp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

/// A rendered reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    kind: Kind,
    text: Text,
}

impl Reply {
    /// A reply whose text never changes (`NOTFOUND `, say).
    pub const fn fixed(kind: Kind, text: &'static str) -> Reply {
        Reply {
            kind,
            text: Text::Static(text),
        }
    }

    /// A reply whose text was rendered (and may be memoized and shared).
    pub fn shared(kind: Kind, text: Arc<str>) -> Reply {
        Reply {
            kind,
            text: Text::Shared(text),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The text, when it was rendered (shared, not copied).
    pub fn shared_text(&self) -> Option<Arc<str>> {
        match &self.text {
            Text::Static(_) => None,
            Text::Shared(s) => Some(s.clone()),
        }
    }

    /// The text the client reads (for a socketmap client, the netstring's payload).
    pub fn wire(&self) -> &str {
        match &self.text {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

/// A reason reduced to printable ASCII, at most 200 characters: it ends up in the
/// MTA's log and in deferral notices.
pub fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}
