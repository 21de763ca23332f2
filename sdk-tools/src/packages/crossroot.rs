//! The per-board cross-root `/build/<board>`: its layout, `setup_board`
//! (directories, per-board wrapper commands), the installed-package database,
//! and installing binary packages into it with an install journal so that a
//! kill at any point leaves nothing half-installed recorded as installed.
//! It does not build anything (see `packages::build`).
//!
//! ```text
//! <build-root>/                      /build in the SDK; --build-root or SDK_BUILD_ROOT
//!   bin/<board>-cc, <board>-c++, <board>-ar, pkg-config-<board>   wrappers
//!   .cache/                          downloads shared by all boards (debs, distfiles)
//!   .work/<board>/                   temporary build directories
//!   <board>/                         the cross-root = the board's sysroot
//!     usr/ etc/ ...                  installed files
//!     packages/<cat>/<name>/         binary packages (see `packages::binpkg`)
//!     var/lib/sdk/board.json         what setup_board set up
//!     var/lib/sdk/db/<cat>/<name>.json  installed packages (PackageMeta)
//!     var/lib/sdk/journal.json       an install in progress (rolled forward)
//!     var/lib/sdk/lock               one build_packages per board at a time
//!     var/log/sdk/<cat>/<name>.log   the last build log of each package
//! ```

use sdk_common::fsutil::{lock_file, shell_quote};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::binpkg::{FileKind, PackageMeta};
use crate::board::Board;

/// Where cross-roots live when neither `--build-root` nor `SDK_BUILD_ROOT`
/// says otherwise.
pub const DEFAULT_BUILD_ROOT: &str = "/build";

/// The build root from a flag, the environment, or the default.
pub fn build_root(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("SDK_BUILD_ROOT") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_BUILD_ROOT),
    }
}

/// A board's cross-root (paths only; cheap to make).
#[derive(Debug, Clone)]
pub struct CrossRoot {
    pub board: String,
    pub build_root: PathBuf,
    /// `<build-root>/<board>`: the sysroot the board's builds compile against.
    pub root: PathBuf,
}

/// What setup_board records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BoardStamp {
    pub board: String,
    pub arch: String,
    pub debian_arch: String,
    pub target: String,
    pub profile_sha256: String,
}

/// An install in progress.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Journal {
    /// The metadata file of the package being installed.
    meta: PathBuf,
    /// Non-directory files the previously installed version owned.
    old_files: Vec<String>,
}

/// [`sdk_common::fsutil::write_atomic`], with the path in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sdk_common::fsutil::write_atomic(path, bytes)
        .with_context(|| format!("write {}", path.display()))
}

/// Refuse relative paths that could leave the root.
pub fn check_rel_path(p: &str) -> Result<()> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("unsafe path `{p}` in package (absolute, empty, or with `..`)");
    }
    Ok(())
}

/// Held while a build_packages run owns a board's cross-root.
pub struct Lock {
    _file: File,
}

impl CrossRoot {
    pub fn new(build_root: &Path, board: &str) -> CrossRoot {
        CrossRoot {
            board: board.to_string(),
            build_root: build_root.to_path_buf(),
            root: build_root.join(board),
        }
    }

