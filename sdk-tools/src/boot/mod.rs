//! Booting the image: the initramfs (our own init with dm-verity over USR),
//! the ESP contents (systemd-boot with A/B entries), `image_to_vm` (qcow2 +
//! QEMU launcher), `test_image` (boot headless, wait for the first-boot
//! marker) and the A/B slot switch used after writing an update payload.
//!
//! Not here: building filesystems, verity trees and the GPT (image core),
//! assembling the image (build_image, which calls `esp::populate_esp`).

pub mod agent;
pub mod cpio;
pub mod disk;
pub mod dm;
pub mod esp;
pub mod fetch;
pub mod gptprio;
pub mod guest;
pub mod ignition;
pub mod init;
pub mod initramfs;
pub mod kmod;
pub mod netroot;
pub mod serve;
pub mod slot;
pub mod slotboot;
pub mod vm;

use std::path::PathBuf;

/// The value of `key=value` line `key` in `text` (the init's slot file,
/// the release file, a slot's `boot.conf`).
pub(crate) fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

/// What the example OS's first-boot script prints on the console once the
/// OS is up (`demo-os: first boot OK: x86_64: usr=/dev/mapper/usr: ...`);
/// `test_image --marker` takes another.
pub const BOOT_MARKER: &str = "first boot OK";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Usage(String),
    #[error("no bootable kernel in {root}: {why}")]
    NoKernel { root: PathBuf, why: String },
    #[error(
        "kernel {kernel} has no {module} (neither built in nor a module under {dir}); boot needs it: use a kernel with it enabled (e.g. Debian's linux-image-cloud-amd64)"
    )]
    MissingModule {
        kernel: String,
        module: String,
        dir: PathBuf,
    },
    #[error("kernel module {path}: {why}")]
    BadModule { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    BadElf { path: PathBuf, why: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
}

impl sdk_common::error::BadInput for BootError {
    /// Errors that are the user's to fix (exit code 2).
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BootError::Usage(_) | BootError::NoKernel { .. } | BootError::MissingModule { .. }
        )
    }
}
