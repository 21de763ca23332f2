//! End-to-end test harness: runs the built `sdk-run` / `sdk-tools` binaries
//! as an unprivileged user, in temp dirs that user owns, the way a person
//! would. The environment comes from `.ci/setup-test-env.sh` (run by
//! `make test`):
//!
//! - `SDK_E2E_USER`: the unprivileged user (with /etc/subuid and /etc/subgid
//!   ranges) that commands run as;
//! - `SDK_E2E_BIN`: a directory holding `sdk-run` and `sdk-tools`, readable
//!   by that user.
//!
//! When the tests run as root without that environment they fail with a line
//! saying to run `make test`; they never pass by skipping.

pub mod tars;
pub mod vm;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The user the end-to-end commands run as.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name; `None` means "the current user, no switch".
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn getent_passwd(name: &str) -> (u32, u32, PathBuf) {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .expect("run getent");
    assert!(
        out.status.success(),
        "test user {name} does not exist; run `make test`, which creates it"
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.trim().split(':').collect();
    (
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        PathBuf::from(f[5]),
    )
}

impl TestUser {
    /// The configured test user. Panics (fails the test) when the
    /// environment is not set up.
    pub fn get() -> TestUser {
        let euid = nix_euid();
        match std::env::var("SDK_E2E_USER") {
            Ok(name) if !name.is_empty() => {
                let (uid, gid, home) = getent_passwd(&name);
                if euid == uid {
                    TestUser {
                        name: None,
                        uid,
                        gid,
                        home,
                    }
                } else {
                    assert_eq!(
                        euid, 0,
                        "SDK_E2E_USER={name} needs the tests to run as root (to switch to it) or as {name}"
                    );
                    TestUser {
                        name: Some(name),
                        uid,
                        gid,
                        home,
                    }
                }
            }
            _ => {
                assert_ne!(
                    euid, 0,
                    "end-to-end tests run as root need SDK_E2E_USER; run `make test`, which sets up an unprivileged test user"
                );
                let name = std::env::var("USER").expect("USER");
                let (uid, gid, home) = getent_passwd(&name);
                TestUser {
                    name: None,
                    uid,
                    gid,
                    home,
                }
            }
        }
    }

    /// A command that runs `program` as this user with a clean, predictable
    /// environment (HOME, USER, PATH, and `XDG_DATA_HOME` inside `scratch`).
    pub fn command(&self, scratch: &Scratch, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match &self.name {
            Some(name) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    &self.uid.to_string(),
                    "--regid",
                    &self.gid.to_string(),
                    "--init-groups",
                    "--",
                ]);
                c.arg(program);
                c.env_clear();
                c.env("USER", name).env("LOGNAME", name);
                c
            }
            None => Command::new(program),
        };
        cmd.env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir().display()),
            )
            .env("XDG_DATA_HOME", scratch.path().join("data"))
            .env("XDG_RUNTIME_DIR", scratch.path().join("run"))
            .current_dir(scratch.path());
        if let Ok(v) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        cmd
    }
}

fn nix_euid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Where the binaries under test live.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SDK_E2E_BIN") {
        return PathBuf::from(dir);
    }
    // Fall back to the cargo target dir of this workspace (running as the
    // developer, who can read it).
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["release", "debug"] {
        let d = target.join(profile);
        if d.join("sdk-run").exists() {
            return d;
        }
    }
    panic!("no built sdk-run found; run `make test` (or set SDK_E2E_BIN)");
}