    pub fn sdk_dir(&self) -> PathBuf {
        self.root.join("var/lib/sdk")
    }
    pub fn db_dir(&self) -> PathBuf {
        self.sdk_dir().join("db")
    }
    pub fn packages_dir(&self) -> PathBuf {
        self.root.join("packages")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("var/log/sdk")
    }
    /// Temporary build directories (outside the cross-root, which builds
    /// see read-only).
    pub fn work_dir(&self) -> PathBuf {
        self.build_root.join(".work").join(&self.board)
    }
    /// Downloads shared by all boards: `SDK_CACHE_DIR`, else
    /// `<build-root>/.cache`.
    pub fn cache_dir(&self) -> PathBuf {
        match std::env::var_os("SDK_CACHE_DIR") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => self.build_root.join(".cache"),
        }
    }
    /// Directory of the per-board wrapper commands.
    pub fn wrappers_dir(&self) -> PathBuf {
        self.build_root.join("bin")
    }
    pub fn log_path(&self, package: &str) -> PathBuf {
        self.logs_dir().join(format!("{package}.log"))
    }
    fn stamp_path(&self) -> PathBuf {
        self.sdk_dir().join("board.json")
    }
    fn journal_path(&self) -> PathBuf {
        self.sdk_dir().join("journal.json")
    }
    fn db_path(&self, package: &str) -> PathBuf {
        self.db_dir().join(format!("{package}.json"))
    }

    /// The directory holding a package's binary packages.
    pub fn package_dir(&self, package: &str) -> PathBuf {
        self.packages_dir().join(package)
    }

    /// The archive of a package described by `meta` (installed or not).
    pub fn archive_path(&self, meta: &PackageMeta) -> PathBuf {
        self.package_dir(&meta.name).join(&meta.archive)
    }

    /// Open a package's archive as a tar stream (entries in `meta.files`
    /// order, with owners and modes in the headers).
    pub fn open_archive(
        &self,
        meta: &PackageMeta,
    ) -> Result<tar::Archive<zstd::Decoder<'static, std::io::BufReader<File>>>> {
        let path = self.archive_path(meta);
        PackageMeta::open_archive_at(&path)
            .with_context(|| format!("open binary package {}", path.display()))
    }

    /// Whether setup_board has run.
    pub fn is_set_up(&self) -> bool {
        self.stamp_path().is_file()
    }

    /// What setup_board recorded, if it ran.
    pub fn stamp(&self) -> Result<Option<BoardStamp>> {
        match fs::read(self.stamp_path()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("parse {}", self.stamp_path().display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.stamp_path().display())),
        }
    }

    /// Every installed package's metadata, sorted by name.
    pub fn installed(&self) -> Result<Vec<PackageMeta>> {
        let mut out = Vec::new();
        let db = self.db_dir();
        let Ok(cats) = fs::read_dir(&db) else {
            return Ok(out);
        };
        for cat in cats.flatten() {
            for entry in fs::read_dir(cat.path())
                .with_context(|| format!("read {}", cat.path().display()))?
                .flatten()
            {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "json") {
                    let meta: PackageMeta = serde_json::from_slice(
                        &fs::read(&p).with_context(|| format!("read {}", p.display()))?,
                    )
                    .with_context(|| format!("parse {}", p.display()))?;
                    out.push(meta);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One installed package's metadata.
    pub fn installed_package(&self, name: &str) -> Result<Option<PackageMeta>> {
        let p = self.db_path(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    /// The installed packages that `roots` need at runtime (`depends`,
    /// transitively), sorted by name. This is what an image of the board
    /// holds when `roots` is `[board.os_package]`.
    pub fn runtime_closure(&self, roots: &[String]) -> Result<Vec<PackageMeta>> {
        let installed: BTreeMap<String, PackageMeta> = self
            .installed()?
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        let names = super::graph::runtime_closure(roots, |n| {
            installed.get(n).map(|m| m.depends.as_slice())
        })
        .map_err(|chain| {
            anyhow::anyhow!(
                "{} is not installed in {}; run `build_packages --board {}` first",
                chain.join(" -> "),
                self.root.display(),
                self.board
            )
        })?;
        Ok(names.into_iter().map(|n| installed[&n].clone()).collect())
    }

    /// Take the board's lock (waits, saying so, when another run holds it).
    pub fn lock(&self) -> Result<Lock> {
        let what = format!("another build on {}", self.board);
        Ok(Lock {
            _file: {
                let path = self.sdk_dir().join("lock");
                lock_file(&path, &what).with_context(|| format!("lock {}", path.display()))?
            },
        })
    }

    /// setup_board: create the layout and wrappers. Idempotent; `force`
    /// removes the cross-root first. Returns true when it created the
    /// cross-root (false: it was there and is now up to date).
    pub fn setup(&self, board: &Board, force: bool) -> Result<bool> {
        if force && self.root.exists() {
            let trash =
                self.build_root
                    .join(format!(".trash-{}-{}", self.board, std::process::id()));
            fs::rename(&self.root, &trash)
                .with_context(|| format!("move {} aside", self.root.display()))?;
            fs::remove_dir_all(&trash).with_context(|| format!("remove {}", trash.display()))?;
        }
        let fresh = !self.is_set_up();
        // A build root that cannot be made is the flag's fault (exit 2).
        fs::create_dir_all(&self.build_root).map_err(|e| {
            sdk_common::UsageError(format!(
                "cannot create the build root {}: {e}; inside the SDK it is provided, elsewhere pass --build-root DIR or set SDK_BUILD_ROOT",
                self.build_root.display()
            ))
        })?;
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib/pkgconfig",
            "usr/include",
            "usr/share/pkgconfig",
            "etc",
            "packages",
            "var/lib/sdk/db",
            "var/log/sdk",
        ] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        }
        for d in [self.wrappers_dir(), self.work_dir(), self.cache_dir()] {
            fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        self.write_wrappers(board)?;
        let stamp = BoardStamp {
            board: board.name.clone(),
            arch: board.arch.clone(),
            debian_arch: board.debian_arch.clone(),
            target: board.target.clone(),
            profile_sha256: board.profile_sha256.clone(),
        };
        if self.stamp()?.as_ref() != Some(&stamp) {
            write_atomic(&self.stamp_path(), &serde_json::to_vec_pretty(&stamp)?)?;
        }
        Ok(fresh)
    }

    /// The wrapper commands' paths: (cc, c++, ar, pkg-config).
    pub fn wrapper(&self, tool: &str) -> PathBuf {
        let b = &self.board;
        let name = match tool {
            "pkg-config" => format!("pkg-config-{b}"),
            t => format!("{b}-{t}"),
        };
        self.wrappers_dir().join(name)
    }

    fn write_wrappers(&self, board: &Board) -> Result<()> {
        let root = self.root.display().to_string();
        let lib = format!("{root}/usr/lib");
        let mlib = format!("{root}/usr/lib/{}", board.target);
        let header = |what: &str| {
            format!(
                "#!/bin/sh\n# {what} for board {}, with the cross-root {root} as sysroot.\n# Written by setup_board from the board profile; do not edit.\n",
                board.name
            )
        };
        let sysroot_flags = format!(
            "-isystem {} -L{} -L{} -Wl,-rpath-link,{} -Wl,-rpath-link,{}",
            shell_quote(&format!("{root}/usr/include")),
            shell_quote(&lib),
            shell_quote(&mlib),
            shell_quote(&lib),
            shell_quote(&mlib)
        );
        let t = &board.toolchain;
        let wrappers = [
            (
                "cc",
                format!(
                    "{}exec {} {sysroot_flags} \"$@\"\n",
                    header("C compiler"),
                    shell_quote(&t.cc)
                ),
            ),
            (
                "c++",
                format!(
                    "{}exec {} {sysroot_flags} \"$@\"\n",
                    header("C++ compiler"),
                    shell_quote(&t.cxx)
                ),
            ),
            (
                "ar",
                format!("{}exec {} \"$@\"\n", header("Archiver"), shell_quote(&t.ar)),
            ),
            (
                "pkg-config",
                format!(
                    "{}PKG_CONFIG_SYSROOT_DIR={}\nPKG_CONFIG_LIBDIR={}\nPKG_CONFIG_PATH=\nexport PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR PKG_CONFIG_PATH\nexec pkg-config \"$@\"\n",
                    header("pkg-config"),
                    shell_quote(&root),
                    shell_quote(&self.pkg_config_libdir(board)),
                ),
            ),
        ];
        for (tool, text) in wrappers {
            let path = self.wrapper(tool);
            if fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
                continue;
            }
            write_atomic(&path, text.as_bytes())?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        Ok(())
    }

    /// PKG_CONFIG_LIBDIR for the board: the cross-root's pkg-config dirs.
    pub fn pkg_config_libdir(&self, board: &Board) -> String {
        let root = self.root.display();
        format!(
            "{root}/usr/lib/pkgconfig:{root}/usr/share/pkgconfig:{root}/usr/lib/{}/pkgconfig",
            board.target
        )
    }
}

/// Why an install was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{package} installs /{path}, which already belongs to {owner}; remove it from one of the two recipes"
    )]
    FileConflict {
        package: String,
        path: String,
        owner: String,
    },
}

