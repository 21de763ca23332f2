//! Binary packages: a zstd-compressed tar of the files a package installs,
//! plus a JSON metadata file describing it. This module defines the format,
//! writes packages (from a build's DESTDIR or from imported .deb contents)
//! and opens them for reading. Installing them into a cross-root is
//! `packages::crossroot`'s job.
//!
//! On disk, under the cross-root's package dir:
//!
//! ```text
//! packages/<category>/<name>/<version>-<hash16>.tar.zst   the files
//! packages/<category>/<name>/<version>-<hash16>.json      PackageMeta
//! ```
//!
//! The tar holds the entries of [`PackageMeta::files`] in the same (sorted)
//! order, with the intended owner and mode in each header, paths relative
//! without a leading `/` (`usr/bin/greet`), every parent directory present,
//! and mtimes fixed to the build's SOURCE_DATE_EPOCH, so that the same
//! inputs give the same bytes. Ownership is what the package means
//! (root:root for builds, the .deb's tar headers for imports), not the uid
//! that happened to run the build: the image builder applies it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::maintscripts::Report;
use super::recipe::Kind;

/// Version of the metadata format.
pub const FORMAT: u32 = 1;

/// What a file entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A hard link to the earlier entry named in `target`.
    Hardlink,
}

/// One entry of a package's file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileEntry {
    /// Relative path, no leading `/`: `usr/lib/libgreet.so.1`.
    pub path: String,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`0o4755`), as a
    /// number (JSON has no octal).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    /// Size in bytes (0 for everything but regular files).
    pub size: u64,
    /// sha256 of the contents (regular files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, or the path a hard link points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Extended attributes as `name=value` (`getcap`'s text for
    /// capabilities), as the contents list shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<String>,
}

/// A Debian package folded into an imported binary package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// Metadata of one binary package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackageMeta {
    pub format: u32,
    /// `category/name`.
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub description: String,
    pub board: String,
    /// Kernel architecture (`aarch64`).
    pub arch: String,
    /// Debian architecture (`arm64`).
    pub debian_arch: String,
    /// sha256 over every input of the build (see `packages::hash`).
    pub input_hash: String,
    /// Runtime dependencies (`category/name`).
    pub depends: Vec<String>,
    pub build_depends: Vec<String>,
    /// For binary imports: the .debs whose files this package holds.
    #[serde(default)]
    pub debs: Vec<DebInfo>,
    /// For binary imports: what their maintainer scripts do that the
    /// build did not (see `maintscripts`).
    #[serde(default, skip_serializing_if = "Report::is_empty")]
    pub maintainer_scripts: Report,
    /// File name of the archive, in the same directory as this metadata.
    pub archive: String,
    pub archive_sha256: String,
    pub files: Vec<FileEntry>,
}

impl PackageMeta {
    /// Stem of the archive and metadata file names.
    pub fn file_stem(version: &str, input_hash: &str) -> String {
        format!("{version}-{}", &input_hash[..16])
    }

    /// Open an archive file for reading (as written by [`write_archive`]).
    pub fn open_archive_at(
        path: &Path,
    ) -> std::io::Result<tar::Archive<zstd::Decoder<'static, BufReader<File>>>> {
        let file = File::open(path)?;
        Ok(tar::Archive::new(zstd::Decoder::new(file)?))
    }
}

/// Where an item's contents come from while writing an archive.
#[derive(Debug, Clone)]
pub enum Data {
    None,
    Bytes(Vec<u8>),
    /// Read from this file on disk.
    Path(PathBuf),
    /// Symlink or hardlink target.
    Link(String),
}

/// One item to put into a package.
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    pub data: Data,
    /// Extended attributes (`security.capability`).
    pub xattrs: crate::formats::fs::xattr::Xattrs,
}

impl Item {
    /// A root-owned directory.
    pub fn root_dir(mode: u32) -> Item {
        Item {
            kind: FileKind::Dir,
            mode,
            uid: 0,
            gid: 0,
            user: "root".into(),
            group: "root".into(),
            data: Data::None,
            xattrs: Default::default(),
        }
    }
}

/// A package's contents before writing: relative path -> item.
pub type Content = BTreeMap<String, Item>;

#[derive(Debug, thiserror::Error)]
pub enum BinpkgError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BinpkgError + '_ {
    move |source| BinpkgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Collect a build's DESTDIR: every entry owned by root:root with its mode
/// from disk; hard links inside DESTDIR stay hard links. Device nodes,
/// fifos and sockets are refused.
pub fn collect_destdir(destdir: &Path) -> Result<Content, BinpkgError> {
    let mut content = Content::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(destdir)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| BinpkgError::Bad(format!("reading DESTDIR: {e}")))?;
        let rel = entry
            .path()
            .strip_prefix(destdir)
            .unwrap()
            .to_str()
            .ok_or_else(|| BinpkgError::Bad(format!("{} is not UTF-8", entry.path().display())))?
            .to_string();
        let md = entry
            .metadata()
            .map_err(|e| BinpkgError::Bad(e.to_string()))?;
        let ft = md.file_type();
        let mut item = Item::root_dir(md.mode() & 0o7777);
        if ft.is_dir() {
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io(entry.path()))?;
            item.kind = FileKind::Symlink;
            item.mode = 0o777;
            item.data = Data::Link(target.to_string_lossy().into_owned());
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
                    item.kind = FileKind::Hardlink;
                    item.data = Data::Link(first.clone());
                    content.insert(rel, item);
                    continue;
                }
                inodes.insert((md.dev(), md.ino()), rel.clone());
            }
            item.kind = FileKind::File;
            item.data = Data::Path(entry.path().to_path_buf());
        } else {
            return Err(BinpkgError::Bad(format!(
                "{rel} in DESTDIR is a device node, fifo or socket; packages may only hold files, directories and links"
            )));
        }
        content.insert(rel, item);
    }
    Ok(content)
}

