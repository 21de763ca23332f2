//! build_image and build_sysext, run as the unprivileged test user on a
//! small distro repo (a test board with a small disk layout) and checked
//! with tools nobody here wrote: sfdisk, veritysetup, fsck.ext4, debugfs,
//! unsquashfs, fsck.erofs, skopeo, umoci.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sdk_e2e::{Scratch, TestUser, chown_r, run_expect, run_ok};

/// A distro repo with the test board, and a staging root beside it.
struct Fixture {
    user: TestUser,
    scratch: Scratch,
}

impl Fixture {
    fn new() -> Fixture {
        let user = TestUser::get();
        let scratch = Scratch::new(&user);
        let repo = scratch.path().join("repo");
        fs::create_dir_all(&repo).unwrap();
        fs::write(
            repo.join("sdk-version.toml"),
            "sdk-version = \"2025.01.0\"\nos-version = \"1.2.3\"\n",
        )
        .unwrap();
        sdk_e2e::write_test_board(&repo);
        // Local files for every board, and the board's own, which win;
        // modes from overrides.toml, not from the checkout.
        let w = |p: PathBuf, data: &[u8], mode: u32| {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        w(
            repo.join("overrides/usr/lib/motd.d/10-local"),
            b"repo motd\n",
            0o600,
        );
        w(
            repo.join("overrides/usr/libexec/local-tool"),
            b"#!/bin/sh\n",
            0o700,
        );
        w(repo.join("overrides/etc/local.conf"), b"x = 1\n", 0o666);
        fs::write(
            repo.join("overrides.toml"),
            "[[path]]\npath = \"usr/libexec/local-tool\"\nmode = \"0750\"\n",
        )
        .unwrap();
        w(
            repo.join("profiles/testboard/overrides/usr/lib/motd.d/10-local"),
            b"board motd\n",
            0o644,
        );
        let root = scratch.path().join("root");
        let w = |p: &str, data: &[u8], mode: u32| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        w("usr/bin/hello", b"#!/bin/sh\necho hello\n", 0o755);
        w("usr/bin/helper", b"setuid helper\n", 0o4755);
        let lib: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        w("usr/lib/libdemo.so.1", &lib, 0o644);
        std::os::unix::fs::symlink("libdemo.so.1", root.join("usr/lib/libdemo.so")).unwrap();
        w("usr/share/private/key", b"secret\n", 0o600);
        fs::set_permissions(
            root.join("usr/share/private"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        w("usr/share/doc/owned", b"owned by 1234\n", 0o644);
        w("etc/os-release", b"ID=testos\nVERSION_ID=1.2.3\n", 0o644);
        w(
            "usr/lib/modules/6.1.0-test/vmlinuz",
            b"not really a kernel\n",
            0o644,
        );
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        chown_r(&user, scratch.path());
        // chown clears setuid; set it again.
        fs::set_permissions(
            root.join("usr/bin/helper"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        if user.name.is_some() {
            // A file owned by someone else than the builder keeps its owner.
            let st = Command::new("chown")
                .args(["1234:1234"])
                .arg(root.join("usr/share/doc/owned"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        Fixture { user, scratch }
    }

    fn repo(&self) -> PathBuf {
        self.scratch.path().join("repo")
    }

    fn root(&self) -> PathBuf {
        self.scratch.path().join("root")
    }

    fn tool(&self, verb: &str) -> Command {
        let mut c = self.user.command(&self.scratch, "sdk-tools");
        c.arg(verb).current_dir(self.repo());
        c
    }

    /// `build_image --root ROOT --output OUT EXTRA...`.
    fn build_cmd(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = self.tool("build_image");
        c.args(["--board", "testboard", "--root"])
            .arg(self.root())
            .arg("--output")
            .arg(out)
            .args(extra);
        c
    }

    /// `build_image --root` into `out`, returning the published folder.
    fn build(&self, out: &Path, extra: &[&str]) -> PathBuf {
        run_ok(&mut self.build_cmd(out, extra));
        let latest = out.join("latest");
        out.join(fs::read_link(&latest).expect("latest is a symlink"))
    }
}

fn images_dir(f: &Fixture, name: &str) -> PathBuf {
    f.scratch.path().join(name)
}

/// `KEY=value` lines.
fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn one(dir: &Path, suffix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one *{suffix} in {}: {found:?}",
        dir.display()
    );
    found.pop().unwrap()
}

#[derive(Debug)]
struct Part {
    name: String,
    start: u64,
    size: u64,
    attrs: String,
}

fn sfdisk(image: &Path) -> Vec<Part> {
    let out = run_ok(Command::new("sfdisk").arg("--json").arg(image));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            name: p["name"].as_str().unwrap_or("").to_string(),
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
            attrs: p["attrs"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn extract(image: &Path, part: &Part, out: &Path) {
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", out.display()))
            .arg("bs=512")
            .arg(format!("skip={}", part.start / 512))
            .arg(format!("count={}", part.size / 512))
            .arg("status=none"),
    );
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

/// The manifest's digest of `path`, worked out with coreutils as the
/// README says: `sha256` for a file, `blocks-sha256` (the sha256 over each
/// 1 MiB block's sha256) for the sparse disk image.
fn manifest_digest_holds(a: &serde_json::Value, path: &Path) -> bool {
    if let Some(want) = a["sha256"].as_str() {
        return want == sha256(path);
    }
    let want = a["blocks-sha256"]
        .as_str()
        .expect("sha256 or blocks-sha256");
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(
                "split -b 1048576 --filter='sha256sum | cut -c1-64 | xxd -r -p' \"$0\" | sha256sum",
            )
            .arg(path),
    );
    want == out.split_whitespace().next().unwrap()
}

/// `ls -l`-style string of an octal st_mode, as `_contents.txt` writes it.
fn mode_string(m: u32) -> String {
    let t = match m & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, on, off) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let b = (m >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(match (b & 1 != 0, m & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            _ => '-',
        });
    }
    s
}

fn verity_verify(usr: &Path, v: &BTreeMap<String, String>) -> std::process::Output {
    Command::new("veritysetup")
        .arg("verify")
        .arg(usr)
        .arg(usr)
        .arg(&v["VERITY_ROOT_HASH"])
        .arg(format!("--hash-offset={}", v["VERITY_HASH_OFFSET"]))
        .output()
        .unwrap()
}

#[test]
fn disk_image_has_the_layout_verity_fsck_clean_filesystems_and_true_contents() {
    let f = Fixture::new();
    let out = images_dir(&f, "images");
    let run = f.build_cmd(&out, &[]).output().unwrap();
    assert!(run.status.success(), "{run:?}");
    // Not on a terminal: every stage as a timestamped line when it starts
    // and when it ends, in order.
    let err = String::from_utf8_lossy(&run.stderr);
    let mut at = 0;
    for stage in [
        "install", "usr", "verity", "esp", "disk", "outputs", "publish",
    ] {
        for what in [
            format!(" build_image: {stage} ..."),
            format!(" build_image: {stage} done in "),
        ] {
            let line = err
                .lines()
                .enumerate()
                .skip(at)
                .find(|(_, l)| l.contains(&what));
            let (i, l) = line.unwrap_or_else(|| panic!("no `{what}` after line {at}: {err}"));
            assert!(
                l.as_bytes()[19] == b'Z' && l[..4].parse::<u32>().is_ok(),
                "{l}"
            );
            at = i + 1;
        }
    }
    let dir = out.join(fs::read_link(out.join("latest")).unwrap());
    assert!(
        dir.file_name().unwrap().to_string_lossy() == "developer-1.2.3-a1",
        "{}",
        dir.display()
    );
    let image = one(&dir, "_image.bin");
    assert!(
        image.ends_with("testos_developer_image.bin"),
        "{}",
        image.display()
    );

    // manifest.json: sha256 and size of every other artifact.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let arts = manifest["artifacts"].as_array().unwrap();
    let names: Vec<&str> = arts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for want in [
        "testos_developer_image.bin",
        "testos_developer_image_update.bin",
        "testos_developer_image_verity.txt",
        "testos_developer_image_contents.txt",
        "testos_developer_image_packages.txt",
        "testos_developer_image_sbom.json",
        "version.txt",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    for a in arts {
        let p = dir.join(a["name"].as_str().unwrap());
        assert!(manifest_digest_holds(a, &p), "{a}: {}", p.display());
        // Only the sparse disk image has the blocks digest.
        assert_eq!(
            a.get("blocks-sha256").is_some(),
            a["name"] == "testos_developer_image.bin",
            "{a}"
        );
        assert_eq!(a["size"].as_u64().unwrap(), fs::metadata(&p).unwrap().len());
    }
    let sbom: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("testos_developer_image_sbom.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");

    // The GPT, as sfdisk reads it: USR-A priority 1 + successful, USR-B
    // empty and not bootable.
    let parts = sfdisk(&image);
    let by = |n: &str| {
        parts
            .iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("{n} in {parts:?}"))
    };
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "ROOT"]
    );
    assert_eq!(by("USR-A").attrs, "GUID:48,56", "{parts:?}");
    assert_eq!(by("USR-B").attrs, "", "{parts:?}");
    assert_eq!(by("USR-A").size, 24 << 20);

    // USR-A verifies with the recorded root hash at the recorded offset.
    let v = kv(&fs::read_to_string(dir.join("testos_developer_image_verity.txt")).unwrap());
    let work = f.scratch.path().join("check");
    fs::create_dir_all(&work).unwrap();
    let usr = work.join("usr-a");
    extract(&image, by("USR-A"), &usr);
    let ok = verity_verify(&usr, &v);
    assert!(
        ok.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The update payload is USR-A's filesystem and tree.
    let update = fs::read(dir.join("testos_developer_image_update.bin")).unwrap();
    assert_eq!(&fs::read(&usr).unwrap()[..update.len()], &update[..]);
    let offset: u64 = v["VERITY_HASH_OFFSET"].parse().unwrap();
    assert_eq!(offset % 4096, 0);
    assert!(offset < update.len() as u64);

    run_ok(Command::new("fsck.ext4").arg("-fn").arg(&usr));
    let root_part = work.join("root");
    extract(&image, by("ROOT"), &root_part);
    run_ok(Command::new("fsck.ext4").arg("-fn").arg(&root_part));

    // The boot configuration on the ESP carries the root hash.
    let esp = work.join("esp");
    extract(&image, by("EFI-SYSTEM"), &esp);
    let entries = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-/", "-i"])
            .arg(&esp)
            .arg("::/loader/entries"),
    );
    let entry = entries
        .lines()
        .next()
        .expect("a loader entry")
        .trim()
        .to_string();
    let text = run_ok(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(&entry),
    );
    let hash = &v["VERITY_ROOT_HASH"];
    assert!(text.contains(&format!(" usrhash={hash}")), "{text}");
    assert!(text.contains(&format!("verity.usrhash={hash}")), "{text}");
    // The board's kernel-cmdline words, in this entry and in the USR-B one
    // a slot switch writes.
    assert!(
        text.contains(" systemd.log_level=info sdk.test=1"),
        "{text}"
    );
    let copy = work.join("switched.bin");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&image)
            .arg(&copy),
    );
    let update = one(&dir, "_image_update.bin");
    run_ok(
        Command::new(sdk_e2e::bin_dir().join("sdk-tools"))
            .args(["boot", "set-slot"])
            .arg(&copy)
            .args(["--slot", "B", "--payload"])
            .arg(&update)
            .args(["--usrhash", hash.as_str()]),
    );
    let esp_b = work.join("esp-b");
    extract(&copy, by("EFI-SYSTEM"), &esp_b);
    let b_entry = run_ok(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp_b)
            .arg("::/loader/entries/usr-b+1.conf"),
    );
    assert!(
        b_entry.contains("PARTLABEL=USR-B") || b_entry.contains("verity.usr=PARTUUID="),
        "{b_entry}"
    );
    assert!(
        b_entry.contains(" systemd.log_level=info sdk.test=1"),
        "{b_entry}"
    );

    // _contents.txt says what debugfs finds in USR-A: paths, modes,
    // owners (root:root although an unprivileged user built it), sizes,
    // and file hashes.
    let contents = fs::read_to_string(dir.join("testos_developer_image_contents.txt")).unwrap();
    let mut listed: BTreeMap<String, (String, String, String, String)> = BTreeMap::new();
    for line in contents.lines() {
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c.len(), 5, "{line}");
        let path = c[0].strip_prefix("/usr").unwrap().to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        listed.insert(path, (c[1].into(), c[2].into(), c[3].into(), c[4].into()));
    }
    let dirs: Vec<String> = listed
        .iter()
        .filter(|(_, v)| v.0.starts_with('d'))
        .map(|(k, _)| k.clone())
        .collect();
    let dumps = work.join("dumps");
    fs::create_dir_all(&dumps).unwrap();
    let mut script = String::new();
    for d in &dirs {
        script += &format!("ls -p \"{d}\"\n");
    }
    let files: Vec<String> = listed
        .iter()
        .filter(|(_, v)| v.0.starts_with('-'))
        .map(|(k, _)| k.clone())
        .collect();
    for (i, p) in files.iter().enumerate() {
        script += &format!("dump \"{p}\" \"{}/{i}\"\n", dumps.display());
    }
    fs::write(work.join("script"), script).unwrap();
    let ls = run_ok(
        Command::new("debugfs")
            .arg("-f")
            .arg(work.join("script"))
            .arg(&usr),
    );
    let mut seen: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    let mut cwd = String::new();
    for line in ls.lines() {
        if let Some(d) = line.strip_prefix("debugfs: ls -p ") {
            cwd = d.trim_matches('"').to_string();
            continue;
        }
        // /inode/mode/uid/gid/name/size/
        let c: Vec<&str> = line.split('/').collect();
        if !line.starts_with('/')
            || c.len() < 7
            || c[5] == "."
            || c[5] == ".."
            || c[5] == "lost+found"
        {
            continue;
        }
        let path = if cwd == "/" {
            format!("/{}", c[5])
        } else {
            format!("{cwd}/{}", c[5])
        };
        let mode = u32::from_str_radix(c[2], 8).unwrap();
        seen.insert(
            path,
            (
                mode_string(mode),
                format!("{}:{}", c[3], c[4]),
                c[6].to_string(),
            ),
        );
    }
    let listed_paths: Vec<&String> = listed.keys().filter(|k| k.as_str() != "/").collect();
    let seen_paths: Vec<&String> = seen.keys().collect();
    assert_eq!(
        listed_paths, seen_paths,
        "_contents.txt and debugfs list different paths"
    );
    for (path, (mode, owner, size)) in &seen {
        let l = &listed[path];
        assert_eq!((&l.0, &l.1), (mode, owner), "{path}");
        if mode.starts_with('-') {
            assert_eq!(&l.2, size, "{path}");
        }
    }
    for (i, p) in files.iter().enumerate() {
        assert_eq!(sha256(&dumps.join(i.to_string())), listed[p].3, "{p}");
    }
    assert_eq!(listed["/bin/helper"].0, "-rwsr-xr-x");
    assert_eq!(listed["/share/private"].0, "drwx------");
    assert_eq!(listed["/bin/hello"].1, "0:0");
    if f.user.name.is_some() {
        assert_eq!(listed["/share/doc/owned"].1, "1234:1234");
    }
    assert!(
        listed.contains_key("/share/factory/etc/os-release"),
        "/etc defaults under /usr/share/factory"
    );
    // The overrides, as debugfs found them (the loop above): fixed and
    // declared modes and owners, /etc defaults, the board's over the root's.
    assert_eq!(listed["/lib/motd.d/10-local"].0, "-rw-r--r--");
    assert_eq!(
        (
            &listed["/libexec/local-tool"].0,
            &listed["/libexec/local-tool"].1
        ),
        (&"-rwxr-x---".to_string(), &"0:0".to_string())
    );
    assert_eq!(listed["/share/factory/etc/local.conf"].0, "-rw-r--r--");
    let expected = work.join("board-motd");
    fs::write(&expected, b"board motd\n").unwrap();
    assert_eq!(listed["/lib/motd.d/10-local"].3, sha256(&expected));

    // One flipped byte in USR-A's data: veritysetup refuses it.
    let mut bytes = fs::read(&usr).unwrap();
    bytes[8192 + 17] ^= 0x01;
    fs::write(&usr, bytes).unwrap();
    let bad = verity_verify(&usr, &v);
    assert!(!bad.status.success(), "a flipped byte went unnoticed");
}

/// Build with the layout `variant` twice: the images must be identical and
/// USR-A must verify. Returns the first build's update payload.
fn built_twice_alike(f: &Fixture, variant: &str) -> PathBuf {
    let x = f.build(
        &images_dir(f, &format!("x-{variant}")),
        &["--disk-layout", variant],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let y = f.build(
        &images_dir(f, &format!("y-{variant}")),
        &["--disk-layout", variant],
    );
    let img = "testos_developer_image.bin";
    assert!(
        fs::read(x.join(img)).unwrap() == fs::read(y.join(img)).unwrap(),
        "{variant}: two builds differ"
    );
    let v = kv(&fs::read_to_string(x.join("testos_developer_image_verity.txt")).unwrap());
    let update = x.join("testos_developer_image_update.bin");
    let ok = verity_verify(&update, &v);
    assert!(
        ok.status.success(),
        "{variant}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    update
}

#[test]
fn two_builds_from_the_same_inputs_are_byte_identical() {
    let f = Fixture::new();
    let a = f.build(&images_dir(&f, "a"), &["--check-reproducible"]);
    // A second later, so anything taken from the clock would show.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = f.build(&images_dir(&f, "b"), &[]);
    for name in [
        "testos_developer_image.bin",
        "testos_developer_image_update.bin",
        "manifest.json",
    ] {
        assert!(
            fs::read(a.join(name)).unwrap() == fs::read(b.join(name)).unwrap(),
            "{name} differs between two builds"
        );
    }
    // squashfs USR carries per-file owners too, and builds reproducibly.
    let update = built_twice_alike(&f, "squashfs");
    let list = run_ok(Command::new("unsquashfs").arg("-lln").arg(&update));
    assert!(list.contains("-rwsr-xr-x 0/0"), "{list}");
    if f.user.name.is_some() {
        assert!(list.contains("-rw-r--r-- 1234/1234"), "{list}");
        // erofs-utils 1.5 gives every file one owner: a tree with another
        // owner is refused, saying which file and what to use.
        let mut c = f.tool("build_image");
        c.args(["--board", "testboard", "--disk-layout", "erofs", "--root"])
            .arg(f.root())
            .arg("--output")
            .arg(images_dir(&f, "x-erofs"));
        assert_one_line_exit_2(&run_expect(&mut c, 2), "/share/doc/owned");
        fs::remove_file(f.root().join("usr/share/doc/owned")).unwrap();
    }
    let update = built_twice_alike(&f, "erofs");
    let v = kv(
        &fs::read_to_string(update.with_file_name("testos_developer_image_verity.txt")).unwrap(),
    );
    let fs_only = f.scratch.path().join("erofs-fs");
    let offset: usize = v["VERITY_HASH_OFFSET"].parse().unwrap();
    fs::write(&fs_only, &fs::read(&update).unwrap()[..offset]).unwrap();
    run_ok(Command::new("fsck.erofs").arg(&fs_only));
}

fn assert_one_line_exit_2(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // Stages that started before the problem was found have their
    // progress lines; the problem itself is one line.
    assert_eq!(
        sdk_e2e::error_lines(&err).len(),
        1,
        "one line wanted: {err}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn bad_input_exits_2_in_one_line_and_leaves_latest_alone() {
    let f = Fixture::new();
    let out = images_dir(&f, "images");
    let first = f.build(&out, &[]);
    let latest = || fs::read_link(out.join("latest")).unwrap();
    let before = latest();

    let run = |extra: &[&str], root: bool| {
        let mut c = f.tool("build_image");
        c.args(["--board", "testboard", "--output"])
            .arg(&out)
            .args(extra);
        if root {
            c.arg("--root").arg(f.root());
        }
        run_expect(&mut c, 2)
    };
    // Same version again without --replace.
    assert_one_line_exit_2(&run(&[], true), "--replace");
    // USR-A too small: says by how much.
    let o = run(&["--replace", "--disk-layout", "tiny"], true);
    assert_one_line_exit_2(&o, "more");
    assert!(String::from_utf8_lossy(&o.stderr).contains("MiB"));
    // No cross-root for the board: nothing built yet.
    let empty = f.scratch.path().join("no-build-root");
    fs::create_dir_all(&empty).unwrap();
    chown_r(&f.user, &empty);
    let o = run(
        &["--replace", "--build-root", empty.to_str().unwrap()],
        false,
    );
    assert_one_line_exit_2(&o, "setup_board");
    // The OS meta-package built for another board.
    let br = f.scratch.path().join("other-build-root");
    let db = br.join("testboard/var/lib/sdk/db/meta");
    fs::create_dir_all(&db).unwrap();
    fs::write(
        br.join("testboard/var/lib/sdk/board.json"),
        r#"{"board":"testboard","arch":"x86_64","debian-arch":"amd64","target":"x86_64-linux-gnu","profile-sha256":"0"}"#,
    )
    .unwrap();
    fs::write(
        db.join("os.json"),
        r#"{"format":1,"name":"meta/os","version":"1","kind":"meta","description":"","board":"arm64-usr","arch":"aarch64","debian-arch":"arm64","input-hash":"00000000000000000000000000000000","depends":[],"build-depends":[],"archive":"1-0000000000000000.tar.zst","archive-sha256":"00","files":[]}"#,
    )
    .unwrap();
    chown_r(&f.user, &br);
    let o = run(&["--replace", "--build-root", br.to_str().unwrap()], false);
    assert_one_line_exit_2(&o, "arm64-usr");
    // An unknown board.
    let mut c = f.tool("build_image");
    c.args(["--board", "no-such-board", "--root"]).arg(f.root());
    assert_one_line_exit_2(&run_expect(&mut c, 2), "no-such-board");
    // Overrides: a path outside USR, a declared path no tree has, and a
    // directory over one of the image's files.
    let ov = f.repo().join("overrides");
    let bad = |p: &str, data: Option<&[u8]>, want: &str| {
        let path = ov.join(p);
        match data {
            Some(d) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, d).unwrap();
            }
            None => fs::create_dir_all(&path).unwrap(),
        }
        chown_r(&f.user, &ov);
        assert_one_line_exit_2(&run(&["--replace"], true), want);
        let top = ov.join(
            p.split('/')
                .take(if data.is_some() { 1 } else { 3 })
                .collect::<Vec<_>>()
                .join("/"),
        );
        if top.is_dir() {
            fs::remove_dir_all(&top).unwrap();
        } else {
            fs::remove_file(&top).unwrap();
        }
    };
    bad("var/lib/state", Some(b"x"), "outside USR");
    bad("usr/bin/hello/inner", None, "an override replaces files");
    let manifest = f.repo().join("overrides.toml");
    let kept = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        format!("{kept}[[path]]\npath = \"usr/missing\"\n"),
    )
    .unwrap();
    assert_one_line_exit_2(&run(&["--replace"], true), "usr/missing");
    fs::write(&manifest, kept).unwrap();

    assert_eq!(latest(), before);
    assert!(first.join("manifest.json").exists());
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_latest_alone() {
    let f = Fixture::new();
    assert!(
        f.user.name.is_some(),
        "this test mounts a small tmpfs and needs to run as root (make test)"
    );
    let out = images_dir(&f, "small");
    fs::create_dir_all(&out).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"])
            .arg(&out),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(out.clone());
    chown_r(&f.user, &out);
    let first = f.build(&out, &[]);
    // Leave 256 KiB: not enough for a second build beside the first.
    let df = run_ok(Command::new("df").args(["--output=avail", "-B1"]).arg(&out));
    let avail: u64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
    run_ok(
        Command::new("fallocate")
            .arg("-l")
            .arg((avail - (256 << 10)).to_string())
            .arg(out.join("filler")),
    );
    let o = run_expect(&mut f.build_cmd(&out, &["--replace"]), 2);
    assert_one_line_exit_2(&o, "space");
    assert_eq!(out.join(fs::read_link(out.join("latest")).unwrap()), first);
    assert!(first.join("manifest.json").exists());
}

#[test]
fn killed_builds_never_leave_latest_incomplete() {
    let f = Fixture::new();
    let out = images_dir(&f, "images");
    f.build(&out, &[]);
    for delay_ms in [30u64, 150, 400, 900] {
        let mut c = f.build_cmd(&out, &["--replace"]);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever moment it died at, latest is a complete, verified image.
        let dir = out.join(fs::read_link(out.join("latest")).unwrap());
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        for a in manifest["artifacts"].as_array().unwrap() {
            let p = dir.join(a["name"].as_str().unwrap());
            assert!(
                manifest_digest_holds(a, &p),
                "after kill at {delay_ms} ms: {a}"
            );
        }
    }
    // And the next build succeeds and cleans up after the killed ones.
    let last = f.build(&out, &["--replace"]);
    assert!(last.join("manifest.json").exists());
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".lock"))
        .collect();
    assert_eq!(names.len(), 2, "one attempt and latest: {names:?}");
}

