//! Start a sandbox from its config: fork, unshare the user namespace, have
//! the parent write the id maps, unshare mount/pid/uts/ipc (and net), fork
//! the init (pid 1 inside), which assembles the root, adds the sdk user,
//! makes the image's `WorkingDir` when missing, reports back and then only
//! reaps zombies. Writes `state.json`, with what every enter applies (the
//! image's `Env`, `WorkingDir` and `User`; see `enter`).
//!
//! Process tree while starting (L = launcher, C = child, I = init):
//!
//! ```text
//! L --fork--> C: unshare(USER) --"u"--> L: newuidmap/newgidmap --"g"--> C
//! C: become root, unshare(NS|PID|UTS|IPC[|NET]) --fork--> I (pid 1), C exits
//! I: assemble root, pivot_root, sdk user, WorkingDir --"OK"--> L: write state.json
//! ```
//!
//! I is re-parented to the host's init when C exits, so the sandbox
//! outlives the launcher and the terminal (it also calls setsid). Until L
//! has written `state.json`, I waits on a pipe only L can write ("c"): a
//! launcher killed at any moment before that closes it, and I exits, so no
//! init ever runs that no record names.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::ForkResult;

use crate::cmd::CommandExt;
use crate::exit::UsageError;
use crate::sandbox::config::{Config, Net};
use crate::sandbox::mounts::{self, RootPlan, Socket};
use crate::sandbox::{userns, users};
use crate::state::SandboxPaths;
use crate::state::{NsIds, State, start_time, write_json};
use sdk_common::linux as sys;

/// Where agent sockets appear inside, and the variable naming them.
const SSH_SOCK: &str = "/run/host/ssh-agent.sock";
const GPG_SOCK: &str = "/run/host/gpg-agent.sock";

/// The caller's gpg agent socket, as GnuPG 2.1+ finds it (it reads no
/// `GPG_AGENT_INFO`). With the default home (`GNUPGHOME` unset or
/// `~/.gnupg`) the agent listens in `/run/user/UID/gnupg` when that exists,
/// else in `~/.gnupg`: looked up directly, since asking `gpgconf` costs a
/// process (about 1 ms, a sixth of a whole start). Any other home hashes
/// into a socket directory only GnuPG computes: `gpgconf --list-dirs
/// agent-socket` answers then. `None` without a socket.
fn gpg_agent_socket() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let uid = nix::unistd::getuid().as_raw();
    match default_gpg_sockets(
        std::env::var_os("GNUPGHOME").as_deref(),
        home.as_deref(),
        uid,
    ) {
        Some(candidates) => candidates.into_iter().find(|p| is_socket(p)),
        None => gpgconf_agent_socket().filter(|p| is_socket(p)),
    }
}

/// Where the agent of the default GnuPG home listens, in GnuPG's order;
/// `None` when `GNUPGHOME` names another home (only gpgconf knows then).
fn default_gpg_sockets(
    gnupghome: Option<&std::ffi::OsStr>,
    home: Option<&Path>,
    uid: u32,
) -> Option<Vec<PathBuf>> {
    let default_home = home.map(|h| h.join(".gnupg"));
    if let Some(g) = gnupghome.filter(|g| !g.is_empty())
        && default_home.as_deref() != Some(Path::new(g))
    {
        return None;
    }
    let mut v = vec![PathBuf::from(format!("/run/user/{uid}/gnupg/S.gpg-agent"))];
    v.extend(default_home.map(|h| h.join("S.gpg-agent")));
    Some(v)
}

fn gpgconf_agent_socket() -> Option<PathBuf> {
    let out = std::process::Command::new("gpgconf")
        .args(["--list-dirs", "agent-socket"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let line = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(line.trim());
    p.is_absolute().then_some(p)
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false)
}

/// What every enter applies, fixed at start and recorded in `state.json`
/// (so entering reads no image config): the environment, and the image's
/// `WorkingDir` and `User`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ForEnter {
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    user: Option<String>,
}

impl ForEnter {
    /// From an image's runtime config (OCI config `Env`, `WorkingDir`,
    /// `User`; a manifest's `[env]`). A relative `WorkingDir` is taken from
    /// `/`, like docker does.
    fn from_image(rc: sdk_common::oci::RuntimeConfig) -> ForEnter {
        let env = rc
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let working_dir = rc
            .working_dir
            .map(|w| Path::new("/").join(w).display().to_string());
        ForEnter {
            env,
            working_dir,
            user: rc.user,
        }
    }
}

