//! The hashing engine shared by `format` and `verify`: digest the child
//! blocks of one level (data blocks, or the hash blocks of the level below)
//! in parallel, one bounded chunk per task, producing the zero-padded hash
//! blocks of the level above.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};

use super::{Algorithm, Geometry, VerityError};

/// Child bytes hashed per task: each task maps (or reads) its own chunk,
/// hashes it and hands its hash blocks to the sink, so the cores never
/// wait for each other within a level, and memory stays at a few chunks
/// whatever the data size.
const CHUNK_BYTES: u64 = 8 << 20;

/// `H(salt || block)` of one block into `out` (digest length).
pub(super) fn digest(alg: Algorithm, salt: &[u8], block: &[u8], out: &mut [u8]) {
    match alg {
        Algorithm::Sha256 => {
            out.copy_from_slice(&Sha256::new_with_prefix(salt).chain_update(block).finalize())
        }
        Algorithm::Sha512 => {
            out.copy_from_slice(&Sha512::new_with_prefix(salt).chain_update(block).finalize())
        }
    }
}

fn digests<D: Digest + Clone>(
    salt: &[u8],
    input: &[u8],
    block_size: usize,
    out: &mut [u8],
    slot: usize,
) {
    // The salt is absorbed once; each block starts from a copy of that state.
    let base = D::new_with_prefix(salt);
    for (block, out) in input.chunks(block_size).zip(out.chunks_mut(slot)) {
        let mut h = base.clone();
        h.update(block);
        out[..<D as Digest>::output_size()].copy_from_slice(&h.finalize());
    }
}

/// Digest every `block_size` block of `input` into consecutive `slot`-byte
/// slots of `out`.
fn digest_blocks(geo: &Geometry, input: &[u8], block_size: usize, out: &mut [u8]) {
    let slot = geo.slot();
    debug_assert_eq!(input.len() / block_size * slot, out.len());
    match geo.algorithm {
        Algorithm::Sha256 => digests::<Sha256>(&geo.salt, input, block_size, out, slot),
        Algorithm::Sha512 => digests::<Sha512>(&geo.salt, input, block_size, out, slot),
    }
}

/// Where the children of a level come from.
#[derive(Clone, Copy)]
pub(super) enum Children<'a> {
    /// The data blocks, mapped from DATA chunk by chunk.
    Data(&'a File, &'a Path),
    /// The hash blocks of the level below, read from HASH.
    Hash(&'a File, &'a Path),
}

/// One chunk's worth of a level: the parent blocks `first_parent..` as
/// computed from their children.
pub(super) struct Chunk<'a> {
    pub first_parent: u64,
    pub first_child: u64,
    pub children: u64,
    /// Zero-padded parent hash blocks, as they belong on disk.
    pub blocks: &'a [u8],
}

/// Compute level `level` (0 = hashes of the data) chunk by chunk on all
/// cores, handing each chunk of finished hash blocks to `sink` (from any
/// thread, in no particular order). When sinks fail, the error of the
/// lowest chunk is returned, so a report names the first bad block.
pub(super) fn build_level(
    geo: &Geometry,
    level: usize,
    children: Children<'_>,
    sink: impl Fn(Chunk<'_>) -> Result<(), VerityError> + Sync,
) -> Result<(), VerityError> {
    let (child_count, child_size, child_offset) = if level == 0 {
        (geo.data_blocks, geo.data_block_size, 0)
    } else {
        let (off, n) = geo.levels[level - 1];
        (n, geo.hash_block_size, off)
    };
    let per = geo.per_block();
    let parents = geo.levels[level].1;
    let parents_per_chunk = (CHUNK_BYTES / (per * child_size)).max(1);
    let hbs = geo.hash_block_size as usize;
    let chunks = parents.div_ceil(parents_per_chunk);
    let task = |chunk: u64| -> Result<(), VerityError> {
        let p0 = chunk * parents_per_chunk;
        let p1 = (p0 + parents_per_chunk).min(parents);
        let c0 = p0 * per;
        let c1 = (p1 * per).min(child_count);
        let start = child_offset + c0 * child_size;
        let len = ((c1 - c0) * child_size) as usize;
        let mut blocks = vec![0u8; (p1 - p0) as usize * hbs];
        let used = (c1 - c0) as usize * geo.slot();
        match children {
            Children::Data(file, path) => {
                let map = map_range(file, path, start, len)?;
                digest_blocks(geo, &map, child_size as usize, &mut blocks[..used]);
            }
            Children::Hash(file, path) => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, start)
                    .map_err(crate::io_err("read hash blocks from", path))?;
                digest_blocks(geo, &buf, child_size as usize, &mut blocks[..used]);
            }
        }
        sink(Chunk {
            first_parent: p0,
            first_child: c0,
            children: c1 - c0,
            blocks: &blocks,
        })
    };
    let first_error = (0..chunks)
        .into_par_iter()
        .filter_map(|chunk| task(chunk).err().map(|e| (chunk, e)))
        .min_by_key(|(chunk, _)| *chunk);
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Map `len` bytes of `file` at `offset` read-only.
pub(super) fn map_range(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<memmap2::Mmap, VerityError> {
    // SAFETY: the mapping is read-only and private to this function's
    // caller, which drops it before returning. Another process truncating
    // DATA meanwhile would fault (SIGBUS) rather than corrupt memory; DATA
    // is the caller's input and nothing in this process writes to it while
    // it is mapped (hash blocks are written beyond the data area).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)
    }
    .map_err(crate::io_err("map", path))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

/// The block the root hash is taken of: the single top-level hash block,
/// or the only data block when the data is one block long.
pub(super) fn top_block(
    geo: &Geometry,
    data: (&File, &Path),
    hash: (&File, &Path),
) -> Result<Vec<u8>, VerityError> {
    match geo.levels.last() {
        Some(&(off, n)) => {
            debug_assert_eq!(n, 1);
            let mut b = vec![0u8; geo.hash_block_size as usize];
            hash.0
                .read_exact_at(&mut b, off)
                .map_err(crate::io_err("read top hash block from", hash.1))?;
            Ok(b)
        }
        None => {
            let mut b = vec![0u8; geo.data_block_size as usize];
            data.0
                .read_exact_at(&mut b, 0)
                .map_err(crate::io_err("read", data.1))?;
            Ok(b)
        }
    }
}

pub(super) fn root_of(geo: &Geometry, top: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; geo.algorithm.digest_size()];
    digest(geo.algorithm, &geo.salt, top, &mut out);
    out
}
