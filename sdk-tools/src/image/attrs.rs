//! Owners and modes inside filesystem images built by an unprivileged user.
//!
//! The staged files belong to whoever runs the build, and their on-disk
//! modes are kept readable (see `tree::disk_mode`). The image must instead
//! carry what the packages say (root:root, setuid bits, 0700 directories)
//! — which Flatcar gets by running as root. Here each filesystem gets the
//! table's attributes its own way, without mounting:
//!
//! - ext4: `crate::formats::fs::ext4` writes every inode from the table itself;
//! - squashfs: a pseudo file of `m` (modify) definitions given to
//!   `mksquashfs -pf`, one per path;
//! - erofs: erofs-utils 1.5 has only whole-image overrides (`--all-root`,
//!   `--force-uid/gid`), so the table must be uniform in owner and match
//!   the staged modes ([`uniform_owner`]); otherwise the error says to
//!   pick ext4 or squashfs.

use std::fmt::Write as _;

use super::tree::{Entry, Tree, disk_mode};

/// One path's attributes as a filesystem rooted at the subtree sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// `/` for the filesystem root, else `/a/b`.
    pub path: String,
    /// Full `st_mode` (type and permission bits).
    pub st_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The mode the staged copy has on disk (what a builder reading the
    /// directory sees).
    pub disk_mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AttrError {
    #[error(
        "path {0:?} has a double quote or a line break, which debugfs scripts cannot carry; rename it"
    )]
    Unquotable(String),
    #[error(
        "a {fs} image built unprivileged gives every file one owner, but {path} is {uid}:{gid} while / is {root_uid}:{root_gid}; use ext4 or squashfs (the `fs` of USR-A in the disk layout)"
    )]
    MixedOwners {
        fs: &'static str,
        path: String,
        uid: u32,
        gid: u32,
        root_uid: u32,
        root_gid: u32,
    },
    #[error(
        "a {fs} image takes modes from the staged files, and {path} needs mode {mode:o}, which an unprivileged build cannot stage readable; use ext4 or squashfs"
    )]
    UnstageableMode {
        fs: &'static str,
        path: String,
        mode: u32,
    },
    #[error(
        "a {fs} image built unprivileged cannot carry extended attributes, but /{path} has {name} (from {origin}); use ext4 (the `fs` of USR-A in the disk layout)"
    )]
    Xattrs {
        fs: &'static str,
        path: String,
        name: String,
        origin: String,
    },
}

/// The attributes of `prefix` (as `/`) and everything below it.
pub fn attrs_of(tree: &Tree, prefix: &str) -> Vec<Attr> {
    let conv = |path: String, e: &Entry| Attr {
        path,
        st_mode: e.st_mode(),
        uid: e.uid,
        gid: e.gid,
        disk_mode: (e.st_mode() & !0o7777) | disk_mode(e.is_dir(), e.mode),
    };
    let mut out = Vec::new();
    if prefix.is_empty() {
        out.push(Attr {
            path: "/".into(),
            st_mode: 0o040755,
            uid: 0,
            gid: 0,
            disk_mode: 0o040755,
        });
        out.extend(tree.entries().iter().map(|(k, e)| conv(format!("/{k}"), e)));
        return out;
    }
    match tree.get(prefix) {
        Some(e) => out.push(conv("/".to_string(), e)),
        None => out.push(Attr {
            path: "/".into(),
            st_mode: 0o040755,
            uid: 0,
            gid: 0,
            disk_mode: 0o040755,
        }),
    }
    for (k, e) in tree.below(prefix) {
        out.push(conv(format!("/{}", &k[prefix.len() + 1..]), e));
    }
    out
}

fn quote(path: &str) -> Result<String, AttrError> {
    if path.contains('"') || path.contains('\n') {
        return Err(AttrError::Unquotable(path.to_string()));
    }
    Ok(format!("\"{path}\""))
}

/// mksquashfs `-pf` definitions setting every path's mode and owner (the
/// root cannot be named there; `fs::FsOptions::owner` sets it).
pub fn squashfs_pseudo(attrs: &[Attr]) -> Result<String, AttrError> {
    let mut s = String::new();
    for a in attrs.iter().filter(|a| a.path != "/") {
        let is_link = a.st_mode & 0o170000 == 0o120000;
        let perm = if is_link { 0o777 } else { a.st_mode & 0o7777 };
        let _ = writeln!(s, "{} m {perm:o} {} {}", quote(&a.path[1..])?, a.uid, a.gid);
    }
    Ok(s)
}