/// A temporary directory owned by the test user, removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(user: &TestUser) -> Scratch {
        let base = std::env::var("SDK_E2E_TMP").unwrap_or_else(|_| "/tmp".into());
        let dir = tempfile::Builder::new()
            .prefix("sdk-e2e-")
            .tempdir_in(base)
            .expect("create scratch dir");
        for sub in ["data", "run"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        chown_r(user, dir.path());
        std::fs::set_permissions(
            dir.path().join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Give `path` (recursively) to the test user.
pub fn chown_r(user: &TestUser, path: &Path) {
    if user.name.is_some() {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Run and return the output, failing the test with both streams shown when
/// the status is not the expected one.
pub fn run_expect(cmd: &mut Command, expected: i32) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        expected,
        "{cmd:?} exited {code} (wanted {expected})\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run and expect success; returns stdout as a string.
pub fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_expect(cmd, 0).stdout).into_owned()
}

/// Subordinate uid range start of the test user (first line of
/// /etc/subuid), where root inside a sandbox or image lands on the host.
pub fn subuid_start(user: &TestUser) -> u32 {
    let name = user
        .name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let text = std::fs::read_to_string("/etc/subuid").expect("read /etc/subuid");
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && (f[0] == name || f[0] == user.uid.to_string()))
                .then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no /etc/subuid range for {name}; run `make test`"))
}

/// The shared store holding the embedded default SDK image, built once per
/// machine and reused by every test (and test run) that needs it.
///
/// Returns an `XDG_DATA_HOME` (set it on a command with
/// `.env("XDG_DATA_HOME", path)`) whose `sdk-run/images/` already contains
/// the default SDK: `sdk-run build` finds it there and `sdk-run -t` uses it.
/// The directory is `/var/tmp/sdk-e2e-sdk-<digest>` where `<digest>` is what
/// the default manifest resolves to (`sdk-run build --digest-only`: the
/// manifest plus the host's apt sources), so a changed manifest gets a new
/// store and an unchanged one is reused across runs. The first caller
/// builds it (a few minutes); concurrent callers wait on the store's lock.
/// Sandboxes created with this XDG_DATA_HOME are shared between tests:
/// give them unique names (`-n`) and remove them (`sdk-run rm -f`).
/// `SDK_E2E_SDK_STORE` overrides the directory.
pub fn default_sdk_store() -> PathBuf {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let dir = match std::env::var_os("SDK_E2E_SDK_STORE") {
        Some(d) => PathBuf::from(d),
        None => {
            let digest = run_ok(
                user.command(&scratch, "sdk-run")
                    .args(["build", "--digest-only"]),
            );
            PathBuf::from(format!("/var/tmp/sdk-e2e-sdk-{}", &digest.trim()[..16]))
        }
    };
    if !dir.exists() {
        std::fs::create_dir_all(&dir).expect("create the shared SDK store");
        if user.name.is_some() {
            let st = Command::new("chown")
                .arg(format!("{}:{}", user.uid, user.gid))
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    run_ok(
        user.command(&scratch, "sdk-run")
            .arg("build")
            .env("XDG_DATA_HOME", &dir),
    );
    dir
}

/// Run expecting bad-input exit code 2 and return stderr, checked to be a
/// single line (the house rule for bad input).
/// Whether `line` is a plain progress line (`2026-12-02T13:40:01Z tool: ...`),
/// which long work prints to stderr when it is not a terminal.
pub fn is_progress_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 21
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'Z'
        && b[20] == b' '
        && line[..4].parse::<u32>().is_ok()
}

/// The lines of `stderr` that are not progress: what a failure says.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_progress_line(l))
        .collect()
}

pub fn run_bad_input(cmd: &mut Command) -> String {
    let err = String::from_utf8_lossy(&run_expect(cmd, 2).stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line wanted: {err}");
    err
}

/// Deterministic pseudo-random bytes (xorshift64), for test data that
/// neither compresses nor repeats.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Flip one bit of `path` at `byte` (in place).
pub fn flip_bit(path: &Path, byte: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8];
    f.read_exact_at(&mut b, byte).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, byte).unwrap();
}

/// The usual start of a test: the test user and a scratch directory it
/// owns, with short ways to name files there and run commands as it.
pub struct Session {
    pub user: TestUser,
    pub scratch: Scratch,
}

impl Default for Session {
    fn default() -> Session {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        let user = TestUser::get();
        let scratch = Scratch::new(&user);
        Session { user, scratch }
    }

