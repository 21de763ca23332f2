//! The kernel and initramfs a USR slot boots with, carried in the slot.
//!
//! Flatcar keeps one kernel per slot on the ESP and its update agent
//! copies the new one there. Here USR itself carries them: the kernel
//! where its package put it (`/usr/boot/vmlinuz-<v>` or
//! `/usr/lib/modules/<v>/vmlinuz`), our initramfs as
//! `/usr/lib/sdk-boot/initrd`, and `/usr/lib/sdk-boot/boot.conf` naming
//! both with an id (a digest of the two). So an update's kernel is under
//! the slot's dm-verity and its signed root hash, the agent never writes
//! the ESP (vfat survives a power cut badly), and direct kernel boot and
//! UEFI work the same way:
//!
//! - The boot loader (systemd-boot, or QEMU's `-kernel`) starts the kernel
//!   it has, whose command line says which one that is (`sdk.boot=<id>`).
//! - The init picks the slot by the GPT and mounts its USR. When the
//!   slot's `boot.conf` names another id, the init loads the slot's kernel
//!   and initramfs with `kexec_file_load` and starts them with the same
//!   command line plus `sdk.boot=<their id>` and `sdk.usr-slot=<label>`;
//!   the init of the new initramfs boots that slot without choosing again
//!   (the try was already counted) and never kexecs a second time.
//!
//! The price: a boot whose slot's kernel is not the boot loader's starts
//! a kernel twice. Both are the same when nothing changed the kernel.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Where in USR (relative to the root of the OS) the slot's boot files are.
pub const DIR: &str = "usr/lib/sdk-boot";
/// The initramfs built for the slot's kernel.
pub const INITRD: &str = "usr/lib/sdk-boot/initrd";
/// The slot's kernel unpacked, when its package ships it compressed
/// (arm64's gzip-compressed Image).
pub const KERNEL: &str = "usr/lib/sdk-boot/linux";
/// What the slot boots with: `kernel=`, `initrd=`, `version=`, `id=`.
pub const CONF: &str = "usr/lib/sdk-boot/boot.conf";
/// The command line word naming the running kernel + initramfs.
pub const CMDLINE_ID: &str = "sdk.boot";
/// The command line word of a kexec'd boot: the slot is already chosen.
pub const CMDLINE_SLOT: &str = "sdk.usr-slot";

/// A slot's `boot.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBoot {
    /// Absolute path of the kernel in the OS (`/usr/boot/vmlinuz-<v>`).
    pub kernel: String,
    /// Absolute path of the initramfs in the OS.
    pub initrd: String,
    /// `uname -r` of the kernel.
    pub version: String,
    /// [`boot_id`] of the two.
    pub id: String,
}

impl SlotBoot {
    pub fn render(&self) -> String {
        format!(
            "kernel={}\ninitrd={}\nversion={}\nid={}\n",
            self.kernel, self.initrd, self.version, self.id
        )
    }

    pub fn parse(text: &str) -> Option<SlotBoot> {
        let get = |k: &str| super::value_of(text, k).filter(|s| !s.is_empty());
        let conf = SlotBoot {
            kernel: get("kernel")?,
            initrd: get("initrd")?,
            version: get("version").unwrap_or_default(),
            id: get("id")?,
        };
        (conf.kernel.starts_with("/usr/") && conf.initrd.starts_with("/usr/")).then_some(conf)
    }
}

/// The id of a kernel and initramfs pair: the first 128 bits of
/// sha256(sha256(kernel) || sha256(initrd)), in hex.
pub fn boot_id(kernel: &Path, initrd: &Path) -> std::io::Result<String> {
    let mut outer = Sha256::new();
    for p in [kernel, initrd] {
        let mut f = std::fs::File::open(p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        outer.update(h.finalize());
    }
    Ok(outer.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `cmdline` for the slot's own kernel: every word but our two, then
/// `sdk.boot=<id>` and `sdk.usr-slot=<label>`.
pub fn kexec_cmdline(cmdline: &str, id: &str, label: &str) -> String {
    let mut words: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| {
            let key = w.split('=').next().unwrap_or("");
            key != CMDLINE_ID && key != CMDLINE_SLOT
        })
        .collect();
    let id = format!("{CMDLINE_ID}={id}");
    let slot = format!("{CMDLINE_SLOT}={label}");
    words.push(&id);
    words.push(&slot);
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_round_trips_and_needs_paths_in_usr() {
        let c = SlotBoot {
            kernel: "/usr/boot/vmlinuz-6.1.0-1-amd64".into(),
            initrd: format!("/{INITRD}"),
            version: "6.1.0-1-amd64".into(),
            id: "00ff".into(),
        };
        assert_eq!(SlotBoot::parse(&c.render()), Some(c.clone()));
        let outside = c.render().replace("/usr/boot", "/boot");
        assert_eq!(SlotBoot::parse(&outside), None);
        assert_eq!(SlotBoot::parse("kernel=/usr/x\n"), None);
    }

    #[test]
    fn the_kexec_cmdline_replaces_our_words_and_keeps_the_rest() {
        let c = kexec_cmdline(
            "root=PARTLABEL=ROOT sdk.boot=aa console=ttyS0 sdk.usr-slot=USR-A",
            "bb",
            "USR-B",
        );
        assert_eq!(
            c,
            "root=PARTLABEL=ROOT console=ttyS0 sdk.boot=bb sdk.usr-slot=USR-B"
        );
    }

    #[test]
    fn the_id_covers_both_files() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("k"), d.path().join("i"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let a = boot_id(&k, &i).unwrap();
        assert_eq!(a.len(), 32);
        std::fs::write(&i, b"initrd2").unwrap();
        assert_ne!(boot_id(&k, &i).unwrap(), a);
    }
}
