//! Booting images for real under QEMU (TCG): direct kernel boot and UEFI
//! disk boot (OVMF + systemd-boot) reach the first-boot marker with /usr on
//! the dm-verity device, a flipped byte in USR-A stops the boot, an update
//! written into USR-B boots after the priorities switch, and bad input is
//! refused before QEMU starts.
//!
//! The image is the example OS (`examples/demo-os`) built the way a user
//! builds it: `setup_board`, `build_packages` (Debian's cloud kernel and
//! busybox imported, libgreet/greet compiled) and `build_image` — once per
//! run, shared by the tests, each of which boots its own copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sdk_e2e::{Scratch, TestUser, artifact, chown_r, run_expect, run_ok};

/// Generous for TCG on two shared cores; a good boot takes 5-30 s.
const BOOT_TIMEOUT: &str = "400";
const BOARD: &str = "amd64-usr";

struct Fixture {
    /// The published image folder (`__build__/images/<board>/latest`).
    dir: PathBuf,
    /// The netboot set and the live ISO of the same packages
    /// (`.../<board>/pxe/latest`, `.../<board>/iso/latest`).
    pxe: PathBuf,
    iso: PathBuf,
    /// Where the fixture lives (removed at exit).
    top: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.top);
    }
}

fn fixture(user: &TestUser) -> &'static Path {
    &shared(user).dir
}

fn shared(user: &TestUser) -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let scratch = Scratch::new(user);
        let top = scratch.path().to_path_buf();
        let example = sdk_e2e::ExampleRepo::new(user, &scratch, "demo-os");
        std::mem::forget(scratch);
        // SAFETY: registers a plain extern "C" function with no
        // arguments; it only removes the fixture directory at exit.
        unsafe {
            libc::atexit(remove_fixture);
        }
        let repo = example.path.clone();
        let helper = Scratch::new(user);
        let tool = |verb: &str| example.tool(user, &helper, verb, BOARD);
        run_ok(&mut tool("setup_board"));
        run_ok(&mut tool("build_packages"));
        run_ok(&mut tool("build_image"));
        run_ok(tool("build_image").args(["--format", "pxe"]));
        run_ok(tool("build_image").args(["--format", "iso"]));
        let images = repo.join("__build__/images").join(BOARD);
        Fixture {
            dir: images.join("latest"),
            pxe: images.join("pxe/latest"),
            iso: images.join("iso/latest"),
            top,
        }
    })
}

/// A private copy of the example image (and its update payload) in
/// `scratch`, named `test_image.bin` / `test_update.bin`; returns the image
/// and the USR-A root hash build_image recorded.
fn image_copy(user: &TestUser, scratch: &Scratch) -> (PathBuf, String) {
    let dir = fixture(user);
    for (suffix, name) in [
        ("_image.bin", "test_image.bin"),
        ("_image_update.bin", "test_update.bin"),
    ] {
        run_ok(
            user.command(scratch, "cp")
                .arg("--sparse=always")
                .arg(artifact(dir, suffix))
                .arg(scratch.path().join(name)),
        );
    }
    let verity = std::fs::read_to_string(artifact(dir, "_verity.txt")).unwrap();
    let hash = verity
        .lines()
        .find_map(|l| l.strip_prefix("VERITY_ROOT_HASH="))
        .expect("VERITY_ROOT_HASH in the verity file")
        .to_string();
    (scratch.path().join("test_image.bin"), hash)
}

