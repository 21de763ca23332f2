//! Small file helpers both binaries use, one copy each: remove a tree
//! without following links, write a file atomically, hash a file (holes
//! of sparse files without reading them), take a lock file, quote a word
//! for a shell script. No policy: callers add the context of their
//! operation to the `io::Error`s returned here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// How much a hash reads at a time.
const HASH_BUF: usize = 256 * 1024;

/// Remove a file, link or whole directory tree, without following links;
/// a missing path is not an error. Directories the owner cannot write
/// (unpacked images keep their modes) are made writable first.
pub fn remove_any(path: &Path) -> io::Result<()> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if m.is_dir() {
        // remove_dir_all does not follow symlinks inside the tree.
        make_writable(path);
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Directories without write permission cannot be emptied by a non-root
/// owner; give them u+rwx first (best effort).
fn make_writable(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(m) = fs::symlink_metadata(dir)
        && m.is_dir()
    {
        if m.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.mode() | 0o700));
        }
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// Write `bytes` to `path` atomically (a temporary file in the same
/// directory, mode 0644, then rename): a killed run leaves the old file or
/// the new one, never half of one. Creates the parent directory. Not
/// fsynced: a kill does not lose the page cache, and a sync per file made
/// a 100-package build several times slower; callers that must survive a
/// power cut sync themselves.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a path without a parent"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// sha256 and size of a file. Holes of a sparse file (most of a disk
/// image) are hashed as the zeros they read as, without reading them.
pub fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let f = File::open(path)?;
    let len = byte_size(&f)?;
    let mut hasher = Sha256::new();
    hash_range(&f, 0, len, &mut hasher)?;
    Ok((len, hasher.finalize().into()))
}

/// Bytes in `f`: a regular file's length, a block device's size (a
/// payload handed over as a disk).
pub fn byte_size(f: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let md = f.metadata()?;
    if md.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = f;
        return f.seek(io::SeekFrom::End(0));
    }
    Ok(md.len())
}

/// Feed `len` bytes of `f` from `start` to `hasher`, holes as zeros
/// without reading them; bytes past the file's end count as zeros too (a
/// partition's room after its filesystem).
pub fn hash_range(f: &File, start: u64, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    use nix::unistd::{Whence, lseek};
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; HASH_BUF];
    let feed_zeros = |hasher: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(HASH_BUF as u64) as usize;
            hasher.update(&zeros[..k]);
            n -= k as u64;
        }
    };
    let end = start + len;
    let file_end = byte_size(f)?.min(end);
    let mut buf = vec![0u8; HASH_BUF];
    let mut pos = start;
    while pos < file_end {
        let at = i64::try_from(pos).map_err(io::Error::other)?;
        // Where the next data starts (ENXIO: only a hole remains); a
        // filesystem without SEEK_DATA makes it all data.
        let data = match lseek(f, at, Whence::SeekData) {
            Ok(d) => (d as u64).min(file_end),
            Err(nix::errno::Errno::ENXIO) => file_end,
            Err(_) => pos,
        };
        feed_zeros(hasher, data - pos);
        pos = data;
        if pos >= file_end {
            break;
        }
        let at = i64::try_from(pos).map_err(io::Error::other)?;
        let hole = match lseek(f, at, Whence::SeekHole) {
            Ok(h) => (h as u64).min(file_end),
            Err(_) => file_end,
        };
        while pos < hole {
            let want = (hole - pos).min(HASH_BUF as u64) as usize;
            let n = f.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while hashing",
                ));
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
    }
    feed_zeros(hasher, end - pos);
    Ok(())
}

/// Block size of [`blocks_sha256`]: 1 MiB.
pub const DIGEST_BLOCK: u64 = 1 << 20;

