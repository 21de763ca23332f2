//! dm-verity hash trees, format version 1, byte-compatible with
//! `veritysetup format` (cryptsetup) and checked by the kernel's dm-verity
//! target (Documentation/admin-guide/device-mapper/verity.rst).
//!
//! This module owns the on-disk format: the optional 512-byte superblock,
//! the hash levels stored top-down after it, `H(salt || block)` digests each
//! in a slot padded to a power of two, every hash block zero padded. It does
//! not open dm devices (that is the booted system's job) and knows nothing
//! about partitions: the caller says where the data ends and where the hash
//! area goes (`hash_offset`, which is how USR-A carries its tree after the
//! filesystem).
//!
//! Hashing runs on every core (rayon), one task per 8 MiB chunk that maps
//! its part of the data, hashes it and writes (or checks) its hash blocks
//! itself, so cores never wait on each other within a level and memory
//! stays at a few chunks whatever the data size;
//! `sha2` picks the SHA-NI instructions at run time where the CPU has them.
//! Measured on the 2-core SHA-NI build machine, CPU seconds to hash 1 GiB
//! as salted 4 KiB blocks: sha2 0.10 0.63-0.64 s, 0.10 with the `asm`
//! feature 0.61-0.65 s, 0.11 0.64-0.65 s (about 1.7 GB/s per core, what
//! `openssl speed -evp sha256 -bytes 4096` reports for one core). No
//! difference, so the workspace's 0.10 without `asm` (no assembler build
//! step) it is.
//!
//! ```no_run
//! use sdk_tools::formats::verity::{self, Options};
//! # fn main() -> Result<(), verity::VerityError> {
//! // USR-A: a 1 GiB filesystem image with the tree appended after it.
//! let opts = Options {
//!     salt: Some(vec![0x5a; 32]),
//!     uuid: Some(uuid::Uuid::from_u128(0x1234)),
//!     data_blocks: Some(262144),
//!     hash_offset: 1 << 30,
//!     ..Options::default()
//! };
//! let usr = std::path::Path::new("usr-a.img");
//! let f = verity::format(usr, usr, &opts)?;
//! println!("root hash {} salt {} tree {} bytes", f.root_hash_hex(), f.salt_hex(), f.hash_size);
//! verity::verify(usr, usr, &opts, &f.root_hash)?;
//! # Ok(()) }
//! ```

mod format;
pub mod superblock;
mod tree;
mod verify;

use sdk_common::error::BadInput;
use std::path::Path;

pub use format::format;
pub use verify::verify;

/// Digest algorithms the tree can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Name as veritysetup and the kernel spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// What to build or check. `None` fields take veritysetup's defaults on
/// `format` (sha256, 4096-byte blocks, all of DATA, a random salt as long
/// as the digest, a random UUID) and the superblock's values on `verify`,
/// where a given value must agree with the superblock.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub algorithm: Option<Algorithm>,
    /// 512..=4096, a power of two.
    pub data_block_size: Option<u32>,
    /// 512..=4096, a power of two.
    pub hash_block_size: Option<u32>,
    /// How many data blocks the tree covers; default: DATA's size divided
    /// by the block size (which must divide it), or `hash_offset` divided
    /// by it when DATA and HASH are the same file.
    pub data_blocks: Option<u64>,
    /// `Some(vec![])` means no salt (`--salt -`).
    pub salt: Option<Vec<u8>>,
    /// Written into the superblock.
    pub uuid: Option<uuid::Uuid>,
    /// Byte offset of the hash area in HASH (a multiple of 512, and of the
    /// hash block size without a superblock).
    pub hash_offset: u64,
    /// Write (or expect) no superblock: the parameters then live only in
    /// the dm table / on the command line.
    pub no_superblock: bool,
}

/// The outcome of `format`: everything a dm table or a boot configuration
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    pub root_hash: Vec<u8>,
    pub salt: Vec<u8>,
    /// `None` without a superblock.
    pub uuid: Option<uuid::Uuid>,
    pub algorithm: Algorithm,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Hash-tree blocks (without the superblock), as veritysetup counts.
    pub hash_blocks: u64,
    pub hash_offset: u64,
    /// Bytes of the hash area from `hash_offset`: superblock block (if any)
    /// and the tree. HASH ends at `hash_offset + hash_size`.
    pub hash_size: u64,
}

