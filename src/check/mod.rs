//! `mta-stsd check DOMAIN`: a domain's whole MTA-STS setup judged from this server,
//! with the daemon's resolver, trust anchors and rules. [`assess`] holds the verdicts
//! (pure), [`dane`] those about DANE, [`probe`] the TLS and SMTP probes; [`gather`] gathers the
//! facts concurrently under one deadline.

pub mod assess;
pub mod dane;
pub mod gather;
pub mod probe;

use serde::Serialize;

use crate::findings::{Finding, Level};

/// Everything `check` found, in the shape `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub domain: String,
    pub checks: Vec<Finding>,
    /// The reply this daemon gives the MTA for the domain now.
    pub answer: String,
    /// The socketmap name the answer is for (`postfix`, `exim`, `sts` for Sendmail):
    /// its zone's options and answer format.
    pub map: String,
}

impl CheckReport {
    /// A report of one problem that stopped the checks (no answer to show).
    pub fn failed(
        domain: &str,
        id: &'static str,
        message: String,
        fix: Option<&str>,
    ) -> CheckReport {
        CheckReport {
            domain: domain.to_owned(),
            checks: vec![Finding {
                fix: fix.map(str::to_owned),
                ..Finding::problem(id, message, "").about(domain)
            }],
            answer: String::new(),
            map: String::new(),
        }
    }

    /// The report, its answer being the one the map name `map` gets.
    pub fn for_map(self, map: &str) -> CheckReport {
        CheckReport {
            map: map.to_owned(),
            ..self
        }
    }

    /// 0 all ok, 1 warnings only, 2 a problem.
    pub fn exit_code(&self) -> u8 {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
            .exit_code()
    }

    /// One line per check, grouped by id in the report's order; `colour` on a tty.
    pub fn to_text(&self, colour: bool) -> String {
        let mut out = format!("{}\n", self.domain);
        let mut last = "";
        for c in &self.checks {
            if c.check != last {
                out.push_str(&format!("\n[{}]\n", c.check));
                last = &c.check;
            }
            let level = c.level.as_str();
            let shown = if colour {
                let code = match c.level {
                    Level::Ok => "32",
                    Level::Warning => "33",
                    Level::Problem => "31",
                };
                format!("\x1b[{code}m{level:<8}\x1b[0m")
            } else {
                format!("{level:<8}")
            };
            out.push_str(&format!("{shown} {}: {}\n", c.subject, c.message));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("         fix: {fix}\n"));
            }
        }
        out.push_str(&format!(
            "\nmta-stsd answers \"{} {}\": {}\n",
            self.map, self.domain, self.answer
        ));
        let count = |l| self.checks.iter().filter(|c| c.level == l).count();
        out.push_str(&format!(
            "check {}: ok {}, warning {}, problem {}\n",
            self.domain,
            count(Level::Ok),
            count(Level::Warning),
            count(Level::Problem)
        ));
        out
    }
}
