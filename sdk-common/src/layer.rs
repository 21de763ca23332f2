//! The safe layer extractor: applies one tar stream (a rootfs tarball or an
//! OCI / docker layer) onto a target directory and never writes outside it.
//!
//! It owns path safety and layer semantics; it does not decompress, verify
//! digests or enter a user namespace (callers do, so that ownership recorded
//! in the tar becomes real when run as root inside one).
//!
//! Safety rules, each reported in [`Report::skipped`] when it applies:
//! - `..` components: the entry is refused. Absolute names are made relative
//!   to the target (neutralised).
//! - Parent directories are resolved component by component, following
//!   symlinks *inside* the target only: an absolute link target or `..` is
//!   clamped at the target root, the way a chroot would see it. A write
//!   through a symlink that points "outside" therefore lands inside.
//! - The final component is never followed: an existing entry there is
//!   replaced (files are created with `O_EXCL | O_NOFOLLOW`).
//! - Hard links resolve their target the same way; a missing target or a
//!   directory is refused.
//! - Character and block devices are created when allowed (real root) and
//!   otherwise skipped; a user namespace cannot create them.
//!
//! OCI layer semantics (image-spec layer.md "Whiteouts"): `.wh.NAME` removes
//! NAME from lower layers and `.wh..wh..opq` empties its directory of lower
//! layers' content; entries of the same layer are never hidden by them.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::fsutil::remove_any;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Linux's own limit on symlinks followed while resolving one path.
const MAX_LINKS: usize = 40;
/// How many skipped entries a report keeps by name (the rest are counted).
const REPORT_NAMES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("reading the tar stream: {0} (is the archive truncated or not a tar?)")]
    Read(#[source] io::Error),
    #[error(
        "entry {0}: a name longer than Linux allows (255 bytes a component, 4096 in all); the archive cannot be unpacked as it is"
    )]
    NameTooLong(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// How to apply a stream.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Interpret `.wh.` whiteout files (OCI and docker layers).
    pub whiteouts: bool,
    /// Apply the uid/gid recorded in the tar (needs root, in a user
    /// namespace or not).
    pub owners: bool,
}

impl Options {
    /// Layer semantics, with ownership when running as (namespaced) root.
    pub fn layer() -> Options {
        Options {
            whiteouts: true,
            owners: nix::unistd::geteuid().is_root(),
        }
    }
    /// A plain rootfs tarball.
    pub fn tarball() -> Options {
        Options {
            whiteouts: false,
            ..Options::layer()
        }
    }
}

/// What an extraction did, and what it refused or neutralised.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// `(entry name, why)`, at most [`REPORT_NAMES`] of them.
    pub skipped: Vec<(String, String)>,
    /// All skipped or neutralised entries, including those not named.
    pub skipped_total: u64,
}

impl Report {
    fn skip(&mut self, name: &str, why: impl Into<String>) {
        let why = why.into();
        tracing::debug!(entry = name, why = %why, "skipped");
        self.skipped_total += 1;
        if self.skipped.len() < REPORT_NAMES {
            self.skipped.push((name.to_string(), why));
        }
    }

    /// Fold another report into this one.
    pub fn merge(&mut self, other: Report) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.skipped_total += other.skipped_total;
        for s in other.skipped {
            if self.skipped.len() < REPORT_NAMES {
                self.skipped.push(s);
            }
        }
    }
}

/// What an entry's file name means under the OCI whiteout rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// `.wh..wh..opq`: the directory hides everything lower layers put in it.
    Opaque,
    /// `.wh.NAME`: NAME of lower layers is removed.
    Hide(&'a [u8]),
}

/// The whiteout a file name is, if any (both sinks, the directory and
/// sdk-tools' staging table, read layers through this one rule).
pub fn whiteout(name: &[u8]) -> Option<Whiteout<'_>> {
    if name == OPAQUE.as_bytes() {
        Some(Whiteout::Opaque)
    } else {
        name.strip_prefix(WHITEOUT_PREFIX.as_bytes())
            .map(Whiteout::Hide)
    }
}

