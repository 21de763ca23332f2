//! What Debian maintainer scripts would do at install time, done at build
//! time where it must be in the image before the first boot (binary
//! imports unpack .debs without running their scripts):
//! - the kernel's: `depmod` writes the module indexes (`modules.dep.bin`,
//!   `modules.alias.bin`, ...) that `modprobe` and udev need, into /usr,
//!   which is read-only once the image boots;
//! - base-passwd's: `/etc/passwd` and `/etc/group` from its master files
//!   (the system users and groups every Debian system has, `sudo`
//!   among them), so first-boot provisioning (Ignition's `useradd`) finds
//!   them before systemd-sysusers runs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::tree::Tree;
use crate::cmd::CommandExt;

/// `/etc/passwd` and `/etc/group` (as factory defaults) from base-passwd's
/// master files, when the image has them and no such defaults yet.
/// Returns the files added.
pub fn base_passwd(tree: &mut Tree) -> Result<Vec<String>> {
    let mut added = Vec::new();
    for (master, file) in [("passwd.master", "passwd"), ("group.master", "group")] {
        let src = format!("usr/share/base-passwd/{master}");
        let dst = format!("{}/etc/{file}", super::usr::FACTORY);
        if tree.get(&src).is_none() || tree.get(&dst).is_some() {
            continue;
        }
        let f =
            std::fs::File::open(tree.disk_path(&src)).with_context(|| format!("read /{src}"))?;
        tree.add_file(&dst, f, 0o644, 0, 0, "base-passwd", false)?;
        added.push(format!("/etc/{file}"));
    }
    Ok(added)
}

/// Run `depmod` for every kernel under `usr/lib/modules` that has no index
/// yet, on a hard-linked copy of its modules in `work`, and add the index
/// files it writes to the tree. Returns the kernel versions indexed.
pub fn index(tree: &mut Tree, work: &Path) -> Result<Vec<String>> {
    let modules = tree.disk_path("usr/lib/modules");
    let Ok(rd) = std::fs::read_dir(&modules) else {
        return Ok(Vec::new());
    };
    let mut versions: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|v| !modules.join(v).join("modules.dep.bin").exists())
        .collect();
    versions.sort();
    for v in &versions {
        let base = work.join("depmod");
        let lib = base.join("lib/modules");
        std::fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
        // Hard links: depmod reads the modules and writes only new files.
        Command::new("cp")
            .arg("-al")
            .arg(modules.join(v))
            .arg(lib.join(v))
            .run_capture()
            .context("copy the kernel modules for depmod")?;
        Command::new("depmod")
            .arg("-b")
            .arg(&base)
            .arg(v)
            .run_capture()
            .context("index the kernel modules (depmod, Debian package kmod)")?;
        let mut written: Vec<String> = std::fs::read_dir(lib.join(v))
            .with_context(|| format!("read {}", lib.join(v).display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("modules.") && !modules.join(v).join(n).exists())
            .collect();
        written.sort();
        for n in written {
            let f = std::fs::File::open(lib.join(v).join(&n))
                .with_context(|| format!("read depmod's {n}"))?;
            tree.add_file(
                &format!("usr/lib/modules/{v}/{n}"),
                f,
                0o644,
                0,
                0,
                "depmod",
                false,
            )?;
        }
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(versions)
}