fn test_image(
    user: &TestUser,
    scratch: &Scratch,
    image: &Path,
    format: &str,
    expect: i32,
) -> String {
    let out = run_expect(
        user.command(scratch, "sdk-tools")
            .arg("test_image")
            .arg("--image")
            .arg(image)
            .args(["--format", format, "--timeout", BOOT_TIMEOUT]),
        expect,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Boot `launcher` (image_to_vm's script: its disk keeps what the guest
/// writes) headless with `args`, until a console line contains `until`
/// or the boot timeout passes; then QEMU is killed (a power cut) and the
/// console so far returned.
fn boot_until(
    user: &TestUser,
    scratch: &Scratch,
    launcher: &Path,
    args: &[&str],
    until: &str,
) -> String {
    let log = scratch.path().join("launcher-console.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = user
        .command(scratch, launcher.to_str().unwrap())
        .args(["-r", "-p", "none", "-nographic"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(BOOT_TIMEOUT.parse().unwrap());
    let text = loop {
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
        let done = text.contains(until)
            || std::time::Instant::now() > deadline
            || child.try_wait().unwrap().is_some();
        if done {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(until), "{until:?} never came:\n{text}");
    text
}

fn console(scratch: &Scratch, format: &str) -> String {
    let log = scratch.path().join(format!("test_{format}_console.log"));
    String::from_utf8_lossy(
        &std::fs::read(&log).unwrap_or_else(|e| panic!("console log {}: {e}", log.display())),
    )
    .into_owned()
}

#[test]
fn direct_kernel_boot_reaches_marker_with_usr_on_verity() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    let out = test_image(&user, &scratch, &image, "qemu", 0);
    // Printed by the guest's first-boot script from /proc/mounts.
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    // Not on a terminal: progress is plain timestamped lines.
    let plain = |l: &str| {
        l.len() > 21
            && l.as_bytes()[10] == b'T'
            && l.as_bytes()[19] == b'Z'
            && l[..4].parse::<u32>().is_ok()
    };
    assert!(
        out.lines()
            .any(|l| plain(l) && l.ends_with(" test_image: booting ...")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| plain(l) && l.contains(" test_image: booting done in ")),
        "{out}"
    );
    let log = console(&scratch, "qemu");
    assert!(log.contains("(USR-A, 254:"), "{log}");
    assert!(log.contains("panic_on_corruption"), "{log}");
    // The snapshot boot left the image as it was.
    assert!(scratch.path().join("test_qemu.sh").is_file());
}

#[test]
fn uefi_disk_boot_through_systemd_boot_reaches_marker() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    let out = test_image(&user, &scratch, &image, "qemu_uefi", 0);
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = console(&scratch, "qemu_uefi");
    // The firmware loaded the kernel (EFI stub), not QEMU's -kernel.
    assert!(log.contains("EFI stub"), "{log}");
    assert!(log.contains("(USR-A, 254:"), "{log}");
}

#[test]
fn flipped_byte_in_usr_a_fails_verity_in_the_guest() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    // One byte inside USR-A's first data block (the ext4 superblock the
    // kernel reads at mount time).
    let usr_a = sdk_e2e::part_offset(&user, &scratch, &image, "USR-A");
    let at = usr_a + 1024 + 100;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    }
    let out = test_image(&user, &scratch, &image, "qemu", 1);
    assert!(out.contains("FAIL"), "{out}");
    assert!(
        !out.contains("PASS") && !out.contains("usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = console(&scratch, "qemu");
    assert!(
        log.contains("device-mapper: verity") && log.contains("is corrupted"),
        "{log}"
    );
    assert!(
        log.contains("dm-verity device corrupted"),
        "the kernel must stop: {log}"
    );
}

/// A private copy of the netboot set or live ISO folder in `scratch`
/// (test_image writes its launcher and console log beside the set); the
/// folder and the file test_image boots (`*.ipxe`, `*.iso`).
fn live_copy(user: &TestUser, scratch: &Scratch, format: &str) -> (PathBuf, PathBuf) {
    let f = shared(user);
    let src = if format == "pxe" { &f.pxe } else { &f.iso };
    let dir = scratch.path().join(format);
    run_ok(
        user.command(scratch, "cp")
            .arg("-a")
            .arg(std::fs::canonicalize(src).unwrap())
            .arg(&dir),
    );
    let ext = if format == "pxe" { ".ipxe" } else { ".iso" };
    let main = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(ext))
        .unwrap_or_else(|| panic!("no *{ext} in {}", dir.display()));
    (dir, main)
}

fn live_console(dir: &Path) -> String {
    let log = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_qemu_console.log"))
        .unwrap_or_else(|| panic!("no console log in {}", dir.display()));
    String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned()
}

/// Every file of a build folder's manifest is there with its sha256.
fn manifest_holds(dir: &Path) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for a in m["artifacts"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        let out = run_ok(Command::new("sha256sum").arg(dir.join(name)));
        let sum = out;
        assert_eq!(
            sum.split_whitespace().next(),
            a["sha256"].as_str(),
            "{name}"
        );
    }
    m
}

#[test]
fn the_netboot_set_boots_over_qemus_tftp_with_usr_verified_and_root_in_memory() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (dir, script) = live_copy(&user, &scratch, "pxe");
    let m = manifest_holds(&dir);
    assert_eq!(m["format"], "pxe");
    let names: Vec<&str> = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for suffix in [
        "_pxe.vmlinuz",
        "_pxe.initrd",
        "_pxe.ipxe",
        "_pxe_usr.squashfs",
        "_pxe_verity.txt",
        "_pxe_packages.txt",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(suffix)),
            "{suffix}: {names:?}"
        );
    }
    // The USR image is a squashfs with its tree appended, which the
    // outside tool checks against the recorded root hash.
    let usr = dir.join(names.iter().find(|n| n.ends_with("_usr.squashfs")).unwrap());
    let v: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(artifact(&dir, "_verity.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let head = std::fs::read(&usr).unwrap();
    assert_eq!(&head[..4], b"hsqs");
    run_ok(
        Command::new("veritysetup")
            .args(["verify", "--hash-offset", &v["VERITY_HASH_OFFSET"]])
            .arg(&usr)
            .arg(&usr)
            .arg(&v["VERITY_ROOT_HASH"]),
    );
    assert!(
        std::fs::read_to_string(&script)
            .unwrap()
            .contains(&format!("usrhash={}", v["VERITY_ROOT_HASH"]))
    );
    let out = test_image(&user, &scratch, &script, "pxe", 0);
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = live_console(&dir);
    // iPXE took QEMU's DHCP offer and the script; the init fetched USR
    // over TFTP, on a loop device under dm-verity.
    assert!(log.contains("iPXE"), "{log}");
    assert!(
        log.contains("sdk-init: fetching USR from tftp://10.0.2.2/"),
        "{log}"
    );
    assert!(log.contains("sdk-init: USR is loop0"), "{log}");
    assert!(log.contains("panic_on_corruption"), "{log}");
}

#[test]
fn a_flipped_byte_in_the_netboot_usr_stops_the_boot() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (dir, script) = live_copy(&user, &scratch, "pxe");
    let usr = artifact(&dir, "_usr.squashfs");
    {
        // In the squashfs superblock, read when USR is mounted.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&usr)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 40).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 40).unwrap();
    }
    let out = test_image(&user, &scratch, &script, "pxe", 1);
    assert!(out.contains("FAIL"), "{out}");
    assert!(!out.contains("usr=/dev/mapper/usr"), "{out}");
    let log = live_console(&dir);
    assert!(log.contains("sdk-init: fetched"), "{log}");
    assert!(
        log.contains("device-mapper: verity") && log.contains("is corrupted"),
        "{log}"
    );
}

#[test]
fn the_live_iso_boots_under_ovmf_from_the_cdrom_with_usr_verified() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (dir, iso) = live_copy(&user, &scratch, "iso");
    assert_eq!(manifest_holds(&dir)["format"], "iso");
    // The outside view: an El Torito UEFI boot image, and the USR file.
    let report = Command::new("xorriso")
        .arg("-indev")
        .arg(&iso)
        .args([
            "-report_el_torito",
            "plain",
            "-find",
            "/sdk",
            "-exec",
            "lsdl",
        ])
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&report.stdout),
        String::from_utf8_lossy(&report.stderr)
    );
    assert!(text.contains("UEFI"), "{text}");
    assert!(text.contains("/sdk/usr.img"), "{text}");
    let out = test_image(&user, &scratch, &iso, "iso", 0);
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = live_console(&dir);
    assert!(log.contains("DVD-ROM"), "the firmware booted the CD: {log}");
    assert!(
        log.contains("sdk-init: USR image /sdk/usr.img on /dev/sr0"),
        "{log}"
    );
    assert!(log.contains("panic_on_corruption"), "{log}");
}

