//! Rootfs manifests end to end, as the unprivileged test user: the
//! embedded default SDK builds once (shared through
//! `sdk_e2e::default_sdk_store`) and has working compilers and filesystem
//! tools; a manifest over a tarball base copies files and runs commands
//! inside; a failing command leaves the store unchanged.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use sdk_e2e::{Scratch, TestUser, chown_r, default_sdk_store, run_expect, run_ok, subuid_start};

fn sdk(user: &TestUser, s: &Scratch) -> Command {
    user.command(s, "sdk-run")
}

#[test]
fn default_sdk_builds_once_and_has_the_tools() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let store = default_sdk_store();
    let digest = run_ok(sdk(&user, &s).arg("build").env("XDG_DATA_HOME", &store));
    let digest = digest.trim();
    let root = store.join("sdk-run/images").join(digest).join("rootfs");
    for tool in [
        "usr/bin/gcc",
        "usr/bin/make",
        "usr/sbin/mkfs.ext4",
        "usr/bin/mkfs.erofs",
        "usr/bin/mksquashfs",
        "usr/sbin/mkfs.vfat",
        "usr/bin/mcopy",
        "usr/bin/qemu-img",
        "usr/sbin/veritysetup",
        "usr/bin/mmdebstrap",
        "usr/bin/aarch64-linux-gnu-gcc",
        "usr/sbin/sfdisk",
        "usr/sbin/sgdisk",
        "usr/bin/busybox",
        "usr/bin/git",
        "usr/bin/sudo",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(tool)).is_ok(),
            "default SDK lacks {tool}"
        );
    }
    // Real ownership: root inside is the start of the subordinate range;
    // sudo keeps its set-uid bit.
    let sudo = std::fs::metadata(root.join("usr/bin/sudo")).unwrap();
    assert_eq!(sudo.uid(), subuid_start(&user));
    assert_ne!(sudo.mode() & 0o4000, 0, "sudo is set-uid root");
    let listed = run_ok(
        sdk(&user, &s)
            .args(["images", "--json"])
            .env("XDG_DATA_HOME", &store),
    );
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let img = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["digest"] == digest)
        .expect("default SDK listed");
    assert_eq!(img["kind"], "manifest");
    assert_eq!(img["source"], "rootfs-manifests/sdk.toml");

    // A sandbox from it compiles for both boards, makes a filesystem, and
    // its sdk user can sudo without a password (and without a warning:
    // the hostname resolves).
    let name = format!("rootfs-e2e-{}", std::process::id());
    let script = r#"set -e
cd /tmp
printf 'int main(void){return 0;}\n' > t.c
gcc -o t t.c && ./t
aarch64-linux-gnu-gcc -o t-arm64 t.c
file t-arm64 | grep -q 'ARM aarch64'
truncate -s 8M fs.img && mkfs.ext4 -q -F fs.img && fsck.ext4 -fn fs.img >/dev/null
test "$(sudo -n id -u 2>sudo.err)" = 0
if grep . sudo.err; then exit 1; fi
echo tools-ok"#;
    let out = run_expect(
        sdk(&user, &s)
            .args(["--rm", "-n", &name, "--", "sh", "-c", script])
            .env("XDG_DATA_HOME", &store),
        0,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tools-ok"));
}

