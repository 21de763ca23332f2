//! The sandbox, end to end: the release `sdk-run` run as the unprivileged
//! test user against a busybox rootfs built here from Debian's
//! busybox-static, with real newuidmap/newgidmap, namespaces and ptys.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdk_e2e::{Scratch, TestUser, busybox_rootfs, chown_r, run_expect, run_ok};

/// A test user's scratch with a busybox rootfs, a repo dir to stand in,
/// and cleanup of every sandbox it made.
struct Env {
    user: TestUser,
    scratch: Scratch,
}

impl Env {
    fn new() -> Env {
        let user = TestUser::get();
        let scratch = Scratch::new(&user);
        busybox_rootfs(&scratch.path().join("rootfs"));
        std::fs::create_dir_all(scratch.path().join("repo/sub")).unwrap();
        chown_r(&user, scratch.path());
        Env { user, scratch }
    }

    fn rootfs(&self) -> PathBuf {
        self.scratch.path().join("rootfs")
    }

    fn repo(&self) -> PathBuf {
        self.scratch.path().join("repo")
    }

    /// `sdk-run ARGS` as the test user, standing in the repo.
    fn sdk(&self, args: &[&str]) -> Command {
        let mut c = self.user.command(&self.scratch, "sdk-run");
        c.args(args).current_dir(self.repo());
        c
    }

    /// `sdk-run -n NAME --rootfs R -- sh -c SCRIPT` (creating on first use).
    fn sh(&self, name: &str, script: &str) -> Command {
        let r = self.rootfs();
        self.sdk(&[
            "-n",
            name,
            "--rootfs",
            r.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
    }

    /// Another program run as the test user (tmux, script).
    fn as_user(&self, program: &str) -> Command {
        let mut c = self.user.command(&self.scratch, program);
        c.current_dir(self.repo());
        c
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let out = run_ok(&mut self.sdk(&["list", "--json"]));
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn init_pid(&self, name: &str) -> Option<i32> {
        self.list()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["pid"].as_i64())
            .map(|p| p as i32)
    }

    /// A directory of the test user's with executable `scripts` (name,
    /// text), and a PATH that puts it before sdk-run's and the system's.
    fn fake_tools(&self, dir: &str, scripts: &[(&str, &str)]) -> String {
        let d = self.scratch.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in scripts {
            std::fs::write(d.join(name), text).unwrap();
            std::fs::set_permissions(
                d.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        chown_r(&self.user, &d);
        format!(
            "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
            d.display(),
            sdk_e2e::bin_dir().display()
        )
    }

    fn sandboxes_dir(&self) -> PathBuf {
        self.scratch.path().join("data/sdk-run/sandboxes")
    }

    /// Every file under the scratch's state dir (to show nothing changed).
    fn snapshot(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    out.push(e.path());
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.scratch.path().join("data"), &mut v);
        walk(&self.repo(), &mut v);
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never leave sandboxes running behind a test.
        if let Ok(out) = self.sdk(&["list", "--json"]).output()
            && let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&out.stdout)
        {
            for e in list {
                if let Some(n) = e["name"].as_str() {
                    let _ = self.sdk(&["rm", "-f", n]).output();
                }
            }
        }
    }
}

fn stdout_of(cmd: &mut Command) -> String {
    run_ok(cmd).trim().to_string()
}

/// The first id of the test user's subordinate range in `file`.
fn sub_start(user: &TestUser, file: &str) -> u32 {
    let name = user
        .name
        .clone()
        .unwrap_or_else(|| std::env::var("USER").unwrap());
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && (f[0] == name || f[0] == user.uid.to_string()))
                .then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no range for {name} in {file}; run `make test`"))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Is `pid` alive and not a zombie?
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit_once(')').map(|x| x.1.trim_start()).unwrap_or("");
            !st.starts_with('Z') && !st.starts_with('X')
        })
        .unwrap_or(false)
}

/// Live processes in the pid namespace with inode `ns`.
fn live_processes_in(ns: u64) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .map(|m| m.ino())
            .ok()
            == Some(ns)
            && alive(pid)
        {
            out.push(pid.to_string());
        }
    }
    out
}

/// The recorded pid namespace of a running sandbox.
fn pid_ns(env: &Env, name: &str) -> u64 {
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.sandboxes_dir().join(name).join("state.json")).unwrap(),
    )
    .unwrap();
    st["ns"]["pid"].as_u64().unwrap()
}

