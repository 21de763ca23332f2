//! GUID Partition Table on-disk format (UEFI spec 2.10, chapter 5): the
//! protective MBR in LBA 0, the primary header in LBA 1 with its entry
//! array after it, and the backup array and header at the end of the disk.
//!
//! Our own writer rather than the `gpt` crate: the image must be the same
//! bytes for the same inputs, and the crate (4.x) creates partitions with
//! random v4 GUIDs, picks first-fit placement itself and writes through a
//! device handle it owns; here every LBA, GUID and attribute bit comes from
//! the validated layout, and the whole table is a few hundred lines of
//! plain byte layout that the tests check against `sfdisk` and `sgdisk`.

use uuid::Uuid;

use super::layout::{ENTRY_ARRAY_BYTES, Layout};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
const ENTRY_SIZE: usize = 128;
const ENTRIES: usize = 128;

/// A partition as found in a table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub number: u32,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
    pub attributes: u64,
    pub label: String,
}

/// A parsed table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Table {
    pub sector_size: u64,
    pub disk_guid: Uuid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// Sectors in the disk as the primary header sees it (backup LBA + 1).
    pub sectors: u64,
    pub entries: Vec<Entry>,
}

/// Flatcar's A/B fields (gptprio) in the type-specific attribute bits
/// 48-63: priority 48-51, tries left 52-55, successful 56.
pub fn ab_attributes(priority: u8, tries: u8, successful: bool) -> u64 {
    (u64::from(priority & 0xf) << 48)
        | (u64::from(tries & 0xf) << 52)
        | (u64::from(successful) << 56)
}

/// The bits [`ab_attributes`] sets.
const AB_MASK: u64 = 0x1ff << 48;

impl Entry {
    /// Boot priority (0: never boot), bits 48-51.
    pub fn priority(&self) -> u8 {
        ((self.attributes >> 48) & 0xf) as u8
    }
    /// Tries left before the slot is given up, bits 52-55.
    pub fn tries(&self) -> u8 {
        ((self.attributes >> 52) & 0xf) as u8
    }
    /// Booted successfully, bit 56.
    pub fn successful(&self) -> bool {
        self.attributes & (1 << 56) != 0
    }
    /// The attributes with the A/B fields replaced, other bits kept.
    pub fn with_ab(&self, priority: u8, tries: u8, successful: bool) -> u64 {
        (self.attributes & !AB_MASK) | ab_attributes(priority, tries, successful)
    }
}

