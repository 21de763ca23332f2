//! `sdk-tools disk ...`: GPT layouts and partition contents, over
//! `crate::formats::disk`.

use sdk_common::error::classify;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::formats::disk::{self, Layout, type_alias};

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create IMAGE as a sparse disk holding the GPT a layout describes.
    ///
    /// Examples:
    ///   sdk-tools disk layout --layout profiles/amd64-usr/disk-layout.toml disk.img
    ///   sdk-tools disk layout --layout profiles/amd64-usr/disk-layout.toml --type vm --seed v4000.0.0 disk.img
    #[command(verbatim_doc_comment)]
    Layout {
        /// The layout file (TOML).
        #[arg(long, value_name = "FILE")]
        layout: PathBuf,
        /// A variant of the layout (`vm`, `container`) overriding sizes.
        #[arg(long = "type", value_name = "VARIANT")]
        variant: Option<String>,
        /// Partition UUIDs and the disk GUID not fixed in the layout are
        /// derived from this (same seed, same bytes).
        #[arg(long, default_value = disk::DEFAULT_SEED)]
        seed: String,
        /// The disk image to create (sparse; must not exist).
        image: PathBuf,
    },
    /// Print the partition table of IMAGE.
    ///
    /// Examples:
    ///   sdk-tools disk show disk.img
    ///   sdk-tools disk show --json disk.img | jq '.partitions[] | select(.label == "USR-A")'
    #[command(verbatim_doc_comment)]
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The disk image to read.
        image: PathBuf,
    },
    /// Copy FILE (a filesystem image) to the start of partition N, keeping
    /// holes.
    ///
    /// Example:
    ///   sdk-tools disk write-partition disk.img 3 usr-a.img
    #[command(verbatim_doc_comment)]
    WritePartition {
        /// The disk image to write into.
        image: PathBuf,
        /// Partition number (as `disk show` prints it).
        number: u32,
        /// The filesystem image to copy in (no bigger than the partition).
        file: PathBuf,
    },
    /// Copy partition N of IMAGE out to a new file OUT.
    ///
    /// Example:
    ///   sdk-tools disk extract disk.img 3 usr-a.img
    #[command(verbatim_doc_comment)]
    Extract {
        /// The disk image to read.
        image: PathBuf,
        /// Partition number (as `disk show` prints it).
        number: u32,
        /// The new file (must not exist).
        out: PathBuf,
    },
}

#[derive(serde::Serialize)]
struct ShowPartition {
    number: u32,
    label: String,
    #[serde(rename = "type")]
    type_guid: String,
    type_alias: Option<&'static str>,
    uuid: String,
    /// Sectors.
    start: u64,
    size: u64,
    attributes: String,
    priority: u8,
    tries: u8,
    successful: bool,
}

#[derive(serde::Serialize)]
struct Show {
    sector_size: u64,
    sectors: u64,
    disk_guid: String,
    first_usable_lba: u64,
    last_usable_lba: u64,
    partitions: Vec<ShowPartition>,
}

fn show(image: &std::path::Path, json: bool) -> Result<()> {
    let t = disk::read_table(image).map_err(classify)?;
    let s = Show {
        sector_size: t.sector_size,
        sectors: t.sectors,
        disk_guid: t.disk_guid.hyphenated().to_string().to_uppercase(),
        first_usable_lba: t.first_usable_lba,
        last_usable_lba: t.last_usable_lba,
        partitions: t
            .entries
            .iter()
            .map(|e| ShowPartition {
                number: e.number,
                label: e.label.clone(),
                type_guid: e.type_guid.hyphenated().to_string().to_uppercase(),
                type_alias: type_alias(&e.type_guid),
                uuid: e.uuid.hyphenated().to_string().to_uppercase(),
                start: e.first_lba,
                size: e.last_lba + 1 - e.first_lba,
                attributes: format!("{:#018x}", e.attributes),
                priority: ((e.attributes >> 48) & 0xf) as u8,
                tries: ((e.attributes >> 52) & 0xf) as u8,
                successful: (e.attributes >> 56) & 1 == 1,
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{}: {} sectors of {} bytes ({} MiB), disk GUID {}",
        image.display(),
        s.sectors,
        s.sector_size,
        (s.sectors * s.sector_size) >> 20,
        s.disk_guid
    );
    println!(
        "{:>3} {:>10} {:>10} {:>9}  {:<12} {:<16} {:<36} attrs",
        "#", "start", "sectors", "size", "name", "type", "uuid"
    );
    for p in &s.partitions {
        let size = p.size * s.sector_size;
        let human = if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
            format!("{}GiB", size >> 30)
        } else {
            format!("{}MiB", size >> 20)
        };
        let attrs = if p.attributes == format!("{:#018x}", 0) {
            String::new()
        } else {
            format!(
                "priority={} tries={} successful={}",
                p.priority, p.tries, p.successful as u8
            )
        };
        println!(
            "{:>3} {:>10} {:>10} {:>9}  {:<12} {:<16} {:<36} {}",
            p.number,
            p.start,
            p.size,
            human,
            p.label,
            p.type_alias.unwrap_or(&p.type_guid),
            p.uuid,
            attrs
        );
    }
    Ok(())
}

pub fn run(cmd: DiskCommand) -> Result<()> {
    match cmd {
        DiskCommand::Layout {
            layout,
            variant,
            seed,
            image,
        } => {
            let mut l = Layout::load(&layout, variant.as_deref()).map_err(classify)?;
            l.derive_uuids(&seed);
            l.write_image(&image).map_err(classify)?;
            show(&image, false)
        }
        DiskCommand::Show { json, image } => show(&image, json),
        DiskCommand::WritePartition {
            image,
            number,
            file,
        } => disk::write_partition(&image, number, &file).map_err(classify),
        DiskCommand::Extract { image, number, out } => {
            disk::extract(&image, number, &out).map_err(classify)
        }
    }
}