    /// `name` inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Write `bytes` to `name` in the scratch directory, owned by the user.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        chown_r(&self.user, &p);
        p
    }

    /// `program args...` as the user, in the scratch directory.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.user.command(&self.scratch, program);
        c.args(args);
        c
    }

    /// Run as the user, expect success, return stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        run_ok(&mut self.cmd(program, args))
    }
}

/// A minimal rootfs at `dir`: Debian's static busybox (package
/// busybox-static) as `bin/busybox` with a link per applet. Owned by
/// whoever runs the tests; `chown_r` it for the test user.
pub fn busybox_rootfs(dir: &Path) {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.exists(),
        "/bin/busybox is missing: install busybox-static (`make test` does)"
    );
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for name in String::from_utf8(list.stdout).unwrap().lines() {
        if name != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(name)).unwrap();
        }
    }
}

/// A terminal a person would type into: a detached tmux session, on its
/// own server socket, running one command as the test user. Keys go in
/// with [`Tmux::type_line`] and [`Tmux::send`]; what the window shows
/// comes back from [`Tmux::screen`]. The server is killed on drop.
pub struct Tmux {
    socket: PathBuf,
    /// How tmux is run (program, leading arguments, environment,
    /// directory), copied from the command given to [`Tmux::start`].
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    dir: Option<PathBuf>,
}

impl Tmux {
    /// Start `command_line` (run by the user's shell) in a 120x40 window.
    /// `tmux` runs tmux (e.g. `user.command(scratch, "tmux")`); its user,
    /// environment and directory become the session's.
    pub fn start(tmux: Command, scratch: &Scratch, command_line: &str) -> Tmux {
        let t = Tmux {
            socket: scratch.path().join(format!("tmux-{}.sock", unique())),
            program: tmux.get_program().to_owned(),
            args: tmux.get_args().map(ToOwned::to_owned).collect(),
            envs: tmux
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect(),
            dir: tmux.get_current_dir().map(ToOwned::to_owned),
        };
        let out = t.tmux(&["new-session", "-d", "-x", "120", "-y", "40", command_line]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .env_clear()
            .envs(self.envs.iter().cloned());
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c.arg("-S").arg(&self.socket).args(args);
        c.output().expect("run tmux")
    }

    /// Type `text` and press Enter.
    pub fn type_line(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-t", "0", "-l", text]);
        assert!(out.status.success(), "tmux send-keys failed");
        self.send(&["Enter"]);
    }

    /// Send tmux key names (`Enter`, `C-c`, ...).
    pub fn send(&self, keys: &[&str]) {
        let out = self.tmux(&[&["send-keys", "-t", "0"][..], keys].concat());
        assert!(out.status.success(), "tmux send-keys failed");
    }

    /// What the window shows now, with up to 200 lines of history.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-S", "-200"]).stdout)
            .into_owned()
    }