/// The digest of a sparse file that never touches its holes: sha256 over
/// the sha256 (32 raw bytes each) of every 1 MiB block in order, the last
/// block short. It depends on the bytes only, not on where the holes are:
/// a block with no data in it is known to be zeros and gets the digest of
/// 1 MiB of zeros without being read or hashed (an 8.8 GB disk image
/// with 200 MB of data costs 200 MB of hashing). Checkable with
/// coreutils alone:
///
/// ```text
/// split -b 1048576 --filter='sha256sum | cut -c1-64 | xxd -r -p' FILE | sha256sum
/// ```
pub fn blocks_sha256(path: &Path) -> io::Result<(u64, [u8; 32])> {
    use nix::unistd::{Whence, lseek};
    use std::os::unix::fs::FileExt;
    static ZERO: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let zero = ZERO.get_or_init(|| Sha256::digest(vec![0u8; DIGEST_BLOCK as usize]).into());
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut outer = Sha256::new();
    let mut buf = vec![0u8; DIGEST_BLOCK as usize];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(DIGEST_BLOCK);
        let at = i64::try_from(pos).map_err(io::Error::other)?;
        // No data before the block's end: zeros (ENXIO: only a hole is
        // left). A filesystem without SEEK_DATA makes it all data.
        let next_data = match lseek(&f, at, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => len,
            Err(_) => pos,
        };
        if next_data >= pos + n && n == DIGEST_BLOCK {
            outer.update(zero);
        } else {
            f.read_exact_at(&mut buf[..n as usize], pos)?;
            outer.update(Sha256::digest(&buf[..n as usize]));
        }
        pos += n;
    }
    Ok((len, outer.finalize().into()))
}

/// The sha256 of a file's contents as lower-case hex.
pub fn sha256_hex(path: &Path) -> io::Result<String> {
    Ok(hex::encode(hash_file(path)?.1))
}

/// Open (creating) and exclusively lock `path`; when another process has
/// it, print that `holder` (say, "another build on amd64-usr") has it and
/// wait. The lock goes with the returned file.
pub fn lock_file(path: &Path, holder: &str) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!("waiting for {holder} to finish ({})", path.display());
            file.lock()?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    Ok(file)
}

/// A temporary file beside an output (`<prefix><random>`), locked
/// (`flock`) from before its name exists until it is dropped or persisted,
/// so [`reap_stale_temps`] in a later run can tell one whose writer was
/// killed from one being written. Made unnamed (`O_TMPFILE`) and linked
/// under its name once locked; removed on drop unless persisted.
#[derive(Debug)]
pub struct LockedTemp {
    path: std::path::PathBuf,
    file: File,
    keep: bool,
}

impl LockedTemp {
    /// A new locked temporary file in `dir`, mode 0600.
    pub fn new_in(dir: &Path, prefix: &str) -> io::Result<LockedTemp> {
        use std::os::unix::fs::OpenOptionsExt;
        let unnamed = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir);
        match unnamed {
            Ok(file) => {
                file.lock()?;
                for _ in 0..16 {
                    let path = dir.join(format!("{prefix}{}", random_suffix()));
                    match nix::unistd::linkat(
                        nix::fcntl::AT_FDCWD,
                        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))
                            .as_str(),
                        nix::fcntl::AT_FDCWD,
                        &path,
                        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                    ) {
                        Ok(()) => {
                            return Ok(LockedTemp {
                                path,
                                file,
                                keep: false,
                            });
                        }
                        Err(nix::errno::Errno::EEXIST) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "no free temporary name",
                ))
            }
            // A filesystem without O_TMPFILE: named first, locked at once.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let t = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
                let (file, path) = t.keep().map_err(|e| e.error)?;
                file.lock()?;
                Ok(LockedTemp {
                    path,
                    file,
                    keep: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Rename it to `to` (replacing what is there); the lock goes with the
    /// returned file.
    pub fn persist(mut self, to: &Path) -> io::Result<File> {
        fs::rename(&self.path, to)?;
        self.keep = true;
        self.file.try_clone()
    }
}

impl Drop for LockedTemp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A temporary directory beside an output (`<prefix><random>`) holding a
/// locked `.lock` file (linked in already locked, see [`LockedTemp`]);
/// removed with its contents on drop.
#[derive(Debug)]
pub struct LockedTempDir {
    dir: Option<tempfile::TempDir>,
    _lock: Option<LockedTemp>,
}

/// The lock file inside a [`LockedTempDir`].
const DIR_LOCK: &str = ".lock";

impl LockedTempDir {
    pub fn new_in(dir: &Path, prefix: &str) -> io::Result<LockedTempDir> {
        let d = tempfile::Builder::new().prefix(prefix).tempdir_in(dir)?;
        let mut lock = LockedTemp::new_in(d.path(), ".lock-")?;
        fs::rename(&lock.path, d.path().join(DIR_LOCK))?;
        lock.path = d.path().join(DIR_LOCK);
        Ok(LockedTempDir {
            dir: Some(d),
            _lock: Some(lock),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("until dropped").path()
    }
}

impl Drop for LockedTempDir {
    fn drop(&mut self) {
        // The lock last: a reaper never sees the directory unlocked while
        // it is still being removed by us.
        drop(self.dir.take());
        drop(self._lock.take());
    }
}

/// Remove what killed runs left in `dir`: entries named `<prefix>...`
/// made by [`LockedTemp`] or [`LockedTempDir`] whose lock nobody holds (its
/// writer is gone). A directory with no lock file yet (its writer was
/// killed between making it and locking it) goes once a minute old.
/// Returns how many were removed; errors only cost a leftover.
pub fn reap_stale_temps(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = e.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let lock_path = if md.is_dir() {
            path.join(DIR_LOCK)
        } else if md.is_file() {
            path.clone()
        } else {
            continue;
        };
        let stale = match fs::File::open(&lock_path) {
            Ok(f) => f.try_lock().is_ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound && md.is_dir() => md
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60)),
            Err(_) => false,
        };
        if stale && remove_any(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed what a killed run left");
            removed += 1;
        }
    }
    removed
}

fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::thread::current().name().unwrap_or("").as_bytes());
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    hex::encode(&h.finalize()[..6])
}

/// What a path is, in words, for a message refusing it.
pub fn kind_of(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// `path`'s metadata when it is a regular file (symlinks followed); an
/// `InvalidInput` error saying what it is otherwise. Input files are
/// checked with this before they are read: a FIFO or `/dev/zero` would
/// block or never end.
pub fn regular_file(path: &Path) -> io::Result<fs::Metadata> {
    let m = fs::metadata(path)?;
    if m.is_file() {
        Ok(m)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_of(&m)),
        ))
    }
}

/// Directories made for an output, taken back if the work fails: made
/// with [`OutputDirs::create`], each one this call made (from the deepest
/// up) is removed on drop when it is still empty, unless [`OutputDirs::keep`]
/// was called. Bad input then leaves no empty `__build__/...` behind.
#[derive(Debug)]
pub struct OutputDirs {
    made: Vec<std::path::PathBuf>,
}

impl OutputDirs {
    /// `mkdir -p dir`, remembering which levels did not exist.
    pub fn create(dir: &Path) -> io::Result<OutputDirs> {
        let mut made = Vec::new();
        let mut p = Some(dir);
        while let Some(d) = p {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            made.push(d.to_path_buf());
            p = d.parent();
        }
        std::fs::create_dir_all(dir)?;
        Ok(OutputDirs { made })
    }

    /// The work succeeded: leave the directories.
    pub fn keep(mut self) {
        self.made.clear();
    }
}

