//! Run code as root inside a fresh user namespace that has the caller's
//! full id map. Owns the fork / unshare / map-writing handshake; used by the
//! sandbox itself (create, remove) and by the rootfs store to unpack and
//! build rootfs trees with real ownership (root inside = the first id of
//! the caller's subordinate range, the caller = uid 1000 inside).
//!
//! ```no_run
//! use sdk_run::idmap::{Caller, IdMap, SubIdFiles};
//! use sdk_run::sandbox::userns;
//!
//! let (map, warning) = IdMap::for_caller(&SubIdFiles::default(), &Caller::current())?;
//! if let Some(w) = warning { eprintln!("{w}"); }
//! // A closure, run in a forked child as uid 0 inside:
//! userns::run_in_userns(&map, || {
//!     std::os::unix::fs::chown("/tmp/tree/etc", Some(0), Some(0))?;
//!     Ok(())
//! })?;
//! // Or a command, exec'd as uid 0 inside; returns its exit status:
//! let status = userns::command_in_userns(&map, std::process::Command::new("tar").args(["-xf", "x.tar"]))?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Forking: call these while your process has no other threads, or at
//! least none holding locks the child needs (glibc's malloc is fork-safe;
//! a rayon pool that is busy is not a problem, one holding a `Mutex` you
//! lock in the closure is).

