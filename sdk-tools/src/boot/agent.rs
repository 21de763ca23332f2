//! The update agent inside the running OS (`sdk-update`, a multi-call
//! name of this binary that build_image installs into USR): install a
//! signed update into the USR slot the machine is not running, and mark
//! the running slot good once the boot proved healthy.
//!
//! `apply` in order, so that a crash or power cut at any moment leaves
//! the running slot bootable and a repeated `apply` succeeds:
//!
//! 1. the metadata's signature against the keys in USR, then the board,
//!    the version (newer than the running one unless allowed) and the
//!    payload's size and sha256: nothing is written before all hold;
//! 2. the other slot is made unbootable (priority 0, its record wiped);
//! 3. the payload is written into it, synced, and read back through the
//!    dm-verity tree against the signed root hash;
//! 4. its record (the signed metadata) is written, synced;
//! 5. its GPT attributes: priority above the running slot, tries left,
//!    not successful — the one write that makes it boot next.
//!
//! The running slot is the one the init chose (`/run/sdk-init/usr-slot`),
//! never a guess; the init spends a try on each boot of a slot that is
//! not successful (see `gptprio`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::formats::disk::gpt::{self, Entry};
use crate::formats::update::{self, Metadata};

use super::fetch::{self, Origin};
use super::value_of;

/// What the init left about the slot it booted.
pub const SLOT_FILE: &str = "/run/sdk-init/usr-slot";
/// What build_image says about the OS in USR (`key=value` lines:
/// `os-id`, `version`, `board`).
pub const RELEASE_FILE: &str = "usr/share/sdk-update/release";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request or the update is wrong; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The machine does not look like one booted by sdk-init.
    #[error("{0}")]
    NotHere(String),
    #[error(transparent)]
    Update(#[from] update::UpdateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl sdk_common::error::BadInput for AgentError {
    fn is_bad_input(&self) -> bool {
        match self {
            AgentError::Refused(_) | AgentError::NotHere(_) => true,
            AgentError::Update(e) => e.is_bad_input(),
            AgentError::Io { .. } => false,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// The booted slot, as the init recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub label: String,
    pub number: u32,
    pub disk: PathBuf,
}

impl Booted {
    pub fn read(path: &Path) -> Result<Booted, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::NotHere(format!(
                "{}: {e}; this OS was not booted by sdk-init's A/B slot choice",
                path.display()
            ))
        })?;
        let get = |k: &str| value_of(&text, k);
        match (get("label"), get("number"), get("disk")) {
            (Some(label), Some(n), Some(disk)) => Ok(Booted {
                label,
                number: n.parse().map_err(|_| {
                    AgentError::NotHere(format!("{}: number `{n}` is not one", path.display()))
                })?,
                disk: PathBuf::from(disk),
            }),
            _ => Err(AgentError::NotHere(format!(
                "{}: it lacks label, number or disk",
                path.display()
            ))),
        }
    }
}

/// The OS a USR tree holds (its release file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Release {
    pub os_id: String,
    pub version: String,
    pub board: String,
}

impl Release {
    pub fn text(&self) -> String {
        format!(
            "os-id={}\nversion={}\nboard={}\n",
            self.os_id, self.version, self.board
        )
    }

    pub fn parse(text: &str) -> Release {
        let get = |k: &str| value_of(text, k).unwrap_or_default();
        Release {
            os_id: get("os-id"),
            version: get("version"),
            board: get("board"),
        }
    }
}

/// `a` is newer than `b`: dot- and dash-separated parts compared as
/// numbers where both are numbers, else as text.
pub fn newer(a: &str, b: &str) -> bool {
    let parts = |s: &str| -> Vec<String> { s.split(['.', '-', '+']).map(str::to_string).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord == std::cmp::Ordering::Greater;
        }
    }
    pa.len() > pb.len()
}

