//! Reading and patching a finished disk image without mounting it: the
//! partition table and its attribute bits through the shared GPT code
//! (`formats::disk`), files on the ESP through mtools at the partition's
//! byte offset (`-i IMAGE@@OFFSET`).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::BootError;
use crate::cmd::CommandExt;
use crate::formats::disk::{self, DiskError};

/// A partition of an image, with its byte span.
pub use crate::formats::disk::Located as Partition;

/// The EFI system partition type GUID.
pub const ESP_TYPE: uuid::Uuid = uuid::uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");

/// The partitions of a disk image (a usage error if it has no GPT).
pub fn partitions(image: &Path) -> Result<Vec<Partition>, BootError> {
    if !image.is_file() {
        return Err(BootError::Usage(format!(
            "{}: no such image file",
            image.display()
        )));
    }
    disk::partitions(image).map_err(disk_err)
}

/// Set partition `number`'s A/B fields (Flatcar's gptprio bits), keeping
/// its other attribute bits.
pub fn set_ab(
    image: &Path,
    p: &Partition,
    priority: u8,
    tries: u8,
    successful: bool,
) -> Result<(), BootError> {
    disk::set_attributes(image, p.number, p.with_ab(priority, tries, successful)).map_err(disk_err)
}

fn disk_err(e: DiskError) -> BootError {
    match e {
        DiskError::Io(io) => BootError::Io {
            what: io.op,
            path: io.path,
            source: io.source,
        },
        other => BootError::Usage(other.to_string()),
    }
}

/// Partition type GUIDs a USR slot may have: Flatcar's, and the
/// Discoverable Partitions Specification's per-architecture `usr`.
const USR_TYPES: &[&str] = &["flatcar-usr", "usr-x86-64", "usr-arm64"];

/// The USR slots of an image in partition order, found by type (as the
/// init and the update agent find them), never by label: slot A is the
/// first, slot B the second.
pub fn usr_slots(parts: &[Partition]) -> Vec<Partition> {
    let types: Vec<uuid::Uuid> = crate::formats::disk::TYPE_ALIASES
        .iter()
        .filter(|(alias, _)| USR_TYPES.contains(alias))
        .filter_map(|(_, guid)| uuid::Uuid::parse_str(guid).ok())
        .collect();
    let mut v: Vec<Partition> = parts
        .iter()
        .filter(|p| types.contains(&p.type_guid))
        .cloned()
        .collect();
    v.sort_by_key(|p| p.number);
    v
}

/// USR slot `slot` (`a` or `b`) of an image.
pub fn usr_slot(parts: &[Partition], slot: char, image: &Path) -> Result<Partition, BootError> {
    let i = match slot.to_ascii_lowercase() {
        'a' => 0,
        'b' => 1,
        _ => return Err(BootError::Usage(format!("slot `{slot}`: use A or B"))),
    };
    usr_slots(parts).into_iter().nth(i).ok_or_else(|| {
        BootError::Usage(format!(
            "{}: no USR slot {} (partitions of a USR type: Flatcar's or the Discoverable Partitions' usr)",
            image.display(),
            slot.to_ascii_uppercase()
        ))
    })
}

pub fn esp(parts: &[Partition], image: &Path) -> Result<Partition, BootError> {
    parts
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .cloned()
        .ok_or_else(|| BootError::Usage(format!("{}: no EFI system partition", image.display())))
}

fn mtools(tool: &str, image: &Path, esp: &Partition) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", image.display(), esp.offset));
    c
}

/// File names in an ESP directory (`mdir -b`), empty when it does not exist.
pub fn esp_list(image: &Path, esp: &Partition, dir: &str) -> Result<Vec<String>, BootError> {
    let out = mtools("mdir", image, esp)
        .arg("-b")
        .arg(format!("::{dir}"))
        .run_stdout();
    match out {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| l.trim().rsplit('/').next())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map(str::to_string)
            .collect()),
        Err(crate::cmd::CmdError::Failed { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Read one file from the ESP.
pub fn esp_read(image: &Path, esp: &Partition, path: &str) -> Result<Vec<u8>, BootError> {
    Ok(mtools("mtype", image, esp)
        .arg(format!("::{path}"))
        .run_capture()?)
}

/// Copy an ESP file out to `dest`.
pub fn esp_copy_out(
    image: &Path,
    esp: &Partition,
    path: &str,
    dest: &Path,
) -> Result<(), BootError> {
    let data = esp_read(image, esp, path)?;
    std::fs::write(dest, data).map_err(|source| BootError::Io {
        what: "write",
        path: dest.to_path_buf(),
        source,
    })
}

/// Write `data` to `path` on the ESP (replacing it).
pub fn esp_write(image: &Path, esp: &Partition, path: &str, data: &[u8]) -> Result<(), BootError> {
    let tmp = tempfile::NamedTempFile::new().map_err(|source| BootError::Io {
        what: "create a temp file",
        path: std::env::temp_dir(),
        source,
    })?;
    std::fs::write(tmp.path(), data).map_err(|source| BootError::Io {
        what: "write",
        path: tmp.path().to_path_buf(),
        source,
    })?;
    mtools("mcopy", image, esp)
        .arg("-o")
        .arg(tmp.path())
        .arg(format!("::{path}"))
        .run_capture()?;
    Ok(())
}

pub fn esp_delete(image: &Path, esp: &Partition, path: &str) -> Result<(), BootError> {
    mtools("mdel", image, esp)
        .arg(format!("::{path}"))
        .run_capture()?;
    Ok(())
}

/// Write `payload` into partition `p` of `image` (it must fit).
pub fn write_into(image: &Path, p: &Partition, payload: &Path) -> Result<(), BootError> {
    let len = std::fs::metadata(payload)
        .map_err(|source| BootError::Io {
            what: "read",
            path: payload.to_path_buf(),
            source,
        })?
        .len();
    if len > p.size {
        return Err(BootError::Usage(format!(
            "{} ({len} bytes) does not fit in {} ({} bytes)",
            payload.display(),
            p.label,
            p.size
        )));
    }
    let io = |what: &'static str, path: PathBuf| move |source| BootError::Io { what, path, source };
    let mut src = std::fs::File::open(payload).map_err(io("open", payload.to_path_buf()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io("open", image.to_path_buf()))?;
    dst.seek(SeekFrom::Start(p.offset))
        .map_err(io("seek", image.to_path_buf()))?;
    std::io::copy(&mut src, &mut dst).map_err(io("write into", image.to_path_buf()))?;
    dst.flush().map_err(io("write into", image.to_path_buf()))?;
    Ok(())
}
