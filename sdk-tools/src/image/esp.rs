//! The hook where build_image fills the EFI system partition. build_image
//! knows the OS tree, the verity root hash and the partitions; what to put
//! on the ESP (bootloader, kernel, initramfs, entries) is the boot code's
//! business. This function is the one place the two meet.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::UsageError;

/// What the ESP needs to know about the image being built.
#[derive(Debug, Clone)]
pub struct EspInputs<'a> {
    /// The staged OS tree (already /usr-only: kernel under `usr/boot` or
    /// `usr/lib/modules/<v>/vmlinuz`, modules under `usr/lib/modules`).
    pub staging_root: &'a Path,
    /// Directory to fill; becomes the vfat ESP.
    pub esp_dir: &'a Path,
    /// dm-verity root hash of USR-A (hex).
    pub usr_hash: &'a str,
    /// Byte offset of the hash area inside USR-A (= filesystem size).
    pub usr_hash_offset: u64,
    pub usr_a_uuid: uuid::Uuid,
    pub usr_b_uuid: uuid::Uuid,
    pub root_uuid: Option<uuid::Uuid>,
    /// Menu title, e.g. "demo 1.2.0 (developer)".
    pub title: String,
    /// SOURCE_DATE_EPOCH for anything the hook generates.
    pub epoch: u64,
}

/// What the hook put on the ESP.
#[derive(Debug, Clone)]
pub struct EspOutcome {
    /// The kernel command line of the default (USR-A) entry.
    pub cmdline: String,
    pub kernel_version: String,
    /// Files written, relative to the ESP root.
    pub files: Vec<PathBuf>,
}

/// The kernel command line selecting USR-A under verity (Flatcar's words
/// and systemd's, so either initramfs finds it).
pub fn cmdline(inputs: &EspInputs<'_>) -> String {
    let mut words = vec![
        "mount.usr=/dev/mapper/usr".to_string(),
        format!("verity.usr=PARTUUID={}", inputs.usr_a_uuid),
        format!("verity.usrhash={}", inputs.usr_hash),
        format!("usrhash={}", inputs.usr_hash),
        format!("verity.usrhashoffset={}", inputs.usr_hash_offset),
        "mount.usrflags=ro".to_string(),
    ];
    words.push(match inputs.root_uuid {
        Some(u) => format!("root=PARTUUID={u}"),
        None => "root=PARTLABEL=ROOT".to_string(),
    });
    words.join(" ")
}

/// Fill the ESP for an image whose USR-A carries `usr_hash`: the kernel
/// and a Boot Loader Specification entry with the verity command line.
pub fn populate(inputs: &EspInputs<'_>) -> Result<EspOutcome> {
    let root = inputs.staging_root;
    let mut kernels: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("usr/lib/modules")) {
        for e in rd.flatten() {
            let v = e.file_name().to_string_lossy().into_owned();
            for cand in [
                e.path().join("vmlinuz"),
                root.join(format!("usr/boot/vmlinuz-{v}")),
            ] {
                if cand.is_file() {
                    kernels.push((v.clone(), cand));
                    break;
                }
            }
        }
    }
    kernels.sort();
    let Some((version, image)) = kernels.pop() else {
        return Err(UsageError(
            "the OS tree has no kernel (looked for /usr/lib/modules/<version>/vmlinuz and /usr/boot/vmlinuz-<version>); add a kernel package to the OS meta-package".into(),
        )
        .into());
    };
    let kdir = PathBuf::from(format!("sdk/{version}"));
    std::fs::create_dir_all(inputs.esp_dir.join(&kdir))
        .with_context(|| format!("create {}", inputs.esp_dir.join(&kdir).display()))?;
    std::fs::copy(&image, inputs.esp_dir.join(kdir.join("linux")))
        .with_context(|| format!("copy the kernel {}", image.display()))?;
    let entries = inputs.esp_dir.join("loader/entries");
    std::fs::create_dir_all(&entries).with_context(|| format!("create {}", entries.display()))?;
    let cmdline = cmdline(inputs);
    let entry = format!(
        "title {}\nsort-key usr-a\nlinux /{}/linux\noptions {cmdline}\n",
        inputs.title,
        kdir.display()
    );
    std::fs::write(entries.join("usr-a.conf"), entry)
        .with_context(|| format!("write {}", entries.join("usr-a.conf").display()))?;
    Ok(EspOutcome {
        cmdline,
        kernel_version: version,
        files: vec![
            kdir.join("linux"),
            PathBuf::from("loader/entries/usr-a.conf"),
        ],
    })
}