/// One USR slot, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub label: String,
    pub number: u32,
    pub booted: bool,
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    /// The version its record names (a slot installed by `apply`).
    pub version: Option<String>,
    /// In words: what the GPT says about it.
    pub state: String,
}

fn usr_slots(table: &gpt::Table, booted: &Booted) -> Result<Vec<Entry>, AgentError> {
    let ty = table
        .entries
        .iter()
        .find(|e| e.number == booted.number)
        .map(|e| e.type_guid)
        .ok_or_else(|| {
            AgentError::NotHere(format!(
                "{} has no partition {} ({})",
                booted.disk.display(),
                booted.number,
                booted.label
            ))
        })?;
    Ok(table
        .entries
        .iter()
        .filter(|e| e.type_guid == ty)
        .cloned()
        .collect())
}

fn read_table(disk: &Path) -> Result<gpt::Table, AgentError> {
    let f = File::open(disk).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            AgentError::Refused(format!(
                "cannot read the partition table of {}: run sdk-update as root (sudo sdk-update ...)",
                disk.display()
            ))
        } else {
            io(format!("open {}", disk.display()))(e)
        }
    })?;
    gpt::Table::decode(|off, buf| f.read_exact_at(buf, off))
        .map_err(|e| AgentError::NotHere(format!("{}: {e}", disk.display())))
}

/// The partition's device (`/dev/vda4`) from the disk's.
fn part_dev(disk: &Path, number: u32) -> PathBuf {
    let d = disk.to_string_lossy();
    let sep = if d.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("{d}{sep}{number}"))
}

/// A slot's record, unverified (status shows what it says).
fn record_of(dev: &Path) -> Option<(Vec<u8>, [u8; 64])> {
    let mut f = File::open(dev).ok()?;
    let size = f.seek(SeekFrom::End(0)).ok()?;
    let mut b = vec![0u8; update::RECORD_BYTES as usize];
    f.read_exact_at(&mut b, update::record_offset(size)).ok()?;
    update::decode_record(&b)
}

/// Every USR slot, with what happened to it in words.
pub fn status(booted: &Booted, release: &Release) -> Result<Vec<SlotStatus>, AgentError> {
    let table = read_table(&booted.disk)?;
    let slots = usr_slots(&table, booted)?;
    let running_prio = slots
        .iter()
        .find(|e| e.number == booted.number)
        .map_or(0, Entry::priority);
    Ok(slots
        .iter()
        .map(|e| {
            let is_booted = e.number == booted.number;
            let version = if is_booted {
                Some(release.version.clone())
            } else {
                record_of(&part_dev(&booted.disk, e.number))
                    .and_then(|(b, _)| serde_json::from_slice::<Metadata>(&b).ok())
                    .map(|m| m.version)
            };
            let state = match (is_booted, e.priority(), e.tries(), e.successful()) {
                (true, _, _, true) => "running, marked good".to_string(),
                (true, _, t, false) => format!(
                    "running, not marked good yet ({t} tries left; `sdk-update mark-good` or the boot's health check marks it)"
                ),
                (false, 0, _, _) => "not bootable (priority 0)".to_string(),
                (false, p, 0, false) if p > running_prio => {
                    "tried and did not become healthy: the boot came back to the running slot"
                        .to_string()
                }
                (false, p, t, false) if p > running_prio => {
                    format!("installed, boots next ({t} tries)")
                }
                (false, _, _, true) => "good, the fallback".to_string(),
                (false, _, t, false) => format!("not good, {t} tries left"),
            };
            SlotStatus {
                label: e.label.clone(),
                number: e.number,
                booted: is_booted,
                priority: e.priority(),
                tries: e.tries(),
                successful: e.successful(),
                version,
                state,
            }
        })
        .collect())
}

