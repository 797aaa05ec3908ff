//! The DNSSEC trust anchor file (`dane.trust_anchor`), read as unbound reads its
//! `trust-anchor-file`: zone-file records for the root, `DS` (as IANA publishes the
//! root anchor and Debian's dns-root-data ships it in /usr/share/dns/root.ds),
//! `DNSKEY`, or both.
//!
//! A DNSKEY record is a trust anchor as it stands. A DS record is a digest of one
//! (RFC 4034 §5): it selects which of the root's DNSKEYs to trust, so those keys are
//! fetched from DNS and compared with it ([`select_keys`]) before validation starts.
//! No signature need be checked for that: a key whose digest matches the DS is
//! authenticated by the DS itself.

use hickory_resolver::proto::dnssec::rdata::DNSKEY;
use hickory_resolver::proto::dnssec::{
    DigestType, PublicKey, PublicKeyBuf, TrustAnchors, Verifier,
};
use hickory_resolver::proto::rr::Name;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnchorError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("holds no DS or DNSKEY record for the root (\".\")")]
    Empty,
}

/// One DS record of the root (RFC 4034 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsAnchor {
    pub key_tag: u16,
    pub algorithm: u8,
    pub digest_type: u8,
    pub digest: Vec<u8>,
}

/// What a trust anchor file holds.
#[derive(Clone)]
pub struct AnchorFile {
    /// The DNSKEY records, trusted as they are.
    pub keys: TrustAnchors,
    /// The DS records, each selecting a root DNSKEY by its digest.
    pub ds: Vec<DsAnchor>,
}

impl std::fmt::Debug for AnchorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorFile")
            .field("keys", &self.keys.len())
            .field("ds", &self.ds)
            .finish()
    }
}

/// Zone-file text joined into logical records: comments (`;`) removed, and a record
/// continued over lines inside parentheses kept together; each with its first line.
fn records(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut depth = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(';').next().unwrap_or_default();
        if depth == 0 {
            start = i + 1;
        }
        for c in line.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => current.push(c),
            }
        }
        current.push(' ');
        if depth == 0 {
            if !current.trim().is_empty() {
                out.push((start, current.trim().to_owned()));
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current.trim().to_owned()));
    }
    out
}

