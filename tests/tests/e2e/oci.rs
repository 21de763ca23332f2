//! Image import end to end, as the unprivileged test user: archives made by
//! independent tools (umoci, skopeo) and a docker-save tarball built here,
//! whiteouts and ownership in the store, a corpus of hostile tarballs,
//! damaged inputs (exit 2, store unchanged), kill -9 mid-import, and a
//! commit read back by skopeo and umoci.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sdk_e2e::tars::{Tar as T, docker_save, hostile_corpus, sha};
use sdk_e2e::{Scratch, TestUser, chown_r, run_bad_input, run_expect, run_ok, subuid_start};

fn sdk(user: &TestUser, s: &Scratch) -> Command {
    user.command(s, "sdk-run")
}

fn images_json(user: &TestUser, s: &Scratch) -> Vec<serde_json::Value> {
    let out = run_ok(sdk(user, s).args(["images", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn store_rootfs(s: &Scratch, digest: &str) -> PathBuf {
    s.path()
        .join("data/sdk-run/images")
        .join(digest)
        .join("rootfs")
}

fn import(user: &TestUser, s: &Scratch, what: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        sdk(user, s)
            .arg("import")
            .arg(what)
            .arg("--json")
            .args(extra),
    );
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn write(s: &Scratch, user: &TestUser, name: &str, data: &[u8]) -> PathBuf {
    let p = s.path().join(name);
    std::fs::write(&p, data).unwrap();
    chown_r(user, &p);
    p
}

/// Build a two-layer image with umoci (as the test user), copy it to an
/// OCI archive with skopeo; import the layout and the archive.
#[test]
fn umoci_and_skopeo_images_import_with_whiteouts() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let lay = s.path().join("layout");
    let b = s.path().join("bundle");
    let sh = |script: &str| {
        run_ok(
            user.command(&s, "sh")
                .args(["-euc", script])
                .env("L", &lay)
                .env("B", &b),
        )
    };
    sh(r#"umoci init --layout "$L"
umoci new --image "$L:t"
umoci unpack --rootless --image "$L:t" "$B"
mkdir -p "$B/rootfs/etc" "$B/rootfs/d"
echo one > "$B/rootfs/etc/a"; echo keep > "$B/rootfs/etc/b"
echo x > "$B/rootfs/d/x"; echo y > "$B/rootfs/d/y"
chmod 0600 "$B/rootfs/etc/b"
umoci repack --image "$L:t" "$B"
rm "$B/rootfs/etc/a"; rm -r "$B/rootfs/d"; mkdir "$B/rootfs/d"; echo z > "$B/rootfs/d/z"
umoci repack --image "$L:t" "$B"
umoci config --image "$L:t" --config.env FOO=bar --config.workingdir /srv
skopeo copy --quiet "oci:$L:t" "oci-archive:$PWD/img.oci.tar"
"#);
    let from_layout = import(&user, &s, &lay, &["--tag", "lay"]);
    assert_eq!(from_layout["kind"], "oci-layout");
    let digest = from_layout["digest"].as_str().unwrap().to_string();
    let r = store_rootfs(&s, &digest);
    assert!(!r.join("etc/a").exists(), "whiteout of etc/a applied");
    assert_eq!(std::fs::read_to_string(r.join("d/z")).unwrap(), "z\n");
    assert!(!r.join("d/x").exists() && !r.join("d/y").exists());
    // umoci --rootless records the user as root: root in the image is the
    // start of the subordinate range on the host.
    let m = std::fs::metadata(r.join("etc/b")).unwrap();
    assert_eq!(m.uid(), subuid_start(&user));
    assert_eq!(m.mode() & 0o7777, 0o600);

    // The same image through skopeo's archive: the same manifest digest.
    let from_archive = import(&user, &s, &s.path().join("img.oci.tar"), &[]);
    assert_eq!(from_archive["digest"], digest.as_str());
    assert_eq!(from_archive["existed"], true);
    let imgs = images_json(&user, &s);
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0]["tags"][0], "lay");
    let env = imgs[0]["config"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "FOO=bar"), "{env:?}");
    assert_eq!(imgs[0]["config"]["working-dir"], "/srv");

    run_ok(sdk(&user, &s).args(["rmi", "lay"]));
    assert!(images_json(&user, &s).is_empty());
    assert!(!s.path().join("data/sdk-run/images").join(&digest).exists());
}

#[test]
fn docker_save_tarball_with_owners_and_opaque_dirs() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let l1 = T::new()
        .dir("etc/")
        .file("etc/os-release", "ID=test\n")
        .owned("home-file", 1234)
        .dir("opq/")
        .file("opq/old", "old")
        .file("gone", "x")
        .hardlink("etc/os-release-link", "etc/os-release")
        .bytes();
    let l2 = T::new()
        .file("opq/new", "new")
        .file("opq/.wh..wh..opq", "")
        .file(".wh.gone", "")
        .bytes();
    let p = write(
        &s,
        &user,
        "docker.tar",
        &docker_save(&[l1, l2], &["PATH=/usr/bin:/bin", "SDK=1"]),
    );
    let v = import(&user, &s, &p, &[]);
    assert_eq!(v["kind"], "docker-save");
    let r = store_rootfs(&s, v["digest"].as_str().unwrap());
    let base = subuid_start(&user);
    assert_eq!(
        std::fs::metadata(r.join("etc/os-release")).unwrap().uid(),
        base
    );
    // uid 1234 inside: the map skips 1000 (the caller), so 1234 -> base + 1233.
    assert_eq!(
        std::fs::metadata(r.join("home-file")).unwrap().uid(),
        base + 1233
    );
    assert_eq!(
        std::fs::metadata(r.join("etc/os-release-link"))
            .unwrap()
            .ino(),
        std::fs::metadata(r.join("etc/os-release")).unwrap().ino()
    );
    assert!(r.join("opq/new").exists(), "same-layer entry kept");
    assert!(
        !r.join("opq/old").exists(),
        "opaque dir hides lower content"
    );
    assert!(!r.join("gone").exists());
    let imgs = images_json(&user, &s);
    assert_eq!(imgs[0]["config"]["working-dir"], "/work");
    assert_eq!(imgs[0]["config"]["user"], "0:0");
}

