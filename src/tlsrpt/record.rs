//! The TLSRPT record (RFC 8460 §3) and where it asks reports to go. The record comes
//! from DNS, that is from anyone: a `rua` URI that could inject a mail header, a
//! recipient or a command-line argument, or that is not a plain `mailto:` address or
//! `https:` URL, is refused with a reason rather than used.

use std::fmt;

use crate::config::check_address;

/// Where one report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An address (RFC 8460 §5.3): `local@domain`, checked to be a plain addr-spec.
    Mailto(String),
    /// An HTTPS endpoint (RFC 8460 §5.4).
    Https(reqwest::Url),
}

impl Destination {
    /// The scheme, for logs and metrics.
    pub fn scheme(&self) -> &'static str {
        match self {
            Destination::Mailto(_) => "mailto",
            Destination::Https(_) => "https",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Mailto(a) => write!(f, "mailto:{a}"),
            Destination::Https(u) => write!(f, "{u}"),
        }
    }
}

/// A record's destinations, and the URIs refused with why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    pub usable: Vec<Destination>,
    pub refused: Vec<(String, String)>,
}

/// Parses `v=TLSRPTv1; rua=URI[,URI...]` (RFC 8460 §3: fields separated by `;` with
/// optional whitespace, `v=` first, URIs separated by `,`). Returns an error when the
/// record itself is not a TLSRPT record or has no `rua`.
pub fn destinations(record: &str) -> Result<Destinations, String> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=TLSRPTv1") {
        return Err(format!("{record:?} does not start with v=TLSRPTv1"));
    }
    let rua = fields
        .find_map(|f| f.strip_prefix("rua="))
        .ok_or_else(|| format!("{record:?} has no rua= field"))?;
    let mut out = Destinations::default();
    for uri in rua.split(',').map(|u| u.trim_matches([' ', '\t'])) {
        if uri.is_empty() {
            continue;
        }
        match destination(uri) {
            Ok(d) if !out.usable.contains(&d) => out.usable.push(d),
            Ok(_) => {}
            Err(why) => out.refused.push((uri.to_owned(), why)),
        }
    }
    Ok(out)
}

fn destination(uri: &str) -> Result<Destination, String> {
    let (scheme, rest) = uri.split_once(':').ok_or_else(|| "not a URI".to_owned())?;
    match scheme.to_ascii_lowercase().as_str() {
        "mailto" => mailto(rest).map(Destination::Mailto),
        "https" => https_url(uri).map(Destination::Https),
        other => Err(format!("scheme {other:?} is neither mailto nor https")),
    }
}

/// A `mailto:` URI's one address. Header fields (`?subject=...`, `?cc=...`) are
/// ignored: a report goes to the address alone. Percent-encoding is decoded, then the
/// address must be a plain `local@domain` of printable ASCII without the characters
/// that separate addresses or start options in a mail header or on a command line.
fn mailto(rest: &str) -> Result<String, String> {
    let to = rest.split('?').next().unwrap_or_default();
    let address = percent_decode(to).ok_or_else(|| "bad percent-encoding".to_owned())?;
    if address.contains(',') {
        return Err("more than one address".into());
    }
    check_address(&address)?;
    let (local, domain) = address.rsplit_once('@').unwrap_or_default();
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// An `https:` URL with a host name and no user name or password: a `rua` URI, or
/// where an upload is redirected to.
pub fn https_url(uri: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("not https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries credentials".into());
    }
    match url.host_str() {
        Some(host) if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() => {
            Err("an IP address, not a host name".into())
        }
        Some(_) => Ok(url),
        None => Err("no host".into()),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_and_whitespace() {
        let d = destinations(
            "v=TLSRPTv1 ; rua=mailto:tls-reports@Example.COM, https://reports.example.com/v1/tlsrpt",
        )
        .unwrap();
        assert_eq!(
            d.usable,
            vec![
                Destination::Mailto("tls-reports@example.com".into()),
                Destination::Https("https://reports.example.com/v1/tlsrpt".parse().unwrap()),
            ]
        );
        assert!(d.refused.is_empty());
    }

    #[test]
    fn not_a_record() {
        assert!(destinations("v=STSv1; id=1").is_err());
        assert!(destinations("v=TLSRPTv1;").is_err());
    }

    #[test]
    fn a_rua_cannot_inject_headers_recipients_or_arguments() {
        let record = "v=TLSRPTv1; rua=mailto:a@x.test?cc=evil@y.test,\
            mailto:b%0d%0aBcc:%20evil@y.test@x.test,mailto:-oQ/tmp@x.test,\
            mailto:\"q\"@x.test,mailto:c@x.test%2cd@y.test,mailto:e@[127.0.0.1],\
            https://user:pw@r.test/,https://127.0.0.1/r,http://r.test/,ftp://r.test/";
        let d = destinations(record).unwrap();
        assert_eq!(d.usable, vec![Destination::Mailto("a@x.test".into())]);
        let refused: Vec<&str> = d.refused.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(refused.len(), 9, "{:?}", d.refused);
    }
}
