//! Where sdk-run keeps its state. Owns the layout of the state directory
//! (`$XDG_DATA_HOME/sdk-run/`, default `~/.local/share/sdk-run/`); it does
//! not create or lock anything (see `sandbox::lock` for that).
//!
//! ```text
//! sdk-run/
//!   tools.json                  cached multi-call names of sdk-tools
//!   images/<digest>/            unpacked SDK rootfs bases (the image store)
//!   sandboxes/<name>/
//!     config.json               what the sandbox was created with
//!     state.json                init pid, start time, namespace ids (when started)
//!     lock                      flock(2) around create/start/stop/remove
//!     starting.json             an init that is starting (removed once ready)
//!     rootfs/                   a rootfs extracted from a tarball (RootfsSpec::Bind)
//!     upper/ work/              the writable overlay layer (RootfsSpec::Overlay)
//!     mnt/                      where the sandbox's root is assembled (inside its
//!                               mount namespace only; empty on the host)
//! ```

use std::path::{Path, PathBuf};

use super::SandboxName;
use crate::exit::UsageError;

/// Create `dir` (and its parents) with mode 0700 for `dir` itself; an
/// existing `dir` of ours that others can read or enter is set to 0700.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::metadata(dir)?;
            if m.mode() & 0o077 != 0 && m.uid() == nix::unistd::geteuid().as_raw() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The state directory root (`.../sdk-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `$XDG_DATA_HOME/sdk-run`, or `$HOME/.local/share/sdk-run`.
    pub fn from_env() -> Result<StateDir, UsageError> {
        Self::from_vars(
            std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    }

    /// Same as [`StateDir::from_env`] with the variables passed in (tests).
    pub fn from_vars(
        xdg_data_home: Option<PathBuf>,
        home: Option<PathBuf>,
    ) -> Result<StateDir, UsageError> {
        // The XDG spec says a relative value is invalid and must be ignored.
        if let Some(x) = xdg_data_home.filter(|p| p.is_absolute()) {
            return Ok(StateDir::at(x.join("sdk-run")));
        }
        match home.filter(|p| p.is_absolute()) {
            Some(h) => Ok(StateDir::at(h.join(".local/share/sdk-run"))),
            None => Err(UsageError(
                "neither XDG_DATA_HOME nor HOME is set to an absolute path; set one so sdk-run knows where to keep its state".into(),
            )),
        }
    }

    /// A state directory at an explicit place.
    pub fn at(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create the state directory private to its owner (0700, as podman's
    /// storage is: sandbox records name repos, binds and ids), tightening
    /// one an earlier version made readable by others.
    pub fn ensure_private(&self) -> std::io::Result<()> {
        ensure_private_dir(&self.root)
    }

    /// `images/`: the content-addressed store of unpacked rootfs bases.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `images/<digest>/`.
    pub fn image(&self, digest: &str) -> PathBuf {
        self.images().join(digest)
    }

    /// `sandboxes/`.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// The paths of one sandbox.
    pub fn sandbox(&self, name: &SandboxName) -> SandboxPaths {
        SandboxPaths {
            dir: self.sandboxes().join(name.as_str()),
            tools_cache: self.tools_cache(),
        }
    }

    /// `volumes/`: what outlives a sandbox, one folder per sandbox name.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// `volumes/<name>/build`: the sandbox's `/build` (cross-roots and
    /// binary packages), kept when the sandbox is removed so a sandbox
    /// made again under the same name finds its builds.
    pub fn build_volume(&self, name: &SandboxName) -> PathBuf {
        self.volumes().join(name.as_str()).join("build")
    }

    /// `tools.json`: the cached multi-call names of sdk-tools.
    pub fn tools_cache(&self) -> PathBuf {
        self.root.join("tools.json")
    }
}

/// The files of one sandbox under `sandboxes/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    pub dir: PathBuf,
    /// The state directory's `tools.json` (shared by every sandbox).
    pub tools_cache: PathBuf,
}

impl SandboxPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The init being started (pid + start time), written before it is
    /// ready, so a start that was killed halfway leaves no stray init.
    pub fn starting(&self) -> PathBuf {
        self.dir.join("starting.json")
    }
    /// Extracted rootfs (from a tarball) for `RootfsSpec::Bind`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// Overlay upper directory for `RootfsSpec::Overlay`.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// Overlay work directory for `RootfsSpec::Overlay`.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// Mount point where the sandbox root is assembled before `pivot_root`.
    pub fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("share/sdk-run");
        ensure_private_dir(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        // One an older version left readable by others is tightened.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn xdg_wins_over_home() {
        let s = StateDir::from_vars(Some("/x".into()), Some("/home/a".into())).unwrap();
        assert_eq!(s.root(), Path::new("/x/sdk-run"));
        assert_eq!(
            s.sandbox(&SandboxName::parse("n").unwrap()).state(),
            Path::new("/x/sdk-run/sandboxes/n/state.json")
        );
        assert_eq!(
            s.image("sha256-ab"),
            Path::new("/x/sdk-run/images/sha256-ab")
        );
    }

    #[test]
    fn relative_xdg_is_ignored() {
        let s = StateDir::from_vars(Some("rel".into()), Some("/home/a".into())).unwrap();
        assert_eq!(s.root(), Path::new("/home/a/.local/share/sdk-run"));
    }

    #[test]
    fn nothing_set_is_a_usage_error() {
        assert!(StateDir::from_vars(None, None).is_err());
    }
}