/// Normalise a tar entry name into a relative path (both sinks use it).
/// `Err` names the reason the entry is refused (`..` anywhere);
/// `Ok((path, neutralised))`, neutralised when an absolute name was made
/// relative. The archive's root (`./`) is an empty path.
pub fn normalise(raw: &[u8]) -> Result<(PathBuf, bool), &'static str> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    let mut neutralised = false;
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => neutralised = true,
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in the name escapes the target"),
            Component::Normal(n) => out.push(n),
        }
    }
    Ok((out, neutralised))
}

/// What every entry gets from its header.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Applies tar streams onto one target directory.
pub struct Extractor {
    root: PathBuf,
    opts: Options,
    /// Names written by the current layer (and their ancestors), which its
    /// own whiteouts must not remove.
    written: HashSet<PathBuf>,
    /// Directory mtimes, applied after the layer (children change them).
    dir_times: Vec<(PathBuf, i64)>,
    /// Resolved parent directories of this layer's entries; cleared
    /// whenever anything that could be on such a path is removed.
    parents: std::collections::HashMap<PathBuf, (PathBuf, bool)>,
    buf: Vec<u8>,
    /// The process umask is 0: files are created with their final mode.
    umask_zero: bool,
    pub report: Report,
}

impl Extractor {
    /// `root` must exist and be a directory.
    pub fn new(root: &Path, opts: Options) -> Extractor {
        Extractor {
            root: root.to_path_buf(),
            opts,
            written: HashSet::new(),
            dir_times: Vec::new(),
            parents: std::collections::HashMap::new(),
            buf: vec![0; 1 << 20],
            umask_zero: {
                let old = nix::sys::stat::umask(Mode::empty());
                nix::sys::stat::umask(old);
                old.is_empty()
            },
            report: Report::default(),
        }
    }

