//! The staging tree of an image: a directory on disk holding the contents,
//! plus a table holding what the disk cannot when the tool runs
//! unprivileged — the owner, group and full mode every entry will have in
//! the image. Filesystem builders take contents from the directory and
//! ownership/modes from the table (see `image::attrs`).
//!
//! Entries come in from a directory (`--root`), from tar streams (binary
//! packages, OCI layers, with whiteouts) and are written out as a
//! deterministic tar (OCI export). Every write is checked to stay inside the
//! staging root: `..` is refused and symlinks met on the way are resolved
//! inside the tree (like a container runtime's secure join), never on the
//! host. Hard links are stored as copies; device nodes, fifos and sockets
//! are refused (an unprivileged build cannot create them, and a /usr image
//! has no use for them).
//!
//! It does not decide what goes where in the image (`image::usr`), nor build
//! filesystems (`fs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{IoError, io_err};
use crate::formats::fs::xattr::{self, Xattrs};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, sha256: [u8; 32] },
    Symlink { target: String },
}

/// One path of the tree with the attributes it has in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The package (or layer) that put it there, for errors and the SBOM.
    pub origin: String,
    /// Extended attributes (`security.capability`, ...).
    pub xattrs: Xattrs,
}

impl Entry {
    /// The full `st_mode`, file type included.
    pub fn st_mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File { .. } => 0o100000,
            Kind::Symlink { .. } => 0o120000,
        };
        kind | (self.mode & 0o7777)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{origin}: `{path}` is a {what}; images cannot carry device nodes, fifos or sockets")]
    Unsupported {
        origin: String,
        path: String,
        what: &'static str,
    },
    #[error("{origin}: path `{path}` is not valid (absolute after `..`, not UTF-8, or empty)")]
    BadPath { origin: String, path: String },
    #[error("{origin}: `{path}` would replace the {existing} of the same name from {other}")]
    Conflict {
        origin: String,
        path: String,
        existing: &'static str,
        other: String,
    },
    #[error("{origin}: too many levels of symlinks resolving `{path}`")]
    SymlinkLoop { origin: String, path: String },
    #[error(
        "{origin}: hard link `{path}` points at `{target}`, which is not a regular file seen earlier"
    )]
    BadHardlink {
        origin: String,
        path: String,
        target: String,
    },
}

type Result<T, E = TreeError> = std::result::Result<T, E>;

/// How on-disk owners of a directory given with `--root` map to image
/// owners: the user running the tool stands for root (as it would inside
/// the SDK's user namespace); other ids are kept.
#[derive(Debug, Clone, Copy)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
}

impl IdMap {
    /// The running user is root in the image.
    pub fn current() -> IdMap {
        IdMap {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
    fn uid(&self, id: u32) -> u32 {
        if id == self.uid { 0 } else { id }
    }
    fn gid(&self, id: u32) -> u32 {
        if id == self.gid { 0 } else { id }
    }
}

/// The staging tree.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// The newest modification time seen in the inputs (the default
    /// SOURCE_DATE_EPOCH).
    newest: u64,
}

/// Normalize an archive path to `a/b/c` (no leading `/` or `./`, no `.`
/// components); `None` for `..` or an empty result. The rule is the
/// layer applier's (`sdk_common::layer::normalise`), so a name means the
/// same in the staging table as in an unpacked SDK image.
pub fn clean_path(raw: &str) -> Option<String> {
    let (path, _) = sdk_common::layer::normalise(raw.as_bytes()).ok()?;
    let s = path.to_str()?;
    (!s.is_empty()).then(|| s.to_string())
}

fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

const HASH_BUF: usize = 256 * 1024;

/// Read `r` to its end in chunks, handing each to `f`; returns the count.
fn for_chunks(mut r: impl Read, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<u64> {
    let mut buf = vec![0u8; HASH_BUF];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f(&buf[..n])?;
        size += n as u64;
    }
    Ok(size)
}

/// Copy `r` to `w`, returning the size and sha256 of what passed.
fn copy_hashed(r: impl Read, mut w: impl Write) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let size = for_chunks(r, |b| {
        hasher.update(b);
        w.write_all(b)
    })?;
    Ok((size, hasher.finalize().into()))
}