#[test]
fn hostile_tarballs_write_nothing_outside() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let outside = s.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    chown_r(&user, &outside);
    let o = outside.display().to_string();
    let corpus = hostile_corpus(&o);
    let before: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for (name, hostile) in &corpus {
        let tar = &hostile(T::new()).bytes();
        // As a rootfs tarball, and as a layer of an image.
        let p = write(&s, &user, &format!("{name}.tar"), tar);
        let out = run_expect(sdk(&user, &s).arg("import").arg(&p), 0);
        let err = String::from_utf8_lossy(&out.stderr);
        // Replacing a symlink by a file never follows it: nothing to report.
        assert!(
            *name == "symlink-replaced-file" || err.contains("skipped or neutralised"),
            "{name}: {err} {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let p = write(
            &s,
            &user,
            &format!("{name}.docker.tar"),
            &docker_save(std::slice::from_ref(tar), &[]),
        );
        run_expect(sdk(&user, &s).arg("import").arg(&p), 0);
    }
    // As `--rootfs X.tar` of a sandbox (over a busybox to start it): the
    // same hardened extractor, nothing lands outside its rootfs.
    for (name, hostile) in &corpus {
        let p = write(
            &s,
            &user,
            &format!("{name}.rootfs.tar"),
            &hostile(T::new().busybox()).bytes(),
        );
        let sandbox = format!("hostile-{name}");
        run_ok(
            sdk(&user, &s)
                .args(["-n", &sandbox, "--rootfs"])
                .arg(&p)
                .args(["--", "/bin/busybox", "true"]),
        );
        let dir = s.path().join("data/sdk-run/sandboxes").join(&sandbox);
        assert!(!dir.join("escape").exists(), "{name}: `..` left the rootfs");
        run_ok(sdk(&user, &s).args(["rm", "-f", &sandbox]));
    }
    let after: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after, "nothing created outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(
        !s.path().join("escape").exists() && !s.path().parent().unwrap().join("escape").exists()
    );
    // Every image is listed; what was neutralised landed inside.
    let imgs = images_json(&user, &s);
    assert_eq!(imgs.len(), corpus.len() * 2);
}

