//! `verify`: check DATA and its hash tree against a root hash, block by
//! block, and say which block is wrong.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{device_size, open_data, same_file};
use super::superblock::{self, Superblock};
use super::tree::{self, Children};
use super::{Algorithm, Formatted, Geometry, Options, VerityError, bad, check_block_sizes};

/// Settle the parameters: from the superblock (options given must agree)
/// or, with `no_superblock`, from the options alone.
fn resolve(
    data: &Path,
    hash_file: &File,
    hash: &Path,
    opts: &Options,
) -> Result<(Geometry, Option<uuid::Uuid>, File), VerityError> {
    let appended = same_file(data, hash);
    if opts.no_superblock {
        let algorithm = opts.algorithm.unwrap_or(Algorithm::Sha256);
        let dbs = opts.data_block_size.unwrap_or(4096);
        check_block_sizes(dbs, opts.hash_block_size.unwrap_or(4096))?;
        let salt = opts.salt.clone().ok_or_else(|| {
            bad("without a superblock the salt must be given: pass --salt HEX (or --salt - for none)")
        })?;
        let (file, blocks) = open_data(
            data,
            dbs,
            opts.data_blocks,
            appended.then_some(opts.hash_offset),
        )?;
        let geo = Geometry::new(
            algorithm,
            dbs,
            opts.hash_block_size.unwrap_or(4096),
            blocks,
            salt,
            opts.hash_offset,
            false,
        )?;
        return Ok((geo, None, file));
    }
    let mut raw = [0u8; superblock::SIZE];
    hash_file
        .read_exact_at(&mut raw, opts.hash_offset)
        .map_err(|e| {
            bad(format!(
                "cannot read a superblock at byte {} of {}: {e}; wrong --hash-offset, or pass --no-superblock",
                opts.hash_offset,
                hash.display()
            ))
        })?;
    let sb = Superblock::decode(&raw).map_err(|e| {
        VerityError::Corrupt(format!(
            "{} at byte {}: {e}",
            hash.display(),
            opts.hash_offset
        ))
    })?;
    let mismatch = |what: &str, given: String, found: String| {
        bad(format!(
            "--{what} {given} disagrees with the superblock of {} ({found}); drop the option or fix it",
            hash.display()
        ))
    };
    if let Some(a) = opts.algorithm.filter(|a| *a != sb.algorithm) {
        return Err(mismatch(
            "hash",
            a.name().into(),
            sb.algorithm.name().into(),
        ));
    }
    if let Some(n) = opts.data_block_size.filter(|n| *n != sb.data_block_size) {
        return Err(mismatch(
            "data-block-size",
            n.to_string(),
            sb.data_block_size.to_string(),
        ));
    }
    if let Some(n) = opts.hash_block_size.filter(|n| *n != sb.hash_block_size) {
        return Err(mismatch(
            "hash-block-size",
            n.to_string(),
            sb.hash_block_size.to_string(),
        ));
    }
    if let Some(n) = opts.data_blocks.filter(|n| *n != sb.data_blocks) {
        return Err(mismatch(
            "data-blocks",
            n.to_string(),
            sb.data_blocks.to_string(),
        ));
    }
    if let Some(s) = opts.salt.as_ref().filter(|s| **s != sb.salt) {
        return Err(mismatch("salt", hex_or_dash(s), hex_or_dash(&sb.salt)));
    }
    let sb_uuid = uuid::Uuid::from_bytes(sb.uuid);
    if let Some(u) = opts.uuid.filter(|u| *u != sb_uuid) {
        return Err(mismatch("uuid", u.to_string(), sb_uuid.to_string()));
    }
    let (file, blocks) = open_data(data, sb.data_block_size, Some(sb.data_blocks), None)?;
    let geo = Geometry::new(
        sb.algorithm,
        sb.data_block_size,
        sb.hash_block_size,
        blocks,
        sb.salt,
        opts.hash_offset,
        true,
    )?;
    Ok((geo, Some(sb_uuid), file))
}

fn hex_or_dash(s: &[u8]) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        hex::encode(s)
    }
}

