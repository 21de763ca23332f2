//! `sdk-tools fs build` as an unprivileged user, checked by the
//! filesystems' own tools: fsck.ext4/debugfs, fsck.erofs, unsquashfs,
//! fsck.vfat/mtools. Contents read back equal the tree; owners and
//! timestamps are what was asked; two builds of the same tree are
//! byte-identical even after the source's timestamps change.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sdk_e2e::{Session, chown_r, pattern, run_bad_input, run_expect, run_ok};

const EPOCH: u64 = 1_700_000_000;
const UUID: &str = "0e5ab1a5-0000-4000-8000-000000000001";

/// What the file-system tests add to a session.
trait FsSession {
    fn bytes(&self, program: &str, args: &[&str]) -> Vec<u8>;
    fn tree(&self, name: &str, posix: bool) -> PathBuf;
    fn build(&self, fs: &str, extra: &[&str], src: &Path, out: &Path);
    fn build_twice(&self, fs: &str, extra: &[&str], src: &Path) -> PathBuf;
}

impl FsSession for Session {
    fn bytes(&self, program: &str, args: &[&str]) -> Vec<u8> {
        run_expect(&mut self.cmd(program, args), 0).stdout
    }

    /// A tree owned by the test user. `posix` adds what FAT cannot hold
    /// (a symlink, quotes in names).
    fn tree(&self, name: &str, posix: bool) -> PathBuf {
        let root = self.path(name);
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("hello.txt", b"hello\n".to_vec()),
            ("empty", Vec::new()),
            ("sub/deep/file.bin", pattern(200 * 1024, 9)),
            ("Long Name With Spaces.txt", b"spaces\n".to_vec()),
        ];
        if posix {
            files.push(("odd \"quoted\" dir/x", b"q\n".to_vec()));
        }
        for (rel, data) in &files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        std::fs::create_dir_all(root.join("empty-dir")).unwrap();
        let script = root.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        if posix {
            std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
        }
        chown_r(&self.user, &root);
        root
    }

    fn build(&self, fs: &str, extra: &[&str], src: &Path, out: &Path) {
        let epoch = EPOCH.to_string();
        let mut a = vec!["fs", "build", "--type", fs, "--epoch", &epoch];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[s(src), s(out)]);
        self.run("sdk-tools", &a);
    }

    /// Build twice, touching the source in between; the bytes must match.
    fn build_twice(&self, fs: &str, extra: &[&str], src: &Path) -> PathBuf {
        let a = self.path(&format!("{fs}-1.img"));
        let b = self.path(&format!("{fs}-2.img"));
        self.build(fs, extra, src, &a);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        self.run("touch", &[s(&src.join("hello.txt")), s(&src.join("sub"))]);
        self.build(fs, extra, src, &b);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{fs}: two builds of the same tree differ"
        );
        a
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Compare an extracted tree with the source, file by file.
fn same_tree(src: &Path, got: &Path, with_symlink: bool) {
    for rel in [
        "hello.txt",
        "empty",
        "sub/deep/file.bin",
        "Long Name With Spaces.txt",
        "run.sh",
    ] {
        assert_eq!(
            std::fs::read(src.join(rel)).unwrap(),
            std::fs::read(got.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")),
            "{rel}"
        );
    }
    assert!(got.join("empty-dir").is_dir());
    if with_symlink {
        assert_eq!(
            std::fs::read_link(got.join("link")).unwrap(),
            Path::new("hello.txt")
        );
        assert_eq!(
            std::fs::read(got.join("odd \"quoted\" dir/x")).unwrap(),
            b"q\n"
        );
    }
}

#[test]
fn ext4_is_clean_deterministic_root_owned_and_read_only() {
    let env = Session::new();
    let src = env.tree("tree", true);
    let img = env.build_twice(
        "ext4",
        &[
            "--label",
            "USR-A",
            "--uuid",
            UUID,
            "--size",
            "16MiB",
            "--all-root",
        ],
        &src,
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    env.run("fsck.ext4", &["-fn", s(&img)]);
    let sb = env.run("dumpe2fs", &["-h", s(&img)]);
    assert!(
        sb.contains(&format!("Filesystem UUID:          {UUID}")),
        "{sb}"
    );
    assert!(sb.contains("Filesystem volume name:   USR-A"), "{sb}");
    let features = sb
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap();
    assert!(features.contains("read-only"), "{features}");
    assert!(!features.contains("has_journal"), "{features}");
    for rel in ["hello.txt", "sub/deep/file.bin", "odd \"quoted\" dir/x"] {
        let got = env.bytes(
            "debugfs",
            &[
                "-R",
                &format!("cat \"/{}\"", rel.replace('"', "\"\"")),
                s(&img),
            ],
        );
        assert_eq!(got, std::fs::read(src.join(rel)).unwrap(), "{rel}");
    }
    let epoch_hex = format!("0x{EPOCH:08x}");
    for rel in ["/", "/hello.txt", "/sub", "/link", "/lost+found"] {
        let st = env.run("debugfs", &["-R", &format!("stat \"{rel}\""), s(&img)]);
        assert!(st.contains("User:     0   Group:     0"), "{rel}: {st}");
        let stamps = st.lines().filter(|l| l.contains("time: ")).count();
        let fixed = st
            .lines()
            .filter(|l| l.contains("time: ") && l.contains(&epoch_hex))
            .count();
        assert_eq!((stamps, fixed), (4, 4), "{rel}: {st}");
    }
    let link = env.run("debugfs", &["-R", "stat /link", s(&img)]);
    assert!(link.contains("Fast link dest: \"hello.txt\""), "{link}");
    let script = env.run("debugfs", &["-R", "stat /run.sh", s(&img)]);
    assert!(script.contains("Mode:  0755"), "{script}");

    // Without --all-root the owner is the source's.
    let kept = env.path("kept.img");
    env.build("ext4", &["--size", "16MiB", "--writable"], &src, &kept);
    let st = env.run("debugfs", &["-R", "stat /hello.txt", s(&kept)]);
    assert!(st.contains(&format!("User:  {:>4}", env.user.uid)), "{st}");
    env.run("fsck.ext4", &["-fn", s(&kept)]);
}

#[test]
fn erofs_is_clean_deterministic_and_reads_back() {
    let env = Session::new();
    let src = env.tree("tree", true);
    let img = env.build_twice("erofs", &["--uuid", UUID, "--all-root"], &src);
    env.run("fsck.erofs", &[s(&img)]);
    let out = env.path("extracted");
    env.run("fsck.erofs", &[&format!("--extract={}", s(&out)), s(&img)]);
    same_tree(&src, &out, true);
    let sb = env.run("dump.erofs", &["-s", s(&img)]);
    assert!(sb.contains(UUID), "{sb}");
    let st = env.run("dump.erofs", &["--path=/hello.txt", s(&img)]);
    assert!(st.contains("Uid: 0   Gid: 0"), "{st}");
    assert!(st.contains("Timestamp: 2023-11-14 22:13:20"), "{st}");
}

#[test]
fn squashfs_is_clean_deterministic_and_reads_back() {
    let env = Session::new();
    let src = env.tree("tree", true);
    let img = env.build_twice("squashfs", &["--all-root"], &src);
    let list = env.run("unsquashfs", &["-lln", s(&img)]);
    for line in list.lines().filter(|l| l.contains("squashfs-root/")) {
        assert!(line.contains(" 0/0 "), "not root-owned: {line}");
        assert!(line.contains("2023-11-14 22:13"), "timestamp: {line}");
    }
    assert!(list.contains("squashfs-root/sub/deep/file.bin"), "{list}");
    let out = env.path("extracted");
    env.run("unsquashfs", &["-no-xattrs", "-d", s(&out), s(&img)]);
    same_tree(&src, &out, true);
    let forced = env.path("forced.img");
    env.build("squashfs", &["--owner", "123:456"], &src, &forced);
    let list = env.run("unsquashfs", &["-lln", s(&forced)]);
    assert!(
        list.lines()
            .filter(|l| l.contains("squashfs-root/"))
            .all(|l| l.contains(" 123/456 ")),
        "{list}"
    );
}

#[test]
fn vfat_is_clean_deterministic_and_reads_back_with_mtools() {
    let env = Session::new();
    let src = env.tree("tree", false);
    let img = env.build_twice(
        "vfat",
        &["--label", "EFI-SYSTEM", "--uuid", UUID, "--size", "34MiB"],
        &src,
    );
    env.run("fsck.vfat", &["-n", s(&img)]);
    let info = env.run("minfo", &["-i", s(&img), "::"]);
    assert!(
        info.to_lowercase().contains("serial number: 0e5ab1a5"),
        "{info}"
    );
    assert!(info.contains("EFI-SYSTEM"), "{info}");
    let out = env.path("extracted");
    std::fs::create_dir(&out).unwrap();
    chown_r(&env.user, &out);
    let mut c = env.cmd("mcopy", &["-s", "-n", "-i", s(&img), "::/*", s(&out)]);
    c.env("MTOOLS_SKIP_CHECK", "1");
    run_ok(&mut c);
    same_tree(&src, &out, false);
    let dir = env.run("mdir", &["-i", s(&img), "::/sub"]);
    assert!(
        dir.contains("2023-11-14"),
        "timestamps from the epoch: {dir}"
    );
}

#[test]
fn bad_requests_exit_2_and_write_nothing() {
    let env = Session::new();
    let src = env.tree("tree", true);
    let out = env.path("out.img");
    for (args, needle) in [
        (vec!["--type", "btrfs"], "unknown filesystem"),
        (vec!["--type", "squashfs", "--label", "X"], "no label"),
        (
            vec!["--type", "ext4", "--label", "a-label-longer-than-16"],
            "longer than 16",
        ),
        (
            vec!["--type", "vfat", "--label", "LONGER-THAN-11"],
            "11 ASCII",
        ),
        (vec!["--type", "ext4", "--owner", "root"], "UID:GID"),
        (vec!["--type", "ext4", "--size", "10MB"], "unknown unit"),
    ] {
        let mut a = vec!["fs", "build"];
        a.extend(args);
        a.extend([s(&src), s(&out)]);
        let e = run_bad_input(&mut env.cmd("sdk-tools", &a));
        assert!(e.contains(needle), "{e}");
        assert!(!out.exists());
    }
    let e = run_bad_input(&mut env.cmd(
        "sdk-tools",
        &[
            "fs",
            "build",
            "--type",
            "ext4",
            s(&env.path("missing")),
            s(&out),
        ],
    ));
    assert!(e.contains("not a directory"), "{e}");
    // Nothing left behind in the output directory but what we made.
    let names: Vec<_> = std::fs::read_dir(env.scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".sdk-tools"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
