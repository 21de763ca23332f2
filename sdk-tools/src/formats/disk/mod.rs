//! GPT disk images: layouts from `profiles/<board>/disk-layout.toml`
//! ([`Layout`]), writing a sparse image with protective MBR, primary and
//! backup GPT ([`Layout::write_image`]), reading a table back
//! ([`read_table`]), and moving partition contents in and out
//! ([`write_partition`], [`extract`]) without loop devices, sparse-aware.
//!
//! It does not build filesystems (`crate::formats::fs`) or hash trees
//! (`crate::formats::verity`).
//!
//! ```no_run
//! use sdk_tools::formats::disk::{self, Layout};
//! # fn main() -> Result<(), disk::DiskError> {
//! let mut layout = Layout::load("profiles/amd64-usr/disk-layout.toml".as_ref(), Some("vm"))?;
//! layout.derive_uuids("flatcar-amd64-usr-4000.0.0"); // deterministic per image
//! let image = std::path::Path::new("disk.img");
//! layout.write_image(image)?;
//! let usr = layout.by_label("USR-A").unwrap().number;
//! disk::write_partition(image, usr, "usr-a.img".as_ref())?;
//! disk::extract(image, usr, "usr-a.out".as_ref())?;
//! # Ok(()) }
//! ```

pub mod gpt;
mod layout;

use crate::io_err;
use sdk_common::error::BadInput;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use gpt::{Entry, Table};
pub use layout::{DEFAULT_SEED, Layout, Partition, Role, Size, TYPE_ALIASES, type_alias};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A layout file that does not validate: `file:line: message`.
    #[error("{}:{line}: {msg}", file.display())]
    Layout {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    /// Any other bad request (missing partition, file too big, no GPT).
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

impl BadInput for DiskError {
    /// True when the caller's input is at fault (exit code 2); nothing was
    /// written.
    fn is_bad_input(&self) -> bool {
        matches!(self, DiskError::Layout { .. } | DiskError::BadInput(_))
    }
}

/// A temporary file beside `target`, renamed over it by `commit`.
fn temp_beside(target: &Path) -> Result<tempfile::NamedTempFile, DiskError> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".sdk-tools-")
        .tempfile_in(dir)
        .map_err(|e| {
            DiskError::BadInput(format!(
                "cannot create {} in {}: {e}; check the directory exists and is writable",
                target.display(),
                dir.display()
            ))
        })
}

fn commit(temp: tempfile::NamedTempFile, target: &Path) -> Result<(), DiskError> {
    temp.as_file()
        .sync_all()
        .map_err(io_err("sync", temp.path()))?;
    let _ = std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644));
    temp.persist(target)
        .map_err(|e| io_err("rename into place", target)(e.error))?;
    Ok(())
}

impl Layout {
    /// Create `image` as a sparse file of `self.size` bytes holding only
    /// the partition table (written to a temporary file, renamed into
    /// place; an existing `image` is replaced).
    pub fn write_image(&self, image: &Path) -> Result<(), DiskError> {
        let temp = temp_beside(image)?;
        let f = temp.as_file();
        f.set_len(self.size).map_err(io_err("size", temp.path()))?;
        for (off, bytes) in Table::from_layout(self).encode() {
            f.write_all_at(&bytes, off)
                .map_err(io_err("write partition table to", temp.path()))?;
        }
        tracing::info!(image = %image.display(), size = self.size, "wrote partition table");
        commit(temp, image)
    }
}

/// A partition of an image as [`partitions`] finds it: its table entry
/// (fields and A/B accessors through `Deref`) and where it is in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub entry: Entry,
    pub offset: u64,
    pub size: u64,
}

impl std::ops::Deref for Located {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

/// The partitions of `image`, in table order, with their byte spans.
pub fn partitions(image: &Path) -> Result<Vec<Located>, DiskError> {
    let t = read_table(image)?;
    Ok(t.entries
        .iter()
        .map(|e| Located {
            entry: e.clone(),
            offset: e.first_lba * t.sector_size,
            size: (e.last_lba + 1 - e.first_lba) * t.sector_size,
        })
        .collect())
}

/// Set partition `number`'s 64-bit attribute field in both copies of the
/// table (with their CRCs), in place. Only a table this module would
/// write the same way is rewritten (128 entries of 128 bytes, backup at
/// the end): anything else is refused before a byte changes.
pub fn set_attributes(image: &Path, number: u32, attributes: u64) -> Result<(), DiskError> {
    let mut table = read_table(image)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err("open for writing", image))?;
    // The table as it is must be what encoding it gives back.
    for (off, bytes) in table.encode() {
        let mut now = vec![0u8; bytes.len()];
        f.read_exact_at(&mut now, off)
            .map_err(io_err("read", image))?;
        if now != bytes && off != 0 {
            return Err(DiskError::BadInput(format!(
                "{}: its GPT is laid out differently from the ones build_image writes; set the attributes with `sfdisk --part-attrs` instead",
                image.display()
            )));
        }
    }
    let e = table
        .entries
        .iter_mut()
        .find(|e| e.number == number)
        .ok_or_else(|| {
            DiskError::BadInput(format!("{} has no partition {number}", image.display()))
        })?;
    e.attributes = attributes;
    // Backup first, primary last: a reader trusts the primary, which
    // changes in one sector write once its array is in place.
    let mut chunks = table.encode();
    chunks.retain(|(off, _)| *off != 0);
    for (off, bytes) in chunks.iter().rev() {
        f.write_all_at(bytes, *off)
            .map_err(io_err("write the GPT of", image))?;
    }
    f.sync_data().map_err(io_err("sync", image))?;
    Ok(())
}