impl Formatted {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(&self.root_hash)
    }

    /// The salt in hex, or `-` when there is none (veritysetup's spelling).
    pub fn salt_hex(&self) -> String {
        if self.salt.is_empty() {
            "-".into()
        } else {
            hex::encode(&self.salt)
        }
    }

    /// Lines in the style of `veritysetup format`.
    pub fn report(&self, hash_name: &str) -> String {
        format!(
            "VERITY header information for {hash_name}\n\
             UUID:            \t{}\n\
             Hash type:       \t1\n\
             Data blocks:     \t{}\n\
             Data block size: \t{}\n\
             Hash blocks:     \t{}\n\
             Hash block size: \t{}\n\
             Hash algorithm:  \t{}\n\
             Salt:            \t{}\n\
             Root hash:      \t{}\n\
             Hash device size: \t{} [bytes]\n",
            self.uuid.map(|u| u.to_string()).unwrap_or_default(),
            self.data_blocks,
            self.data_block_size,
            self.hash_blocks,
            self.hash_block_size,
            self.algorithm.name(),
            self.salt_hex(),
            self.root_hash_hex(),
            self.hash_offset + self.hash_size,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The request itself is wrong (sizes, offsets, options); nothing was
    /// written.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    /// Verification found a block whose digest does not match.
    #[error("verification failed: {0}")]
    Corrupt(String),
}

impl BadInput for VerityError {
    /// True when the caller's input is at fault (exit code 2).
    fn is_bad_input(&self) -> bool {
        matches!(self, VerityError::BadInput(_))
    }
}

fn bad(msg: impl Into<String>) -> VerityError {
    VerityError::BadInput(msg.into())
}

/// Both block sizes must be powers of two from 512 to 4096.
fn check_block_sizes(data: u32, hash: u32) -> Result<(), VerityError> {
    for (what, size) in [("data", data), ("hash", hash)] {
        if !(512..=4096).contains(&size) || !size.is_power_of_two() {
            return Err(bad(format!(
                "{what} block size {size} is not supported; use a power of two from 512 to 4096"
            )));
        }
    }
    Ok(())
}

/// Resolved parameters and where each hash level lives in HASH.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    algorithm: Algorithm,
    data_block_size: u64,
    hash_block_size: u64,
    data_blocks: u64,
    salt: Vec<u8>,
    hash_offset: u64,
    superblock: bool,
    /// Levels bottom-up: `levels[0]` hashes the data blocks. Each entry is
    /// (byte offset in HASH, number of hash blocks).
    levels: Vec<(u64, u64)>,
    /// Byte offset in HASH just after the tree.
    end: u64,
}

impl Geometry {
    fn new(
        algorithm: Algorithm,
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
        salt: Vec<u8>,
        hash_offset: u64,
        superblock: bool,
    ) -> Result<Geometry, VerityError> {
        check_block_sizes(data_block_size, hash_block_size)?;
        if data_blocks == 0 {
            return Err(bad(
                "the data area is empty (0 blocks); a tree needs at least one data block",
            ));
        }
        if salt.len() > superblock::MAX_SALT {
            return Err(bad(format!(
                "salt is {} bytes; at most 256 are allowed",
                salt.len()
            )));
        }
        let hbs = u64::from(hash_block_size);
        if !hash_offset.is_multiple_of(512) || (!superblock && !hash_offset.is_multiple_of(hbs)) {
            let align = if superblock { 512 } else { hbs };
            return Err(bad(format!(
                "hash offset {hash_offset} is not a multiple of {align} bytes"
            )));
        }
        // cryptsetup VERITY_hash_offset_block(): the tree starts at the first
        // hash block after the superblock.
        let first_block = if superblock {
            (hash_offset + superblock::SIZE as u64).div_ceil(hbs)
        } else {
            hash_offset / hbs
        };
        let slot = algorithm.digest_size().next_power_of_two() as u64;
        let bits = (hbs / slot).trailing_zeros();
        // cryptsetup verity_hash.c: the number of levels is the smallest n
        // with (data_blocks - 1) >> (bits * n) == 0.
        let mut count = 0u32;
        while bits * count < 64 && (data_blocks - 1) >> (bits * count) != 0 {
            count += 1;
        }
        let mut sizes = Vec::new();
        for i in 0..count {
            let shift = u128::from(bits) * u128::from(i + 1);
            let per = if shift >= 127 {
                u128::MAX
            } else {
                1u128 << shift
            };
            sizes.push(u128::from(data_blocks).div_ceil(per) as u64);
        }
        // Stored top-down: the highest level first.
        let mut levels = vec![(0u64, 0u64); sizes.len()];
        let mut pos = first_block;
        for i in (0..sizes.len()).rev() {
            levels[i] = (pos * hbs, sizes[i]);
            pos += sizes[i];
        }
        Ok(Geometry {
            algorithm,
            data_block_size: u64::from(data_block_size),
            hash_block_size: hbs,
            data_blocks,
            salt,
            hash_offset,
            superblock,
            levels,
            end: pos * hbs,
        })
    }

    fn data_size(&self) -> u64 {
        self.data_blocks * self.data_block_size
    }

    /// Digests per hash block.
    fn per_block(&self) -> u64 {
        self.hash_block_size / self.slot() as u64
    }

    fn slot(&self) -> usize {
        self.algorithm.digest_size().next_power_of_two()
    }

