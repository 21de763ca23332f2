//! `format`: build the hash tree of DATA into HASH.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::superblock::{self, Superblock};
use super::tree::{self, Children};
use super::{
    Algorithm, Formatted, Geometry, Options, VerityError, bad, check_block_sizes, random_bytes,
};

/// Whether two paths name the same existing file.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Bytes in a regular file or a block device (whose metadata says 0).
pub(super) fn device_size(file: &File, path: &Path) -> Result<u64, VerityError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let md = file.metadata().map_err(crate::io_err("stat", path))?;
    if md.file_type().is_block_device() {
        let mut f = file;
        return f
            .seek(SeekFrom::End(0))
            .map_err(|e| crate::io_err("find the size of", path)(e).into());
    }
    Ok(md.len())
}

/// Open DATA and work out how many blocks it holds.
pub(super) fn open_data(
    data: &Path,
    block_size: u32,
    data_blocks: Option<u64>,
    appended_at: Option<u64>,
) -> Result<(File, u64), VerityError> {
    let file = File::open(data).map_err(|e| {
        bad(format!(
            "cannot open data file {}: {e}; check the path",
            data.display()
        ))
    })?;
    let size = device_size(&file, data)?;
    let bs = u64::from(block_size);
    let blocks = match (data_blocks, appended_at) {
        (Some(n), _) => n,
        (None, Some(offset)) => {
            if !offset.is_multiple_of(bs) {
                return Err(bad(format!(
                    "hash offset {offset} is not a multiple of the data block size {bs}; pass --data-blocks"
                )));
            }
            offset / bs
        }
        (None, None) => {
            if !size.is_multiple_of(bs) {
                return Err(bad(format!(
                    "{} is {size} bytes, not a multiple of the data block size {bs}; pass --data-blocks or pad the file",
                    data.display()
                )));
            }
            size / bs
        }
    };
    if blocks.saturating_mul(bs) > size {
        return Err(bad(format!(
            "{} is {size} bytes, too short for {blocks} data blocks of {bs} bytes",
            data.display()
        )));
    }
    Ok((file, blocks))
}

/// Hash trees past this offset would need a file larger than Linux
/// allows (2^63 bytes); anything near it is a typo.
const MAX_HASH_OFFSET: u64 = 1 << 60;

/// DATA is a file or block device (not a directory, FIFO or socket), HASH
/// is not a directory, and the offset is one a file can have: bad input
/// named in one line, before anything is opened for writing.
fn check_paths(data: &Path, hash: &Path, hash_offset: u64) -> Result<(), VerityError> {
    use std::os::unix::fs::FileTypeExt;
    // A missing DATA is for open_data to say.
    if let Ok(data_md) = std::fs::metadata(data)
        && !(data_md.is_file() || data_md.file_type().is_block_device())
    {
        return Err(bad(format!(
            "DATA {} is {}; give the data image (a file or a block device)",
            data.display(),
            sdk_common::fsutil::kind_of(&data_md)
        )));
    }
    if let Ok(m) = std::fs::metadata(hash)
        && !(m.is_file() || m.file_type().is_block_device())
    {
        return Err(bad(format!(
            "HASH {} is {}; give a file to write the hash tree to",
            hash.display(),
            sdk_common::fsutil::kind_of(&m)
        )));
    }
    if hash_offset > MAX_HASH_OFFSET {
        return Err(bad(format!(
            "hash offset {hash_offset} is past 2^60 bytes, beyond any real image; give the byte offset after the data"
        )));
    }
    Ok(())
}

