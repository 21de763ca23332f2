//! Filesystem images built from a directory, without mounting anything:
//! ext4 (`mkfs.ext4 -d`), erofs (`mkfs.erofs`), squashfs (`mksquashfs`) and
//! vfat (`mkfs.vfat` + `mcopy -s`). The same tree and options give the same
//! bytes: fixed UUIDs (derived from the label when not given), every
//! timestamp set to `epoch` (use [`source_date_epoch`]), ext4's directory
//! hash seed fixed, squashfs without xattrs.
//!
//! Ownership: [`Ownership::Keep`] copies the source's uid/gid,
//! [`Ownership::Root`] makes everything root-owned and [`Ownership::Force`]
//! one given uid/gid, so an unprivileged builder can still produce a
//! root-owned system image (ext4: debugfs `set_inode_field`; erofs:
//! `--all-root`/`--force-uid`; squashfs: `-all-root`/`-force-uid`; vfat has
//! no owners).
//!
//! This module does not place images in a disk (`crate::formats::disk`) or hash
//! them (`crate::formats::verity`).
//!
//! ```no_run
//! use sdk_tools::formats::fs::{self, FsOptions, FsType, Ownership};
//! # fn main() -> Result<(), fs::FsError> {
//! let src = std::path::Path::new("staging/usr");
//! let opts = FsOptions {
//!     label: Some("USR-A".into()),
//!     uuid: Some(uuid::Uuid::from_u128(42)),
//!     epoch: fs::source_date_epoch()?.unwrap_or(0),
//!     owner: Ownership::Root,
//!     size: Some(fs::suggested_size(FsType::Ext4, src, 10)?),
//!     ..FsOptions::default()
//! };
//! let built = fs::build(FsType::Ext4, src, "usr.ext4".as_ref(), &opts)?;
//! println!("{} bytes", built.size);
//! # Ok(()) }
//! ```
//!
//! USR's ext4 is written by the `ext4` module, a one-pass read-only
//! writer that takes owners, modes and times from the staging table.

pub mod ext4;
pub mod xattr;

use sdk_common::error::BadInput;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;

use crate::cmd::{CmdError, CommandExt};
use crate::io_err;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The request is wrong (unsupported option, bad label, missing
    /// source); nothing was written.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Tool(#[from] CmdError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

impl BadInput for FsError {
    fn is_bad_input(&self) -> bool {
        matches!(self, FsError::BadInput(_))
    }
}

fn bad(msg: impl Into<String>) -> FsError {
    FsError::BadInput(msg.into())
}

/// The filesystems we can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Erofs,
    Squashfs,
    Vfat,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Erofs => "erofs",
            FsType::Squashfs => "squashfs",
            FsType::Vfat => "vfat",
        }
    }
}

impl std::str::FromStr for FsType {
    type Err = FsError;
    fn from_str(s: &str) -> Result<FsType, FsError> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "erofs" => Ok(FsType::Erofs),
            "squashfs" => Ok(FsType::Squashfs),
            "vfat" | "fat" => Ok(FsType::Vfat),
            _ => Err(bad(format!(
                "unknown filesystem {s:?}; use ext4, erofs, squashfs or vfat"
            ))),
        }
    }
}

/// Who owns the files in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// The source files' uid/gid.
    #[default]
    Keep,
    /// uid 0, gid 0.
    Root,
    /// One uid/gid for everything.
    Force { uid: u32, gid: u32 },
}

/// How to build.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Volume label (ext4: 16 bytes, vfat: 11; erofs 1.5 and squashfs
    /// have none, so giving one is an error).
    pub label: Option<String>,
    /// Filesystem UUID (ext4, erofs) or volume id (vfat: its first four
    /// bytes). Default: derived from the label, so still deterministic.
    pub uuid: Option<Uuid>,
    /// Every timestamp in the image (seconds since 1970).
    pub epoch: u64,
    pub owner: Ownership,
    /// Image size in bytes for ext4 and vfat (see [`suggested_size`]);
    /// erofs and squashfs are as large as their content.
    pub size: Option<u64>,
    /// ext4: set the `read-only` feature so the kernel refuses to mount
    /// it writable (USR); default true.
    pub read_only: bool,
    /// squashfs/erofs compressor (`zstd`, `xz`, `lz4hc`...), for squashfs
    /// with a level after a colon (`zstd:3`); default: the tool's.
    pub compression: Option<String>,
    /// squashfs only: a mksquashfs pseudo file (`-pf`) applied after the
    /// tree is read, e.g. `path m MODE UID GID` lines giving every path its
    /// own owner and mode (see `image::attrs`). With one, `owner` applies
    /// to the root directory only.
    pub pseudo_file: Option<PathBuf>,
}

