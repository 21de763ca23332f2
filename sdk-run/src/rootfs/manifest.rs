//! Rootfs manifests (`rootfs-manifests/*.toml`): the declarative definition
//! of an SDK rootfs. This module parses strictly (unknown keys are errors
//! naming file, line and key) and validates into [`Manifest`]; it does not
//! build anything (that is `rootfs::build`).
//!
//! A complete manifest, every key shown:
//!
//! ```toml
//! # Packages added on top of the base with its package manager (apt).
//! packages = ["gcc", "make"]
//! # Shell commands run inside the new rootfs (as root, `/bin/sh -c`), in
//! # order, after packages and files.
//! commands = ["echo sdk > /etc/hostname"]
//! # Ansible playbooks run last against the new root (ansible-playbook with
//! # a chroot connection, as root inside the user namespace); relative to
//! # the manifest's folder; each one's folder is an input of the digest.
//! playbooks = ["site.yml"]
//!
//! # Exactly one base. Relative paths are relative to the manifest's folder.
//! [base]
//! debian = { suite = "bookworm", variant = "minbase" }
//! # oci-archive = "sdk.oci.tar"    # OCI image layout tar or `docker save` tarball
//! # oci-layout = "sdk-layout"      # OCI image layout directory
//! # tarball = "rootfs.tar.zst"     # plain, gzip or zstd rootfs tarball
//! # image = "my-sdk:1"             # an image of the store (tag or digest): chains builds
//!
//! # Environment of every process entered into a sandbox of this image.
//! [env]
//! LANG = "C.UTF-8"
//!
//! # Files copied in (after packages, before commands).
//! [[files]]
//! src = "files/motd"     # relative to the manifest's folder
//! dst = "/etc/motd"      # absolute path inside the rootfs
//! mode = "0644"          # optional, octal; default: the source's mode
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The default SDK manifest, built into the binary.
pub const DEFAULT_SDK: &str = include_str!("../../../rootfs-manifests/sdk.toml");
/// The name the default manifest is reported under.
pub const DEFAULT_SDK_NAME: &str = "rootfs-manifests/sdk.toml";

/// mmdebstrap's variants (see mmdebstrap(1), `--variant`).
const DEBIAN_VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