use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::idmap::IdMap;
use sdk_common::linux as sys;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot create a pipe or process: {0}")]
    Setup(#[source] nix::Error),
    #[error(
        "cannot create a user namespace ({0}); enable them with `sysctl -w user.max_user_namespaces=15000` (and kernel.unprivileged_userns_clone=1 where it exists)"
    )]
    Unavailable(#[source] nix::Error),
    #[error(transparent)]
    Map(#[from] crate::idmap::IdMapError),
    #[error("{0}")]
    Child(String),
    #[error("the user-namespace child was killed by {0:?}")]
    Killed(nix::sys::signal::Signal),
}

/// Outcome reported by the child through the error pipe.
const CHILD_OK: u8 = b'0';

/// Fork; the child unshares its user namespace, waits for the parent to
/// write `map`, becomes root inside (when the map has a root), and runs
/// `f`. An `Err` from `f` comes back as [`UsernsError::Child`] with the
/// whole error chain. Returns once the child has exited.
pub fn run_in_userns<F>(map: &IdMap, f: F) -> Result<(), UsernsError>
where
    F: FnOnce() -> anyhow::Result<()>,
{
    run_in(map, None, f)
}

/// [`run_in_userns`] in a user namespace that exists (`ns`, an open
/// `/proc/PID/ns/user` of a sandbox's init, which keeps it alive after the
/// init is gone) and has `map`: no new namespace, so no newuidmap and
/// newgidmap to run.
pub fn run_in_existing_userns<F>(ns: BorrowedFd<'_>, map: &IdMap, f: F) -> Result<(), UsernsError>
where
    F: FnOnce() -> anyhow::Result<()>,
{
    run_in(map, Some(ns), f)
}

/// The user namespace of a running sandbox's init, held open: `None` when
/// the init is gone or its namespace is not the one recorded at start.
pub fn hold_of(state: &crate::state::State) -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(format!("/proc/{}/ns/user", state.pid)).ok()?;
    let same = f.metadata().ok()?.ino() == state.ns.user;
    (same && crate::state::is_running(state)).then(|| f.into())
}

fn run_in<F>(map: &IdMap, join: Option<BorrowedFd<'_>>, f: F) -> Result<(), UsernsError>
where
    F: FnOnce() -> anyhow::Result<()>,
{
    let (status, msg) = fork_in_userns(map, join, |report| match f() {
        Ok(()) => {
            let _ = report.write_all(&[CHILD_OK]);
            0
        }
        Err(e) => {
            let _ = write!(report, "{e:#}");
            1
        }
    })?;
    match status {
        WaitStatus::Exited(_, 0) if msg == [CHILD_OK] => Ok(()),
        WaitStatus::Signaled(_, sig, _) => Err(UsernsError::Killed(sig)),
        _ if msg.is_empty() => Err(UsernsError::Child(
            "the user-namespace child exited without reporting".into(),
        )),
        _ => Err(UsernsError::Child(
            String::from_utf8_lossy(&msg).into_owned(),
        )),
    }
}

/// Exec `cmd` as root inside a new user namespace with `map`; returns its
/// exit status (stdio is inherited unless `cmd` says otherwise).
pub fn command_in_userns(map: &IdMap, cmd: &mut Command) -> Result<ExitStatus, UsernsError> {
    use std::os::unix::process::ExitStatusExt;
    let (status, msg) = fork_in_userns(map, None, |report| {
        let e = cmd.exec();
        let _ = write!(report, "cannot run {:?}: {e}", cmd.get_program());
        127
    })?;
    if !msg.is_empty() {
        return Err(UsernsError::Child(
            String::from_utf8_lossy(&msg).into_owned(),
        ));
    }
    Ok(match status {
        WaitStatus::Exited(_, c) => ExitStatus::from_raw(c << 8),
        WaitStatus::Signaled(_, sig, _) => ExitStatus::from_raw(sig as i32),
        _ => ExitStatus::from_raw(1 << 8),
    })
}

/// The handshake (or, with `join`, setns into that namespace, whose maps
/// are written). `body` runs in the child with the report pipe (CLOEXEC,
/// so a successful exec closes it) and returns the child's exit code.
fn fork_in_userns(
    map: &IdMap,
    join: Option<BorrowedFd<'_>>,
    body: impl FnOnce(&mut std::fs::File) -> i32,
) -> Result<(WaitStatus, Vec<u8>), UsernsError> {
    use nix::fcntl::OFlag;
    let (to_parent_r, to_parent_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(UsernsError::Setup)?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(UsernsError::Setup)?;
    let (rep_r, rep_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(UsernsError::Setup)?;
    let parent = std::process::id() as i32;
    match sys::fork().map_err(UsernsError::Setup)? {
        ForkResult::Child => {
            drop((to_parent_r, go_w, rep_r));
            let mut report = std::fs::File::from(rep_w);
            let code = (|| {
                if let Some(ns) = join {
                    if let Err(e) = nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER) {
                        let _ = write!(report, "cannot join the sandbox's user namespace: {e}");
                        return 1;
                    }
                    drop((to_parent_w, go_r));
                } else {
                    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
                        let _ = write!(report, "{}", UsernsError::Unavailable(e));
                        return 1;
                    }
                    let mut tp = std::fs::File::from(to_parent_w);
                    if tp.write_all(b"u").is_err() {
                        return 1;
                    }
                    drop(tp);
                    let mut b = [0u8; 1];
                    let n = std::fs::File::from(go_r).read(&mut b).unwrap_or(0);
                    if n != 1 || b[0] != b'g' {
                        return 1;
                    }
                }
                if let Err(e) = become_root(map) {
                    let _ = write!(report, "cannot become root in the user namespace: {e}");
                    return 1;
                }
                // After the id change (which clears it): a killed sdk-run
                // takes this helper with it.
                if !sys::die_with_parent(libc::SIGKILL, parent) {
                    return 1;
                }
                body(&mut report)
            })();
            // SAFETY: _exit skips atexit handlers and destructors that
            // belong to the parent's copy of the process.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop((to_parent_w, go_r, rep_w));
            let mut b = [0u8; 1];
            let unshared =
                join.is_none() && std::fs::File::from(to_parent_r).read(&mut b).unwrap_or(0) == 1;
            let mut go = std::fs::File::from(go_w);
            let mapped = if join.is_some() {
                Ok(true)
            } else if unshared {
                map.write_for(child.as_raw(), Path::new("/proc"))
                    .map(|()| go.write_all(b"g").is_ok())
            } else {
                Ok(false)
            };
            drop(go);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(rep_r).read_to_end(&mut msg);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other.map_err(UsernsError::Setup)?,
                }
            };
            mapped?;
            Ok((status, msg))
        }
    }
}

/// In the child after the maps are written: root when mapped, no
/// supplementary groups (they would be unmapped overflow ids).
pub(crate) fn become_root(map: &IdMap) -> nix::Result<()> {
    let id = if map.has_root() {
        0
    } else {
        crate::idmap::SDK_ID
    };
    if !map.is_single() {
        nix::unistd::setgroups(&[])?;
    }
    nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id))?;
    nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id))
}