/// Copy `r` into a new file at `dest`, returning size and sha256.
fn write_hashed(r: impl Read, dest: &Path, mode: u32) -> Result<(u64, [u8; 32])> {
    let f = File::create(dest).map_err(io_err("create", dest))?;
    let got = copy_hashed(r, &f).map_err(io_err("write", dest))?;
    f.set_permissions(fs::Permissions::from_mode(disk_mode(false, mode)))
        .map_err(io_err("chmod", dest))?;
    Ok(got)
}

/// The mode a staged entry has on disk: the image mode, kept readable (and
/// for directories writable and searchable) by the user building, so tools
/// can read it and the staging dir can be removed. Differences are applied
/// inside the filesystem images from the table.
pub fn disk_mode(dir: bool, mode: u32) -> u32 {
    if dir {
        (mode & 0o7777) | 0o700
    } else {
        (mode & 0o7777) | 0o400
    }
}

impl Tree {
    /// An empty tree staged in `root` (created if missing; must be empty).
    pub fn new(root: &Path) -> Result<Tree> {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        Ok(Tree {
            root: root.to_path_buf(),
            entries: BTreeMap::new(),
            newest: 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// The newest modification time among the inputs.
    pub fn newest_mtime(&self) -> u64 {
        self.newest
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn disk_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Entries below `prefix` (not `prefix` itself), in path order.
    pub fn below<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        let start = format!("{prefix}/");
        self.entries
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
    }

    /// Where a new entry at `path` would land: its parents resolved through
    /// the tree's symlinks (see `resolve`).
    pub fn resolve_path(&self, path: &str, origin: &str) -> Result<String> {
        self.resolve(path, origin)
    }

    /// Resolve `path` so that its parent directories are real directories of
    /// the tree, following in-tree symlinks (clamped at the root). Returns
    /// the resolved path; the last component is not followed.
    fn resolve(&self, path: &str, origin: &str) -> Result<String> {
        let mut hops = 0;
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut done: Vec<String> = Vec::new();
        while let Some(comp) = todo.pop() {
            if comp.is_empty() || comp == "." {
                continue;
            }
            if comp == ".." {
                done.pop();
                continue;
            }
            if todo.is_empty() {
                done.push(comp);
                break;
            }
            done.push(comp);
            let sofar = done.join("/");
            if let Some(Entry {
                kind: Kind::Symlink { target },
                ..
            }) = self.entries.get(&sofar)
            {
                hops += 1;
                if hops > 40 {
                    return Err(TreeError::SymlinkLoop {
                        origin: origin.to_string(),
                        path: path.to_string(),
                    });
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
        if done.is_empty() {
            return Err(TreeError::BadPath {
                origin: origin.to_string(),
                path: path.to_string(),
            });
        }
        Ok(done.join("/"))
    }

    /// Make sure every parent of `path` exists as a directory (implicit
    /// parents are root-owned 0755, as tar extractors do).
    fn ensure_parents(&mut self, path: &str, origin: &str) -> Result<()> {
        let Some(parent) = parent_of(path) else {
            return Ok(());
        };
        match self.entries.get(parent) {
            Some(e) if e.is_dir() => return Ok(()),
            Some(e) => {
                return Err(TreeError::Conflict {
                    origin: origin.to_string(),
                    path: path.to_string(),
                    existing: kind_name(&e.kind),
                    other: e.origin.clone(),
                });
            }
            None => {}
        }
        self.ensure_parents(parent, origin)?;
        let disk = self.root.join(parent);
        fs::create_dir(&disk).map_err(io_err("create directory", &disk))?;
        self.entries.insert(
            parent.to_string(),
            Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                origin: origin.to_string(),
                xattrs: Xattrs::new(),
            },
        );
        Ok(())
    }

    /// Remove `path` and everything below it, from the table and the disk.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let Some(entry) = self.entries.remove(path) else {
            return Ok(());
        };
        let disk = self.root.join(path);
        if entry.is_dir() {
            let below: Vec<String> = self.below(path).map(|(k, _)| k.clone()).collect();
            for k in below {
                self.entries.remove(&k);
            }
            fs::remove_dir_all(&disk).map_err(io_err("remove", &disk))?;
        } else {
            fs::remove_file(&disk).map_err(io_err("remove", &disk))?;
        }
        Ok(())
    }

    /// Prepare to put a new entry at `path`: an existing directory stays when
    /// the new one is a directory too; anything else is replaced when
    /// `replace` is set (layers), or is a conflict (packages).
    fn make_room(
        &mut self,
        path: &str,
        new_is_dir: bool,
        replace: bool,
        origin: &str,
    ) -> Result<bool> {
        match self.entries.get(path) {
            None => Ok(true),
            Some(e) if e.is_dir() && new_is_dir => Ok(false),
            Some(e) => {
                if replace {
                    self.remove(path)?;
                    Ok(true)
                } else {
                    Err(TreeError::Conflict {
                        origin: origin.to_string(),
                        path: path.to_string(),
                        existing: kind_name(&e.kind),
                        other: e.origin.clone(),
                    })
                }
            }
        }
    }

    /// Resolve `path` for a new entry, create its parents and clear the
    /// way (see `make_room`). Returns the resolved path and whether
    /// nothing is there any more.
    fn place(
        &mut self,
        path: &str,
        is_dir: bool,
        replace: bool,
        origin: &str,
    ) -> Result<(String, bool)> {
        let path = self.resolve(path, origin)?;
        self.ensure_parents(&path, origin)?;
        let empty = self.make_room(&path, is_dir, replace, origin)?;
        Ok((path, empty))
    }

    fn record(&mut self, path: String, kind: Kind, mode: u32, uid: u32, gid: u32, origin: &str) {
        let mode = mode & 0o7777;
        let origin = origin.to_string();
        self.entries.insert(
            path,
            Entry {
                kind,
                mode,
                uid,
                gid,
                origin,
                xattrs: Xattrs::new(),
            },
        );
    }

    /// Add a directory (or update the attributes of an existing one).
    pub fn add_dir(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        origin: &str,
        replace: bool,
    ) -> Result<()> {
        let (path, empty) = self.place(path, true, replace, origin)?;
        let disk = self.root.join(&path);
        if empty {
            fs::create_dir(&disk).map_err(io_err("create directory", &disk))?;
        }
        fs::set_permissions(&disk, fs::Permissions::from_mode(disk_mode(true, mode)))
            .map_err(io_err("chmod", &disk))?;
        self.record(path, Kind::Dir, mode, uid, gid, origin);
        Ok(())
    }

    /// Add a regular file with contents from `data`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_file(
        &mut self,
        path: &str,
        data: impl Read,
        mode: u32,
        uid: u32,
        gid: u32,
        origin: &str,
        replace: bool,
    ) -> Result<()> {
        let (path, _) = self.place(path, false, replace, origin)?;
        let (size, sha256) = write_hashed(data, &self.root.join(&path), mode)?;
        self.record(path, Kind::File { size, sha256 }, mode, uid, gid, origin);
        Ok(())
    }

    /// Add a symlink.
    pub fn add_symlink(
        &mut self,
        path: &str,
        target: &str,
        uid: u32,
        gid: u32,
        origin: &str,
        replace: bool,
    ) -> Result<()> {
        let (path, _) = self.place(path, false, replace, origin)?;
        let disk = self.root.join(&path);
        std::os::unix::fs::symlink(target, &disk).map_err(io_err("create symlink", &disk))?;
        let target = target.to_string();
        self.record(path, Kind::Symlink { target }, 0o777, uid, gid, origin);
        Ok(())
    }

    /// Copy a directory tree into the staging tree (the `--root` input),
    /// hard-linking files where it can. Owners map through `ids`; the
    /// source is never modified.
    pub fn import_dir(&mut self, src: &Path, ids: IdMap, origin: &str) -> Result<()> {
        // Walk and fill the table first (cheap), then make the directories
        // (parents first, each level in parallel), symlinks and files (in
        // parallel): making inodes is most of the cost on some hosts.
        let mut files: Vec<(String, PathBuf, fs::Metadata)> = Vec::new();
        let mut dirs: Vec<(String, bool, u32)> = Vec::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut stack = vec![(String::new(), src.to_path_buf())];
        while let Some((rel, dir)) = stack.pop() {
            let mut children: Vec<_> = fs::read_dir(&dir)
                .map_err(io_err("read directory", &dir))?
                .collect::<io::Result<_>>()
                .map_err(io_err("read directory", &dir))?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let Some(name) = name.to_str() else {
                    return Err(TreeError::BadPath {
                        origin: origin.to_string(),
                        path: child.path().to_string_lossy().into_owned(),
                    });
                };
                let path = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                let disk = child.path();
                let md = fs::symlink_metadata(&disk).map_err(io_err("stat", &disk))?;
                let ft = md.file_type();
                let (uid, gid) = (ids.uid(md.uid()), ids.gid(md.gid()));
                self.newest = self.newest.max(md.mtime().max(0) as u64);
                if ft.is_dir() {
                    let (p, empty) = self.place(&path, true, false, origin)?;
                    self.record(p.clone(), Kind::Dir, md.mode(), uid, gid, origin);
                    dirs.push((p, empty, md.mode()));
                    stack.push((path, disk));
                } else if ft.is_symlink() {
                    let target = fs::read_link(&disk).map_err(io_err("read link", &disk))?;
                    let Some(target) = target.to_str() else {
                        return Err(TreeError::BadPath {
                            origin: origin.to_string(),
                            path,
                        });
                    };
                    let (p, _) = self.place(&path, false, false, origin)?;
                    let target = target.to_string();
                    self.record(
                        p.clone(),
                        Kind::Symlink {
                            target: target.clone(),
                        },
                        0o777,
                        uid,
                        gid,
                        origin,
                    );
                    links.push((p, target));
                } else if ft.is_file() {
                    files.push((path, disk, md));
                } else if path.starts_with("dev/") {
                    // Device nodes a bootstrap left in /dev: the running
                    // system mounts devtmpfs there.
                    tracing::debug!(path, "skipping a special file under /dev");
                } else {
                    return Err(TreeError::Unsupported {
                        origin: origin.to_string(),
                        path,
                        what: "special file",
                    });
                }
            }
        }
        let root = self.root.clone();
        dirs.sort_by_key(|d| d.0.matches('/').count());
        for level in dirs.chunk_by(|a, b| a.0.matches('/').count() == b.0.matches('/').count()) {
            level.par_iter().try_for_each(|(p, empty, mode)| {
                let disk = root.join(p);
                if *empty {
                    fs::create_dir(&disk).map_err(io_err("create directory", &disk))?;
                }
                fs::set_permissions(&disk, fs::Permissions::from_mode(disk_mode(true, *mode)))
                    .map_err(io_err("chmod", &disk))?;
                Ok::<(), TreeError>(())
            })?;
        }
        links.par_iter().try_for_each(|(p, target)| {
            let disk = root.join(p);
            std::os::unix::fs::symlink(target, &disk).map_err(io_err("create symlink", &disk))?;
            Ok::<(), TreeError>(())
        })?;
        let copied: Vec<(String, Entry)> = files
            .into_par_iter()
            .map(|(path, src, md)| {
                let dest = root.join(&path);
                // A hard link costs no copy; the staged file is then never
                // written, chmodded only where its mode lacks u+r (never,
                // as it was readable), and unlinked at the end. Across
                // filesystems, or where links are not allowed, copy.
                let (size, sha256) = if fs::hard_link(&src, &dest).is_ok() {
                    sdk_common::fsutil::hash_file(&dest).map_err(io_err("read", &src))?
                } else {
                    let f = File::open(&src).map_err(io_err("open", &src))?;
                    write_hashed(f, &dest, md.mode())?
                };
                Ok((
                    path,
                    Entry {
                        kind: Kind::File { size, sha256 },
                        mode: md.mode() & 0o7777,
                        uid: ids.uid(md.uid()),
                        gid: ids.gid(md.gid()),
                        origin: origin.to_string(),
                        xattrs: Xattrs::new(),
                    },
                ))
            })
            .collect::<Result<_>>()?;
        self.entries.extend(copied);
        Ok(())
    }

    /// Apply a tar stream. `layer` selects OCI layer semantics: entries
    /// replace what lower layers put there and `.wh.` whiteouts delete;
    /// otherwise (packages) a path that exists already is a conflict unless
    /// both are directories.
    pub fn extract_tar(&mut self, r: impl Read, origin: &str, layer: bool) -> Result<()> {
        let mut archive = tar::Archive::new(r);
        let mut added: BTreeSet<String> = BTreeSet::new();
        let entries = archive
            .entries()
            .map_err(io_err("read archive", Path::new(origin)))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("read archive", Path::new(origin)))?;
            let raw = entry
                .path()
                .map_err(io_err("read archive", Path::new(origin)))?
                .to_string_lossy()
                .into_owned();
            let Some(path) = clean_path(&raw) else {
                if raw.trim_matches(|c| c == '/' || c == '.').is_empty() {
                    continue; // the archive's root directory
                }
                return Err(TreeError::BadPath {
                    origin: origin.to_string(),
                    path: raw,
                });
            };
            let name = path.rsplit('/').next().unwrap_or(&path);
            if layer && let Some(w) = sdk_common::layer::whiteout(name.as_bytes()) {
                self.apply_whiteout(&path, w, origin, &added)?;
                continue;
            }
            let xattrs = match entry.pax_extensions() {
                Ok(Some(pax)) => xattr::from_pax(
                    pax.flatten()
                        .filter_map(|e| e.key().ok().map(|k| (k, e.value_bytes()))),
                ),
                _ => Xattrs::new(),
            };
            let h = entry.header();
            let mode = h.mode().unwrap_or(0o644);
            let uid = h.uid().unwrap_or(0) as u32;
            let gid = h.gid().unwrap_or(0) as u32;
            let ty = h.entry_type();
            self.newest = self.newest.max(h.mtime().unwrap_or(0));
            match ty {
                tar::EntryType::Directory => {
                    self.add_dir(&path, mode, uid, gid, origin, layer)?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.add_file(&path, &mut entry, mode, uid, gid, origin, layer)?;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(io_err("read archive", Path::new(origin)))?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    self.add_symlink(&path, &target, uid, gid, origin, layer)?;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(io_err("read archive", Path::new(origin)))?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let resolved = clean_path(&target)
                        .map(|t| self.resolve(&t, origin))
                        .transpose()?;
                    let src = match resolved {
                        Some(t)
                            if matches!(
                                self.entries.get(&t).map(|e| &e.kind),
                                Some(Kind::File { .. })
                            ) =>
                        {
                            self.root.join(t)
                        }
                        _ => {
                            return Err(TreeError::BadHardlink {
                                origin: origin.to_string(),
                                path,
                                target,
                            });
                        }
                    };
                    let f = File::open(&src).map_err(io_err("open", &src))?;
                    self.add_file(&path, f, mode, uid, gid, origin, layer)?;
                }
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => continue,
                // Device nodes under /dev: devtmpfs provides them.
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
                    if path.starts_with("dev/") =>
                {
                    continue;
                }
                other => {
                    return Err(TreeError::Unsupported {
                        origin: origin.to_string(),
                        path,
                        what: match other {
                            tar::EntryType::Char => "character device",
                            tar::EntryType::Block => "block device",
                            tar::EntryType::Fifo => "fifo",
                            _ => "tar entry of an unknown type",
                        },
                    });
                }
            }
            let resolved = self.resolve(&path, origin)?;
            if !xattrs.is_empty()
                && let Some(e) = self.entries.get_mut(&resolved)
            {
                e.xattrs = xattrs;
            }
            added.insert(resolved);
        }
        Ok(())
    }

    /// A whiteout of a layer (`path` is the whiteout file's own path):
    /// an opaque one removes what lower layers put in its directory, a
    /// `.wh.NAME` removes NAME; entries this layer `added` stay.
    fn apply_whiteout(
        &mut self,
        path: &str,
        w: sdk_common::layer::Whiteout<'_>,
        origin: &str,
        added: &BTreeSet<String>,
    ) -> Result<()> {
        use sdk_common::layer::Whiteout;
        let dir = parent_of(path).unwrap_or("");
        match w {
            Whiteout::Opaque => {
                let prefix = if dir.is_empty() {
                    String::new()
                } else {
                    self.resolve(dir, origin)?
                };
                let victims: Vec<String> = if prefix.is_empty() {
                    self.entries
                        .keys()
                        .filter(|k| !k.contains('/'))
                        .cloned()
                        .collect()
                } else {
                    self.below(&prefix)
                        .filter(|(k, _)| !k[prefix.len() + 1..].contains('/'))
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                for v in victims {
                    if !added.contains(&v) {
                        self.remove(&v)?;
                    }
                }
            }
            Whiteout::Hide(hidden) => {
                let hidden = String::from_utf8_lossy(hidden);
                let victim = match dir {
                    "" => hidden.into_owned(),
                    d => format!("{d}/{hidden}"),
                };
                let victim = self.resolve(&victim, origin)?;
                self.remove(&victim)?;
            }
        }
        Ok(())
    }

    /// Move `from` (and everything below) to `to`, merging into directories
    /// that exist there; identical files merge, different ones conflict.
    pub fn move_path(&mut self, from: &str, to: &str) -> Result<()> {
        let Some(entry) = self.entries.get(from).cloned() else {
            return Ok(());
        };
        let origin = entry.origin.clone();
        self.ensure_parents(to, &origin)?;
        match (self.entries.get(to).cloned(), &entry.kind) {
            (None, _) => {
                let (a, b) = (self.root.join(from), self.root.join(to));
                fs::rename(&a, &b).map_err(io_err("rename", &a))?;
                let moved: Vec<(String, Entry)> = std::iter::once((from.to_string(), entry))
                    .chain(self.below(from).map(|(k, v)| (k.clone(), v.clone())))
                    .collect();
                for (k, v) in moved {
                    self.entries.remove(&k);
                    let nk = format!("{to}{}", &k[from.len()..]);
                    self.entries.insert(nk, v);
                }
            }
            (Some(existing), Kind::Dir) if existing.is_dir() => {
                let children: Vec<String> = self
                    .below(from)
                    .filter(|(k, _)| !k[from.len() + 1..].contains('/'))
                    .map(|(k, _)| k.clone())
                    .collect();
                for c in children {
                    let nk = format!("{to}{}", &c[from.len()..]);
                    self.move_path(&c, &nk)?;
                }
                self.remove(from)?;
            }
            (Some(existing), _) if existing.kind == entry.kind => {
                self.remove(from)?;
            }
            (Some(existing), _) => {
                return Err(TreeError::Conflict {
                    origin,
                    path: format!("/{from} (moved to /{to})"),
                    existing: kind_name(&existing.kind),
                    other: existing.origin.clone(),
                });
            }
        }
        Ok(())
    }

    /// Give every staged entry its on-disk mode (`disk_mode`), so builders
    /// reading the directory see the table's modes as far as the disk can
    /// hold them. Timestamps are left alone: the builders set every one
    /// to SOURCE_DATE_EPOCH themselves (`fs`), and files linked from a
    /// `--root` must not change.
    pub fn settle(&self) -> Result<()> {
        self.entries
            .par_iter()
            .filter(|(_, e)| !matches!(e.kind, Kind::Symlink { .. }))
            .try_for_each(|(k, e)| {
                let p = self.root.join(k);
                let want = disk_mode(e.is_dir(), e.mode);
                let md = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
                if md.mode() & 0o7777 != want {
                    fs::set_permissions(&p, fs::Permissions::from_mode(want))
                        .map_err(io_err("chmod", &p))?;
                }
                Ok(())
            })
    }

    /// A digest of the whole tree: paths, kinds, attributes and file
    /// hashes. Two trees with the same digest give the same image.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, e) in &self.entries {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(format!("{:o} {} {}", e.st_mode(), e.uid, e.gid).as_bytes());
            match &e.kind {
                Kind::Dir => {}
                Kind::File { size, sha256 } => {
                    h.update(size.to_le_bytes());
                    h.update(sha256);
                }
                Kind::Symlink { target } => h.update(target.as_bytes()),
            }
            for (name, value) in &e.xattrs {
                h.update([1]);
                h.update(name.as_bytes());
                h.update([0]);
                h.update(value);
            }
            h.update([0]);
        }
        h.finalize().into()
    }

    /// Write the tree as a deterministic tar: path order, every time set to
    /// `epoch`, numeric owners from the table, no user/group names.
    pub fn write_tar<W: Write>(&self, w: W, epoch: u64) -> Result<W> {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Deterministic);
        let werr = |p: &str| io_err("write archive entry", Path::new(p));
        for (k, e) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(u64::from(e.uid));
            h.set_gid(u64::from(e.gid));
            h.set_mtime(epoch);
            if !e.xattrs.is_empty() {
                let records: Vec<(String, &[u8])> = e
                    .xattrs
                    .iter()
                    .map(|(n, v)| (format!("{}{n}", xattr::PAX_PREFIX), v.as_slice()))
                    .collect();
                b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                    .map_err(werr(k))?;
            }
            match &e.kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{k}/"), io::empty())
                        .map_err(werr(k))?;
                }
                Kind::File { size, .. } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(*size);
                    let p = self.root.join(k);
                    let f = File::open(&p).map_err(io_err("open", &p))?;
                    b.append_data(&mut h, k, f).map_err(werr(k))?;
                }
                Kind::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, k, target).map_err(werr(k))?;
                }
            }
        }
        Ok(b.into_inner()
            .map_err(io_err("finish archive", Path::new("tar")))?)
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File { .. } => "file",
        Kind::Symlink { .. } => "symlink",
    }
}

