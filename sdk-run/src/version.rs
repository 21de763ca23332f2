//! The distro repo's version file, `sdk-version.toml` at the repo root. It
//! names the SDK and OS versions; the default sandbox name is
//! `sdk-<sdk-version>_os-<os-version>`. The repo root is the nearest
//! directory at or above the working directory that holds the file.
//!
//! ```toml
//! # sdk-version.toml
//! sdk-version = "2025.03.1"   # version of the SDK rootfs the repo builds with
//! os-version = "4230.0.0"     # version of the OS the repo builds
//! sdk-image = "my-sdk:2025.03.1"   # optional: a store image (tag or digest)
//! ```
//!
//! The two versions are required; `sdk-image` is optional and names the
//! store image (`sdk-run images`) a new default sandbox is made from,
//! instead of the embedded default SDK. No other keys are allowed. A version is 1 to 64
//! characters from `A-Z a-z 0-9 . _ + -` and starts with a letter or digit.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const FILE_NAME: &str = "sdk-version.toml";

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVersionFile {
    sdk_version: toml::Spanned<String>,
    os_version: toml::Spanned<String>,
    sdk_image: Option<String>,
    /// Parent recipe trees of a derivative (sdk-tools reads them).
    #[allow(dead_code)]
    #[serde(default)]
    parents: Vec<String>,
}

/// A parsed, validated version file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    pub path: PathBuf,
    pub sdk_version: String,
    pub os_version: String,
    /// `sdk-image`: the store image new sandboxes are made from.
    pub sdk_image: Option<String>,
}

impl VersionFile {
    /// The default sandbox name: `sdk-<sdk-version>_os-<os-version>`.
    /// Two versions of the longest allowed length make 136 characters,
    /// over the 128 a name may have: such a name is cut to 119 and ends in
    /// `-` and 8 hex digits of the full name's sha256, so it stays one
    /// name per version pair and within the limit.
    pub fn sandbox_name(&self) -> String {
        let full = format!("sdk-{}_os-{}", self.sdk_version, self.os_version);
        if full.len() <= crate::state::name::MAX_LEN {
            return full;
        }
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(full.as_bytes()));
        format!(
            "{}-{}",
            &full[..crate::state::name::MAX_LEN - 9],
            &digest[..8]
        )
    }

    pub fn load(path: &Path) -> Result<VersionFile, VersionError> {
        let text = sdk_common::fsutil::regular_file(path)
            .and_then(|_| std::fs::read_to_string(path))
            .map_err(|e| VersionError::Read(path.to_path_buf(), e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<VersionFile, VersionError> {
        let err = |span: Option<std::ops::Range<usize>>, msg: String| VersionError::Parse {
            path: path.to_path_buf(),
            line: span.map_or(1, |s| line_of(text, s.start)),
            msg,
        };
        let raw: RawVersionFile =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_string()))?;
        for (key, v) in [
            ("sdk-version", &raw.sdk_version),
            ("os-version", &raw.os_version),
        ] {
            if !valid_version(v.get_ref()) {
                return Err(err(
                    Some(v.span()),
                    format!(
                        "key `{key}`: {:?} is not a version (1-64 of A-Z a-z 0-9 . _ + -, starting with a letter or digit)",
                        v.get_ref()
                    ),
                ));
            }
        }
        Ok(VersionFile {
            path: path.to_path_buf(),
            sdk_version: raw.sdk_version.into_inner(),
            os_version: raw.os_version.into_inner(),
            sdk_image: raw.sdk_image,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The repo root: the nearest directory at or above `start` holding the
/// version file.
pub fn find_repo(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| std::fs::symlink_metadata(d.join(FILE_NAME)).is_ok())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VersionFile, VersionError> {
        VersionFile::parse(s, Path::new("repo/sdk-version.toml"))
    }

    #[test]
    fn good_file_gives_the_sandbox_name() {
        let v = parse("# c\nsdk-version = \"2025.03.1\"\nos-version = \"4230.0.0+dev\"\n").unwrap();
        assert_eq!(v.sandbox_name(), "sdk-2025.03.1_os-4230.0.0+dev");
        // The longest versions still make a valid name, one per pair.
        let long = |sdk: char, os: char| VersionFile {
            path: PathBuf::from("sdk-version.toml"),
            sdk_version: sdk.to_string().repeat(64),
            os_version: os.to_string().repeat(64),
            sdk_image: None,
        };
        let (a, b) = (long('a', 'b').sandbox_name(), long('a', 'c').sandbox_name());
        assert_eq!(a.len(), 128);
        assert_ne!(a, b);
        crate::state::SandboxName::parse(&a).unwrap();
    }

    #[test]
    fn sdk_image_is_optional() {
        let v =
            parse("sdk-version = \"1\"\nos-version = \"2\"\nsdk-image = \"my-sdk:1\"\n").unwrap();
        assert_eq!(v.sdk_image.as_deref(), Some("my-sdk:1"));
        assert_eq!(
            parse("sdk-version = \"1\"\nos-version = \"2\"\n")
                .unwrap()
                .sdk_image,
            None
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("sdk-version = \"1\"\nos-version = \"2\"\nboard = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("repo/sdk-version.toml:3:"), "{e}");
        assert!(e.contains("board"), "{e}");
    }

    #[test]
    fn missing_key_and_bad_values_are_errors() {
        let e = parse("sdk-version = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("os-version"), "{e}");
        let e = parse("sdk-version = \"1\"\nos-version = \"../x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("repo/sdk-version.toml:2:") && e.contains("os-version"),
            "{e}"
        );
        assert!(parse("sdk-version = 1\nos-version = \"2\"\n").is_err());
        assert!(parse("sdk-version = \"\"\nos-version = \"2\"\n").is_err());
    }

    #[test]
    fn repo_is_found_upwards() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), "").unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        assert_eq!(find_repo(&d.path().join("a/b")).unwrap(), d.path());
    }

    #[test]
    fn a_version_file_that_is_no_file_is_reported_not_missed() {
        let d = tempfile::tempdir().unwrap();
        type Make<'a> = &'a dyn Fn(&Path);
        let makers: [(&str, Make); 3] = [
            ("directory", &|p| std::fs::create_dir(p).unwrap()),
            ("FIFO", &|p| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap()
            }),
            ("loop", &|p| {
                std::os::unix::fs::symlink(FILE_NAME, p).unwrap()
            }),
        ];
        for (kind, make) in makers {
            let repo = d.path().join(kind);
            std::fs::create_dir_all(repo.join("sub")).unwrap();
            make(&repo.join(FILE_NAME));
            assert_eq!(find_repo(&repo.join("sub")).unwrap(), repo, "{kind}");
            let e = VersionFile::load(&repo.join(FILE_NAME))
                .unwrap_err()
                .to_string();
            assert!(e.contains(FILE_NAME), "{kind}: {e}");
        }
    }
}
