//! Reading and patching a finished disk image without mounting it: the
//! partition table through `sfdisk --json`, GPT attribute bits through
//! `sfdisk --part-attrs`, files on the ESP through mtools at the
//! partition's byte offset (`-i IMAGE@@OFFSET`).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::BootError;
use crate::cmd::CommandExt;

#[derive(Debug, Deserialize)]
struct SfdiskOut {
    partitiontable: Table,
}

#[derive(Debug, Deserialize)]
struct Table {
    label: String,
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<SfPart>,
}

#[derive(Debug, Deserialize)]
struct SfPart {
    /// `IMAGE<N>`: the partition number is the trailing digits (numbers
    /// can skip: Flatcar's layout has no 5 or 8).
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    type_guid: String,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    attrs: Option<String>,
}

/// The EFI system partition type GUID.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// One partition of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    pub offset: u64,
    pub size: u64,
    pub type_guid: String,
    pub uuid: String,
    pub label: String,
    /// GPT attribute bits set (e.g. 48, 56).
    pub attr_bits: Vec<u8>,
}

impl Partition {
    /// Flatcar's A/B fields: priority (48-51), tries (52-55), successful (56).
    pub fn priority(&self) -> u8 {
        self.field(48)
    }
    pub fn tries(&self) -> u8 {
        self.field(52)
    }
    pub fn successful(&self) -> bool {
        self.attr_bits.contains(&56)
    }
    fn field(&self, lo: u8) -> u8 {
        (0..4)
            .filter(|i| self.attr_bits.contains(&(lo + i)))
            .map(|i| 1 << i)
            .sum()
    }
}

/// Parse `sfdisk --json` output.
pub fn parse_sfdisk(json: &str) -> Result<Vec<Partition>, String> {
    let out: SfdiskOut =
        serde_json::from_str(json).map_err(|e| format!("unexpected sfdisk --json output: {e}"))?;
    let t = out.partitiontable;
    if t.label != "gpt" {
        return Err(format!("partition table is {}, not gpt", t.label));
    }
    let sector = t.sectorsize.unwrap_or(512);
    Ok(t.partitions
        .into_iter()
        .enumerate()
        .map(|(i, p)| Partition {
            number: node_number(&p.node).unwrap_or(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            offset: p.start * sector,
            size: p.size * sector,
            type_guid: p.type_guid.to_ascii_uppercase(),
            uuid: p.uuid.unwrap_or_default().to_ascii_lowercase(),
            label: p.name.unwrap_or_default(),
            attr_bits: p
                .attrs
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("GUID:"))
                .flat_map(|l| {
                    l.split(',')
                        .filter_map(|n| n.parse().ok())
                        .collect::<Vec<u8>>()
                })
                .collect(),
        })
        .collect())
}

fn node_number(node: &str) -> Option<u32> {
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    node[node.len() - digits..].parse().ok()
}

/// The partitions of a disk image (a usage error if it has no GPT).
pub fn partitions(image: &Path) -> Result<Vec<Partition>, BootError> {
    if !image.is_file() {
        return Err(BootError::Usage(format!(
            "{}: no such image file",
            image.display()
        )));
    }
    let json = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .run_stdout()?;
    parse_sfdisk(&json).map_err(|e| BootError::Usage(format!("{}: {e}", image.display())))
}

pub fn by_label<'a>(
    parts: &'a [Partition],
    label: &str,
    image: &Path,
) -> Result<&'a Partition, BootError> {
    parts.iter().find(|p| p.label == label).ok_or_else(|| {
        BootError::Usage(format!(
            "{}: no partition labelled {label}",
            image.display()
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

/// Set partition `number`'s GPT attribute bits to exactly `bits` (sfdisk
/// rewrites both GPT copies and their CRCs).
pub fn set_attr_bits(image: &Path, number: u32, bits: &[u8]) -> Result<(), BootError> {
    let list = if bits.is_empty() {
        String::new()
    } else {
        format!(
            "GUID:{}",
            bits.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Command::new("sfdisk")
        .arg("--part-attrs")
        .arg(image)
        .arg(number.to_string())
        .arg(list)
        .run_capture()?;
    Ok(())
}

/// Attribute bits for the A/B fields, keeping bits outside 48-56.
pub fn ab_bits(old: &[u8], priority: u8, tries: u8, successful: bool) -> Vec<u8> {
    let mut v: Vec<u8> = old
        .iter()
        .copied()
        .filter(|b| !(48..=56).contains(b))
        .collect();
    for i in 0..4 {
        if priority & (1 << i) != 0 {
            v.push(48 + i);
        }
        if tries & (1 << i) != 0 {
            v.push(52 + i);
        }
    }
    if successful {
        v.push(56);
    }
    v.sort_unstable();
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{
   "partitiontable": {
      "label": "gpt", "id": "9C6C1B9B-1A59-4E44-8C2A-47D0C3A5B3E1", "device": "disk.img",
      "unit": "sectors", "firstlba": 34, "lastlba": 409566, "sectorsize": 512,
      "partitions": [
         {"node": "disk.img1", "start": 2048, "size": 65536, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "uuid": "A1B2C3D4-0000-4000-8000-000000000001", "name": "EFI-SYSTEM"},
         {"node": "disk.img3", "start": 67584, "size": 131072, "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "uuid": "7130C94A-213A-4E5A-8E26-6CCE9662F132", "name": "USR-A", "attrs": "GUID:48,56"},
         {"node": "disk.img4", "start": 198656, "size": 131072, "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "uuid": "E03DD35C-7C2D-4A47-B3FE-27F15780A57C", "name": "USR-B", "attrs": "GUID:49,52"}
      ]
   }
}"#;

    #[test]
    fn sfdisk_json_with_ab_attributes() {
        let parts = parse_sfdisk(FIXTURE).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].offset, 2048 * 512);
        assert_eq!(
            parts[1].number, 3,
            "numbers come from the node, not the order"
        );
        let a = &parts[1];
        assert_eq!(
            (a.label.as_str(), a.priority(), a.tries(), a.successful()),
            ("USR-A", 1, 0, true)
        );
        assert_eq!(a.uuid, "7130c94a-213a-4e5a-8e26-6cce9662f132");
        let b = &parts[2];
        assert_eq!((b.priority(), b.tries(), b.successful()), (2, 1, false));
    }

    #[test]
    fn ab_bits_keep_other_attributes() {
        assert_eq!(ab_bits(&[0, 48, 56], 2, 1, false), vec![0, 49, 52]);
        assert_eq!(ab_bits(&[], 15, 15, true), (48..=56).collect::<Vec<u8>>());
    }
}
