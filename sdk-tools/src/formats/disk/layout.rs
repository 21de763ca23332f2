//! Disk layouts: `profiles/<board>/disk-layout.toml`, parsed strictly and
//! validated into a [`Layout`] with every partition placed, typed and
//! named. Nothing here touches an image; see [`Layout::write_image`].
//!
//! ```toml
//! [disk]
//! sector-size = 512        # 512 (default) or 4096
//! alignment = "2MiB"       # partition starts and sizes snap to this
//! arch = "x86-64"          # resolves the arch-less aliases usr, usr-verity, root
//! # guid = "..."           # fixed disk GUID; default: derived from the seed
//! # size = "8GiB"          # whole disk; default: the partitions plus the backup GPT
//!
//! [[partition]]
//! number = 3
//! label = "USR-A"
//! role = "usr-a"           # what it is for; default: from Flatcar's label
//! type = "flatcar-usr"     # an alias (see TYPE_ALIASES) or a GUID
//! size = "2GiB"            # bytes as an integer, or "512KiB" / "64MiB" / "1GiB"
//! uuid = "7130c94a-213a-4e5a-8e26-6cce9662f132"  # fixed; default: derived
//! features = ["prioritize", "verity"]  # prioritize: priority 1, successful
//! fs = "ext4"              # what build_image puts there (informational here)
//! # start = "4MiB"         # default: the next aligned offset
//! # priority = 1, tries = 0, successful = true  # A/B attribute bits 48-56
//!
//! [variant.vm.partition.9]  # `--type vm` overrides partition 9
//! size = "256MiB"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use uuid::Uuid;

use super::DiskError;