/// Damaged inputs fail with one line and exit 2; the store is unchanged.
#[test]
fn bad_inputs_exit_2_and_leave_the_store_unchanged() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let good = docker_save(&[T::new().file("f", "x").bytes()], &[]);
    let p = write(&s, &user, "good.tar", &good);
    import(&user, &s, &p, &[]);

    let lay = s.path().join("lay");
    run_ok(user.command(&s, "sh").args([
        "-euc",
        r#"umoci init --layout lay; umoci new --image lay:t
umoci unpack --rootless --image lay:t b; echo hello > b/rootfs/hello; umoci repack --image lay:t b
skopeo copy --quiet oci:lay:t oci-archive:img.tar"#,
    ]));
    // Flip a byte in the layer blob (the largest blob).
    let blob = std::fs::read_dir(lay.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // Truncate the archive.
    let archive = std::fs::read(s.path().join("img.tar")).unwrap();
    let cut = write(&s, &user, "cut.tar", &archive[..archive.len() / 2 + 7]);
    // A layer with a media type nobody knows (digests consistent).
    let odd = write_layout_with_media_type(&s, &user, "application/vnd.example.layer.v1.squashfs");
    // A truncated gzip rootfs tarball.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&T::new().file("a", &"a".repeat(100_000)).bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    let gzcut = write(&s, &user, "cut.tar.gz", &gz[..gz.len() / 2]);
    // An OCI archive cut after its first members: once imported as a
    // rootfs tarball holding them.
    let head = write(&s, &user, "head.tar", &archive[..1024]);
    // An entry name no filesystem can hold.
    let mut long = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    long.append_data(&mut h, "n".repeat(5000), &b"x"[..])
        .unwrap();
    let long = write(&s, &user, "long.tar", &long.into_inner().unwrap());
    // The good archive of `lay` is in the store: the damaged layout (same
    // manifest) is still read and refused, and never tagged.
    import(&user, &s, &s.path().join("img.tar"), &[]);
    let listed = images_json(&user, &s);

    for (what, path, needle) in [
        ("digest, same image stored", lay.clone(), "digest mismatch"),
        ("truncated", cut, "truncated"),
        // (skopeo's archives start with `blobs/`.)
        ("cut at 1 KiB", head, "starts like an image archive"),
        (
            "5000-character name",
            long,
            "a name longer than Linux allows",
        ),
        ("a device", "/dev/zero".into(), "is a character device"),
        ("media type", odd, "unknown layer media type"),
        ("truncated gzip", gzcut, ""),
        ("missing", s.path().join("nope.tar"), "does not exist"),
    ] {
        let out = run_expect(
            sdk(&user, &s)
                .arg("import")
                .arg(&path)
                .args(["--tag", "from-bad-input"]),
            2,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(images_json(&user, &s), listed, "{what}: store unchanged");
        let tmp = s.path().join("data/sdk-run/images/.tmp");
        let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{what}: no partial unpack left");
    }
    // An unknown manifest key: file, line and key.
    let m = write(
        &s,
        &user,
        "m.toml",
        b"[base]\ntarball = \"good.tar\"\nmirror = \"x\"\n",
    );
    let out = run_expect(sdk(&user, &s).arg("build").arg(&m), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m.toml:3:") && err.contains("mirror"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A base that never ends (/dev/zero) or blocks (a FIFO): refused at
    // once, not read (timeout: a hang fails the test instead of stalling).
    std::fs::create_dir_all(s.path().join("fifo-dir")).unwrap();
    let fifo = s.path().join("fifo-dir/base.tar");
    run_ok(Command::new("mkfifo").arg(&fifo));
    chown_r(&user, s.path());
    for (key, base, needle) in [
        ("tarball", "/dev/zero", "is a character device"),
        ("oci-archive", "/dev/zero", "is a character device"),
        ("tarball", fifo.to_str().unwrap(), "is a FIFO"),
    ] {
        let m = write(
            &s,
            &user,
            "dev.toml",
            format!("[base]\n{key} = \"{base}\"\n").as_bytes(),
        );
        let out = run_expect(
            user.command(&s, "timeout")
                .args(["20", "sdk-run", "build", "--digest-only"])
                .arg(&m)
                .env("XDG_DATA_HOME", s.path().join("data")),
            2,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{key} = {base}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// An OCI layout whose one layer has `media_type`, all digests right.
fn write_layout_with_media_type(s: &Scratch, user: &TestUser, media_type: &str) -> PathBuf {
    let dir = s.path().join("odd-layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        (d, data.len())
    };
    let layer = T::new().file("f", "x").bytes();
    let (ld, ls) = put(&layer);
    let cfg = serde_json::to_vec(&serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[format!("sha256:{ld}")]}})).unwrap();
    let (cd, cs) = put(&cfg);
    let man = serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":format!("sha256:{cd}"),"size":cs},
        "layers":[{"mediaType":media_type,"digest":format!("sha256:{ld}"),"size":ls}]})).unwrap();
    let (md, ms) = put(&man);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":format!("sha256:{md}"),"size":ms}]})).unwrap(),
    )
    .unwrap();
    chown_r(user, &dir);
    dir
}

