//! Configuration errors: every one is collected, then all are reported together.
//!
//! Each error names the file, the key, what is wrong and what to do. None of them ever holds
//! a secret: the code that builds them quotes values only for keys that cannot hold one.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file where the problem is (the main file or an included one).
    pub file: PathBuf,
    /// Where in the file, e.g. `hub.timeout` or `subscription[2].client_secret_file`
    /// (subscriptions are counted from 1 within their file). Empty for a whole-file problem
    /// such as a TOML syntax error.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, " — {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in a configuration, in the order they were found (file by file, key by
/// key). Never empty when returned by [`crate::config::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Where errors are gathered while the stages run; nothing stops at the first one.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    errors: Vec<ConfigError>,
}

impl Collector {
    pub(crate) fn push(
        &mut self,
        file: &Path,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }
}