/// `ls -l`-style mode string (`drwxr-xr-x`, `-rwsr-xr-x`).
pub fn mode_string(e: &Entry) -> String {
    let mut s = String::with_capacity(10);
    s.push(match e.kind {
        Kind::Dir => 'd',
        Kind::File { .. } => '-',
        Kind::Symlink { .. } => 'l',
    });
    let m = e.mode;
    let trip = |r: u32, w: u32, x: u32, special: u32, on: char, off: char| {
        let mut t = String::new();
        t.push(if m & r != 0 { 'r' } else { '-' });
        t.push(if m & w != 0 { 'w' } else { '-' });
        t.push(match (m & x != 0, m & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        });
        t
    };
    s += &trip(0o400, 0o200, 0o100, 0o4000, 's', 'S');
    s += &trip(0o040, 0o020, 0o010, 0o2000, 's', 'S');
    s += &trip(0o004, 0o002, 0o001, 0o1000, 't', 'T');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(if *ty == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            match ty {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, link).unwrap();
                }
                _ => {
                    // Bypass path checks of the builder for hostile names.
                    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn clean_path_refuses_dotdot() {
        assert_eq!(clean_path("./usr//bin/"), Some("usr/bin".into()));
        assert_eq!(clean_path("/etc/x"), Some("etc/x".into()));
        assert_eq!(clean_path("a/../../b"), None);
        assert_eq!(clean_path("./"), None);
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.add_dir("usr/bin", 0o755, 0, 0, "t", false).unwrap();
        // An absolute link to `/` must not lead outside the staging root.
        t.add_symlink("bin", "/usr/bin", 0, 0, "t", false).unwrap();
        t.add_symlink("up", "../../../..", 0, 0, "t", false)
            .unwrap();
        t.add_file("bin/sh", &b"x"[..], 0o755, 0, 0, "t", false)
            .unwrap();
        t.add_file("up/escape", &b"y"[..], 0o644, 0, 0, "t", false)
            .unwrap();
        assert!(t.get("usr/bin/sh").is_some());
        assert!(t.get("escape").is_some());
        assert!(dir.path().join("s/escape").exists());
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn tar_traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        let data = tar_of(&[("../evil", tar::EntryType::Regular, b"x", "")]);
        let err = t.extract_tar(&data[..], "pkg", false).unwrap_err();
        assert!(matches!(err, TreeError::BadPath { .. }), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn package_conflicts_and_layer_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        let a = tar_of(&[
            ("usr/", tar::EntryType::Directory, b"", ""),
            ("usr/a", tar::EntryType::Regular, b"a", ""),
            ("usr/d/", tar::EntryType::Directory, b"", ""),
            ("usr/d/x", tar::EntryType::Regular, b"x", ""),
        ]);
        t.extract_tar(&a[..], "base", true).unwrap();
        assert_eq!(t.get("usr/a").unwrap().mode, 0o4755);
        let err = t.extract_tar(&a[..], "other", false).unwrap_err();
        assert!(err.to_string().contains("from base"), "{err}");
        let b = tar_of(&[
            ("usr/.wh.a", tar::EntryType::Regular, b"", ""),
            ("usr/d/new", tar::EntryType::Regular, b"n", ""),
            ("usr/d/.wh..wh..opq", tar::EntryType::Regular, b"", ""),
        ]);
        t.extract_tar(&b[..], "top", true).unwrap();
        assert!(t.get("usr/a").is_none());
        assert!(t.get("usr/d/x").is_none());
        assert!(t.get("usr/d/new").is_some());
        assert!(!dir.path().join("s/usr/a").exists());
    }

    #[test]
    fn tar_roundtrip_keeps_attributes_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.add_dir("usr", 0o755, 0, 0, "t", false).unwrap();
        t.add_file("usr/su", &b"suid"[..], 0o4711, 0, 5, "t", false)
            .unwrap();
        t.add_symlink("usr/l", "su", 0, 0, "t", false).unwrap();
        let one = t.write_tar(Vec::new(), 7).unwrap();
        let two = t.write_tar(Vec::new(), 7).unwrap();
        assert_eq!(one, two);
        let mut u = Tree::new(&dir.path().join("u")).unwrap();
        u.extract_tar(&one[..], "t", true).unwrap();
        assert_eq!(t.digest(), u.digest());
        assert_eq!(mode_string(u.get("usr/su").unwrap()), "-rws--x--x");
    }

    #[test]
    fn move_merges_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.add_file("bin/a", &b"a"[..], 0o755, 0, 0, "t", false)
            .unwrap();
        t.add_file("usr/bin/b", &b"b"[..], 0o755, 0, 0, "t", false)
            .unwrap();
        t.add_file("usr/bin/a", &b"a"[..], 0o755, 0, 0, "t", false)
            .unwrap();
        t.move_path("bin", "usr/bin").unwrap();
        assert!(t.get("bin").is_none());
        assert!(t.get("usr/bin/a").is_some() && t.get("usr/bin/b").is_some());
        t.add_file("bin/b", &b"different"[..], 0o755, 0, 0, "t", false)
            .unwrap();
        assert!(t.move_path("bin", "usr/bin").is_err());
    }
}
