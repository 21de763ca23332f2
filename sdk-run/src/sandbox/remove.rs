//! Stop and remove sandboxes (`stop`, `rm`, `prune`, `--rm`). Stopping
//! kills the init with SIGKILL through a pidfd (checked against the
//! recorded start time first); the kernel then kills everything else in the
//! pid namespace, and with the namespaces go all their mounts. Removal
//! renames the directory to a `.trash-*` name first, so an interrupted
//! removal never leaves a half sandbox behind.

use std::os::fd::AsFd;

use anyhow::Context;

use crate::exit::UsageError;
use crate::idmap::{Caller, IdMap, SubIdFiles};
use crate::sandbox::config::Config;
use crate::sandbox::create::remove_tree;
use crate::state::lock;
use crate::state::{SandboxName, State, is_running, read_json};
use crate::state::{SandboxPaths, StateDir};
use sdk_common::linux as sys;

/// The recorded state, if any (a damaged file counts as none).
pub fn read_state(sb: &SandboxPaths) -> Option<State> {
    read_json(&sb.state()).ok()
}

/// Kill the init of `st` if it is still the recorded process and wait
/// until it is gone.
fn kill_init(st: &State) -> anyhow::Result<()> {
    let Ok(pidfd) = sys::pidfd_open(st.pid) else {
        return Ok(()); // already gone
    };
    // The pidfd pins the process: checking after opening it is race-free.
    if !is_running(st) {
        return Ok(());
    }
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL).context("cannot kill the sandbox init")?;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16));
    Ok(())
}

/// Stop (the caller holds the lock). Returns whether it was running.
pub fn stop_locked(sb: &SandboxPaths) -> anyhow::Result<bool> {
    crate::sandbox::start::kill_unfinished(sb);
    let st = read_state(sb);
    let running = st.as_ref().is_some_and(is_running);
    if let Some(st) = &st
        && running
    {
        kill_init(st)?;
    }
    match std::fs::remove_file(sb.state()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", sb.state().display())),
    }
    Ok(running)
}

fn unknown(name: &str) -> anyhow::Error {
    UsageError(format!(
        "no sandbox named `{name}`; `sdk-run list` shows the sandboxes there are"
    ))
    .into()
}

/// Check names before touching anything.
fn existing(state: &StateDir, names: &[String]) -> anyhow::Result<Vec<(String, SandboxPaths)>> {
    names
        .iter()
        .map(|n| {
            let sb = state.sandbox(&SandboxName::parse(n)?);
            if !sb.config().is_file() {
                return Err(unknown(n));
            }
            Ok((n.clone(), sb))
        })
        .collect()
}

/// `sdk-run stop NAME...`
pub fn stop(state: &StateDir, names: &[String]) -> anyhow::Result<()> {
    for (name, sb) in existing(state, names)? {
        let _l = lock::lock(&sb)?;
        if stop_locked(&sb)? {
            eprintln!("stopped {name}");
        }
    }
    Ok(())
}

/// `sdk-run rm [-f] NAME...`
pub fn rm(state: &StateDir, names: &[String], force: bool) -> anyhow::Result<()> {
    let list = existing(state, names)?;
    if !force {
        for (name, sb) in &list {
            if read_state(sb).as_ref().is_some_and(is_running) {
                return Err(UsageError(format!(
                    "sandbox {name} is running; stop it with `sdk-run stop {name}` or remove it anyway with `sdk-run rm -f {name}`"
                ))
                .into());
            }
        }
    }
    for (name, sb) in list {
        remove(state, &sb)?;
        eprintln!("removed {name}");
    }
    Ok(())
}

/// Stop and delete one sandbox (taking its lock).
pub fn remove(state: &StateDir, sb: &SandboxPaths) -> anyhow::Result<()> {
    let _l = lock::lock(sb)?;
    remove_locked(state, sb)
}

/// Stop and delete; the caller holds the lock.
pub fn remove_locked(state: &StateDir, sb: &SandboxPaths) -> anyhow::Result<()> {
    stop_locked(sb)?;
    let map = match read_json::<Config>(&sb.config()) {
        Ok(c) => c.idmap,
        Err(_) => caller_map()?,
    };
    let name = sb
        .dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let trash = state
        .sandboxes()
        .join(format!(".trash-{name}-{}", std::process::id()));
    std::fs::rename(&sb.dir, &trash)
        .with_context(|| format!("cannot move {} aside", sb.dir.display()))?;
    remove_tree(&map, &trash)
}

fn caller_map() -> anyhow::Result<IdMap> {
    Ok(IdMap::for_caller(&SubIdFiles::default(), &Caller::current())?.0)
}

/// `sdk-run prune`: remove every sandbox that is not running, and what
/// interrupted creates and removals left behind. Sandboxes another
/// `sdk-run` is working on (locked) are skipped.
pub fn prune(state: &StateDir) -> anyhow::Result<()> {
    let dir = state.sandboxes();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        if n.starts_with(".trash-") {
            remove_tree(&caller_map()?, &dir.join(&n))?;
            continue;
        }
        let Ok(name) = SandboxName::parse(&n) else {
            continue;
        };
        let sb = state.sandbox(&name);
        let Some(_l) = lock::try_lock(&sb)? else {
            continue;
        };
        if read_state(&sb).as_ref().is_some_and(is_running) {
            continue;
        }
        remove_locked(state, &sb)?;
        eprintln!("removed {n}");
    }
    Ok(())
}