/// A manifest error: the file, the line and column, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    base: Spanned<RawBase>,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    #[serde(default)]
    commands: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    playbooks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBase {
    /// An image of the store, by tag or digest.
    image: Option<Spanned<String>>,
    oci_archive: Option<Spanned<String>>,
    oci_layout: Option<Spanned<String>>,
    tarball: Option<Spanned<String>>,
    debian: Option<Spanned<RawDebian>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDebian {
    suite: Spanned<String>,
    #[serde(default)]
    variant: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    src: Spanned<String>,
    dst: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

/// Where the rootfs starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// An OCI image layout tar, or a `docker save` tarball.
    OciArchive(PathBuf),
    /// An OCI image layout directory.
    OciLayout(PathBuf),
    /// A rootfs tarball: plain, gzip or zstd (detected from its content).
    Tarball(PathBuf),
    /// A Debian suite bootstrapped with mmdebstrap from the host's apt sources.
    Debian { suite: String, variant: String },
    /// An image already in the store (a tag or digest, as `sdk-run images`
    /// lists them): images chain, each built on the one before.
    Image(String),
}

/// One file copied into the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Absolute path on the host.
    pub src: PathBuf,
    /// Absolute path inside the rootfs.
    pub dst: PathBuf,
    pub mode: Option<u32>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Where it was read from (for messages).
    pub origin: String,
    pub base: Base,
    pub packages: Vec<String>,
    pub commands: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<FileCopy>,
    /// Ansible playbooks run against the new root last (a chroot
    /// connection, as root inside the user namespace).
    pub playbooks: Vec<PathBuf>,
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read manifest: {e}"),
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Manifest::parse(&text, &path.display().to_string(), &dir)
    }

    /// The embedded default SDK manifest (relative paths resolve against
    /// the current directory; the default has none).
    pub fn default_sdk() -> Manifest {
        Manifest::parse(DEFAULT_SDK, DEFAULT_SDK_NAME, Path::new("/"))
            .expect("the embedded default manifest is valid (checked by unit tests)")
    }

    /// Parse `text` (named `origin` in errors); relative paths resolve
    /// against `dir`.
    pub fn parse(text: &str, origin: &str, dir: &Path) -> Result<Manifest, ManifestError> {
        let src = Src { text, origin, dir };
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // toml's message is multi-line with a source excerpt; keep the
            // first sentence, the location is ours.
            let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
            src.at(span, format!("{msg} (see the manifest keys in the README)"))
        })?;
        let base = src.base(&raw.base)?;
        let packages = src.packages(&raw.packages)?;
        let mut commands = Vec::new();
        for c in &raw.commands {
            if c.get_ref().trim().is_empty() {
                return Err(src.at(c.span(), "`commands` entry is empty".into()));
            }
            commands.push(c.get_ref().clone());
        }
        let mut env = BTreeMap::new();
        for (k, v) in &raw.env {
            let key = k.get_ref();
            if key.is_empty() || key.contains('=') || key.contains('\0') || v.contains('\0') {
                return Err(src.at(
                    k.span(),
                    format!("`env` key {key:?} is not a variable name"),
                ));
            }
            env.insert(key.clone(), v.clone());
        }
        let files = src.files(&raw.files)?;
        let playbooks = raw
            .playbooks
            .iter()
            .map(|p| src.rel(p, "playbooks"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            origin: origin.to_string(),
            base,
            packages,
            commands,
            env,
            files,
            playbooks,
        })
    }
}

/// The manifest being parsed: its text, its name in messages, and the
/// directory relative paths resolve against.
struct Src<'a> {
    text: &'a str,
    origin: &'a str,
    dir: &'a Path,
}

