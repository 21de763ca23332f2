//! The distro repo a build runs in: the nearest directory at or above the
//! working directory holding `sdk-version.toml` (the same file and rules
//! `sdk-run` names sandboxes by), and the versions it declares.
//!
//! ```toml
//! sdk-version = "2025.03.1"   # version of the SDK rootfs the repo builds with
//! os-version = "4230.0.0"     # version of the OS the repo builds
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::strict::{self, ParseError};

pub const VERSION_FILE: &str = "sdk-version.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVersions {
    sdk_version: toml::Spanned<String>,
    os_version: toml::Spanned<String>,
}

/// A distro repo and its versions.
#[derive(Debug, Clone)]
pub struct Repo {
    pub root: PathBuf,
    pub sdk_version: String,
    pub os_version: String,
}

fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

impl Repo {
    /// Find the repo at or above `start`.
    pub fn find(start: &Path) -> Result<Repo, ParseError> {
        let mut dir = Some(start);
        while let Some(d) = dir {
            let path = d.join(VERSION_FILE);
            if crate::strict::present(&path) {
                return Repo::load(d);
            }
            dir = d.parent();
        }
        Err(ParseError::file(
            &start.join(VERSION_FILE),
            format!(
                "no {VERSION_FILE} here or in any parent directory; run from inside the distro repo"
            ),
        ))
    }

    /// Read `root/sdk-version.toml`.
    pub fn load(root: &Path) -> Result<Repo, ParseError> {
        let path = root.join(VERSION_FILE);
        let (raw, text): (RawVersions, String) = strict::read_toml(&path)?;
        for (key, v) in [
            ("sdk-version", &raw.sdk_version),
            ("os-version", &raw.os_version),
        ] {
            if !valid_version(v.get_ref()) {
                return Err(ParseError::at(
                    &path,
                    &text,
                    v.span(),
                    format!(
                        "{key}: `{}` is not a version (1-64 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit)",
                        v.get_ref()
                    ),
                ));
            }
        }
        Ok(Repo {
            root: root.to_path_buf(),
            sdk_version: raw.sdk_version.into_inner(),
            os_version: raw.os_version.into_inner(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repo_above_and_checks_versions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(VERSION_FILE),
            "sdk-version = \"1\"\nos-version = \"2.0.1\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let r = Repo::find(&dir.path().join("a/b")).unwrap();
        assert_eq!(r.os_version, "2.0.1");
        std::fs::write(
            dir.path().join(VERSION_FILE),
            "sdk-version = \"1\"\nos-version = \"../x\"\n",
        )
        .unwrap();
        let err = Repo::find(dir.path()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("os-version"), "{err}");
    }
}
