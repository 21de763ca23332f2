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
