//! The `sdk` user inside the rootfs: a passwd and group entry and a home,
//! added when missing (run in the init after `pivot_root`, as root inside).
//! Also resolves `-u USER` against the sandbox's `/etc/passwd` at enter.

use std::io::Write;
use std::path::Path;

use crate::idmap::SDK_ID;

/// A user to run as inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Find `who` (a name or a numeric uid) in passwd text.
pub fn lookup(passwd: &str, who: &str) -> Option<Account> {
    let by_uid: Option<u32> = who.parse().ok();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        if f[0] != who && by_uid != Some(uid) {
            return None;
        }
        Some(Account {
            name: f[0].into(),
            uid,
            gid: f[3].parse().ok()?,
            home: f[5].into(),
            shell: f[6].into(),
        })
    })
}

/// The account `-u who` means in the sandbox whose root is `root`.
/// `sdk` and `root` always exist (created by [`ensure_sdk_user`] / the id
/// map); other names must be in the sandbox's `/etc/passwd`.
pub fn resolve(root: &Path, who: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    // The sdk user is whoever has uid 1000 (a rootfs may call it `core`).
    let key = if who == "sdk" { "1000" } else { who };
    if let Some(a) = lookup(&passwd, key) {
        return Some(a);
    }
    match who {
        "sdk" => Some(default_sdk(root)),
        "root" | "0" => Some(Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
        }),
        _ => None,
    }
}

fn default_sdk(root: &Path) -> Account {
    let shell = if root.join("bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    Account {
        name: "sdk".into(),
        uid: SDK_ID,
        gid: SDK_ID,
        home: "/home/sdk".into(),
        shell: shell.into(),
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // Keep the file well-formed when its last line has no newline.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    writeln!(f, "{line}")
}

/// A user in passwd with an `x` password but no shadow entry fails PAM's
/// account check ("account validation failure"), so `sudo` refuses even
/// with NOPASSWD. Add a locked-password (`*`), never-expiring entry when the
/// rootfs has a shadow file without one. Without root inside (a single
/// mapping) the file is not writable and there is no root to sudo to:
/// nothing to do then.
fn ensure_shadow_entry(shadow: &Path, name: &str) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(shadow) else {
        return Ok(());
    };
    let prefix = format!("{name}:");
    if text.lines().any(|l| l.starts_with(&prefix)) {
        return Ok(());
    }
    match append(shadow, &format!("{name}:*::0:99999:7:::")) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        r => r,
    }
}

/// Add `root` and `sdk` (uid/gid 1000) to passwd/group when missing, and
/// make the sdk user's home and `/build`, owned by it. `root` is the sandbox root (`/`
/// in the init; a temp dir in tests). `chown` is false with a single
/// mapping, where only the sdk user exists and owns everything anyway.
pub fn ensure_sdk_user(root: &Path, chown: bool) -> std::io::Result<Account> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let passwd_path = etc.join("passwd");
    let passwd = std::fs::read_to_string(&passwd_path).unwrap_or_default();
    if lookup(&passwd, "0").is_none() && lookup(&passwd, "root").is_none() {
        append(&passwd_path, "root:x:0:0:root:/root:/bin/sh")?;
    }
    let sdk = match lookup(&passwd, &SDK_ID.to_string()) {
        Some(a) => a,
        None => {
            let a = default_sdk(root);
            append(
                &passwd_path,
                &format!("sdk:x:{SDK_ID}:{SDK_ID}:SDK user:{}:{}", a.home, a.shell),
            )?;
            a
        }
    };
    ensure_shadow_entry(&etc.join("shadow"), &sdk.name)?;
    let group_path = etc.join("group");
    let group = std::fs::read_to_string(&group_path).unwrap_or_default();
    let has_gid = |gid: &str| group.lines().any(|l| l.split(':').nth(2) == Some(gid));
    if !has_gid("0") {
        append(&group_path, "root:x:0:")?;
    }
    if !has_gid(&SDK_ID.to_string()) {
        append(&group_path, &format!("sdk:x:{SDK_ID}:"))?;
    }
    let home = root.join(sdk.home.trim_start_matches('/'));
    // /build holds the cross-roots of setup_board and build_packages; the
    // sdk user builds there without root.
    for dir in [home, root.join("build")] {
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            if chown {
                std::os::unix::fs::chown(&dir, Some(sdk.uid), Some(sdk.gid))?;
            }
        }
    }
    Ok(sdk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_entries_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/ash",
        )
        .unwrap();
        let a = ensure_sdk_user(d.path(), false).unwrap();
        assert_eq!(a.uid, 1000);
        assert!(d.path().join("build").is_dir());
        ensure_sdk_user(d.path(), false).unwrap();
        let p = std::fs::read_to_string(d.path().join("etc/passwd")).unwrap();
        assert_eq!(
            p,
            "root:x:0:0:root:/root:/bin/ash\nsdk:x:1000:1000:SDK user:/home/sdk:/bin/sh\n"
        );
        let g = std::fs::read_to_string(d.path().join("etc/group")).unwrap();
        assert_eq!(g, "root:x:0:\nsdk:x:1000:\n");
        assert!(d.path().join("home/sdk").is_dir());
        assert_eq!(resolve(d.path(), "sdk").unwrap().shell, "/bin/sh");
        assert_eq!(resolve(d.path(), "0").unwrap().name, "root");
        assert!(resolve(d.path(), "nobody").is_none());
        assert!(
            !d.path().join("etc/shadow").exists(),
            "no shadow is made up"
        );
    }

    #[test]
    fn a_shadow_file_gets_the_sdk_entry_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        ensure_sdk_user(d.path(), false).unwrap();
        ensure_sdk_user(d.path(), false).unwrap();
        let s = std::fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert_eq!(s, "root:*:19000:0:99999:7:::\nsdk:*::0:99999:7:::\n");
    }

    #[test]
    fn keeps_an_existing_uid_1000_user() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\ncore:x:1000:1000::/home/core:/bin/bash\n",
        )
        .unwrap();
        let a = ensure_sdk_user(d.path(), false).unwrap();
        assert_eq!(a.name, "core");
        assert_eq!(resolve(d.path(), "sdk").unwrap().uid, 1000);
    }
}
