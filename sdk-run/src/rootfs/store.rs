//! The content-addressed image store, `$XDG_DATA_HOME/sdk-run/images/`:
//!
//! ```text
//! images/
//!   .lock               flock(2): one writer (import, build, rmi) at a time
//!   .tmp/               unpacks in progress; whatever is here when a writer
//!                       holds the lock is left over from a killed run
//!   <sha256 hex>/       one complete image, appeared by rename(2)
//!     image.json        what it is (ImageMeta)
//!     rootfs/           the unpacked tree, shared read-only by sandboxes
//!   tags/<name>         symlink to ../<sha256 hex>
//! ```
//!
//! An image directory exists only once complete: unpacking happens in
//! `.tmp/` and is renamed into place, so a killed import never leaves a
//! half-unpacked base that anyone could use. This module owns the layout,
//! the lock and names; it does not unpack (see `import`) and does not
//! delete trees owned by subordinate ids itself (the caller does that
//! inside a user namespace; see [`Store::trash`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sdk_common::oci::{RuntimeConfig, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no image {name:?} in the store; {}", match closest {
        Some(t) => format!("did you mean {t:?}? (`sdk-run images` lists them)"),
        None => "`sdk-run images` lists what there is".to_string(),
    })]
    NotFound {
        name: String,
        /// The tag most like `name`, when one is close.
        closest: Option<String>,
    },
    #[error("{0:?} matches several images; give more of the digest")]
    Ambiguous(String),
    #[error(
        "{0:?} is not a valid tag: use letters, digits and `._:-`, starting with a letter or digit"
    )]
    BadTag(String),
}

impl sdk_common::error::BadInput for StoreError {
    fn is_bad_input(&self) -> bool {
        !matches!(self, StoreError::Io { .. })
    }
}

/// The candidate most like `name` (a mistyped tag), if any is close:
/// Jaro-Winkler similarity of at least 0.8, as clap suggests flags.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the store knows about an image (`image.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageMeta {
    /// sha256 hex: the directory name.
    pub digest: String,
    /// How it came to be: the source kind, or `manifest`.
    pub kind: String,
    /// The archive path or manifest it came from.
    pub source: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// Env, working directory and user applied when entering.
    pub config: RuntimeConfig,
    /// Entries the extractor refused or neutralised.
    pub skipped: u64,
}

impl ImageMeta {
    pub fn new(
        digest: &str,
        kind: &str,
        source: &str,
        config: RuntimeConfig,
        skipped: u64,
    ) -> Self {
        ImageMeta {
            digest: digest.to_string(),
            kind: kind.to_string(),
            source: source.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config,
            skipped,
        }
    }

    pub fn from_kind(kind: SourceKind) -> &'static str {
        kind.as_str()
    }
}

/// One image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub meta: ImageMeta,
    pub tags: Vec<String>,
}

impl Image {
    /// The unpacked tree (an overlay lower directory).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// Exclusive writer lock on the store; released on drop.
pub struct StoreLock {
    _held: nix::fcntl::Flock<fs::File>,
}

/// The store at `images/`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        && !is_digest(s)
}

