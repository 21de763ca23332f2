//! The `sdk` user inside the rootfs: a passwd and group entry and a home,
//! added when missing (run in the init after `pivot_root`, as root inside).
//! Also resolves, at enter, `-u USER` and an image's `User` (OCI image
//! config, `USER[:GROUP]`) against the sandbox's `/etc/passwd` and
//! `/etc/group`. It does not decide which of the two applies (that is
//! `enter`: an explicit `-u` wins, then the image's `User`, then `sdk`).

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

/// Why an image's `User` names nobody in the sandbox (the text completes
/// "the image asks for user `SPEC`, ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("which is not USER, UID, USER:GROUP or UID:GID")]
    Malformed,
    #[error("and there is no user `{0}` in the sandbox's /etc/passwd")]
    NoUser(String),
    #[error("and there is no group `{0}` in the sandbox's /etc/group")]
    NoGroup(String),
}

/// Split an image config `User` into its user and optional group part;
/// both must be non-empty and there is at most one `:`.
pub fn parse_spec(spec: &str) -> Result<(&str, Option<&str>), SpecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |p: &str| p.is_empty() || p.contains(':');
    if bad(user) || group.is_some_and(bad) {
        return Err(SpecError::Malformed);
    }
    Ok((user, group))
}

/// A decimal id (the OCI config's `UID` / `GID` forms).
fn numeric(part: &str) -> Option<u32> {
    part.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| part.parse().ok())
        .flatten()
}

/// The account an image's `User` means in the sandbox whose root is
/// `root`, resolved the way docker (runc) does:
///
/// - `name`: its passwd entry (uid, primary gid, home, shell);
/// - `uid`: the passwd entry with that uid; a uid with no entry is still
///   valid (gid 0, home `/`), as in docker;
/// - `...:group`: the primary gid is the group's, from `/etc/group` (read
///   only for this form); a numeric gid needs no entry.
///
/// `sdk` and `root` resolve as for `-u` ([`resolve`]). No supplementary
/// groups are added (the same as for `-u`).
pub fn resolve_spec(root: &Path, spec: &str) -> Result<Account, SpecError> {
    let (user, group) = parse_spec(spec)?;
    let mut account = match (resolve(root, user), numeric(user)) {
        (Some(a), _) => a,
        (None, Some(uid)) => Account {
            name: user.into(),
            uid,
            gid: 0,
            home: "/".into(),
            shell: "/bin/sh".into(),
        },
        (None, None) => return Err(SpecError::NoUser(user.into())),
    };
    if let Some(group) = group {
        account.gid = match numeric(group) {
            Some(gid) => gid,
            None => {
                let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
                lookup_group(&text, group).ok_or_else(|| SpecError::NoGroup(group.into()))?
            }
        };
    }
    Ok(account)
}

/// The gid of the group named `name` in group-file text.
pub fn lookup_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != name {
            return None;
        }
        f.nth(1)?.parse().ok()
    })
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

/// `/etc/hosts` names the sandbox's hostname, so tools that look it up
/// (sudo: "unable to resolve host") find it: `127.0.1.1 NAME` is added
/// when no line names it, as Debian's installer does.
pub fn ensure_host_entry(root: &Path, hostname: &str) -> std::io::Result<()> {
    let path = root.join("etc/hosts");
    let hosts = std::fs::read_to_string(&path).unwrap_or_default();
    let named = hosts.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == hostname)
    });
    if named || hostname.is_empty() {
        return Ok(());
    }
    if hosts.is_empty() {
        append(&path, "127.0.0.1\tlocalhost")?;
    }
    append(&path, &format!("127.0.1.1\t{hostname}"))
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

/// Where login shells pick up the sandbox's PATH.
pub const PROFILE_SNIPPET: &str = "etc/profile.d/sdk-run.sh";