/// Partition type aliases and their GUIDs: Flatcar's names, the common
/// ones, and the Discoverable Partitions Specification's per-arch types
/// (`usr`, `usr-verity`, `root` resolve through `[disk] arch`).
pub const TYPE_ALIASES: &[(&str, &str)] = &[
    ("efi", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("bios", "21686148-6449-6E6F-744E-656564454649"),
    ("flatcar-usr", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"),
    ("flatcar-resize", "3884DD41-8582-4404-B9A8-E9B84F2DF50E"),
    ("flatcar-reserved", "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0"),
    ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("data", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("usr-x86-64", "8484680C-9521-48C6-9C11-B0720656F69E"),
    ("usr-verity-x86-64", "77FF5F63-E7B6-4633-ACF4-1565B864C0E6"),
    ("root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ("usr-arm64", "B0E01050-EE5F-4390-949A-9101B17104E9"),
    ("usr-verity-arm64", "6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E"),
    ("root-arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
];

/// Architectures `[disk] arch` accepts.
const ARCHES: &[&str] = &["x86-64", "arm64"];

/// What a partition is for. Code picks partitions by role (as
/// systemd-repart does with its definitions), never by label, so a board
/// may name them as it likes. Layouts without `role =` keep working: the
/// role follows from Flatcar's labels ([`Role::from_label`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The EFI system partition (boot loader, kernels, entries).
    Esp,
    /// GRUB's BIOS boot partition.
    BiosBoot,
    /// The active /usr slot, with its verity tree.
    UsrA,
    /// The update slot.
    UsrB,
    /// Vendor (OEM) files.
    Oem,
    /// The OEM's first-boot configuration (Ignition).
    OemConfig,
    /// The writable root, filled on first boot.
    Root,
    /// Anything else; any number of partitions may have it.
    Other,
}

impl Role {
    /// The role a partition without `role =` has: Flatcar's labels, or
    /// the EFI type for an ESP named otherwise.
    pub fn from_label(label: &str, type_name: &str) -> Role {
        match label {
            "EFI-SYSTEM" => Role::Esp,
            "BIOS-BOOT" => Role::BiosBoot,
            "USR-A" => Role::UsrA,
            "USR-B" => Role::UsrB,
            "OEM" => Role::Oem,
            "OEM-CONFIG" => Role::OemConfig,
            "ROOT" => Role::Root,
            _ if type_name == "efi" => Role::Esp,
            _ => Role::Other,
        }
    }

    /// The name a layout writes.
    pub fn name(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::BiosBoot => "bios-boot",
            Role::UsrA => "usr-a",
            Role::UsrB => "usr-b",
            Role::Oem => "oem",
            Role::OemConfig => "oem-config",
            Role::Root => "root",
            Role::Other => "other",
        }
    }
}

/// The alias for a type GUID, if it has one (for display).
pub fn type_alias(guid: &Uuid) -> Option<&'static str> {
    TYPE_ALIASES
        .iter()
        .find(|(_, g)| Uuid::parse_str(g).ok().as_ref() == Some(guid))
        .map(|(a, _)| *a)
}

fn resolve_type(name: &str, arch: Option<&str>) -> Result<Uuid, String> {
    if let Ok(u) = Uuid::parse_str(name) {
        return Ok(u);
    }
    let full = match (name, arch) {
        ("usr" | "usr-verity" | "root", Some(a)) => format!("{name}-{a}"),
        ("usr" | "usr-verity" | "root", None) => {
            return Err(format!(
                "type {name:?} depends on the architecture; set `arch` in [disk] or use {name}-x86-64 / {name}-arm64"
            ));
        }
        _ => name.to_string(),
    };
    TYPE_ALIASES
        .iter()
        .find(|(a, _)| *a == full)
        .map(|(_, g)| Uuid::parse_str(g).unwrap())
        .ok_or_else(|| {
            let names: Vec<_> = TYPE_ALIASES.iter().map(|(a, _)| *a).collect();
            format!(
                "unknown partition type {name:?}; use a GUID or one of: usr, usr-verity, root, {}",
                names.join(", ")
            )
        })
}

/// A byte size: an integer, or a string with a binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            _ => {
                return Err(format!(
                    "size {s:?} has an unknown unit; use B, KiB, MiB, GiB or TiB"
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is not a number with a unit like \"64MiB\""))?;
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: bytes as an integer, or a string like \"64MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLayout {
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    partition: Vec<Spanned<RawPartition>>,
    #[serde(default)]
    variant: BTreeMap<String, Spanned<RawVariant>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDisk {
    sector_size: Option<u64>,
    alignment: Option<Size>,
    arch: Option<String>,
    guid: Option<Uuid>,
    size: Option<Size>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartition {
    number: u32,
    label: String,
    role: Option<Role>,
    #[serde(rename = "type")]
    type_name: String,
    size: Size,
    start: Option<Size>,
    uuid: Option<Uuid>,
    #[serde(default)]
    features: Vec<String>,
    priority: Option<u8>,
    tries: Option<u8>,
    successful: Option<bool>,
    fs: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVariant {
    /// Whole-disk size for this variant.
    size: Option<Size>,
    #[serde(default)]
    partition: BTreeMap<String, Spanned<RawOverride>>,
}

/// What a variant may change in a partition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOverride {
    size: Option<Size>,
    start: Option<Size>,
    label: Option<String>,
    role: Option<Role>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    uuid: Option<Uuid>,
    fs: Option<String>,
}

/// A validated partition, placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// GPT entry number, 1-based.
    pub number: u32,
    pub label: String,
    /// What it is for (given, or inferred from the label).
    pub role: Role,
    pub type_guid: Uuid,
    /// The name the layout used for the type (alias or GUID).
    pub type_name: String,
    pub uuid: Uuid,
    /// The UUID was given in the layout (not derived from the seed).
    pub uuid_fixed: bool,
    /// Byte offset of the first sector.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// A/B boot attributes (cgpt's): GPT attribute bits 48-51, 52-55, 56.
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    /// The partition carries a dm-verity tree after its filesystem.
    pub verity: bool,
    /// The filesystem the image builder puts there, if the layout says.
    pub fs: Option<String>,
}

impl Partition {
    /// The 64-bit GPT attribute field.
    pub fn attributes(&self) -> u64 {
        super::gpt::ab_attributes(self.priority, self.tries, self.successful)
    }

    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A validated disk layout: partitions in table order (by number).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub sector_size: u64,
    pub alignment: u64,
    /// Whole-disk size in bytes, including both GPT copies.
    pub size: u64,
    pub disk_guid: Uuid,
    pub disk_guid_fixed: bool,
    pub partitions: Vec<Partition>,
    /// Where it was loaded from and which variant, for messages.
    #[serde(skip)]
    pub source: PathBuf,
    pub variant: Option<String>,
}

/// Bytes of one GPT partition array (128 entries of 128 bytes).
pub const ENTRY_ARRAY_BYTES: u64 = 128 * 128;

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `key = ...` in the table whose header (or inline span)
/// starts at `span`, or the table's first line when the key is not
/// written there. The table's body runs to the next `[` header.
fn key_line(text: &str, span: &std::ops::Range<usize>, key: &str) -> usize {
    let start = span.start.min(text.len());
    let mut off = start;
    for (i, l) in text[start..].split_inclusive('\n').enumerate() {
        let t = l.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        if t.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return line_of(text, off);
        }
        off += l.len();
    }
    line_of(text, span.start)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The default seed UUIDs derive from when none is given.
pub const DEFAULT_SEED: &str = "sdk-run";

fn derive(seed: &str, what: &str) -> Uuid {
    let ns = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"sdk-run:disk-layout");
    Uuid::new_v5(&ns, format!("{seed}\0{what}").as_bytes())
}

/// The `[disk]` table, validated.
struct Disk<'a> {
    sector: u64,
    alignment: u64,
    arch: Option<&'a str>,
    /// Where `[disk]` is, for messages about it.
    line: usize,
}