/// Add root-owned 0755 entries for missing parent directories.
pub fn add_parents(content: &mut Content) {
    let mut missing = Vec::new();
    for path in content.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !content.contains_key(parent) {
                missing.push(parent.to_string());
            }
            p = parent;
        }
    }
    for m in missing {
        content.entry(m).or_insert_with(|| Item::root_dir(0o755));
    }
}

/// Write `content` as a zstd tar at `out` (a temporary path the caller
/// renames into place). Returns the file list and the archive's sha256.
pub fn write_archive(
    content: &Content,
    out: &Path,
    mtime: u64,
) -> Result<(Vec<FileEntry>, String), BinpkgError> {
    let file = File::create(out).map_err(io(out))?;
    let enc = zstd::Encoder::new(file, 3).map_err(io(out))?;
    let mut builder = tar::Builder::new(enc);
    let mut files = Vec::with_capacity(content.len());
    for (path, item) in content {
        let mut header = tar::Header::new_gnu();
        header.set_mode(item.mode);
        header.set_uid(item.uid.into());
        header.set_gid(item.gid.into());
        header.set_mtime(mtime);
        let set_names = |h: &mut tar::Header| -> Result<(), BinpkgError> {
            h.set_username(&item.user)
                .and_then(|_| h.set_groupname(&item.group))
                .map_err(|e| BinpkgError::Bad(format!("{path}: owner name: {e}")))
        };
        set_names(&mut header)?;
        let mut entry = FileEntry {
            path: path.clone(),
            kind: item.kind,
            mode: item.mode,
            uid: item.uid,
            gid: item.gid,
            user: item.user.clone(),
            group: item.group.clone(),
            size: 0,
            sha256: None,
            target: None,
            xattrs: item
                .xattrs
                .iter()
                .map(|(n, v)| crate::formats::fs::xattr::display(n, v))
                .collect(),
        };
        if !item.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = item
                .xattrs
                .iter()
                .map(|(n, v)| {
                    (
                        format!("{}{n}", crate::formats::fs::xattr::PAX_PREFIX),
                        v.as_slice(),
                    )
                })
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(io(out))?;
        }
        match (&item.kind, &item.data) {
            (FileKind::Dir, _) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(io(out))?;
            }
            (FileKind::File, data) => {
                let bytes = match data {
                    Data::Bytes(b) => b.clone(),
                    Data::Path(p) => std::fs::read(p).map_err(io(p))?,
                    _ => Vec::new(),
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                entry.size = bytes.len() as u64;
                entry.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
                builder
                    .append_data(&mut header, path, bytes.as_slice())
                    .map_err(io(out))?;
            }
            (FileKind::Symlink | FileKind::Hardlink, Data::Link(target)) => {
                header.set_entry_type(if item.kind == FileKind::Symlink {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_size(0);
                entry.target = Some(target.clone());
                builder
                    .append_link(&mut header, path, target)
                    .map_err(io(out))?;
            }
            _ => {
                return Err(BinpkgError::Bad(format!("{path}: link without a target")));
            }
        }
        files.push(entry);
    }
    let enc = builder.into_inner().map_err(io(out))?;
    let mut file = enc.finish().map_err(io(out))?;
    file.flush().map_err(io(out))?;
    drop(file);
    let sha = sha256_file(out)?;
    Ok((files, sha))
}

/// sha256 of a file's contents, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, BinpkgError> {
    sdk_common::fsutil::sha256_hex(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn destdir_round_trip_records_root_owner_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        std::fs::create_dir_all(dest.join("usr/bin")).unwrap();
        std::fs::write(dest.join("usr/bin/greet"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dest.join("usr/bin/greet"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("greet", dest.join("usr/bin/hi")).unwrap();
        std::fs::hard_link(dest.join("usr/bin/greet"), dest.join("usr/bin/greet2")).unwrap();
        let mut content = collect_destdir(&dest).unwrap();
        add_parents(&mut content);
        let out = d.path().join("p.tar.zst");
        let (files, sha) = write_archive(&content, &out, 0).unwrap();
        let (files2, sha2) = write_archive(&content, &d.path().join("q.tar.zst"), 0).unwrap();
        assert_eq!(
            (files.clone(), sha.clone()),
            (files2, sha2),
            "deterministic"
        );
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/bin",
                "usr/bin/greet",
                "usr/bin/greet2",
                "usr/bin/hi"
            ]
        );
        let greet = &files[2];
        assert_eq!(
            (greet.mode, greet.uid, greet.user.as_str()),
            (0o4755, 0, "root")
        );
        assert_eq!(files[3].kind, FileKind::Hardlink);
        assert_eq!(files[4].target.as_deref(), Some("greet"));
        let mut ar = PackageMeta::open_archive_at(&out).unwrap();
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 5);
    }
}