#[test]
fn create_enter_and_identity() {
    let env = Env::new();
    let out = stdout_of(&mut env.sh("box", "id; hostname; pwd"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uid=1000(sdk) gid=1000(sdk) groups=1000(sdk)");
    assert_eq!(lines[1], "box");
    assert_eq!(lines[2], "/mnt/host/source");
    // The working directory follows into the repo.
    let mut c = env.sdk(&["-n", "box", "--", "pwd"]);
    c.current_dir(env.repo().join("sub"));
    assert_eq!(stdout_of(&mut c), "/mnt/host/source/sub");
    // Root inside.
    assert_eq!(
        stdout_of(&mut env.sdk(&["-n", "box", "-u", "root", "--", "id", "-u"])),
        "0"
    );
    // The sdk user and home were added to the rootfs.
    let passwd = std::fs::read_to_string(env.rootfs().join("etc/passwd")).unwrap();
    assert!(passwd.contains("sdk:x:1000:1000:"), "{passwd}");
    assert_eq!(
        stdout_of(&mut env.sdk(&[
            "-n",
            "box",
            "--",
            "sh",
            "-c",
            "echo $HOME; test -d $HOME && echo ok"
        ])),
        "/home/sdk\nok"
    );
    // Pipes work without -t.
    let mut c = env.sdk(&["-n", "box", "--", "tr", "a-z", "A-Z"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "PIPED\n");
    // sdk-tools is bound read-only with its links on PATH.
    let out = stdout_of(&mut env.sdk(&["-n", "box", "--", "sh", "-c",
        "echo $PATH; test -f /run/sdk-tools/bin/sdk-tools && echo bound; echo x > /run/sdk-tools/bin/sdk-tools 2>/dev/null || echo ro"]));
    assert!(out.starts_with("/run/sdk-tools/bin:"), "{out}");
    assert!(out.contains("bound") && out.ends_with("ro"), "{out}");
    // The environment: SOURCE_DATE_EPOCH and proxies pass through, -e sets
    // (NAME=VALUE) or passes (NAME) a variable, an unset NAME is skipped,
    // anything else stays outside.
    let mut c = env.sdk(&[
        "-n",
        "box",
        "-e",
        "V=1",
        "-e",
        "CC",
        "-e",
        "NOT_SET_ANYWHERE",
        "--",
        "sh",
        "-c",
        "echo $SOURCE_DATE_EPOCH $https_proxy $V $CC ${NOT_SET_ANYWHERE-unset} ${SECRET-hidden}",
    ]);
    c.env("SOURCE_DATE_EPOCH", "1700000000")
        .env("https_proxy", "http://127.0.0.1:3128")
        .env("CC", "clang")
        .env("SECRET", "x")
        .env_remove("NOT_SET_ANYWHERE");
    assert_eq!(
        stdout_of(&mut c),
        "1700000000 http://127.0.0.1:3128 1 clang unset hidden"
    );
    // Listed with its rootfs and repo mount.
    let l = env.list();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["state"], "running");
    assert_eq!(
        l[0]["rootfs"],
        env.rootfs().canonicalize().unwrap().to_str().unwrap()
    );
    assert!(
        l[0]["mounts"][0]
            .as_str()
            .unwrap()
            .ends_with("repo:/mnt/host/source")
    );
}

#[test]
fn consoles_share_one_sandbox_and_outlive_each_other() {
    let env = Env::new();
    let mut first: Child = env
        .sh("box", "echo from-first > /tmp/shared; sleep 600")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first console's file", || {
        env.sdk(&["-n", "box", "--", "cat", "/tmp/shared"])
            .output()
            .map(|o| o.status.success() && o.stdout == b"from-first\n")
            .unwrap_or(false)
    });
    // Closing the first console does not end the sandbox.
    let pid = env.init_pid("box").unwrap();
    let _ = nix_kill(first.id() as i32, 15);
    let st = first.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(15),
        "the launcher dies of the command's signal"
    );
    assert_eq!(
        stdout_of(&mut env.sdk(&["-n", "box", "--", "cat", "/tmp/shared"])),
        "from-first"
    );
    assert_eq!(env.init_pid("box"), Some(pid));
}