/// Mark the booted slot successful (its try count no longer matters).
pub fn mark_good(booted: &Booted) -> Result<(), AgentError> {
    let table = read_table(&booted.disk)?;
    let e = usr_slots(&table, booted)?
        .into_iter()
        .find(|e| e.number == booted.number)
        .ok_or_else(|| AgentError::NotHere(format!("no slot {}", booted.label)))?;
    if e.successful() {
        return Ok(());
    }
    crate::formats::disk::set_attributes(&booted.disk, e.number, e.with_ab(e.priority(), 0, true))
        .map_err(|err| AgentError::Refused(err.to_string()))
}

/// What `apply` needs.
pub struct ApplyRequest<'a> {
    /// `<name>_update.json` (its `.sig` beside it): a file or a URL.
    pub source: &'a Origin,
    /// The payload [default: the one the metadata names, beside it].
    pub payload: Option<&'a Origin>,
    /// Where fetched metadata is kept (`/run/sdk-update`).
    pub work_dir: &'a Path,
    pub keys_dir: &'a Path,
    pub release: &'a Release,
    pub booted: &'a Booted,
    pub allow_downgrade: bool,
    /// Tries the new slot gets.
    pub tries: u8,
    /// Told each step as it starts (`checked`, `writing USR-B`, ...).
    pub progress: &'a dyn Fn(&str),
}

/// The metadata at `source` (fetched into `work_dir` when it is a URL),
/// its signature checked against the keys in `keys_dir`.
fn fetch_metadata(
    source: &Origin,
    work_dir: &Path,
    keys_dir: &Path,
) -> Result<(PathBuf, Metadata), AgentError> {
    let missing = |what: &dyn std::fmt::Display| {
        AgentError::Refused(format!(
            "{what}: no such file; give the update metadata (`<name>_update.json`, its `.sig` beside it)"
        ))
    };
    if let Origin::File(p) = source
        && !p.is_file()
    {
        return Err(missing(&p.display()));
    }
    let metadata = fetch::local_metadata(source, work_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(&e),
        std::io::ErrorKind::InvalidInput => AgentError::Refused(e.to_string()),
        _ => io(format!("fetch {source}"))(e),
    })?;
    let keys = update::load_public_keys(keys_dir)?;
    let (meta, _) = update::verify(&metadata, &keys, None)?;
    Ok((metadata, meta))
}

/// The payload against the signed size and sha256, read whole.
pub fn check_payload(meta: &Metadata, payload: &Origin) -> Result<(), AgentError> {
    match payload {
        Origin::File(p) => Ok(update::check_payload(meta, p)?),
        Origin::Url(_) => {
            let r = payload.open().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => AgentError::Refused(format!(
                    "{e}; give the payload {} with --payload, or put it beside the metadata",
                    meta.payload.name
                )),
                _ => io(format!("fetch {payload}"))(e),
            })?;
            Ok(update::check_payload_stream(
                meta,
                Path::new(&payload.to_string()),
                r,
            )?)
        }
    }
}

/// What `check` found at the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Nothing newer than the running version.
    UpToDate { offered: String },
    /// A newer version, not installed yet.
    Available { version: String },
    /// Already in the other slot, which boots next.
    Installed { version: String, label: String },
    /// Already in the other slot, which was tried and did not become
    /// healthy: not installed again by `check --apply`.
    Failed { version: String, label: String },
}

/// What the update at `source` is to this machine (its signature checked).
pub fn check(
    source: &Origin,
    work_dir: &Path,
    keys_dir: &Path,
    release: &Release,
    booted: &Booted,
) -> Result<Offer, AgentError> {
    let (_, meta) = fetch_metadata(source, work_dir, keys_dir)?;
    if meta.board != release.board || !newer(&meta.version, &release.version) {
        return Ok(Offer::UpToDate {
            offered: format!("{} for {}", meta.version, meta.board),
        });
    }
    let slots = status(booted, release)?;
    let running_prio = slots.iter().find(|x| x.booted).map_or(0, |x| x.priority);
    for s in slots {
        if s.booted || s.version.as_deref() != Some(meta.version.as_str()) {
            continue;
        }
        if s.priority > running_prio && !s.successful && s.tries == 0 {
            return Ok(Offer::Failed {
                version: meta.version,
                label: s.label,
            });
        }
        if s.priority > running_prio {
            return Ok(Offer::Installed {
                version: meta.version,
                label: s.label,
            });
        }
    }
    Ok(Offer::Available {
        version: meta.version,
    })
}