/// The installed-package database of one cross-root, loaded once per run;
/// installs go through it one at a time.
pub struct Installer {
    cross: CrossRoot,
    installed: BTreeMap<String, PackageMeta>,
    /// Non-directory path -> owning package.
    owners: BTreeMap<String, String>,
}

impl Installer {
    /// Load the database, first finishing an install a killed run left
    /// behind.
    pub fn open(cross: &CrossRoot) -> Result<Installer> {
        let mut inst = Installer {
            cross: cross.clone(),
            installed: BTreeMap::new(),
            owners: BTreeMap::new(),
        };
        inst.reload()?;
        inst.recover()?;
        Ok(inst)
    }

    fn reload(&mut self) -> Result<()> {
        self.installed = self
            .cross
            .installed()?
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        self.owners.clear();
        for m in self.installed.values() {
            for f in &m.files {
                if f.kind != FileKind::Dir {
                    self.owners.insert(f.path.clone(), m.name.clone());
                }
            }
        }
        Ok(())
    }

    fn recover(&mut self) -> Result<()> {
        let jp = self.cross.journal_path();
        let Ok(bytes) = fs::read(&jp) else {
            return Ok(());
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", jp.display()))?;
        match fs::read(&journal.meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<PackageMeta>(&b).ok())
        {
            Some(meta) => {
                eprintln!(
                    "finishing the install of {} that an earlier run left unfinished",
                    meta.name
                );
                self.apply(&meta, &journal.old_files)?;
            }
            None => {
                tracing::warn!(meta = %journal.meta.display(), "journal names a missing package; dropping it");
                fs::remove_file(&jp).with_context(|| format!("remove {}", jp.display()))?;
            }
        }
        self.reload()
    }

    pub fn get(&self, name: &str) -> Option<&PackageMeta> {
        self.installed.get(name)
    }

    /// Install the binary package `meta` (its archive is in the package
    /// dir) in place of any installed version.
    pub fn install(&mut self, meta: &PackageMeta) -> Result<()> {
        for f in &meta.files {
            check_rel_path(&f.path)?;
            if f.kind == FileKind::Dir {
                continue;
            }
            if let Some(owner) = self.owners.get(&f.path)
                && owner != &meta.name
            {
                return Err(InstallError::FileConflict {
                    package: meta.name.clone(),
                    path: f.path.clone(),
                    owner: owner.clone(),
                }
                .into());
            }
        }
        let old_files: Vec<String> = self
            .installed
            .get(&meta.name)
            .map(|m| {
                m.files
                    .iter()
                    .filter(|f| f.kind != FileKind::Dir)
                    .map(|f| f.path.clone())
                    .collect()
            })
            .unwrap_or_default();
        let journal = Journal {
            meta: self.cross.package_dir(&meta.name).join(format!(
                "{}.json",
                meta.archive.trim_end_matches(".tar.zst")
            )),
            old_files: old_files.clone(),
        };
        write_atomic(&self.cross.journal_path(), &serde_json::to_vec(&journal)?)?;
        self.apply(meta, &old_files)?;
        if let Some(old) = self.installed.get(&meta.name) {
            for f in &old.files {
                self.owners.remove(&f.path);
            }
        }
        for f in &meta.files {
            if f.kind != FileKind::Dir {
                self.owners.insert(f.path.clone(), meta.name.clone());
            }
        }
        self.installed.insert(meta.name.clone(), meta.clone());
        Ok(())
    }

    /// Unpack, drop what the old version had and the new one lacks, record,
    /// clear the journal. Idempotent (recovery runs it again).
    fn apply(&self, meta: &PackageMeta, old_files: &[String]) -> Result<()> {
        let root = &self.cross.root;
        let mut archive = self.cross.open_archive(meta)?;
        let mut safe_dirs: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().context("read package archive")? {
            let mut entry = entry.context("read package archive")?;
            let rel = entry
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            check_rel_path(&rel)?;
            let dest = root.join(&rel);
            ensure_real_parents(root, &dest, &mut safe_dirs)?;
            let mode = entry.header().mode()?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    match fs::symlink_metadata(&dest) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => bail!(
                            "{}: /{rel} is a directory in the package but not in the cross-root",
                            meta.name
                        ),
                        Err(_) => fs::create_dir(&dest)
                            .with_context(|| format!("create {}", dest.display()))?,
                    }
                    fs::set_permissions(&dest, fs::Permissions::from_mode((mode & 0o777) | 0o700))
                        .with_context(|| format!("chmod {}", dest.display()))?;
                    safe_dirs.insert(dest);
                }
                tar::EntryType::Regular => {
                    refuse_dir(&dest, &meta.name, &rel)?;
                    let tmp = tmp_name(&dest);
                    let _ = fs::remove_file(&tmp);
                    let mut out =
                        File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
                    std::io::copy(&mut entry, &mut out)
                        .with_context(|| format!("write {}", tmp.display()))?;
                    drop(out);
                    fs::set_permissions(&tmp, fs::Permissions::from_mode((mode & 0o777) | 0o600))
                        .with_context(|| format!("chmod {}", tmp.display()))?;
                    fs::rename(&tmp, &dest)
                        .with_context(|| format!("rename into {}", dest.display()))?;
                }
                tar::EntryType::Symlink => {
                    refuse_dir(&dest, &meta.name, &rel)?;
                    let target = entry
                        .link_name()?
                        .context("symlink without target")?
                        .into_owned();
                    let tmp = tmp_name(&dest);
                    let _ = fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&target, &tmp)
                        .with_context(|| format!("symlink {}", tmp.display()))?;
                    fs::rename(&tmp, &dest)
                        .with_context(|| format!("rename into {}", dest.display()))?;
                }
                tar::EntryType::Link => {
                    refuse_dir(&dest, &meta.name, &rel)?;
                    let target = entry
                        .link_name()?
                        .context("hard link without target")?
                        .to_string_lossy()
                        .into_owned();
                    check_rel_path(&target)?;
                    let tmp = tmp_name(&dest);
                    let _ = fs::remove_file(&tmp);
                    let src = root.join(&target);
                    if fs::hard_link(&src, &tmp).is_err() {
                        fs::copy(&src, &tmp).with_context(|| {
                            format!("copy {} to {}", src.display(), tmp.display())
                        })?;
                    }
                    fs::rename(&tmp, &dest)
                        .with_context(|| format!("rename into {}", dest.display()))?;
                }
                other => bail!("{}: /{rel} has unsupported type {other:?}", meta.name),
            }
        }
        let new: BTreeSet<&str> = meta.files.iter().map(|f| f.path.as_str()).collect();
        for old in old_files {
            if !new.contains(old.as_str()) && check_rel_path(old).is_ok() {
                let p = root.join(old);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
                }
            }
        }
        write_atomic(
            &self.cross.db_path(&meta.name),
            &serde_json::to_vec_pretty(meta)?,
        )?;
        let jp = self.cross.journal_path();
        match fs::remove_file(&jp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", jp.display())),
        }
    }
}

