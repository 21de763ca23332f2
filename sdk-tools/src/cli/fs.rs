//! `sdk-tools fs build`: filesystem images from a directory, over
//! `crate::formats::fs`.

use sdk_common::error::classify;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::exit::UsageError;
use crate::formats::disk::Size;
use crate::formats::fs::{self, FsOptions, FsType, Ownership};

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Build a filesystem image from a directory, without mounting.
    ///
    /// Timestamps are all SOURCE_DATE_EPOCH (or --epoch, or 0; for 0 an
    /// ext4 superblock says 1 s, as e2fsprogs takes 0 for "now"); the same
    /// tree and options give the same bytes. A temporary directory that a
    /// killed build left beside OUT is removed.
    ///
    /// Examples:
    ///   sdk-tools fs build --type ext4 --label USR-A --all-root staging/usr usr.ext4
    ///   sdk-tools fs build --type vfat --label EFI-SYSTEM --size 64MiB staging/boot efi.img
    ///   sdk-tools fs build --type squashfs --owner 0:0 staging/usr usr.squashfs
    #[command(verbatim_doc_comment)]
    Build {
        /// ext4, erofs, squashfs or vfat.
        #[arg(long = "type", value_name = "FS")]
        fs_type: String,
        /// Filesystem label (e.g. USR-A, EFI-SYSTEM).
        #[arg(long)]
        label: Option<String>,
        /// Filesystem UUID (vfat: its first 4 bytes are the volume id).
        #[arg(long)]
        uuid: Option<uuid::Uuid>,
        /// Image size for ext4/vfat (bytes or 64MiB, 1GiB...) [default:
        /// content plus 10%].
        #[arg(long)]
        size: Option<String>,
        /// Timestamp for every file [default: SOURCE_DATE_EPOCH or 0].
        #[arg(long)]
        epoch: Option<u64>,
        /// Make every file owned by root.
        #[arg(long, conflicts_with = "owner")]
        all_root: bool,
        /// Make every file owned by UID:GID.
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
        /// ext4: leave out the read-only feature flag.
        #[arg(long)]
        writable: bool,
        /// squashfs/erofs compressor.
        #[arg(long)]
        compression: Option<String>,
        /// The directory whose contents become the filesystem.
        src: PathBuf,
        /// The image file to write.
        out: PathBuf,
    },
}

pub fn run(cmd: FsCommand) -> Result<()> {
    let FsCommand::Build {
        fs_type,
        label,
        uuid,
        size,
        epoch,
        all_root,
        owner,
        writable,
        compression,
        src,
        out,
    } = cmd;
    let fs_type: FsType = fs_type.parse().map_err(classify)?;
    let size = match size {
        None => None,
        Some(s) => Some(Size::parse(&s).map_err(UsageError)?.0),
    };
    let owner = match (all_root, owner) {
        (true, _) => Ownership::Root,
        (false, None) => Ownership::Keep,
        (false, Some(o)) => {
            let parsed = o
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
            let (uid, gid) = parsed.ok_or_else(|| {
                UsageError(format!("--owner {o:?} is not UID:GID (numbers, like 0:0)"))
            })?;
            Ownership::Force { uid, gid }
        }
    };
    let epoch = match epoch {
        Some(e) => e,
        None => fs::source_date_epoch().map_err(classify)?.unwrap_or(0),
    };
    let opts = FsOptions {
        label,
        uuid,
        epoch,
        owner,
        size,
        read_only: !writable,
        compression,
        pseudo_file: None,
    };
    let built = fs::build(fs_type, &src, &out, &opts).map_err(classify)?;
    println!(
        "{} image {}: {} bytes, UUID {}",
        built.fs_type.name(),
        out.display(),
        built.size,
        built.uuid
    );
    Ok(())
}