#[test]
fn sysext_images_carry_the_release_file_and_read_back() {
    let f = Fixture::new();
    let ext = f.scratch.path().join("ext");
    fs::create_dir_all(ext.join("usr/bin")).unwrap();
    fs::write(ext.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(ext.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    chown_r(&f.user, &ext);
    let out = images_dir(&f, "sysext");
    let release = "ID=_any\nVERSION_ID=1.2.3\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n";

    let mut c = f.tool("build_sysext");
    c.args(["--board", "testboard", "--root"])
        .arg(&ext)
        .arg("--output")
        .arg(&out)
        .arg("tools");
    run_ok(&mut c);
    let raw = out.join("tools.raw");
    let list = run_ok(Command::new("unsquashfs").arg("-lln").arg(&raw));
    assert!(
        list.contains("squashfs-root/usr/lib/extension-release.d/extension-release.tools"),
        "{list}"
    );
    assert!(
        list.contains("-rwxr-xr-x 0/0"),
        "root-owned although built unprivileged: {list}"
    );
    assert!(!list.contains("squashfs-root/etc"), "{list}");
    let got = run_ok(
        Command::new("unsquashfs")
            .arg("-cat")
            .arg(&raw)
            .arg("usr/lib/extension-release.d/extension-release.tools"),
    );
    assert_eq!(got, release);
    // Not again without --replace.
    let mut c = f.tool("build_sysext");
    c.args(["--board", "testboard", "--root"])
        .arg(&ext)
        .arg("--output")
        .arg(&out)
        .arg("tools");
    assert_one_line_exit_2(&run_expect(&mut c, 2), "--replace");

    let mut c = f.tool("build_sysext");
    c.args([
        "--board",
        "testboard",
        "--fs",
        "erofs",
        "--verity",
        "--root",
    ])
    .arg(&ext)
    .arg("--output")
    .arg(&out)
    .arg("tools-erofs");
    run_ok(&mut c);
    let raw = out.join("tools-erofs.raw");
    let x = f.scratch.path().join("x");
    run_ok(
        Command::new("fsck.erofs")
            .arg(format!("--extract={}", x.display()))
            .arg(&raw),
    );
    let got =
        fs::read_to_string(x.join("usr/lib/extension-release.d/extension-release.tools-erofs"))
            .unwrap();
    assert_eq!(got, release);
    let root_hash = fs::read_to_string(out.join("tools-erofs.roothash")).unwrap();
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&raw)
            .arg(out.join("tools-erofs.verity"))
            .arg(root_hash.trim()),
    );
}

