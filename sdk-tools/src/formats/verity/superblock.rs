//! The 512-byte dm-verity superblock that `veritysetup format` writes at the
//! start of the hash area (cryptsetup's `struct verity_sb`, little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `verity\0\0` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | hash type (1: salt prepended, digests padded to a power of two) |
//! | 16 | 16 | UUID (RFC 4122 byte order) |
//! | 32 | 32 | hash algorithm name, NUL padded (`sha256`) |
//! | 64 | 4 | data block size |
//! | 68 | 4 | hash block size |
//! | 72 | 8 | number of data blocks |
//! | 80 | 2 | salt size |
//! | 82 | 6 | padding |
//! | 88 | 256 | salt |
//! | 344 | 168 | padding |
//!
//! The kernel never reads it (the table carries the parameters); it lets
//! `veritysetup open/verify` find them without being told.

use super::Algorithm;

pub const SIZE: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
pub const MAX_SALT: usize = 256;

/// The fields of a superblock, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub algorithm: Algorithm,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let name = self.algorithm.name().as_bytes();
        b[32..32 + name.len()].copy_from_slice(name);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        b
    }

    /// Decode, refusing anything `veritysetup` would not write: wrong
    /// signature, version or hash type, unknown algorithm, oversized salt,
    /// non-zero padding (so a flipped bit there is noticed too).
    pub fn decode(b: &[u8; SIZE]) -> Result<Superblock, String> {
        if &b[0..8] != SIGNATURE {
            return Err("no dm-verity superblock (signature `verity` missing)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != 1 {
            return Err(format!("superblock version {version}, only 1 is supported"));
        }
        let hash_type = u32_at(12);
        if hash_type != 1 {
            return Err(format!(
                "superblock hash type {hash_type}, only 1 (normal) is supported"
            ));
        }
        let name_bytes = &b[32..64];
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(32);
        if name_bytes[end..].iter().any(|&c| c != 0) {
            return Err("superblock algorithm name is not NUL padded".into());
        }
        let name = std::str::from_utf8(&name_bytes[..end])
            .map_err(|_| "superblock algorithm name is not ASCII".to_string())?;
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| format!("superblock names hash algorithm {name:?}, not supported"))?;
        let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_size > MAX_SALT {
            return Err(format!("superblock salt size {salt_size} exceeds 256"));
        }
        if b[82..88].iter().any(|&c| c != 0)
            || b[88 + salt_size..344].iter().any(|&c| c != 0)
            || b[344..].iter().any(|&c| c != 0)
        {
            return Err("superblock padding is not zero (corrupted superblock)".into());
        }
        Ok(Superblock {
            uuid: b[16..32].try_into().unwrap(),
            algorithm,
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(b[72..80].try_into().unwrap()),
            salt: b[88..88 + salt_size].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            algorithm: Algorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 512,
            data_blocks: 130,
            salt: vec![0xab; 32],
        }
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(&bytes[0..6], b"verity");
        assert_eq!(&bytes[32..38], b"sha256");
        assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
    }

    #[test]
    fn any_flipped_bit_outside_the_uuid_is_noticed_or_changes_a_field() {
        let sb = sample();
        let bytes = sb.encode();
        for byte in (0..SIZE).filter(|b| !(16..32).contains(b)) {
            let mut bad = bytes;
            bad[byte] ^= 0x10;
            if let Ok(got) = Superblock::decode(&bad) {
                assert_ne!(got, sb, "flip at byte {byte} went unnoticed");
            }
        }
    }
}