/// A local S3 store: moto in server mode on the loopback, with IAM
/// checks from its fifth request on (the first four make a user, its
/// key, its policy and the bucket `images`). Killed when dropped.
struct S3Store {
    child: std::process::Child,
    url: String,
    key: (String, String),
}

impl Drop for S3Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What boto3 (the outside view) says of the store: `script` runs with
/// `s3` a client as the key's owner; its stdout.
fn boto3(store: &S3Store, script: &str) -> String {
    let prelude = format!(
        "import boto3, hashlib, json, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{}', aws_secret_access_key='{}', region_name='us-east-1')\n",
        store.url, store.key.0, store.key.1
    );
    run_ok(Command::new("python3").args(["-c", &format!("{prelude}{script}")]))
}

fn s3_store() -> S3Store {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto (pip install 'moto[server]'; .ci/install-deps.sh does)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not listen");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run_ok(Command::new("python3").args([
        "-c",
        &format!(
            "import boto3, json\nkw = dict(endpoint_url='{url}', aws_access_key_id='setup', aws_secret_access_key='setup', region_name='us-east-1')\niam = boto3.client('iam', **kw)\niam.create_user(UserName='publisher')\nk = iam.create_access_key(UserName='publisher')['AccessKey']\niam.put_user_policy(UserName='publisher', PolicyName='s3', PolicyDocument=json.dumps({{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}}]}}))\nboto3.client('s3', **kw).create_bucket(Bucket='images')\nprint(k['AccessKeyId'], k['SecretAccessKey'])\n"
        ),
    ]));
    let mut words = out.split_whitespace();
    let key = (
        words.next().unwrap().to_string(),
        words.next().unwrap().to_string(),
    );
    S3Store { child, url, key }
}