#[test]
fn oci_export_is_an_image_skopeo_reads_and_layers_build_back_into_a_disk() {
    let f = Fixture::new();
    let archive = f.scratch.path().join("os.tar");
    let mut c = f.tool("build_image");
    c.args(["--board", "testboard", "--root"])
        .arg(f.root())
        .arg("--oci")
        .arg(&archive);
    run_ok(&mut c);
    let inspect = run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display())),
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Architecture"], "amd64", "{inspect}");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);

    // The archive builds the same USR as the staging root it came from.
    let direct = f.build(&images_dir(&f, "direct"), &[]);
    let build_from = |archive: &Path, name: &str| {
        let mut c = f.tool("build_image");
        c.args(["--board", "testboard", "--from-oci"])
            .arg(archive)
            .arg("--output")
            .arg(images_dir(&f, name));
        run_ok(&mut c);
        images_dir(&f, name).join("latest")
    };
    let from_oci = build_from(&archive, "from-oci");
    let hash = |d: &Path| {
        kv(&fs::read_to_string(d.join("testos_developer_image_verity.txt")).unwrap())["VERITY_ROOT_HASH"].clone()
    };
    assert_eq!(hash(&direct), hash(&from_oci));

    // Layer on it with umoci (rootless), the coreos-assembler way: the
    // derived image's whiteout removes a file, the new layer adds one.
    let layout = f.scratch.path().join("layout");
    let bundle = f.scratch.path().join("bundle");
    let as_user = |prog: &str| f.user.command(&f.scratch, prog);
    run_ok(
        as_user("skopeo")
            .arg("copy")
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("oci:{}:base", layout.display())),
    );
    run_ok(
        as_user("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:base", layout.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    run_ok(as_user("rm").arg(rootfs.join("usr/bin/hello")));
    run_ok(
        as_user("sh")
            .arg("-c")
            .arg(format!("echo extra > {}/usr/bin/extra", rootfs.display())),
    );
    run_ok(
        as_user("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:derived", layout.display()))
            .arg(&bundle),
    );
    let derived = f.scratch.path().join("derived.tar");
    run_ok(
        as_user("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:derived", layout.display()))
            .arg(format!("oci-archive:{}", derived.display())),
    );
    let d = build_from(&derived, "derived");
    let contents = fs::read_to_string(d.join("testos_developer_image_contents.txt")).unwrap();
    assert!(
        !contents.contains("/usr/bin/hello\t"),
        "whiteout applied: {contents}"
    );
    let extra = contents
        .lines()
        .find(|l| l.starts_with("/usr/bin/extra\t"))
        .expect("new layer's file");
    assert!(extra.contains("\t0:0\t"), "{extra}");
    assert_ne!(hash(&d), hash(&direct));
}