/// Host pieces the root is assembled from; resolved at each start (the
/// sdk-tools binary and agent sockets may have moved since creation).
fn plan(sb: &SandboxPaths, cfg: &Config) -> anyhow::Result<(RootPlan, ForEnter)> {
    // The image's own environment (OCI config Env, manifest [env]) first;
    // the sandbox's settings and the defaults override it. An image's
    // WorkingDir and User come from the store's record of its config, read
    // here once per start.
    let mut image = match &cfg.rootfs {
        crate::sandbox::RootfsSpec::Overlay { lower, .. } => {
            crate::rootfs::runtime_config_for(lower).map(ForEnter::from_image)
        }
        crate::sandbox::RootfsSpec::Bind(_) => None,
    }
    .unwrap_or_default();
    let env = &mut image.env;
    env.extend(cfg.env.iter().cloned());
    let mut sockets = Vec::new();
    if let Some(p) = std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from)
        && is_socket(&p)
    {
        sockets.push(Socket {
            host: p,
            inside: SSH_SOCK.into(),
        });
        env.push(("SSH_AUTH_SOCK".into(), SSH_SOCK.into()));
    }
    if let Some(p) = gpg_agent_socket() {
        sockets.push(Socket {
            host: p,
            inside: GPG_SOCK.into(),
        });
    }
    let build_dir = match &cfg.source {
        Some(src) => {
            if !src.is_dir() {
                return Err(UsageError(format!(
                    "the repo {} of sandbox {} is gone; remove the sandbox with `sdk-run rm {}`",
                    src.display(),
                    cfg.name,
                    cfg.name
                ))
                .into());
            }
            // A repo's outputs go to its __build__ (made here when
            // missing); a plain directory bound with -n gets none, so a
            // sandbox made outside a repo leaves nothing behind in it.
            let b = src.join("__build__");
            let in_repo = src.join(crate::version::FILE_NAME).is_file();
            if !b.exists() && in_repo {
                std::fs::create_dir(&b)
                    .with_context(|| format!("cannot create {}", b.display()))?;
            }
            if b.is_dir() {
                Some(
                    std::fs::canonicalize(&b)
                        .with_context(|| format!("cannot resolve {}", b.display()))?,
                )
            } else {
                None
            }
        }
        None => None,
    };
    // Removed by hand since: made again (empty), as at creation.
    let build_volume = cfg.build_volume.clone();
    if let Some(v) = &build_volume {
        std::fs::create_dir_all(v).with_context(|| format!("cannot create {}", v.display()))?;
    }
    let mnt = sb.mnt();
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    Ok((
        RootPlan {
            mnt,
            rootfs: cfg.rootfs.clone(),
            hostname: cfg.name.clone(),
            source: cfg.source.clone(),
            build_dir,
            build_volume,
            volumes: cfg.volumes.clone(),
            devices: cfg.devices.clone(),
            devpts_gid: cfg.idmap.to_host_gid(5).map(|_| 5),
            tools: tools(&sb.tools_cache)?,
            foreign_tools: foreign_tools(),
            sockets,
        },
        image,
    ))
}

/// The `sdk-tools` next to this executable and its multi-call names.
///
/// The names are cached in the state directory (`tools.json`), keyed by
/// the binary's inode, size and mtime: asking the binary costs an exec on
/// every start, which is most of a start's time.
fn tools(cache: &Path) -> anyhow::Result<Option<(PathBuf, Vec<String>)>> {
    let exe = std::env::current_exe().context("cannot find the sdk-run executable")?;
    let bin = exe.with_file_name("sdk-tools");
    let Some(key) = tools_key(&bin) else {
        eprintln!(
            "warning: no sdk-tools next to {}; the sandbox has no SDK tools on PATH (install both binaries together)",
            exe.display()
        );
        return Ok(None);
    };
    if let Some(c) = crate::state::read_json_opt::<ToolsCache>(cache)
        && c.key == key
    {
        return Ok(Some((bin, c.names)));
    }
    let out = Command::new(&bin).arg("list-tools").run_capture()?;
    let names: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .map(String::from)
        .collect();
    // A cache that cannot be written only costs time.
    let _ = write_json(
        cache,
        &ToolsCache {
            key,
            names: names.clone(),
        },
    );
    Ok(Some((bin, names)))
}