#[test]
fn publishing_to_s3_round_trips_byte_identical_and_a_second_publish_uploads_nothing() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (dir, _) = live_copy(&user, &scratch, "pxe");
    let store = s3_store();
    let publish = |secret: &str| {
        let mut c = user.command(&scratch, "sdk-tools");
        c.arg("publish")
            .arg(&dir)
            .args(["s3://images/nodes", "--json"])
            .env("AWS_ENDPOINT_URL", &store.url)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", &store.key.0)
            .env("AWS_SECRET_ACCESS_KEY", secret);
        c
    };
    let listing = "r = s3.list_objects_v2(Bucket='images')\nprint(json.dumps(sorted(o['Key'] for o in r.get('Contents', []))))";
    // Refused credentials: one line, exit 2, nothing in the store.
    let out = run_expect(&mut publish("not-the-secret"), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(boto3(&store, listing).trim(), "[]");

    let first: serde_json::Value =
        serde_json::from_str(&run_ok(&mut publish(&store.key.1))).unwrap();
    let m = manifest_holds(&dir);
    let files = m["artifacts"].as_array().unwrap().len() + 1;
    assert_eq!(
        first["uploaded"].as_array().unwrap().len(),
        files,
        "{first}"
    );
    assert_eq!(
        first["uploaded"].as_array().unwrap().last().unwrap(),
        "manifest.json"
    );
    // boto3 reads every object back (the whole listing: moto's checks
    // refuse boto3's signature of a Prefix= query): the same bytes, and
    // the USR image
    // went in parts (a multipart ETag ends in -N).
    let set = std::fs::canonicalize(&dir).unwrap();
    let set = set.file_name().unwrap().to_string_lossy();
    let prefix = format!("nodes/pxe/{set}/");
    let check = format!(
        "out = {{}}\nfor o in s3.list_objects_v2(Bucket='images')['Contents']:\n    if not o['Key'].startswith('{prefix}'):\n        continue\n    b = s3.get_object(Bucket='images', Key=o['Key'])['Body'].read()\n    out[o['Key'][len('{prefix}'):]] = [hashlib.sha256(b).hexdigest(), o['ETag']]\nprint(json.dumps(out))"
    );
    let held: serde_json::Value = serde_json::from_str(&boto3(&store, &check)).unwrap();
    assert_eq!(held.as_object().unwrap().len(), files, "{held}");
    for (name, v) in held.as_object().unwrap() {
        let local = run_ok(Command::new("sha256sum").arg(dir.join(name)));
        assert_eq!(v[0].as_str(), local.split_whitespace().next(), "{name}");
        if name.ends_with("_usr.squashfs") {
            assert!(
                v[1].as_str().unwrap().trim_matches('"').contains('-'),
                "{v}"
            );
        }
    }
    // Again: nothing to upload.
    let again: serde_json::Value =
        serde_json::from_str(&run_ok(&mut publish(&store.key.1))).unwrap();
    assert_eq!(again["uploaded"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(
        again["unchanged"].as_array().unwrap().len(),
        files,
        "{again}"
    );
}

#[test]
fn live_formats_refuse_what_cannot_boot_that_way_in_one_line() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    // A disk image is not a netboot set.
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .args(["test_image", "--format", "pxe", "--image"])
            .arg(&image),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("*.ipxe"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // --oci writes an archive, not a netboot set: refused before a build.
    let f = shared(&user);
    let repo = f.dir.ancestors().nth(4).unwrap();
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .current_dir(repo)
            .args(["build_image", "--board", BOARD, "--format", "pxe", "--oci"])
            .arg(scratch.path().join("os.tar")),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--oci"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!scratch.path().join("os.tar").exists());
}

#[test]
fn update_payload_in_usr_b_boots_after_switching_priorities() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, hash) = image_copy(&user, &scratch);
    let out = run_ok(
        user.command(&scratch, "sdk-tools")
            .args(["boot", "set-slot"])
            .arg(&image)
            .args(["--slot", "B", "--payload"])
            .arg(scratch.path().join("test_update.bin"))
            .args(["--usrhash", hash.trim()]),
    );
    assert!(out.contains("usr-b+1.conf"), "{out}");
    // The GPT says so too (sfdisk as the outside reader): B priority 2,
    // one try, not successful; A unchanged.
    let dump = run_ok(user.command(&scratch, "sfdisk").arg("--dump").arg(&image));
    assert!(
        dump.lines()
            .any(|l| l.contains("name=\"USR-B\"") && l.contains("attrs=\"GUID:49,52\"")),
        "{dump}"
    );
    assert!(
        dump.lines()
            .any(|l| l.contains("name=\"USR-A\"") && l.contains("attrs=\"GUID:48,56\"")),
        "{dump}"
    );
    let out = test_image(&user, &scratch, &image, "qemu_uefi", 0);
    assert!(out.contains("usr=/dev/mapper/usr"), "{out}");
    let log = console(&scratch, "qemu_uefi");
    assert!(
        log.contains("(USR-B, 254:"),
        "systemd-boot must pick USR-B: {log}"
    );
}