impl Default for FsOptions {
    fn default() -> FsOptions {
        FsOptions {
            label: None,
            uuid: None,
            epoch: 0,
            owner: Ownership::Keep,
            size: None,
            read_only: true,
            compression: None,
            pseudo_file: None,
        }
    }
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub fs_type: FsType,
    /// Bytes of the image file.
    pub size: u64,
    pub uuid: Uuid,
}

/// `SOURCE_DATE_EPOCH` from the environment, if set.
pub fn source_date_epoch() -> Result<Option<u64>, FsError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            bad(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds; unset it or fix it"
            ))
        }),
    }
}

/// Round `n` up to a multiple of `block`.
pub fn round_up(n: u64, block: u64) -> u64 {
    n.div_ceil(block) * block
}

/// Every entry under `dir`, depth first, names sorted, as paths relative
/// to `dir` (the root itself not included).
fn walk(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, FsError> {
    fn inner(
        root: &Path,
        rel: &Path,
        out: &mut Vec<(PathBuf, std::fs::Metadata)>,
    ) -> Result<(), FsError> {
        let here = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&here)
            .map_err(io_err("read directory", &here))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read directory", &here))?;
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let full = root.join(&r);
            let md = std::fs::symlink_metadata(&full).map_err(io_err("stat", &full))?;
            let is_dir = md.is_dir();
            out.push((r.clone(), md));
            if is_dir {
                inner(root, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    inner(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// Bytes the tree takes in 4 KiB blocks: file contents rounded up to a
/// block, one block per directory and per long symlink, plus 256 bytes of
/// inode per entry.
pub fn content_size(dir: &Path) -> Result<u64, FsError> {
    let mut total = 4096;
    for (_, md) in walk(dir)? {
        total += 256;
        if md.is_file() {
            total += round_up(md.len(), 4096);
        } else if md.is_dir() || (md.file_type().is_symlink() && md.len() > 60) {
            total += 4096;
        }
    }
    Ok(total)
}

/// An image size for `fs` that holds `dir` with `slack_percent` spare:
/// content plus the filesystem's own metadata (inode tables, bitmaps,
/// FATs), rounded up to 1 MiB.
pub fn suggested_size(fs: FsType, dir: &Path, slack_percent: u64) -> Result<u64, FsError> {
    let content = content_size(dir)?;
    let meta = match fs {
        // Inode tables (one 256-byte inode per 16 KiB), group descriptors,
        // bitmaps, the root and lost+found.
        FsType::Ext4 => content / 32 + (4 << 20),
        // Two FATs of 4 bytes per 4 KiB cluster, reserved sectors.
        FsType::Vfat => content / 512 + (2 << 20),
        FsType::Erofs | FsType::Squashfs => content / 64 + (1 << 20),
    };
    let with_slack = (content + meta) * (100 + slack_percent) / 100;
    Ok(round_up(with_slack, 1 << 20))
}

/// The work directory beside the output, until the image is renamed into
/// place.
const TEMP_PREFIX: &str = ".sdk-tools-fs-";

/// A filesystem tool that dies with us: a killed build never leaves
/// mke2fs or debugfs writing into a directory nobody will use.
fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    sdk_common::linux::dies_with_us(&mut c, libc::SIGKILL);
    c
}

/// Build a `fs` image of the tree `src` at `out` (written beside it under
/// a temporary name and renamed into place). A temporary directory a
/// killed build left beside `out` is removed first.
pub fn build(fs: FsType, src: &Path, out: &Path, opts: &FsOptions) -> Result<Built, FsError> {
    if !src.is_dir() {
        return Err(bad(format!(
            "source {} is not a directory; give the tree to put in the image",
            src.display()
        )));
    }
    if opts.pseudo_file.is_some() && fs != FsType::Squashfs {
        return Err(bad(format!(
            "pseudo files are a squashfs feature; {} cannot take one",
            fs.name()
        )));
    }
    let uuid = opts.uuid.unwrap_or_else(|| {
        let ns = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"sdk-run:fs");
        Uuid::new_v5(
            &ns,
            format!("{}\0{}", fs.name(), opts.label.as_deref().unwrap_or("")).as_bytes(),
        )
    });
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // What a killed build left here (its lock is free) goes first.
    sdk_common::fsutil::reap_stale_temps(dir, TEMP_PREFIX);
    let tmp = sdk_common::fsutil::LockedTempDir::new_in(dir, TEMP_PREFIX).map_err(|e| {
        bad(format!(
            "cannot create {} in {}: {e}; check the directory exists and is writable",
            out.display(),
            dir.display()
        ))
    })?;
    let image = tmp.path().join("image");
    tracing::info!(fs = fs.name(), src = %src.display(), out = %out.display(), "building filesystem");
    match fs {
        FsType::Ext4 => ext4(src, &image, opts, uuid)?,
        FsType::Erofs => erofs(src, &image, opts, uuid)?,
        FsType::Squashfs => squashfs(src, &image, opts)?,
        FsType::Vfat => vfat(src, &image, opts, uuid)?,
    }
    let size = std::fs::metadata(&image)
        .map_err(io_err("stat", &image))?
        .len();
    std::fs::rename(&image, out).map_err(io_err("rename into place", out))?;
    Ok(Built {
        fs_type: fs,
        size,
        uuid,
    })
}

fn need_size(fs: FsType, src: &Path, opts: &FsOptions) -> Result<u64, FsError> {
    match opts.size {
        Some(s) if s.is_multiple_of(4096) && s > 0 => Ok(s),
        Some(s) => Err(bad(format!(
            "{} image size {s} is not a positive multiple of 4096 bytes",
            fs.name()
        ))),
        None => suggested_size(fs, src, 10),
    }
}

fn ext4(src: &Path, image: &Path, opts: &FsOptions, uuid: Uuid) -> Result<(), FsError> {
    if let Some(l) = &opts.label
        && l.len() > 16
    {
        return Err(bad(format!("ext4 label {l:?} is longer than 16 bytes")));
    }
    let size = need_size(FsType::Ext4, src, opts)?;
    // Quote for debugfs's command parser: "..." with "" for a quote.
    let mut script = String::new();
    let entries = walk(src)?;
    let mut targets: Vec<(String, u32, u32)> =
        vec![("/".into(), 0, 0), ("/lost+found".into(), 0, 0)];
    let root_md = std::fs::metadata(src).map_err(io_err("stat", src))?;
    targets[0] = ("/".into(), root_md.uid(), root_md.gid());
    targets[1] = ("/lost+found".into(), root_md.uid(), root_md.gid());
    for (rel, md) in &entries {
        let s = rel.to_str().ok_or_else(|| {
            bad(format!(
                "{}: file names must be UTF-8 for ext4 fix-ups",
                rel.display()
            ))
        })?;
        if s.contains('\n') {
            return Err(bad(format!(
                "{s:?}: file names with newlines are not supported"
            )));
        }
        targets.push((format!("/{s}"), md.uid(), md.gid()));
    }
    let epoch = opts.epoch;
    for (path, uid, gid) in &targets {
        let q = format!("\"{}\"", path.replace('"', "\"\""));
        for field in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(script, "sif {q} {field} {epoch}");
        }
        let (u, g) = match opts.owner {
            Ownership::Keep => (*uid, *gid),
            Ownership::Root => (0, 0),
            Ownership::Force { uid, gid } => (uid, gid),
        };
        let _ = writeln!(script, "sif {q} uid {u}");
        let _ = writeln!(script, "sif {q} gid {g}");
    }
    let f = std::fs::File::create(image).map_err(io_err("create", image))?;
    f.set_len(size).map_err(io_err("size", image))?;
    drop(f);
    // e2fsprogs reads E2FSPROGS_FAKE_TIME=0 as "not set" and stamps the
    // superblock with the clock: an epoch of 0 gives the superblock 1 s
    // (the files keep 0), so the image is the same bytes on every run.
    let fake_time = epoch.max(1).to_string();
    let hash_seed = Uuid::new_v5(&uuid, b"ext4 hash seed");
    let mut mkfs = tool("mke2fs");
    mkfs.env("E2FSPROGS_FAKE_TIME", &fake_time)
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
        ])
        .args(["-O", "^has_journal"])
        .arg("-U")
        .arg(uuid.to_string())
        .arg("-E")
        .arg(format!("hash_seed={hash_seed},nodiscard"))
        .arg("-d")
        .arg(src);
    if let Some(l) = &opts.label {
        mkfs.arg("-L").arg(l);
    }
    mkfs.arg(image).run_capture()?;
    // e2fsprogs 1.47.0 (Debian 12) ignores SOURCE_DATE_EPOCH (1.47.1 reads
    // it): E2FSPROGS_FAKE_TIME fixes the superblock times and the inodes'
    // crtime, but mke2fs -d copies each file's atime/mtime/ctime and owner
    // from the source. Set them all (ctime cannot be set on the source) in
    // one debugfs batch.
    let script_path = image.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(io_err("write", &script_path))?;
    let out = tool("debugfs")
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .run_output()?;
    // debugfs exits 0 even when a command fails; anything on stderr but
    // its version banner is a failure.
    let errors: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(FsError::Tool(CmdError::Failed {
            cmd: format!("debugfs -w -f {}", script_path.display()),
            status: std::process::ExitStatus::default(),
            stderr_tail: errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        }));
    }
    let _ = std::fs::remove_file(&script_path);
    if opts.read_only {
        tool("tune2fs")
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .args(["-O", "read-only"])
            .arg(image)
            .run_capture()?;
    }
    Ok(())
}

