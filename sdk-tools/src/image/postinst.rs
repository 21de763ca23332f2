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

use std::collections::BTreeSet;
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

/// What the packages' maintainer scripts would have done that the build
/// did not, for `<image>_maintscripts.txt`: each account a script creates
/// that no `sysusers.d` entry or base-passwd master file declares, then
/// every script line not reproduced, as `package script:line: text`.
pub struct ScriptListing {
    pub text: String,
    /// Lines listed.
    pub lines: usize,
    /// Debian packages with a listed line.
    pub packages: usize,
}

/// The accounts the image declares: names of `u`/`g` lines in
/// `sysusers.d` (`u` makes a group of its name too) and of base-passwd's
/// master files.
fn declared_accounts(tree: &Tree) -> BTreeSet<(char, String)> {
    let mut out = BTreeSet::new();
    let sysusers = tree
        .entries()
        .keys()
        .filter(|k| k.contains("/sysusers.d/") && k.ends_with(".conf"))
        .cloned()
        .collect::<Vec<_>>();
    for k in sysusers {
        let Ok(text) = std::fs::read_to_string(tree.disk_path(&k)) else {
            continue;
        };
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("u"), Some(name)) => {
                    out.insert(('u', name.to_string()));
                    out.insert(('g', name.to_string()));
                }
                (Some("g"), Some(name)) => {
                    out.insert(('g', name.to_string()));
                }
                _ => {}
            }
        }
    }
    for (file, kind) in [("passwd.master", 'u'), ("group.master", 'g')] {
        let k = format!("usr/share/base-passwd/{file}");
        if let Ok(text) = std::fs::read_to_string(tree.disk_path(&k)) {
            for line in text.lines() {
                if let Some(name) = line.split(':').next().filter(|n| !n.is_empty()) {
                    out.insert((kind, name.to_string()));
                }
            }
        }
    }
    out
}

