//! Extended attributes as the image formats carry them: file capabilities
//! in the kernel's `vfs_cap_data` form (what `setcap` writes), their text
//! form (what `getcap` prints), and ext4's in-inode attribute area.
//!
//! A package's attributes travel as `SCHILY.xattr.NAME` PAX records in
//! its archive (as `tar --xattrs` and OCI layers carry them), sit in the
//! staging table beside owner and mode, and are written by the ext4
//! writer into each inode's spare bytes.

use std::collections::BTreeMap;

/// Attributes of one path: full name (`security.capability`) -> value.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// The PAX record name prefix for an attribute (GNU tar, libarchive).
pub const PAX_PREFIX: &str = "SCHILY.xattr.";

/// The file capability attribute.
pub const CAPABILITY: &str = "security.capability";

const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XattrError {
    #[error("capability text {0:?}: {1}; write it as setcap does, e.g. cap_net_raw+ep")]
    CapText(String, String),
    #[error("{0}: the attribute value is not a capability set")]
    CapValue(String),
}

/// The capability named `cap_net_raw` (or `CAP_NET_RAW`): its number.
fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    upper
        .parse::<caps::Capability>()
        .ok()
        .map(|c| u32::from(c.index()))
}

fn cap_name(n: u32) -> String {
    caps::all()
        .into_iter()
        .find(|c| u32::from(c.index()) == n)
        .map(|c| c.to_string().to_ascii_lowercase())
        .unwrap_or_else(|| format!("cap_{n}"))
}

/// `setcap`'s text (`cap_net_raw+ep`, `cap_net_admin,cap_net_raw=eip`;
/// clauses separated by spaces) as `vfs_cap_data` revision 2: what the
/// kernel reads for a file's `security.capability`.
pub fn capability_from_text(text: &str) -> Result<Vec<u8>, XattrError> {
    let err = |why: &str| XattrError::CapText(text.to_string(), why.to_string());
    let (mut permitted, mut inheritable, mut effective) = (0u64, 0u64, false);
    let mut any = false;
    for clause in text.split_whitespace() {
        let at = clause
            .find(['+', '=', '-'])
            .ok_or_else(|| err("a clause has no operator (+, = or -)"))?;
        let (names, mut rest) = clause.split_at(at);
        let mut mask = 0u64;
        for name in names.split(',') {
            if name.eq_ignore_ascii_case("all") {
                mask |= caps::all()
                    .iter()
                    .fold(0u64, |m, c| m | (1u64 << c.index()));
                continue;
            }
            let n = cap_number(name).ok_or_else(|| err(&format!("unknown capability {name}")))?;
            mask |= 1u64 << n;
        }
        while !rest.is_empty() {
            let op = rest.as_bytes()[0];
            let end = rest[1..]
                .find(['+', '=', '-'])
                .map_or(rest.len(), |i| i + 1);
            let flags = &rest[1..end];
            rest = &rest[end..];
            if op == b'=' {
                permitted &= !mask;
                inheritable &= !mask;
            }
            for f in flags.chars() {
                let on = op != b'-';
                match f {
                    'p' if on => permitted |= mask,
                    'p' => permitted &= !mask,
                    'i' if on => inheritable |= mask,
                    'i' => inheritable &= !mask,
                    'e' => effective = on,
                    _ => return Err(err(&format!("unknown flag {f:?} (use e, i, p)"))),
                }
            }
            any = true;
        }
    }
    if !any {
        return Err(err("it names no capability"));
    }
    let mut v = Vec::with_capacity(20);
    let magic = VFS_CAP_REVISION_2
        | if effective {
            VFS_CAP_FLAGS_EFFECTIVE
        } else {
            0
        };
    v.extend_from_slice(&magic.to_le_bytes());
    for half in [0, 32] {
        v.extend_from_slice(&((permitted >> half) as u32).to_le_bytes());
        v.extend_from_slice(&((inheritable >> half) as u32).to_le_bytes());
    }
    Ok(v)
}

/// `getcap`'s text of a `security.capability` value (`cap_net_raw=ep`).
pub fn capability_to_text(v: &[u8]) -> Result<String, XattrError> {
    let word = |i: usize| -> u32 { u32::from_le_bytes(v[i..i + 4].try_into().unwrap()) };
    if v.len() < 20 {
        return Err(XattrError::CapValue(hex::encode(v)));
    }
    let magic = word(0);
    if magic & 0xFF00_0000 != VFS_CAP_REVISION_2 && magic & 0xFF00_0000 != VFS_CAP_REVISION_3 {
        return Err(XattrError::CapValue(hex::encode(v)));
    }
    let permitted = u64::from(word(4)) | (u64::from(word(12)) << 32);
    let inheritable = u64::from(word(8)) | (u64::from(word(16)) << 32);
    let effective = magic & VFS_CAP_FLAGS_EFFECTIVE != 0;
    // Group the capabilities by the flags they have, as getcap does.
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..64u32 {
        let (p, i) = (permitted >> n & 1 == 1, inheritable >> n & 1 == 1);
        if !p && !i {
            continue;
        }
        let mut flags = String::new();
        if effective {
            flags.push('e');
        }
        if i {
            flags.push('i');
        }
        if p {
            flags.push('p');
        }
        groups.entry(flags).or_default().push(cap_name(n));
    }
    Ok(groups
        .into_iter()
        .map(|(flags, names)| format!("{}={flags}", names.join(",")))
        .collect::<Vec<_>>()
        .join(" "))
}

