//! The hook where build_image fills the EFI system partition. build_image
//! knows the OS tree, the verity root hash and the partitions; what to put
//! on the ESP (bootloader, kernel, initramfs, entries) is the boot code's
//! business. This function is the one place the two meet.

use std::path::{Path, PathBuf};

use anyhow::Result;

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
    /// The board's extra kernel command line words.
    pub extra_cmdline: &'a [String],
    /// The board's machine: the init, the boot loader and the serial
    /// console are that architecture's.
    pub target: crate::boot::initramfs::Target,
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

/// The ESP being filled: systemd-boot, the kernel and the initramfs are
/// staged on another thread as soon as the OS tree is ([`start`]); the
/// boot entry follows once USR-A's root hash is known ([`EspJob::finish`]).
/// All of it is `boot::esp`'s work.
pub struct EspJob {
    spec: crate::boot::esp::EspSpec,
    /// Taken by `finish`; a job dropped unfinished (the build failed)
    /// waits for its thread, so nothing writes into a removed directory.
    staged: Option<
        std::thread::JoinHandle<Result<crate::boot::esp::StagedEsp, crate::boot::BootError>>,
    >,
    done: Option<crate::boot::esp::StagedEsp>,
}

impl Drop for EspJob {
    fn drop(&mut self) {
        if let Some(h) = self.staged.take() {
            let _ = h.join();
        }
    }
}

/// Start filling the ESP (`inputs.usr_hash` and `usr_hash_offset` are
/// not read yet).
pub fn start(inputs: &EspInputs<'_>) -> EspJob {
    use crate::boot::esp::{EspSpec, PartRef, stage_esp_files};
    let spec = EspSpec {
        staging_root: inputs.staging_root.to_path_buf(),
        esp_dir: inputs.esp_dir.to_path_buf(),
        usr_hash: inputs.usr_hash.to_string(),
        usr_hash_offset: Some(inputs.usr_hash_offset),
        usr_a: PartRef {
            label: "USR-A".into(),
            uuid: Some(inputs.usr_a_uuid.to_string()),
        },
        root: PartRef {
            label: "ROOT".into(),
            uuid: inputs.root_uuid.map(|u| u.to_string()),
        },
        title: inputs.title.clone(),
        extra_cmdline: inputs.extra_cmdline.to_vec(),
        kernel_version: None,
        mtime: u32::try_from(inputs.epoch).unwrap_or(u32::MAX),
        target: inputs.target.clone(),
    };
    let s = spec.clone();
    EspJob {
        spec,
        staged: Some(std::thread::spawn(move || stage_esp_files(&s))),
        done: None,
    }
}

impl EspJob {
    fn wait(&mut self) -> Result<&crate::boot::esp::StagedEsp> {
        if let Some(h) = self.staged.take() {
            let staged = h
                .join()
                .map_err(|_| anyhow::anyhow!("filling the ESP failed"))?
                .map_err(sdk_common::error::classify)?;
            self.done = Some(staged);
        }
        Ok(self.done.as_ref().expect("staged once"))
    }

    /// Wait for the kernel and initramfs; what USR carries of them (see
    /// `boot::slotboot`): its `boot.conf`, the initramfs file to add, and
    /// the unpacked kernel to add when the package's is compressed.
    pub fn slot_boot(
        &mut self,
    ) -> Result<(crate::boot::slotboot::SlotBoot, PathBuf, Option<PathBuf>)> {
        let spec = self.spec.clone();
        Ok(self.wait()?.slot_boot(&spec))
    }

    /// Add USR-A's boot entry for `usr_hash` (hash area at
    /// `usr_hash_offset`) and say what the ESP holds.
    pub fn finish(mut self, usr_hash: &str, usr_hash_offset: u64) -> Result<EspOutcome> {
        self.wait()?;
        let staged = self.done.take().expect("staged once");
        let spec = crate::boot::esp::EspSpec {
            usr_hash: usr_hash.to_string(),
            usr_hash_offset: Some(usr_hash_offset),
            ..self.spec.clone()
        };
        let report =
            crate::boot::esp::finish_esp(&spec, staged).map_err(sdk_common::error::classify)?;
        Ok(EspOutcome {
            cmdline: report.cmdline,
            kernel_version: report.kernel_version,
            files: report.files.into_iter().map(PathBuf::from).collect(),
        })
    }
}