    /// Apply one tar stream (already decompressed).
    pub fn apply<R: Read>(&mut self, reader: R) -> Result<(), ExtractError> {
        self.written.clear();
        self.parents.clear();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            self.entry(&mut entry)?;
        }
        // Directory times last, deepest first, so creating children does
        // not disturb them.
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|t| std::cmp::Reverse(t.0.components().count()));
        for (path, mtime) in times {
            let t = TimeSpec::new(mtime, 0);
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            );
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        self.report.entries += 1;
        if raw.len() >= 4096 || raw.split(|b| *b == b'/').any(|c| c.len() > 255) {
            return Err(ExtractError::NameTooLong(crate::error::quote_untrusted(
                &shown,
            )));
        }
        let (rel, neutralised) = match normalise(&raw) {
            Ok(v) => v,
            Err(why) => {
                self.report.skip(&shown, why);
                return Ok(());
            }
        };
        if neutralised {
            self.report
                .skip(&shown, "absolute name, extracted relative to the target");
        }
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself ("./"): apply its metadata only.
            if kind == tar::EntryType::Directory {
                self.meta_dir(&self.root.clone(), entry)?;
            }
            return Ok(());
        };
        let rel_parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();

        if self.opts.whiteouts {
            match whiteout(name.as_bytes()) {
                Some(Whiteout::Opaque) => return self.opaque(&rel_parent, &shown),
                Some(Whiteout::Hide(hidden)) => {
                    return self.whiteout(&rel_parent, OsStr::from_bytes(hidden), &shown);
                }
                None => {}
            }
        }

        let cached = self.parents.get(&rel_parent).cloned();
        let resolved = match cached {
            Some(v) => Ok(v),
            None => self.resolve_dir_clamped(&rel_parent, true).inspect(|v| {
                self.parents.insert(rel_parent.clone(), v.clone());
            }),
        };
        let parent = match resolved {
            Ok((p, clamped)) => {
                if clamped {
                    self.report.skip(
                        &shown,
                        "a symlink in its path points outside the target; written inside it instead",
                    );
                }
                p
            }
            Err(why) => {
                self.report.skip(&shown, why);
                return Ok(());
            }
        };
        let target = parent.join(&name);
        self.mark_written(&rel);

        let header_mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = owner(entry);
        let mtime = entry.header().mtime().unwrap_or(0) as i64;

        let m = Meta {
            mode: header_mode,
            uid,
            gid,
            mtime,
        };
        match kind {
            tar::EntryType::Directory => self.make_dir(entry, &target, &m, &shown),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.write_file(entry, &target, &m, &shown)
            }
            tar::EntryType::Symlink => self.make_symlink(entry, &target, &m, &shown),
            tar::EntryType::Link => self.make_hard_link(entry, &target, &m, &shown),
            tar::EntryType::Fifo => self.make_fifo(entry, &target, &m, &shown),
            tar::EntryType::Char | tar::EntryType::Block => {
                self.make_device(entry, kind, &target, &m, &shown)
            }
            other => {
                self.report
                    .skip(&shown, format!("unsupported tar entry type {other:?}"));
                Ok(())
            }
        }
    }

    /// A directory: made (or an entry in its way replaced), its mode,
    /// owner and xattrs; its time is set after the layer.
    fn make_dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                self.parents.clear();
                remove_any(target).map_err(werr(target))?;
                mkdir(target)?;
            }
            Err(_) => mkdir(target)?,
        }
        fs::set_permissions(target, fs::Permissions::from_mode(m.mode)).map_err(werr(target))?;
        self.chown(target, m.uid, m.gid, shown);
        self.xattrs(target, entry, shown);
        self.dir_times.push((target.to_path_buf(), m.mtime));
        Ok(())
    }

    /// A regular file: created anew (never through a link), filled,
    /// owned, its mode after chown (which clears set-id bits), xattrs, time.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        self.replace(target)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(if self.umask_zero {
                m.mode & 0o777
            } else {
                0o600
            })
            .open(target)
            .map_err(werr(target))?;
        loop {
            let n = entry.read(&mut self.buf).map_err(ExtractError::Read)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n]).map_err(werr(target))?;
            self.report.bytes += n as u64;
        }
        if self.opts.owners
            && let Err(e) = std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid))
        {
            self.report
                .skip(shown, format!("owner {}:{} not applied: {e}", m.uid, m.gid));
        }
        // After chown, which clears set-id bits. With umask 0 the
        // plain mode is already right (one syscall less per file).
        if !self.umask_zero || m.mode & 0o7000 != 0 {
            f.set_permissions(fs::Permissions::from_mode(m.mode))
                .map_err(werr(target))?;
        }
        self.xattrs(target, entry, shown);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.mtime.max(0) as u64);
        let _ = f.set_modified(t);
        Ok(())
    }

    /// A symbolic link, as recorded (it is never followed here).
    fn make_symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let Some(link) = entry.link_name_bytes().map(|c| c.into_owned()) else {
            self.report.skip(shown, "symlink without a target");
            return Ok(());
        };
        self.replace(target)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&link), target).map_err(werr(target))?;
        self.chown(target, m.uid, m.gid, shown);
        self.set_link_time(target, m.mtime);
        Ok(())
    }

    /// A hard link: its target resolved inside the root like any path; a
    /// missing target or a directory is refused.
    fn make_hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        _m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let Some(link) = entry.link_name_bytes().map(|c| c.into_owned()) else {
            self.report.skip(shown, "hard link without a target");
            return Ok(());
        };
        let source = match normalise(&link) {
            Ok((p, _)) => p,
            Err(why) => {
                self.report.skip(shown, format!("hard link target: {why}"));
                return Ok(());
            }
        };
        let resolved = source
            .file_name()
            .ok_or("hard link to the root")
            .and_then(|n| {
                let dir = self.resolve_dir(source.parent().unwrap_or(Path::new("")), false)?;
                Ok(dir.join(n))
            });
        let source_path = match resolved {
            Ok(p) => p,
            Err(why) => {
                self.report.skip(shown, format!("hard link target: {why}"));
                return Ok(());
            }
        };
        match fs::symlink_metadata(&source_path) {
            Ok(m) if !m.is_dir() => {}
            Ok(_) => {
                self.report.skip(shown, "hard link to a directory");
                return Ok(());
            }
            Err(_) => {
                self.report
                    .skip(shown, "hard link target is not in the target tree");
                return Ok(());
            }
        }
        if source_path == target {
            return Ok(());
        }
        self.replace(target)?;
        // linkat without AT_SYMLINK_FOLLOW: links the entry itself.
        fs::hard_link(&source_path, target).map_err(werr(target))?;
        Ok(())
    }

    /// A named pipe.
    fn make_fifo<R: Read>(
        &mut self,
        _entry: &mut tar::Entry<'_, R>,
        target: &Path,
        m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        self.replace(target)?;
        nix::unistd::mkfifo(target, Mode::from_bits_truncate(m.mode))
            .map_err(|e| werr(target)(e.into()))?;
        self.chown(target, m.uid, m.gid, shown);
        Ok(())
    }

    /// A device node where it can be made (real root); otherwise skipped
    /// and reported: sandboxes get devices from the host.
    fn make_device<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        target: &Path,
        m: &Meta,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
        let sflag = if kind == tar::EntryType::Char {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        self.replace(target)?;
        match nix::sys::stat::mknod(
                target,
                sflag,
                Mode::from_bits_truncate(m.mode),
                nix::sys::stat::makedev(major.into(), minor.into()),
            ) {
                Ok(()) => self.chown(target, m.uid, m.gid, shown),
                Err(e) => self.report.skip(
                    shown,
                    format!("device node {major}:{minor} not created ({e}); sandboxes get devices from the host's /dev"),
                ),
            }
        Ok(())
    }

    fn mark_written(&mut self, rel: &Path) {
        let mut p = rel.to_path_buf();
        while self.written.insert(p.clone()) {
            if !p.pop() || p.as_os_str().is_empty() {
                break;
            }
        }
    }

    fn meta_dir<R: Read>(
        &mut self,
        path: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ExtractError> {
        let mode = entry.header().mode().unwrap_or(0o755) & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(werr(path))?;
        let (uid, gid) = owner(entry);
        self.chown(path, uid, gid, ".");
        Ok(())
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32, shown: &str) {
        if self.opts.owners
            && let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        {
            self.report
                .skip(shown, format!("owner {uid}:{gid} not applied: {e}"));
        }
    }

    fn set_link_time(&self, path: &Path, mtime: i64) {
        let t = TimeSpec::new(mtime, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        );
    }

    fn xattrs<R: Read>(&mut self, path: &Path, entry: &mut tar::Entry<'_, R>, shown: &str) {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return;
        };
        let mut attrs = Vec::new();
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                attrs.push((
                    OsString::from(OsStr::from_bytes(name)),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        for (name, value) in attrs {
            if let Err(e) = xattr::set(path, &name, &value) {
                self.report.skip(
                    shown,
                    format!("xattr {} not applied: {e}", name.to_string_lossy()),
                );
            }
        }
    }

    /// Resolve a relative directory path inside the root, following
    /// symlinks clamped to the root; create missing directories when
    /// `create`. Returns the host path of the directory.
    fn resolve_dir(&self, rel: &Path, create: bool) -> Result<PathBuf, &'static str> {
        self.resolve_dir_clamped(rel, create).map(|(p, _)| p)
    }

    /// [`Self::resolve_dir`], also saying whether a symlink pointed out of
    /// the root (absolute, or `..` above it) and was clamped inside.
    fn resolve_dir_clamped(
        &self,
        rel: &Path,
        create: bool,
    ) -> Result<(PathBuf, bool), &'static str> {
        let mut clamped = false;
        let mut todo: Vec<OsString> = rel
            .components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == "." || c.is_empty() {
                continue;
            }
            if c == ".." {
                if cur.pop().is_none() {
                    clamped = true;
                }
                continue;
            }
            let mut host = self.root.clone();
            host.extend(&cur);
            host.push(&c);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => cur.push(c),
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err("too many levels of symlinks in the parent path");
                    }
                    let target = fs::read_link(&host).map_err(|_| "unreadable symlink")?;
                    if target.is_absolute() {
                        cur.clear();
                        clamped = true;
                    }
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(n) => todo.push(n.to_os_string()),
                            Component::ParentDir => todo.push("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(_) => return Err("a parent path component is not a directory"),
                Err(_) if create => {
                    mkdir(&host).map_err(|_| "cannot create the parent directory")?;
                    cur.push(c);
                }
                Err(_) => return Err("parent directory does not exist"),
            }
        }
        let mut host = self.root.clone();
        host.extend(&cur);
        Ok((host, clamped))
    }

    fn whiteout(
        &mut self,
        rel_parent: &Path,
        hidden: &OsStr,
        shown: &str,
    ) -> Result<(), ExtractError> {
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            self.report.skip(shown, "malformed whiteout name");
            return Ok(());
        }
        if self.written.contains(&rel_parent.join(hidden)) {
            // Same-layer entries are not hidden by this layer's whiteouts.
            return Ok(());
        }
        let Ok(dir) = self.resolve_dir(rel_parent, false) else {
            return Ok(()); // nothing below to hide
        };
        let target = dir.join(hidden);
        if fs::symlink_metadata(&target).is_ok() {
            self.parents.clear();
            remove_any(&target).map_err(werr(&target))?;
        }
        Ok(())
    }

    fn opaque(&mut self, rel_dir: &Path, shown: &str) -> Result<(), ExtractError> {
        let dir = match self.resolve_dir(rel_dir, true) {
            Ok(d) => d,
            Err(why) => {
                self.report.skip(shown, why);
                return Ok(());
            }
        };
        self.mark_written(rel_dir);
        self.parents.clear();
        self.prune(&dir, rel_dir)
    }

    /// Remove everything under `dir` that the current layer did not write.
    fn prune(&self, dir: &Path, rel: &Path) -> Result<(), ExtractError> {
        for e in fs::read_dir(dir).map_err(werr(dir))? {
            let e = e.map_err(werr(dir))?;
            let child_rel = rel.join(e.file_name());
            let path = e.path();
            if !self.written.contains(&child_rel) {
                remove_any(&path).map_err(werr(&path))?;
            } else if e.file_type().map_err(werr(&path))?.is_dir() {
                self.prune(&path, &child_rel)?;
            }
        }
        Ok(())
    }
}

