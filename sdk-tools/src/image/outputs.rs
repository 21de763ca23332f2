//! The image output directory, `__build__/images/<board>/` by default:
//!
//! ```text
//! images/amd64-usr/
//!   developer-1.2.0-a1/     a complete build (never modified once published)
//!   developer-1.2.0-a2/     a rebuild with --replace (a1 is removed after)
//!   latest -> developer-1.2.0-a2
//!   .lock                   held while a build writes here
//!   .tmp-<random>/          a build in progress (removed by the next build
//!                           if a killed one left it)
//! ```
//!
//! A build writes into `.tmp-*`, renames its finished folder into place
//! and then switches `latest` by renaming a new symlink over it, so
//! `latest` always names a complete image, whatever moment a build is
//! killed at.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::{IoError, io_err};
use sdk_common::fsutil::hash_file;

pub const LATEST: &str = "latest";
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "{} already exists; pass --replace to build it again (as a new attempt), or bump the OS version",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("another build is writing to {}; wait for it to finish", dir.display())]
    Busy { dir: PathBuf },
}

/// An output directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct OutputDir {
    dir: PathBuf,
    _lock: File,
}

impl OutputDir {
    /// Create/lock `dir` and remove what killed builds left behind.
    pub fn open(dir: &Path) -> Result<OutputDir, OutputError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let dir = &fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        // Each build's work directory in a block group of its own.
        sdk_common::spread_subdirs(dir);
        let lock_path = dir.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(OutputError::Busy {
                    dir: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e).into()),
        }
        let out = OutputDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
            let entry = entry.map_err(io_err("read", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(".latest-") {
                tracing::info!(path = %entry.path().display(), "removing what an interrupted build left");
                // Best effort: a tool the killed build started may still be
                // writing there; the next build tries again.
                if let Err(e) = remove_any(&entry.path()) {
                    tracing::warn!("{e}");
                }
            }
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Attempts of `<stem>-a<N>` present, ascending.
    pub fn attempts(&self, stem: &str) -> Result<Vec<u32>, OutputError> {
        let mut found = Vec::new();
        let prefix = format!("{stem}-a");
        for entry in fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))? {
            let entry = entry.map_err(io_err("read", &self.dir))?;
            let name = entry.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse::<u32>().ok())
            {
                found.push(n);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// The attempt number this build gets: 1 for a new `<stem>`; the next
    /// one with `replace`; an error otherwise.
    pub fn next_attempt(&self, stem: &str, replace: bool) -> Result<u32, OutputError> {
        let have = self.attempts(stem)?;
        match have.last() {
            None => Ok(1),
            Some(&n) if replace => Ok(n + 1),
            Some(&n) => Err(OutputError::Exists {
                path: self.dir.join(format!("{stem}-a{n}")),
            }),
        }
    }

    /// A fresh working directory inside the output directory (same
    /// filesystem, so publishing is a rename).
    pub fn temp(&self) -> Result<tempfile::TempDir, OutputError> {
        Ok(tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.dir)
            .map_err(io_err("create a temporary directory in", &self.dir))?)
    }

    /// Rename the finished folder `built` to `name`, point `latest` at it,
    /// then remove the older attempts of `stem` it replaces.
    pub fn publish(&self, built: &Path, name: &str, stem: &str) -> Result<PathBuf, OutputError> {
        let dest = self.dir.join(name);
        fs::rename(built, &dest).map_err(io_err("rename into place", &dest))?;
        sync_dir(&self.dir)?;
        let tmp_link = self.dir.join(format!(".latest-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(name, &tmp_link).map_err(io_err("create", &tmp_link))?;
        let latest = self.dir.join(LATEST);
        fs::rename(&tmp_link, &latest).map_err(io_err("switch", &latest))?;
        sync_dir(&self.dir)?;
        for n in self.attempts(stem)? {
            let old = format!("{stem}-a{n}");
            if old != name {
                remove_any(&self.dir.join(old))?;
            }
        }
        Ok(dest)
    }
}

fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    Ok(File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?)
}

/// Remove a file or a directory tree (a missing one is fine).
pub fn remove_any(path: &Path) -> Result<(), OutputError> {
    Ok(sdk_common::fsutil::remove_any(path).map_err(io_err("remove", path))?)
}

/// One line of `manifest.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    /// sha256 of the contents (every file but the sparse disk image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The disk image's [`sdk_common::fsutil::blocks_sha256`]: its holes
    /// are neither read nor hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_sha256: Option<String>,
}

impl Artifact {
    /// The digest it carries, with its kind (`sha256:` or `blocks-sha256:`).
    pub fn digest(&self) -> String {
        match (&self.sha256, &self.blocks_sha256) {
            (Some(s), _) => format!("sha256:{s}"),
            (None, Some(b)) => format!("blocks-sha256:{b}"),
            (None, None) => "none".into(),
        }
    }
}

/// sha256 and size of every regular file in `dir` (not recursing), in
/// name order, hashed in parallel; those in `known` were hashed already.
pub fn artifacts(
    dir: &Path,
    skip: &[&str],
    known: &[Artifact],
) -> Result<Vec<Artifact>, OutputError> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        let ft = entry.file_type().map_err(io_err("stat", &entry.path()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_file() && !skip.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    names
        .into_par_iter()
        .map(|name| {
            if let Some(a) = known.iter().find(|a| a.name == name) {
                return Ok(a.clone());
            }
            let p = dir.join(&name);
            let (size, sum) = hash_file(&p).map_err(io_err("hash", &p))?;
            Ok(Artifact {
                name,
                size,
                sha256: Some(hex::encode(sum)),
                blocks_sha256: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_publish_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        assert_eq!(out.next_attempt("developer-1.0", false).unwrap(), 1);
        let t = out.temp().unwrap();
        fs::write(t.path().join("x"), "1").unwrap();
        out.publish(t.path(), "developer-1.0-a1", "developer-1.0")
            .unwrap();
        assert_eq!(
            fs::read_link(dir.path().join(LATEST)).unwrap(),
            Path::new("developer-1.0-a1")
        );
        let err = out.next_attempt("developer-1.0", false).unwrap_err();
        assert!(err.to_string().contains("--replace"), "{err}");
        assert_eq!(out.next_attempt("developer-1.0", true).unwrap(), 2);
        let t = out.temp().unwrap();
        out.publish(t.path(), "developer-1.0-a2", "developer-1.0")
            .unwrap();
        assert!(!dir.path().join("developer-1.0-a1").exists());
        assert_eq!(
            fs::read_link(dir.path().join(LATEST)).unwrap(),
            Path::new("developer-1.0-a2")
        );
    }

    #[test]
    fn lock_is_exclusive_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".tmp-killed/staging")).unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        assert!(!dir.path().join(".tmp-killed").exists());
        let err = OutputDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, OutputError::Busy { .. }));
        drop(out);
        OutputDir::open(dir.path()).unwrap();
    }

    #[test]
    fn artifacts_are_hashed_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b"), "abc").unwrap();
        fs::write(dir.path().join("a"), "").unwrap();
        fs::write(dir.path().join("manifest.json"), "{}").unwrap();
        let a = artifacts(dir.path(), &["manifest.json"], &[]).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].name, "a");
        assert_eq!(a[1].size, 3);
        assert!(a[1].sha256.as_deref().unwrap().starts_with("ba7816bf"));
    }
}