fn nix_kill(pid: i32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn ten_concurrent_invocations_make_one_sandbox() {
    let env = Env::new();
    let children: Vec<Child> = (0..10)
        .map(|_| {
            env.sh("many", "readlink /proc/self/ns/pid")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ns = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ns.push(String::from_utf8(o.stdout).unwrap());
    }
    ns.dedup();
    assert_eq!(ns.len(), 1, "all ten ran in one pid namespace: {ns:?}");
    let l = env.list();
    assert_eq!(l.len(), 1, "{l:?}");
    let names: Vec<_> = std::fs::read_dir(env.sandboxes_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let env = Env::new();
    run_expect(&mut env.sh("box", "exit 42"), 42);
    run_expect(&mut env.sdk(&["-n", "box", "--", "no-such-command"]), 127);
    run_expect(&mut env.sdk(&["-n", "box", "--", "/etc"]), 126);
    let st = env.sh("box", "kill -TERM $$").status().unwrap();
    assert_eq!(st.signal(), Some(15));
    // A signal sent to the launcher reaches the command.
    let mut c = env
        .sh(
            "box",
            "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.05; done",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    use std::io::Read;
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    assert!(nix_kill(c.id() as i32, 2));
    let st = c.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!((st.code(), rest.as_str()), (Some(5), "got-int\n"));
}

#[test]
fn files_on_binds_belong_to_the_caller_and_root_maps_to_the_subordinate_range() {
    let env = Env::new();
    run_ok(&mut env.sh("box", "echo mine > /mnt/host/source/by-sdk"));
    run_ok(&mut env.sdk(&[
        "-n",
        "box",
        "-u",
        "root",
        "--",
        "touch",
        "/mnt/host/source/by-root",
    ]));
    let m = std::fs::metadata(env.repo().join("by-sdk")).unwrap();
    assert_eq!((m.uid(), m.gid()), (env.user.uid, env.user.gid));
    let m = std::fs::metadata(env.repo().join("by-root")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (
            sub_start(&env.user, "/etc/subuid"),
            sub_start(&env.user, "/etc/subgid")
        )
    );
    // Outside a repo (no sdk-version.toml) no __build__ is made in the
    // bound directory; one that exists is bound (a repo's is made: see
    // the packages tests, which build into it).
    assert!(!env.repo().join("__build__").exists(), "no stray __build__");
    std::fs::create_dir(env.repo().join("__build__")).unwrap();
    chown_r(&env.user, &env.repo());
    run_ok(&mut env.sdk(&["stop", "box"]));
    run_ok(&mut env.sh("box", "echo out > /mnt/host/source/__build__/artifact"));
    assert!(env.repo().join("__build__/artifact").exists());
    // -v with :ro.
    let extra = env.scratch.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("f"), "ro-data").unwrap();
    chown_r(&env.user, &extra);
    let v = format!("{}:/opt/extra:ro", extra.display());
    let r = env.rootfs();
    let out = stdout_of(&mut env.sdk(&[
        "-n",
        "vol",
        "--rootfs",
        r.to_str().unwrap(),
        "-v",
        &v,
        "--",
        "sh",
        "-c",
        "cat /opt/extra/f; echo; touch /opt/extra/g 2>/dev/null && echo writable || echo read-only",
    ]));
    assert_eq!(out, "ro-data\nread-only");
}

/// Root inside cannot undo the sandbox's read-only mounts: remounting
/// the sdk-tools bind or /sys writable fails, also from a nested user and
/// mount namespace (the kernel locks the copies there), and the tools
/// file stays unwritten; CAP_SYS_ADMIN and CAP_SYS_PTRACE are not in any
/// entered process's bounding set, so sudo cannot bring them back.
#[test]
fn root_inside_cannot_remount_the_tools_or_sys_writable() {
    let env = Env::new();
    let r = env.rootfs();
    let script = "grep CapBnd /proc/self/status; \
        for m in /run/sdk-tools/bin/sdk-tools /sys; do mount -o remount,rw,bind $m 2>/dev/null && echo remounted $m; done; \
        unshare -r -m sh -c 'mount -o remount,rw,bind /run/sdk-tools/bin/sdk-tools 2>/dev/null && echo nested-remounted'; \
        echo x >> /run/sdk-tools/bin/sdk-tools 2>/dev/null && echo tools-written; echo end";
    let out = stdout_of(&mut env.sdk(&[
        "-n",
        "caps",
        "--rootfs",
        r.to_str().unwrap(),
        "-u",
        "root",
        "--",
        "sh",
        "-c",
        script,
    ]));
    assert!(out.ends_with("end"), "{out}");
    for bad in ["remounted", "nested-remounted", "tools-written"] {
        assert!(!out.contains(bad), "{bad}: {out}");
    }
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no CapBnd: {out}"));
    // CAP_SYS_PTRACE is 19, CAP_SYS_ADMIN 21; CAP_CHOWN (0) stays, for
    // package installs that own files as root.
    assert_eq!(bnd & (1 << 19 | 1 << 21), 0, "{bnd:x}");
    assert_ne!(bnd & 1, 0, "{bnd:x}");
}

/// What the outside probe checked, as `sdk` and as root inside: global
/// sysctls under /proc/sys cannot be written, no device
/// node can be made, no descriptor of the launcher leaks in, and ids map
/// to the caller and the subordinate range only.
#[test]
fn neither_sdk_nor_root_inside_reach_the_host() {
    let env = Env::new();
    let r = env.rootfs();
    // Writes that would change nothing if they went through (the value
    // already there): the test never alters the machine it runs on.
    let script = "for f in /proc/sys/kernel/sysrq /proc/sys/vm/swappiness /proc/sys/net/core/somaxconn; do \
          v=$(cat $f); echo $v 2>/dev/null > $f && echo wrote $f; done; \
        mknod /tmp/dev-null c 1 3 2>/dev/null && echo mknod-made; \
        echo fds: $(ls /proc/self/fd); \
        echo map: $(cat /proc/self/uid_map); echo end";
    for user in ["sdk", "root"] {
        let out = stdout_of(&mut env.sdk(&[
            "-n",
            "probe",
            "--rootfs",
            r.to_str().unwrap(),
            "-u",
            user,
            "--",
            "sh",
            "-c",
            script,
        ]));
        assert!(out.ends_with("end"), "{user}: {out}");
        for bad in ["wrote", "mknod-made"] {
            assert!(!out.contains(bad), "{user}: {bad}: {out}");
        }
        let fds = out
            .lines()
            .find_map(|l| l.strip_prefix("fds:"))
            .unwrap_or_default();
        // stdio, and the directory ls reads.
        for fd in fds.split_whitespace() {
            assert!(
                ["0", "1", "2", "3"].contains(&fd),
                "{user}: leaked fd {fd}: {out}"
            );
        }
        let map = out
            .lines()
            .find_map(|l| l.strip_prefix("map:"))
            .unwrap_or_default();
        let nums: Vec<u64> = map.split_whitespace().map(|n| n.parse().unwrap()).collect();
        // Triples of (inside, outside, count); the caller at 1000, the
        // rest inside the test user's subordinate range.
        let sub = sdk_e2e::subuid_start(&env.user) as u64;
        for t in nums.chunks(3) {
            let outside = t[1];
            assert!(
                outside == env.user.uid as u64 || (sub..sub + 65536).contains(&outside),
                "{user}: {map}"
            );
        }
    }
}

#[test]
fn host_is_hidden_and_sys_is_read_only() {
    let env = Env::new();
    let secret = env.scratch.path().join("secret");
    std::fs::write(&secret, "x").unwrap();
    let script = format!(
        "ls /proc | grep -c '^[0-9]*$'; cat /proc/1/comm; test -e {} && echo host-visible; test -e /home/{} && echo home-visible; touch /sys/x 2>&1; echo end",
        secret.display(),
        env.user.name.clone().unwrap_or_default()
    );
    let out = stdout_of(&mut env.sh("box", &script));
    let lines: Vec<&str> = out.lines().collect();
    let procs: usize = lines[0].parse().unwrap();
    assert!(
        procs <= 4,
        "only the sandbox's processes are visible: {out}"
    );
    assert_eq!(lines[1], "sdk-run-init");
    assert!(
        !out.contains("host-visible") && !out.contains("home-visible"),
        "{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    // Even root inside cannot write /sys.
    let out = env
        .sdk(&[
            "-n",
            "box",
            "-u",
            "root",
            "--",
            "sh",
            "-c",
            "echo 1 > /sys/kernel/mm/ksm/run",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The host's pids are not ours to see: our own pid is not in there.
    let me = std::process::id();
    let out = stdout_of(&mut env.sdk(&[
        "-n",
        "box",
        "--",
        "sh",
        "-c",
        &format!("test -e /proc/{me}/comm && echo seen || echo hidden"),
    ]));
    assert_eq!(out, "hidden");
    // --net none: only loopback, and it is up.
    let r = env.rootfs();
    let out = stdout_of(&mut env.sdk(&[
        "-n",
        "nonet",
        "--net",
        "none",
        "--rootfs",
        r.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    ]));
    assert_eq!(out, "lo");
}

#[test]
fn stop_and_rm_clean_up_every_process_and_file() {
    let env = Env::new();
    // A tarball rootfs, extracted into the sandbox's own directory.
    let tarball = env.scratch.path().join("rootfs.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(env.rootfs())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    chown_r(&env.user, &tarball);
    let t = tarball.to_str().unwrap();
    run_ok(&mut env.sdk(&[
        "-n",
        "box",
        "--rootfs",
        t,
        "-u",
        "root",
        "--",
        "sh",
        "-c",
        "mkdir -p /var/lib/x && echo y > /var/lib/x/root-file",
    ]));
    let mut bg = env
        .sdk(&["-n", "box", "--", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = env.init_pid("box").unwrap();
    let ns = pid_ns(&env, "box");
    wait_for("the background command", || {
        live_processes_in(ns).len() >= 2
    });
    run_ok(&mut env.sdk(&["stop", "box"]));
    assert!(!alive(pid));
    assert_eq!(bg.wait().unwrap().signal(), Some(9));
    assert_eq!(live_processes_in(ns), Vec::<String>::new());
    let l = env.list();
    assert_eq!(
        (l[0]["state"].as_str(), l[0]["pid"].as_i64()),
        (Some("stopped"), None)
    );
    // Files stay after stop; rm removes all of them, root-owned ones too.
    assert!(
        env.sandboxes_dir()
            .join("box/rootfs/var/lib/x/root-file")
            .exists()
    );
    run_ok(&mut env.sdk(&["rm", "box"]));
    assert_eq!(std::fs::read_dir(env.sandboxes_dir()).unwrap().count(), 0);
    assert!(env.list().is_empty());
    // rm -f of a running one.
    run_ok(&mut env.sh("two", "true"));
    let pid = env.init_pid("two").unwrap();
    run_expect(&mut env.sdk(&["rm", "two"]), 2);
    run_ok(&mut env.sdk(&["rm", "-f", "two"]));
    assert!(!alive(pid));
    assert_eq!(std::fs::read_dir(env.sandboxes_dir()).unwrap().count(), 0);
    // --rm: a throwaway sandbox.
    let r = env.rootfs();
    assert_eq!(
        stdout_of(&mut env.sdk(&[
            "--rm",
            "-n",
            "tmp",
            "--rootfs",
            r.to_str().unwrap(),
            "--",
            "echo",
            "once"
        ])),
        "once"
    );
    assert_eq!(std::fs::read_dir(env.sandboxes_dir()).unwrap().count(), 0);
    // prune removes stopped sandboxes, keeps running ones.
    run_ok(&mut env.sh("keep", "true"));
    run_ok(&mut env.sh("gone", "true"));
    run_ok(&mut env.sdk(&["stop", "gone"]));
    run_ok(&mut env.sdk(&["prune", "-f"]));
    let names: Vec<_> = env
        .list()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["keep"]);
}

#[test]
fn dead_init_is_restarted_with_the_rootfs_intact() {
    let env = Env::new();
    run_ok(&mut env.sdk(&[
        "-n",
        "box",
        "--rootfs",
        env.rootfs().to_str().unwrap(),
        "--overlay",
        "-u",
        "root",
        "--",
        "sh",
        "-c",
        "echo kept > /etc/marker",
    ]));
    let pid = env.init_pid("box").unwrap();
    assert!(nix_kill(pid, 9));
    wait_for("the init to die", || !alive(pid));
    assert_eq!(env.list()[0]["state"], "stopped");
    assert_eq!(
        stdout_of(&mut env.sdk(&["-n", "box", "--", "cat", "/etc/marker"])),
        "kept"
    );
    let new = env.init_pid("box").unwrap();
    assert_ne!(new, pid);
    // The overlay kept the shared rootfs untouched.
    assert!(!env.rootfs().join("etc/marker").exists());
}

#[test]
fn tty_gives_a_pts_inside_with_job_control() {
    let env = Env::new();
    run_ok(&mut env.sh("box", "true"));
    let sock = env.scratch.path().join("tmux.sock");
    let sock = sock.to_str().unwrap();
    let tmux = |args: &[&str]| {
        let mut c = env.as_user("tmux");
        c.arg("-S").arg(sock).args(args);
        c
    };
    run_ok(&mut tmux(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "sdk-run -n box -t",
    ]));
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).output().unwrap().stdout)
            .into_owned()
    };
    let send = |keys: &[&str]| run_ok(&mut tmux(&[&["send-keys", "-t", "0"][..], keys].concat()));
    let t = Instant::now();
    while !pane().contains("/mnt/host/source $") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no prompt: {}",
            pane()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    send(&["tty; ls /dev/pts; stty size; echo mark-$((6*7))", "Enter"]);
    wait_for("tty output", || pane().contains("mark-42"));
    let p = pane();
    assert!(p.contains("\n/dev/pts/0\n"), "{p}");
    assert!(
        p.contains("\n0      ptmx\n") || p.contains("\n0     ptmx\n") || p.contains("0\nptmx"),
        "only the sandbox's own pts: {p}"
    );
    assert!(p.contains("\n40 120\n"), "window size follows: {p}");
    // Job control: stop a foreground job, list it, resume and interrupt it.
    send(&["sleep 30", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    send(&["C-z"]);
    wait_for("the job to stop", || pane().contains("Stopped"));
    send(&["jobs; echo jobs-$((1+1))", "Enter"]);
    wait_for("jobs", || pane().contains("jobs-2"));
    send(&["fg", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    send(&["C-c"]);
    send(&["echo status-$?", "Enter"]);
    wait_for("the interrupted job's status", || {
        pane().contains("status-130")
    });
    // A window-size change reaches the shell.
    run_ok(&mut tmux(&["resize-window", "-x", "100", "-y", "30"]));
    std::thread::sleep(Duration::from_millis(300));
    send(&["stty size", "Enter"]);
    wait_for("the new size", || pane().contains("\n30 100\n"));
    send(&["exit 3", "Enter"]);
    wait_for("tmux to end", || {
        !tmux(&["has-session"]).output().unwrap().status.success()
    });
    // Under `script`, the exit status comes through.
    let st = env
        .as_user("script")
        .args([
            "-qec",
            "sdk-run -n box -t -- sh -c 'test -t 0 && exit 9'",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(9));
    // `-it`, as podman and docker users type it, is the same.
    let st = env
        .as_user("script")
        .args([
            "-qec",
            "sdk-run -n box -it -- sh -c 'test -t 0 && exit 8'",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(8));
}

#[test]
fn bad_input_is_one_line_exit_2_and_changes_nothing() {
    let env = Env::new();
    run_ok(&mut env.sh("box", "true"));
    let before = env.snapshot();
    let r = env.rootfs();
    let r = r.to_str().unwrap();
    let bad_version = env.scratch.path().join("badrepo");
    std::fs::create_dir(&bad_version).unwrap();
    std::fs::write(
        bad_version.join("sdk-version.toml"),
        "sdk-version = \"1\"\nos = \"2\"\n",
    )
    .unwrap();
    chown_r(&env.user, &bad_version);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["stop", "nosuch"], "no sandbox named"),
        (vec!["rm", "nosuch"], "no sandbox named"),
        (vec!["rm", "-f", "nosuch"], "no sandbox named"),
        (
            vec!["-n", "new", "--rootfs", r, "-v", "nonsense", "--", "true"],
            "SRC:DST",
        ),
        (
            vec![
                "-n",
                "new",
                "--rootfs",
                r,
                "-v",
                "/no/such/dir:/x",
                "--",
                "true",
            ],
            "does not exist",
        ),
        (
            vec![
                "-n",
                "new",
                "--rootfs",
                r,
                "--device",
                "/dev/no-such-device",
                "--",
                "true",
            ],
            "no such device",
        ),
        (
            vec![
                "-n",
                "new",
                "--rootfs",
                r,
                "--device",
                "/etc/passwd",
                "--",
                "true",
            ],
            "not a device",
        ),
        (
            vec!["-n", "new", "--rootfs", "/no/such/rootfs", "--", "true"],
            "--rootfs",
        ),
        (vec!["--", "true"], "sdk-version.toml"),
        (vec!["-n", "bad/name", "--", "true"], "not a sandbox name"),
        (
            vec!["-n", "box", "--net", "none", "--", "true"],
            "exists with other --net",
        ),
        (
            vec!["-n", "box", "-u", "nobody-here", "--", "true"],
            "no user",
        ),
        (vec!["--net", "bridge"], "invalid value"),
        (vec!["completions", "tcsh"], "invalid value"),
    ];
    for (args, needle) in cases {
        let out = run_expect(&mut env.sdk(&args), 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got:\n{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A broken version file names the file, the line and the key.
    let mut c = env.sdk(&["--", "true"]);
    c.current_dir(&bad_version);
    let out = run_expect(&mut c, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sdk-version.toml:2:") && err.contains("os"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before, "bad input changed files");
    // No user namespaces: in a user namespace whose limit is 0.
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec sdk-run -n new2 --rootfs {r} -- true"
    );
    let out = run_expect(
        env.as_user("unshare")
            .args(["-U", "-r", "sh", "-c", &script]),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("user namespaces") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(env.snapshot(), before, "bad input changed files");
    assert_eq!(env.list().len(), 1);
}

#[test]
fn completions_and_man_page() {
    let env = Env::new();
    let bash = run_ok(&mut env.sdk(&["completions", "bash"]));
    assert!(bash.contains("sdk-run") && bash.contains("--rootfs"));
    let man = run_ok(&mut env.sdk(&["man"]));
    assert!(
        man.contains(".TH sdk-run"),
        "{}",
        &man[..200.min(man.len())]
    );
    let help = run_ok(&mut env.sdk(&["--help"]));
    assert!(help.contains("Examples:"));
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    let env = Env::new();
    let r = env.rootfs();
    // The mount fails inside the new sandbox (nothing can be made in /proc).
    let out = env
        .sdk(&[
            "-n",
            "bad",
            "--rootfs",
            r.to_str().unwrap(),
            "-v",
            "/etc/hostname:/proc/nope",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/nope"), "{err}");
    // A damaged tarball.
    let t = env.scratch.path().join("broken.tar.gz");
    std::fs::write(&t, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    chown_r(&env.user, &t);
    let out = env
        .sdk(&["-n", "bad2", "--rootfs", t.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No sandbox directory and no process of the sandbox's ids is left.
    assert_eq!(std::fs::read_dir(env.sandboxes_dir()).unwrap().count(), 0);
    assert!(env.list().is_empty());
    let lo = sub_start(&env.user, "/etc/subuid");
    let strays: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    c.contains(env.scratch.path().to_str().unwrap()) && c.starts_with("sdk-run")
                })
                .unwrap_or(false)
                && alive(*p)
        })
        .map(|p| format!("{p} (sub ids from {lo})"))
        .collect();
    assert_eq!(strays, Vec::<String>::new());
}

#[test]
fn ssh_agent_socket_is_bound() {
    let env = Env::new();
    let sock = env.scratch.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chown_r(&env.user, &sock);
    let r = env.rootfs();
    let mut c = env.sdk(&[
        "-n",
        "agent",
        "--rootfs",
        r.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo $SSH_AUTH_SOCK; test -S $SSH_AUTH_SOCK && echo socket",
    ]);
    c.env("SSH_AUTH_SOCK", &sock);
    assert_eq!(stdout_of(&mut c), "/run/host/ssh-agent.sock\nsocket");
    drop(listener);
}

/// The gpg agent is found as GnuPG 2.1+ finds it (`gpgconf --list-dirs
/// agent-socket`, here under a GNUPGHOME of the test's own) and appears
/// inside where gpg looks by default, in a directory the user owns.
#[test]
fn gpg_agent_socket_is_bound_where_gpg_looks() {
    let env = Env::new();
    let home = env.scratch.path().join("gnupg");
    std::fs::create_dir(&home).unwrap();
    chown_r(&env.user, &home);
    let mut q = env.as_user("gpgconf");
    q.args(["--list-dirs", "agent-socket"])
        .env("GNUPGHOME", &home);
    let sock = PathBuf::from(stdout_of(&mut q));
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chown_r(&env.user, &sock);
    let r = env.rootfs();
    let mut c = env.sdk(&[
        "-n",
        "gpg",
        "--rootfs",
        r.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "s=/run/user/1000/gnupg/S.gpg-agent; test -S $s && echo socket; stat -c '%u %a' ${s%/*}",
    ]);
    c.env("GNUPGHOME", &home);
    assert_eq!(stdout_of(&mut c), "socket\n1000 700");
    drop(listener);
}

/// With the default GnuPG home (no `GNUPGHOME`), the agent is looked up
/// where GnuPG puts it, here `~/.gnupg/S.gpg-agent` (the test user has no
/// `/run/user` directory), without asking gpgconf: one that would answer
/// elsewhere comes first on PATH.
#[test]
fn gpg_agent_of_the_default_home_is_found_without_gpgconf() {
    let env = Env::new();
    let home = env.scratch.path().join("home");
    std::fs::create_dir_all(home.join(".gnupg")).unwrap();
    let sock = home.join(".gnupg/S.gpg-agent");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let path = env.fake_tools(
        "fake-bin",
        &[("gpgconf", "#!/bin/sh\necho /nonexistent/S.gpg-agent\n")],
    );
    chown_r(&env.user, &home);
    let mut c = env.sh(
        "gpg-default",
        "test -S /run/user/1000/gnupg/S.gpg-agent && echo socket",
    );
    c.env("HOME", &home)
        .env_remove("GNUPGHOME")
        .env("PATH", path);
    assert_eq!(stdout_of(&mut c), "socket");
    drop(listener);
}

/// Removing a running sandbox deletes its files (here an overlay layer
/// owned by root inside, a subordinate id outside) from inside the
/// sandbox's own user namespace, held across the stop: no new namespace,
/// so newuidmap and newgidmap are not run (ones that fail come first on
/// PATH); a stopped one is removed through them as before.
#[test]
fn removing_a_running_sandbox_reuses_its_user_namespace() {
    let env = Env::new();
    let fail = "#!/bin/sh\necho \"$0 must not run\" >&2\nexit 1\n";
    let failing_path = env.fake_tools("fail-bin", &[("newuidmap", fail), ("newgidmap", fail)]);
    let r = env.rootfs();
    let r = r.to_str().unwrap();
    for name in ["held", "stopped"] {
        run_ok(&mut env.sdk(&[
            "-n",
            name,
            "--rootfs",
            r,
            "--overlay",
            "-u",
            "root",
            "--",
            "sh",
            "-c",
            "mkdir -p /var/lib/x && echo y > /var/lib/x/root-file",
        ]));
    }
    run_ok(&mut env.sdk(&["stop", "stopped"]));
    let mut rm = env.sdk(&["rm", "-f", "held"]);
    rm.env("PATH", &failing_path);
    run_ok(&mut rm);
    assert!(!env.sandboxes_dir().join("held").exists());
    // The stopped one has no namespace left to join: the helpers run.
    let mut rm = env.sdk(&["rm", "-f", "stopped"]);
    rm.env("PATH", &failing_path);
    let out = rm.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not run"));
    // What that removal left (moved aside first) goes with `prune`.
    run_ok(&mut env.sdk(&["prune", "-f"]));
    let left: Vec<String> = std::fs::read_dir(env.sandboxes_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n == "stopped" || n == "held" || n.starts_with(".trash"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn prune_asks_rm_carries_on_and_build_survives_recreation() {
    let env = Env::new();
    let r = env.rootfs();
    let r = r.to_str().unwrap();
    let over = |name: &str, script: &str| {
        env.sdk(&[
            "-n",
            name,
            "--rootfs",
            r,
            "--overlay",
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    let names = || -> Vec<String> {
        env.list()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let volumes = env.scratch.path().join("data/sdk-run/volumes");
    // /build is a volume outside the sandbox's layer: re-creating the
    // sandbox (e.g. with other -v, as the advice says) keeps the builds.
    run_ok(&mut over(
        "keep",
        "echo built > /build/marker && touch ~/layer-file",
    ));
    let out = env.sdk(&["rm", "-f", "keep"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its /build is kept"),
        "{out:?}"
    );
    let x = env.scratch.path().join("x");
    std::fs::create_dir(&x).unwrap();
    chown_r(&env.user, &x);
    let vol = format!("{}:/x", x.display());
    let out = env
        .sdk(&[
            "-n",
            "keep",
            "--rootfs",
            r,
            "--overlay",
            "-v",
            &vol,
            "--",
            "sh",
            "-c",
            "cat /build/marker; test -e ~/layer-file || echo fresh-layer",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "built\nfresh-layer\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keeps the /build"),
        "{out:?}"
    );

    // rm of several names carries on past a bad one and reports each.
    run_ok(&mut over("a", "true"));
    run_ok(&mut over("b", "true"));
    let out = run_expect(&mut env.sdk(&["rm", "-f", "a", "nosuch", "b"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("removed a") && err.contains("removed b"),
        "{err}"
    );
    assert!(err.contains("nosuch: no sandbox named"), "{err}");
    assert!(err.contains("1 of 3 not done: nosuch"), "{err}");
    assert_eq!(names(), ["keep"]);
    assert!(volumes.join("a/build").is_dir(), "rm keeps /build");

    // prune lists, and without a terminal refuses unless -f.
    run_ok(&mut env.sdk(&["stop", "keep"]));
    run_ok(&mut over("run", "true"));
    let before = env.snapshot();
    let out = run_expect(env.sdk(&["prune"]).stdin(Stdio::null()), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sandbox keep (stopped"), "{err}");
    assert!(!err.contains("sandbox run"), "running ones stay: {err}");
    assert!(err.lines().last().unwrap().contains("pass -f"), "{err}");
    run_ok(&mut env.sdk(&["prune", "--dry-run", "--volumes"]));
    assert_eq!(
        env.snapshot(),
        before,
        "refusing and --dry-run change nothing"
    );
    let dry = env
        .sdk(&["prune", "--dry-run", "--volumes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&dry.stderr);
    assert!(
        err.contains("/build of the removed sandbox a")
            && err.contains("/build of the removed sandbox b"),
        "{err}"
    );

    // On a terminal it asks: "n" keeps everything, "y" removes.
    let sock = env.scratch.path().join("tmux.sock");
    let sock = sock.to_str().unwrap();
    let rc = env.scratch.path().join("rc");
    let tmux = |args: &[&str]| {
        let mut c = env.as_user("tmux");
        c.arg("-S").arg(sock).args(args);
        c
    };
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).output().unwrap().stdout)
            .into_owned()
    };
    for answer in ["n", "y"] {
        let _ = std::fs::remove_file(&rc);
        run_ok(&mut tmux(&[
            "new-session",
            "-d",
            &format!("sdk-run prune; echo $? > {}", rc.display()),
        ]));
        wait_for("the question", || pane().contains("remove them? [y/N]"));
        run_ok(&mut tmux(&["send-keys", "-t", "0", answer, "Enter"]));
        wait_for("prune to finish", || {
            rc.exists() && std::fs::read_to_string(&rc).unwrap().ends_with('\n')
        });
        assert_eq!(std::fs::read_to_string(&rc).unwrap(), "0\n");
        let expect: &[&str] = if answer == "n" {
            &["keep", "run"]
        } else {
            &["run"]
        };
        assert_eq!(names(), expect, "after answering {answer}");
    }
    assert!(
        volumes.join("keep/build/marker").is_file(),
        "prune keeps /build"
    );

    // --volumes drops the kept /build folders of removed sandboxes.
    run_ok(&mut env.sdk(&["prune", "-f", "--volumes"]));
    assert!(!volumes.join("a").exists() && !volumes.join("keep").exists());
    run_ok(&mut env.sdk(&["rm", "-f", "--volumes", "run"]));
    assert_eq!(std::fs::read_dir(&volumes).unwrap().count(), 0);
}

#[test]
fn a_subordinate_range_taken_back_is_one_clear_line() {
    let env = Env::new();
    run_ok(&mut env.sh("box", "true"));
    run_ok(&mut env.sdk(&["stop", "box"]));
    // As if /etc/subuid had changed since creation: the sandbox's recorded
    // map names host ids the user is no longer granted.
    let cfg_path = env.sandboxes_dir().join("box/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for m in cfg["idmap"]["uid"].as_array_mut().unwrap() {
        if m["inside"] != 1000 {
            let o = m["outside"].as_u64().unwrap();
            m["outside"] = (o + 3_000_000_000).into();
        }
    }
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = run_expect(&mut env.sdk(&["-n", "box", "--", "true"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("no longer grants") && err.contains("sdk-run rm box"),
        "{err}"
    );
}

#[test]
fn two_repos_with_the_same_versions_do_not_share_a_sandbox() {
    // Both repos derive `sdk-2025.05.0_os-1.0.0`: the second is refused
    // (one line, exit 2, nothing entered) rather than entering the first
    // repo's sandbox, running or stopped; `-n` gives it its own.
    let env = Env::new();
    let versions = "sdk-version = \"2025.05.0\"\nos-version = \"1.0.0\"\n";
    let (a, b) = (env.scratch.path().join("a"), env.scratch.path().join("b"));
    for repo in [&a, &b] {
        std::fs::create_dir(repo).unwrap();
        std::fs::write(repo.join("sdk-version.toml"), versions).unwrap();
    }
    chown_r(&env.user, env.scratch.path());
    let r = env.rootfs();
    let r = r.to_str().unwrap();
    let mut c = env.sdk(&["--rootfs", r, "--", "pwd"]);
    c.current_dir(&a);
    assert_eq!(stdout_of(&mut c), "/mnt/host/source");
    for state in ["running", "stopped"] {
        let mut c = env.sdk(&["--", "pwd"]);
        c.current_dir(&b);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{state}: {err}");
        assert!(out.stdout.is_empty(), "{state}: entered: {out:?}");
        assert_eq!(err.trim().lines().count(), 1, "{state}: {err}");
        assert!(
            err.contains("sandbox sdk-2025.05.0_os-1.0.0 belongs to the repo at")
                && err.contains("-n NAME"),
            "{state}: {err}"
        );
        if state == "running" {
            run_ok(&mut env.sdk(&["stop", "sdk-2025.05.0_os-1.0.0"]));
        }
    }
    let mut c = env.sdk(&["-n", "b-own", "--rootfs", r, "--", "pwd"]);
    c.current_dir(&b);
    assert_eq!(stdout_of(&mut c), "/mnt/host/source");
    // The first repo still enters its own.
    let mut c = env.sdk(&["--", "pwd"]);
    c.current_dir(&a);
    assert_eq!(stdout_of(&mut c), "/mnt/host/source");
}

#[test]
fn entering_after_sdk_tools_was_replaced_says_the_sandbox_runs_the_old_one() {
    let env = Env::new();
    // A copy of both binaries, so replacing sdk-tools touches no other test.
    let bin = env.scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in ["sdk-run", "sdk-tools"] {
        std::fs::copy(sdk_e2e::bin_dir().join(b), bin.join(b)).unwrap();
    }
    chown_r(&env.user, &bin);
    let r = env.rootfs();
    let sdk = |script: &str| {
        let mut c = env.user.command(&env.scratch, bin.join("sdk-run"));
        c.args([
            "-n",
            "tools",
            "--rootfs",
            r.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(env.repo());
        c
    };
    let out = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    out(&mut sdk("true"));
    assert_eq!(out(&mut sdk("true")), "", "nothing replaced, nothing said");
    // A reinstall: a new file renamed over the old one.
    let tmp = bin.join(".sdk-tools.new");
    std::fs::copy(bin.join("sdk-tools"), &tmp).unwrap();
    std::fs::rename(&tmp, bin.join("sdk-tools")).unwrap();
    let err = out(&mut sdk("true"));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("sdk-tools was replaced since sandbox tools started")
            && err.contains("`sdk-run stop tools`"),
        "{err}"
    );
    run_ok(
        env.user
            .command(&env.scratch, bin.join("sdk-run"))
            .args(["stop", "tools"])
            .current_dir(env.repo()),
    );
    assert_eq!(
        out(&mut sdk("true")),
        "",
        "a restarted sandbox runs the new one"
    );
    run_ok(
        env.user
            .command(&env.scratch, bin.join("sdk-run"))
            .args(["rm", "-f", "tools"])
            .current_dir(env.repo()),
    );
}