impl Store {
    pub fn new(images_dir: impl Into<PathBuf>) -> Store {
        Store {
            root: images_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_root(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    fn tags_dir(&self) -> PathBuf {
        self.root.join("tags")
    }

    /// Take the writer lock, waiting for another writer (with a note on
    /// stderr when it has to wait).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        // images/ lives in the state root, kept private to its owner.
        if let Some(state) = self.root.parent() {
            crate::state::paths::ensure_private_dir(state).map_err(io_err("create", state))?;
        }
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        use nix::fcntl::{Flock, FlockArg};
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(h) => h,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                eprintln!(
                    "sdk-run: waiting for another import or build in {}",
                    self.root.display()
                );
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| io_err("lock", &path)(e.into()))?
            }
            Err((_, e)) => return Err(io_err("lock", &path)(e.into())),
        };
        Ok(StoreLock { _held: held })
    }

    /// A fresh, empty directory under `.tmp/` to unpack into.
    pub fn begin(&self, _lock: &StoreLock) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        // Each unpack in a block group of its own.
        sdk_common::spread_subdirs(&tmp);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!("new-{}-{nanos:x}", std::process::id()));
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        fs::create_dir(dir.join("rootfs")).map_err(io_err("create", &dir))?;
        Ok(dir)
    }

    /// Leftovers in `.tmp/` (killed unpacks, removed images): delete them
    /// inside a user namespace (they may belong to subordinate ids).
    pub fn leftovers(&self, _lock: &StoreLock) -> Vec<PathBuf> {
        match fs::read_dir(self.tmp_root()) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Publish the unpacked `tmp` (from [`Store::begin`]) as image
    /// `meta.digest`. Returns `false` when that image already existed (the
    /// caller then deletes `tmp`).
    pub fn publish(
        &self,
        _lock: &StoreLock,
        tmp: &Path,
        meta: &ImageMeta,
    ) -> Result<bool, StoreError> {
        let dst = self.root.join(&meta.digest);
        if dst.exists() {
            if self.get(&meta.digest).is_some() {
                return Ok(false);
            }
            // A directory without a readable image.json (a crash of the
            // machine right after a rename): set it aside for cleanup.
            let aside = self.tmp_root().join(format!("broken-{}", meta.digest));
            fs::rename(&dst, &aside).map_err(io_err("rename", &dst))?;
        }
        // No fsync: on ext4 it would flush the whole unpacked tree; the
        // rename is what makes a killed import harmless.
        let json = tmp.join("image.json");
        let mut f = fs::File::create(&json).map_err(io_err("write", &json))?;
        f.write_all(
            serde_json::to_string_pretty(meta)
                .expect("serialisable")
                .as_bytes(),
        )
        .map_err(io_err("write", &json))?;
        fs::rename(tmp, &dst).map_err(io_err("rename", tmp))?;
        Ok(true)
    }

    /// Point tag `name` at `digest` (replacing an older target).
    pub fn tag(&self, _lock: &StoreLock, name: &str, digest: &str) -> Result<(), StoreError> {
        if !valid_tag(name) {
            return Err(StoreError::BadTag(name.to_string()));
        }
        let dir = self.tags_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("../{digest}"), &tmp).map_err(io_err("link", &tmp))?;
        fs::rename(&tmp, dir.join(name)).map_err(io_err("rename", &tmp))?;
        Ok(())
    }

    /// All tags, as `(tag, digest)`.
    fn tags(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(self.tags_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if let Ok(t) = fs::read_link(e.path())
                    && let Some(d) = t.file_name()
                {
                    v.push((name, d.to_string_lossy().into_owned()));
                }
            }
        }
        v.sort();
        v
    }

    /// Read one complete image.
    pub fn get(&self, digest: &str) -> Option<Image> {
        if !is_digest(digest) {
            return None;
        }
        let dir = self.root.join(digest);
        let text = fs::read_to_string(dir.join("image.json")).ok()?;
        let meta: ImageMeta = serde_json::from_str(&text).ok()?;
        let tags = self
            .tags()
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(t, _)| t)
            .collect();
        Some(Image { dir, meta, tags })
    }

    /// Every complete image, newest first.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let mut v = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(img) = self.get(&name) {
                v.push(img);
            }
        }
        v.sort_by(|a, b| {
            b.meta
                .created
                .cmp(&a.meta.created)
                .then(a.meta.digest.cmp(&b.meta.digest))
        });
        Ok(v)
    }

    /// A tag, a full digest (optionally `sha256:`), or a unique prefix of
    /// at least 4 hex digits.
    pub fn resolve(&self, name: &str) -> Result<Image, StoreError> {
        let tags = self.tags();
        let not_found = || StoreError::NotFound {
            name: name.to_string(),
            closest: closest(name, tags.iter().map(|(t, _)| t.as_str())),
        };
        if let Some((_, d)) = tags.iter().find(|(t, _)| t == name) {
            return self.get(d).ok_or_else(not_found);
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if let Some(img) = self.get(hex) {
            return Ok(img);
        }
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<Image> = self
                .list()?
                .into_iter()
                .filter(|i| i.meta.digest.starts_with(hex))
                .collect();
            return match found.len() {
                1 => Ok(found.remove(0)),
                0 => Err(not_found()),
                _ => Err(StoreError::Ambiguous(name.to_string())),
            };
        }
        Err(not_found())
    }

    /// Take `digest` out of the store (and drop its tags): the directory
    /// moves into `.tmp/`, atomically, and the returned path is for the
    /// caller to delete inside a user namespace.
    pub fn trash(&self, _lock: &StoreLock, digest: &str) -> Result<PathBuf, StoreError> {
        for (t, d) in self.tags() {
            if d == digest {
                let p = self.tags_dir().join(&t);
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let dst = tmp.join(format!("rm-{digest}-{}", std::process::id()));
        let src = self.root.join(digest);
        fs::rename(&src, &dst).map_err(io_err("rename", &src))?;
        Ok(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(d: &str) -> ImageMeta {
        ImageMeta::new(d, "tarball", "/x.tar", RuntimeConfig::default(), 0)
    }

    #[test]
    fn publish_resolve_tag_trash() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path().join("images"));
        assert!(s.list().unwrap().is_empty());
        let lock = s.lock().unwrap();
        let d1 = "a".repeat(64);
        let d2 = format!("ab{}", "c".repeat(62));
        for d in [&d1, &d2] {
            let tmp = s.begin(&lock).unwrap();
            fs::write(tmp.join("rootfs/f"), "x").unwrap();
            assert!(s.publish(&lock, &tmp, &meta(d)).unwrap());
        }
        // Publishing the same content again is a no-op.
        let tmp = s.begin(&lock).unwrap();
        assert!(!s.publish(&lock, &tmp, &meta(&d1)).unwrap());
        assert_eq!(s.leftovers(&lock), std::slice::from_ref(&tmp));
        fs::remove_dir_all(&tmp).unwrap();

        assert_eq!(s.list().unwrap().len(), 2);
        assert!(matches!(s.resolve("a"), Err(StoreError::NotFound { .. })));
        assert!(matches!(s.resolve("aaaa"), Ok(i) if i.meta.digest == d1));
        assert!(matches!(s.resolve("abcc"), Ok(i) if i.meta.digest == d2));
        assert!(s.resolve(&format!("sha256:{d1}")).is_ok());
        s.tag(&lock, "sdk:1.0", &d2).unwrap();
        s.tag(&lock, "sdk:1.0", &d1).unwrap();
        let i = s.resolve("sdk:1.0").unwrap();
        assert_eq!(i.meta.digest, d1);
        let e = s.resolve("sdk:1.1").unwrap_err().to_string();
        assert!(e.contains("did you mean \"sdk:1.0\"?"), "{e}");
        let e = s.resolve("zzzz-other").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert_eq!(i.tags, ["sdk:1.0"]);
        assert!(i.rootfs().join("f").exists());
        assert!(matches!(
            s.tag(&lock, "../x", &d1),
            Err(StoreError::BadTag(_))
        ));
        assert!(matches!(
            s.tag(&lock, "a/b", &d1),
            Err(StoreError::BadTag(_))
        ));

        let gone = s.trash(&lock, &d1).unwrap();
        assert!(gone.join("rootfs/f").exists());
        assert!(s.resolve("sdk:1.0").is_err());
        assert_eq!(s.list().unwrap().len(), 1);
        // A half-made directory is never listed.
        fs::create_dir(s.root().join("b".repeat(64))).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn second_writer_waits_for_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path().join("images"));
        let lock = s.lock().unwrap();
        let s2 = s.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let _l = s2.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(lock);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        h.join().unwrap();
    }
}
