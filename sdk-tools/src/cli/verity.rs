//! `sdk-tools verity format|verify`: the dm-verity library behind a
//! veritysetup-like command line.

use sdk_common::error::classify;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::exit::UsageError;
use crate::formats::verity::{self, Algorithm, Options};

#[derive(Debug, Subcommand)]
pub enum VerityCommand {
    /// Build the hash tree of DATA into HASH and print the root hash.
    ///
    /// Examples:
    ///   sdk-tools verity format usr.img usr.hash
    ///   sdk-tools verity format --salt - --uuid 1b4e28ba-2fa1-11d2-883f-0016d3cca427 usr.img usr.hash
    ///   # the tree inside the partition image, after a 1 GiB filesystem:
    ///   sdk-tools verity format --data-blocks 262144 --hash-offset 1073741824 usr.img usr.img
    #[command(verbatim_doc_comment)]
    Format {
        #[command(flatten)]
        opts: VerityOpts,
        /// The data (a filesystem image).
        data: PathBuf,
        /// Where the hash area goes; may be DATA itself with --hash-offset.
        #[arg(value_name = "HASH")]
        hash_file: PathBuf,
    },
    /// Check DATA against HASH and ROOT_HASH; exit 1 naming the first bad
    /// block.
    ///
    /// Examples:
    ///   sdk-tools verity verify usr.img usr.hash 4f1c...e2
    ///   sdk-tools verity verify --hash-offset 1073741824 usr.img usr.img 4f1c...e2
    #[command(verbatim_doc_comment)]
    Verify {
        #[command(flatten)]
        opts: VerityOpts,
        /// The data the tree covers (a filesystem image).
        data: PathBuf,
        /// The file holding the hash area (may be DATA with --hash-offset).
        #[arg(value_name = "HASH")]
        hash_file: PathBuf,
        /// The root hash `format` printed, in hex.
        root_hash: String,
    },
}

/// Options shared by format and verify (veritysetup's names).
#[derive(Debug, Args)]
pub struct VerityOpts {
    /// Salt in hex, or `-` for none [format default: random, as long as
    /// the digest; verify default: from the superblock].
    #[arg(long, value_name = "HEX|-")]
    salt: Option<String>,
    /// UUID written into the superblock [default: random].
    #[arg(long)]
    uuid: Option<uuid::Uuid>,
    /// Data block size in bytes, 512..4096 [default: 4096].
    #[arg(long, value_name = "N")]
    data_block_size: Option<u32>,
    /// Hash block size in bytes, 512..4096 [default: 4096].
    #[arg(long, value_name = "N")]
    hash_block_size: Option<u32>,
    /// Number of data blocks the tree covers [default: all of DATA].
    #[arg(long, value_name = "N")]
    data_blocks: Option<u64>,
    /// Byte offset of the hash area in HASH [default: 0].
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    hash_offset: u64,
    /// Neither write nor expect a superblock.
    #[arg(long)]
    no_superblock: bool,
    /// Hash algorithm: sha256 or sha512 [default: sha256].
    #[arg(long = "hash", value_name = "ALG")]
    algorithm: Option<String>,
}

impl VerityOpts {
    fn to_options(&self) -> Result<Options> {
        let algorithm = match &self.algorithm {
            None => None,
            Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| {
                UsageError(format!(
                    "unknown hash algorithm {name:?}; use sha256 or sha512"
                ))
            })?),
        };
        let salt = match &self.salt {
            None => None,
            Some(s) => Some(verity::parse_salt(s).map_err(classify)?),
        };
        Ok(Options {
            algorithm,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt,
            uuid: self.uuid,
            hash_offset: self.hash_offset,
            no_superblock: self.no_superblock,
        })
    }
}

pub fn run(cmd: VerityCommand) -> Result<()> {
    match cmd {
        VerityCommand::Format {
            opts,
            data,
            hash_file: hash,
        } => {
            let f = verity::format(&data, &hash, &opts.to_options()?).map_err(classify)?;
            print!("{}", f.report(&hash.display().to_string()));
        }
        VerityCommand::Verify {
            opts,
            data,
            hash_file: hash,
            root_hash,
        } => {
            let root = verity::parse_root_hash(&root_hash).map_err(classify)?;
            verity::verify(&data, &hash, &opts.to_options()?, &root).map_err(classify)?;
            println!("Verification of data area succeeded.");
        }
    }
    Ok(())
}
