//! A deterministic cpio "newc" writer for initramfs archives: the format the
//! kernel unpacks at boot (kernel Documentation/driver-api/early-userspace/
//! buffer-format.rst). Entries are written in the order given with inode
//! numbers counted from 1, owner root, and one fixed mtime, so the same
//! inputs give the same bytes. Device nodes are just header fields here,
//! which is why no privilege is needed to put `/dev/console` in an initramfs.

use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// What one archive member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// One archive member: a path relative to the archive root (no leading
/// `/`), its permission bits, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub perm: u32,
    pub kind: Kind,
}

/// Write `entries` as a newc archive with the trailer, every member stamped
/// with `mtime`.
pub fn write_newc<W: Write>(out: &mut W, entries: &[Entry], mtime: u32) -> io::Result<()> {
    let mut written = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let (fmt, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
            Kind::Dir => (S_IFDIR, &[], (0, 0)),
            Kind::File(d) => (S_IFREG, d, (0, 0)),
            Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
        };
        let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        written += header(
            out,
            &e.path,
            ino,
            fmt | (e.perm & 0o7777),
            nlink,
            mtime,
            data,
            rdev,
        )?;
        written += data.len();
        written += pad(out, written)?;
    }
    written += header(out, "TRAILER!!!", 0, 0, 1, 0, &[], (0, 0))?;
    pad(out, written)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn header<W: Write>(
    out: &mut W,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> io::Result<usize> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::other(format!(
            "{name}: larger than 4 GiB, cpio newc cannot hold it"
        ))
    })?;
    let namesize = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let mut n = h.len() + namesize;
    n += pad(out, n)?;
    out.write_all(data)?;
    Ok(n)
}

/// Pad to the next multiple of 4 given `written` bytes so far.
fn pad<W: Write>(out: &mut W, written: usize) -> io::Result<usize> {
    let n = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..n])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                path: "dev".into(),
                perm: 0o755,
                kind: Kind::Dir,
            },
            Entry {
                path: "dev/console".into(),
                perm: 0o600,
                kind: Kind::CharDev { major: 5, minor: 1 },
            },
            Entry {
                path: "init".into(),
                perm: 0o755,
                kind: Kind::File(b"#!/bin/sh\necho hi\n".to_vec()),
            },
            Entry {
                path: "bin".into(),
                perm: 0o777,
                kind: Kind::Symlink("usr/bin".into()),
            },
        ]
    }

    #[test]
    fn same_entries_same_bytes_and_aligned() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_newc(&mut a, &sample(), 0).unwrap();
        write_newc(&mut b, &sample(), 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
    }

    /// The kernel is the real reader (the boot tests); here the header
    /// fields are decoded by hand.
    #[test]
    fn header_fields_decode() {
        let mut a = Vec::new();
        write_newc(&mut a, &sample(), 7).unwrap();
        // First header: "dev", a directory.
        let h = std::str::from_utf8(&a[..110]).unwrap();
        let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
        assert_eq!(field(1), S_IFDIR | 0o755);
        assert_eq!(field(5), 7);
        assert_eq!(field(11), 4); // "dev\0"
        // The trailer closes the archive.
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("dev/console"));
    }
}
