//! The per-sandbox lock: `flock(2)` on `sandboxes/<name>/lock` around
//! create, start, stop and remove, so concurrent `sdk-run` calls on one
//! name make exactly one sandbox. Entering a running sandbox takes no lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

use crate::state::SandboxPaths;

/// Held until dropped.
pub struct SandboxLock {
    _lock: Flock<File>,
}

fn open(sb: &SandboxPaths) -> anyhow::Result<File> {
    // sandboxes/<name>: the state root two levels up is kept private.
    if let Some(root) = sb.dir.parent().and_then(|p| p.parent()) {
        crate::state::paths::ensure_private_dir(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
    }
    std::fs::create_dir_all(&sb.dir)
        .with_context(|| format!("cannot create {}", sb.dir.display()))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(sb.lock())
        .with_context(|| format!("cannot open {}", sb.lock().display()))
}

/// Still the lock file at the path? A remover may have deleted the whole
/// sandbox (and our lock file with it) while we waited.
fn current(sb: &SandboxPaths, f: &File) -> bool {
    match (std::fs::metadata(sb.lock()), f.metadata()) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Wait for the lock (creating the sandbox directory if needed).
pub fn lock(sb: &SandboxPaths) -> anyhow::Result<SandboxLock> {
    loop {
        let f = open(sb)?;
        let l = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", sb.lock().display()))?;
        if current(sb, &l) {
            return Ok(SandboxLock { _lock: l });
        }
    }
}

/// Take the lock only if nobody holds it (prune skips busy sandboxes).
pub fn try_lock(sb: &SandboxPaths) -> anyhow::Result<Option<SandboxLock>> {
    let f = open(sb)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) if current(sb, &l) => Ok(Some(SandboxLock { _lock: l })),
        Ok(_) => Ok(None),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", sb.lock().display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_try_lock_fails_while_held_and_removal_is_noticed() {
        let d = tempfile::tempdir().unwrap();
        let sb = crate::state::StateDir::at(d.path())
            .sandbox(&crate::state::SandboxName::parse("x").unwrap());
        let l = lock(&sb).unwrap();
        assert!(try_lock(&sb).unwrap().is_none());
        drop(l);
        let l = try_lock(&sb).unwrap().unwrap();
        std::fs::remove_dir_all(&sb.dir).unwrap();
        drop(l);
        // A fresh lock after removal re-creates the directory.
        let _l = lock(&sb).unwrap();
        assert!(sb.lock().exists());
    }
}
