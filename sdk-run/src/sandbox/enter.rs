//! Enter a running sandbox: check its init is still the one recorded (pid +
//! start time + namespace ids), `setns` into its namespaces (user first),
//! fork, and exec the command as the target user (`-u`, else the image's
//! `User`, else `sdk`) in the translated working directory (the same place
//! in the repo, else the image's `WorkingDir`, else the user's home). The launcher stays as the parent: it relays the exit status,
//! forwards signals and, with `-t`, proxies a pty allocated in the
//! sandbox's own devpts.
//!
//! This is the hot path (`sdk-run -- true` should cost no more than
//! `nsenter`): one small state file, a few `/proc` reads, no config parse
//! (the image's settings were copied into the state file at start), and
//! the sandbox's /etc/passwd (/etc/group only for an image `User` of the
//! form `USER:GROUPNAME`).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::exit::{self, UsageError};
use crate::idmap::SDK_ID;
use crate::sandbox::mounts::{PATH, SOURCE_DIR};
use crate::sandbox::users::{self, Account};
use crate::state::{NsIds, State};
use sdk_common::linux::{self as sys, Sys};

/// What to run, as whom, from where.
#[derive(Debug, Clone)]
pub struct EnterOptions {
    /// `-u`: wins over the image's `User`; `None` means the image's `User`
    /// (recorded in the state at start), else `sdk`.
    pub user: Option<String>,
    pub tty: bool,
    /// Empty: the user's login shell.
    pub command: Vec<OsString>,
    /// The caller's working directory on the host.
    pub cwd: PathBuf,
    pub name: String,
    /// `-e NAME=VALUE` / `-e NAME` (the caller's value, skipped when unset):
    /// set last, so they win over everything else.
    pub env: Vec<EnvArg>,
}

/// One `-e/--env` argument: `NAME=VALUE`, or `NAME` to pass the caller's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArg {
    pub name: String,
    pub value: Option<String>,
}

impl std::str::FromStr for EnvArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (s, None),
        };
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "{name:?} is not a variable name (letters, digits and _, not starting with a digit); write NAME=VALUE or NAME"
            ));
        }
        Ok(EnvArg {
            name: name.to_string(),
            value,
        })
    }
}

/// What passes from the caller's environment into every command, when set:
/// the terminal, the language, reproducible-build time and proxies (both
/// spellings, as tools read either).
pub const PASS_THROUGH: &[&str] = &[
    "TERM",
    "COLORTERM",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SOURCE_DATE_EPOCH",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
];

/// Open namespace files of the init, in join order.
pub struct NsFds {
    fds: Vec<(File, CloneFlags)>,
}

/// Is the recorded init still alive (same pid *and* same start time)?
pub fn is_running(state: &State) -> bool {
    crate::state::is_running(state)
}

impl NsFds {
    /// Open `/proc/PID/ns/*` and check each is the namespace recorded at
    /// start, so a recycled pid is never joined.
    pub fn open(state: &State) -> anyhow::Result<NsFds> {
        let want: &NsIds = &state.ns;
        let mut list = vec![
            ("user", CloneFlags::CLONE_NEWUSER, want.user),
            ("mnt", CloneFlags::CLONE_NEWNS, want.mnt),
            ("pid", CloneFlags::CLONE_NEWPID, want.pid),
            ("uts", CloneFlags::CLONE_NEWUTS, want.uts),
            ("ipc", CloneFlags::CLONE_NEWIPC, want.ipc),
        ];
        if state.own_net {
            list.push(("net", CloneFlags::CLONE_NEWNET, want.net));
        }
        let mut fds = Vec::with_capacity(list.len());
        for (name, flag, ino) in list {
            let p = format!("/proc/{}/ns/{name}", state.pid);
            let f = File::open(&p).with_context(|| format!("cannot open {p}"))?;
            if f.metadata().map(|m| m.ino()).ok() != Some(ino) {
                bail!(
                    "the sandbox init changed while entering (pid {} reused); run the command again",
                    state.pid
                );
            }
            fds.push((f, flag));
        }
        Ok(NsFds { fds })
    }