/// Build the dm-verity hash tree of DATA into HASH, exactly as
/// `veritysetup format` would with the same options, and return the root
/// hash and the resolved parameters.
///
/// HASH may be DATA itself: the superblock and tree then go at
/// `opts.hash_offset`, which must lie at or after the end of the data
/// area (the data area defaults to `hash_offset` bytes). A separate HASH is
/// written to a temporary file and renamed into place, unless it already
/// exists and `hash_offset` is non-zero, in which case the bytes before the
/// offset are kept and the hash area is written in place.
///
/// ```no_run
/// # use sdk_tools::formats::verity::{format, Options};
/// let f = format("rootfs.img".as_ref(), "rootfs.hash".as_ref(), &Options::default())?;
/// println!("{}", f.root_hash_hex());
/// # Ok::<(), sdk_tools::formats::verity::VerityError>(())
/// ```
pub fn format(data: &Path, hash: &Path, opts: &Options) -> Result<Formatted, VerityError> {
    let algorithm = opts.algorithm.unwrap_or(Algorithm::Sha256);
    let dbs = opts.data_block_size.unwrap_or(4096);
    let hbs = opts.hash_block_size.unwrap_or(4096);
    check_block_sizes(dbs, hbs)?;
    check_paths(data, hash, opts.hash_offset)?;
    let appended = same_file(data, hash);
    if appended && opts.hash_offset == 0 {
        return Err(bad(
            "DATA and HASH are the same file; pass --hash-offset with the byte offset after the data",
        ));
    }
    let (data_file, data_blocks) = open_data(
        data,
        dbs,
        opts.data_blocks,
        appended.then_some(opts.hash_offset),
    )?;
    let salt = match &opts.salt {
        Some(s) => s.clone(),
        None => random_bytes(algorithm.digest_size())?,
    };
    let superblock = !opts.no_superblock;
    let geo = Geometry::new(
        algorithm,
        dbs,
        hbs,
        data_blocks,
        salt,
        opts.hash_offset,
        superblock,
    )?;
    if appended && opts.hash_offset < geo.data_size() {
        return Err(bad(format!(
            "hash offset {} lies inside the data area (which ends at byte {}); use an offset at or after it",
            opts.hash_offset,
            geo.data_size()
        )));
    }
    let uuid = match (superblock, opts.uuid) {
        (false, _) => None,
        (true, Some(u)) => Some(u),
        (true, None) => {
            let b: [u8; 16] = random_bytes(16)?.try_into().unwrap();
            Some(uuid::Builder::from_random_bytes(b).into_uuid())
        }
    };

    // Where to write: in place, or a temporary file renamed at the end.
    let in_place = appended || (opts.hash_offset > 0 && hash.exists());
    let (out, temp) = open_output(hash, in_place)?;
    let out_path = temp.as_ref().map(|t| t.path()).unwrap_or(hash);
    tracing::info!(
        data = %data.display(), hash = %hash.display(), data_blocks,
        hash_offset = opts.hash_offset, "formatting dm-verity hash tree"
    );

    if let Some(u) = uuid {
        write_superblock(&out, out_path, &geo, u, opts.hash_offset)?;
    }
    for level in 0..geo.levels.len() {
        let children = if level == 0 {
            Children::Data(&data_file, data)
        } else {
            Children::Hash(&out, out_path)
        };
        let base = geo.levels[level].0;
        tree::build_level(&geo, level, children, |chunk| {
            out.write_all_at(
                chunk.blocks,
                base + chunk.first_parent * geo.hash_block_size,
            )
            .map_err(|e| crate::io_err("write hash blocks to", out_path)(e).into())
        })?;
    }
    let top = tree::top_block(&geo, (&data_file, data), (&out, out_path))?;
    let root_hash = tree::root_of(&geo, &top);
    // No fsync: the rename already keeps a killed run from leaving a
    // half-written HASH behind, and flushing a large tree to disk would
    // double the run time (veritysetup does not either).
    if let Some(t) = temp {
        let _ = std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o644));
        t.persist(hash)
            .map_err(crate::io_err("rename into place", hash))?;
    }
    Ok(Formatted {
        root_hash,
        salt: geo.salt.clone(),
        uuid,
        algorithm,
        data_block_size: dbs,
        hash_block_size: hbs,
        data_blocks,
        hash_blocks: geo.hash_blocks(),
        hash_offset: opts.hash_offset,
        hash_size: geo.end - opts.hash_offset,
    })
}

/// The temporary tree beside HASH, until renamed over it.
const TEMP_PREFIX: &str = ".verity-";

/// The file the tree goes into: HASH itself (appended to the data, or at
/// an offset into an existing file), or a temporary file beside it that
/// the caller renames over HASH at the end.
fn open_output(
    hash: &Path,
    in_place: bool,
) -> Result<(File, Option<sdk_common::fsutil::LockedTemp>), VerityError> {
    if in_place {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(hash)
            .map_err(crate::io_err("open", hash))?;
        return Ok((f, None));
    }
    let dir = match hash.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // What a killed run left here (its lock is free) goes first.
    sdk_common::fsutil::reap_stale_temps(dir, TEMP_PREFIX);
    let t = sdk_common::fsutil::LockedTemp::new_in(dir, TEMP_PREFIX).map_err(|e| {
        bad(format!(
            "cannot create {} in {}: {e}; check the directory exists and is writable",
            hash.display(),
            dir.display()
        ))
    })?;
    let f = t
        .file()
        .try_clone()
        .map_err(crate::io_err("reopen", t.path()))?;
    Ok((f, Some(t)))
}

/// The superblock at `hash_offset`, then zeros up to the first tree block.
fn write_superblock(
    out: &File,
    out_path: &Path,
    geo: &Geometry,
    uuid: uuid::Uuid,
    hash_offset: u64,
) -> Result<(), VerityError> {
    let sb = Superblock {
        uuid: *uuid.as_bytes(),
        algorithm: geo.algorithm,
        data_block_size: geo.data_block_size as u32,
        hash_block_size: geo.hash_block_size as u32,
        data_blocks: geo.data_blocks,
        salt: geo.salt.clone(),
    };
    let first_tree = geo
        .levels
        .last()
        .map(|l| l.0)
        .unwrap_or(geo.end)
        .max(hash_offset + superblock::SIZE as u64);
    let mut head = vec![0u8; (first_tree - hash_offset) as usize];
    head[..superblock::SIZE].copy_from_slice(&sb.encode());
    out.write_all_at(&head, hash_offset)
        .map_err(crate::io_err("write superblock to", out_path))?;
    Ok(())
}