/// For builders with whole-image owners only (erofs, squashfs): the one
/// owner every path has, after checking the staged modes are the wanted
/// ones.
pub fn uniform_owner(attrs: &[Attr], fs: &'static str) -> Result<(u32, u32), AttrError> {
    let first = attrs.first().map_or((0, 0), |a| (a.uid, a.gid));
    for a in attrs {
        if (a.uid, a.gid) != first {
            return Err(AttrError::MixedOwners {
                fs,
                path: a.path.clone(),
                uid: a.uid,
                gid: a.gid,
                root_uid: first.0,
                root_gid: first.1,
            });
        }
        let is_link = a.st_mode & 0o170000 == 0o120000;
        if !is_link && a.st_mode != a.disk_mode {
            return Err(AttrError::UnstageableMode {
                fs,
                path: a.path.clone(),
                mode: a.st_mode & 0o7777,
            });
        }
    }
    Ok(first)
}

/// Owner settings for a read-only image of `tree` below `prefix` built by
/// an external mkfs (erofs, squashfs): squashfs takes every owner and mode
/// from a pseudo file written to `pseudo`; erofs can only force one owner,
/// so the tree must have one. ext4 is our own writer and needs none of
/// this. Used by build_image's USR and by build_sysext alike.
pub fn read_only_owners(
    tree: &Tree,
    prefix: &str,
    fs: crate::formats::fs::FsType,
    pseudo: &std::path::Path,
    opts: &mut crate::formats::fs::FsOptions,
) -> anyhow::Result<()> {
    use crate::formats::fs::{FsType, Ownership};
    use anyhow::Context;
    let below = tree.get(prefix).map(|e| (prefix, e)).into_iter();
    let below = below.chain(tree.below(prefix).map(|(k, e)| (k.as_str(), e)));
    for (path, e) in below {
        if let Some(name) = e.xattrs.keys().next() {
            return Err(sdk_common::error::bad_input(AttrError::Xattrs {
                fs: fs.name(),
                path: path.to_string(),
                name: name.clone(),
                origin: e.origin.clone(),
            }));
        }
    }
    let attrs = attrs_of(tree, prefix);
    if fs == FsType::Squashfs {
        std::fs::write(
            pseudo,
            squashfs_pseudo(&attrs).map_err(sdk_common::error::bad_input)?,
        )
        .with_context(|| format!("write {}", pseudo.display()))?;
        let root = &attrs[0];
        opts.owner = Ownership::Force {
            uid: root.uid,
            gid: root.gid,
        };
        opts.pseudo_file = Some(pseudo.to_path_buf());
    } else {
        let (uid, gid) = uniform_owner(&attrs, fs.name()).map_err(sdk_common::error::bad_input)?;
        opts.owner = Ownership::Force { uid, gid };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path()).unwrap();
        t.add_dir("usr", 0o755, 0, 0, "t", false).unwrap();
        t.add_file("usr/bin/su", &b"x"[..], 0o4755, 0, 0, "t", false)
            .unwrap();
        t.add_dir("usr/secret", 0o500, 0, 0, "t", false).unwrap();
        t.add_file("usr/my file", &b"x"[..], 0o644, 10, 20, "t", false)
            .unwrap();
        t.add_symlink("usr/l", "bin/su", 0, 0, "t", false).unwrap();
        (dir, t)
    }

    #[test]
    fn squashfs_pseudo_lists_every_path() {
        let (_d, t) = tree();
        let a = attrs_of(&t, "usr");
        let s = squashfs_pseudo(&a).unwrap();
        assert!(s.contains("\"bin/su\" m 4755 0 0\n"), "{s}");
        assert!(s.contains("\"my file\" m 644 10 20\n"), "{s}");
        assert!(s.contains("\"l\" m 777 0 0\n"), "{s}");
    }

    #[test]
    fn erofs_needs_uniform_owner() {
        let (_d, t) = tree();
        let a = attrs_of(&t, "usr");
        let err = uniform_owner(&a, "erofs").unwrap_err().to_string();
        assert!(
            err.contains("use ext4 or squashfs") && err.contains("/my file"),
            "{err}"
        );
    }
}