    /// Join all, user namespace first (it grants the rights to join the
    /// others). The process must be single-threaded.
    pub fn join(&self, sys: &dyn Sys) -> anyhow::Result<()> {
        for (f, flag) in &self.fds {
            sys.setns(f.as_fd(), *flag)
                .with_context(|| format!("cannot join the sandbox's {flag:?} namespace"))?;
        }
        Ok(())
    }
}

/// The working directory inside: the same place in the repo when the
/// caller stands in it, else `elsewhere` (the image's `WorkingDir` when it
/// has one, else the user's home).
pub fn translate_cwd(cwd: &Path, source: Option<&Path>, elsewhere: &str) -> PathBuf {
    if let Some(src) = source
        && let Ok(rel) = cwd.strip_prefix(src)
    {
        return Path::new(SOURCE_DIR).join(rel);
    }
    PathBuf::from(elsewhere)
}

/// Whom to run as: `-u` when given (a name or uid from the sandbox's
/// /etc/passwd, `sdk` or `root`), else the image's `User` (any OCI form,
/// see [`users::resolve_spec`]), else `sdk`. Reads the sandbox's
/// /etc/passwd (and /etc/group for `USER:GROUPNAME`); must run inside its
/// mount namespace. Bad choices are usage errors, one line each.
pub fn choose_account(
    root: &Path,
    state: &State,
    user: Option<&str>,
    sandbox: &str,
) -> anyhow::Result<Account> {
    let account = match (user, state.user.as_deref()) {
        (Some(who), _) => users::resolve(root, who).ok_or_else(|| {
            UsageError(format!(
                "no user `{who}` in sandbox {sandbox}; use -u sdk, -u root, or a user from its /etc/passwd"
            ))
        })?,
        (None, Some(spec)) => {
            let a = users::resolve_spec(root, spec).map_err(|e| {
                let root_too = if state.has_root { " (or -u root)" } else { "" };
                UsageError(format!(
                    "the image of sandbox {sandbox} asks to run as user `{spec}`, {e}; pass -u sdk{root_too}"
                ))
            })?;
            // With a single mapping only the sdk ids exist inside; say so
            // rather than fail at setresuid (root has its own message below).
            if !state.has_root && a.uid != 0 && (a.uid, a.gid) != (SDK_ID, SDK_ID) {
                return Err(UsageError(format!(
                    "the image of sandbox {sandbox} asks to run as user `{spec}` ({}:{}), but only uid and gid {SDK_ID} exist there (a single id mapping); pass -u sdk",
                    a.uid, a.gid
                ))
                .into());
            }
            a
        }
        (None, None) => users::resolve(root, "sdk").context("no sdk user")?,
    };
    if !state.has_root && account.uid == 0 {
        return Err(UsageError(format!(
            "sandbox {sandbox} has no root user: it was made with a single id mapping; add a subordinate id range (see `man subuid`), then `sdk-run rm {sandbox}` and enter again"
        ))
        .into());
    }
    Ok(account)
}

