//! The distro repo a build runs in: the nearest directory at or above the
//! working directory holding `sdk-version.toml` (the same file and rules
//! `sdk-run` names sandboxes by), and the versions it declares.
//!
//! ```toml
//! sdk-version = "2025.03.1"   # version of the SDK rootfs the repo builds with
//! os-version = "4230.0.0"     # version of the OS the repo builds
//! parents = ["../base-os"]    # optional: trees this one derives from, in order
//! ```
//!
//! A derivative names its parent trees (directories, e.g. git submodules,
//! relative to the repo): their recipes (`packages/`) and board profiles
//! (`profiles/`) are the derivative's too, a later tree's `category/name`
//! or board replacing an earlier one's and the repo's own coming last. A
//! parent may have parents of its own (a repo with its own version file)
//! or be a bare tree of recipes and profiles. See [`trees`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::strict::{self, ParseError};

pub const VERSION_FILE: &str = "sdk-version.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVersions {
    sdk_version: toml::Spanned<String>,
    os_version: toml::Spanned<String>,
    /// The SDK image sdk-run uses (read there, allowed here).
    #[allow(dead_code)]
    sdk_image: Option<String>,
    /// Checked by [`trees`] (which `load` runs).
    #[allow(dead_code)]
    #[serde(default)]
    parents: Vec<toml::Spanned<String>>,
}

/// Only what a parent tree's version file says about its own parents (a
/// parent need not be a buildable repo, so nothing else is required).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawParents {
    #[serde(default)]
    parents: Vec<toml::Spanned<String>>,
}

/// The trees of the repo at `root` in the order they apply: each parent's
/// trees (its own parents first), then the repo itself, each directory
/// once. A parent that is missing, or a cycle, is an error at the line
/// that names it.
pub fn trees(root: &Path) -> Result<Vec<PathBuf>, ParseError> {
    let mut out = Vec::new();
    let start = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    visit(&start, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn visit(dir: &Path, stack: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<(), ParseError> {
    stack.push(dir.to_path_buf());
    let file = dir.join(VERSION_FILE);
    if crate::strict::present(&file) {
        let (raw, text): (RawParents, String) = strict::read_toml(&file)?;
        for p in &raw.parents {
            let at = |msg: String| ParseError::at(&file, &text, p.span(), msg);
            let given = Path::new(p.get_ref());
            if given.as_os_str().is_empty() {
                return Err(at("parents: an empty path; name a directory".into()));
            }
            let Ok(parent) = dir.join(given).canonicalize() else {
                return Err(at(format!(
                    "parents: {} does not exist (from {}); fix the path, or check the tree out (`git submodule update --init`)",
                    p.get_ref(),
                    dir.display()
                )));
            };
            if !parent.is_dir() {
                return Err(at(format!("parents: {} is not a directory", p.get_ref())));
            }
            if let Some(i) = stack.iter().position(|s| *s == parent) {
                let chain: Vec<String> = stack[i..]
                    .iter()
                    .chain(std::iter::once(&parent))
                    .map(|d| d.display().to_string())
                    .collect();
                return Err(at(format!(
                    "parents: a cycle, {}; a tree cannot derive from itself, so drop one of these from its `parents`",
                    chain.join(" -> ")
                )));
            }
            if !out.contains(&parent) {
                visit(&parent, stack, out)?;
            }
        }
    }
    stack.pop();
    out.push(dir.to_path_buf());
    Ok(())
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
        // Parent trees that are missing or form a cycle: said here, first.
        trees(root)?;
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

    fn repo(dir: &Path, parents: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let list: Vec<String> = parents.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(
            dir.join(VERSION_FILE),
            format!(
                "sdk-version = \"1\"\nos-version = \"1\"\nparents = [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
    }

    #[test]
    fn parent_trees_come_first_each_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        // derivative -> [mid, base]; mid -> [base]: base once, first.
        repo(&root.join("base"), &[]);
        repo(&root.join("mid"), &["../base"]);
        repo(&root.join("derived"), &["../mid", "../base"]);
        std::fs::create_dir_all(root.join("derived/vendor/bare/packages")).unwrap();
        repo(&root.join("derived"), &["../mid", "vendor/bare"]);
        let t = trees(&root.join("derived")).unwrap();
        assert_eq!(
            t,
            [
                root.join("base"),
                root.join("mid"),
                root.join("derived/vendor/bare"),
                root.join("derived")
            ]
        );
        // sdk-image, which sdk-run reads, is allowed beside them.
        std::fs::write(
            root.join("base").join(VERSION_FILE),
            "sdk-version = \"1\"\nos-version = \"1\"\nsdk-image = \"sdk:1\"\n",
        )
        .unwrap();
        assert!(Repo::load(&root.join("base")).is_ok());
    }

    #[test]
    fn a_missing_parent_or_a_cycle_is_one_error_at_its_line() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        repo(&root.join("a"), &["../missing"]);
        let e = Repo::load(&root.join("a")).unwrap_err().to_string();
        assert!(
            e.contains(":3:") && e.contains("../missing does not exist"),
            "{e}"
        );
        repo(&root.join("a"), &["../b"]);
        repo(&root.join("b"), &["../a"]);
        let e = trees(&root.join("a")).unwrap_err().to_string();
        assert!(e.contains("a cycle") && e.contains("-> "), "{e}");
        repo(&root.join("a"), &["."]);
        assert!(
            trees(&root.join("a"))
                .unwrap_err()
                .to_string()
                .contains("a cycle")
        );
    }

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