impl Src<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: String) -> ManifestError {
        let (line, column) = line_col(self.text, span.start);
        ManifestError {
            file: self.origin.to_string(),
            line,
            column,
            message,
        }
    }

    fn rel(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ManifestError> {
        if s.get_ref().is_empty() {
            return Err(self.at(s.span(), format!("`{key}` is empty; give a path")));
        }
        Ok(self.dir.join(s.get_ref()))
    }

    /// `[base]`: exactly one of an OCI archive or layout, a tarball, or a
    /// Debian suite to bootstrap.
    fn base(&self, raw: &Spanned<RawBase>) -> Result<Base, ManifestError> {
        let b = raw.get_ref();
        let mut bases = Vec::new();
        if let Some(i) = &b.image {
            let name = i.get_ref().trim();
            if name.is_empty() {
                return Err(self.at(
                    i.span(),
                    "`base.image` is empty; name a tag or digest from `sdk-run images`".into(),
                ));
            }
            bases.push(Base::Image(name.to_string()));
        }
        if let Some(p) = &b.oci_archive {
            bases.push(Base::OciArchive(self.rel(p, "base.oci-archive")?));
        }
        if let Some(p) = &b.oci_layout {
            bases.push(Base::OciLayout(self.rel(p, "base.oci-layout")?));
        }
        if let Some(p) = &b.tarball {
            bases.push(Base::Tarball(self.rel(p, "base.tarball")?));
        }
        if let Some(d) = &b.debian {
            let d = d.get_ref();
            let suite = d.suite.get_ref();
            if suite.is_empty()
                || !suite
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(self.at(
                    d.suite.span(),
                    format!("`base.debian.suite` {suite:?} is not a suite name like \"bookworm\""),
                ));
            }
            let variant = match &d.variant {
                None => "minbase".to_string(),
                Some(v) if DEBIAN_VARIANTS.contains(&v.get_ref().as_str()) => v.get_ref().clone(),
                Some(v) => {
                    return Err(self.at(
                        v.span(),
                        format!(
                            "`base.debian.variant` {:?} is not one of {}",
                            v.get_ref(),
                            DEBIAN_VARIANTS.join(", ")
                        ),
                    ));
                }
            };
            bases.push(Base::Debian {
                suite: suite.clone(),
                variant,
            });
        }
        if bases.len() != 1 {
            return Err(self.at(
            raw.span(),
            format!(
                "`base` needs exactly one of image, oci-archive, oci-layout, tarball, debian (found {})",
                bases.len()
            ),
        ));
        }
        Ok(bases.remove(0))
    }

    /// Debian package names, optionally with `=version` or `/suite`.
    fn packages(&self, raw: &[Spanned<String>]) -> Result<Vec<String>, ManifestError> {
        let mut packages = Vec::new();
        for p in raw {
            let name = p.get_ref();
            // Debian package names, optionally with =version or /suite.
            if name.is_empty()
                || name.starts_with('-')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:=/~_".contains(c))
            {
                return Err(self.at(
                    p.span(),
                    format!("`packages` entry {name:?} is not a package name"),
                ));
            }
            packages.push(name.clone());
        }
        Ok(packages)
    }

    /// `[[files]]`: a source next to the manifest, an absolute destination
    /// without `..`, an optional octal mode.
    fn files(&self, raw: &[Spanned<RawFile>]) -> Result<Vec<FileCopy>, ManifestError> {
        let mut files = Vec::new();
        for f in raw {
            let r = f.get_ref();
            let src = self.rel(&r.src, "files.src")?;
            let dst = PathBuf::from(r.dst.get_ref());
            if !dst.is_absolute()
                || dst
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(self.at(
                    r.dst.span(),
                    format!(
                        "`files.dst` {:?} must be an absolute path inside the rootfs without `..`",
                        r.dst.get_ref()
                    ),
                ));
            }
            let mode = match &r.mode {
                None => None,
                Some(m) => match u32::from_str_radix(m.get_ref(), 8) {
                    Ok(v) if v <= 0o7777 => Some(v),
                    _ => {
                        return Err(self.at(
                            m.span(),
                            format!(
                                "`files.mode` {:?} is not an octal mode like \"0644\"",
                                m.get_ref()
                            ),
                        ));
                    }
                },
            };
            files.push(FileCopy { src, dst, mode });
        }
        Ok(files)
    }
}