/// The environment inside: a clean one, with the caller's [`PASS_THROUGH`]
/// variables, the sandbox's agent sockets, and the `-e` arguments last.
pub fn environment(
    account: &Account,
    sandbox: &str,
    extra: &[(String, String)],
    asked: &[EnvArg],
    host: impl Fn(&str) -> Option<OsString>,
) -> Vec<CString> {
    // Later entries win: the image's and agents' variables first, then
    // the sandbox's own and the caller's terminal settings.
    let mut env: Vec<(String, OsString)> = extra
        .iter()
        .map(|(k, v)| (k.clone(), OsString::from(v)))
        .collect();
    env.extend([
        ("HOME".into(), account.home.clone().into()),
        ("USER".into(), account.name.clone().into()),
        ("LOGNAME".into(), account.name.clone().into()),
        ("SHELL".into(), account.shell.clone().into()),
        ("PATH".into(), PATH.into()),
        ("SDK_RUN_SANDBOX".into(), sandbox.into()),
    ]);
    for k in PASS_THROUGH {
        if let Some(v) = host(k) {
            env.push((k.to_string(), v));
        }
    }
    for a in asked {
        let v = match &a.value {
            Some(v) => Some(OsString::from(v)),
            None => host(&a.name),
        };
        if let Some(v) = v {
            env.push((a.name.clone(), v));
        }
    }
    // One entry per name, the last one.
    let mut seen = std::collections::HashSet::new();
    let mut env: Vec<_> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    env.reverse();
    env.into_iter()
        .filter_map(|(k, v)| {
            let mut b = k.into_bytes();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect()
}

/// Signals the launcher relays to the command.
const FORWARD: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Enter and run; returns the command's exit code (a command killed by a
/// signal makes sdk-run die of the same signal).
pub fn enter(state: &State, opts: &EnterOptions) -> anyhow::Result<i32> {
    // The init, held from before the namespaces are opened: when a step
    // below fails because `sdk-run stop`/`rm` ended it meanwhile (its
    // /proc entry gone, a fork into a dead pid namespace failing with
    // ENOMEM), the error says that, not the symptom.
    let init = sys::pidfd_open(state.pid).ok();
    let raced = |e: anyhow::Error| -> anyhow::Error {
        let gone = init
            .as_ref()
            .is_none_or(|f| sys::pidfd_kill(std::os::fd::AsFd::as_fd(f), 0).is_err());
        if gone {
            anyhow::anyhow!(
                "sandbox {} was stopped or removed while entering it; run the command again",
                opts.name
            )
        } else {
            e
        }
    };
    let fds = NsFds::open(state).map_err(raced)?;
    fds.join(&sys::Linux).map_err(raced)?;
    drop(fds);

    let account =
        choose_account(Path::new("/"), state, opts.user.as_deref(), &opts.name).map_err(raced)?;
    // The image's WorkingDir applies whoever runs (as in docker); the init
    // made it at start when the image lacked it.
    let elsewhere = state.working_dir.as_deref().unwrap_or(&account.home);
    let dir = translate_cwd(&opts.cwd, state.source.as_deref(), elsewhere);
    let env = environment(&account, &opts.name, &state.env, &opts.env, |k| {
        std::env::var_os(k)
    });
    let (prog, argv) = argv(&opts.command, &account)?;

    let pty = if opts.tty { Some(Pty::open()?) } else { None };

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    for s in FORWARD {
        mask.add(*s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("cannot block signals")?;
    let sfd =
        SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).context("cannot create a signalfd")?;

    let child = match sys::fork().context("cannot fork").map_err(raced)? {
        ForkResult::Child => {
            let code = exec_child(
                &account,
                &dir,
                &prog,
                &argv,
                &env,
                state.has_root,
                pty.as_ref(),
            );
            // SAFETY: leave without the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    let status = match pty {
        Some(mut p) => {
            drop(p.peer.take());
            p.proxy(&sfd, child)?
        }
        None => wait_relaying(&sfd, child)?,
    };
    Ok(pass_through(status))
}

fn argv(command: &[OsString], account: &Account) -> anyhow::Result<(CString, Vec<CString>)> {
    let c = |s: &[u8]| {
        CString::new(s).map_err(|_| UsageError("an argument contains a NUL byte".into()))
    };
    if command.is_empty() {
        // A login shell: argv[0] starts with '-'.
        let shell = c(account.shell.as_bytes())?;
        let base = Path::new(&account.shell)
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_else(|| b"sh".to_vec());
        let mut a0 = b"-".to_vec();
        a0.extend(base);
        return Ok((shell, vec![c(&a0)?]));
    }
    let argv = command
        .iter()
        .map(|a| c(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((argv[0].clone(), argv))
}

/// In the forked child: terminal, directory, identity, exec.
fn exec_child(
    account: &Account,
    dir: &Path,
    prog: &CString,
    argv: &[CString],
    env: &[CString],
    has_root: bool,
    pty: Option<&Pty>,
) -> i32 {
    sys::reset_signals();
    if let Some(p) = pty
        && let Some(peer) = &p.peer
    {
        let _ = nix::unistd::setsid();
        if let Err(e) = sys::set_controlling_tty(peer.as_fd()) {
            eprintln!("sdk-run: cannot attach the terminal: {e}");
            return exit::FAILURE;
        }
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this child.
            unsafe {
                libc::dup2(peer.as_raw_fd(), fd);
            }
        }
    }
    if nix::unistd::chdir(dir).is_err() {
        let _ = nix::unistd::chdir(account.home.as_str()).or_else(|_| nix::unistd::chdir("/"));
    }
    // Only stdio goes in: a descriptor the caller had open (a directory,
    // a socket, another process's pipe) would be a way out of the
    // sandbox, as podman and docker close them too.
    sys::close_fds_from(3, &[]);
    // Root inside (and sudo to it) never gets the powers that would undo
    // the sandbox's own mounts: remounting the read-only sdk-tools bind or
    // /sys, or reaching into the init (which holds them) with ptrace. A
    // nested user namespace gets them back only over copies of these
    // mounts that the kernel locks.
    if let Err(e) = super::drop_sandbox_caps() {
        eprintln!("sdk-run: cannot drop capabilities: {e}");
        return exit::FAILURE;
    }
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    // With a single mapping setgroups(2) is denied by the kernel, and the
    // only group there is the sdk one anyway.
    let ids = (|| {
        if has_root {
            nix::unistd::setgroups(&[gid])?;
        }
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setresuid(uid, uid, uid)
    })();
    if let Err(e) = ids {
        eprintln!("sdk-run: cannot switch to user {}: {e}", account.name);
        return exit::FAILURE;
    }
    let e = exec_in_path(prog, argv, env);
    let prog = prog.to_string_lossy();
    if e == nix::errno::Errno::ENOENT {
        eprintln!("sdk-run: {prog}: command not found in the sandbox (PATH={PATH})");
        exit::NOT_FOUND
    } else {
        eprintln!("sdk-run: cannot run {prog}: {}", e.desc());
        exit::CANNOT_EXEC
    }
}

/// `execvpe` with the sandbox's PATH (glibc's searches the launcher's own
/// PATH, not the one in `env`). Returns the error worth reporting.
fn exec_in_path(prog: &CString, argv: &[CString], env: &[CString]) -> nix::errno::Errno {
    use nix::errno::Errno;
    let bytes = prog.as_bytes();
    if bytes.contains(&b'/') {
        return nix::unistd::execve(prog, argv, env).unwrap_err();
    }
    let mut err = Errno::ENOENT;
    for dir in PATH.split(':') {
        let mut full = dir.as_bytes().to_vec();
        full.push(b'/');
        full.extend_from_slice(bytes);
        let Ok(full) = CString::new(full) else {
            continue;
        };
        match nix::unistd::execve(&full, argv, env).unwrap_err() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            // Remember "found but not runnable", keep looking like execvp.
            e => err = e,
        }
    }
    err
}

/// Wait for the child; relay signals that were sent to us by another
/// process (terminal signals already reached the child, which shares our
/// foreground process group).
pub(crate) fn wait_relaying(sfd: &SignalFd, child: Pid) -> anyhow::Result<WaitStatus> {
    loop {
        if let Some(s) = reap(child)? {
            return Ok(s);
        }
        let Some(info) = sfd.read_signal().context("cannot read signals")? else {
            continue;
        };
        let from_kernel = info.ssi_code == libc::SI_KERNEL;
        if info.ssi_signo != libc::SIGCHLD as u32
            && info.ssi_signo != libc::SIGWINCH as u32
            && !from_kernel
            && let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
        {
            let _ = nix::sys::signal::kill(child, sig);
        }
    }
}

fn reap(child: Pid) -> anyhow::Result<Option<WaitStatus>> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => Ok(None),
        Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(e).context("cannot wait for the command"),
    }
}

/// The command's status becomes ours: its exit code, or death by its signal.
pub(crate) fn pass_through(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => {
            sys::reset_signals();
            // No core file of our own for the command's crash.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            let _ = nix::sys::signal::raise(sig);
            128 + sig as i32
        }
        _ => exit::FAILURE,
    }
}

/// A pty from the sandbox's devpts, and the host terminal it is proxied to.
struct Pty {
    master: OwnedFd,
    peer: Option<OwnedFd>,
    saved: Option<nix::sys::termios::Termios>,
}

impl Pty {
    /// Open `/dev/ptmx` (we are already inside the mount namespace, so it
    /// is the sandbox's devpts instance) and its peer; size it like the
    /// host terminal.
    fn open() -> anyhow::Result<Pty> {
        use nix::fcntl::OFlag;
        let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .context("cannot open /dev/ptmx in the sandbox")?;
        nix::pty::grantpt(&m).context("grantpt")?;
        nix::pty::unlockpt(&m).context("unlockpt")?;
        let peer = sys::open_pty_peer(m.as_fd()).context("cannot open the pty's peer")?;
        let master: OwnedFd = m.into();
        let stdin = std::io::stdin();
        let host = stdin.as_fd();
        if let Some(ws) =
            sys::get_winsize(host).or_else(|| sys::get_winsize(std::io::stdout().as_fd()))
        {
            sys::set_winsize(master.as_fd(), &ws);
        }
        Ok(Pty {
            master,
            peer: Some(peer),
            saved: None,
        })
    }

    fn raw(&mut self) {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if let Ok(t) = tcgetattr(stdin.as_fd()) {
            let mut r = t.clone();
            cfmakeraw(&mut r);
            if tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &r).is_ok() {
                self.saved = Some(t);
            }
        }
    }

    /// Copy between the host terminal and the master until the child is
    /// gone; relay SIGWINCH as a window-size change.
    fn proxy(&mut self, sfd: &SignalFd, child: Pid) -> anyhow::Result<WaitStatus> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        self.raw();
        let stdin = std::io::stdin();
        let stdin = stdin.as_fd();
        let master = self.master.as_fd();
        let mut buf = vec![0u8; 1 << 16];
        let mut stdin_open = true;
        let mut master_open = true;
        let mut status = None;
        while status.is_none() {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if master_open {
                fds.push(PollFd::new(master, PollFlags::POLLIN));
            }
            if stdin_open && master_open {
                fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.context("poll")?,
            };
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (sig_ready, master_ready, stdin_ready) = (
                ready(0),
                master_open && ready(1),
                stdin_open && master_open && ready(2),
            );
            if master_ready && !copy(master, std::io::stdout().as_fd(), &mut buf) {
                master_open = false;
            }
            if stdin_ready && !copy(stdin, master, &mut buf) {
                stdin_open = false;
            }
            if sig_ready && let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => status = reap(child)?,
                    Ok(Signal::SIGWINCH) => {
                        if let Some(ws) = sys::get_winsize(stdin) {
                            sys::set_winsize(master, &ws);
                        }
                    }
                    Ok(sig) => {
                        let _ = nix::sys::signal::kill(child, sig);
                    }
                    Err(_) => {}
                }
            }
        }
        // What the command wrote just before exiting.
        let _ = nix::fcntl::fcntl(
            master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        while master_open && copy(master, std::io::stdout().as_fd(), &mut buf) {}
        Ok(status.unwrap_or(WaitStatus::Exited(child, exit::FAILURE)))
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSADRAIN,
                t,
            );
        }
    }
}