fn recipe(repo: &Path, name: &str, toml: &str, script: Option<&str>) {
    let dir = repo.join("packages").join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("package.toml"), toml).unwrap();
    if let Some(s) = script {
        fs::write(dir.join("build.sh"), s).unwrap();
    }
}

#[test]
fn images_come_from_the_boards_binary_packages() {
    let f = Fixture::new();
    let repo = f.repo();
    recipe(
        &repo,
        "app/hello",
        "version = \"1.0\"\nkind = \"build\"\n",
        Some(
            "install -Dm0755 /dev/null \"$DESTDIR/usr/bin/hello\"\n\
             echo 'echo hello' > \"$DESTDIR/usr/bin/hello\"\n\
             install -Dm4755 /dev/null \"$DESTDIR/usr/bin/helper\"\n\
             install -Dm0644 /dev/null \"$DESTDIR/etc/hello.conf\"\n\
             install -Dm0644 /dev/null \"$DESTDIR/usr/lib/os-release\"\n\
             echo ID=pkgos > \"$DESTDIR/usr/lib/os-release\"\n",
        ),
    );
    recipe(
        &repo,
        "sys-kernel/kernel",
        "version = \"6.1\"\nkind = \"build\"\n",
        Some(
            "mkdir -p \"$DESTDIR/usr/lib/modules/6.1.0-test\"\n\
             echo kernel > \"$DESTDIR/usr/lib/modules/6.1.0-test/vmlinuz\"\n",
        ),
    );
    recipe(
        &repo,
        "meta/os",
        "version = \"1\"\nkind = \"meta\"\ndepends = [\"app/hello\", \"sys-kernel/kernel\"]\n",
        None,
    );
    chown_r(&f.user, &repo);
    let build_root = f.scratch.path().join("build");
    let tool = |verb: &str| {
        let mut c = f.tool(verb);
        c.env("SDK_BUILD_ROOT", &build_root);
        c
    };
    run_ok(tool("setup_board").args(["--board", "testboard"]));
    // Built, but not the OS meta-package yet: a clear error.
    run_ok(tool("build_packages").args(["--board", "testboard", "app/hello"]));
    let out = images_dir(&f, "images");
    let mut c = tool("build_image");
    c.args(["--board", "testboard", "--output"]).arg(&out);
    assert_one_line_exit_2(&run_expect(&mut c, 2), "meta/os");
    assert!(!out.join("latest").exists());

    run_ok(tool("build_packages").args(["--board", "testboard"]));
    let mut c = tool("build_image");
    c.args(["--board", "testboard", "--output"]).arg(&out);
    run_ok(&mut c);
    let dir = out.join("latest");
    let packages = fs::read_to_string(dir.join("pkgos_developer_image_packages.txt")).unwrap();
    let names: Vec<&str> = packages
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["app/hello", "meta/os", "sys-kernel/kernel"],
        "{packages}"
    );
    let contents = fs::read_to_string(dir.join("pkgos_developer_image_contents.txt")).unwrap();
    let line = |p: &str| {
        contents
            .lines()
            .find(|l| l.starts_with(&format!("{p}\t")))
            .unwrap_or_else(|| panic!("{p} not in {contents}"))
            .to_string()
    };
    assert!(line("/usr/bin/helper").contains("-rwsr-xr-x\t0:0\t"));
    assert!(line("/usr/share/factory/etc/hello.conf").contains("\t0:0\t"));
    let sbom: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("pkgos_developer_image_sbom.json")).unwrap(),
    )
    .unwrap();
    let pkg = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "app/hello")
        .expect("app/hello in the SBOM");
    assert_eq!(pkg["versionInfo"], "1.0");
    assert_eq!(pkg["checksums"][0]["algorithm"], "SHA256");
    let v = kv(&fs::read_to_string(dir.join("pkgos_developer_image_verity.txt")).unwrap());
    let ok = verity_verify(&dir.join("pkgos_developer_image_update.bin"), &v);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// The hostile corpus as a layer of `build_image --from-oci` (a
