//! Which answer wins: a DANE verdict takes precedence over the MTA-STS answer (RFC
//! 8461 §2: "senders who implement DANE and MTA-STS ... SHOULD ... prefer DANE");
//! without a DANE verdict that applies, the MTA-STS answer stands. Pure.

use crate::dane::verdict::Verdict;

/// What the reply must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precedence<'a> {
    /// The MTA-STS answer (a policy, or none).
    MtaSts,
    /// The MTA's own opportunistic DANE (usable TLSA records on some MX hosts).
    Dane,
    /// The MTA's own mandatory DANE (usable TLSA records on every MX host).
    DaneOnly,
    /// Defer: the DNSSEC answer is bogus or could not be had (RFC 7672 §2.2).
    Temp(&'a str),
}

/// The precedence of a DANE verdict (`None`: DANE not asked) over MTA-STS. DANE
/// answers carry no MTA-STS TLSRPT attributes: the MTA reports DANE results itself.
pub fn precedence(verdict: Option<&Verdict>) -> Precedence<'_> {
    match verdict {
        Some(Verdict::DaneOnly) => Precedence::DaneOnly,
        Some(Verdict::Dane) => Precedence::Dane,
        Some(Verdict::Temp { reason }) => Precedence::Temp(reason),
        Some(Verdict::NoDane) | None => Precedence::MtaSts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dane_verdicts_replace_the_mta_sts_answer() {
        assert_eq!(precedence(Some(&Verdict::DaneOnly)), Precedence::DaneOnly);
        assert_eq!(precedence(Some(&Verdict::Dane)), Precedence::Dane);
        assert_eq!(precedence(Some(&Verdict::NoDane)), Precedence::MtaSts);
        assert_eq!(precedence(None), Precedence::MtaSts);
        let temp = Verdict::Temp {
            reason: "bogus MX".into(),
        };
        assert_eq!(precedence(Some(&temp)), Precedence::Temp("bogus MX"));
    }
}
