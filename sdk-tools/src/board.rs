//! Board profiles: what a board is built for (architecture, target triple,
//! cross toolchain and flags), which meta-package makes its OS, and the name
//! of its disk layout file. This module reads and validates
//! `profiles/<board>/profile.toml`; it does not read the disk layout (the
//! image builder does, through [`Board::read_file`]).
//!
//! Profiles come from the distro repo's own `profiles/<board>/` first, then
//! from the profiles shipped with (embedded in) the tools.
//!
//! ```toml
//! # profiles/arm64-usr/profile.toml
//! description = "64-bit ARM (arm64) generic UEFI machines"
//! arch = "aarch64"                # kernel architecture name (`uname -m`)
//! debian-arch = "arm64"           # Debian architecture of binary imports
//! target = "aarch64-linux-gnu"    # target triple: CHOST, multiarch lib dir
//! os-package = "meta/os"          # the meta-package that makes the OS image
//! disk-layout = "disk-layout.toml" # file next to this one
//!
//! [toolchain]
//! cc = "aarch64-linux-gnu-gcc"    # C compiler on PATH (or absolute)
//! cxx = "aarch64-linux-gnu-g++"   # C++ compiler (used only if a build needs it)
//! ar = "aarch64-linux-gnu-ar"
//! cflags = "-O2 -pipe"            # optional, default empty
//! cxxflags = "-O2 -pipe"          # optional, default empty
//! ldflags = "-Wl,-O1"             # optional, default empty
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::strict::{self, ParseError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_profiles.rs"));
}

/// Name of the profile file inside `profiles/<board>/`.
pub const PROFILE_FILE: &str = "profile.toml";

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error(
        "unknown board `{name}`; known boards: {known}. Define it in the repo as profiles/{name}/profile.toml"
    )]
    Unknown { name: String, known: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("board {board}: cannot read profile file {file}: {source}")]
    ReadFile {
        board: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("board {board} has no file {file} (looked in {place})")]
    MissingFile {
        board: String,
        file: String,
        place: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProfile {
    #[serde(default)]
    description: String,
    arch: toml::Spanned<String>,
    debian_arch: toml::Spanned<String>,
    target: toml::Spanned<String>,
    os_package: toml::Spanned<String>,
    disk_layout: toml::Spanned<String>,
    kernel_cmdline: Option<toml::Spanned<Vec<String>>>,
    toolchain: RawToolchain,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawToolchain {
    cc: String,
    cxx: String,
    ar: String,
    #[serde(default)]
    cflags: String,
    #[serde(default)]
    cxxflags: String,
    #[serde(default)]
    ldflags: String,
}

/// The cross toolchain of a board.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Toolchain {
    pub cc: String,
    pub cxx: String,
    pub ar: String,
    pub cflags: String,
    pub cxxflags: String,
    pub ldflags: String,
}

/// Where a profile was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// `profiles/<board>/` in a distro repo (or any directory).
    Dir(PathBuf),
    /// Shipped with the tools.
    Embedded,
}

/// A validated board profile.
#[derive(Debug, Clone)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Kernel architecture name as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Debian architecture (`amd64`, `arm64`).
    pub debian_arch: String,
    /// Target triple (`aarch64-linux-gnu`): CHOST and the multiarch dir.
    pub target: String,
    pub toolchain: Toolchain,
    /// The OS meta-package (`category/name`) whose runtime closure is the image.
    pub os_package: String,
    /// File name of the disk layout, next to the profile.
    pub disk_layout: String,
    /// Extra kernel command line words for every boot entry (`console=`,
    /// `systemd.log_level=`, ...).
    pub kernel_cmdline: Vec<String>,
    pub source: ProfileSource,
    /// sha256 of the profile file's bytes (part of every input hash).
    pub profile_sha256: String,
}

/// Keys the image sets itself: a profile that set them could boot USR
/// without its verity device or from another ROOT.
const OWN_CMDLINE_KEYS: &[&str] = &[
    "root",
    "rootfstype",
    "mount.usr",
    "usrhash",
    "init",
    "verity.usr",
    "verity.usrhash",
    "verity.usrhashoffset",
];