/// kill -9 in the middle of an import: the next import succeeds and no
/// half-unpacked image is ever listed.
#[test]
fn kill_9_during_import_leaves_nothing_half_done() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    // Many small files: long enough to be killed in the middle.
    let big = sdk_e2e::tars::many_small_files(80_000, 100, 20);
    let p = write(&s, &user, "big.tar", &big);
    let mut child = sdk(&user, &s).arg("import").arg(&p).spawn().unwrap();
    // Wait until the unpack is under way (files appear in .tmp/).
    let tmp = s.path().join("data/sdk-run/images/.tmp");
    let t0 = std::time::Instant::now();
    loop {
        let started = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("rootfs/d0").exists());
        if started {
            break;
        }
        assert!(t0.elapsed().as_secs() < 60, "import never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Kill sdk-run itself (as `kill -9 PID` would), not its group.
    // setpriv exec's sdk-run: the child's pid is sdk-run's.
    let pid = child.id();
    run_ok(Command::new("kill").args(["-9", &pid.to_string()]));
    let _ = child.wait();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        images_json(&user, &s).is_empty(),
        "no half-unpacked image listed"
    );
    let v = import(&user, &s, &p, &[]);
    assert_eq!(v["existed"], false);
    assert_eq!(images_json(&user, &s).len(), 1);
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0);
    let r = store_rootfs(&s, v["digest"].as_str().unwrap());
    assert!(r.join("d99/f79999").exists());
}

/// A busybox rootfs tarball (Debian's busybox-static) as a docker-save
/// image, so a sandbox can run over it.
fn busybox_image(s: &Scratch, user: &TestUser) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/", "opq/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if d == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    b.append_path_with_name("/bin/busybox", "bin/busybox")
        .expect("/bin/busybox (Debian package busybox-static); run `make test`");
    for applet in ["sh", "rm", "mkdir", "echo", "cat", "ls", "id", "touch"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for (name, data) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/old", "old\n"),
        ("opq/a", "a\n"),
        ("opq/b", "b\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    write(
        s,
        user,
        "busybox.docker.tar",
        &docker_save(
            &[b.into_inner().unwrap()],
            &["PATH=/bin", "IMAGE_GREETING=hi"],
        ),
    )
}

/// commit: base + the sandbox's changes (with whiteouts) as an OCI archive
/// that skopeo and umoci read, and that imports back.
#[test]
fn commit_round_trip_through_skopeo_and_umoci() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let img = import(&user, &s, &busybox_image(&s, &user), &["--tag", "bb"]);
    let lower = store_rootfs(&s, img["digest"].as_str().unwrap());
    let name = format!("commit-e2e-{}", std::process::id());
    run_ok(
        sdk(&user, &s)
            .args(["-n", &name, "--rootfs"])
            .arg(&lower)
            .args([
                "--overlay",
                "-u",
                "root",
                "--",
                "sh",
                "-c",
                "echo new > /etc/new && rm /etc/old && rm -r /opq && mkdir /opq && echo c > /opq/c",
            ]),
    );
    // The image's Env applies inside (the sandbox's PATH, with the bound
    // tools, wins over the image's).
    let env =
        run_ok(sdk(&user, &s).args(["-n", &name, "--", "sh", "-c", "echo $IMAGE_GREETING $PATH"]));
    assert!(env.starts_with("hi /run/sdk-tools/bin:"), "{env}");
    run_ok(sdk(&user, &s).args(["stop", &name]));
    let out = s.path().join("out.oci.tar");
    run_ok(sdk(&user, &s).args(["commit", &name]).arg(&out));
    // The base is untouched.
    assert!(lower.join("etc/old").exists());

    let inspect = run_ok(
        user.command(&s, "skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", out.display())),
    );
    let manifest: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);

    run_ok(user.command(&s, "sh").args([
        "-euc",
        r#"skopeo copy --quiet "oci-archive:$PWD/out.oci.tar" oci:lay:c
umoci unpack --rootless --image lay:c bundle"#,
    ]));
    let r = s.path().join("bundle/rootfs");
    assert_eq!(std::fs::read_to_string(r.join("etc/new")).unwrap(), "new\n");
    assert!(!r.join("etc/old").exists(), "whiteout applied by umoci");
    assert!(r.join("opq/c").exists());
    assert!(!r.join("opq/a").exists(), "opaque dir applied by umoci");
    assert!(r.join("bin/busybox").exists());

    // And back into the store.
    let back = import(&user, &s, &out, &[]);
    let r2 = store_rootfs(&s, back["digest"].as_str().unwrap());
    assert!(r2.join("etc/new").exists() && !r2.join("etc/old").exists());
    assert!(!r2.join("opq/a").exists() && r2.join("opq/c").exists());
    // A base in use is not removed until its sandbox is.
    let refused = run_expect(sdk(&user, &s).args(["rmi", "bb"]), 2);
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&name));
    run_ok(sdk(&user, &s).args(["rm", "-f", &name]));
    run_ok(sdk(&user, &s).args(["rmi", "bb"]));
}