    /// Poll the window until `pred` holds for it, at most `limit`; fails
    /// the test showing the window otherwise.
    pub fn wait_for(&self, what: &str, limit: std::time::Duration, pred: impl Fn(&str) -> bool) {
        let start = std::time::Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; the terminal shows:\n{s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Is the session still there (its command still running)?
    pub fn alive(&self) -> bool {
        self.tmux(&["has-session"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A copy of one of the repo's example distro repos (`examples/NAME`) in a
/// scratch folder, owned by the test user, with the boot tests' shared
/// Debian package cache and its own build root.
pub struct ExampleRepo {
    pub path: PathBuf,
    cache: PathBuf,
    build_root: PathBuf,
}

impl ExampleRepo {
    pub fn new(user: &TestUser, scratch: &Scratch, name: &str) -> ExampleRepo {
        let path = scratch.path().join(name);
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        run_ok(Command::new("cp").arg("-a").arg(&src).arg(&path));
        let _ = std::fs::remove_dir_all(path.join("__build__"));
        let cache = PathBuf::from(std::env::var("SDK_E2E_TMP").unwrap_or_else(|_| "/tmp".into()))
            .join(format!("sdk-e2e-boot-cache-{}", user.uid));
        std::fs::create_dir_all(&cache).unwrap();
        chown_r(user, &cache);
        chown_r(user, scratch.path());
        ExampleRepo {
            path,
            cache,
            build_root: scratch.path().join("build"),
        }
    }

    /// `sdk-tools VERB --board BOARD` as the test user, in the repo.
    pub fn tool(&self, user: &TestUser, scratch: &Scratch, verb: &str, board: &str) -> Command {
        let mut c = user.command(scratch, "sdk-tools");
        c.arg(verb)
            .args(["--board", board])
            .current_dir(&self.path)
            .env("SDK_BUILD_ROOT", &self.build_root)
            .env("SDK_CACHE_DIR", &self.cache);
        c
    }
}

/// The disk layout of the `testboard` board: small partitions, the
/// layout variants the image tests build.
pub const TEST_BOARD_LAYOUT: &str = r#"
[disk]
sector-size = 512
alignment = "1MiB"
arch = "x86-64"

[[partition]]
number = 1
label = "EFI-SYSTEM"
type = "efi"
size = "40MiB"
fs = "vfat"

[[partition]]
number = 2
label = "BIOS-BOOT"
type = "bios"
size = "1MiB"

[[partition]]
number = 3
label = "USR-A"
type = "flatcar-usr"
size = "24MiB"
features = ["prioritize", "verity"]
fs = "ext4"

[[partition]]
number = 4
label = "USR-B"
type = "flatcar-usr"
size = "24MiB"

[[partition]]
number = 6
label = "OEM"
type = "linux"
size = "8MiB"
fs = "ext4"

[[partition]]
number = 9
label = "ROOT"
type = "flatcar-resize"
size = "16MiB"
fs = "ext4"

# USR-A too small for the content (its filesystem alone is 1 MiB, then
# the verity tree).
[variant.tiny.partition.3]
size = "1MiB"

[variant.erofs.partition.3]
fs = "erofs"

[variant.squashfs.partition.3]
fs = "squashfs"
"#;

pub const TEST_BOARD_PROFILE: &str = r#"
description = "test board"
arch = "x86_64"
debian-arch = "amd64"
target = "x86_64-linux-gnu"
os-package = "meta/os"
disk-layout = "disk-layout.toml"
kernel-cmdline = ["systemd.log_level=info", "sdk.test=1"]

[toolchain]
cc = "x86_64-linux-gnu-gcc"
cxx = "x86_64-linux-gnu-g++"
ar = "x86_64-linux-gnu-ar"
"#;

/// `profiles/testboard/` in `repo`: an x86_64 board with the small
/// layout above, for builds from a staging root (`build_image --root`).
pub fn write_test_board(repo: &Path) {
    let dir = repo.join("profiles/testboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("profile.toml"), TEST_BOARD_PROFILE).unwrap();
    std::fs::write(dir.join("disk-layout.toml"), TEST_BOARD_LAYOUT).unwrap();
}

/// Byte offset of the partition named `name`, as sfdisk reads the GPT.
pub fn part_offset(user: &TestUser, scratch: &Scratch, image: &Path, name: &str) -> u64 {
    let parts = run_ok(user.command(scratch, "sfdisk").arg("--json").arg(image));
    let v: serde_json::Value = serde_json::from_str(&parts).unwrap();
    let start = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} partition: {parts}"))["start"]
        .as_u64()
        .unwrap();
    start * 512
}

/// Set `os-version` in the repo's `sdk-version.toml`.
pub fn set_os_version(repo: &Path, version: &str) {
    let f = repo.join("sdk-version.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("os-version") {
                format!("os-version = \"{version}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(f, text).unwrap();
}

/// The file of `dir` whose name ends with `suffix` (an image artifact:
/// `_image.bin`, `_update.json`, `_qemu.sh`, ...).
pub fn artifact(dir: &Path, suffix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}