/// Architectures whose images sdk-tools can make an init for, when built
/// for them (`.ci/cross.sh`).
const TOOL_ARCHES: &[&str] = &["x86_64", "aarch64"];

/// The `sdk-tools-<arch>` builds next to this executable (one stat each).
fn foreign_tools() -> Vec<PathBuf> {
    let Ok(exe) = std::env::current_exe() else {
        return Vec::new();
    };
    TOOL_ARCHES
        .iter()
        .filter(|a| **a != std::env::consts::ARCH)
        .map(|a| exe.with_file_name(format!("sdk-tools-{a}")))
        .filter(|p| p.is_file())
        .collect()
}

/// The sdk-tools next to this executable, as one string that changes when
/// the file is replaced (path, inode, size, mtime); None without one.
pub fn tools_key(bin: &Path) -> Option<String> {
    let meta = std::fs::metadata(bin).ok().filter(|m| m.is_file())?;
    Some(format!(
        "{}:{}:{}:{}.{}",
        bin.display(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// The sdk-tools a sandbox started now gets.
pub fn current_tools_key() -> Option<String> {
    tools_key(&std::env::current_exe().ok()?.with_file_name("sdk-tools"))
}

/// `tools.json` in the state directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ToolsCache {
    key: String,
    names: Vec<String>,
}

/// The namespace inode numbers of `pid`.
pub fn ns_ids(pid: i32) -> anyhow::Result<NsIds> {
    let ino = |ns: &str| -> anyhow::Result<u64> {
        let p = format!("/proc/{pid}/ns/{ns}");
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("cannot stat {p}"))?
            .ino())
    };
    Ok(NsIds {
        user: ino("user")?,
        mnt: ino("mnt")?,
        pid: ino("pid")?,
        uts: ino("uts")?,
        ipc: ino("ipc")?,
        net: ino("net")?,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Start the sandbox described by `cfg` (which must not be running; the
/// caller holds the sandbox lock) and record it in `state.json`.
/// The launcher's half of the handover: the init runs on once
/// [`record`] has written the state and says so through it; dropped
/// unsaid (the launcher failed or was killed), the init exits.
pub struct Commit(OwnedFd);

pub fn start(sb: &SandboxPaths, cfg: &Config) -> anyhow::Result<(State, Commit)> {
    kill_unfinished(sb);
    let caller = crate::idmap::Caller::current();
    if let Err(e) = cfg
        .idmap
        .check_granted(&crate::idmap::SubIdFiles::default(), &caller)
    {
        return Err(UsageError(format!(
            "sandbox {n}: {e}, or make the sandbox again (`sdk-run rm {n}`)",
            n = cfg.name
        ))
        .into());
    }
    let (plan, image) = plan(sb, cfg)?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if cfg.net == Net::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe");
    let (u_r, u_w) = pipe()?;
    let (g_r, g_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (commit_r, commit_w) = pipe()?;
    match sys::fork().context("cannot fork")? {
        ForkResult::Child => {
            drop((u_r, g_w, rep_r, commit_w));
            let code = child(
                cfg,
                &plan,
                image.working_dir.as_deref(),
                flags,
                Pipes {
                    u_w,
                    g_r,
                    rep_w,
                    commit_r,
                },
            );
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop((u_w, g_r, rep_w, commit_r));
            let mut b = [0u8; 1];
            let unshared = std::fs::File::from(u_r).read(&mut b).unwrap_or(0) == 1;
            let mut map_err = None;
            {
                let mut g = std::fs::File::from(g_w);
                if unshared {
                    match cfg.idmap.write_for(child.as_raw(), Path::new("/proc")) {
                        Ok(()) => {
                            let _ = g.write_all(b"g");
                        }
                        Err(e) => map_err = Some(e),
                    }
                }
            }
            // Line by line: note the init as soon as it exists, so a start
            // killed from here on leaves nothing running that nobody knows.
            let mut report = String::new();
            let mut lines = std::io::BufReader::new(std::fs::File::from(rep_r));
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut lines, &mut line).unwrap_or(0) > 0 {
                if let Some(pid) = line.trim().strip_prefix('P').and_then(|p| p.parse().ok())
                    && let Some(start_time) = start_time(Path::new("/proc"), pid)
                {
                    let _ = write_json(&sb.starting(), &Starting { pid, start_time });
                }
                report.push_str(&line);
                line.clear();
            }
            let _ = nix::sys::wait::waitpid(child, None);
            if let Some(e) = map_err {
                return Err(e).context("cannot write the sandbox's id maps");
            }
            finish(cfg, &report, image).map(|s| (s, Commit(commit_w)))
        }
    }
}

/// Parse the report (`P<pid>`, any `W<warning>`, then `OK`, `E<error>` or
/// `U<usage error>`).
fn finish(cfg: &Config, report: &str, image: ForEnter) -> anyhow::Result<State> {
    let mut pid = None;
    let mut ok = false;
    for line in report.lines() {
        if let Some(p) = line.strip_prefix('P') {
            pid = p.parse::<i32>().ok();
        } else if let Some(w) = line.strip_prefix('W') {
            eprintln!("sdk-run: warning: sandbox {}: {w}", cfg.name);
        } else if line == "OK" {
            ok = true;
        } else if let Some(e) = line.strip_prefix('U') {
            return Err(UsageError(e.to_string()).into());
        } else if let Some(e) = line.strip_prefix('E') {
            bail!("cannot start sandbox {}: {e}", cfg.name);
        }
    }
    let Some(pid) = pid.filter(|_| ok) else {
        bail!(
            "cannot start sandbox {}: its init exited without reporting",
            cfg.name
        );
    };
    let state = (|| {
        Ok::<_, anyhow::Error>(State {
            pid,
            start_time: start_time(Path::new("/proc"), pid)
                .context("the sandbox init died at once")?,
            ns: ns_ids(pid)?,
            started: now(),
            source: cfg.source.clone(),
            has_root: cfg.idmap.has_root(),
            own_net: cfg.net == Net::None,
            env: image.env,
            working_dir: image.working_dir,
            user: image.user,
            tools: current_tools_key(),
        })
    })();
    if state.is_err() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    state
}

/// Write the state (under the lock) for a started sandbox, then let its
/// init run on.
pub fn record(sb: &SandboxPaths, state: &State, commit: Commit) -> anyhow::Result<()> {
    let kill = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(state.pid),
            nix::sys::signal::SIGKILL,
        );
    };
    if let Err(e) = write_json(&sb.state(), state) {
        kill();
        return Err(e);
    }
    if let Err(e) = std::fs::File::from(commit.0).write_all(b"c") {
        kill();
        let _ = std::fs::remove_file(sb.state());
        return Err(e).context("cannot hand the sandbox over to its init");
    }
    let _ = std::fs::remove_file(sb.starting());
    Ok(())
}

/// The pipes between the launcher and the child (and the init).
struct Pipes {
    /// C -> L: the user namespace exists ("u").
    u_w: OwnedFd,
    /// L -> C: the maps are written ("g").
    g_r: OwnedFd,
    /// C and I -> L: the report lines.
    rep_w: OwnedFd,
    /// L -> I: the state is recorded ("c"); EOF before it: give up.
    commit_r: OwnedFd,
}

/// `starting.json`: an init that has not reported ready yet.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Starting {
    pub pid: i32,
    pub start_time: u64,
}

/// An init left by a start that was killed before it finished (its pid
/// and start time still match): end it. The caller holds the lock.
pub fn kill_unfinished(sb: &SandboxPaths) {
    use std::os::fd::AsFd;
    let Some(s) = crate::state::read_json_opt::<Starting>(&sb.starting()) else {
        return;
    };
    if let Ok(fd) = sys::pidfd_open(s.pid)
        && start_time(Path::new("/proc"), s.pid) == Some(s.start_time)
    {
        let _ = sys::pidfd_kill(fd.as_fd(), libc::SIGKILL);
    }
    let _ = std::fs::remove_file(sb.starting());
}

/// C: unshare the user namespace, wait for the maps, unshare the rest,
/// fork the init. Returns C's exit code.
fn child(
    cfg: &Config,
    plan: &RootPlan,
    working_dir: Option<&str>,
    flags: CloneFlags,
    pipes: Pipes,
) -> i32 {
    let Pipes {
        u_w,
        g_r,
        rep_w,
        commit_r,
    } = pipes;
    let mut rep = std::fs::File::from(rep_w);
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        report_line(
            &mut rep,
            format!("U{}", userns::UsernsError::Unavailable(e)),
        );
        return 1;
    }
    if std::fs::File::from(u_w).write_all(b"u").is_err() {
        return 1;
    }
    let mut b = [0u8; 1];
    if std::fs::File::from(g_r).read(&mut b).unwrap_or(0) != 1 {
        return 1;
    }
    if let Err(e) = userns::become_root(&cfg.idmap) {
        report_line(
            &mut rep,
            format!("Ecannot become root in the user namespace: {e}"),
        );
        return 1;
    }
    // Changing uids made us non-dumpable, which would hide /proc/PID/ns/*
    // of the init from the launcher (ptrace access checks); undo that.
    let _ = nix::sys::prctl::set_dumpable(true);
    if let Err(e) = nix::sched::unshare(flags) {
        report_line(
            &mut rep,
            format!("Ecannot create the sandbox namespaces: {e}"),
        );
        return 1;
    }
    match sys::fork() {
        Err(e) => {
            report_line(&mut rep, format!("Ecannot fork the init: {e}"));
            1
        }
        Ok(ForkResult::Parent { child }) => {
            report_line(&mut rep, format!("P{child}"));
            0
        }
        Ok(ForkResult::Child) => init(cfg, plan, working_dir, rep, commit_r),
    }
}

/// One line of the start report, in one write(2): the intermediate child
/// (`P<pid>`) and the init (`W...`, `OK`) write to the same pipe at the
/// same time, and a line written in pieces could be split by the other's
/// (`POK`, then the pid): the launcher then saw no `OK` and said the init
/// "exited without reporting". Writes up to PIPE_BUF bytes are atomic.
fn report_line(rep: &mut std::fs::File, mut line: String) {
    line.push('\n');
    let _ = rep.write_all(line.as_bytes());
}

/// I: pid 1 inside. Assemble, report, then reap forever.
fn init(
    cfg: &Config,
    plan: &RootPlan,
    working_dir: Option<&str>,
    mut rep: std::fs::File,
    commit: OwnedFd,
) -> i32 {
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_name(c"sdk-run-init");
    let setup = (|| -> anyhow::Result<()> {
        mounts::assemble(&sys::Linux, plan)?;
        users::ensure_sdk_user(Path::new("/"), !cfg.idmap.is_single())
            .context("cannot add the sdk user to /etc/passwd")?;
        // A convenience only (sudo otherwise warns that it cannot resolve
        // the hostname): an /etc/hosts that cannot be written stays as it
        // is, without a word.
        let host: String = plan.hostname.chars().take(64).collect();
        let _ = users::ensure_host_entry(Path::new("/"), &host);
        // Login shells (`sdk-run -t`) whose /etc/profile resets PATH get
        // the SDK's tools back; a read-only /etc (a single mapping over a
        // rootfs owned by others) keeps the profile's PATH.
        if let Err(e) = users::ensure_profile_path(Path::new("/"), mounts::PATH) {
            report_line(
                &mut rep,
                format!(
                    "Wcannot write /{} ({e}); login shells in this sandbox may lack the SDK tools on PATH",
                    users::PROFILE_SNIPPET
                ),
            );
        }
        // gpg inside finds the agent where GnuPG looks by default:
        // /run/user/UID/gnupg/S.gpg-agent, a link to the bound socket.
        if plan.sockets.iter().any(|s| s.inside == Path::new(GPG_SOCK)) {
            users::link_gpg_agent(Path::new("/"), Path::new(GPG_SOCK), !cfg.idmap.is_single())
                .context("cannot link the gpg agent socket under /run/user")?;
        }
        // A WorkingDir the image lacks is made, as docker does; one that
        // cannot be (a file in the way, no root inside) is only a warning:
        // commands then start in the user's home.
        // Host directories bound in (the repo, -v) are the user's: nothing
        // is made in them.
        let on_host = |dir: &str| {
            let d = Path::new(dir);
            plan.source.is_some() && d.starts_with(mounts::SOURCE_DIR)
                || plan.volumes.iter().any(|v| d.starts_with(&v.dst))
        };
        if let Some(dir) = working_dir.filter(|d| !on_host(d))
            && let Err(e) = ensure_working_dir(Path::new("/"), dir)
        {
            report_line(
                &mut rep,
                format!(
                    "Wcannot create the image's WorkingDir {dir} ({e}); commands started outside the repo begin in the user's home"
                ),
            );
        }
        if cfg.net == Net::None {
            sys::loopback_up().context("cannot bring up the loopback interface")?;
        }
        Ok(())
    })();
    if let Err(e) = setup {
        let msg = format!("{e:#}").replace('\n', " ");
        report_line(&mut rep, format!("E{msg}"));
        return 1;
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors we own.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
    report_line(&mut rep, "OK".into());
    drop(rep);
    // Run on only once the launcher has recorded us; a launcher gone
    // before that (killed, failed) closes the pipe: end the sandbox.
    let mut c = [0u8; 1];
    if std::fs::File::from(commit).read(&mut c).unwrap_or(0) != 1 || c[0] != b'c' {
        return 1;
    }
    // Nothing of the launcher may stay open here: not its lock, not pipes.
    sys::close_fds_from(3, &[]);
    reap_forever()
}

/// Make the image's `WorkingDir` (absolute, inside `root`) when missing:
/// as the init's user (root inside when the sandbox has one), mode 0755
/// whatever the launcher's umask, so every user can start there.
fn ensure_working_dir(root: &Path, dir: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let path = root.join(dir.trim_start_matches('/'));
    if path.is_dir() {
        return Ok(());
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&path);
    nix::sys::stat::umask(old);
    made
}

fn reap_forever() -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            // `sdk-run stop` sends SIGKILL; these mean the same, gently.
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => {
                // SAFETY: exiting pid 1 tears the sandbox down, as asked.
                unsafe { libc::_exit(0) }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gnupg_home_is_looked_up_without_gpgconf() {
        let h = Some(Path::new("/home/u"));
        let both = Some(vec![
            PathBuf::from("/run/user/7/gnupg/S.gpg-agent"),
            PathBuf::from("/home/u/.gnupg/S.gpg-agent"),
        ]);
        assert_eq!(default_gpg_sockets(None, h, 7), both);
        assert_eq!(default_gpg_sockets(Some("".as_ref()), h, 7), both);
        assert_eq!(
            default_gpg_sockets(Some("/home/u/.gnupg".as_ref()), h, 7),
            both
        );
        // Another home: its socket directory is a hash only gpgconf knows.
        assert_eq!(default_gpg_sockets(Some("/srv/keys".as_ref()), h, 7), None);
        assert_eq!(
            default_gpg_sockets(None, None, 7),
            Some(vec![PathBuf::from("/run/user/7/gnupg/S.gpg-agent")])
        );
    }

    #[test]
    fn image_config_becomes_what_enter_applies() {
        let rc = |w: Option<&str>| sdk_common::oci::RuntimeConfig {
            env: vec!["A=1".into(), "B=x=y".into(), "junk".into()],
            working_dir: w.map(String::from),
            user: Some("builder:staff".into()),
        };
        let f = ForEnter::from_image(rc(Some("/srv/work")));
        assert_eq!(
            f.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(f.working_dir.as_deref(), Some("/srv/work"));
        assert_eq!(f.user.as_deref(), Some("builder:staff"));
        let rel = ForEnter::from_image(rc(Some("srv")));
        assert_eq!(rel.working_dir.as_deref(), Some("/srv"));
        assert_eq!(ForEnter::from_image(rc(None)).working_dir, None);
    }

    #[test]
    fn working_dir_is_made_when_missing() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        ensure_working_dir(d.path(), "/srv/work").unwrap();
        let m = std::fs::metadata(d.path().join("srv/work")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // Present already: untouched.
        ensure_working_dir(d.path(), "/srv/work").unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        assert!(ensure_working_dir(d.path(), "/file/sub").is_err());
    }
}
