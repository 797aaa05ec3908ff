//! What is wrong with a configuration: one error naming the file, with every problem
//! found (each naming its setting), so that an administrator fixes them all at once.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    // The I/O error's text is part of this message and not also its source, so that
    // a report of the whole chain does not say it twice.
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Every problem found, each naming its setting; `origin` is the file.
    #[error("{}", Problems(origin, problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// One setting with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for Problem {}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> Self {
        ConfigError::Invalid {
            origin: "configuration".to_owned(),
            problems: vec![p],
        }
    }
}

/// One line per problem, each with the file name, as compilers report errors.
struct Problems<'a>(&'a String, &'a Vec<Problem>);

impl std::fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.0)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

pub(super) fn invalid(setting: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        setting,
        message: message.into(),
    }
}