/// Extra kernel command line words: one word each (no blanks or quotes),
/// none of the keys the image sets itself.
fn check_kernel_cmdline(words: &[String]) -> Result<(), String> {
    for w in words {
        if w.is_empty()
            || w.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c.is_control())
        {
            return Err(format!(
                "`{w}` is not one word; give each word as its own string, e.g. [\"console=ttyS0\", \"quiet\"]"
            ));
        }
        let key = w.split('=').next().unwrap_or(w);
        if OWN_CMDLINE_KEYS.contains(&key) {
            return Err(format!(
                "`{w}`: build_image sets {key}= itself (USR under dm-verity, ROOT by PARTUUID); leave it out"
            ));
        }
    }
    Ok(())
}

/// The Debian architecture for a kernel architecture name.
fn debian_arch_for(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "riscv64" => Some("riscv64"),
        "ppc64le" => Some("ppc64el"),
        "s390x" => Some("s390x"),
        _ => None,
    }
}

fn embedded_file(board: &str, file: &str) -> Option<&'static str> {
    let key = format!("{board}/{file}");
    embedded::EMBEDDED
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// Names of the boards known to a repo (its own `profiles/`) and the tools.
pub fn known_boards(repo: Option<&Path>) -> Vec<String> {
    let mut names: Vec<String> = embedded::EMBEDDED
        .iter()
        .filter_map(|(k, _)| k.strip_suffix(&format!("/{PROFILE_FILE}")))
        .map(str::to_string)
        .collect();
    let trees = repo
        .map(|r| crate::image::repo::trees(r).unwrap_or_else(|_| vec![r.to_path_buf()]))
        .unwrap_or_default();
    for tree in trees {
        let Ok(dir) = std::fs::read_dir(tree.join("profiles")) else {
            continue;
        };
        for entry in dir.flatten() {
            if entry.path().join(PROFILE_FILE).is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn valid_board_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Board {
    /// Load board `name`: the repo's `profiles/<name>/profile.toml` when it
    /// exists, else the shipped profile.
    pub fn load(repo: Option<&Path>, name: &str) -> Result<Board, BoardError> {
        let unknown = || BoardError::Unknown {
            name: name.to_string(),
            known: known_boards(repo).join(", "),
        };
        if !valid_board_name(name) {
            return Err(unknown());
        }
        if let Some(repo) = repo {
            // The repo's own profiles first, then its parents', the
            // nearest first (see `image::repo::trees`).
            for tree in crate::image::repo::trees(repo)?.iter().rev() {
                let dir = tree.join("profiles").join(name);
                let path = dir.join(PROFILE_FILE);
                if crate::strict::present(&path) {
                    let text = crate::strict::read_text(&path)?;
                    return Board::parse(name, &path, &text, ProfileSource::Dir(dir));
                }
            }
        }
        match embedded_file(name, PROFILE_FILE) {
            Some(text) => Board::parse(
                name,
                Path::new(&format!("<shipped>/profiles/{name}/{PROFILE_FILE}")),
                text,
                ProfileSource::Embedded,
            ),
            None => Err(unknown()),
        }
    }

    /// Parse and validate a profile's text (`path` is for messages).
    pub fn parse(
        name: &str,
        path: &Path,
        text: &str,
        source: ProfileSource,
    ) -> Result<Board, BoardError> {
        let raw: RawProfile = strict::from_toml(path, text)?;
        let bad = |span: std::ops::Range<usize>, msg: String| ParseError::at(path, text, span, msg);
        let Some(expected_deb) = debian_arch_for(raw.arch.get_ref()) else {
            return Err(bad(
                raw.arch.span(),
                format!(
                    "arch: unknown architecture `{}`; use x86_64, aarch64, riscv64, ppc64le or s390x",
                    raw.arch.get_ref()
                ),
            )
            .into());
        };
        if raw.debian_arch.get_ref() != expected_deb {
            return Err(bad(
                raw.debian_arch.span(),
                format!(
                    "debian-arch: `{}` does not match arch `{}`; use \"{expected_deb}\"",
                    raw.debian_arch.get_ref(),
                    raw.arch.get_ref()
                ),
            )
            .into());
        }
        if !raw
            .target
            .get_ref()
            .starts_with(raw.arch.get_ref().as_str())
        {
            return Err(bad(
                raw.target.span(),
                format!(
                    "target: triple `{}` does not start with arch `{}`",
                    raw.target.get_ref(),
                    raw.arch.get_ref()
                ),
            )
            .into());
        }
        if crate::packages::recipe::check_package_name(raw.os_package.get_ref()).is_err() {
            return Err(bad(
                raw.os_package.span(),
                format!(
                    "os-package: `{}` is not a package name; use `category/name`",
                    raw.os_package.get_ref()
                ),
            )
            .into());
        }
        let layout = raw.disk_layout.get_ref();
        if layout.is_empty() || layout.contains('/') || layout.starts_with('.') {
            return Err(bad(
                raw.disk_layout.span(),
                format!("disk-layout: `{layout}` must be a file name next to the profile"),
            )
            .into());
        }
        if let Some(k) = &raw.kernel_cmdline
            && let Err(m) = check_kernel_cmdline(k.get_ref())
        {
            return Err(bad(k.span(), format!("kernel-cmdline: {m}")).into());
        }
        let t = raw.toolchain;
        Ok(Board {
            name: name.to_string(),
            description: raw.description,
            arch: raw.arch.into_inner(),
            debian_arch: raw.debian_arch.into_inner(),
            target: raw.target.into_inner(),
            toolchain: Toolchain {
                cc: t.cc,
                cxx: t.cxx,
                ar: t.ar,
                cflags: t.cflags,
                cxxflags: t.cxxflags,
                ldflags: t.ldflags,
            },
            os_package: raw.os_package.into_inner(),
            disk_layout: raw.disk_layout.into_inner(),
            kernel_cmdline: raw
                .kernel_cmdline
                .map(toml::Spanned::into_inner)
                .unwrap_or_default(),
            source,
            profile_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// Read another file of this board's profile directory (for example
    /// the disk layout: `board.read_file(&board.disk_layout)`). Returns a
    /// display path for messages and the text.
    pub fn read_file(&self, file: &str) -> Result<(PathBuf, String), BoardError> {
        match &self.source {
            ProfileSource::Dir(dir) => {
                let path = dir.join(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok((path, text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(BoardError::MissingFile {
                            board: self.name.clone(),
                            file: file.to_string(),
                            place: dir.display().to_string(),
                        })
                    }
                    Err(source) => Err(BoardError::ReadFile {
                        board: self.name.clone(),
                        file: file.to_string(),
                        source,
                    }),
                }
            }
            ProfileSource::Embedded => match embedded_file(&self.name, file) {
                Some(text) => Ok((
                    PathBuf::from(format!("<shipped>/profiles/{}/{file}", self.name)),
                    text.to_string(),
                )),
                None => Err(BoardError::MissingFile {
                    board: self.name.clone(),
                    file: file.to_string(),
                    place: "the shipped profiles".into(),
                }),
            },
        }
    }

    /// The disk layout file's display path and text.
    pub fn disk_layout_text(&self) -> Result<(PathBuf, String), BoardError> {
        self.read_file(&self.disk_layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_boards_load() {
        for name in ["amd64-usr", "arm64-usr"] {
            let b = Board::load(None, name).unwrap();
            assert_eq!(b.source, ProfileSource::Embedded);
            assert_eq!(b.os_package, "meta/os");
        }
        let b = Board::load(None, "arm64-usr").unwrap();
        assert_eq!(b.debian_arch, "arm64");
        assert_eq!(b.target, "aarch64-linux-gnu");
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let err = Board::load(None, "pdp11-usr").unwrap_err().to_string();
        assert!(err.contains("unknown board `pdp11-usr`"), "{err}");
        assert!(err.contains("amd64-usr, arm64-usr"), "{err}");
        assert!(Board::load(None, "../etc").is_err());
    }

    #[test]
    fn a_derivative_finds_its_parents_boards_and_its_own_win() {
        let dir = tempfile::tempdir().unwrap();
        let (base, derived) = (dir.path().join("base"), dir.path().join("derived"));
        let amd = embedded_file("amd64-usr", PROFILE_FILE).unwrap();
        for (tree, desc) in [(&base, "from base"), (&derived, "from derived")] {
            std::fs::create_dir_all(tree.join("profiles/site-usr")).unwrap();
            let text = amd
                .lines()
                .filter(|l| !l.starts_with("description"))
                .collect::<Vec<_>>();
            std::fs::write(
                tree.join("profiles/site-usr").join(PROFILE_FILE),
                format!("description = \"{desc}\"\n{}\n", text.join("\n")),
            )
            .unwrap();
        }
        std::fs::create_dir_all(base.join("profiles/only-base")).unwrap();
        std::fs::write(base.join("profiles/only-base").join(PROFILE_FILE), amd).unwrap();
        std::fs::write(
            derived.join("sdk-version.toml"),
            "sdk-version = \"1\"\nos-version = \"1\"\nparents = [\"../base\"]\n",
        )
        .unwrap();
        let b = Board::load(Some(&derived), "site-usr").unwrap();
        assert_eq!(b.description, "from derived");
        assert!(Board::load(Some(&derived), "only-base").is_ok());
        assert!(known_boards(Some(&derived)).contains(&"only-base".to_string()));
    }

    #[test]
    fn repo_profile_overrides_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("profiles/riscv-usr");
        std::fs::create_dir_all(&p).unwrap();
        let text = embedded_file("amd64-usr", PROFILE_FILE)
            .unwrap()
            .replace("x86_64-linux-gnu-", "riscv64-linux-gnu-")
            .replace("\"x86_64\"", "\"riscv64\"")
            .replace("\"amd64\"", "\"riscv64\"")
            .replace("\"x86_64-linux-gnu\"", "\"riscv64-linux-gnu\"");
        std::fs::write(p.join(PROFILE_FILE), text).unwrap();
        let b = Board::load(Some(dir.path()), "riscv-usr").unwrap();
        assert_eq!(b.debian_arch, "riscv64");
        assert!(known_boards(Some(dir.path())).contains(&"riscv-usr".to_string()));
        let err = b.disk_layout_text().unwrap_err().to_string();
        assert!(err.contains("disk-layout.toml"), "{err}");
    }

    #[test]
    fn kernel_cmdline_words_are_read() {
        let base = embedded_file("amd64-usr", PROFILE_FILE).unwrap();
        let text = base.replace(
            "[toolchain]",
            "kernel-cmdline = [\"systemd.log_level=debug\", \"quiet\"]\n[toolchain]",
        );
        let b = Board::parse("b", Path::new("p.toml"), &text, ProfileSource::Embedded).unwrap();
        assert_eq!(b.kernel_cmdline, ["systemd.log_level=debug", "quiet"]);
        let b = Board::parse("b", Path::new("p.toml"), base, ProfileSource::Embedded).unwrap();
        assert!(b.kernel_cmdline.is_empty());
    }

    #[test]
    fn bad_profiles_name_line_and_key() {
        let base = embedded_file("amd64-usr", PROFILE_FILE).unwrap();
        let p = Path::new("p.toml");
        let cases = [
            (
                base.replace("[toolchain]", "colour = 1\n[toolchain]"),
                "colour",
            ),
            (base.replace("\"amd64\"", "\"arm64\""), "debian-arch"),
            (base.replace("\"meta/os\"", "\"os\""), "os-package"),
            (base.replace("arch = \"x86_64\"", "arch = \"vax\""), "arch"),
            (
                base.replace("[toolchain]", "kernel-cmdline = [\"a b\"]\n[toolchain]"),
                "not one word",
            ),
            (
                base.replace(
                    "[toolchain]",
                    "kernel-cmdline = [\"usrhash=00\"]\n[toolchain]",
                ),
                "sets usrhash= itself",
            ),
        ];
        for (text, key) in cases {
            let err = Board::parse("b", p, &text, ProfileSource::Embedded)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("p.toml:"), "{err}");
            assert!(err.contains(key), "{err}");
        }
    }
}
