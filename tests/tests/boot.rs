//! Booting images for real under QEMU (TCG): direct kernel boot and UEFI
//! disk boot (OVMF + systemd-boot) reach the first-boot marker with /usr on
//! the dm-verity device, a flipped byte in USR-A stops the boot, an update
//! written into USR-B boots after the priorities switch, and bad input is
//! refused before QEMU starts.
//!
//! The disk comes from `tests/fixtures/boot-disk.sh` (real mkfs.ext4,
//! veritysetup, sfdisk, mkfs.vfat + mcopy, and our ESP hook) with Debian's
//! cloud kernel fetched by `apt-get download` once per run (cached in
//! `$SDK_E2E_CACHE`, default /var/tmp/sdk-e2e-cache).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sdk_e2e::{Scratch, TestUser, chown_r, run_expect, run_ok};

/// Generous for TCG on two shared cores; a good boot takes 5-30 s.
const BOOT_TIMEOUT: &str = "400";

struct Fixture {
    dir: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.dir);
    }
}

/// Debian's cloud kernel package, downloaded once.
fn kernel_deb() -> PathBuf {
    let cache = PathBuf::from(
        std::env::var("SDK_E2E_CACHE").unwrap_or_else(|_| "/var/tmp/sdk-e2e-cache".into()),
    );
    std::fs::create_dir_all(&cache).unwrap();
    let find = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("linux-image-") && n.contains("-cloud-amd64_") && n.ends_with(".deb")
            })
    };
    if let Some(p) = find() {
        return p;
    }
    let deps = run_ok(Command::new("apt-cache").args([
        "depends",
        "--important",
        "linux-image-cloud-amd64",
    ]));
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .expect("linux-image-cloud-amd64 depends on a versioned kernel package")
        .to_string();
    run_ok(
        Command::new("apt-get")
            .args(["download", "-q", &pkg])
            .current_dir(&cache),
    );
    find().expect("apt-get download left the kernel package in the cache")
}

fn fixture(user: &TestUser) -> &'static Path {
    &FIXTURE
        .get_or_init(|| {
            let deb = kernel_deb();
            let scratch = Scratch::new(user);
            let dir = scratch.path().to_path_buf();
            std::mem::forget(scratch);
            // SAFETY: registers a plain extern "C" function with no
            // arguments; it only removes the fixture directory at exit.
            unsafe {
                libc::atexit(remove_fixture);
            }
            let script = dir.join("boot-disk.sh");
            std::fs::copy(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/boot-disk.sh"),
                &script,
            )
            .unwrap();
            std::fs::copy(&deb, dir.join("kernel.deb")).unwrap();
            std::fs::create_dir(dir.join("out")).unwrap();
            chown_r(user, &dir);
            let helper = Scratch::new(user);
            run_ok(
                user.command(&helper, "dpkg-deb")
                    .arg("-x")
                    .arg(dir.join("kernel.deb"))
                    .arg(dir.join("kernel")),
            );
            run_ok(
                user.command(&helper, "bash")
                    .arg(&script)
                    .arg(dir.join("kernel"))
                    .arg(dir.join("out")),
            );
            Fixture { dir }
        })
        .dir
}

/// A private copy of the fixture image in `scratch`.
fn image_copy(user: &TestUser, scratch: &Scratch) -> PathBuf {
    let src = fixture(user).join("out");
    for f in ["test_image.bin", "test_update.bin", "test_verity.txt"] {
        run_ok(
            user.command(scratch, "cp")
                .arg("--sparse=always")
                .arg(src.join(f))
                .arg(scratch.path()),
        );
    }
    scratch.path().join("test_image.bin")
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
    let image = image_copy(&user, &scratch);
    let out = test_image(&user, &scratch, &image, "qemu", 0);
    // Printed by the guest's first-boot script from /proc/mounts.
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = console(&scratch, "qemu");
    assert!(log.contains("sdk-init: USR is vda2 (USR-A"), "{log}");
    assert!(log.contains("panic_on_corruption"), "{log}");
    // The snapshot boot left the image as it was.
    assert!(scratch.path().join("test_qemu.sh").is_file());
}

#[test]
fn uefi_disk_boot_through_systemd_boot_reaches_marker() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let image = image_copy(&user, &scratch);
    let out = test_image(&user, &scratch, &image, "qemu_uefi", 0);
    assert!(
        out.contains("first boot OK: x86_64: usr=/dev/mapper/usr"),
        "{out}"
    );
    let log = console(&scratch, "qemu_uefi");
    // The firmware loaded the kernel (EFI stub), not QEMU's -kernel.
    assert!(log.contains("EFI stub"), "{log}");
    assert!(log.contains("sdk-init: USR is vda2 (USR-A"), "{log}");
}

#[test]
fn flipped_byte_in_usr_a_fails_verity_in_the_guest() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let image = image_copy(&user, &scratch);
    // One byte inside USR-A's first data block (the ext4 superblock the
    // kernel reads at mount time).
    let parts = run_ok(user.command(&scratch, "sfdisk").arg("--json").arg(&image));
    let v: serde_json::Value = serde_json::from_str(&parts).unwrap();
    let usr_a = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "USR-A")
        .unwrap()["start"]
        .as_u64()
        .unwrap();
    let at = usr_a * 512 + 1024 + 100;
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

#[test]
fn update_payload_in_usr_b_boots_after_switching_priorities() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let image = image_copy(&user, &scratch);
    let hash = std::fs::read_to_string(scratch.path().join("test_verity.txt")).unwrap();
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
        log.contains("sdk-init: USR is vda3 (USR-B"),
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

    let image = image_copy(&user, &scratch);
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

    // An image whose boot entry carries no USR root hash.
    let esp_at = format!("{}@@1M", image.display());
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