/// Numbers, labels and roles already given to a partition.
#[derive(Default)]
struct Seen {
    numbers: BTreeSet<u32>,
    labels: BTreeSet<String>,
    roles: BTreeMap<Role, u32>,
}

/// The text being parsed and where it came from, for messages that name
/// the file and line.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn err(&self, line: usize, msg: String) -> DiskError {
        DiskError::Layout {
            file: self.path.to_path_buf(),
            line,
            msg,
        }
    }

    fn disk<'r>(&self, raw: &'r RawDisk) -> Result<Disk<'r>, DiskError> {
        let line = self
            .text
            .lines()
            .position(|l| l.trim_start().starts_with("[disk]"))
            .map(|i| i + 1)
            .unwrap_or(1);
        let sector = raw.sector_size.unwrap_or(512);
        if sector != 512 && sector != 4096 {
            return Err(self.err(
                line,
                format!("[disk] sector-size {sector} is not supported; use 512 or 4096"),
            ));
        }
        let alignment = raw.alignment.map(|s| s.0).unwrap_or(1 << 20);
        if alignment == 0 || !alignment.is_multiple_of(sector) {
            return Err(self.err(
                line,
                format!(
                    "[disk] alignment {alignment} is not a multiple of the {sector}-byte sector"
                ),
            ));
        }
        if let Some(a) = &raw.arch
            && !ARCHES.contains(&a.as_str())
        {
            return Err(self.err(
                line,
                format!(
                    "[disk] arch {a:?} is unknown; use one of {}",
                    ARCHES.join(", ")
                ),
            ));
        }
        Ok(Disk {
            sector,
            alignment,
            arch: raw.arch.as_deref(),
            line,
        })
    }

    /// Apply variant `name`'s overrides to the raw partitions (and the
    /// disk size). Errors about an overridden key point at the override.
    fn apply_variant(
        &self,
        raw: &RawLayout,
        name: &str,
        parts: &mut [(std::ops::Range<usize>, RawPartition)],
        disk_size: &mut Option<u64>,
    ) -> Result<(), DiskError> {
        let Some(v) = raw.variant.get(name) else {
            let known: Vec<_> = raw.variant.keys().cloned().collect();
            return Err(DiskError::BadInput(format!(
                "{} has no variant {name:?}; known: {}",
                self.path.display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        };
        let vline = line_of(self.text, v.span().start);
        if let Some(s) = v.get_ref().size {
            *disk_size = Some(s.0);
        }
        for (key, o) in &v.get_ref().partition {
            let oline = line_of(self.text, o.span().start);
            let target = key
                .parse::<u32>()
                .ok()
                .and_then(|n| parts.iter_mut().find(|(_, p)| p.number == n));
            let Some((pspan, p)) = target else {
                return Err(self.err(
                    oline.max(vline),
                    format!(
                        "variant {name:?} overrides partition {key:?}, which the layout does not have"
                    ),
                ));
            };
            *pspan = o.span();
            let o = o.get_ref();
            if let Some(s) = o.size {
                p.size = s;
            }
            if o.start.is_some() {
                p.start = o.start;
            }
            if let Some(l) = &o.label {
                p.label = l.clone();
            }
            if o.role.is_some() {
                p.role = o.role;
            }
            if let Some(t) = &o.type_name {
                p.type_name = t.clone();
            }
            if o.uuid.is_some() {
                p.uuid = o.uuid;
            }
            if o.fs.is_some() {
                p.fs = o.fs.clone();
            }
        }
        Ok(())
    }

    /// Validate one partition and place it (at `next` unless it says
    /// where).
    fn place(
        &self,
        disk: &Disk<'_>,
        span: &std::ops::Range<usize>,
        p: &RawPartition,
        next: u64,
        first_usable: u64,
        seen: &mut Seen,
    ) -> Result<Partition, DiskError> {
        let sector = disk.sector;
        let who = format!("partition {} ({})", p.number, p.label);
        let kerr = |key: &str, msg: String| {
            self.err(key_line(self.text, span, key), format!("{who}: {msg}"))
        };
        if !(1..=128).contains(&p.number) {
            return Err(kerr("number", "number must be 1 to 128".into()));
        }
        if !seen.numbers.insert(p.number) {
            return Err(kerr("number", "the number is used twice".into()));
        }
        if p.label.is_empty() || p.label.encode_utf16().count() > 36 {
            return Err(kerr("label", "label must be 1 to 36 characters".into()));
        }
        if p.label.chars().any(char::is_control) {
            // A NUL would end the GPT name early; others garble listings.
            return Err(kerr(
                "label",
                "label must not contain control characters (NUL, tab, newline, ...)".into(),
            ));
        }
        if let Some(fs) = &p.fs
            && fs.parse::<crate::formats::fs::FsType>().is_err()
        {
            return Err(kerr(
                "fs",
                format!(
                    "fs {:?} is not one build_image makes; use ext4, erofs, squashfs or vfat (or leave it out for a raw partition)",
                    sdk_common::error::quote_untrusted(fs)
                ),
            ));
        }
        if !seen.labels.insert(p.label.clone()) {
            return Err(kerr("label", "the label is used twice".into()));
        }
        let role = p
            .role
            .unwrap_or_else(|| Role::from_label(&p.label, &p.type_name));
        if role != Role::Other
            && let Some(other) = seen.roles.insert(role, p.number)
        {
            return Err(kerr(
                "role",
                format!(
                    "role {} is already partition {other}'s; give each role to one partition (set `role = \"other\"` for extra ones)",
                    role.name()
                ),
            ));
        }
        let type_guid = resolve_type(&p.type_name, disk.arch).map_err(|m| kerr("type", m))?;
        if p.size.0 == 0 {
            return Err(kerr("size", "size is 0".into()));
        }
        if !p.size.0.is_multiple_of(sector) {
            return Err(kerr(
                "size",
                format!(
                    "size {} is not a multiple of the {sector}-byte sector",
                    p.size.0
                ),
            ));
        }
        let start = match p.start {
            Some(s) if !s.0.is_multiple_of(disk.alignment) => {
                return Err(kerr(
                    "start",
                    format!("start {} is not aligned to {} bytes", s.0, disk.alignment),
                ));
            }
            Some(s) if s.0 < first_usable => {
                return Err(kerr(
                    "start",
                    format!(
                        "start {} lies inside the primary GPT (first usable byte {first_usable})",
                        s.0
                    ),
                ));
            }
            Some(s) => s.0,
            None => next,
        };
        let (mut priority, mut tries, mut successful, mut verity) = (0u8, 0u8, false, false);
        for f in &p.features {
            match f.as_str() {
                "prioritize" => {
                    priority = 1;
                    successful = true;
                }
                "verity" => verity = true,
                _ => {
                    return Err(kerr(
                        "features",
                        format!("unknown feature {f:?}; known: prioritize, verity"),
                    ));
                }
            }
        }
        priority = p.priority.unwrap_or(priority);
        tries = p.tries.unwrap_or(tries);
        successful = p.successful.unwrap_or(successful);
        if priority > 15 || tries > 15 {
            return Err(kerr(
                if priority > 15 { "priority" } else { "tries" },
                "priority and tries must be 0 to 15 (4 bits each)".into(),
            ));
        }
        Ok(Partition {
            number: p.number,
            label: p.label.clone(),
            role,
            type_guid,
            type_name: p.type_name.clone(),
            uuid: p.uuid.unwrap_or_default(),
            uuid_fixed: p.uuid.is_some(),
            start,
            size: p.size.0,
            priority,
            tries,
            successful,
            verity,
            fs: p.fs.clone(),
        })
    }

    /// Check the placed partitions do not overlap and fit the disk;
    /// returns the disk size (given, or what they need).
    fn fit(
        &self,
        disk: &Disk<'_>,
        parts: &[Partition],
        spans: &BTreeMap<u32, std::ops::Range<usize>>,
        disk_size: Option<u64>,
    ) -> Result<u64, DiskError> {
        let sector = disk.sector;
        let mut by_start: Vec<&Partition> = parts.iter().collect();
        by_start.sort_by_key(|p| p.start);
        for w in by_start.windows(2) {
            if w[1].start < w[0].end() {
                return Err(self.err(
                    key_line(self.text, &spans[&w[1].number], "start"),
                    format!(
                        "partition {} ({}) at bytes {}..{} overlaps partition {} ({}) at {}..{}",
                        w[1].number,
                        w[1].label,
                        w[1].start,
                        w[1].end(),
                        w[0].number,
                        w[0].label,
                        w[0].start,
                        w[0].end()
                    ),
                ));
            }
        }
        let last = by_start.last().expect("at least one partition");
        let backup = ENTRY_ARRAY_BYTES + sector;
        let Some(s) = disk_size else {
            return Ok(align_up(last.end() + backup, disk.alignment));
        };
        if !s.is_multiple_of(sector) {
            return Err(self.err(
                disk.line,
                format!("disk size {s} is not a multiple of the {sector}-byte sector"),
            ));
        }
        if last.end() + backup > s {
            return Err(self.err(
                key_line(self.text, &spans[&last.number], "size"),
                format!(
                    "partition {} ({}) ends at byte {} but a {s}-byte disk has room up to {}; shrink it or grow the disk",
                    last.number,
                    last.label,
                    last.end(),
                    s.saturating_sub(backup)
                ),
            ));
        }
        Ok(s)
    }
}

impl Layout {
    /// Load and validate `path`, applying `variant`'s overrides (e.g.
    /// `Some("vm")`). Every error names the file and line, and the
    /// partition it is about. UUIDs not fixed in the file derive from
    /// [`DEFAULT_SEED`]; call [`Layout::derive_uuids`] to use another.
    ///
    /// ```no_run
    /// use sdk_tools::formats::disk::Layout;
    /// let layout = Layout::load("profiles/amd64-usr/disk-layout.toml".as_ref(), Some("vm"))?;
    /// let usr_a = layout.by_label("USR-A").unwrap();
    /// assert!(usr_a.verity);
    /// # Ok::<(), sdk_tools::formats::disk::DiskError>(())
    /// ```
    pub fn load(path: &Path, variant: Option<&str>) -> Result<Layout, DiskError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DiskError::BadInput(format!(
                "cannot read disk layout {}: {e}; check the path",
                path.display()
            ))
        })?;
        Layout::parse(&text, path, variant)
    }

    /// Like [`Layout::load`], from text already read (`path` is for
    /// messages).
    pub fn parse(text: &str, path: &Path, variant: Option<&str>) -> Result<Layout, DiskError> {
        let src = Source { text, path };
        let raw: RawLayout = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            src.err(line, e.message().trim().replace('\n', "; "))
        })?;
        let disk = src.disk(&raw.disk)?;
        if raw.partition.is_empty() {
            return Err(src.err(disk.line, "the layout has no [[partition]]".into()));
        }
        let mut parts: Vec<(std::ops::Range<usize>, RawPartition)> = raw
            .partition
            .iter()
            .map(|p| (p.span(), p.get_ref().clone()))
            .collect();
        let mut disk_size = raw.disk.size.map(|s| s.0);
        if let Some(name) = variant {
            src.apply_variant(&raw, name, &mut parts, &mut disk_size)?;
        }

        let first_usable = (2 + ENTRY_ARRAY_BYTES / disk.sector) * disk.sector;
        let mut next = align_up(first_usable, disk.alignment);
        let mut seen = Seen::default();
        let mut out = Vec::new();
        let mut spans = BTreeMap::new();
        for (span, p) in &parts {
            let placed = src.place(&disk, span, p, next, first_usable, &mut seen)?;
            next = align_up(placed.end(), disk.alignment);
            spans.insert(p.number, span.clone());
            out.push(placed);
        }
        let size = src.fit(&disk, &out, &spans, disk_size)?;
        out.sort_by_key(|p| p.number);
        let mut layout = Layout {
            sector_size: disk.sector,
            alignment: disk.alignment,
            size,
            disk_guid: raw.disk.guid.unwrap_or_default(),
            disk_guid_fixed: raw.disk.guid.is_some(),
            partitions: out,
            source: path.to_path_buf(),
            variant: variant.map(str::to_string),
        };
        layout.derive_uuids(DEFAULT_SEED);
        Ok(layout)
    }

    /// Give every UUID the layout does not fix a value derived from `seed`
    /// (a name-based v5 UUID of the seed and the partition label), so the
    /// same seed gives the same image and different seeds different ones.
    pub fn derive_uuids(&mut self, seed: &str) {
        if !self.disk_guid_fixed {
            self.disk_guid = derive(seed, "disk");
        }
        for p in &mut self.partitions {
            if !p.uuid_fixed {
                p.uuid = derive(seed, &format!("partition\0{}", p.label));
            }
        }
    }

    /// The partition with `role` (at most one has each role but
    /// [`Role::Other`]).
    pub fn by_role(&self, role: Role) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }

    pub fn by_number(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, variant: Option<&str>) -> Result<Layout, DiskError> {
        Layout::parse(text, Path::new("fixture.toml"), variant)
    }

    const GOOD: &str = r#"