/// An image's WorkingDir and User (set with `umoci config`) decide where
/// and as whom a command starts when the caller gives no `-u` and stands
/// outside the repo; inside the repo the repo wins, `-u` always wins, and
/// a User that names nobody is one line and exit code 2.
#[test]
fn image_working_dir_and_user_apply_on_enter() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let lay = s.path().join("layout");
    let b = s.path().join("bundle");
    // A busybox rootfs with its own user (builder, 1234) and group (staff,
    // 2345), made by umoci as the test user; one image per User.
    run_ok(
        user.command(&s, "sh")
            .args([
                "-euc",
                r#"umoci init --layout "$L"
umoci new --image "$L:base"
umoci unpack --rootless --image "$L:base" "$B"
R="$B/rootfs"
mkdir -p "$R/bin" "$R/etc" "$R/home/builder"
cp /bin/busybox "$R/bin/busybox"
for a in sh id stat true; do ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nbuilder:x:1234:1234::/home/builder:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\nbuilder:x:1234:\nstaff:x:2345:builder\n' > "$R/etc/group"
umoci repack --image "$L:base" "$B"
umoci config --image "$L:base" --tag named --config.workingdir /srv/work --config.user builder:staff
umoci config --image "$L:base" --tag numeric --config.user 1234
umoci config --image "$L:base" --tag ghost --config.user ghost --config.workingdir /srv
for t in named numeric ghost; do skopeo copy --quiet "oci:$L:$t" "oci-archive:$PWD/$t.oci.tar"; done
"#,
            ])
            .env("L", &lay)
            .env("B", &b),
    );
    let lower = |tag: &str| {
        let v = import(&user, &s, &s.path().join(format!("{tag}.oci.tar")), &[]);
        store_rootfs(&s, v["digest"].as_str().unwrap())
    };
    let repo = s.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    chown_r(&user, &repo);
    let pid = std::process::id();
    let names: Vec<String> = ["named", "numeric", "ghost"]
        .iter()
        .map(|t| format!("img-{t}-{pid}"))
        .collect();
    // Created from the repo; later enters come from the scratch dir, which
    // is outside it.
    let create = |name: &str, tag: &str, cmd: &[&str]| {
        let mut c = sdk(&user, &s);
        c.current_dir(&repo)
            .args(["-n", name, "--rootfs"])
            .arg(lower(tag))
            .args(["--overlay", "--"])
            .args(cmd);
        c
    };
    let enter = |args: &[&str]| run_ok(sdk(&user, &s).args(args));
    const WHERE_WHO: &str = "pwd; id -u; id -g";

    let named = names[0].as_str();
    assert_eq!(
        run_ok(&mut create(named, "named", &["sh", "-c", WHERE_WHO])),
        "/mnt/host/source\n1234\n2345\n",
        "in the repo: the repo, as the image's builder:staff"
    );
    assert_eq!(
        enter(&[
            "-n",
            named,
            "--",
            "sh",
            "-c",
            "pwd; id -u; id -g; stat -c %u:%a /srv/work"
        ]),
        "/srv/work\n1234\n2345\n0:755\n",
        "outside the repo: WorkingDir, made at start by root inside"
    );
    assert_eq!(
        enter(&["-n", named, "-u", "sdk", "--", "sh", "-c", WHERE_WHO]),
        "/srv/work\n1000\n1000\n",
        "-u wins over the image's User"
    );
    assert_eq!(
        enter(&["-n", named, "-u", "root", "--", "sh", "-c", WHERE_WHO]),
        "/srv/work\n0\n0\n"
    );

    // A uid alone: its passwd entry's gid; no WorkingDir: the home.
    let numeric = names[1].as_str();
    run_ok(&mut create(numeric, "numeric", &["true"]));
    assert_eq!(
        enter(&["-n", numeric, "--", "sh", "-c", WHERE_WHO]),
        "/home/builder\n1234\n1234\n"
    );

    // A User nobody has: one line naming it, exit 2; -u sdk still enters.
    let ghost = names[2].as_str();
    let err = run_bad_input(&mut create(ghost, "ghost", &["true"]));
    assert!(
        err.contains("asks to run as user `ghost`")
            && err.contains("/etc/passwd")
            && err.contains("-u sdk (or -u root)"),
        "{err}"
    );
    assert_eq!(
        run_bad_input(sdk(&user, &s).args(["-n", ghost, "--", "true"])),
        err,
        "the same on the fast path into a running sandbox"
    );
    assert_eq!(
        enter(&["-n", ghost, "-u", "sdk", "--", "sh", "-c", WHERE_WHO]),
        "/srv\n1000\n1000\n"
    );

    for n in &names {
        run_ok(sdk(&user, &s).args(["rm", "-f", n]));
    }
}