/// Check DATA against its hash tree in HASH and `root_hash`, top-down the
/// way the kernel trusts blocks: the top block against the root hash, then
/// each level's blocks against the (already trusted) level above, then
/// every data block. The first mismatch is reported naming the block and
/// its byte range, so a single flipped bit anywhere in the data, the tree
/// or the superblock's salt/sizes is found and located.
///
/// With a superblock the parameters come from it and any given in `opts`
/// must agree; with `opts.no_superblock` they come from `opts` (the salt
/// is then required).
///
/// ```no_run
/// # use sdk_tools::formats::verity::{verify, Options, parse_root_hash};
/// let root = parse_root_hash("4f1c...")?;
/// verify("rootfs.img".as_ref(), "rootfs.hash".as_ref(), &Options::default(), &root)?;
/// # Ok::<(), sdk_tools::formats::verity::VerityError>(())
/// ```
pub fn verify(
    data: &Path,
    hash: &Path,
    opts: &Options,
    root_hash: &[u8],
) -> Result<Formatted, VerityError> {
    let hash_file = File::open(hash).map_err(|e| {
        bad(format!(
            "cannot open hash file {}: {e}; check the path",
            hash.display()
        ))
    })?;
    let (geo, uuid, data_file) = resolve(data, &hash_file, hash, opts)?;
    if root_hash.len() != geo.algorithm.digest_size() {
        return Err(bad(format!(
            "root hash has {} hex digits but {} digests have {}",
            root_hash.len() * 2,
            geo.algorithm.name(),
            geo.algorithm.digest_size() * 2
        )));
    }
    if same_file(data, hash) && opts.hash_offset < geo.data_size() {
        return Err(bad(format!(
            "hash offset {} lies inside the data area (which ends at byte {})",
            opts.hash_offset,
            geo.data_size()
        )));
    }
    let hash_len = device_size(&hash_file, hash)?;
    if hash_len < geo.end {
        return Err(VerityError::Corrupt(format!(
            "{} is {hash_len} bytes but the hash tree ends at byte {}: truncated hash area",
            hash.display(),
            geo.end
        )));
    }
    tracing::info!(data = %data.display(), hash = %hash.display(), "verifying dm-verity hash tree");

    let top = tree::top_block(&geo, (&data_file, data), (&hash_file, hash))?;
    if tree::root_of(&geo, &top) != root_hash {
        let what = match geo.levels.last() {
            Some(&(off, _)) => format!(
                "the top hash block (bytes {off}..{} of {})",
                off + geo.hash_block_size,
                hash.display()
            ),
            None => format!("data block 0 of {}", data.display()),
        };
        return Err(VerityError::Corrupt(format!(
            "root hash mismatch: {what} or the root hash given is wrong"
        )));
    }

    let slot = geo.slot() as u64;
    for level in (0..geo.levels.len()).rev() {
        let (base, _) = geo.levels[level];
        let children = if level == 0 {
            Children::Data(&data_file, data)
        } else {
            Children::Hash(&hash_file, hash)
        };
        tree::build_level(&geo, level, children, |chunk| {
            let mut stored = vec![0u8; chunk.blocks.len()];
            let at = base + chunk.first_parent * geo.hash_block_size;
            hash_file
                .read_exact_at(&mut stored, at)
                .map_err(crate::io_err("read", hash))?;
            if stored == chunk.blocks {
                return Ok(());
            }
            let pos = stored
                .iter()
                .zip(chunk.blocks)
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64;
            let child = pos / slot;
            if child >= chunk.children {
                // Padding after the last digest: the parent is wrong.
                let byte = at + pos;
                return Err(VerityError::Corrupt(format!(
                    "hash block at bytes {}..{} of {} has non-zero padding",
                    byte - byte % geo.hash_block_size,
                    byte - byte % geo.hash_block_size + geo.hash_block_size,
                    hash.display()
                )));
            }
            let index = chunk.first_child + child;
            Err(VerityError::Corrupt(if level == 0 {
                let a = index * geo.data_block_size;
                format!(
                    "data block {index} (bytes {a}..{} of {}) does not match its hash",
                    a + geo.data_block_size,
                    data.display()
                )
            } else {
                let a = geo.levels[level - 1].0 + index * geo.hash_block_size;
                format!(
                    "hash block {index} of level {} (bytes {a}..{} of {}) does not match its hash",
                    level - 1,
                    a + geo.hash_block_size,
                    hash.display()
                )
            }))
        })?;
    }
    Ok(Formatted {
        root_hash: root_hash.to_vec(),
        salt: geo.salt.clone(),
        uuid,
        algorithm: geo.algorithm,
        data_block_size: geo.data_block_size as u32,
        hash_block_size: geo.hash_block_size as u32,
        data_blocks: geo.data_blocks,
        hash_blocks: geo.hash_blocks(),
        hash_offset: geo.hash_offset,
        hash_size: geo.end - geo.hash_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{format, parse_root_hash};
    use super::*;
    use sdk_common::error::BadInput;

    fn data(dir: &Path, blocks: usize, bs: usize) -> std::path::PathBuf {
        let p = dir.join("data");
        let mut v = vec![0u8; blocks * bs];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in v.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&p, v).unwrap();
        p
    }

    fn flip(path: &Path, byte: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, byte).unwrap();
        b[0] ^= 0x04;
        f.write_all_at(&b, byte).unwrap();
    }

    #[test]
    fn every_flipped_bit_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = data(dir.path(), 300, 512);
        let h = dir.path().join("hash");
        let opts = Options {
            data_block_size: Some(512),
            hash_block_size: Some(512),
            salt: Some(vec![1, 2, 3]),
            ..Options::default()
        };
        let f = format(&d, &h, &opts).unwrap();
        verify(&d, &h, &Options::default(), &f.root_hash).unwrap();
        // Data block 17.
        flip(&d, 17 * 512 + 100);
        let e = verify(&d, &h, &Options::default(), &f.root_hash).unwrap_err();
        assert!(e.to_string().contains("data block 17 "), "{e}");
        flip(&d, 17 * 512 + 100);
        // Every byte of the tree (level offsets from the geometry).
        let len = std::fs::metadata(&h).unwrap().len();
        for byte in (512..len).step_by(97) {
            flip(&h, byte);
            let e = verify(&d, &h, &Options::default(), &f.root_hash).unwrap_err();
            assert!(matches!(e, VerityError::Corrupt(_)), "byte {byte}: {e}");
            flip(&h, byte);
        }
        verify(&d, &h, &Options::default(), &f.root_hash).unwrap();
    }

    #[test]
    fn options_that_disagree_with_the_superblock_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = data(dir.path(), 4, 4096);
        let h = dir.path().join("hash");
        let f = format(&d, &h, &Options::default()).unwrap();
        let opts = Options {
            data_block_size: Some(512),
            ..Options::default()
        };
        let e = verify(&d, &h, &opts, &f.root_hash).unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("data-block-size"),
            "{e}"
        );
        let wrong = parse_root_hash(&"00".repeat(32)).unwrap();
        let e = verify(&d, &h, &Options::default(), &wrong).unwrap_err();
        assert!(e.to_string().contains("root hash mismatch"), "{e}");
    }

    #[test]
    fn appended_form_and_no_superblock() {
        let dir = tempfile::tempdir().unwrap();
        let d = data(dir.path(), 129, 4096);
        let opts = Options {
            salt: Some(vec![]),
            hash_offset: 129 * 4096,
            no_superblock: true,
            ..Options::default()
        };
        let f = format(&d, &d, &opts).unwrap();
        assert_eq!(f.hash_size, 3 * 4096);
        assert_eq!(std::fs::metadata(&d).unwrap().len(), 129 * 4096 + 3 * 4096);
        verify(&d, &d, &opts, &f.root_hash).unwrap();
        let inside = Options {
            hash_offset: 4096,
            data_blocks: Some(129),
            ..opts
        };
        assert!(format(&d, &d, &inside).unwrap_err().is_bad_input());
    }
}