/// The `/etc/profile.d` script that gives login shells the sandbox's PATH.
/// A login shell (what `sdk-run -t` starts) reads `/etc/profile`, and
/// Debian's resets PATH for everyone but root to one without the SDK's
/// tools or the sbin directories (`mkfs.vfat`); Debian, Fedora, Alpine and
/// Arch all read `/etc/profile.d/*.sh` after that. The script puts `path`
/// first and keeps what else the profile added, each directory once.
pub fn profile_script(path: &str) -> String {
    format!(
        r#"# Written by sdk-run at every start of this sandbox; edits are lost.
# Login shells get the sandbox's PATH back (/etc/profile may reset it):
# the SDK tools first, then what the profile added.
_sdk_run_rest=$PATH
PATH={path}
while [ -n "$_sdk_run_rest" ]; do
  _sdk_run_dir=${{_sdk_run_rest%%:*}}
  case $_sdk_run_rest in *:*) _sdk_run_rest=${{_sdk_run_rest#*:}} ;; *) _sdk_run_rest= ;; esac
  case ":$PATH:" in *":$_sdk_run_dir:"*) ;; *) [ -n "$_sdk_run_dir" ] && PATH=$PATH:$_sdk_run_dir ;; esac
done
unset _sdk_run_rest _sdk_run_dir
export PATH
"#
    )
}

/// Install [`profile_script`] in a rootfs that has an `/etc/profile` (no
/// profile, no login-shell PATH reset to undo). Written only when it
/// differs, so an overlay's lower file is not copied up for nothing.
pub fn ensure_profile_path(root: &Path, path: &str) -> std::io::Result<()> {
    if !root.join("etc/profile").exists() {
        return Ok(());
    }
    let script = profile_script(path);
    let file = root.join(PROFILE_SNIPPET);
    if std::fs::read_to_string(&file).is_ok_and(|t| t == script) {
        return Ok(());
    }
    std::fs::create_dir_all(file.parent().expect("a parent"))?;
    std::fs::write(&file, script)
}

