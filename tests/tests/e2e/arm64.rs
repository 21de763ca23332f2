//! arm64 end to end on this x86_64 machine: the systemd example OS built
//! for `arm64-usr` with cross compilers and arm64 Debian packages only (no
//! emulation in the build), its init and update agent the aarch64 build of
//! sdk-tools; then booted under qemu-system-aarch64 (`-M virt`, TCG):
//! direct kernel and UEFI (AAVMF + systemd-boot's aa64 binary) each reach
//! ssh with /usr on the dm-verity device, a flipped byte in USR-A stops the
//! boot, two builds from the same inputs are byte-identical, and an update
//! applied in the running guest boots from USR-B.
//!
//! One build of v2.0.1 and then v2.0.0 (the version folders stay side by
//! side under `__build__/images/arm64-usr/`), shared by the tests; each
//! boots its own copy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdk_e2e::vm::{Login, Vm};
use sdk_e2e::{Scratch, TestUser, artifact, chown_r, run_expect, run_ok};

const BOARD: &str = "arm64-usr";
/// Emulated arm64 on two shared cores: a systemd boot takes 1-3 minutes.
const BOOT_TIMEOUT: &str = "900";
const MARKER: &str = "systemd-os: boot finished:";

struct Fixture {
    repo: PathBuf,
    /// The image folders of v2.0.0 (what `latest` is) and v2.0.1.
    v1: PathBuf,
    v2: PathBuf,
    top: PathBuf,
    example: sdk_e2e::ExampleRepo,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.top);
    }
}

fn fixture(user: &TestUser) -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let scratch = Scratch::new(user);
        let top = scratch.path().to_path_buf();
        let example = sdk_e2e::ExampleRepo::new(user, &scratch, "systemd-os");
        std::mem::forget(scratch);
        // SAFETY: registers a plain extern "C" function with no arguments;
        // it only removes the fixture directory at exit.
        unsafe {
            libc::atexit(remove_fixture);
        }
        let helper = Scratch::new(user);
        let tool = |verb: &str| example.tool(user, &helper, verb, BOARD);
        let repo = example.path.clone();
        let images = repo.join("__build__/images").join(BOARD);
        run_ok(&mut tool("setup_board"));
        let build = |version: &str| -> PathBuf {
            sdk_e2e::set_os_version(&repo, version);
            chown_r(user, &repo);
            run_ok(&mut tool("build_packages"));
            run_ok(&mut tool("build_image"));
            std::fs::canonicalize(images.join("latest")).unwrap()
        };
        let v2 = build("2.0.1");
        let v1 = build("2.0.0");
        assert_ne!(v1, v2);
        Fixture {
            repo,
            v1,
            v2,
            top,
            example,
        }
    })
}

/// A private copy of v1's disk image in `scratch`, named `NAME_image.bin`.
fn image_copy(user: &TestUser, scratch: &Scratch, f: &Fixture, name: &str) -> PathBuf {
    let image = scratch.path().join(format!("{name}_image.bin"));
    run_ok(
        user.command(scratch, "cp")
            .arg("--sparse=always")
            .arg(artifact(&f.v1, "_image.bin"))
            .arg(&image),
    );
    image
}

fn text_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The example's tests that show the OS up, its /usr verified and its
/// network there, in a folder of `scratch`.
fn guest_tests(f: &Fixture, scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("tests");
    std::fs::create_dir(&dir).unwrap();
    for t in ["10-systemd-running", "20-usr-on-verity", "30-network-up"] {
        std::fs::copy(f.repo.join("tests").join(t), dir.join(t)).unwrap();
    }
    dir
}

fn test_image(user: &TestUser, scratch: &Scratch, image: &Path, format: &str) -> String {
    let tests = guest_tests(fixture(user), scratch);
    chown_r(user, scratch.path());
    let out = run_expect(
        user.command(scratch, "sdk-tools")
            .arg("test_image")
            .arg("--image")
            .arg(image)
            .args(["--format", format, "--timeout", BOOT_TIMEOUT])
            .args(["--marker", MARKER, "--tests"])
            .arg(&tests),
        0,
    );
    text_of(&out)
}

#[test]
fn arm64_direct_kernel_boot_reaches_ssh_with_usr_on_verity() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    let image = image_copy(&user, &scratch, f, "direct");
    let out = test_image(&user, &scratch, &image, "qemu");
    for want in [
        "ok 1 - 10-systemd-running",
        "ok 2 - 20-usr-on-verity",
        "ok 3 - 30-network-up",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    // qemu-system-aarch64 on the virt machine, the PL011 console, the
    // aarch64 init that set up verity and chose USR-A.
    let launcher = std::fs::read_to_string(scratch.path().join("direct_qemu.sh")).unwrap();
    assert!(
        launcher.contains("exec qemu-system-aarch64") && launcher.contains("-machine virt"),
        "{launcher}"
    );
    let log = std::fs::read_to_string(scratch.path().join("direct_qemu_console.log")).unwrap();
    assert!(log.contains("Machine model: linux,dummy-virt"), "{log}");
    assert!(log.contains("console=ttyAMA0"), "{log}");
    assert!(log.contains(&format!("{MARKER} ")), "{log}");
    let marker = log.lines().find(|l| l.contains(MARKER)).unwrap();
    assert!(marker.contains("version 2.0.0 from USR-A"), "{marker}");
    // The init and the update agent in the image are aarch64 programs.
    let contents = std::fs::read_to_string(artifact(&f.v1, "_contents.txt")).unwrap();
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("/usr/lib/sdk-update/sdk-tools\t")),
        "no update agent in USR"
    );
}