fn erofs(src: &Path, image: &Path, opts: &FsOptions, uuid: Uuid) -> Result<(), FsError> {
    if opts.label.is_some() {
        return Err(bad(
            "mkfs.erofs 1.5 (Debian 12) cannot set a label; drop the label or use ext4",
        ));
    }
    let mut cmd = tool("mkfs.erofs");
    cmd.arg("--quiet")
        .arg(format!("-T{}", opts.epoch))
        .arg(format!("-U{uuid}"));
    match opts.owner {
        Ownership::Keep => {}
        Ownership::Root => {
            cmd.arg("--all-root");
        }
        Ownership::Force { uid, gid } => {
            cmd.arg(format!("--force-uid={uid}"))
                .arg(format!("--force-gid={gid}"));
        }
    }
    if let Some(c) = &opts.compression {
        cmd.arg(format!("-z{c}"));
    }
    cmd.arg(image).arg(src).run_capture()?;
    Ok(())
}

fn squashfs(src: &Path, image: &Path, opts: &FsOptions) -> Result<(), FsError> {
    if opts.label.is_some() || opts.uuid.is_some() {
        return Err(bad("squashfs has no label or UUID; drop them"));
    }
    let epoch = opts.epoch.to_string();
    let mut cmd = tool("mksquashfs");
    cmd.arg(src)
        .arg(image)
        .args(["-noappend", "-quiet", "-no-progress", "-no-xattrs"])
        .args(["-mkfs-time", &epoch, "-all-time", &epoch]);
    match (opts.owner, &opts.pseudo_file) {
        (Ownership::Keep, _) => {}
        (Ownership::Root, None) => {
            cmd.arg("-all-root");
        }
        (Ownership::Force { uid, gid }, None) => {
            cmd.arg("-force-uid")
                .arg(uid.to_string())
                .arg("-force-gid")
                .arg(gid.to_string());
        }
        // -all-root/-force-uid would override the pseudo file, and pseudo
        // files cannot name the root: the owner goes to the root only.
        (Ownership::Root, Some(_)) => {
            cmd.args(["-root-uid", "0", "-root-gid", "0"]);
        }
        (Ownership::Force { uid, gid }, Some(_)) => {
            cmd.arg("-root-uid")
                .arg(uid.to_string())
                .arg("-root-gid")
                .arg(gid.to_string());
        }
    }
    // `zstd:3`: the compressor and its level.
    match opts
        .compression
        .as_deref()
        .map(|c| c.split_once(':').unwrap_or((c, "")))
    {
        None => {}
        Some((c, "")) => {
            cmd.arg("-comp").arg(c);
        }
        Some((c, level)) => {
            cmd.arg("-comp")
                .arg(c)
                .arg("-Xcompression-level")
                .arg(level);
        }
    }
    if let Some(p) = &opts.pseudo_file {
        cmd.arg("-pf").arg(p);
    }
    cmd.run_capture()?;
    Ok(())
}

