//! A guest booted from image_to_vm's launcher whose disk keeps what the
//! guest writes (reboots included), with its console in a file and ssh to
//! the user an Ignition config provisions with a key made for the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Scratch, TestUser, run_ok};

/// A key and the Ignition config that provisions `core` (group sudo,
/// sudo without a password) with it.
pub struct Login {
    pub key: PathBuf,
    pub ignition: PathBuf,
}

impl Login {
    pub fn new(user: &TestUser, scratch: &Scratch) -> Login {
        let key = scratch.path().join("login_key");
        run_ok(
            user.command(scratch, "ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"])
                .arg(&key),
        );
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let ignition = scratch.path().join("login.ign");
        std::fs::write(
            &ignition,
            format!(
                r#"{{"ignition": {{"version": "3.3.0"}},
 "passwd": {{"users": [{{"name": "core", "groups": ["sudo"], "sshAuthorizedKeys": ["{}"]}}]}},
 "storage": {{"files": [{{"path": "/etc/sudoers.d/core", "mode": 288,
   "contents": {{"source": "data:,core%20ALL%3D(ALL)%20NOPASSWD%3A%20ALL%0A"}}}}]}}}}"#,
                public.trim()
            ),
        )
        .unwrap();
        crate::chown_r(user, scratch.path());
        Login { key, ignition }
    }
}

pub struct Vm {
    child: Child,
    pub console: PathBuf,
    pub port: u16,
    key: PathBuf,
}

/// How long a boot may take under TCG on two shared cores.
pub const BOOT_LIMIT: Duration = Duration::from_secs(400);

impl Vm {
    /// Start `launcher` headless with ssh forwarded from a free port on the
    /// host's loopback, restricted networking, and `login`'s config;
    /// `disks` are attached read-only after the boot disk (`/dev/vdb`, ...);
    /// `options` go to the launcher (`-u PORT`).
    pub fn start(
        user: &TestUser,
        scratch: &Scratch,
        launcher: &Path,
        login: &Login,
        disks: &[&Path],
        options: &[&str],
    ) -> Vm {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let console = scratch.path().join(format!("vm-{port}-console.log"));
        let file = std::fs::File::create(&console).unwrap();
        let child = user
            .command(scratch, launcher.to_str().unwrap())
            .args(["-r", "-nographic", "-p", &port.to_string(), "-i"])
            .arg(&login.ignition)
            .args(options)
            .arg("--")
            .args(disks.iter().flat_map(|d| {
                [
                    "-drive".to_string(),
                    format!("if=virtio,format=raw,readonly=on,file={}", d.display()),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Vm {
            child,
            console,
            port,
            key: login.key.clone(),
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Wait until the console, past byte `from`, has a line containing
    /// `text`; returns that line and where the console ended then.
    pub fn wait_for(&mut self, text: &str, from: usize) -> (String, usize) {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            let all = self.console_text();
            let tail = all.get(from..).unwrap_or("");
            if let Some(l) = tail.lines().find(|l| l.contains(text)) {
                return (l.to_string(), all.len());
            }
            let stopped = self.child.try_wait().unwrap().is_some();
            assert!(
                !stopped && Instant::now() < deadline,
                "{text:?} never came on the console ({}):\n{}",
                if stopped { "QEMU stopped" } else { "timed out" },
                &all[all.len().saturating_sub(6000)..]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ssh_args(&self, c: &mut Command) {
        c.arg("-i").arg(&self.key).args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]);
    }

    /// `ssh` running `script` in the guest as `core`, to spawn.
    pub fn ssh_command(&self, user: &TestUser, scratch: &Scratch, script: &str) -> Command {
        let mut c = user.command(scratch, "ssh");
        self.ssh_args(&mut c);
        c.args(["-p", &self.port.to_string(), "core@127.0.0.1", script]);
        c
    }

    /// Run `script` in the guest as `core`.
    pub fn ssh(&self, user: &TestUser, scratch: &Scratch, script: &str) -> Output {
        self.ssh_command(user, scratch, script).output().unwrap()
    }

    /// Pull the plug: QEMU is killed, the disk keeps what reached it.
    pub fn power_cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait until ssh answers.
    pub fn wait_for_ssh(&self, user: &TestUser, scratch: &Scratch) {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            let o = self.ssh(user, scratch, "true");
            if o.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ssh never answered: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Copy `files` into the guest's `dir`.
    pub fn copy_in(&self, user: &TestUser, scratch: &Scratch, files: &[&Path], dir: &str) {
        let mut c = user.command(scratch, "scp");
        self.ssh_args(&mut c);
        c.args(["-q", "-P", &self.port.to_string()]);
        c.args(files);
        c.arg(format!("core@127.0.0.1:{dir}/"));
        run_ok(&mut c);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
