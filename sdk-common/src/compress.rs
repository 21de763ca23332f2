//! Compressed streams, told apart by their first bytes rather than by a
//! file name or a media type (both lie in the wild: docker-save layers are
//! plain `layer.tar`s that may be gzipped, and `.tgz` SDKs are gzip). One
//! place for the magic numbers and the decoders both binaries read tar
//! streams through. It does not know what is inside the stream.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;

/// A stream's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a stream that starts with `head` (2 bytes are
/// enough for gzip, 4 for zstd).
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Whether `head` (at least 262 bytes of it) starts a tar archive: POSIX
/// ustar and GNU tar both have `ustar` at offset 257.
pub fn is_tar(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// What the file at `path` is as a tarball: `Some(compression)` for a
/// gzip or zstd stream (assumed to hold a tar) or a plain tar, `None` for
/// anything else.
pub fn sniff_tarball(path: &Path) -> io::Result<Option<Compression>> {
    let mut head = [0u8; 512];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    Ok(match sniff(head) {
        Compression::None if is_tar(head) => Some(Compression::None),
        Compression::None => None,
        c => Some(c),
    })
}

/// A reader of the decompressed bytes of `r`, whose compression is
/// sniffed from its buffer (nothing is consumed for that). Gzip members
/// are read one after another, as `gzip -d` does.
pub fn decoder<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match sniff(r.fill_buf()?) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(r)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn every_kind_decodes_to_the_same_tar() {
        let plain = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        for (bytes, kind) in [
            (&plain, Compression::None),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
        ] {
            assert_eq!(sniff(bytes), kind);
            let mut out = Vec::new();
            decoder(&bytes[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("t");
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(sniff_tarball(&p).unwrap(), Some(kind));
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(sniff_tarball(&p).unwrap(), None);
    }
}
