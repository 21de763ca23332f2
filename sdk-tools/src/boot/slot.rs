//! Switching the A/B USR slot of a finished disk image, the way an update
//! agent does on a running machine: write the update payload (filesystem +
//! verity tree) into the other USR partition, give it a higher priority with
//! one try and not successful in the GPT (Flatcar's `cgpt prioritize`),
//! and rewrite the ESP's boot entries from the GPT attributes (see
//! `esp` for how they map onto systemd-boot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::BootError;
use super::disk::{self, Partition};
use super::esp::{LoaderEntry, PartRef, SlotEntry};
use super::init::parse_cmdline;
use crate::formats::fs::image_size;

/// What to change.
#[derive(Debug, Clone)]
pub struct SlotChange {
    pub image: PathBuf,
    /// `a` or `b`.
    pub slot: char,
    /// Update payload to write into the slot first.
    pub payload: Option<PathBuf>,
    /// Root hash of the slot's content (needed when the slot has no entry
    /// yet, e.g. with a new payload).
    pub usr_hash: Option<String>,
    /// New priority; default one above every other USR slot.
    pub priority: Option<u8>,
    pub tries: u8,
    pub successful: bool,
}

const ENTRIES: &str = "/loader/entries";

/// Apply `c`; returns the entry file names now on the ESP.
pub fn set_slot(c: &SlotChange) -> Result<Vec<String>, BootError> {
    let image = &c.image;
    let slot = c.slot.to_ascii_lowercase();
    if slot != 'a' && slot != 'b' {
        return Err(BootError::Usage(format!("slot `{}`: use A or B", c.slot)));
    }
    if let Some(h) = &c.usr_hash
        && (h.len() < 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(BootError::Usage(format!(
            "--usrhash `{h}` is not a hex digest"
        )));
    }
    let parts = disk::partitions(image)?;
    let esp = disk::esp(&parts, image)?;
    let target = disk::usr_slot(&parts, slot, image)?;
    let label = target.label.clone();

    // Current entries: the template for kernel/initrd/command line, and the
    // hash each slot boots with.
    let entries = read_entries(image, &esp)?;
    let template = super::esp::default_entry(&entries)
        .cloned()
        .ok_or_else(|| no_entries(image))?;
    let usr_slots: Vec<Partition> = disk::usr_slots(&parts);
    let mut hashes = slot_hashes(&entries, &usr_slots);
    if let Some(payload) = &c.payload {
        // Checked before anything is written: bad input changes nothing.
        let hash = c.usr_hash.clone().ok_or_else(|| {
            BootError::Usage(
                "--payload needs --usrhash (the root hash build_image recorded for it)".into(),
            )
        })?;
        let offset = payload_hash_offset(payload)?;
        disk::write_into(image, &target, payload)?;
        hashes.insert(label.clone(), (hash, offset));
    } else if let Some(h) = &c.usr_hash {
        let off = hashes.get(&label).and_then(|x| x.1);
        hashes.insert(label.clone(), (h.clone(), off));
    }
    if !hashes.contains_key(&label) {
        return Err(BootError::Usage(format!(
            "{label} has no boot entry yet; pass --payload and --usrhash"
        )));
    }

    let prio = c.priority.unwrap_or_else(|| {
        usr_slots
            .iter()
            .filter(|p| p.label != label)
            .map(|p| p.priority())
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .min(15)
    });
    disk::set_ab(image, &target, prio, c.tries, c.successful)?;
    let parts = disk::partitions(image)?;
    for e in &entries {
        if e.file_name.starts_with("usr-") {
            disk::esp_delete(image, &esp, &format!("{ENTRIES}/{}", e.file_name))?;
        }
    }
    write_slot_entries(image, &esp, &parts, &hashes, &template)
}

/// Root hash (and hash offset, when known) each USR slot boots with, by
/// label, from the entries that select it by PARTLABEL or PARTUUID.
type SlotHashes = BTreeMap<String, (String, Option<u64>)>;

