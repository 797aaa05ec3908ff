//! What `mta-stsd check` and `mta-stsd doctor` report: findings, each with how bad it
//! is, what it is about, what was found, and what to change.

use serde::Serialize;

/// How bad a finding is. The order matters: the worst level is the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works, but weaker or more fragile than it should be.
    Warning,
    /// Defers mail or weakens its protection.
    Problem,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        }
    }

    /// 0 all fine, 1 warnings, 2 a problem.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name: `postfix.policy_maps` (doctor), `mx-certificate` (check).
    pub check: String,
    pub level: Level,
    /// What the finding is about (a DNS name, a URL, an MX host); empty when the
    /// check's name says it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    pub message: String,
    /// What to change; set for warnings and problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &str, message: impl Into<String>) -> Finding {
        Finding::new(check, Level::Ok, message.into(), None)
    }

    pub fn warning(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(check, Level::Warning, message.into(), Some(fix.into()))
    }

    pub fn problem(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(check, Level::Problem, message.into(), Some(fix.into()))
    }

    /// The same finding, about `subject`.
    pub fn about(mut self, subject: impl Into<String>) -> Finding {
        self.subject = subject.into();
        self
    }

    fn new(check: &str, level: Level, message: String, fix: Option<String>) -> Finding {
        Finding {
            check: check.to_owned(),
            level,
            subject: String::new(),
            message,
            fix,
        }
    }
}

/// The worst level among `findings` (Ok when empty).
pub fn worst(findings: &[Finding]) -> Level {
    findings.iter().map(|c| c.level).max().unwrap_or(Level::Ok)
}