/// docker-save archive, which the shared image reader takes too): the
/// staging table either refuses an entry (exit 2, one line) or keeps it
/// inside; nothing is written outside, and no half-built image is
/// published.
#[test]
fn hostile_layers_from_oci_write_nothing_outside() {
    use sdk_e2e::tars::{Tar, docker_save, hostile_corpus};
    let f = Fixture::new();
    let outside = f.scratch.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    chown_r(&f.user, &outside);
    let before: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let o = outside.display().to_string();
    for (name, hostile) in hostile_corpus(&o) {
        let layer = hostile(Tar::new().file("etc/os-release", "ID=testos\n")).bytes();
        let archive = f.scratch.path().join(format!("{name}.docker.tar"));
        fs::write(&archive, docker_save(std::slice::from_ref(&layer), &[])).unwrap();
        chown_r(&f.user, &archive);
        let out = images_dir(&f, name);
        let mut c = f.tool("build_image");
        c.args(["--board", "testboard", "--from-oci"])
            .arg(&archive)
            .arg("--output")
            .arg(&out);
        let r = c.output().unwrap();
        let code = r.status.code();
        assert!(
            code == Some(0) || code == Some(2),
            "{name}: exit {code:?}\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        if code == Some(2) {
            // Refused in one error line (an image without a kernel is
            // refused too: the corpus layers carry none).
            let err = String::from_utf8_lossy(&r.stderr);
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
            assert_eq!(errors.len(), 1, "{name}: {err}");
            assert!(!out.join("latest").exists(), "{name}: nothing published");
        }
        let found = Command::new("find")
            .arg(f.scratch.path())
            .args(["-name", "escape"])
            .output()
            .unwrap();
        assert!(
            found.stdout.is_empty(),
            "{name}: `..` left the staging tree: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
    let after: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after, "nothing created outside");
    assert_eq!(
        fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
}

#[test]
fn on_a_terminal_the_stages_show_as_they_go_without_timestamps() {
    let f = Fixture::new();
    let out = images_dir(&f, "tty-images");
    let mut c = f.user.command(&f.scratch, "tmux");
    c.current_dir(f.repo());
    let line = format!(
        "sdk-tools build_image --board testboard --root {} --output {}; echo build-rc-$?; sleep 300",
        f.root().display(),
        out.display()
    );
    let t = sdk_e2e::Tmux::start(c, &f.scratch, &line);
    t.wait_for(
        "the build to end",
        std::time::Duration::from_secs(120),
        |s| s.contains("build-rc-"),
    );
    let screen = t.screen();
    assert!(screen.contains("build-rc-0"), "{screen}");
    // Each stage's line stays with its time; the spinners are gone; no
    // timestamps (those are for logs).
    for stage in [
        "install", "usr", "verity", "esp", "disk", "outputs", "publish",
    ] {
        assert!(
            screen
                .lines()
                .any(|l| l.starts_with(&format!("build_image: {stage} ")) && l.contains('s')),
            "{stage}: {screen}"
        );
    }
    assert!(!screen.lines().any(sdk_e2e::is_progress_line), "{screen}");
}

#[test]
fn update_metadata_is_signed_and_checks_out_with_openssl() {
    let f = Fixture::new();
    let out = images_dir(&f, "signed");
    let run = f.build_cmd(&out, &[]).output().unwrap();
    assert!(run.status.success(), "{run:?}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("DEVELOPMENT key"),
        "every build says so: {err}"
    );
    let dir = out.join(fs::read_link(out.join("latest")).unwrap());
    let meta_path = dir.join("testos_developer_image_update.json");
    let sig = dir.join("testos_developer_image_update.json.sig");
    let dev_pub = f.repo().join("__build__/keys/update-dev.pem");
    let openssl_verify = |key: &Path| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(key)
            .args(["-rawin", "-in"])
            .arg(&meta_path)
            .arg("-sigfile")
            .arg(&sig)
            .output()
            .unwrap()
    };
    // openssl, as the outside oracle, checks the signature.
    let v = openssl_verify(&dev_pub);
    assert!(v.status.success(), "{v:?}");
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    let verity = kv(&fs::read_to_string(dir.join("testos_developer_image_verity.txt")).unwrap());
    let payload = dir.join("testos_developer_image_update.bin");
    assert_eq!(
        meta["payload"]["sha256"].as_str().unwrap(),
        sha256(&payload)
    );
    assert_eq!(
        meta["payload"]["size"].as_u64().unwrap(),
        fs::metadata(&payload).unwrap().len()
    );
    assert_eq!(
        meta["usr"]["root-hash"].as_str().unwrap(),
        verity["VERITY_ROOT_HASH"]
    );
    assert_eq!(meta["usr"]["salt"].as_str().unwrap(), verity["VERITY_SALT"]);
    assert_eq!(
        meta["usr"]["hash-offset"].as_u64().unwrap().to_string(),
        verity["VERITY_HASH_OFFSET"]
    );
    assert_eq!(
        (meta["board"].as_str(), meta["development-key"].as_bool()),
        (Some("testboard"), Some(true))
    );
    let key_id = meta["key-id"].as_str().unwrap().to_string();
    let version = kv(&fs::read_to_string(dir.join("version.txt")).unwrap());
    assert_eq!(version["UPDATE_KEY"], "development");
    // The OS trusts the key: its public half is in USR (under verity).
    let contents = fs::read_to_string(dir.join("testos_developer_image_contents.txt")).unwrap();
    assert!(
        contents.contains(&format!("/usr/share/sdk-update/keys/{key_id}.pem\t")),
        "{contents}"
    );
    // Our own check agrees; a changed payload or metadata is refused.
    let verify = |meta: &Path, payload: Option<&Path>| {
        let mut c = f.tool("update");
        c.arg("verify")
            .arg(meta)
            .arg("--keys")
            .arg(f.repo().join("__build__/keys"));
        if let Some(p) = payload {
            c.arg("--payload").arg(p);
        }
        c
    };
    let ok = run_ok(&mut verify(&meta_path, None));
    assert!(
        ok.contains(&format!("signed by {key_id} (a development key)")),
        "{ok}"
    );
    let bad_payload = f.scratch.path().join("tampered.bin");
    fs::copy(&payload, &bad_payload).unwrap();
    sdk_e2e::flip_bit(&bad_payload, 4096 * 3 + 17, 2);
    let out2 = run_expect(&mut verify(&meta_path, Some(&bad_payload)), 2);
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("the signed metadata says"),
        "{out2:?}"
    );
    let bad_meta = f.scratch.path().join("tampered.json");
    fs::write(
        &bad_meta,
        fs::read_to_string(&meta_path)
            .unwrap()
            .replace("\"1.2.3\"", "\"9.9.9\""),
    )
    .unwrap();
    fs::copy(&sig, f.scratch.path().join("tampered.json.sig")).unwrap();
    chown_r(&f.user, f.scratch.path());
    let out3 = run_expect(&mut verify(&bad_meta, Some(&payload)), 2);
    assert!(
        String::from_utf8_lossy(&out3.stderr).contains("does not match any trusted key"),
        "{out3:?}"
    );

    // A release key made by openssl, and a second key to rotate to: the
    // metadata names the release key, USR trusts both.
    let keys = f.scratch.path().join("release");
    fs::create_dir(&keys).unwrap();
    for name in ["release", "next"] {
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(keys.join(format!("{name}.key"))),
        );
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(keys.join(format!("{name}.key")))
                .arg("-out")
                .arg(keys.join(format!("{name}.pem"))),
        );
    }
    fs::create_dir(f.repo().join("update-keys")).unwrap();
    fs::copy(keys.join("next.pem"), f.repo().join("update-keys/next.pem")).unwrap();
    chown_r(&f.user, f.scratch.path());
    let mut c = f.build_cmd(&out, &["--replace", "--sign-key"]);
    c.arg(keys.join("release.key"));
    let run = c.output().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(
        !String::from_utf8_lossy(&run.stderr).contains("DEVELOPMENT"),
        "{run:?}"
    );
    let dir = out.join(fs::read_link(out.join("latest")).unwrap());
    let meta: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("testos_developer_image_update.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["development-key"], false);
    assert_ne!(meta["key-id"].as_str().unwrap(), key_id);
    let v = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(keys.join("release.pem"))
        .args(["-rawin", "-in"])
        .arg(dir.join("testos_developer_image_update.json"))
        .arg("-sigfile")
        .arg(dir.join("testos_developer_image_update.json.sig"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{v:?}");
    let contents = fs::read_to_string(dir.join("testos_developer_image_contents.txt")).unwrap();
    let trusted = contents
        .lines()
        .filter(|l| l.starts_with("/usr/share/sdk-update/keys/") && l.contains(".pem\t"))
        .count();
    assert_eq!(trusted, 2, "the release key and the next one: {contents}");

    // A key file that is no key: one line, exit 2, nothing published.
    let before = fs::read_link(out.join("latest")).unwrap();
    let mut c = f.build_cmd(&out, &["--replace", "--sign-key"]);
    c.arg(keys.join("release.pem"));
    let bad = run_expect(&mut c, 2);
    assert_one_line_exit_2(&bad, "not an ed25519 private key");
    assert_eq!(fs::read_link(out.join("latest")).unwrap(), before);
}