/// Read and check the GPT of `image`.
pub fn read_table(image: &Path) -> Result<Table, DiskError> {
    let f = File::open(image).map_err(|e| {
        DiskError::BadInput(format!(
            "cannot open image {}: {e}; check the path",
            image.display()
        ))
    })?;
    Table::decode(|off, buf| f.read_exact_at(buf, off))
        .map_err(|e| DiskError::BadInput(format!("{}: {e}", image.display())))
}

fn find(table: &Table, image: &Path, number: u32) -> Result<Entry, DiskError> {
    table
        .entries
        .iter()
        .find(|e| e.number == number)
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = table
                .entries
                .iter()
                .map(|e| format!("{} ({})", e.number, e.label))
                .collect();
            DiskError::BadInput(format!(
                "{} has no partition {number}; it has {}",
                image.display(),
                have.join(", ")
            ))
        })
}

/// Copy `file` to the start of partition `number` of `image`, in place.
/// Runs of zeros and holes in `file` become holes in `image` (or zeros
/// where the file system cannot punch holes), so a sparse filesystem
/// image stays sparse. The bytes of the partition after `file`'s end are
/// left as they are. Checked before anything is written: the partition
/// exists and `file` fits.
pub fn write_partition(image: &Path, number: u32, file: &Path) -> Result<(), DiskError> {
    let dst = write_partitions(image, &[(number, file)])?;
    Ok(dst.sync_data().map_err(io_err("sync", image))?)
}

/// [`write_partition`] for several partitions, without waiting for the
/// data to reach the disk: returns the image, open, for the caller to
/// sync when it suits it (`build_image` does so beside other work).
pub fn write_partitions(image: &Path, parts: &[(u32, &Path)]) -> Result<File, DiskError> {
    let table = read_table(image)?;
    let mut sources = Vec::with_capacity(parts.len());
    for &(number, file) in parts {
        let e = find(&table, image, number)?;
        let src = File::open(file).map_err(|err| {
            DiskError::BadInput(format!(
                "cannot open {}: {err}; check the path",
                file.display()
            ))
        })?;
        let len = src.metadata().map_err(io_err("stat", file))?.len();
        let room = (e.last_lba + 1 - e.first_lba) * table.sector_size;
        if len > room {
            return Err(DiskError::BadInput(format!(
                "{} is {len} bytes but partition {number} ({}) holds {room}; grow the partition in the layout or shrink the file",
                file.display(),
                e.label
            )));
        }
        sources.push((src, file, e.first_lba * table.sector_size, len));
    }
    let dst = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_err("open for writing", image))?;
    for (src, file, at, len) in &sources {
        sparse_copy((src, file, 0), (&dst, image, *at), *len)?;
    }
    Ok(dst)
}

/// Copy partition `number` of `image` into a new file `out` (temporary
/// file renamed into place), keeping holes.
pub fn extract(image: &Path, number: u32, out: &Path) -> Result<(), DiskError> {
    let table = read_table(image)?;
    let e = find(&table, image, number)?;
    let src = File::open(image).map_err(io_err("open", image))?;
    let len = (e.last_lba + 1 - e.first_lba) * table.sector_size;
    let temp = temp_beside(out)?;
    temp.as_file()
        .set_len(len)
        .map_err(io_err("size", temp.path()))?;
    sparse_copy(
        (&src, image, e.first_lba * table.sector_size),
        (temp.as_file(), temp.path(), 0),
        len,
    )?;
    commit(temp, out)
}