/// uid/gid of an entry, PAX values first (they carry ids above 2^21).
fn owner<R: Read>(entry: &mut tar::Entry<'_, R>) -> (u32, u32) {
    let mut uid = entry.header().uid().unwrap_or(0) as u32;
    let mut gid = entry.header().gid().unwrap_or(0) as u32;
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let v = || ext.value().ok().and_then(|v| v.parse::<u32>().ok());
            match ext.key_bytes() {
                b"uid" => uid = v().unwrap_or(uid),
                b"gid" => gid = v().unwrap_or(gid),
                _ => {}
            }
        }
    }
    (uid, gid)
}

fn mkdir(path: &Path) -> Result<(), ExtractError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(werr(path))
}

impl Extractor {
    /// Make room for a new non-directory entry at `path` (never following
    /// it).
    fn replace(&mut self, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) => {
                if m.is_dir() || m.file_type().is_symlink() {
                    self.parents.clear();
                }
                remove_any(path).map_err(werr(path))
            }
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar built entry by entry, including names the `tar` builder
    /// refuses (`..`, absolute), by writing headers by hand.
    pub(crate) struct T(tar::Builder<Vec<u8>>);

    impl T {
        pub(crate) fn new() -> T {
            T(tar::Builder::new(Vec::new()))
        }
        fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            // Bypass the builder's path checks: raw bytes into the name.
            let b = name.as_bytes();
            h.as_old_mut().name[..b.len()].copy_from_slice(b);
            h.set_size(size);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            h
        }
        pub(crate) fn file(mut self, name: &str, data: &str) -> T {
            let h = Self::header(tar::EntryType::Regular, name, data.len() as u64);
            self.0.append(&h, data.as_bytes()).unwrap();
            self
        }
        pub(crate) fn dir(mut self, name: &str) -> T {
            let h = Self::header(tar::EntryType::Directory, name, 0);
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        pub(crate) fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> T {
            let mut h = Self::header(kind, name, 0);
            let b = target.as_bytes();
            h.as_old_mut().linkname[..b.len()].copy_from_slice(b);
            h.set_cksum();
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        pub(crate) fn dev(mut self, name: &str) -> T {
            let mut h = Self::header(tar::EntryType::Block, name, 0);
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
            h.set_cksum();
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        pub(crate) fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn apply(root: &Path, tars: &[Vec<u8>]) -> Report {
        let mut x = Extractor::new(
            root,
            Options {
                whiteouts: true,
                owners: false,
            },
        );
        for t in tars {
            x.apply(&t[..]).unwrap();
        }
        x.report
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        (d, root, outside)
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut v = Vec::new();
        fn walk(base: &Path, d: &Path, v: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                v.push(p.strip_prefix(base).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(base, &p, v);
                }
            }
        }
        walk(dir, dir, &mut v);
        v.sort();
        v
    }

    #[test]
    fn hostile_entries_never_write_outside() {
        let (d, root, outside) = setup();
        let out = outside.display().to_string();
        let hostile = T::new()
            .file("../escape", "x")
            .file("a/../../escape2", "x")
            .file("/abs-file", "inside")
            .link(tar::EntryType::Symlink, "out", &out)
            .file("out/through-link", "x")
            .link(tar::EntryType::Symlink, "up", "../../..")
            .file("up/through-up", "x")
            .link(tar::EntryType::Symlink, "rel", "../outside")
            .file("rel/x", "x")
            .link(tar::EntryType::Link, "hard-out", &format!("{out}/secret"))
            .link(tar::EntryType::Link, "hard-up", "../outside/secret")
            .link(tar::EntryType::Link, "hard-via-link", "out/secret")
            .dev("sda")
            .link(tar::EntryType::Symlink, "loop1", "loop2")
            .link(tar::EntryType::Symlink, "loop2", "loop1")
            .file("loop1/x", "x")
            .bytes();
        fs::write(outside.join("secret"), "secret").unwrap();
        let before = tree(d.path().join("outside").as_path());
        let r = apply(&root, &[hostile]);
        assert_eq!(tree(&outside), before, "nothing written outside");
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret"
        );
        assert!(!d.path().join("escape").exists());
        assert!(!d.path().join("escape2").exists());
        // Neutralised writes land inside the root.
        assert_eq!(fs::read_to_string(root.join("abs-file")).unwrap(), "inside");
        assert!(
            root.join(out.trim_start_matches('/'))
                .join("through-link")
                .exists()
        );
        assert!(root.join("through-up").exists());
        assert!(root.join("outside/x").exists());
        let skipped: Vec<_> = r.skipped.iter().map(|s| s.0.as_str()).collect();
        for name in [
            "../escape",
            "a/../../escape2",
            "/abs-file",
            "hard-up",
            "loop1/x",
        ] {
            assert!(skipped.contains(&name), "{name} not reported: {skipped:?}");
        }
        // hard links resolve inside the root, where there is no secret.
        assert!(!root.join("hard-out").exists());
        assert!(!root.join("hard-via-link").exists());
        if !nix::unistd::geteuid().is_root() {
            assert!(skipped.contains(&"sda"));
        }
    }

    #[test]
    fn existing_symlink_at_final_component_is_replaced_not_followed() {
        let (_d, root, outside) = setup();
        let out = outside.join("victim").display().to_string();
        let t = T::new()
            .link(tar::EntryType::Symlink, "f", &out)
            .file("f", "new")
            .bytes();
        apply(&root, &[t]);
        assert!(!outside.join("victim").exists());
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "new");
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let (_d, root, _o) = setup();
        let l1 = T::new()
            .dir("etc")
            .file("etc/a", "1")
            .file("etc/b", "1")
            .dir("opt/sub")
            .file("opt/sub/old", "1")
            .file("opt/keep", "1")
            .bytes();
        let l2 = T::new()
            .file("etc/.wh.a", "")
            .file("opt/new", "2")
            .file("opt/.wh..wh..opq", "")
            .file("etc/c", "2")
            .file("etc/.wh.c", "")
            .bytes();
        let l3 = T::new().file("etc/.wh.c", "").bytes();
        apply(&root, &[l1, l2]);
        assert!(!root.join("etc/a").exists());
        assert!(root.join("etc/b").exists());
        assert!(root.join("etc/c").exists(), "same-layer whiteout ignored");
        assert!(!root.join("etc/.wh.a").exists());
        assert_eq!(tree(&root.join("opt")), ["new"]);
        apply(&root, &[l3]);
        assert!(!root.join("etc/c").exists());
    }

    #[test]
    fn plain_tarballs_keep_wh_files_and_truncation_fails() {
        let (_d, root, _o) = setup();
        let t = T::new()
            .file(".wh.x", "")
            .file("big", &"y".repeat(5000))
            .bytes();
        let mut x = Extractor::new(
            &root,
            Options {
                whiteouts: false,
                owners: false,
            },
        );
        x.apply(&t[..]).unwrap();
        assert!(root.join(".wh.x").exists());
        let mut x = Extractor::new(&root, Options::tarball());
        let err = x.apply(&t[..1500]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