/// 1-based line and column of byte offset `pos` in `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(pos, |i| pos - i - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, "m.toml", Path::new("/srv/m"))
    }

    #[test]
    fn default_manifest_is_valid_and_complete() {
        let m = Manifest::default_sdk();
        assert_eq!(
            m.base,
            Base::Debian {
                suite: "bookworm".into(),
                variant: "minbase".into()
            }
        );
        for p in [
            "gcc",
            "make",
            "pkg-config",
            "e2fsprogs",
            "erofs-utils",
            "squashfs-tools",
            "dosfstools",
            "mtools",
            "qemu-utils",
            "cryptsetup-bin",
            "mmdebstrap",
            "dpkg-dev",
            "gcc-aarch64-linux-gnu",
            "libc6-dev-arm64-cross",
            "file",
            "git",
            "sudo",
            "fdisk",
            "gdisk",
            "busybox-static",
            "cpio",
            "zstd",
            "ca-certificates",
            "apt",
        ] {
            assert!(m.packages.iter().any(|x| x == p), "default lacks {p}");
        }
    }

    #[test]
    fn full_manifest_parses() {
        let m = parse(
            r#"
packages = ["gcc", "make=4.3-4.1"]
commands = ["true"]
[base]
oci-archive = "sdk.tar"
[env]
LANG = "C.UTF-8"
[[files]]
src = "files/motd"
dst = "/etc/motd"
mode = "0600"
"#,
        )
        .unwrap();
        assert_eq!(m.base, Base::OciArchive("/srv/m/sdk.tar".into()));
        assert_eq!(m.packages, ["gcc", "make=4.3-4.1"]);
        assert_eq!(m.env["LANG"], "C.UTF-8");
        assert_eq!(
            m.files,
            [FileCopy {
                src: "/srv/m/files/motd".into(),
                dst: "/etc/motd".into(),
                mode: Some(0o600)
            }]
        );
        let m = parse("[base]\ntarball = \"/abs/r.tar.gz\"\n").unwrap();
        assert_eq!(m.base, Base::Tarball("/abs/r.tar.gz".into()));
        let m = parse("[base]\noci-layout = \"lay\"\n").unwrap();
        assert_eq!(m.base, Base::OciLayout("/srv/m/lay".into()));
        let m = parse("[base]\nimage = \"my-sdk:1\"\n").unwrap();
        assert_eq!(m.base, Base::Image("my-sdk:1".into()));
        assert!(parse("[base]\nimage = \" \"\n").is_err());
        assert!(parse("[base]\nimage = \"a\"\ntarball = \"t\"\n").is_err());
    }

    #[track_caller]
    fn err(text: &str, line: usize, needle: &str) {
        let e = parse(text).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.line, line, "{s}");
        assert!(s.starts_with("m.toml:"), "{s}");
        assert!(s.contains(needle), "{s} lacks {needle}");
        assert!(!s.contains('\n'), "one line: {s}");
    }

    #[test]
    fn bad_manifests_name_line_and_key() {
        err(
            "packages = []\n[base]\ndebian = { suite = \"bookworm\" }\nmirror = \"x\"\n",
            4,
            "mirror",
        );
        err(
            "pakages = [\"gcc\"]\n[base]\ntarball = \"x\"\n",
            1,
            "pakages",
        );
        err("[base]\n", 1, "exactly one");
        err(
            "[base]\ntarball = \"a\"\noci-layout = \"b\"\n",
            1,
            "exactly one",
        );
        err(
            "[base]\ndebian = { suite = \"bookworm\", variant = \"tiny\" }\n",
            2,
            "variant",
        );
        err(
            "[base]\ndebian = { suite = \"bookworm\", mirror = \"m\" }\n",
            2,
            "mirror",
        );
        err(
            "packages = [\"gcc\", \"--force\"]\n[base]\ntarball = \"x\"\n",
            1,
            "--force",
        );
        err(
            "[base]\ntarball = \"x\"\n[[files]]\nsrc = \"a\"\ndst = \"rel\"\n",
            5,
            "files.dst",
        );
        err(
            "[base]\ntarball = \"x\"\n[[files]]\nsrc = \"a\"\ndst = \"/a\"\nmode = \"rw\"\n",
            6,
            "files.mode",
        );
        err(
            "[base]\ntarball = \"x\"\n[[files]]\nsrc = \"a\"\ndst = \"/a\"\nowner = 1\n",
            6,
            "owner",
        );
        err("[base\n", 1, "");
        err("packages = \"gcc\"\n[base]\ntarball = \"x\"\n", 1, "");
    }

    #[test]
    fn fixtures_parse_as_labelled() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let r = Manifest::load(&path);
            if name.starts_with("good-") {
                r.unwrap_or_else(|e| panic!("{name}: {e}"));
            } else if name.starts_with("bad-") {
                let e = r.expect_err(&name).to_string();
                assert!(e.contains(&name), "{e}");
                assert!(e.split(':').nth(1).unwrap().parse::<usize>().unwrap() > 0);
            }
            seen += 1;
        }
        assert!(seen >= 4);
        // Every shipped manifest is valid.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rootfs-manifests");
        for entry in std::fs::read_dir(shipped).unwrap() {
            let path = entry.unwrap().path();
            Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