fn tmp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.sdk-new"))
}

fn refuse_dir(dest: &Path, package: &str, rel: &str) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        bail!("{package} installs a file at /{rel}, where the cross-root has a directory");
    }
    Ok(())
}

/// Create missing parents of `dest` and refuse to write through a symlink
/// (a package could otherwise point a directory outside the cross-root).
fn ensure_real_parents(root: &Path, dest: &Path, safe: &mut HashSet<PathBuf>) -> Result<()> {
    let Some(parent) = dest.parent() else {
        return Ok(());
    };
    if parent == root || safe.contains(parent) {
        return Ok(());
    }
    ensure_real_parents(root, parent, safe)?;
    match fs::symlink_metadata(parent) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory in the cross-root (a symlink or file); refusing to install through it",
            parent.display()
        ),
        Err(_) => {
            fs::create_dir(parent).with_context(|| format!("create {}", parent.display()))?;
        }
    }
    safe.insert(parent.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::binpkg::{self, Content, Data, Item};
    use crate::packages::recipe::Kind;

    /// Write a package with `files` (path -> contents) into the cross-root's
    /// package dir, as build_packages does.
    fn package(cross: &CrossRoot, name: &str, hash: &str, files: &[(&str, &str)]) -> PackageMeta {
        let mut content = Content::new();
        for (p, c) in files {
            let mut item = Item::root_dir(0o644);
            item.kind = FileKind::File;
            item.data = Data::Bytes(c.as_bytes().to_vec());
            content.insert(p.to_string(), item);
        }
        binpkg::add_parents(&mut content);
        let dir = cross.package_dir(name);
        fs::create_dir_all(&dir).unwrap();
        let stem = PackageMeta::file_stem("1", hash);
        let archive = format!("{stem}.tar.zst");
        let (files, sha) = binpkg::write_archive(&content, &dir.join(&archive), 0).unwrap();
        let meta = PackageMeta {
            format: binpkg::FORMAT,
            name: name.into(),
            version: "1".into(),
            kind: Kind::Build,
            description: String::new(),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            debian_arch: "amd64".into(),
            input_hash: hash.into(),
            depends: vec![],
            build_depends: vec![],
            debs: vec![],
            maintainer_scripts: Default::default(),
            archive,
            archive_sha256: sha,
            files,
        };
        write_atomic(
            &dir.join(format!("{stem}.json")),
            &serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        meta
    }

    fn setup() -> (tempfile::TempDir, CrossRoot) {
        let d = tempfile::tempdir().unwrap();
        let cross = CrossRoot::new(d.path(), "amd64-usr");
        let board = Board::load(None, "amd64-usr").unwrap();
        assert!(cross.setup(&board, false).unwrap());
        assert!(!cross.setup(&board, false).unwrap(), "idempotent");
        assert!(cross.wrapper("cc").is_file() && cross.wrapper("pkg-config").is_file());
        (d, cross)
    }

    #[test]
    fn upgrade_removes_dropped_files_and_conflicts_are_refused() {
        let (_d, cross) = setup();
        let mut inst = Installer::open(&cross).unwrap();
        let v1 = package(
            &cross,
            "a/one",
            &"1".repeat(64),
            &[("usr/bin/x", "1"), ("usr/bin/old", "o")],
        );
        inst.install(&v1).unwrap();
        assert!(cross.root.join("usr/bin/old").exists());
        let v2 = package(
            &cross,
            "a/one",
            &"2".repeat(64),
            &[("usr/bin/x", "2"), ("usr/bin/new", "n")],
        );
        inst.install(&v2).unwrap();
        assert!(!cross.root.join("usr/bin/old").exists());
        assert_eq!(
            fs::read_to_string(cross.root.join("usr/bin/x")).unwrap(),
            "2"
        );
        let other = package(&cross, "b/two", &"3".repeat(64), &[("usr/bin/x", "mine")]);
        let err = inst.install(&other).unwrap_err().to_string();
        assert!(
            err.contains("/usr/bin/x, which already belongs to a/one"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(cross.root.join("usr/bin/x")).unwrap(),
            "2"
        );
        assert!(cross.installed_package("b/two").unwrap().is_none());
        let all: Vec<String> = cross
            .installed()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(all, vec!["a/one"]);
        assert_eq!(cross.runtime_closure(&["a/one".into()]).unwrap().len(), 1);
        assert!(cross.runtime_closure(&["b/two".into()]).is_err());
    }

    #[test]
    fn interrupted_install_is_finished_by_the_next_run() {
        let (_d, cross) = setup();
        let mut inst = Installer::open(&cross).unwrap();
        let v1 = package(
            &cross,
            "a/one",
            &"1".repeat(64),
            &[("usr/bin/x", "1"), ("usr/bin/old", "o")],
        );
        inst.install(&v1).unwrap();
        let v2 = package(&cross, "a/one", &"2".repeat(64), &[("usr/bin/x", "2")]);
        // A run killed right after writing the journal (files half
        // unpacked, database still naming v1).
        let journal = Journal {
            meta: cross.package_dir("a/one").join(format!(
                "{}.json",
                PackageMeta::file_stem("1", &v2.input_hash)
            )),
            old_files: vec!["usr/bin/x".into(), "usr/bin/old".into()],
        };
        write_atomic(
            &cross.journal_path(),
            &serde_json::to_vec(&journal).unwrap(),
        )
        .unwrap();
        drop(inst);
        let inst = Installer::open(&cross).unwrap();
        assert_eq!(inst.get("a/one").unwrap().input_hash, v2.input_hash);
        assert!(!cross.root.join("usr/bin/old").exists());
        assert!(!cross.journal_path().exists());
    }
}