/// A busybox rootfs tarball (from Debian's busybox-static).
fn busybox_tarball(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    b.append_path_with_name("/bin/busybox", "bin/busybox")
        .expect("/bin/busybox (Debian package busybox-static); run `make test`");
    for applet in ["sh", "echo", "mkdir", "cat"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn manifest_over_a_tarball_copies_files_and_runs_commands() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    busybox_tarball(&s.path().join("bb.tar"));
    std::fs::write(s.path().join("motd"), "hello from the manifest\n").unwrap();
    std::fs::write(
        s.path().join("m.toml"),
        r#"commands = ["mkdir -p /etc && echo \"built $GREETING\" > /etc/greeting"]

[base]
tarball = "bb.tar"

[env]
GREETING = "by sdk-run"

[[files]]
src = "motd"
dst = "/etc/motd"
mode = "0640"
"#,
    )
    .unwrap();
    std::fs::write(
        s.path().join("bad.toml"),
        "commands = [\"exit 3\"]\n[base]\ntarball = \"bb.tar\"\n",
    )
    .unwrap();
    chown_r(&user, s.path());
    let digest = run_ok(sdk(&user, &s).args(["build", "m.toml", "--tag", "bb"]));
    let digest = digest.trim();
    let root = s
        .path()
        .join("data/sdk-run/images")
        .join(digest)
        .join("rootfs");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/greeting")).unwrap(),
        "built by sdk-run\n"
    );
    let motd = std::fs::metadata(root.join("etc/motd")).unwrap();
    assert_eq!(motd.permissions().mode() & 0o7777, 0o640);
    assert_eq!(motd.uid(), subuid_start(&user));

    // The second build is a lookup: same digest, nothing rebuilt.
    let again = run_ok(sdk(&user, &s).args(["build", "m.toml"]));
    assert_eq!(again.trim(), digest);
    let listed = run_ok(sdk(&user, &s).args(["images", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["tags"][0], "bb");
    assert_eq!(v[0]["config"]["env"][0], "GREETING=by sdk-run");

    // A manifest on that image: built on a copy of it (the base is not
    // changed), its env carried over and added to, by tag or digest.
    std::fs::write(
        s.path().join("child.toml"),
        "commands = [\"echo child >> /etc/greeting && echo x > /etc/child\"]\n\
         [base]\nimage = \"bb\"\n[env]\nLAYER = \"child\"\n",
    )
    .unwrap();
    std::fs::write(
        s.path().join("no-parent.toml"),
        "[base]\nimage = \"no-such-tag\"\n",
    )
    .unwrap();
    // Only the new files: the store under the scratch keeps its owners.
    chown_r(&user, &s.path().join("child.toml"));
    chown_r(&user, &s.path().join("no-parent.toml"));
    // A bad name among several: refused before anything is built.
    let out = run_expect(
        sdk(&user, &s).args(["build", "child.toml", "--tag", "ok", "--tag", "bad/tag"]),
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad/tag"));
    let child = run_ok(sdk(&user, &s).args([
        "build",
        "child.toml",
        "--tag",
        "bb-child",
        "--tag",
        "bb-child:1",
    ]));
    let child = child.trim();
    assert_ne!(child, digest);
    let child_root = s
        .path()
        .join("data/sdk-run/images")
        .join(child)
        .join("rootfs");
    assert_eq!(
        std::fs::read_to_string(child_root.join("etc/greeting")).unwrap(),
        "built by sdk-run\nchild\n"
    );
    assert_eq!(
        std::fs::metadata(child_root.join("etc/motd"))
            .unwrap()
            .uid(),
        subuid_start(&user)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/greeting")).unwrap(),
        "built by sdk-run\n",
        "the base image is unchanged"
    );
    assert!(!root.join("etc/child").exists());
    let imgs: serde_json::Value =
        serde_json::from_str(&run_ok(sdk(&user, &s).args(["images", "--json"]))).unwrap();
    let c = imgs
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tags"][0] == "bb-child")
        .unwrap();
    assert_eq!(c["tags"], serde_json::json!(["bb-child", "bb-child:1"]));
    assert_eq!(
        c["config"]["env"],
        serde_json::json!(["GREETING=by sdk-run", "LAYER=child"])
    );
    let out = run_expect(sdk(&user, &s).args(["build", "no-parent.toml"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-tag"), "{err}");
    run_ok(sdk(&user, &s).args(["rmi", "bb-child", "bb-child:1"]));

    // An Ansible layer: a playbook (raw tasks: the busybox root has no
    // Python) run against the new root through a chroot connection, as
    // root inside; a failing one is one line, exit 2.
    let play = s.path().join("ansible");
    std::fs::create_dir_all(&play).unwrap();
    std::fs::write(
        play.join("site.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    \
         - ansible.builtin.raw: echo \"set by ansible as $(id -u)\" > /etc/from-ansible\n",
    )
    .unwrap();
    std::fs::write(
        play.join("fail.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: exit 4\n",
    )
    .unwrap();
    std::fs::write(
        s.path().join("play.toml"),
        "playbooks = [\"ansible/site.yml\"]\n[base]\nimage = \"bb\"\n",
    )
    .unwrap();
    std::fs::write(
        s.path().join("play-fail.toml"),
        "playbooks = [\"ansible/fail.yml\"]\n[base]\nimage = \"bb\"\n",
    )
    .unwrap();
    for f in ["ansible", "play.toml", "play-fail.toml"] {
        chown_r(&user, &s.path().join(f));
    }
    let played = run_ok(sdk(&user, &s).args(["build", "play.toml", "--tag", "bb-ansible"]));
    let file = s
        .path()
        .join("data/sdk-run/images")
        .join(played.trim())
        .join("rootfs/etc/from-ansible");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "set by ansible as 0\n"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), subuid_start(&user));
    let out = run_expect(sdk(&user, &s).args(["build", "play-fail.toml"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ansible-playbook") && err.contains("fail.yml"),
        "{err}"
    );
    run_ok(sdk(&user, &s).args(["rmi", "bb-ansible"]));

    // A failing command: exit 2, one line naming it, store unchanged.
    let out = run_expect(sdk(&user, &s).args(["build", "bad.toml"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`exit 3` failed"), "{err}");
    let listed2 = run_ok(sdk(&user, &s).args(["images", "--json"]));
    assert_eq!(listed, listed2);
    let tmp = s.path().join("data/sdk-run/images/.tmp");
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0);
}

/// Every process below `pid` (children, grandchildren, ...), from /proc.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so from the last ')'.
        let (head, tail) = stat.rsplit_once(')').unwrap();
        let comm = head.split_once('(').unwrap().1.to_string();
        let ppid: u32 = tail.split_whitespace().nth(1).unwrap().parse().unwrap();
        all.push((p, ppid, comm));
    }
    let mut out: Vec<(u32, String)> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, comm) in &all {
            if *pp == parent {
                out.push((*p, comm.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

#[test]
fn sigterm_during_a_build_stops_mmdebstrap_and_its_children() {
    use std::time::{Duration, Instant};
    let user = TestUser::get();
    let s = Scratch::new(&user);
    std::fs::write(
        s.path().join("m.toml"),
        "packages = [\"hello\"]\n[base]\ndebian = { suite = \"bookworm\", variant = \"minbase\" }\n",
    )
    .unwrap();
    chown_r(&user, s.path());
    let mut child = sdk(&user, &s)
        .args(["build", "m.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // setpriv execs sdk-run: the child's pid is sdk-run's.
    let pid = child.id();
    let t = Instant::now();
    let busy = loop {
        let d = descendants(pid);
        // mmdebstrap has started work of its own (apt, its helpers).
        if let Some((m, _)) = d.iter().find(|(_, c)| c == "mmdebstrap")
            && !descendants(*m).is_empty()
        {
            break d;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "mmdebstrap never got going: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    run_ok(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let status = child.wait().unwrap();
    assert!(!status.success());
    let alive = |p: u32| Path::new(&format!("/proc/{p}")).exists();
    let t = Instant::now();
    // Stopped, not left to end on their own: without the death signals
    // the orphans ran on for more than 10 s here (until their pipes broke);
    // with them all were gone within a second.
    while busy.iter().any(|(p, _)| alive(*p)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running after sdk-run was stopped: {:?}",
            busy.iter().filter(|(p, _)| alive(*p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
