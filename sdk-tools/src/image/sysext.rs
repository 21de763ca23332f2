//! `build_sysext`: a systemd-sysext image (a naked squashfs or erofs
//! filesystem) from packages, for extending a /usr-only OS without
//! rebuilding it. It carries only `/usr` and the release file systemd
//! matches against the host's os-release before merging
//! (`usr/lib/extension-release.d/extension-release.NAME`: `ID`,
//! `VERSION_ID`, `SYSEXT_LEVEL`, `ARCHITECTURE`; see systemd-sysext(8)).
//!
//! With `--verity`, the hash tree goes to `NAME.verity` and the root hash
//! to `NAME.roothash` beside `NAME.raw`, the names systemd-dissect and
//! systemd-nspawn look for next to a raw image.

use sdk_common::error::bad_input;
use sdk_common::error::classify;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::attrs;
use super::derive::{Seed, env_epoch};
use super::install::{Source, install};
use super::repo::Repo;
use super::tree::Tree;
use super::usr::make_usr_only;
use crate::board::Board;
use crate::exit::UsageError;
use crate::formats::fs::{self as fsb, FsOptions, FsType, Ownership};
use crate::formats::verity;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct SysextRequest {
    pub board: String,
    pub name: String,
    pub packages: Vec<String>,
    /// A staging root instead of packages.
    pub root: Option<PathBuf>,
    pub fs: FsType,
    pub verity: bool,
    pub replace: bool,
    /// Default `<repo>/__build__/images/<board>/sysext`.
    pub output: Option<PathBuf>,
    pub build_root: Option<PathBuf>,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// systemd's architecture names (os-release `ARCHITECTURE=`).
pub fn systemd_arch(kernel_arch: &str) -> &str {
    match kernel_arch {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        "ppc64le" => "ppc64-le",
        "i686" | "i386" => "x86",
        other => other,
    }
}

/// Key `key` of an os-release file's text.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// The extension-release file for an OS with os-release text `os` (if
/// known). systemd-sysext compares `SYSEXT_LEVEL` when both sides have
/// one and `VERSION_ID` otherwise, so the OS's own `VERSION_ID` is used
/// when it has one (a Debian-based OS says `12`), else `version_id`.
pub fn release_file(os: Option<&str>, version_id: &str, arch: &str) -> String {
    let id = os
        .and_then(|t| os_release_value(t, "ID"))
        .unwrap_or_else(|| "_any".into());
    let version_id = os
        .and_then(|t| os_release_value(t, "VERSION_ID"))
        .unwrap_or_else(|| version_id.to_string());
    let level = os
        .and_then(|t| os_release_value(t, "SYSEXT_LEVEL"))
        .unwrap_or_else(|| "1.0".into());
    format!(
        "ID={id}\nVERSION_ID={version_id}\nSYSEXT_LEVEL={level}\nARCHITECTURE={}\n",
        systemd_arch(arch)
    )
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What a sysext build needs, all checked before anything is written.
struct SysextPlan {
    repo: Repo,
    board: Board,
    cross: crate::packages::crossroot::CrossRoot,
    source: Source,
    out_dir: PathBuf,
}

fn plan(req: &SysextRequest) -> Result<SysextPlan> {
    let cwd = std::env::current_dir().context("read the working directory")?;
    let repo = Repo::find(&cwd).map_err(bad_input)?;
    let board = Board::load(Some(&repo.root), &req.board).map_err(bad_input)?;
    let build_root = crate::packages::crossroot::build_root(req.build_root.as_deref());
    let cross = crate::packages::crossroot::CrossRoot::new(&build_root, &board.name);
    let source = match &req.root {
        Some(r) if req.packages.is_empty() => Source::Dir(if r.is_absolute() {
            r.clone()
        } else {
            cwd.join(r)
        }),
        Some(_) => return Err(usage("give packages or --root, not both")),
        None if req.packages.is_empty() => {
            return Err(usage(
                "name the packages to put in the sysext, e.g. `build_sysext --board B NAME app/tool`",
            ));
        }
        None => Source::Packages {
            cross: cross.clone(),
            roots: req.packages.clone(),
            exclude: vec![board.os_package.clone()],
        },
    };
    let out_dir = match &req.output {
        Some(o) if o.is_absolute() => o.clone(),
        Some(o) => cwd.join(o),
        None => repo
            .root
            .join("__build__/images")
            .join(&board.name)
            .join("sysext"),
    };
    if source.check(&board)? == Some(0) {
        return Err(usage(format!(
            "none of {} adds anything: all of it is in the OS image ({}) already; a sysext carries packages the image lacks",
            req.packages.join(" "),
            board.os_package
        )));
    }
    Ok(SysextPlan {
        repo,
        board,
        cross,
        source,
        out_dir,
    })
}

/// Build the sysext; returns the path of `NAME.raw`.
pub fn build_sysext(req: &SysextRequest) -> Result<PathBuf> {
    if !valid_name(&req.name) {
        return Err(usage(format!(
            "sysext name {:?}: use letters, digits, -, _ and . (e.g. docker, wasmtime-1)",
            req.name
        )));
    }
    if !matches!(req.fs, FsType::Squashfs | FsType::Erofs) {
        return Err(usage("--fs: a sysext is squashfs or erofs"));
    }
    let SysextPlan {
        repo,
        board,
        cross,
        source,
        out_dir,
    } = plan(req)?;
    // Taken back (when still empty) if anything below fails.
    let out_dirs = sdk_common::fsutil::OutputDirs::create(&out_dir)
        .with_context(|| format!("create {}", out_dir.display()))?;
    let raw = out_dir.join(format!("{}.raw", req.name));
    if raw.exists() && !req.replace {
        return Err(usage(format!(
            "{} already exists; pass --replace to overwrite it",
            raw.display()
        )));
    }
    let work = tempfile::Builder::new()
        .prefix(".tmp-sysext-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("create a temporary directory in {}", out_dir.display()))?;
    let mut tree = Tree::new(&work.path().join("staging"))?;
    let packages = install(&mut tree, &source, &board)?;
    make_usr_only(&mut tree).map_err(bad_input)?;
    let os_release = ["usr/lib/os-release", "etc/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(cross.root.join(p)).ok());
    let release = release_file(os_release.as_deref(), &repo.os_version, &board.arch);
    tree.add_file(
        &format!("usr/lib/extension-release.d/extension-release.{}", req.name),
        release.as_bytes(),
        0o644,
        0,
        0,
        "build_sysext",
        true,
    )?;
    let epoch = env_epoch()
        .map_err(usage)?
        .unwrap_or_else(|| tree.newest_mtime());
    let seed = Seed::new(
        &[&tree.digest(), req.name.as_bytes(), board.name.as_bytes()],
        epoch,
    );
    tree.settle()?;
    let img = work.path().join("sysext.raw");
    let mut opts = FsOptions {
        uuid: (req.fs == FsType::Erofs).then(|| seed.uuid("sysext")),
        epoch,
        owner: Ownership::Root,
        read_only: true,
        ..FsOptions::default()
    };
    attrs::read_only_owners(
        &tree,
        "",
        req.fs,
        &work.path().join("sysext.pseudo"),
        &mut opts,
    )?;
    // The image root is the tree root: /usr inside, nothing else.
    let built = fsb::build(req.fs, tree.root(), &img, &opts).map_err(classify)?;
    let mut published = if req.verity {
        verity_files(&img, built.size, &seed, work.path(), &out_dir, &req.name)?
    } else {
        vec![]
    };
    published.push((img, raw.clone()));
    for (from, to) in &published {
        fs::rename(from, to).with_context(|| format!("rename into place {}", to.display()))?;
    }
    eprintln!(
        "build_sysext: {} ({}, {} packages, {} paths)",
        raw.display(),
        req.fs.name(),
        packages.len(),
        tree.entries().len()
    );
    println!("{}", raw.display());
    out_dirs.keep();
    Ok(raw)
}

/// `--verity`: the image padded to a 4 KiB boundary, its hash tree and
/// root hash in files of their own (systemd-sysext reads `NAME.verity`
/// and `NAME.roothash` beside `NAME.raw`). Returns (made, destination)
/// pairs for the caller to rename into place.
fn verity_files(
    img: &Path,
    built_size: u64,
    seed: &Seed,
    work: &Path,
    out_dir: &Path,
    name: &str,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let size = built_size.div_ceil(4096) * 4096;
    fs::OpenOptions::new()
        .write(true)
        .open(img)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("pad {}", img.display()))?;
    let hash = work.join("sysext.verity");
    let f = verity::format(
        img,
        &hash,
        &verity::Options {
            salt: Some(seed.salt("verity").to_vec()),
            uuid: Some(seed.uuid("verity")),
            ..verity::Options::default()
        },
    )?;
    let roothash = work.join("sysext.roothash");
    fs::write(&roothash, format!("{}\n", f.root_hash_hex()))
        .with_context(|| format!("write {}", roothash.display()))?;
    Ok(vec![
        (hash, out_dir.join(format!("{name}.verity"))),
        (roothash, out_dir.join(format!("{name}.roothash"))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_file_follows_the_os() {
        let r = release_file(
            Some("NAME=Demo\nID=demo\nSYSEXT_LEVEL=2.1\n"),
            "1.2.3",
            "aarch64",
        );
        assert_eq!(
            r,
            "ID=demo\nVERSION_ID=1.2.3\nSYSEXT_LEVEL=2.1\nARCHITECTURE=arm64\n"
        );
        let r = release_file(Some("ID=debian\nVERSION_ID=\"12\"\n"), "1.0.0", "x86_64");
        assert_eq!(
            r,
            "ID=debian\nVERSION_ID=12\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
        );
        let r = release_file(None, "1", "x86_64");
        assert_eq!(
            r,
            "ID=_any\nVERSION_ID=1\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("docker-24.0"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
    }
}