/// Copy `len` bytes from `src` at its offset to `dst` at its offset,
/// skipping the holes of `src` (SEEK_DATA/SEEK_HOLE) and turning zero runs
/// into holes in `dst`.
fn sparse_copy(
    src: (&File, &Path, u64),
    dst: (&File, &Path, u64),
    len: u64,
) -> Result<(), DiskError> {
    use nix::fcntl::{FallocateFlags, fallocate};
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsFd;

    const PIECE: usize = 1 << 20;
    let (sf, sp, s0) = src;
    let (df, dp, d0) = dst;
    let zero_out = |at: u64, n: u64| -> Result<(), DiskError> {
        if n == 0 {
            return Ok(());
        }
        let punched = fallocate(
            df.as_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (d0 + at) as i64,
            n as i64,
        );
        if punched.is_err() {
            let zeros = vec![0u8; PIECE];
            let mut done = 0;
            while done < n {
                let k = (n - done).min(PIECE as u64);
                df.write_all_at(&zeros[..k as usize], d0 + at + done)
                    .map_err(io_err("write", dp))?;
                done += k;
            }
        }
        Ok(())
    };
    let mut buf = vec![0u8; PIECE];
    let mut in_kernel = true;
    let mut pos = 0u64;
    while pos < len {
        // The next data extent of the source, relative to its offset.
        let data = match lseek(sf.as_fd(), (s0 + pos) as i64, Whence::SeekData) {
            Ok(o) => (o as u64 - s0).min(len),
            Err(nix::errno::Errno::ENXIO) => len,
            Err(_) => pos, // no SEEK_DATA support: treat all as data
        };
        zero_out(pos, data - pos)?;
        pos = data;
        if pos >= len {
            break;
        }
        let hole = match lseek(sf.as_fd(), (s0 + pos) as i64, Whence::SeekHole) {
            Ok(o) => (o as u64 - s0).min(len),
            Err(_) => len,
        };
        while pos < hole {
            // In the kernel where it can (no trip through user memory);
            // by hand, turning zero runs into holes, where it cannot.
            if in_kernel {
                let mut off_in = (s0 + pos) as i64;
                let mut off_out = (d0 + pos) as i64;
                let want = (hole - pos).min(1 << 30) as usize;
                match nix::fcntl::copy_file_range(
                    sf,
                    Some(&mut off_in),
                    df,
                    Some(&mut off_out),
                    want,
                ) {
                    Ok(0) => {
                        return Err(
                            io_err("read", sp)(std::io::ErrorKind::UnexpectedEof.into()).into()
                        );
                    }
                    Ok(k) => {
                        pos += k as u64;
                        continue;
                    }
                    // Not between these files: by hand from here on.
                    Err(_) => in_kernel = false,
                }
            }
            let n = (hole - pos).min(PIECE as u64) as usize;
            sf.read_exact_at(&mut buf[..n], s0 + pos)
                .map_err(io_err("read", sp))?;
            if buf[..n].iter().all(|&b| b == 0) {
                zero_out(pos, n as u64)?;
            } else {
                df.write_all_at(&buf[..n], d0 + pos)
                    .map_err(io_err("write", dp))?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: &str = r#"
[disk]
alignment = "1MiB"
[[partition]]
number = 1
label = "A"
type = "linux"
size = "1MiB"
[[partition]]
number = 2
label = "B"
type = "linux"
size = "3MiB"
"#;

    #[test]
    fn write_read_back_and_extract() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::parse(LAYOUT, Path::new("t.toml"), None).unwrap();
        let img = dir.path().join("disk.img");
        l.write_image(&img).unwrap();
        let t = read_table(&img).unwrap();
        assert_eq!(t, Table::from_layout(&l));
        // A file with a hole in the middle.
        let f = dir.path().join("p.img");
        let file = File::create(&f).unwrap();
        file.set_len(2 << 20).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"tail", (2 << 20) - 4).unwrap();
        write_partition(&img, 2, &f).unwrap();
        let out = dir.path().join("out.img");
        extract(&img, 2, &out).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 3 << 20);
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[(2 << 20) - 4..2 << 20], b"tail");
        assert!(got[4..(2 << 20) - 4].iter().all(|&b| b == 0));
        // Too big for partition 1: refused, image untouched.
        let before = std::fs::read(&img).unwrap();
        let e = write_partition(&img, 1, &f).unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("holds 1048576"),
            "{e}"
        );
        let e = write_partition(&img, 7, &f).unwrap_err();
        assert!(e.to_string().contains("has no partition 7"), "{e}");
        assert_eq!(before, std::fs::read(&img).unwrap());
    }

    /// Attribute changes land in both tables with valid CRCs: our reader
    /// and sfdisk (an outside reader) see the new bits, nothing else moved.
    #[test]
    fn set_attributes_rewrites_both_tables() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::parse(LAYOUT, Path::new("t.toml"), None).unwrap();
        let img = dir.path().join("disk.img");
        l.write_image(&img).unwrap();
        let before = read_table(&img).unwrap();
        let b = partitions(&img).unwrap().remove(1);
        assert_eq!((b.offset, b.size), (b.first_lba * 512, 3 << 20));
        set_attributes(&img, 2, b.with_ab(2, 1, false)).unwrap();
        let after = read_table(&img).unwrap();
        assert_eq!(after.entries[0], before.entries[0]);
        assert_eq!(
            (
                after.entries[1].priority(),
                after.entries[1].tries(),
                after.entries[1].successful()
            ),
            (2, 1, false)
        );
        let json = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&img)
            .output()
            .expect("sfdisk (fdisk package)");
        assert!(
            json.status.success(),
            "{}",
            String::from_utf8_lossy(&json.stderr)
        );
        let text = String::from_utf8_lossy(&json.stdout);
        assert!(text.contains("\"attrs\": \"GUID:49,52\""), "{text}");
        let v = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&v.stdout).contains("No problems found"),
            "{}",
            String::from_utf8_lossy(&v.stdout)
        );
        assert!(set_attributes(&img, 9, 0).is_err());
    }
}