fn entry_bytes(e: &Entry) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    // GUIDs are stored with their first three fields little endian.
    b[0..16].copy_from_slice(&e.type_guid.to_bytes_le());
    b[16..32].copy_from_slice(&e.uuid.to_bytes_le());
    b[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
    b[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
    b[48..56].copy_from_slice(&e.attributes.to_le_bytes());
    for (i, unit) in e.label.encode_utf16().take(36).enumerate() {
        b[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    b
}

struct HeaderFields {
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
}

fn header_bytes(t: &Table, h: HeaderFields, entries_crc: u32) -> Vec<u8> {
    let mut b = vec![0u8; t.sector_size as usize];
    b[0..8].copy_from_slice(SIGNATURE);
    b[8..12].copy_from_slice(&REVISION.to_le_bytes());
    b[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    // 16..20 header CRC, filled below; 20..24 reserved.
    b[24..32].copy_from_slice(&h.my_lba.to_le_bytes());
    b[32..40].copy_from_slice(&h.alternate_lba.to_le_bytes());
    b[40..48].copy_from_slice(&t.first_usable_lba.to_le_bytes());
    b[48..56].copy_from_slice(&t.last_usable_lba.to_le_bytes());
    b[56..72].copy_from_slice(&t.disk_guid.to_bytes_le());
    b[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    b[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    b[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    b[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..HEADER_SIZE as usize]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The protective MBR: one partition of type 0xEE covering the disk
/// (clamped to 2^32-1 sectors), so MBR-only tools leave it alone.
fn protective_mbr(sector_size: u64, sectors: u64) -> Vec<u8> {
    let mut b = vec![0u8; sector_size as usize];
    let e = &mut b[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "beyond"
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = (sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&n.to_le_bytes());
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

impl Table {
    /// The table a layout describes.
    pub fn from_layout(l: &Layout) -> Table {
        let ss = l.sector_size;
        let sectors = l.size / ss;
        let array = ENTRY_ARRAY_BYTES / ss;
        Table {
            sector_size: ss,
            disk_guid: l.disk_guid,
            first_usable_lba: 2 + array,
            last_usable_lba: sectors - 2 - array,
            sectors,
            entries: l
                .partitions
                .iter()
                .map(|p| Entry {
                    number: p.number,
                    type_guid: p.type_guid,
                    uuid: p.uuid,
                    first_lba: p.start / ss,
                    last_lba: p.end() / ss - 1,
                    attributes: p.attributes(),
                    label: p.label.clone(),
                })
                .collect(),
        }
    }

    /// Every (byte offset, bytes) the table occupies: protective MBR,
    /// primary header and array, backup array and header.
    pub fn encode(&self) -> Vec<(u64, Vec<u8>)> {
        let ss = self.sector_size;
        let mut array = vec![0u8; ENTRY_ARRAY_BYTES as usize];
        for e in &self.entries {
            let i = (e.number - 1) as usize * ENTRY_SIZE;
            array[i..i + ENTRY_SIZE].copy_from_slice(&entry_bytes(e));
        }
        let crc = crc32fast::hash(&array);
        let last = self.sectors - 1;
        let backup_array = last - ENTRY_ARRAY_BYTES / ss;
        let primary = header_bytes(
            self,
            HeaderFields {
                my_lba: 1,
                alternate_lba: last,
                entries_lba: 2,
            },
            crc,
        );
        let backup = header_bytes(
            self,
            HeaderFields {
                my_lba: last,
                alternate_lba: 1,
                entries_lba: backup_array,
            },
            crc,
        );
        vec![
            (0, protective_mbr(ss, self.sectors)),
            (ss, primary),
            (2 * ss, array.clone()),
            (backup_array * ss, array),
            (last * ss, backup),
        ]
    }

    /// Parse the primary table of an image read through `read_at`,
    /// checking signature and both CRCs. Tries 512- then 4096-byte sectors.
    pub fn decode(
        mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Table, String> {
        for ss in [512u64, 4096] {
            let mut h = vec![0u8; 512];
            if read_at(ss, &mut h).is_err() || &h[0..8] != SIGNATURE {
                continue;
            }
            let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
            let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
            let hsize = u32_at(12) as usize;
            if !(92..=512).contains(&hsize) {
                return Err(format!("GPT header size {hsize} is invalid"));
            }
            let mut check = h[..hsize].to_vec();
            check[16..20].fill(0);
            if crc32fast::hash(&check) != u32_at(16) {
                return Err("GPT header checksum mismatch (corrupted table)".into());
            }
            let (n, esize) = (u32_at(80) as usize, u32_at(84) as usize);
            if esize < ENTRY_SIZE || n > 1024 {
                return Err(format!(
                    "GPT entry array of {n} x {esize} bytes is not supported"
                ));
            }
            let mut array = vec![0u8; n * esize];
            read_at(u64_at(72) * ss, &mut array)
                .map_err(|e| format!("cannot read the GPT entry array: {e}"))?;
            if crc32fast::hash(&array) != u32_at(88) {
                return Err("GPT entry array checksum mismatch (corrupted table)".into());
            }
            let mut entries = Vec::new();
            for (i, e) in array.chunks(esize).enumerate() {
                let type_guid = Uuid::from_bytes_le(e[0..16].try_into().unwrap());
                if type_guid.is_nil() {
                    continue;
                }
                let units: Vec<u16> = e[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                entries.push(Entry {
                    number: i as u32 + 1,
                    type_guid,
                    uuid: Uuid::from_bytes_le(e[16..32].try_into().unwrap()),
                    first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                    last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap()),
                    attributes: u64::from_le_bytes(e[48..56].try_into().unwrap()),
                    label: String::from_utf16_lossy(&units),
                });
            }
            return Ok(Table {
                sector_size: ss,
                disk_guid: Uuid::from_bytes_le(h[56..72].try_into().unwrap()),
                first_usable_lba: u64_at(40),
                last_usable_lba: u64_at(48),
                sectors: u64_at(32) + 1,
                entries,
            });
        }
        Err("no GPT found (no `EFI PART` header at LBA 1)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let t = Table {
            sector_size: 512,
            disk_guid: Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
            first_usable_lba: 34,
            last_usable_lba: 8192 - 34,
            sectors: 8192,
            entries: vec![Entry {
                number: 2,
                type_guid: Uuid::from_u128(5),
                uuid: Uuid::from_u128(6),
                first_lba: 2048,
                last_lba: 4095,
                attributes: 1 << 56,
                label: "USR-A".into(),
            }],
        };
        let parts = t.encode();
        let mut disk = vec![0u8; 8192 * 512];
        for (off, b) in &parts {
            disk[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        // GUIDs are mixed-endian on disk.
        assert_eq!(&disk[512 + 56..512 + 60], &[0x33, 0x22, 0x11, 0x00]);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&disk[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        assert_eq!(Table::decode(read).unwrap(), t);
        let mut bad = disk.clone();
        bad[1024 + 129] ^= 1;
        let read_bad = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&bad[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        assert!(Table::decode(read_bad).unwrap_err().contains("checksum"));
    }

    #[test]
    fn ab_fields_keep_other_attributes() {
        let mut e = Entry {
            number: 3,
            type_guid: Uuid::from_u128(5),
            uuid: Uuid::from_u128(6),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 1 | ab_attributes(1, 0, true),
            label: "USR-A".into(),
        };
        assert_eq!((e.priority(), e.tries(), e.successful()), (1, 0, true));
        e.attributes = e.with_ab(2, 1, false);
        assert_eq!((e.priority(), e.tries(), e.successful()), (2, 1, false));
        assert_eq!(e.attributes, 1 | (2 << 48) | (1 << 52));
        assert_eq!(e.with_ab(15, 15, true) & !1, 0x1ff << 48);
    }
}
