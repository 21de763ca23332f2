//! Strict TOML parsing shared by profiles, recipes and manifests: unknown keys
//! are errors, and every error names the file, line, column and key (from the
//! toml crate's spans). It owns no schema; callers bring their serde types
//! (with `#[serde(deny_unknown_fields, rename_all = "kebab-case")]`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A parse or validation error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub path: PathBuf,
    /// 1-based; 0 when the error has no position (e.g. the file is missing).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    /// An error at byte range `span` of `text` (the contents of `path`).
    pub fn at(path: &Path, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, span.start);
        ParseError {
            path: path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about the file as a whole.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        ParseError {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Deserialize `text` (read from `path`) strictly.
pub fn from_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ParseError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => ParseError::at(path, text, span, message),
            None => ParseError::file(path, message),
        }
    })
}

/// Read and deserialize a TOML file strictly.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, String), ParseError> {
    let text = read_text(path)?;
    let value = from_toml(path, &text)?;
    Ok((value, text))
}

/// A configuration file's text; one that is not a regular file (a
/// directory, a FIFO that would block, a symlink loop) is an error naming
/// the file and what it is.
pub fn read_text(path: &Path) -> Result<String, ParseError> {
    sdk_common::fsutil::regular_file(path)
        .and_then(|_| std::fs::read_to_string(path))
        .map_err(|e| ParseError::file(path, format!("cannot read: {e}")))
}

/// Whether there is anything at `path` (a dangling or looping symlink
/// counts): a config file that is there but unreadable is reported, not
/// taken as missing.
pub fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct T {
        some_key: String,
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = from_toml::<T>(Path::new("x.toml"), "some-key = \"a\"\nbogus = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml:2:1: "), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }
}
