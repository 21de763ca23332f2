//! Sandbox names: a [`SandboxName`] cannot be invalid, so code that has
//! one never checks again (it becomes a directory name and the hostname).

use std::fmt;

use crate::exit::UsageError;

/// The longest sandbox name.
pub const MAX_LEN: usize = 128;

/// A valid sandbox name: 1-128 of `A-Z a-z 0-9 . _ + -`, starting with a
/// letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxName(String);

impl SandboxName {
    /// Check `name`; the error is one line saying what is allowed.
    pub fn parse(name: &str) -> Result<SandboxName, UsageError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_LEN
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        if ok {
            Ok(SandboxName(name.to_string()))
        } else {
            Err(UsageError(format!(
                "`{name}` is not a sandbox name: use 1-128 of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SandboxName {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<SandboxName, UsageError> {
        SandboxName::parse(s)
    }
}

impl AsRef<str> for SandboxName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            SandboxName::parse("sdk-1.0_os-2.0+x").unwrap().as_str(),
            "sdk-1.0_os-2.0+x"
        );
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(SandboxName::parse(bad).is_err(), "{bad}");
        }
    }
}
