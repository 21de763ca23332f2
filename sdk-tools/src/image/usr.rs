//! Turn an installed tree into the /usr-only shape of an image-based OS
//! (the Flatcar way): everything the OS ships lives under /usr, which
//! becomes the read-only, verity-protected USR filesystem; ROOT starts empty.
//!
//! - `/bin`, `/sbin`, `/lib*` that are real directories merge into their
//!   `/usr` counterparts (merged /usr); when they are symlinks they are
//!   dropped: they belong to ROOT, where first boot recreates them.
//! - `/etc` and `/var` defaults move to `/usr/share/factory/{etc,var}`
//!   (systemd's factory convention; tmpfiles copies them on first boot).
//! - `/boot` moves to `/usr/boot` (the kernel travels with its modules; the
//!   ESP gets a copy).
//! - `/dev`, `/proc`, `/sys`, `/run`, `/tmp` are dropped (the running
//!   system mounts them fresh), empty `/home`, `/opt`, `/srv`... too, and
//!   other top-level symlinks (Debian's `/vmlinuz`) with a warning.
//! - Anything else at the top level is an error naming the package.

use super::tree::{Kind, Tree, TreeError};

/// Top-level directories that merge into /usr.
const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Top-level directories the running system mounts fresh (devtmpfs,
/// proc, sysfs, tmpfs): whatever a bootstrap left there is dropped.
const RUNTIME: &[&str] = &["dev", "proc", "sys", "run", "tmp"];
/// Top-level directories ROOT provides; dropped when empty.
const MOUNT_POINTS: &[&str] = &["home", "root", "mnt", "media", "srv", "opt"];
/// Where /etc and /var defaults go.
pub const FACTORY: &str = "usr/share/factory";

#[derive(Debug, thiserror::Error)]
pub enum UsrError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(
        "{origin}: `/{path}` is outside /usr; a /usr-only image carries /usr (and /etc, /var defaults) only — install it under /usr"
    )]
    OutsideUsr { origin: String, path: String },
}

/// Reshape `tree` in place.
pub fn make_usr_only(tree: &mut Tree) -> Result<(), UsrError> {
    let top: Vec<String> = tree
        .entries()
        .keys()
        .filter(|k| !k.contains('/'))
        .cloned()
        .collect();
    if tree.get("usr").is_none() {
        tree.add_dir("usr", 0o755, 0, 0, "image", false)?;
    }
    for name in top {
        let entry = tree.get(&name).cloned().expect("listed");
        match name.as_str() {
            "usr" => {}
            n if MERGED.contains(&n) => {
                if entry.is_dir() {
                    tree.move_path(n, &format!("usr/{n}"))?;
                } else {
                    tree.remove(n)?;
                }
            }
            "etc" | "var" => {
                if !tree.get(FACTORY).is_some_and(|e| e.is_dir()) {
                    tree.add_dir(FACTORY, 0o755, 0, 0, "image", false)?;
                }
                tree.move_path(&name, &format!("{FACTORY}/{name}"))?;
            }
            "boot" => tree.move_path("boot", "usr/boot")?,
            n if RUNTIME.contains(&n) => {
                if tree.below(n).next().is_some() {
                    tracing::debug!(path = %n, "dropping what the tree has under a runtime mount point");
                }
                tree.remove(n)?;
            }
            n if MOUNT_POINTS.contains(&n) && entry.is_dir() && tree.below(n).next().is_none() => {
                tree.remove(n)?;
            }
            // Conveniences such as Debian's /vmlinuz -> boot/vmlinuz-...
            // have no place in USR; the running system's ROOT may add them.
            _ if matches!(entry.kind, Kind::Symlink { .. }) => {
                tracing::warn!(path = %name, origin = %entry.origin, "dropping a top-level symlink: /usr-only images carry none");
                tree.remove(&name)?;
            }
            _ => {
                let first = tree
                    .below(&name)
                    .next()
                    .map(|(k, e)| (k.clone(), e.origin.clone()))
                    .unwrap_or((name.clone(), entry.origin.clone()));
                return Err(UsrError::OutsideUsr {
                    origin: first.1,
                    path: first.0,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshapes_a_debian_like_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path()).unwrap();
        t.add_file("bin/busybox", &b"bb"[..], 0o755, 0, 0, "busybox", false)
            .unwrap();
        t.add_file(
            "lib/modules/6.1/kernel/x.ko",
            &b"ko"[..],
            0o644,
            0,
            0,
            "kernel",
            false,
        )
        .unwrap();
        t.add_file("boot/vmlinuz-6.1", &b"k"[..], 0o644, 0, 0, "kernel", false)
            .unwrap();
        t.add_file("etc/os-release", &b"ID=x"[..], 0o644, 0, 0, "base", false)
            .unwrap();
        t.add_dir("tmp", 0o1777, 0, 0, "base", false).unwrap();
        t.add_symlink("lib64", "usr/lib64", 0, 0, "base", false)
            .unwrap();
        t.add_file("usr/bin/hello", &b"h"[..], 0o755, 0, 0, "hello", false)
            .unwrap();
        make_usr_only(&mut t).unwrap();
        let keys: Vec<&str> = t.entries().keys().map(String::as_str).collect();
        assert!(keys.iter().all(|k| k.starts_with("usr")), "{keys:?}");
        for k in [
            "usr/bin/busybox",
            "usr/lib/modules/6.1/kernel/x.ko",
            "usr/boot/vmlinuz-6.1",
            "usr/share/factory/etc/os-release",
            "usr/bin/hello",
        ] {
            assert!(t.get(k).is_some(), "{k} missing: {keys:?}");
        }
    }

    #[test]
    fn stray_top_level_content_is_an_error_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path()).unwrap();
        t.add_file("opt/app/run", &b"x"[..], 0o755, 0, 0, "app-1.0", false)
            .unwrap();
        let err = make_usr_only(&mut t).unwrap_err().to_string();
        assert!(err.contains("app-1.0") && err.contains("/opt/app"), "{err}");
    }
}