fn vfat(src: &Path, image: &Path, opts: &FsOptions, uuid: Uuid) -> Result<(), FsError> {
    if let Some(l) = &opts.label
        && (l.len() > 11 || !l.is_ascii())
    {
        return Err(bad(format!(
            "vfat label {l:?} must be at most 11 ASCII characters"
        )));
    }
    let size = need_size(FsType::Vfat, src, opts)?;
    let volid = hex::encode(&uuid.as_bytes()[..4]);
    let mut mkfs = tool("mkfs.vfat");
    mkfs.env("SOURCE_DATE_EPOCH", opts.epoch.to_string())
        .args(["--invariant", "-C", "-i", &volid]);
    if let Some(l) = &opts.label {
        mkfs.arg("-n").arg(l);
    }
    mkfs.arg(image)
        .arg((size / 1024).to_string())
        .run_capture()?;
    let mut top: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io_err("read directory", src))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err("read directory", src))?;
    if top.is_empty() {
        return Ok(());
    }
    top.sort();
    // mtools stamps what it creates with SOURCE_DATE_EPOCH.
    tool("mcopy")
        .env("SOURCE_DATE_EPOCH", opts.epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .args(["-s", "-p", "-Q", "-D", "o", "-i"])
        .arg(image)
        .args(&top)
        .arg("::/")
        .run_capture()?;
    Ok(())
}