/// Write `payload` into the slot open as `out` (device `dev`, GPT name
/// `label`) from its start, sync it, and read it back through its hash
/// tree against the signed root hash. `apply`'s third step, on its own
/// for the benchmark (`bench/apply.sh`).
pub fn write_slot(
    meta: &Metadata,
    payload: &Origin,
    out: &mut File,
    dev: &Path,
    label: &str,
    progress: &dyn Fn(&str),
) -> Result<(), AgentError> {
    progress(&format!("writing {label} ({} bytes)", meta.payload.size));
    let mut src = payload.open().map_err(io(format!("open {payload}")))?;
    out.seek(SeekFrom::Start(0))
        .map_err(io(format!("seek {}", dev.display())))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut copied = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(format!(
            "read {payload} ({copied} of {} bytes written; {label} stays unbootable)",
            meta.payload.size
        )))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(io(format!("write {}", dev.display())))?;
        copied += n as u64;
    }
    if copied != meta.payload.size {
        return Err(AgentError::Refused(format!(
            "{payload} changed while it was read ({copied} of {} bytes); {label} stays unbootable, apply again",
            meta.payload.size
        )));
    }
    out.sync_all()
        .map_err(io(format!("sync {}", dev.display())))?;
    progress(&format!("verifying {label} against the signed root hash"));
    let root = crate::formats::verity::parse_root_hash(&meta.usr.root_hash)
        .map_err(|e| AgentError::Refused(e.to_string()))?;
    let opts = crate::formats::verity::Options {
        hash_offset: meta.usr.hash_offset,
        data_blocks: Some(meta.usr.data_blocks),
        ..Default::default()
    };
    crate::formats::verity::verify(dev, dev, &opts, &root).map_err(|e| {
        AgentError::Refused(format!(
            "{} does not read back as the signed payload ({e}); {label} stays unbootable",
            dev.display()
        ))
    })?;
    Ok(())
}

