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
use crate::sandbox::userns;
use crate::state::lock;
use crate::state::{SandboxName, State, is_running, read_json};
use crate::state::{SandboxPaths, StateDir};
use sdk_common::linux as sys;

/// The recorded state, if any (a damaged file counts as none).
pub fn read_state(sb: &SandboxPaths) -> Option<State> {
    crate::state::read_state(sb)
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

/// One sandbox by name, checked before anything is touched.
fn existing(state: &StateDir, name: &str) -> anyhow::Result<SandboxPaths> {
    let sb = state.sandbox(&SandboxName::parse(name)?);
    if !sb.config().is_file() {
        return Err(unknown(name));
    }
    Ok(sb)
}

/// Do `one` for every name, carrying on past failures: each is reported
/// on its own line, and the error returned at the end names them all
/// (bad input only when every failure was). One name fails as itself.
fn each(names: &[String], mut one: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if let [name] = names {
        return one(name);
    }
    let mut failed = Vec::new();
    let mut all_bad_input = true;
    for name in names {
        if let Err(e) = one(name) {
            all_bad_input &= crate::exit::code_for(&e) == crate::exit::USAGE;
            eprintln!("sdk-run: {name}: {e:#}");
            failed.push(name.as_str());
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "{} of {} not done: {}",
        failed.len(),
        names.len(),
        failed.join(" ")
    );
    if all_bad_input {
        Err(UsageError(msg).into())
    } else {
        Err(anyhow::anyhow!(msg))
    }
}

/// `sdk-run stop NAME...`
pub fn stop(state: &StateDir, names: &[String]) -> anyhow::Result<()> {
    each(names, |name| {
        let sb = existing(state, name)?;
        let _l = lock::lock(&sb)?;
        if stop_locked(&sb)? {
            eprintln!("stopped {name}");
        }
        Ok(())
    })
}

/// `sdk-run rm [-f] [--volumes] NAME...`: each name on its own; one
/// that is running (without `-f`) or unknown does not stop the others.
pub fn rm(state: &StateDir, names: &[String], force: bool, volumes: bool) -> anyhow::Result<()> {
    each(names, |name| {
        let sb = existing(state, name)?;
        if !force && read_state(&sb).as_ref().is_some_and(is_running) {
            return Err(UsageError(format!(
                "sandbox {name} is running; stop it with `sdk-run stop {name}` or remove it anyway with `sdk-run rm -f {name}`"
            ))
            .into());
        }
        let vol = read_json::<Config>(&sb.config())
            .ok()
            .and_then(|c| c.build_volume.map(|v| (v, c.idmap)));
        remove(state, &sb)?;
        match vol {
            Some((v, map)) if volumes => {
                remove_volume(&map, &v)?;
                eprintln!("removed {name} and its /build");
            }
            Some(_) => eprintln!(
                "removed {name} (its /build is kept for the next sandbox named {name}; `sdk-run rm --volumes` drops it)"
            ),
            None => eprintln!("removed {name}"),
        }
        Ok(())
    })
}

/// Delete a build volume (`volumes/<name>/build`) and its folder.
fn remove_volume(map: &IdMap, build: &std::path::Path) -> anyhow::Result<()> {
    remove_tree(map, build)?;
    if let Some(parent) = build.parent() {
        let _ = std::fs::remove_dir(parent);
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
    // A running sandbox's user namespace, held across the stop: its tree
    // is removed in there, with no new namespace (and no newuidmap and
    // newgidmap) to make.
    let held = read_state(sb).and_then(|st| userns::hold_of(&st));
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
    match &held {
        Some(ns) if map.has_root() => {
            let d = trash.clone();
            userns::run_in_existing_userns(ns.as_fd(), &map, move || {
                std::fs::remove_dir_all(&d)
                    .with_context(|| format!("cannot remove {}", d.display()))
            })
            .map_err(anyhow::Error::from)
        }
        _ => remove_tree(&map, &trash),
    }
}

fn caller_map() -> anyhow::Result<IdMap> {
    Ok(IdMap::for_caller(&SubIdFiles::default(), &Caller::current())?.0)
}

/// What `prune` would remove.
#[derive(Debug, PartialEq, Eq)]
enum Doomed {
    /// A stopped sandbox (and whether its `/build` goes too).
    Sandbox(String, bool),
    /// What an interrupted removal left (`sandboxes/.trash-*`).
    Leftover(String),
    /// The `/build` of a sandbox that no longer exists (`--volumes`).
    Volume(String),
}

impl std::fmt::Display for Doomed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Doomed::Sandbox(n, false) => write!(f, "sandbox {n} (stopped; its /build is kept)"),
            Doomed::Sandbox(n, true) => write!(f, "sandbox {n} (stopped) and its /build"),
            Doomed::Leftover(n) => write!(f, "leftover {n} of an interrupted removal"),
            Doomed::Volume(n) => write!(f, "/build of the removed sandbox {n}"),
        }
    }
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Stopped sandboxes that nobody is working on, leftovers, and (with
/// `volumes`) build volumes whose sandbox is gone.
fn doomed(state: &StateDir, volumes: bool) -> anyhow::Result<Vec<Doomed>> {
    let mut out = Vec::new();
    for n in dir_names(&state.sandboxes()) {
        if n.starts_with(".trash-") {
            out.push(Doomed::Leftover(n));
            continue;
        }
        let Ok(name) = SandboxName::parse(&n) else {
            continue;
        };
        let sb = state.sandbox(&name);
        let Some(_l) = lock::try_lock(&sb)? else {
            continue;
        };
        if !read_state(&sb).as_ref().is_some_and(is_running) {
            out.push(Doomed::Sandbox(n, volumes));
        }
    }
    if volumes {
        for n in dir_names(&state.volumes()) {
            let owned =
                SandboxName::parse(&n).is_ok_and(|name| state.sandbox(&name).config().is_file());
            if !owned {
                out.push(Doomed::Volume(n));
            }
        }
    }
    Ok(out)
}

/// How `prune` may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// `-f`: without asking.
    Force,
    /// `--dry-run`: list only.
    DryRun,
    /// Ask on the terminal; refuse without one.
    Ask,
}

/// `sdk-run prune [-f|--dry-run] [--volumes]`: list the sandboxes that are
/// not running (and leftovers of interrupted creates and removals; with
/// `--volumes` the kept `/build` of removed sandboxes), then remove them
/// once confirmed. Sandboxes another `sdk-run` is working on are skipped.
pub fn prune(state: &StateDir, confirm: Confirm, volumes: bool) -> anyhow::Result<()> {
    let list = doomed(state, volumes)?;
    if list.is_empty() {
        eprintln!("nothing to prune");
        return Ok(());
    }
    let verb = if confirm == Confirm::Force {
        "removing"
    } else {
        "would remove"
    };
    eprintln!("sdk-run prune {verb}:");
    for d in &list {
        eprintln!("  {d}");
    }
    match confirm {
        Confirm::DryRun => return Ok(()),
        Confirm::Force => {}
        Confirm::Ask => {
            use std::io::IsTerminal;
            if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
                return Err(UsageError(format!(
                    "prune removes {} item(s) listed above only when confirmed; pass -f to remove them, or --dry-run to only list",
                    list.len()
                ))
                .into());
            }
            eprint!("remove them? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                eprintln!("nothing removed");
                return Ok(());
            }
        }
    }
    let map = caller_map()?;
    for d in list {
        match &d {
            Doomed::Leftover(n) => remove_tree(&map, &state.sandboxes().join(n))?,
            Doomed::Volume(n) => remove_volume(&map, &state.volumes().join(n).join("build"))?,
            Doomed::Sandbox(n, with_volume) => {
                let name = SandboxName::parse(n)?;
                let sb = state.sandbox(&name);
                // Someone may have started it since it was listed.
                let Some(_l) = lock::try_lock(&sb)? else {
                    continue;
                };
                if read_state(&sb).as_ref().is_some_and(is_running) {
                    continue;
                }
                remove_locked(state, &sb)?;
                if *with_volume {
                    remove_volume(&map, &state.build_volume(&name))?;
                }
            }
        }
        eprintln!("removed {d}");
    }
    Ok(())
}