/// Size in bytes of the filesystem at the start of `head` (at least 4 KiB
/// of the device), read from its superblock: ext4, erofs or squashfs,
/// rounded up to 4 KiB. That is where build_image appends the hash tree,
/// so the init and `boot set-slot` find it there.
pub fn image_size(head: &[u8]) -> Option<u64> {
    let le32 = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(head.get(o..o + 4)?.try_into().ok()?).into())
    };
    let size: Option<u64> = if head.get(1024 + 56..1024 + 58) == Some(&[0x53, 0xef]) {
        // ext4: s_blocks_count_lo at 4, s_log_block_size at 24, hi at 0x150.
        let lo = le32(1024 + 4)?;
        let hi = le32(1024 + 0x150)?;
        let log = le32(1024 + 24)?;
        Some((lo | (hi << 32)) * (1024u64 << log))
    } else if le32(1024) == Some(0xE0F5_E1E2) {
        // erofs: blkszbits u8 at 12, blocks u32 at 36.
        let bits = u32::from(*head.get(1024 + 12)?);
        Some(le32(1024 + 36)? << bits)
    } else if head.get(..4) == Some(b"hsqs") {
        Some(u64::from_le_bytes(head.get(40..48)?.try_into().ok()?))
    } else {
        None
    };
    size.map(|s| s.div_ceil(4096) * 4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ext4_size_from_superblock() {
        let mut head = vec![0u8; 4096];
        head[1024 + 4..1024 + 8].copy_from_slice(&2560u32.to_le_bytes());
        head[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
        head[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(super::image_size(&head), Some(2560 * 4096));
        assert_eq!(super::image_size(&[0u8; 4096]), None);
    }

    use super::*;

    #[test]
    fn sizes_cover_content_and_round_to_mib() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 5000]).unwrap();
        let c = content_size(dir.path()).unwrap();
        assert_eq!(c, 4096 + 256 * 2 + 4096 + 8192);
        let s = suggested_size(FsType::Ext4, dir.path(), 10).unwrap();
        assert_eq!(s % (1 << 20), 0);
        assert!(s >= c + (4 << 20));
        assert_eq!(round_up(1, 4096), 4096);
    }

    #[test]
    fn walk_is_sorted_depth_first() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["b", "a/z", "a/c"] {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let names: Vec<_> = walk(dir.path())
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "a/c", "a/z", "b"]);
    }

    #[test]
    fn unsupported_options_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.img");
        let opts = FsOptions {
            label: Some("L".into()),
            ..FsOptions::default()
        };
        let e = build(FsType::Squashfs, dir.path(), &out, &opts).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!(!out.exists());
        let e = build(FsType::Ext4, &dir.path().join("none"), &out, &opts).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!("btrfs".parse::<FsType>().is_err());
    }
}