/// `/run/user/UID/gnupg/S.gpg-agent` -> `sock` for root and the sdk user
/// (each directory theirs, mode 0700, as GnuPG requires of its socket
/// directory). `chown` as in [`ensure_sdk_user`]: with a single mapping only
/// the sdk user exists.
pub fn link_gpg_agent(root: &Path, sock: &Path, chown: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let uids: &[u32] = if chown { &[0, SDK_ID] } else { &[SDK_ID] };
    // /run/user is everyone's to pass through; only the per-user ones are
    // private.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root.join("run/user"))?;
    for &uid in uids {
        let user_dir = root.join(format!("run/user/{uid}"));
        let dir = user_dir.join("gnupg");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        for d in [&user_dir, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            if chown {
                std::os::unix::fs::chown(d, Some(uid), Some(uid))?;
            }
        }
        let link = dir.join("S.gpg-agent");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sock, &link)?;
        if chown {
            std::os::unix::fs::lchown(&link, Some(uid), Some(uid))?;
        }
    }
    Ok(())
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
    #[test]
    fn gpg_agent_link_where_gnupg_looks() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            super::link_gpg_agent(d.path(), "/run/host/gpg".as_ref(), false).unwrap();
        }
        let dir = d.path().join("run/user/1000/gnupg");
        assert_eq!(
            std::fs::read_link(dir.join("S.gpg-agent")).unwrap(),
            std::path::Path::new("/run/host/gpg")
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(
            !d.path().join("run/user/0").exists(),
            "no root with one mapping"
        );
        let mode = std::fs::metadata(d.path().join("run/user"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    /// The script, run by a real `sh` after a profile that reset PATH the
    /// way Debian's does for users, gives the sandbox's PATH back first.
    #[test]
    fn profile_script_restores_the_sandbox_path_once() {
        let d = tempfile::tempdir().unwrap();
        super::ensure_profile_path(d.path(), "/x").unwrap();
        assert!(
            !d.path().join(super::PROFILE_SNIPPET).exists(),
            "no profile"
        );
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/profile"), "").unwrap();
        let path = "/run/sdk-tools/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        super::ensure_profile_path(d.path(), path).unwrap();
        let script = d.path().join(super::PROFILE_SNIPPET);
        let run = |before: &str| {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    ". {}; . {}; echo \"$PATH|${{_sdk_run_rest-unset}}\"",
                    script.display(),
                    script.display()
                ))
                .env("PATH", before)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        assert_eq!(
            run("/usr/local/bin:/usr/bin:/bin:/usr/games"),
            format!("{path}:/usr/local/bin:/usr/games|unset")
        );
        assert_eq!(run(""), format!("{path}|unset"));
        assert_eq!(
            run("/home/sdk/bin::/bin"),
            format!("{path}:/home/sdk/bin|unset")
        );
    }

    #[test]
    fn hostname_gets_a_hosts_line_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        let hosts = d.path().join("etc/hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost # box is not here\n").unwrap();
        super::ensure_host_entry(d.path(), "box").unwrap();
        super::ensure_host_entry(d.path(), "box").unwrap();
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "127.0.0.1 localhost # box is not here\n127.0.1.1\tbox\n"
        );
        std::fs::remove_file(&hosts).unwrap();
        super::ensure_host_entry(d.path(), "b").unwrap();
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tb\n"
        );
    }

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

    /// A sandbox root with an image's own users, as `ensure_sdk_user`
    /// leaves it.
    fn image_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbuilder:x:1234:1234::/home/builder:/bin/ash\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nbuilder:x:1234:\nstaff:x:2345:builder\n",
        )
        .unwrap();
        ensure_sdk_user(d.path(), false).unwrap();
        d
    }

    #[test]
    fn image_user_forms_resolve_like_docker() {
        let d = image_root();
        let ids = |spec: &str| {
            let a = resolve_spec(d.path(), spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            (a.name, a.uid, a.gid, a.home)
        };
        let builder = |gid| {
            (
                "builder".to_string(),
                1234,
                gid,
                "/home/builder".to_string(),
            )
        };
        assert_eq!(ids("builder"), builder(1234));
        assert_eq!(ids("1234"), builder(1234));
        assert_eq!(ids("builder:staff"), builder(2345));
        assert_eq!(ids("1234:staff"), builder(2345));
        assert_eq!(ids("builder:2345"), builder(2345));
        assert_eq!(ids("1234:77"), builder(77), "a numeric gid needs no entry");
        assert_eq!(ids("builder:root"), builder(0));
        // A uid with no passwd entry is valid, as in docker: gid 0, home /.
        assert_eq!(ids("4321"), ("4321".into(), 4321, 0, "/".into()));
        assert_eq!(ids("4321:4321"), ("4321".into(), 4321, 4321, "/".into()));
        assert_eq!(ids("root"), ("root".into(), 0, 0, "/root".into()));
        assert_eq!(ids("0:0"), ("root".into(), 0, 0, "/root".into()));
        assert_eq!(ids("sdk").1, 1000);
        assert_eq!(
            ids("1000:staff"),
            ("sdk".into(), 1000, 2345, "/home/sdk".into())
        );
    }

    #[test]
    fn image_users_that_name_nobody_are_errors() {
        let d = image_root();
        let err = |spec: &str| resolve_spec(d.path(), spec).unwrap_err();
        assert_eq!(err("ghost"), SpecError::NoUser("ghost".into()));
        assert_eq!(err("ghost:staff"), SpecError::NoUser("ghost".into()));
        assert_eq!(err("builder:ghosts"), SpecError::NoGroup("ghosts".into()));
        assert_eq!(err("4321:ghosts"), SpecError::NoGroup("ghosts".into()));
        for bad in ["", ":", "builder:", ":staff", "a:b:c", "12a:"] {
            assert_eq!(err(bad), SpecError::Malformed, "{bad:?}");
        }
        // `12a` is a name (not a uid), and nobody has it.
        assert_eq!(err("12a"), SpecError::NoUser("12a".into()));
        assert_eq!(
            err("ghost").to_string(),
            "and there is no user `ghost` in the sandbox's /etc/passwd"
        );
    }

    #[test]
    fn specs_split_into_user_and_group() {
        assert_eq!(parse_spec("a"), Ok(("a", None)));
        assert_eq!(parse_spec("a:b"), Ok(("a", Some("b"))));
        assert_eq!(parse_spec("0:0"), Ok(("0", Some("0"))));
        assert_eq!(lookup_group("x:x:5:\nstaff:x:50:a,b\n", "staff"), Some(50));
        assert_eq!(lookup_group("staff:x:notanumber:\n", "staff"), None);
        assert_eq!(lookup_group("", "staff"), None);
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
