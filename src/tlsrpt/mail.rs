//! The mail form of a report (RFC 8460 §5.3): a `multipart/report;
//! report-type="tlsrpt"` message with `TLS-Report-Domain` and `TLS-Report-Submitter`,
//! the Subject RFC 8460 gives, a text part for people, and the gzip report attached
//! under its §5.3 file name. Handed to the local MTA (`sendmail -i -t`), whose DKIM
//! milter signs it as §5.3 requires.
//!
//! Every header value here is either from the configuration (checked when it is
//! read) or from a recipient domain and address that [`super::record`] and
//! [`super::datagram`] reduced to host-name and addr-spec characters, so no value can
//! end a header line; [`header_safe`] checks it once more before anything is written.

use super::day::rfc5322;
use super::report::Report;

/// Who the message is from and for.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// `[tlsrpt] report_from`.
    pub from: &'a str,
    /// The `mailto:` address of the TLSRPT record.
    pub to: &'a str,
    /// The submitting domain.
    pub submitter: &'a str,
    /// `organization-name`, for the text part.
    pub organization: &'a str,
    /// When the message is written (epoch seconds), for `Date:`.
    pub now: u64,
}

/// A header value that cannot end its line or start another header.
pub fn header_safe(value: &str) -> bool {
    value.chars().all(|c| c == ' ' || c.is_ascii_graphic())
}

/// The whole message, CRLF line ends; `None` if a value is not header-safe.
pub fn message(report: &Report, envelope: &Envelope<'_>) -> Option<Vec<u8>> {
    let domain = &report.group.domain;
    let values = [
        envelope.from,
        envelope.to,
        envelope.submitter,
        domain.as_str(),
        report.id.as_str(),
        report.file_name.as_str(),
    ];
    if !values.iter().all(|v| header_safe(v)) {
        return None;
    }
    let boundary = format!("tlsrpt-{}", super::report::record_tag(&report.id));
    let mut m = String::new();
    let mut header = |name: &str, value: &str| {
        m.push_str(name);
        m.push_str(": ");
        m.push_str(value);
        m.push_str("\r\n");
    };
    header("From", envelope.from);
    header("To", envelope.to);
    header(
        "Subject",
        &format!(
            "Report Domain: {domain} Submitter: {} Report-ID: <{}>",
            envelope.submitter, report.id
        ),
    );
    header("Date", &rfc5322(envelope.now));
    header("Message-ID", &format!("<{}>", report.id));
    header("MIME-Version", "1.0");
    header("TLS-Report-Domain", domain);
    header("TLS-Report-Submitter", envelope.submitter);
    // RFC 8689: a report about broken TLS must not itself wait for TLS to work.
    header("TLS-Required", "No");
    header("Auto-Submitted", "auto-generated");
    header(
        "Content-Type",
        &format!("multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""),
    );
    m.push_str("\r\n");
    m.push_str("This is a multipart message in MIME format.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {} about mail sent to {domain} on {}.\r\n",
        envelope.organization, report.group.day
    );
    m.push_str(&base64_lines(text.as_bytes()));
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str(&format!(
        "Content-Type: application/tlsrpt+gzip; name=\"{}\"\r\n",
        report.file_name
    ));
    m.push_str("Content-Transfer-Encoding: base64\r\n");
    m.push_str(&format!(
        "Content-Disposition: attachment; filename=\"{}\"\r\n\r\n",
        report.file_name
    ));
    m.push_str(&base64_lines(&report.gzip()));
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    Some(m.into_bytes())
}

/// Base64 (RFC 2045) in lines of 76 characters, each ended by CRLF except the last.
fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        encoded.push(ALPHABET[(n >> 18) as usize & 63]);
        encoded.push(ALPHABET[(n >> 12) as usize & 63]);
        encoded.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        encoded.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
    encoded
        .chunks(76)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::counts::{Counts, Group};
    use crate::tlsrpt::day::Day;
    use crate::tlsrpt::report::{Submitter, build};

    fn report() -> Report {
        let group = Group {
            day: Day::parse("2026-12-04").unwrap(),
            domain: "bad.test".into(),
            record: "v=TLSRPTv1;rua=mailto:r@bad.test".into(),
        };
        let counts = Counts {
            sessions: 3,
            failures: 1,
            ..Counts::default()
        };
        let submitter = Submitter {
            organization: "Example Mail".into(),
            contact: "postmaster@sender.test".into(),
            domain: "sender.test".into(),
        };
        let day = group.day;
        build(
            &submitter,
            "0123456789abcdef",
            &group,
            (day.start(), day.end()),
            &[(r#"{"policy-type":9}"#.into(), counts)],
        )
    }

    #[test]
    fn base64_matches_rfc_4648s_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_lines(plain.as_bytes()), coded);
        }
        let long = base64_lines(&[0u8; 100]);
        assert!(long.split("\r\n").all(|l| l.len() <= 76));
    }

    #[test]
    fn the_message_has_rfc_8460s_headers_and_attachment() {
        let r = report();
        let envelope = Envelope {
            from: "tlsrpt@sender.test",
            to: "r@bad.test",
            submitter: "sender.test",
            organization: "Example Mail",
            now: 1_796_428_800,
        };
        let text = String::from_utf8(message(&r, &envelope).unwrap()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        for line in [
            "From: tlsrpt@sender.test",
            "To: r@bad.test",
            &format!(
                "Subject: Report Domain: bad.test Submitter: sender.test Report-ID: <{}>",
                r.id
            ),
            "TLS-Report-Domain: bad.test",
            "TLS-Report-Submitter: sender.test",
            "MIME-Version: 1.0",
        ] {
            assert!(head.lines().any(|l| l == line), "{line} missing in\n{head}");
        }
        assert!(head.contains("multipart/report; report-type=\"tlsrpt\""));
        assert!(body.contains("Content-Type: application/tlsrpt+gzip"));
        assert!(body.contains(&format!("filename=\"{}\"", r.file_name)));
        assert!(text.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn a_value_that_could_end_a_header_line_stops_the_message() {
        let r = report();
        let envelope = Envelope {
            from: "tlsrpt@sender.test",
            to: "r@bad.test\r\nBcc: evil@x.test",
            submitter: "sender.test",
            organization: "Example Mail",
            now: 0,
        };
        assert!(message(&r, &envelope).is_none());
    }
}