#[test]
fn bad_input_is_refused_before_qemu_starts() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);

    // A kernel without the modules boot needs.
    let root = scratch.path().join("root");
    std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0-bare/kernel")).unwrap();
    std::fs::write(
        root.join("usr/lib/modules/6.1.0-bare/modules.builtin"),
        "kernel/fs/ext4/ext4.ko\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("usr/boot")).unwrap();
    std::fs::write(
        root.join("usr/boot/vmlinuz-6.1.0-bare"),
        "not really a kernel",
    )
    .unwrap();
    chown_r(&user, scratch.path());
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .args(["boot", "esp", "--root"])
            .arg(&root)
            .arg("--esp")
            .arg(scratch.path().join("esp"))
            .args(["--usrhash", &"ab".repeat(32)]),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("6.1.0-bare has no virtio_pci"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    // A missing image.
    let out = run_expect(
        user.command(&scratch, "sdk-tools").args([
            "image_to_vm",
            "--image",
            "/nonexistent/disk.bin",
        ]),
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));

    let (image, _) = image_copy(&user, &scratch);
    // Missing UEFI firmware: refused, nothing written.
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .args([
                "image_to_vm",
                "--format",
                "qemu_uefi",
                "--ovmf-code",
                "/nonexistent/OVMF_CODE.fd",
                "--image",
            ])
            .arg(&image),
        2,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/OVMF_CODE.fd does not exist")
    );
    assert!(!scratch.path().join("test_qemu_uefi.sh").exists());
    assert!(!scratch.path().join("test_qemu_uefi_image.img").exists());

    // A launcher given a config file that does not exist.
    run_ok(
        user.command(&scratch, "sdk-tools")
            .args(["image_to_vm", "--image"])
            .arg(&image),
    );
    let launcher = scratch.path().join("test_qemu.sh");
    let out = run_expect(
        user.command(&scratch, "bash").arg(&launcher).args([
            "-nographic",
            "-i",
            "/nonexistent/config.json",
        ]),
        2,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("config file /nonexistent/config.json does not exist")
    );

    // Ignition configs that are not there, not JSON, of another spec, with
    // a key Ignition does not know, or invalid in Ignition's own eyes: one
    // line each from test_image, exit 2, before QEMU starts; the launcher
    // refuses the invalid ones too (through ignition-validate).
    let configs = [
        ("nothing.ign", None, "no such file"),
        ("broken.ign", Some("{\"ignition\": "), "not JSON"),
        (
            "v2.ign",
            Some("{\"ignition\": {\"version\": \"2.2.0\"}}"),
            "spec version 2.2.0",
        ),
        (
            "typo.ign",
            Some("{\"ignition\": {\"version\": \"3.3.0\"}, \"storage\": {\"filez\": []}}"),
            "Unused key filez",
        ),
        (
            "relative.ign",
            Some(
                "{\"ignition\": {\"version\": \"3.3.0\"}, \"storage\": {\"files\": [{\"path\": \"etc/x\"}]}}",
            ),
            "path not absolute",
        ),
    ];
    for (name, text, needle) in configs {
        let p = scratch.path().join(name);
        if let Some(t) = text {
            std::fs::write(&p, t).unwrap();
            chown_r(&user, &p);
        }
        let out = run_expect(
            user.command(&scratch, "sdk-tools")
                .args(["test_image", "--image"])
                .arg(&image)
                .arg("--ignition")
                .arg(&p),
            2,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{name}: {err}");
        assert_eq!(sdk_e2e::error_lines(&err).len(), 1, "{name}: {err}");
        // QEMU never started: test_image makes the console log when it does.
        assert!(
            !scratch.path().join("test_qemu_console.log").exists(),
            "{name}"
        );
        if name == "relative.ign" {
            let out = run_expect(
                user.command(&scratch, "bash")
                    .arg(&launcher)
                    .args(["-nographic", "-i"])
                    .arg(&p),
                2,
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("not a valid Ignition config"),
                "{out:?}"
            );
        }
    }

    // An image whose boot entry carries no USR root hash.
    let esp_at = format!(
        "{}@@{}",
        image.display(),
        sdk_e2e::part_offset(&user, &scratch, &image, "EFI-SYSTEM")
    );
    let entry = run_ok(
        user.command(&scratch, "mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &esp_at, "::/loader/entries/usr-a.conf"]),
    );
    let stripped: String = entry
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.contains("usrhash="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = scratch.path().join("entry.conf");
    std::fs::write(&tmp, stripped).unwrap();
    chown_r(&user, &tmp);
    run_ok(
        user.command(&scratch, "mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &esp_at])
            .arg(&tmp)
            .arg("::/loader/entries/usr-a.conf"),
    );
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .args(["image_to_vm", "--image"])
            .arg(&image),
        2,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("carries no USR root hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_sbom_names_every_debian_package_with_a_purl() {
    let user = TestUser::get();
    let dir = fixture(&user);
    let sbom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(artifact(dir, "_sbom.json")).unwrap())
            .unwrap();
    let purls: Vec<String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
        .map(str::to_string)
        .collect();
    let has = |prefix: &str| purls.iter().any(|p| p.starts_with(prefix));
    // The recipes, and the .debs of the binary imports (kernel, busybox,
    // the C library the kernel's closure pulled in), each for amd64.
    assert!(has("pkg:generic/demo-apps/greet@1.0.0"), "{purls:#?}");
    assert!(has("pkg:deb/debian/linux-image-"), "{purls:#?}");
    assert!(has("pkg:deb/debian/busybox"), "{purls:#?}");
    assert!(
        purls
            .iter()
            .filter(|p| p.starts_with("pkg:deb/"))
            .all(|p| p.ends_with("?arch=amd64") || p.ends_with("?arch=all")),
        "{purls:#?}"
    );
    // Each .deb is contained by the recipe that imported it.
    let rels = sbom["relationships"].as_array().unwrap();
    let kernel = "SPDXRef-Package-sys-kernel-linux";
    assert!(
        rels.iter().any(|r| r["spdxElementId"] == kernel
            && r["relationshipType"] == "CONTAINS"
            && r["relatedSpdxElement"]
                .as_str()
                .unwrap()
                .starts_with("SPDXRef-Deb-linux-image-")),
        "{rels:#?}"
    );
}

#[test]
fn image_to_vm_overlays_the_raw_image_and_compresses_on_request() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    let qcow = scratch.path().join("test_qemu_image.img");
    let info = |p: &Path| -> serde_json::Value {
        let out = run_ok(
            user.command(&scratch, "qemu-img")
                .args(["info", "--output=json"])
                .arg(p),
        );
        serde_json::from_str(&out).unwrap()
    };
    let to_vm = |extra: &[&str]| {
        run_ok(
            user.command(&scratch, "sdk-tools")
                .arg("image_to_vm")
                .arg("--image")
                .arg(&image)
                .args(extra),
        )
    };
    // The default, for booting here: an overlay naming its sibling.
    to_vm(&[]);
    let i = info(&qcow);
    assert_eq!(i["format"], "qcow2", "{i}");
    assert_eq!(i["backing-filename"], "test_image.bin", "{i}");
    assert_eq!(i["backing-filename-format"], "raw", "{i}");
    assert!(
        i["actual-size"].as_u64().unwrap() < 1 << 20,
        "an overlay holds no data: {i}"
    );
    // The folder moves as a whole and still boots.
    let moved = scratch.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    chown_r(&user, &moved);
    for f in [
        "test_image.bin",
        "test_qemu_image.img",
        "test_qemu.sh",
        "test_qemu_vmlinuz",
        "test_qemu_initrd",
    ] {
        std::fs::rename(scratch.path().join(f), moved.join(f)).unwrap();
    }
    // (With an Ignition config: QEMU takes it by fw_cfg under both names.)
    let ign = scratch.path().join("ok.ign");
    std::fs::write(&ign, "{\"ignition\": {\"version\": \"3.3.0\"}}").unwrap();
    chown_r(&user, &ign);
    let out = run_ok(
        user.command(&scratch, "sdk-tools")
            .arg("test_image")
            .arg("--image")
            .arg(moved.join("test_image.bin"))
            .args(["--timeout", BOOT_TIMEOUT, "--ignition"])
            .arg(&ign),
    );
    assert!(out.contains("first boot OK"), "{out}");
    for f in [
        "test_image.bin",
        "test_qemu_image.img",
        "test_qemu.sh",
        "test_qemu_vmlinuz",
        "test_qemu_initrd",
    ] {
        std::fs::rename(moved.join(f), scratch.path().join(f)).unwrap();
    }
    // --compress: a standalone qcow2 with the same contents.
    to_vm(&["--compress"]);
    let i = info(&qcow);
    assert!(i.get("backing-filename").is_none(), "{i}");
    run_ok(
        user.command(&scratch, "qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&image)
            .arg(&qcow),
    );
}

/// The systemd example OS (`examples/systemd-os`), built and booted the
/// way a user would: systemd as PID 1 over the dm-verity /usr our
/// initramfs sets up, and `systemctl is-system-running` saying `running`
/// with no failed unit (its marker service prints both on the console).
#[test]
fn the_systemd_example_boots_to_running_with_no_failed_units() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let example = sdk_e2e::ExampleRepo::new(&user, &scratch, "systemd-os");
    let repo = example.path.clone();
    let tool = |verb: &str| example.tool(&user, &scratch, verb, BOARD);
    run_ok(&mut tool("setup_board"));
    run_ok(&mut tool("build_packages"));
    run_ok(&mut tool("build_image"));
    // A system extension of a package the OS does not hold, placed in
    // /etc/extensions by Ignition: systemd-sysext merges it (test 50).
    run_ok(tool("build_packages").arg("demo-ext/hello"));
    run_ok(tool("build_sysext").args(["hello", "demo-ext/hello"]));
    let sysext = repo
        .join("__build__/images")
        .join(BOARD)
        .join("sysext/hello.raw");
    let sysext_url = format!(
        "data:;base64,{}",
        run_ok(Command::new("base64").arg("-w0").arg(&sysext)).trim()
    );
    // An Ignition v3 config, applied on the first boot by the OS's own
    // Ignition (Debian's) that sdk-init runs in the new root: a user in a
    // group base-passwd brings, a file, and a unit it enables, which
    // prints what the other two made.
    let ign = scratch.path().join("config.ign");
    std::fs::write(
        &ign,
        r#"{
  "ignition": {"version": "3.3.0"},
  "passwd": {"users": [{"name": "core", "groups": ["sudo"],
    "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest core@test"]}]},
  "storage": {"files": [{"path": "/etc/ign-hello", "mode": 420,
    "contents": {"source": "data:,hello%20from%20ignition"}},
    {"path": "/etc/extensions/hello.raw", "mode": 420,
    "contents": {"source": "SYSEXT_URL"}}]},
  "systemd": {"units": [{"name": "ign-proof.service", "enabled": true,
    "contents": "[Unit]\nDescription=Ignition proof\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo ign-proof: $(cat /etc/ign-hello): $(id -Gn core): $(cat /home/core/.ssh/authorized_keys.d/ignition 2>/dev/null || cat /home/core/.ssh/authorized_keys) >/dev/console; printf \" changed\" >>/etc/ign-hello; sync'\n[Install]\nWantedBy=multi-user.target\n"}]}
}"#
        .replace("SYSEXT_URL", &sysext_url),
    )
    .unwrap();
    // The example's tests in the guest over ssh, and one that fails on
    // purpose: TAP, the failure named, exit 1.
    let tests = scratch.path().join("tests");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(repo.join("tests"))
            .arg(&tests),
    );
    std::fs::write(
        tests.join("90-fails"),
        "#!/bin/sh\necho failing on purpose\nexit 3\n",
    )
    .unwrap();
    chown_r(&user, scratch.path());
    let run = run_expect(
        tool("test_image")
            .args([
                "--timeout",
                BOOT_TIMEOUT,
                "--marker",
                "systemd-os: boot finished:",
                "--ignition",
            ])
            .arg(&ign)
            .arg("--tests")
            .arg(&tests)
            .arg("--junit")
            .arg(scratch.path().join("junit.xml"))
            .args(["-j", "2"]),
        1,
    );
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    for want in [
        "1..7\n",
        "ok 1 - 10-systemd-running\n",
        "ok 2 - 20-usr-on-verity\n",
        "ok 3 - 30-network-up\n",
        "ok 4 - 35-names-resolve\n",
        "ok 5 - 40-ping-as-user\n",
        "ok 6 - 50-sysext-merged\n",
        "not ok 7 - 90-fails # exit 3\n# failing on purpose\n",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}\n{err}");
    }
    assert!(err.contains("1 of 7 tests failed: 90-fails"), "{err}");
    // The JUnit file, as an XML parser reads it.
    let parsed = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, xml.etree.ElementTree as E\n\
                 s = E.parse(sys.argv[1]).getroot().find('testsuite')\n\
                 print(s.get('tests'), s.get('failures'), ' '.join(c.get('name') for c in s.iter('testcase') if c.find('failure') is not None))",
            )
            .arg(scratch.path().join("junit.xml")),
    );
    assert_eq!(parsed.trim(), "7 1 90-fails");
    let latest = repo.join("__build__/images").join(BOARD).join("latest");
    // Two VMs shared the tests (-j 2), each a fresh first boot with its
    // own console log; each test has its console log too.
    for log in ["_qemu_console.log", "_qemu_console.2.log"] {
        let text = std::fs::read_to_string(artifact(&latest, log)).unwrap();
        assert!(text.contains("systemd-os: boot finished:"), "{log}");
        assert!(text.contains("sdk-init: Ignition stage files"), "{log}");
    }
    let per_test = artifact(&latest, "_qemu_tests");
    for t in [
        "10-systemd-running",
        "20-usr-on-verity",
        "30-network-up",
        "35-names-resolve",
        "40-ping-as-user",
        "50-sysext-merged",
        "90-fails",
    ] {
        assert!(
            per_test.join(format!("{t}.console.log")).is_file(),
            "no console log for {t} in {}",
            per_test.display()
        );
    }
    assert!(err.contains("console logs of the tests: "), "{err}");
    // What the maintainer scripts did, done at build time: ping's
    // capability in the contents list (and in the guest, test 40), `which`
    // through its alternative; what was not reproduced is listed with
    // package, script and line.
    let contents = std::fs::read_to_string(artifact(&latest, "_contents.txt")).unwrap();
    let ping = contents
        .lines()
        .find(|l| l.starts_with("/usr/bin/ping\t"))
        .unwrap_or_else(|| panic!("no /usr/bin/ping in the contents list"));
    assert!(
        ping.ends_with("\tsecurity.capability=cap_net_raw=ep"),
        "{ping}"
    );
    for (path, target) in [
        ("/usr/bin/which", "/etc/alternatives/which"),
        (
            "/usr/share/factory/etc/alternatives/which",
            "/usr/bin/which.debianutils",
        ),
    ] {
        assert!(
            contents.lines().any(
                |l| l.starts_with(&format!("{path}\t")) && l.ends_with(&format!("-> {target}"))
            ),
            "{path} -> {target} not in the contents list"
        );
    }
    let listing = std::fs::read_to_string(artifact(&latest, "_maintscripts.txt")).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("openssh-server postinst:") && l.contains("ucf ")),
        "{listing}"
    );
    assert!(
        !listing.contains(" is created by the script"),
        "every account the scripts make is declared in a sysusers.d file: {listing}"
    );
    let log = std::fs::read_to_string(artifact(&latest, "_qemu_console.log")).unwrap();
    let proof = log
        .lines()
        .find(|l| l.starts_with("ign-proof: "))
        .unwrap_or_else(|| panic!("the Ignition unit did not run: {log}"));
    assert!(
        proof.starts_with("ign-proof: hello from ignition: core sudo: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest"),
        "{proof}"
    );

    // Boots that keep their disk (test_image's are snapshots), through the
    // launcher. A config Ignition refuses (given to QEMU directly, past the
    // launcher's own check) stops the first boot with its line; the next
    // boot, with a good config, starts the first boot over and applies it;
    // the one after does not apply it again: the file the unit changed
    // keeps its change, the unit still runs.
    let launcher = artifact(&latest, "_qemu.sh");
    let bad = scratch.path().join("bad.ign");
    std::fs::write(&bad, r#"{"ignition": {"version": "9.9.0"}}"#).unwrap();
    chown_r(&user, scratch.path());
    let fw_cfg = format!("name=opt/com.coreos/config,file={}", bad.display());
    let log = boot_until(
        &user,
        &scratch,
        &launcher,
        &["--", "-fw_cfg", &fw_cfg],
        "sdk-init: cannot continue the boot",
    );
    assert!(
        log.contains("sdk-init: error: Ignition stage fetch-offline failed"),
        "{log}"
    );
    assert!(!log.contains("systemd-os: boot finished:"), "{log}");
    let proof_of = |log: &str| {
        log.lines()
            .find(|l| l.starts_with("ign-proof: "))
            .unwrap_or_else(|| panic!("the Ignition unit did not run: {log}"))
            .to_string()
    };
    let log = boot_until(
        &user,
        &scratch,
        &launcher,
        &["-i", ign.to_str().unwrap()],
        "systemd-os: boot finished:",
    );
    assert!(
        log.contains("sdk-init: the first boot did not finish last time: ROOT starts over"),
        "{log}"
    );
    assert!(
        proof_of(&log).starts_with("ign-proof: hello from ignition: core sudo: "),
        "{log}"
    );
    let log = boot_until(
        &user,
        &scratch,
        &launcher,
        &[],
        "systemd-os: boot finished:",
    );
    assert!(!log.contains("Ignition stage"), "{log}");
    assert!(
        proof_of(&log).starts_with("ign-proof: hello from ignition changed: core sudo: "),
        "{log}"
    );
    // UEFI: OVMF, systemd-boot and the EFI stub, to `running` too.
    let copies = scratch.path().join("copies");
    std::fs::create_dir(&copies).unwrap();
    chown_r(&user, &copies);
    let copy = |name: &str| {
        let image = copies.join(name);
        run_ok(
            user.command(&scratch, "cp")
                .arg("--sparse=always")
                .arg(artifact(&latest, "_image.bin"))
                .arg(&image),
        );
        image
    };
    let boot = |image: &Path, format: &str, expect: i32| {
        let out = run_expect(
            user.command(&scratch, "sdk-tools")
                .arg("test_image")
                .arg("--image")
                .arg(image)
                .args(["--format", format, "--timeout", BOOT_TIMEOUT])
                .args([
                    "--marker",
                    "systemd-os: boot finished: running: failed: none",
                ]),
            expect,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = boot(&copy("uefi.bin"), "qemu_uefi", 0);
    assert!(out.contains("PASS"), "{out}");
    let log = std::fs::read_to_string(copies.join("uefi_qemu_uefi_console.log")).unwrap();
    assert!(log.contains("EFI stub"), "{log}");
    // dm-verity still guards USR under systemd: one flipped byte in
    // USR-A's ext4 superblock stops the boot.
    let image = copy("flipped.bin");
    let at = sdk_e2e::part_offset(&user, &scratch, &image, "USR-A") + 1024 + 100;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    }
    let out = boot(&image, "qemu", 1);
    assert!(out.contains("FAIL"), "{out}");
    let log = std::fs::read_to_string(copies.join("flipped_qemu_console.log")).unwrap();
    assert!(
        log.contains("device-mapper: verity") && log.contains("is corrupted"),
        "{log}"
    );
    assert!(!log.contains("systemd-os: boot finished"), "{log}");
    // The same OS as a live ISO (its USR ext4: ping's capability), booted
    // under OVMF from -cdrom with ROOT in memory, provisioned by Ignition
    // and tested over ssh like the disk.
    let built = run_ok(tool("build_image").args(["--format", "iso"]));
    assert!(built.trim().ends_with(".iso"), "{built}");
    let run = run_expect(
        tool("test_image")
            .args(["--format", "iso", "--timeout", BOOT_TIMEOUT])
            .args(["--marker", "systemd-os: boot finished:", "--ignition"])
            .arg(&ign)
            .arg("--tests")
            .arg(repo.join("tests")),
        0,
    );
    let out = String::from_utf8_lossy(&run.stdout);
    for want in [
        "1..6\n",
        "ok 1 - 10-systemd-running\n",
        "ok 2 - 20-usr-on-verity\n",
        "ok 3 - 30-network-up\n",
        "ok 5 - 40-ping-as-user\n",
        "ok 6 - 50-sysext-merged\n",
    ] {
        assert!(
            out.contains(want),
            "{want:?} not in:\n{out}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

#[test]
fn a_guest_that_never_answers_ssh_fails_naming_its_console_and_is_stopped() {
    // The busybox OS reaches its marker but has no sshd: test_image waits
    // its timeout for ssh, fails naming the last console lines, and leaves
    // no QEMU behind.
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let (image, _) = image_copy(&user, &scratch);
    let tests = scratch.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    std::fs::write(tests.join("00-true"), "#!/bin/sh\ntrue\n").unwrap();
    chown_r(&user, scratch.path());
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .arg("test_image")
            .arg("--image")
            .arg(&image)
            .args(["--timeout", "20", "--tests"])
            .arg(&tests),
        1,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ssh as sdk-test did not answer within 20s"),
        "{text}"
    );
    assert!(text.contains("; last console lines: "), "{text}");
    assert!(text.contains("not ok 1 - 00-true # not run: "), "{text}");
    let left = Command::new("pgrep")
        .arg("-f")
        .arg(format!("qemu-system.*{}", scratch.path().display()))
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "QEMU left running: {left:?}");
}