/// Images by name: a gzip-compressed docker-save (`.tgz`, as Flatcar ships
/// its SDK) imports as the image it is; `--image TAG` and a repo's
/// `sdk-image` make sandboxes over it; a mistyped tag is one line, exit 2,
/// with the closest tag, and makes nothing.
#[test]
fn images_by_name_and_a_gzipped_docker_save() {
    let user = TestUser::get();
    let s = Scratch::new(&user);
    let plain = std::fs::read(busybox_image(&s, &user)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    let tgz = write(&s, &user, "busybox.tgz", &gz.finish().unwrap());
    let v = import(&user, &s, &tgz, &["--tag", "bb:1"]);
    assert_eq!(v["kind"], "docker-save", "{v}");

    let pid = std::process::id();
    let by_tag = format!("by-tag-{pid}");
    let out = run_ok(sdk(&user, &s).args([
        "-n",
        &by_tag,
        "--image",
        "bb:1",
        "--",
        "sh",
        "-c",
        "cat /etc/old; echo $IMAGE_GREETING",
    ]));
    assert_eq!(out.trim(), "old\nhi");
    // Entering again with the same image is fine; with another it is not.
    run_ok(sdk(&user, &s).args(["-n", &by_tag, "--image", "bb:1", "--", "echo"]));

    let before = run_ok(sdk(&user, &s).args(["list", "--json"]));
    let e = run_expect(
        sdk(&user, &s).args(["-n", "typo", "--image", "bb:2", "--", "echo"]),
        2,
    );
    let err = String::from_utf8_lossy(&e.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did you mean \"bb:1\"?"), "{err}");
    assert_eq!(run_ok(sdk(&user, &s).args(["list", "--json"])), before);

    // A repo that names its SDK image.
    let repo = s.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("sdk-version.toml"),
        format!("sdk-version = \"img{pid}\"\nos-version = \"1\"\nsdk-image = \"bb:1\"\n"),
    )
    .unwrap();
    chown_r(&user, &repo);
    let mut c = sdk(&user, &s);
    c.current_dir(&repo)
        .args(["--", "sh", "-c", "cat /etc/old"]);
    assert_eq!(run_ok(&mut c).trim(), "old");
    let in_repo = format!("sdk-img{pid}_os-1");
    let listed = run_ok(sdk(&user, &s).args(["list", "--json"]));
    assert!(listed.contains(&in_repo), "{listed}");
    run_ok(sdk(&user, &s).args(["rm", "-f", &by_tag, &in_repo]));
}