impl Drop for OutputDirs {
    fn drop(&mut self) {
        // Deepest first; a directory with anything in it stays.
        for d in &self.made {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
}

/// `s` as one word of a POSIX shell script: always single-quoted (so a
/// generated script's text does not depend on what the word contains).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_digest_ignores_where_the_holes_are_and_matches_coreutils() {
        let d = tempfile::tempdir().unwrap();
        let sparse = d.path().join("sparse");
        let dense = d.path().join("dense");
        let f = File::create(&sparse).unwrap();
        let size = 5 * DIGEST_BLOCK + 1234;
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data in block two", 2 * DIGEST_BLOCK + 77)
            .unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        drop(f);
        let mut bytes = vec![0u8; size as usize];
        bytes[(2 * DIGEST_BLOCK + 77) as usize..][..17].copy_from_slice(b"data in block two");
        bytes[(size - 4) as usize..].copy_from_slice(b"tail");
        fs::write(&dense, &bytes).unwrap();
        let (n, a) = blocks_sha256(&sparse).unwrap();
        let (_, b) = blocks_sha256(&dense).unwrap();
        assert_eq!((n, a), (size, b));
        let shell = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "split -b 1048576 --filter='sha256sum | cut -c1-64 | xxd -r -p' \"$0\" | sha256sum",
            )
            .arg(&dense)
            .output()
            .unwrap();
        assert!(
            shell.status.success(),
            "{shell:?} (xxd: `make test` installs it)"
        );
        let text = String::from_utf8_lossy(&shell.stdout);
        assert_eq!(
            &text[..64],
            hex::encode(a),
            "the documented coreutils check agrees"
        );
    }

    #[test]
    fn output_dirs_made_for_failed_work_are_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("a/b/c");
        drop(OutputDirs::create(&out).unwrap());
        assert!(!d.path().join("a").exists());
        let dirs = OutputDirs::create(&out).unwrap();
        std::fs::write(d.path().join("a/keep"), "").unwrap();
        drop(dirs);
        assert!(!d.path().join("a/b").exists() && d.path().join("a/keep").exists());
        OutputDirs::create(&out).unwrap().keep();
        assert!(out.is_dir());
    }

    #[test]
    fn sparse_files_hash_like_their_bytes() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let mut f = File::create(&p).unwrap();
        f.set_len(5 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
        f.seek(SeekFrom::Start((3 << 20) + 17)).unwrap();
        f.write_all(&[7u8; 70_000]).unwrap();
        drop(f);
        let bytes = fs::read(&p).unwrap();
        let want: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(hash_file(&p).unwrap(), (5 << 20, want));
        let q = dir.path().join("dense");
        fs::write(&q, b"abc").unwrap();
        assert_eq!(
            hash_file(&q).unwrap().1,
            <[u8; 32]>::from(Sha256::digest(b"abc"))
        );
    }

    #[test]
    fn holes_hash_as_zeros_and_ranges_pad_with_zeros() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(5 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data", 3 << 20).unwrap();
        let mut all = vec![0u8; 5 << 20];
        all[3 << 20..(3 << 20) + 4].copy_from_slice(b"data");
        let want: [u8; 32] = Sha256::digest(&all).into();
        assert_eq!(hash_file(&p).unwrap(), (5 << 20, want));
        assert_eq!(sha256_hex(&p).unwrap(), hex::encode(want));
        let mut h = Sha256::new();
        hash_range(&f, 4 << 20, 2 << 20, &mut h).unwrap();
        let want: [u8; 32] = Sha256::digest(vec![0u8; 2 << 20]).into();
        assert_eq!(<[u8; 32]>::from(h.finalize()), want);
    }

    #[test]
    fn temps_of_killed_writers_are_reaped_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let live = LockedTemp::new_in(d.path(), ".t-").unwrap();
        let live_dir = LockedTempDir::new_in(d.path(), ".t-").unwrap();
        assert!(live.path().is_file() && live_dir.path().join(".lock").is_file());
        assert_eq!(
            reap_stale_temps(d.path(), ".t-"),
            0,
            "a live writer's temps stay"
        );
        // A writer that died: its name stays, its lock is gone.
        let mut dead = LockedTemp::new_in(d.path(), ".t-").unwrap();
        dead.keep = true;
        let dead_path = dead.path().to_path_buf();
        drop(dead);
        let dead_dir = tempfile::Builder::new()
            .prefix(".t-")
            .tempdir_in(d.path())
            .unwrap()
            .keep();
        fs::write(dead_dir.join(DIR_LOCK), b"").unwrap();
        fs::write(dead_dir.join("image"), b"half an image").unwrap();
        // Someone else's file with another name is never touched.
        fs::write(d.path().join("other"), b"x").unwrap();
        assert_eq!(reap_stale_temps(d.path(), ".t-"), 2);
        assert!(!dead_path.exists() && !dead_dir.exists());
        assert!(live.path().exists() && live_dir.path().exists());
        assert!(d.path().join("other").exists());
        // Persisted: the new name, no temp left; dropped: gone.
        let out = d.path().join("out");
        let f = live.persist(&out).unwrap();
        drop(f);
        let p = live_dir.path().to_path_buf();
        drop(live_dir);
        assert!(out.is_file() && !p.exists());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn remove_any_takes_read_only_trees_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/", t.join("a/up")).unwrap();
        fs::set_permissions(t.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_any(&t).unwrap();
        assert!(!t.exists());
        remove_any(&t).unwrap();
    }

    #[test]
    fn write_atomic_replaces_and_quote_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
        let word = "it's a $word";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(word)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
    }
}