/// How the contents list shows one attribute: capabilities as text, other
/// values as text when printable, else `0x` hex.
pub fn display(name: &str, value: &[u8]) -> String {
    if name == CAPABILITY
        && let Ok(t) = capability_to_text(value)
    {
        return format!("{name}={t}");
    }
    let trimmed = value.strip_suffix(&[0]).unwrap_or(value);
    match std::str::from_utf8(trimmed) {
        Ok(s) if s.chars().all(|c| c.is_ascii_graphic() || c == ' ') => format!("{name}={s:?}"),
        _ => format!("{name}=0x{}", hex::encode(value)),
    }
}

/// Attributes from a tar entry's PAX records.
pub fn from_pax<'a>(records: impl Iterator<Item = (&'a str, &'a [u8])>) -> Xattrs {
    records
        .filter_map(|(k, v)| {
            k.strip_prefix(PAX_PREFIX)
                .map(|n| (n.to_string(), v.to_vec()))
        })
        .collect()
}

/// The ext4 name index and suffix of an attribute name (`security.` is 6).
fn ext4_name(name: &str) -> (u8, &str) {
    for (prefix, index) in [
        ("user.", 1),
        ("trusted.", 4),
        ("security.", 6),
        ("system.", 7),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (index, rest);
        }
    }
    (0, name)
}

/// ext4's `e_hash` of one entry (`ext4_xattr_hash_entry`).
fn ext4_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    for chunk in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(w);
    }
    h
}

/// The in-inode attribute area (`size` bytes after the inode's extra
/// fields): magic, entries, the end mark, values packed from the end.
/// `None` when they do not fit.
pub fn ext4_ibody(attrs: &Xattrs, size: usize) -> Option<Vec<u8>> {
    let mut area = vec![0u8; size];
    area[..4].copy_from_slice(&0xEA02_0000u32.to_le_bytes());
    let first = 4usize; // entries and value offsets count from here
    let mut at = first;
    let mut value_end = size;
    for (name, value) in attrs {
        let (index, suffix) = ext4_name(name);
        let entry_len = (16 + suffix.len()).next_multiple_of(4);
        let value_len = value.len().next_multiple_of(4);
        // The entry, the 4-byte end mark after it, and the value.
        if suffix.len() > 255 || at + entry_len + 4 + value_len > value_end {
            return None;
        }
        value_end -= value_len;
        area[value_end..value_end + value.len()].copy_from_slice(value);
        let e = &mut area[at..at + entry_len];
        e[0] = suffix.len() as u8;
        e[1] = index;
        e[2..4].copy_from_slice(&((value_end - first) as u16).to_le_bytes());
        e[4..8].copy_from_slice(&0u32.to_le_bytes());
        e[8..12].copy_from_slice(&(value.len() as u32).to_le_bytes());
        e[12..16].copy_from_slice(&ext4_hash(suffix.as_bytes(), value).to_le_bytes());
        e[16..16 + suffix.len()].copy_from_slice(suffix.as_bytes());
        at += entry_len;
    }
    Some(area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setcap_text_round_trips_through_the_kernel_form() {
        let v = capability_from_text("cap_net_raw+ep").unwrap();
        // revision 2 with the effective flag, CAP_NET_RAW (13) permitted.
        assert_eq!(hex::encode(&v), "0100000200200000000000000000000000000000");
        assert_eq!(capability_to_text(&v).unwrap(), "cap_net_raw=ep");
        let v = capability_from_text("cap_net_admin,cap_net_raw=eip").unwrap();
        assert_eq!(
            capability_to_text(&v).unwrap(),
            "cap_net_admin,cap_net_raw=eip"
        );
        // CAP_BPF (39) lives in the second word.
        let v = capability_from_text("CAP_BPF=p").unwrap();
        assert_eq!(capability_to_text(&v).unwrap(), "cap_bpf=p");
        for bad in ["", "cap_net_raw", "cap_nope+ep", "cap_net_raw+x"] {
            assert!(capability_from_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ibody_packs_entries_forward_and_values_back() {
        let mut a = Xattrs::new();
        a.insert(
            CAPABILITY.into(),
            capability_from_text("cap_net_raw+ep").unwrap(),
        );
        let area = ext4_ibody(&a, 96).unwrap();
        assert_eq!(&area[..4], &[0, 0, 2, 0xEA]);
        assert_eq!(area[4], 10); // "capability"
        assert_eq!(area[5], 6); // security.
        let off = u16::from_le_bytes([area[6], area[7]]) as usize;
        assert_eq!(off, 96 - 20 - 4);
        assert_eq!(&area[4 + off..4 + off + 20], a[CAPABILITY].as_slice());
        // The end mark after the one entry (16 + 12 bytes).
        assert_eq!(&area[4 + 28..4 + 32], &[0, 0, 0, 0]);
        let mut big = Xattrs::new();
        big.insert("user.big".into(), vec![7; 80]);
        assert_eq!(ext4_ibody(&big, 96), None);
    }
}