/// Parses a trust anchor file (pure). `$`-directives and records of other types are
/// refused, as are records for names other than the root.
pub fn parse(text: &str) -> Result<AnchorFile, AnchorError> {
    let mut dnskey_lines = String::new();
    let mut ds = Vec::new();
    for (line, record) in records(text) {
        let syntax = |message: String| AnchorError::Syntax { line, message };
        let tokens: Vec<&str> = record.split_whitespace().collect();
        let Some(at) = tokens
            .iter()
            .position(|t| t.eq_ignore_ascii_case("DS") || t.eq_ignore_ascii_case("DNSKEY"))
        else {
            return Err(syntax(format!("not a DS or DNSKEY record: {record:?}")));
        };
        if tokens[0] != "." {
            return Err(syntax(format!(
                "{:?}: only anchors for the root (\".\") are used",
                tokens[0]
            )));
        }
        // Between the name and the type: an optional TTL and an optional class.
        for t in &tokens[1..at] {
            if !(t.eq_ignore_ascii_case("IN") || t.chars().all(|c| c.is_ascii_digit())) {
                return Err(syntax(format!("unexpected {t:?} before the record type")));
            }
        }
        let rdata = &tokens[at + 1..];
        if tokens[at].eq_ignore_ascii_case("DNSKEY") {
            dnskey_lines.push_str(&format!(". IN DNSKEY {}\n", rdata.join(" ")));
            continue;
        }
        if rdata.len() < 4 {
            return Err(syntax(
                "a DS record needs key tag, algorithm, digest type and digest".into(),
            ));
        }
        let number = |t: &str, what: &str| {
            t.parse::<u16>()
                .map_err(|_| syntax(format!("{what} {t:?} is not a number")))
        };
        let key_tag = number(rdata[0], "key tag")?;
        let algorithm = u8::try_from(number(rdata[1], "algorithm")?)
            .map_err(|_| syntax(format!("algorithm {} out of range", rdata[1])))?;
        let digest_type = u8::try_from(number(rdata[2], "digest type")?)
            .map_err(|_| syntax(format!("digest type {} out of range", rdata[2])))?;
        let hex: String = rdata[3..].concat();
        let digest =
            decode_hex(&hex).ok_or_else(|| syntax(format!("digest {hex:?} is not hex")))?;
        ds.push(DsAnchor {
            key_tag,
            algorithm,
            digest_type,
            digest,
        });
    }
    let keys = if dnskey_lines.is_empty() {
        TrustAnchors::empty()
    } else {
        dnskey_lines
            .parse::<TrustAnchors>()
            .map_err(|e| AnchorError::Syntax {
                line: 0,
                message: format!("DNSKEY: {e}"),
            })?
    };
    if keys.is_empty() && ds.is_empty() {
        return Err(AnchorError::Empty);
    }
    Ok(AnchorFile { keys, ds })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `key` (a DNSKEY of the root) is the one `ds` names (RFC 4034 §5.1.4).
pub fn matches(ds: &DsAnchor, key: &DNSKEY) -> bool {
    if u8::from(key.algorithm()) != ds.algorithm {
        return false;
    }
    if key.calculate_key_tag().ok() != Some(ds.key_tag) {
        return false;
    }
    let digest_type = DigestType::from(ds.digest_type);
    key.to_digest(&Name::root(), digest_type)
        .map(|d| d.as_ref() == ds.digest.as_slice())
        .unwrap_or(false)
}

/// The trust anchors: the file's DNSKEYs, plus each of `root_keys` (the root's
/// DNSKEY RRset as fetched) that one of its DS records names. `None` when the file
/// has DS records and none of them names a fetched key, and it has no DNSKEY.
pub fn select_keys(file: &AnchorFile, root_keys: &[DNSKEY]) -> Option<TrustAnchors> {
    let mut anchors = file.keys.clone();
    let mut selected = 0;
    for key in root_keys {
        if file.ds.iter().any(|ds| matches(ds, key)) {
            let public = key.public_key();
            anchors.insert(&PublicKeyBuf::new(
                public.public_bytes().to_vec(),
                key.algorithm(),
            ));
            selected += 1;
        }
    }
    (selected > 0 || file.ds.is_empty()).then_some(anchors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IANA's root anchors as Debian's dns-root-data ships them (root.ds).
    const ROOT_DS: &str = "\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
";

    #[test]
    fn ds_records_as_debian_ships_them() {
        let f = parse(ROOT_DS).unwrap();
        assert!(f.keys.is_empty());
        assert_eq!(f.ds.len(), 2);
        assert_eq!(f.ds[0].key_tag, 20326);
        assert_eq!(f.ds[0].algorithm, 8);
        assert_eq!(f.ds[0].digest_type, 2);
        assert_eq!(f.ds[0].digest.len(), 32);
        assert_eq!(f.ds[1].digest[0], 0x68);
    }

    #[test]
    fn ttl_class_comments_and_parentheses() {
        let f = parse(
            "; root anchor\n.\t172800\tIN\tDS\t20326 8 2 (\n E06D44B80B8F1D39A95C0B0D7C65D084\n 58E880409BBC683457104237C7F8EC8D ) ; KSK-2017\n",
        )
        .unwrap();
        assert_eq!(f.ds.len(), 1);
        assert_eq!(f.ds[0].digest.len(), 32);
    }

    #[test]
    fn other_records_and_names_are_refused_with_the_line() {
        assert_eq!(parse("").unwrap_err(), AnchorError::Empty);
        assert_eq!(parse("; nothing\n\n").unwrap_err(), AnchorError::Empty);
        let e = parse("\n. IN A 192.0.2.1\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse("example. IN DS 1 8 2 00\n").unwrap_err().to_string();
        assert!(e.contains("only anchors for the root"), "{e}");
        let e = parse(". IN DS 1 8 2 XYZ\n").unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
        let e = parse(". IN DS 1 8\n").unwrap_err().to_string();
        assert!(e.contains("needs key tag"), "{e}");
    }
}