fn slot_hashes(entries: &[LoaderEntry], usr_slots: &[Partition]) -> SlotHashes {
    let mut hashes = SlotHashes::new();
    for e in entries {
        let c = parse_cmdline(&e.options);
        let Some(hash) = c.get("verity.usrhash").or_else(|| c.get("usrhash")) else {
            continue;
        };
        let off = c.get("verity.usrhashoffset").and_then(|v| v.parse().ok());
        let who = c
            .get("verity.usr")
            .or_else(|| c.get("mount.usr"))
            .cloned()
            .unwrap_or_default();
        for p in usr_slots {
            if who == format!("PARTLABEL={}", p.label)
                || who.eq_ignore_ascii_case(&format!("PARTUUID={}", p.uuid))
            {
                hashes.insert(p.label.clone(), (hash.clone(), off));
            }
        }
    }
    hashes
}

/// Where the verity tree of an update payload starts: right after its
/// filesystem, as its superblock says.
fn payload_hash_offset(payload: &Path) -> Result<Option<u64>, BootError> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    std::fs::File::open(payload)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|source| BootError::Io {
            what: "read",
            path: payload.to_path_buf(),
            source,
        })?;
    Ok(image_size(&head))
}

/// One entry per USR slot with a known hash, from the GPT's attributes
/// (after the change) and the template's kernel, initrd and command line.
fn write_slot_entries(
    image: &Path,
    esp: &Partition,
    parts: &[Partition],
    hashes: &SlotHashes,
    template: &LoaderEntry,
) -> Result<Vec<String>, BootError> {
    let keep: Vec<String> = parse_words(&template.options);
    // The OS title without the slot suffix this module adds.
    let title = match template.title.rsplit_once(" (USR-") {
        Some((t, _)) => t.to_string(),
        None => template.title.clone(),
    };
    let mut written = Vec::new();
    for (p, s) in disk::usr_slots(parts).iter().zip(['a', 'b']) {
        let Some((hash, off)) = hashes.get(&p.label) else {
            continue;
        };
        let entry = SlotEntry {
            slot: s,
            part: PartRef {
                label: p.label.clone(),
                uuid: Some(p.uuid.to_string()).filter(|_| !p.uuid.is_nil()),
            },
            usr_hash: hash.clone(),
            usr_hash_offset: *off,
            priority: p.priority(),
            tries: p.tries(),
            successful: p.successful(),
            title: title.clone(),
            linux: template.linux.clone(),
            initrd: template.initrd.clone(),
            base_cmdline: keep.clone(),
        };
        if let Some(name) = entry.file_name() {
            disk::esp_write(
                image,
                esp,
                &format!("{ENTRIES}/{name}"),
                entry.render().as_bytes(),
            )?;
            written.push(name);
        }
    }
    Ok(written)
}

/// The loader entries on an image's ESP.
fn read_entries(image: &Path, esp: &Partition) -> Result<Vec<LoaderEntry>, BootError> {
    let mut entries = Vec::new();
    for name in disk::esp_list(image, esp, ENTRIES)? {
        if name.ends_with(".conf") {
            let text = disk::esp_read(image, esp, &format!("{ENTRIES}/{name}"))?;
            entries.push(LoaderEntry::parse(&name, &String::from_utf8_lossy(&text)));
        }
    }
    Ok(entries)
}

fn no_entries(image: &Path) -> BootError {
    BootError::Usage(format!(
        "{}: no boot entries in the ESP's {ENTRIES}; was it built by build_image?",
        image.display()
    ))
}

/// Command line words of an entry minus the USR selection ones.
fn parse_words(options: &str) -> Vec<String> {
    options
        .split_whitespace()
        .filter(|w| {
            ![
                "mount.usr=",
                "verity.usr=",
                "verity.usrhash=",
                "usrhash=",
                "verity.usrhashoffset=",
            ]
            .iter()
            .any(|p| w.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// Used by `image_to_vm`: the entry systemd-boot would boot, read from the
/// image's ESP.
pub fn boot_entry(image: &Path) -> Result<LoaderEntry, BootError> {
    let parts = disk::partitions(image)?;
    let esp = disk::esp(&parts, image)?;
    let entries = read_entries(image, &esp)?;
    super::esp::default_entry(&entries)
        .cloned()
        .ok_or_else(|| no_entries(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr_words_are_dropped_from_the_template() {
        let w = parse_words(
            "mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-A usrhash=ab verity.usrhash=ab root=PARTLABEL=ROOT console=ttyS0",
        );
        assert_eq!(w, ["root=PARTLABEL=ROOT", "console=ttyS0"]);
    }
}