[disk]
alignment = "2MiB"
arch = "x86-64"

[[partition]]
number = 1
label = "EFI-SYSTEM"
type = "efi"
size = "64MiB"

[[partition]]
number = 3
label = "USR-A"
type = "usr"
size = "8MiB"
uuid = "7130c94a-213a-4e5a-8e26-6cce9662f132"
features = ["prioritize", "verity"]

[[partition]]
number = 9
label = "ROOT"
type = "flatcar-resize"
size = 4194304

[variant.vm.partition.9]
size = "2MiB"
"#;

    #[test]
    fn roles_come_from_labels_or_are_given_once() {
        let l = parse(GOOD, None).unwrap();
        let roles: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Esp, Role::UsrA, Role::Root]);
        // A board that names its partitions otherwise says what they are.
        let renamed = GOOD
            .replace(
                "label = \"USR-A\"",
                "label = \"system-a\"\nrole = \"usr-a\"",
            )
            .replace("label = \"EFI-SYSTEM\"", "label = \"boot\"");
        let l = parse(&renamed, None).unwrap();
        assert_eq!(l.by_role(Role::UsrA).unwrap().label, "system-a");
        assert_eq!(l.by_role(Role::Esp).unwrap().label, "boot", "efi type");
        // Each role once.
        let twice = GOOD.replace("label = \"ROOT\"", "label = \"data\"\nrole = \"usr-a\"");
        let e = parse(&twice, None).unwrap_err().to_string();
        assert!(e.contains("role usr-a is already partition 3's"), "{e}");
        assert!(e.starts_with("fixture.toml:2"), "the line of role =: {e}");
        let unknown = GOOD.replace("label = \"ROOT\"", "label = \"ROOT\"\nrole = \"swap\"");
        let e = parse(&unknown, None).unwrap_err().to_string();
        assert!(e.contains("unknown variant `swap`"), "{e}");
    }

    #[test]
    fn places_types_and_attributes() {
        let l = parse(GOOD, None).unwrap();
        assert_eq!(l.partitions.len(), 3);
        let efi = &l.partitions[0];
        assert_eq!(efi.start, 2 << 20);
        let usr = l.by_label("USR-A").unwrap();
        assert_eq!(usr.start, (2 + 64) << 20);
        assert_eq!(
            usr.type_guid,
            Uuid::parse_str("8484680C-9521-48C6-9C11-B0720656F69E").unwrap()
        );
        assert_eq!(usr.attributes(), (1 << 48) | (1 << 56));
        assert!(usr.verity && usr.uuid_fixed);
        let root = l.by_number(9).unwrap();
        assert_eq!(root.start, (2 + 64 + 8) << 20);
        assert_eq!(l.size, (2 + 64 + 8 + 4 + 2) << 20);
        let vm = parse(GOOD, Some("vm")).unwrap();
        assert_eq!(vm.by_number(9).unwrap().size, 2 << 20);
    }

    #[test]
    fn uuids_derive_from_the_seed_unless_fixed() {
        let mut a = parse(GOOD, None).unwrap();
        let b = parse(GOOD, None).unwrap();
        assert_eq!(a, b);
        a.derive_uuids("other");
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.partitions[0].uuid, b.partitions[0].uuid);
        assert_eq!(a.partitions[1].uuid, b.partitions[1].uuid);
    }

    fn fails(text: &str, variant: Option<&str>, line: usize, needle: &str) {
        let e = parse(text, variant).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("fixture.toml:{line}: ")),
            "wanted line {line}: {e}"
        );
        assert!(e.contains(needle), "wanted {needle:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn unknown_filesystems_and_control_characters_in_labels_are_refused() {
        fails(
            &GOOD.replace("size = \"64MiB\"", "size = \"64MiB\"\nfs = \"ntfs\""),
            None,
            11,
            "fs \"ntfs\" is not one build_image makes",
        );
        // TOML's \u0000: a NUL that would end the GPT name early.
        fails(
            &GOOD.replace("label = \"EFI-SYSTEM\"", "label = \"EFI\\u0000SYSTEM\""),
            None,
            8,
            "must not contain control characters",
        );
    }

    #[test]
    fn invalid_layouts_name_file_line_and_partition() {
        fails(
            &GOOD.replace("type = \"efi\"", "type = \"efl\""),
            None,
            9,
            "partition 1 (EFI-SYSTEM): unknown partition type \"efl\"",
        );
        fails(
            &GOOD.replace("size = \"64MiB\"", "size = \"64MiB\"\nsise = 3"),
            None,
            11,
            "unknown field `sise`",
        );
        fails(
            &GOOD.replace("size = 4194304", "size = 4194304\nstart = \"3MiB\""),
            None,
            25,
            "partition 9 (ROOT): start 3145728 is not aligned",
        );
        fails(
            &GOOD.replace("size = 4194304", "size = 4194304\nstart = \"66MiB\""),
            None,
            25,
            "overlaps partition 3 (USR-A)",
        );
        fails(
            &GOOD.replace("size = \"8MiB\"", "size = 1000"),
            None,
            16,
            "partition 3 (USR-A): size 1000 is not a multiple",
        );
        fails(
            &GOOD.replace(
                "alignment = \"2MiB\"",
                "alignment = \"2MiB\"\nsize = \"70MiB\"",
            ),
            None,
            25,
            "partition 9 (ROOT) ends at byte",
        );
        fails(
            &GOOD.replace("[variant.vm.partition.9]", "[variant.vm.partition.7]"),
            Some("vm"),
            26,
            "does not have",
        );
        fails(
            &GOOD.replace("arch = \"x86-64\"\n", ""),
            None,
            14,
            "depends on the architecture",
        );
        fails(
            &GOOD.replace(
                "features = [\"prioritize\", \"verity\"]",
                "features = [\"fast\"]",
            ),
            None,
            18,
            "unknown feature",
        );
        fails(
            &GOOD.replace("number = 9", "number = 3"),
            None,
            21,
            "used twice",
        );
        let e = parse(GOOD, Some("metal")).unwrap_err();
        assert!(e.to_string().contains("known: vm"), "{e}");
    }

    #[test]
    fn board_layouts_load_in_every_variant() {
        for board in ["amd64-usr", "arm64-usr"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../profiles")
                .join(board)
                .join("disk-layout.toml");
            for variant in [None, Some("vm"), Some("container")] {
                let l = Layout::load(&path, variant).unwrap();
                let labels: Vec<_> = l.partitions.iter().map(|p| p.label.as_str()).collect();
                assert_eq!(
                    labels,
                    [
                        "EFI-SYSTEM",
                        "BIOS-BOOT",
                        "USR-A",
                        "USR-B",
                        "OEM",
                        "OEM-CONFIG",
                        "ROOT"
                    ]
                );
                // Today's layouts name no roles: every one follows from its label.
                for (role, label) in [
                    (Role::Esp, "EFI-SYSTEM"),
                    (Role::BiosBoot, "BIOS-BOOT"),
                    (Role::UsrA, "USR-A"),
                    (Role::UsrB, "USR-B"),
                    (Role::Oem, "OEM"),
                    (Role::OemConfig, "OEM-CONFIG"),
                    (Role::Root, "ROOT"),
                ] {
                    assert_eq!(l.by_role(role).unwrap().label, label);
                }
                let usr = l.by_label("USR-A").unwrap();
                assert!(usr.verity && usr.priority == 1 && usr.successful);
                assert_eq!(l.by_label("USR-B").unwrap().attributes(), 0);
                assert!(l.partitions.iter().all(|p| p.start.is_multiple_of(2 << 20)));
            }
            let base = Layout::load(&path, None).unwrap();
            assert_eq!(base.by_label("USR-A").unwrap().size, 2 << 30);
            assert_eq!(base.by_label("EFI-SYSTEM").unwrap().size, 1 << 30);
            assert_eq!(base.by_label("OEM-CONFIG").unwrap().size, 64 << 20);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("2MiB").unwrap().0, 2 << 20);
        assert_eq!(Size::parse("512").unwrap().0, 512);
        assert!(Size::parse("2MB").is_err());
        assert!(Size::parse("x").is_err());
    }
}