/// Install the update into the slot not running; returns its label.
pub fn apply(r: &ApplyRequest<'_>) -> Result<String, AgentError> {
    // 1. Everything checked before a byte is written.
    let (metadata, meta) = fetch_metadata(r.source, r.work_dir, r.keys_dir)?;
    let metadata = metadata.as_path();
    let payload = r
        .payload
        .cloned()
        .unwrap_or_else(|| r.source.sibling(&meta.payload.name));
    if meta.board != r.release.board {
        return Err(AgentError::Refused(format!(
            "{}: the update is for board {}, this machine runs {}; use the update built for {}",
            r.source, meta.board, r.release.board, r.release.board
        )));
    }
    if !r.allow_downgrade && !newer(&meta.version, &r.release.version) {
        return Err(AgentError::Refused(format!(
            "{}: version {} is not newer than the running {}; pass --allow-downgrade to install it anyway",
            r.source, meta.version, r.release.version
        )));
    }
    check_payload(&meta, &payload)?;
    let table = read_table(&r.booted.disk)?;
    let slots = usr_slots(&table, r.booted)?;
    let running = slots
        .iter()
        .find(|e| e.number == r.booted.number)
        .cloned()
        .ok_or_else(|| AgentError::NotHere(format!("no slot {}", r.booted.label)))?;
    let target = slots
        .iter()
        .find(|e| e.number != r.booted.number)
        .cloned()
        .ok_or_else(|| {
            AgentError::NotHere(format!(
                "{} has one USR slot: there is nowhere to install an update",
                r.booted.disk.display()
            ))
        })?;
    let dev = part_dev(&r.booted.disk, target.number);
    let size = (target.last_lba + 1 - target.first_lba) * table.sector_size;
    if meta.payload.size + update::RECORD_BYTES > size {
        return Err(AgentError::Refused(format!(
            "the payload is {} bytes and {} holds {}; the update needs a bigger USR partition",
            meta.payload.size, target.label, size
        )));
    }
    let bytes = std::fs::read(metadata).map_err(io(format!("read {}", metadata.display())))?;
    let sig_path = update::sig_path(metadata);
    let sig: [u8; 64] = std::fs::read(&sig_path)
        .map_err(io(format!("read {}", sig_path.display())))?
        .try_into()
        .map_err(|_| AgentError::Refused(format!("{} is not 64 bytes", sig_path.display())))?;
    // The record is built now so a metadata too big for it stops here.
    let record = update::encode_record(&bytes, &sig).map_err(AgentError::Refused)?;

    (r.progress)(&format!(
        "checked: {} {} for {}, signed; installing into {}",
        meta.os_id, meta.version, meta.board, target.label
    ));
    // 2. The target may not boot while it is being written.
    crate::formats::disk::set_attributes(
        &r.booted.disk,
        target.number,
        target.with_ab(0, 0, false),
    )
    .map_err(|e| AgentError::Refused(e.to_string()))?;
    let mut out = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&dev)
        .map_err(io(format!("open {}", dev.display())))?;
    out.write_all_at(
        &vec![0u8; update::RECORD_BYTES as usize],
        update::record_offset(size),
    )
    .and_then(|_| out.sync_data())
    .map_err(io(format!("wipe the record of {}", dev.display())))?;

    // 3. The payload, synced and read back through its hash tree.
    write_slot(&meta, &payload, &mut out, &dev, &target.label, r.progress)?;

    // 4. The record, then 5. the attributes that make it boot next.
    (r.progress)(&format!("recording {}", target.label));
    out.write_all_at(&record, update::record_offset(size))
        .and_then(|_| out.sync_all())
        .map_err(io(format!("write the record of {}", dev.display())))?;
    drop(out);
    (r.progress)(&format!("making {} boot next", target.label));
    let priority = (running.priority().max(1) + 1).min(15);
    if priority <= running.priority() {
        // The running slot already has the top priority: lower it by one.
        crate::formats::disk::set_attributes(
            &r.booted.disk,
            running.number,
            running.with_ab(14, running.tries(), running.successful()),
        )
        .map_err(|e| AgentError::Refused(e.to_string()))?;
    }
    crate::formats::disk::set_attributes(
        &r.booted.disk,
        target.number,
        target.with_ab(priority, r.tries.clamp(1, 15), false),
    )
    .map_err(|e| AgentError::Refused(e.to_string()))?;
    Ok(target.label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(newer("2.0.1", "2.0.0"));
        assert!(newer("2.10.0", "2.9.9"));
        assert!(newer("2.0.0.1", "2.0.0"));
        assert!(!newer("2.0.0", "2.0.0"));
        assert!(!newer("1.9", "2.0"));
    }

    #[test]
    fn the_slot_file_is_what_the_init_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("usr-slot");
        std::fs::write(
            &p,
            "label=USR-B\nnumber=4\ndisk=/dev/vda\nsuccessful=0\ntries-left=0\n",
        )
        .unwrap();
        let b = Booted::read(&p).unwrap();
        assert_eq!(
            b,
            Booted {
                label: "USR-B".into(),
                number: 4,
                disk: "/dev/vda".into()
            }
        );
        assert_eq!(part_dev(Path::new("/dev/vda"), 4), Path::new("/dev/vda4"));
        assert_eq!(
            part_dev(Path::new("/dev/nvme0n1"), 4),
            Path::new("/dev/nvme0n1p4")
        );
        let r = Release::parse(
            &Release {
                os_id: "debian".into(),
                version: "2.0.0".into(),
                board: "amd64-usr".into(),
            }
            .text(),
        );
        assert_eq!(r.version, "2.0.0");
    }
}
