//! A/B updates installed by the running systemd example OS (QEMU, TCG):
//! v1 boots from USR-A; v2, built and copied in, is applied from inside
//! v1 by `sdk-update`, boots from USR-B after a reboot and marks itself
//! good; a v3 whose health check fails boots once, is not marked, and the
//! next boot comes back to v2 with nobody choosing a slot. A tampered
//! payload and metadata signed by another key are refused before a byte
//! of the inactive slot is written; QEMU killed at five moments of an
//! apply leaves v1 booting each time, and the apply after succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;

use sdk_e2e::vm::{Login, Vm};
use sdk_e2e::{Scratch, TestUser, artifact, chown_r, run_ok};

const BOARD: &str = "amd64-usr";

fn out_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn updates_apply_in_the_guest_and_an_unhealthy_one_rolls_back() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let example = sdk_e2e::ExampleRepo::new(&user, &scratch, "systemd-os");
    let repo = example.path.clone();
    let tool = |verb: &str| example.tool(&user, &scratch, verb, BOARD);
    let latest = repo.join("__build__/images").join(BOARD).join("latest");
    // An update of `version`: its metadata, signature and payload, copied
    // out of `latest` (the next build replaces it).
    let build = |version: &str| -> PathBuf {
        sdk_e2e::set_os_version(&repo, version);
        chown_r(&user, &repo);
        run_ok(&mut tool("build_packages"));
        run_ok(&mut tool("build_image"));
        let dir = scratch.path().join(format!("update-{version}"));
        std::fs::create_dir(&dir).unwrap();
        let meta = artifact(&latest, "_update.json");
        let sig = artifact(&latest, "_update.json.sig");
        let text = std::fs::read_to_string(&meta).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let payload = latest.join(v["payload"]["name"].as_str().unwrap());
        for f in [&meta, &sig, &payload] {
            run_ok(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(f)
                    .arg(dir.join(f.file_name().unwrap())),
            );
        }
        chown_r(&user, &dir);
        dir
    };

    run_ok(&mut tool("setup_board"));
    let payload_of = |dir: &Path| -> (PathBuf, PathBuf, PathBuf) {
        let meta = artifact(dir, "_update.json");
        let text = std::fs::read_to_string(&meta).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let payload = dir.join(v["payload"]["name"].as_str().unwrap());
        (meta.clone(), update_sig(&meta), payload)
    };
    // v1, and its VM (image_to_vm's output stays in v1's image folder).
    build("2.0.0");
    run_ok(&mut tool("image_to_vm"));
    let launcher = artifact(&std::fs::canonicalize(&latest).unwrap(), "_qemu.sh");
    // v2: another version, and another kernel (another ABI of the same
    // flavour from the archive), which the slot carries and sdk-init
    // starts. v3 (same kernel as v2): its health check fails (a
    // regression, as a developer would make it).
    let kernel1 = kernel_in(&latest);
    let kernel2 = another_kernel(&kernel1);
    let recipe = repo.join("packages/sys-apps/systemd/package.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let pinned = text.replacen(
        "\"linux-image-cloud-{debian-arch} | linux-image-{debian-arch}\"",
        &format!("\"linux-image-{kernel2}\""),
        1,
    );
    assert_ne!(pinned, text, "the example's kernel line changed");
    std::fs::write(&recipe, pinned).unwrap();
    let (meta2, sig2, payload2) = payload_of(&build("2.0.1"));
    let script = repo.join("packages/demo-base/system/demo-health");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(
        &script,
        text.replacen(
            "for unit in",
            "echo 'demo-health: broken on purpose' >/dev/console; exit 1\nfor unit in",
            1,
        ),
    )
    .unwrap();
    let (meta3, sig3, payload3) = payload_of(&build("2.0.2"));
    let name = meta2.file_name().unwrap().to_string_lossy().into_owned();
    // v2's payload with one bit flipped, and v2's metadata signed by a key
    // the OS does not trust.
    let tampered = scratch.path().join("tampered.bin");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&payload2)
            .arg(&tampered),
    );
    sdk_e2e::flip_bit(&tampered, 4096 * 3 + 17, 2);
    let wrong = scratch.path().join("wrongkey");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(&meta2, wrong.join(&name)).unwrap();
    let other_key = scratch.path().join("other.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&other_key),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(&other_key)
            .arg("-in")
            .arg(wrong.join(&name))
            .arg("-out")
            .arg(wrong.join(format!("{name}.sig"))),
    );
    chown_r(&user, scratch.path());

    // The payloads reach the guest as disks (vdb: v2, vdc: tampered, vdd:
    // v3), the small metadata files by scp; v2 is also served over HTTP
    // from the host's loopback (`update serve`), which the guest reaches
    // as http://10.0.2.100/ (the launcher's -u).
    let server = Server::start(meta2.parent().unwrap());
    let port = server.port.to_string();
    let options = ["-u", port.as_str()];
    let login = Login::new(&user, &scratch);
    let mut vm = Vm::start(
        &user,
        &scratch,
        &launcher,
        &login,
        &[&payload2, &tampered, &payload3],
        &options,
    );
    let (line, _) = vm.wait_for("systemd-os: boot finished:", 0);
    let init_lines = |vm: &Vm| -> String {
        vm.console_text()
            .lines()
            .filter(|l| l.contains("sdk-init"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        line.contains("version 2.0.0 from USR-A"),
        "{line}\n{}",
        init_lines(&vm)
    );
    vm.wait_for_ssh(&user, &scratch);
    let ssh = |vm: &Vm, script: &str| vm.ssh(&user, &scratch, script);
    let status = |vm: &Vm| out_of(&ssh(vm, "sudo sdk-update status"));
    let s = status(&vm);
    assert!(s.contains("running from USR-A"), "{s}");
    assert!(
        ssh(&vm, "mkdir -p /var/tmp/v2 /var/tmp/v3 /var/tmp/wrong")
            .status
            .success()
    );
    vm.copy_in(&user, &scratch, &[&meta2, &sig2], "/var/tmp/v2");
    vm.copy_in(&user, &scratch, &[&meta3, &sig3], "/var/tmp/v3");
    vm.copy_in(
        &user,
        &scratch,
        &[&wrong.join(&name), &wrong.join(format!("{name}.sig"))],
        "/var/tmp/wrong",
    );
    // On the disk before the first power cut (ext4 commits every 5 s).
    assert!(ssh(&vm, "sync").status.success());
    // What a write would change first: the start of USR-B, its record
    // block, and the GPT attributes (status).
    let fingerprint = |vm: &Vm| {
        out_of(&ssh(
            vm,
            "sudo dd if=/dev/vda4 bs=1M count=8 status=none | sha256sum; sudo tail -c 65536 /dev/vda4 | sha256sum; sudo sdk-update status",
        ))
    };
    let before = fingerprint(&vm);
    for (cmd, why) in [
        (
            format!("sudo sdk-update apply /var/tmp/v2/{name} --payload /dev/vdc"),
            "it was changed or is another payload",
        ),
        (
            format!("sudo sdk-update apply /var/tmp/wrong/{name} --payload /dev/vdb"),
            "does not match any trusted key",
        ),
        (
            format!("sudo sdk-update apply /var/tmp/v2/{name}"),
            "does not exist",
        ),
    ] {
        let o = ssh(&vm, &cmd);
        let text = out_of(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {text}");
        assert!(text.contains(why), "{cmd}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    }
    assert_eq!(fingerprint(&vm), before, "a refused update wrote something");

    // Power cuts in the middle of applying v2 (QEMU killed as each step
    // starts, and once a moment into the write): every time the machine
    // boots v1 from USR-A again, and the apply after them succeeds.
    let disks: [&Path; 3] = [&payload2, &tampered, &payload3];
    let apply_v2 = format!("sudo sdk-update apply /var/tmp/v2/{name} --payload /dev/vdb");
    for (trial, (step, extra_ms)) in [
        ("sdk-update: checked", 0),
        ("sdk-update: writing", 0),
        // A moment into the write: the kill lands among its blocks.
        ("sdk-update: writing", 1500),
        ("sdk-update: verifying", 0),
        ("sdk-update: recording", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let log = scratch.path().join(format!("apply-{trial}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut apply = vm
            .ssh_command(&user, &scratch, &apply_v2)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + sdk_e2e::vm::BOOT_LIMIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(step) {
                break;
            }
            let done = apply.try_wait().unwrap().is_some();
            assert!(
                !done && std::time::Instant::now() < deadline,
                "trial {trial}: {step:?} never came: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(extra_ms));
        vm.power_cut();
        let _ = apply.kill();
        let _ = apply.wait();
        vm = Vm::start(&user, &scratch, &launcher, &login, &disks, &options);
        let (line, _) = vm.wait_for("systemd-os: boot finished:", 0);
        assert!(
            line.contains("version 2.0.0 from USR-A"),
            "trial {trial}, power cut at {step:?} + {extra_ms} ms: {line}\n{}",
            init_lines(&vm)
        );
        vm.wait_for_ssh(&user, &scratch);
    }
    let at = vm.console_text().len();

    // v2 found and applied from inside v1 by the update service, from the
    // source the machine is configured with (the host's server); after
    // the reboot it runs from USR-B and its boot marks it good.
    let url = format!("http://10.0.2.100/{name}");
    let o = ssh(&vm, &format!("sudo sdk-update check {url}"));
    let text = out_of(&o);
    assert!(
        text.contains("2.0.1 is available (running 2.0.0)"),
        "{text}"
    );
    let o = ssh(
        &vm,
        &format!(
            "sudo mkdir -p /etc/sdk-update && echo {url} | sudo tee /etc/sdk-update/source >/dev/null && sudo systemctl start sdk-update.service; sudo journalctl -b -o cat -u sdk-update.service"
        ),
    );
    let text = out_of(&o);
    assert!(text.contains("USR-B holds the update"), "{text}");
    assert!(
        server.log().contains(&format!(
            "GET /{} 200",
            payload2.file_name().unwrap().to_string_lossy()
        )),
        "the payload came over HTTP:\n{}",
        server.log()
    );
    let o = ssh(&vm, "sudo sdk-update check");
    let text = out_of(&o);
    assert!(
        text.contains("2.0.1 is installed in USR-B and boots next"),
        "{text}"
    );
    let _ = ssh(&vm, "sudo systemctl reboot");
    let (line, at) = vm.wait_for("systemd-os: boot finished:", at);
    assert!(line.contains("version 2.0.1 from USR-B"), "{line}");
    assert!(line.contains("running: failed: none"), "{line}");
    assert!(
        vm.console_text()[..at].contains(&format!(
            "sdk-init: USR-B boots with its own kernel {kernel2}"
        )),
        "{}",
        init_lines(&vm)
    );
    vm.wait_for_ssh(&user, &scratch);
    let uname = out_of(&ssh(&vm, "uname -r"));
    assert_eq!(uname.trim(), kernel2, "v2 runs its own kernel");
    let s = status(&vm);
    assert!(s.contains("2.0.1 (amd64-usr), running from USR-B"), "{s}");
    assert!(
        s.contains("USR-B *: 2.0.1; priority 2, tries 0, successful"),
        "{s}"
    );

    // v3 boots once from USR-A, is not marked, and the next boot is v2's
    // again without anyone choosing.
    let o = ssh(
        &vm,
        &format!("sudo sdk-update apply /var/tmp/v3/{name} --payload /dev/vdd"),
    );
    assert!(o.status.success(), "{}", out_of(&o));
    let _ = ssh(&vm, "sudo systemctl reboot");
    let (line, at) = vm.wait_for("systemd-os: boot finished:", at);
    assert!(line.contains("version 2.0.2 from USR-A"), "{line}");
    assert!(line.contains("demo-health.service"), "{line}");
    vm.wait_for_ssh(&user, &scratch);
    let s = status(&vm);
    assert!(
        s.contains("USR-A *: 2.0.2; priority 3, tries 0, not successful"),
        "{s}"
    );
    let _ = ssh(&vm, "sudo systemctl reboot");
    let (line, _) = vm.wait_for("systemd-os: boot finished:", at);
    assert!(line.contains("version 2.0.1 from USR-B"), "{line}");
    vm.wait_for_ssh(&user, &scratch);
    let s = status(&vm);
    assert!(s.contains("running from USR-B"), "{s}");
    assert!(
        s.contains(
            "USR-A: 2.0.2; priority 3, tries 0, not successful: tried and did not become healthy"
        ),
        "{s}"
    );
    // The update check does not install the failed v3 again.
    let o = ssh(
        &vm,
        &format!("sudo sdk-update check --apply /var/tmp/v3/{name}"),
    );
    let text = out_of(&o);
    assert!(
        text.contains("2.0.2 was installed in USR-A, tried, and did not become healthy"),
        "{text}"
    );
}

/// `sdk-tools update serve DIR` on a free port of the loopback, stopped
/// when dropped; what it logged is in `log()`.
struct Server {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let log = dir.with_extension("serve.log");
        let out = dir.with_extension("serve.out");
        let child = Command::new(sdk_e2e::bin_dir().join("sdk-tools"))
            .args(["update", "serve", "--listen", "127.0.0.1:0"])
            .arg(dir)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            port: 0,
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.port == 0 {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(p) = text
                .split("http://127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .and_then(|p| p.parse().ok())
            {
                server.port = p;
            } else {
                let gone = server.child.try_wait().unwrap().is_some();
                assert!(
                    !gone && std::time::Instant::now() < deadline,
                    "update serve said no address: {text}{}",
                    server.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel (`uname -r`) of the image in `dir`, from its contents list.
fn kernel_in(dir: &Path) -> String {
    let list = std::fs::read_to_string(artifact(dir, "_contents.txt")).unwrap();
    list.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("/usr/lib/modules/")?;
            let (v, _) = rest.split_once('/')?;
            Some(v.to_string())
        })
        .expect("a kernel in the image")
}

/// Another kernel ABI of `kernel`'s flavour that the archive holds (the
/// newest below it, else the oldest above it): `6.1.0-54-cloud-amd64`
/// for `6.1.0-57-cloud-amd64`.
fn another_kernel(kernel: &str) -> String {
    let abi = |v: &str| -> Option<(String, u32, String)> {
        let mut parts = v.splitn(3, '-');
        let base = parts.next()?.to_string();
        let n = parts.next()?.parse().ok()?;
        Some((base, n, parts.next()?.to_string()))
    };
    let (base, n, flavour) = abi(kernel).expect("a Debian kernel version");
    let names = run_ok(Command::new("apt-cache").args(["pkgnames", "linux-image-"]));
    let mut others: Vec<u32> = names
        .lines()
        .filter_map(|p| abi(p.strip_prefix("linux-image-")?))
        .filter(|(b, m, f)| *b == base && *f == flavour && *m != n)
        .map(|(_, m, _)| m)
        .collect();
    others.sort_unstable();
    let m = others
        .iter()
        .rev()
        .find(|m| **m < n)
        .or(others.first())
        .unwrap_or_else(|| panic!("the archive holds no other {flavour} kernel than {kernel}"));
    format!("{base}-{m}-{flavour}")
}

fn update_sig(meta: &Path) -> PathBuf {
    let mut s = meta.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}