    fn hash_blocks(&self) -> u64 {
        self.levels.iter().map(|l| l.1).sum()
    }
}

/// Bytes the hash area takes (superblock block, unless `no_superblock`,
/// plus the tree) for `data_blocks` blocks with `opts`' algorithm and
/// block sizes, placed at a `hash_offset` that is a multiple of the hash
/// block size. For sizing a partition before formatting: USR-A needs
/// `data_blocks * data_block_size + hash_area_size(..)` bytes.
///
/// ```
/// use sdk_tools::formats::verity::{hash_area_size, Options};
/// // 1 GiB of 4 KiB blocks: superblock block + 2048 + 16 + 1 tree blocks.
/// assert_eq!(hash_area_size(262144, &Options::default()).unwrap(), (1 + 2048 + 16 + 1) * 4096);
/// ```
pub fn hash_area_size(data_blocks: u64, opts: &Options) -> Result<u64, VerityError> {
    let geo = Geometry::new(
        opts.algorithm.unwrap_or_default(),
        opts.data_block_size.unwrap_or(4096),
        opts.hash_block_size.unwrap_or(4096),
        data_blocks,
        Vec::new(),
        0,
        !opts.no_superblock,
    )?;
    Ok(geo.end)
}

/// Read 16 random bytes or more from the kernel (salts, UUIDs).
fn random_bytes(n: usize) -> Result<Vec<u8>, VerityError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut buf = vec![0u8; n];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(crate::io_err("read", path))?;
    Ok(buf)
}

/// Parse a salt as given on a command line: hex, or `-` for none.
pub fn parse_salt(s: &str) -> Result<Vec<u8>, VerityError> {
    if s == "-" {
        return Ok(Vec::new());
    }
    let salt = hex::decode(s).map_err(|e| {
        bad(format!(
            "salt {s:?} is not hex ({e}); give hex digits or `-` for none"
        ))
    })?;
    if salt.len() > superblock::MAX_SALT {
        return Err(bad(format!(
            "salt is {} bytes; at most 256 are allowed",
            salt.len()
        )));
    }
    Ok(salt)
}

/// Parse a root hash in hex, checking its length against the algorithm.
pub fn parse_root_hash(s: &str) -> Result<Vec<u8>, VerityError> {
    let root =
        hex::decode(s.trim()).map_err(|e| bad(format!("root hash {s:?} is not hex ({e})")))?;
    if root.len() != 32 && root.len() != 64 {
        return Err(bad(format!(
            "root hash is {} bytes; a sha256 root hash has 64 hex digits, sha512 128",
            root.len()
        )));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(blocks: u64, dbs: u32, hbs: u32, sb: bool) -> Geometry {
        Geometry::new(Algorithm::Sha256, dbs, hbs, blocks, vec![], 0, sb).unwrap()
    }

    #[test]
    fn level_layout_matches_cryptsetup() {
        // 130 blocks: level 0 has 2 hash blocks, level 1 one; stored after
        // the superblock block, top level first (veritysetup: "Hash blocks: 3",
        // "Hash device size: 16384").
        let g = geo(130, 4096, 4096, true);
        assert_eq!(g.levels, vec![(8192, 2), (4096, 1)]);
        assert_eq!(g.end, 16384);
        assert_eq!(g.hash_blocks(), 3);
        // One block: no levels at all; the root hash is the block's digest.
        let g = geo(1, 4096, 4096, false);
        assert!(g.levels.is_empty());
        assert_eq!(g.end, 0);
        // 128 blocks fit one hash block; 129 need two plus a top.
        assert_eq!(geo(128, 4096, 4096, false).levels, vec![(0, 1)]);
        assert_eq!(geo(129, 4096, 4096, false).levels.len(), 2);
        // 512-byte hash blocks hold 16 sha256 digests.
        let g = geo(16385, 4096, 512, false);
        assert_eq!(
            g.levels.iter().map(|l| l.1).collect::<Vec<_>>(),
            vec![1025, 65, 5, 1]
        );
    }

    #[test]
    fn rejects_bad_sizes_and_offsets() {
        let e = Geometry::new(Algorithm::Sha256, 1000, 4096, 1, vec![], 0, true).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = Geometry::new(Algorithm::Sha256, 4096, 4096, 1, vec![], 100, true).unwrap_err();
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let e = Geometry::new(Algorithm::Sha256, 4096, 4096, 1, vec![], 512, false).unwrap_err();
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
        assert!(Geometry::new(Algorithm::Sha256, 4096, 4096, 0, vec![], 0, true).is_err());
    }

    #[test]
    fn salt_parsing() {
        assert_eq!(parse_salt("-").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_salt("00ff").unwrap(), vec![0, 255]);
        assert!(parse_salt("xyz").unwrap_err().is_bad_input());
        assert!(parse_salt(&"00".repeat(257)).is_err());
    }
}