/// One read and a full write; false at end of input or on error.
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let n = match nix::unistd::read(from, buf) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    let mut off = 0;
    while off < n {
        match nix::unistd::write(to, &buf[off..n]) {
            Ok(w) => off += w,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdk_common::linux::Recorder;

    #[test]
    fn cwd_follows_into_the_repo() {
        let src = Path::new("/home/a/distro");
        assert_eq!(
            translate_cwd(Path::new("/home/a/distro/pkg/x"), Some(src), "/home/sdk"),
            Path::new("/mnt/host/source/pkg/x")
        );
        assert_eq!(
            translate_cwd(src, Some(src), "/home/sdk"),
            Path::new("/mnt/host/source")
        );
        assert_eq!(
            translate_cwd(Path::new("/home/a/distro2"), Some(src), "/home/sdk"),
            Path::new("/home/sdk")
        );
        assert_eq!(translate_cwd(src, None, "/root"), Path::new("/root"));
        // Outside the repo, the image's WorkingDir (the caller passes it
        // instead of the home); inside, the repo still wins.
        assert_eq!(
            translate_cwd(Path::new("/home/a"), Some(src), "/srv/work"),
            Path::new("/srv/work")
        );
        assert_eq!(
            translate_cwd(&src.join("x"), Some(src), "/srv/work"),
            Path::new("/mnt/host/source/x")
        );
    }

    fn state(has_root: bool, image_user: Option<&str>) -> State {
        State {
            pid: 1,
            start_time: 0,
            ns: NsIds {
                user: 0,
                mnt: 0,
                pid: 0,
                uts: 0,
                ipc: 0,
                net: 0,
            },
            started: 0,
            source: None,
            has_root,
            own_net: false,
            env: vec![],
            working_dir: Some("/srv/work".into()),
            user: image_user.map(String::from),
            tools: None,
        }
    }

    #[test]
    fn u_wins_then_the_image_user_then_sdk() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nsdk:x:1000:1000::/home/sdk:/bin/sh\nbuilder:x:1234:1234::/home/b:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "staff:x:2345:\n").unwrap();
        let pick = |st: &State, u: Option<&str>| {
            choose_account(d.path(), st, u, "box").map(|a| (a.uid, a.gid))
        };
        let img = state(true, Some("builder:staff"));
        assert_eq!(pick(&img, None).unwrap(), (1234, 2345));
        assert_eq!(pick(&img, Some("sdk")).unwrap(), (1000, 1000));
        assert_eq!(pick(&img, Some("root")).unwrap(), (0, 0));
        assert_eq!(pick(&state(true, None), None).unwrap(), (1000, 1000));
        assert_eq!(pick(&state(true, Some("0:0")), None).unwrap(), (0, 0));

        let usage = |st: &State, u: Option<&str>| {
            let e = pick(st, u).unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some(), "{e}");
            e.to_string()
        };
        assert_eq!(
            usage(&state(true, Some("ghost")), None),
            "the image of sandbox box asks to run as user `ghost`, and there is no user `ghost` in the sandbox's /etc/passwd; pass -u sdk (or -u root)"
        );
        // The image's user names nobody, but -u still works.
        assert_eq!(
            pick(&state(true, Some("ghost")), Some("sdk")).unwrap(),
            (1000, 1000)
        );
        assert!(usage(&state(true, Some("builder:nogroup")), None).contains("no group `nogroup`"));
        assert!(usage(&state(true, None), Some("ghost")).starts_with("no user `ghost`"));

        // A single mapping: no root, and only the sdk ids.
        let single = |u: &str| state(false, Some(u));
        assert!(usage(&single("0:0"), None).contains("has no root user"));
        assert!(usage(&single("root"), None).contains("has no root user"));
        let m = usage(&single("builder"), None);
        assert!(
            m.contains("only uid and gid 1000") && m.ends_with("pass -u sdk"),
            "{m}"
        );
        assert!(usage(&single("ghost"), None).ends_with("pass -u sdk"));
        assert_eq!(pick(&single("sdk"), None).unwrap(), (1000, 1000));
    }

    #[test]
    fn environment_is_clean() {
        let a = Account {
            name: "sdk".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/sdk".into(),
            shell: "/bin/sh".into(),
        };
        let env = environment(
            &a,
            "box",
            &[
                ("SSH_AUTH_SOCK".into(), "/run/host/ssh-agent.sock".into()),
                ("HOME".into(), "/wrong".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            &[
                "FOO=bar".parse().unwrap(),
                "SHELL=/asked".parse().unwrap(),
                "KEEP".parse().unwrap(),
                "UNSET".parse().unwrap(),
            ],
            |k| match k {
                "TERM" => Some("xterm".into()),
                "SOURCE_DATE_EPOCH" => Some("1700000000".into()),
                "https_proxy" => Some("http://127.0.0.1:3128".into()),
                "KEEP" => Some("kept".into()),
                "SECRET" => Some("no".into()),
                _ => None,
            },
        );
        let env: Vec<String> = env
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert!(env.contains(&"HOME=/home/sdk".to_string()));
        assert!(env.contains(&"TERM=xterm".to_string()));
        assert!(env.contains(&"SDK_RUN_SANDBOX=box".to_string()));
        assert!(env.contains(&"SSH_AUTH_SOCK=/run/host/ssh-agent.sock".to_string()));
        assert!(
            env.iter()
                .any(|e| e.starts_with("PATH=/run/sdk-tools/bin:"))
        );
        assert!(env.contains(&"LANG=C.UTF-8".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        assert!(env.contains(&"SOURCE_DATE_EPOCH=1700000000".to_string()));
        assert!(env.contains(&"https_proxy=http://127.0.0.1:3128".to_string()));
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&"KEEP=kept".to_string()));
        assert!(env.contains(&"SHELL=/asked".to_string()), "-e wins");
        assert_eq!(env.iter().filter(|e| e.starts_with("SHELL=")).count(), 1);
        assert!(!env.iter().any(|e| e.starts_with("UNSET")));
        assert!(!env.iter().any(|e| e.starts_with("SECRET")));
    }

    #[test]
    fn env_arguments_parse_or_say_what_is_wrong() {
        let a: EnvArg = "A_1=x=y".parse().unwrap();
        assert_eq!((a.name.as_str(), a.value.as_deref()), ("A_1", Some("x=y")));
        let a: EnvArg = "EMPTY=".parse().unwrap();
        assert_eq!(a.value.as_deref(), Some(""));
        assert_eq!("NAME".parse::<EnvArg>().unwrap().value, None);
        for bad in ["", "=x", "1A=b", "A-B=c", "A B"] {
            let e = bad.parse::<EnvArg>().unwrap_err();
            assert!(e.contains("not a variable name"), "{bad}: {e}");
        }
    }

    #[test]
    fn joins_user_namespace_first() {
        let state = State {
            pid: std::process::id() as i32,
            start_time: 0,
            ns: crate::sandbox::start::ns_ids(std::process::id() as i32).unwrap(),
            started: 0,
            source: None,
            has_root: true,
            own_net: true,
            env: vec![],
            working_dir: None,
            user: None,
            tools: None,
        };
        let fds = NsFds::open(&state).unwrap();
        let r = Recorder::default();
        fds.join(&r).unwrap();
        assert_eq!(
            r.take(),
            [
                "setns CLONE_NEWUSER",
                "setns CLONE_NEWNS",
                "setns CLONE_NEWPID",
                "setns CLONE_NEWUTS",
                "setns CLONE_NEWIPC",
                "setns CLONE_NEWNET"
            ]
        );
        let mut other = state.clone();
        other.ns.mnt += 1;
        assert!(NsFds::open(&other).is_err());
    }

    #[test]
    fn login_shell_argv0_has_a_dash() {
        let a = Account {
            name: "sdk".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/sdk".into(),
            shell: "/bin/bash".into(),
        };
        let (p, v) = argv(&[], &a).unwrap();
        assert_eq!(p.to_str().unwrap(), "/bin/bash");
        assert_eq!(v[0].to_str().unwrap(), "-bash");
        let (p, v) = argv(&["ls".into(), "-l".into()], &a).unwrap();
        assert_eq!((p.to_str().unwrap(), v.len()), ("ls", 2));
    }
}