pub fn script_listing(tree: &Tree, packages: &[super::PackageInfo]) -> ScriptListing {
    let declared = declared_accounts(tree);
    let mut lines: Vec<String> = Vec::new();
    let mut with_lines: BTreeSet<&str> = BTreeSet::new();
    for p in packages {
        for a in &p.maintainer_scripts.accounts {
            let kind = if a.kind == "group" { 'g' } else { 'u' };
            if !declared.contains(&(kind, a.name.clone())) {
                with_lines.insert(&a.at.package);
                lines.push(format!(
                    "{} {}:{}: {} {} is created by the script; no sysusers.d entry declares it (add `{kind} {} -` to a sysusers.d file of a recipe)",
                    a.at.package, a.at.script, a.at.line, a.kind, a.name, a.name
                ));
            }
        }
    }
    for p in packages {
        for n in &p.maintainer_scripts.unreproduced {
            with_lines.insert(&n.package);
            lines.push(format!("{} {}:{}: {}", n.package, n.script, n.line, n.text));
        }
    }
    let mut text = String::from(
        "# What the Debian packages' maintainer scripts do that this image's build did not\n\
         # reproduce (build_image: setcap, update-alternatives and sysusers.d accounts are\n\
         # reproduced; services, ldconfig, tmpfiles and host keys are the booted OS's work).\n\
         # package script:line: what the script does\n",
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    ScriptListing {
        text,
        lines: lines.len(),
        packages: with_lines.len(),
    }
}

/// The mark-good unit: runs once `boot-complete.target` is reached, which
/// health checks order themselves before (`Before=` and `RequiredBy=`
/// boot-complete.target), as systemd's own boot counting does; a failed
/// check keeps the target, and so the mark, from happening.
const MARK_GOOD_UNIT: &str = "[Unit]
Description=Mark the running USR slot good once the boot is healthy
Requires=boot-complete.target
After=boot-complete.target
ConditionPathExists=/run/sdk-init/usr-slot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/sdk-update mark-good

[Install]
WantedBy=multi-user.target
";

/// `sdk-update check --apply` from the configured source.
const UPDATE_UNIT: &str = "[Unit]
Description=Install a newer OS update from the configured source
ConditionPathExists=/etc/sdk-update/source
ConditionPathExists=/run/sdk-init/usr-slot
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/sdk-update check --apply
";

/// When the update check runs: a while after boot, then hourly.
const UPDATE_TIMER: &str = "[Unit]
Description=Look for a newer OS update now and then
ConditionPathExists=/etc/sdk-update/source

[Timer]
OnBootSec=5min
OnUnitInactiveSec=1h
RandomizedDelaySec=10min

[Install]
WantedBy=timers.target
";

/// The update agent for an OS with systemd: sdk-tools built for the
/// board's architecture (this binary, or its `sdk-tools-<arch>` build) as
/// `/usr/bin/sdk-update` (stripped, as the initramfs's init is), the
/// release file it reads, the mark-good unit and the update timer
/// (which does nothing until /etc/sdk-update/source names a source),
/// enabled by preset. An OS without systemd gets the release file only.
pub fn update_agent(
    tree: &mut Tree,
    os_id: &str,
    version: &str,
    board: &crate::board::Board,
) -> Result<()> {
    let release = crate::boot::agent::Release {
        os_id: os_id.to_string(),
        version: version.to_string(),
        board: board.name.clone(),
    };
    let origin = "update agent";
    tree.add_file(
        crate::boot::agent::RELEASE_FILE,
        release.text().as_bytes(),
        0o644,
        0,
        0,
        origin,
        true,
    )?;
    if tree.get("usr/lib/systemd/systemd").is_none() {
        return Ok(());
    }
    let target = crate::boot::initramfs::Target::of(board);
    let agent =
        crate::boot::initramfs::init_binary(&target).map_err(sdk_common::error::classify)?;
    tree.add_file(
        "usr/lib/sdk-update/sdk-tools",
        agent.as_slice(),
        0o755,
        0,
        0,
        origin,
        true,
    )?;
    tree.add_symlink(
        "usr/bin/sdk-update",
        "../lib/sdk-update/sdk-tools",
        0,
        0,
        origin,
        true,
    )?;
    for (path, text) in [
        (
            "usr/lib/systemd/system/sdk-update-mark-good.service",
            MARK_GOOD_UNIT,
        ),
        ("usr/lib/systemd/system/sdk-update.service", UPDATE_UNIT),
        ("usr/lib/systemd/system/sdk-update.timer", UPDATE_TIMER),
        (
            "usr/lib/systemd/system-preset/80-sdk-update.preset",
            "enable sdk-update-mark-good.service\nenable sdk-update.timer\n",
        ),
    ] {
        tree.add_file(path, text.as_bytes(), 0o644, 0, 0, origin, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::maintscripts::{Account, Note, Report};

    #[test]
    fn accounts_no_sysusers_entry_declares_are_listed_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(&dir.path().join("t")).unwrap();
        tree.add_file(
            "usr/lib/sysusers.d/sshd.conf",
            &b"u sshd - \"sshd\" /run/sshd\n"[..],
            0o644,
            0,
            0,
            "t",
            false,
        )
        .unwrap();
        tree.add_file(
            "usr/share/base-passwd/group.master",
            &b"root:*:0:\nshadow:*:42:\n"[..],
            0o644,
            0,
            0,
            "t",
            false,
        )
        .unwrap();
        let at = |line| Note {
            package: "p".into(),
            script: "postinst".into(),
            line,
            text: String::new(),
        };
        let account = |kind: &str, name: &str, line| Account {
            kind: kind.into(),
            name: name.into(),
            at: at(line),
        };
        let packages = vec![super::super::PackageInfo {
            name: "x/y".into(),
            version: "1".into(),
            arch: "amd64".into(),
            license: None,
            sha256: None,
            depends: vec![],
            debs: vec![],
            maintainer_scripts: Report {
                accounts: vec![
                    account("user", "sshd", 1),
                    account("group", "sshd", 2),
                    account("group", "shadow", 3),
                    account("group", "_ssh", 4),
                ],
                unreproduced: vec![Note {
                    text: "mkdir /var/x".into(),
                    ..at(9)
                }],
            },
        }];
        let l = script_listing(&tree, &packages);
        let body: Vec<&str> = l.text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(body.len(), 2, "{}", l.text);
        assert!(
            body[0].starts_with("p postinst:4: group _ssh is created"),
            "{}",
            l.text
        );
        assert_eq!(body[1], "p postinst:9: mkdir /var/x");
        assert_eq!((l.lines, l.packages), (2, 1));
    }
}