#[test]
fn arm64_uefi_boot_through_systemd_boot_reaches_ssh() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    let image = image_copy(&user, &scratch, f, "uefi");
    let out = test_image(&user, &scratch, &image, "qemu_uefi");
    assert!(out.contains("ok 2 - 20-usr-on-verity"), "{out}");
    let log = std::fs::read_to_string(scratch.path().join("uefi_qemu_uefi_console.log")).unwrap();
    // AAVMF started systemd-boot (BOOTAA64.EFI), which started the
    // kernel's EFI stub.
    assert!(log.contains("EFI stub"), "{log}");
    let launcher = std::fs::read_to_string(scratch.path().join("uefi_qemu_uefi.sh")).unwrap();
    assert!(
        launcher.contains("uefi_qemu_uefi_efi_code.fd"),
        "{launcher}"
    );
}

#[test]
fn arm64_flipped_byte_in_usr_a_stops_the_boot() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    let image = image_copy(&user, &scratch, f, "flipped");
    // A byte of USR-A's ext4 superblock.
    let start = sdk_e2e::part_offset(&user, &scratch, &image, "USR-A");
    sdk_e2e::flip_bit(&image, start + 1024 + 100, 0);
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .arg("test_image")
            .arg("--image")
            .arg(&image)
            .args(["--timeout", BOOT_TIMEOUT, "--marker", MARKER]),
        1,
    );
    assert!(text_of(&out).contains("FAIL"), "{}", text_of(&out));
    let log = std::fs::read_to_string(scratch.path().join("flipped_qemu_console.log")).unwrap();
    assert!(
        log.contains("device-mapper: verity") && log.contains("is corrupted"),
        "{log}"
    );
    assert!(!log.contains(MARKER), "{log}");
}

#[test]
fn arm64_builds_from_the_same_inputs_are_byte_identical() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    let out = scratch.path().join("again");
    chown_r(&user, scratch.path());
    run_ok(
        f.example
            .tool(&user, &scratch, "build_image", BOARD)
            .arg("--output")
            .arg(&out),
    );
    let again = std::fs::canonicalize(out.join("latest")).unwrap();
    for suffix in ["_image.bin", "_image_update.bin", "_verity.txt"] {
        let (a, b) = (artifact(&f.v1, suffix), artifact(&again, suffix));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{} and {} differ",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn arm64_update_applied_in_the_guest_boots_from_usr_b() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    let image = image_copy(&user, &scratch, f, "update");
    chown_r(&user, scratch.path());
    run_ok(
        user.command(&scratch, "sdk-tools")
            .arg("image_to_vm")
            .arg("--image")
            .arg(&image),
    );
    let launcher = scratch.path().join("update_qemu.sh");
    // v2's update: metadata and signature by scp, the payload as a disk.
    let meta = artifact(&f.v2, "_update.json");
    let sig = artifact(&f.v2, "_update.json.sig");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let payload = f.v2.join(v["payload"]["name"].as_str().unwrap());
    let name = meta.file_name().unwrap().to_string_lossy().into_owned();
    let login = Login::new(&user, &scratch);
    let mut vm = Vm::start(&user, &scratch, &launcher, &login, &[&payload], &[]);
    let (line, _) = vm.wait_for(MARKER, 0);
    assert!(line.contains("version 2.0.0 from USR-A"), "{line}");
    vm.wait_for_ssh(&user, &scratch);
    assert!(
        vm.ssh(&user, &scratch, "mkdir -p /var/tmp/v2")
            .status
            .success()
    );
    vm.copy_in(&user, &scratch, &[&meta, &sig], "/var/tmp/v2");
    let at = vm.console_text().len();
    let o = vm.ssh(
        &user,
        &scratch,
        &format!("sudo sdk-update apply /var/tmp/v2/{name} --payload /dev/vdb"),
    );
    assert!(o.status.success(), "{}", text_of(&o));
    let _ = vm.ssh(&user, &scratch, "sudo systemctl reboot");
    let (line, _) = vm.wait_for(MARKER, at);
    assert!(line.contains("version 2.0.1 from USR-B"), "{line}");
    assert!(line.contains("running: failed: none"), "{line}");
    vm.wait_for_ssh(&user, &scratch);
    let s = text_of(&vm.ssh(&user, &scratch, "sudo sdk-update status; uname -m"));
    assert!(s.contains("2.0.1 (arm64-usr), running from USR-B"), "{s}");
    assert!(s.contains("aarch64"), "{s}");
    assert!(
        s.contains("USR-B *: 2.0.1; priority 2, tries 0, successful"),
        "{s}"
    );
}

/// An image whose board says another architecture than its kernel is
/// refused in one line before anything is written (a missing aarch64
/// sdk-tools for an arm64 init is a unit test of `boot::initramfs`).
#[test]
fn arm64_bad_input_is_one_line() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let f = fixture(&user);
    // The arm64 image under the amd64 board's name.
    let dir = scratch.path().join("__build__/images/amd64-usr/latest");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(artifact(&f.v1, "_image.bin"), dir.join("x_image.bin")).unwrap();
    chown_r(&user, scratch.path());
    let out = run_expect(
        user.command(&scratch, "sdk-tools")
            .args(["image_to_vm", "--board", "amd64-usr"])
            .current_dir(scratch.path()),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("its kernel is for aarch64, but its board is x86_64"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.join("x_qemu.sh").exists());
}
