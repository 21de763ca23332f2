//! The outputs besides the disk image (`build_image --format pxe|iso`):
//! a netboot set (kernel, initramfs, the USR image with its verity tree,
//! an iPXE script) and a hybrid live ISO (xorriso, booting under UEFI
//! through systemd-boot on an El Torito ESP). Both carry the same USR tree
//! and the same initramfs as the disk image; the init takes USR from the
//! network or the medium (`boot::netroot`) and keeps ROOT in memory.
//!
//! build_image's stages make the files; this module says what they are
//! called and holds the pieces only these formats have.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::CommandExt;

/// What `build_image --format` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// The GPT disk image with A/B USR partitions (and its update payload).
    #[default]
    Disk,
    /// A netboot set: kernel, initramfs, USR image and iPXE script.
    Pxe,
    /// A hybrid ISO booting under UEFI (from a CD or a USB stick).
    Iso,
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Disk => "disk",
            OutputFormat::Pxe => "pxe",
            OutputFormat::Iso => "iso",
        }
    }

    /// The kernel modules the init needs for this format (a usage error
    /// before anything is built names the one the board's kernel lacks).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            OutputFormat::Disk => &[],
            OutputFormat::Pxe => crate::boot::initramfs::NETBOOT_MODULES,
            OutputFormat::Iso => crate::boot::initramfs::ISO_MODULES,
        }
    }
}

/// Where the USR image is on the ISO.
pub const ISO_USR: &str = "/sdk/usr.img";
/// Where the ESP image is on the ISO (the El Torito EFI boot image).
const ISO_ESP: &str = "boot/esp.img";
/// The ISO's volume id.
pub const ISO_VOLUME: &str = "SDK_LIVE";

/// The kernel command line of a live boot: the board's words, ROOT in
/// memory, USR's root hash and hash offset, and where USR is.
pub fn cmdline(base: &[String], usr_hash: &str, hash_offset: u64, usr_url: &str) -> String {
    let mut words: Vec<String> = base
        .iter()
        .filter(|w| !w.starts_with("root=") && !w.starts_with("rootfstype="))
        .cloned()
        .collect();
    words.insert(0, "root=tmpfs".into());
    words.push(format!("usrhash={usr_hash}"));
    words.push(format!("verity.usrhashoffset={hash_offset}"));
    words.push(format!("sdk.usr-url={usr_url}"));
    words.join(" ")
}

/// The iPXE script of a netboot set named `name`: the kernel, the
/// initramfs and (fetched by the init) the USR image, all from `${base}`
/// — the TFTP server that gave the script unless the script is run with
/// `base` set (e.g. to an HTTP folder). The DHCP lease iPXE got goes to
/// the init as `ip=`.
pub fn ipxe_script(title: &str, name: &str, words: &str) -> String {
    format!(
        "#!ipxe\n\
         # {title}: netboot set {name} (build_image --format pxe).\n\
         # Serve this folder over TFTP and boot this script, or set base to\n\
         # the folder's http:// URL (ending in /) before chaining it.\n\
         isset ${{base}} || set base tftp://${{next-server}}/\n\
         echo Booting {name} from ${{base}}\n\
         kernel ${{base}}{name}.vmlinuz {words} ip=${{ip}}::${{gateway}}:${{netmask}}:::off\n\
         initrd ${{base}}{name}.initrd\n\
         boot\n"
    )
}

/// `from` zstd-compressed into `to` (level 3): an ext4 USR image as a
/// netboot set sends it; the init unpacks a `.zst` URL as it arrives.
pub fn compress(from: &Path, to: &Path) -> Result<()> {
    let mut input =
        std::fs::File::open(from).with_context(|| format!("open {}", from.display()))?;
    let out = std::fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    let mut enc = zstd::Encoder::new(std::io::BufWriter::new(out), 3)
        .with_context(|| format!("compress into {}", to.display()))?;
    std::io::copy(&mut input, &mut enc)
        .with_context(|| format!("compress into {}", to.display()))?;
    let mut w = enc
        .finish()
        .with_context(|| format!("compress into {}", to.display()))?;
    std::io::Write::flush(&mut w).with_context(|| format!("write {}", to.display()))?;
    Ok(())
}

/// Write the hybrid ISO `out`: `esp_img` as the El Torito EFI boot image
/// (also a GPT partition, for USB sticks) and `usr_img` as [`ISO_USR`],
/// from a tree staged in `stage` (links to them). Every time in the ISO
/// is `epoch`: xorriso reads SOURCE_DATE_EPOCH for the volume, and takes
/// the files' and folders' own times, set here.
pub fn write_iso(
    out: &Path,
    stage: &Path,
    esp_img: &Path,
    usr_img: &Path,
    epoch: u64,
) -> Result<()> {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let place = |from: &Path, inside: &str| -> Result<()> {
        let to = stage.join(inside.trim_start_matches('/'));
        let dir = to.parent().expect("a path inside the ISO");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::hard_link(from, &to)
            .or_else(|_| std::fs::copy(from, &to).map(drop))
            .with_context(|| format!("stage {} for the ISO", from.display()))
    };
    place(esp_img, ISO_ESP)?;
    place(usr_img, ISO_USR)?;
    for p in [
        stage.join(ISO_ESP),
        stage.join(ISO_USR.trim_start_matches('/')),
        stage.join("boot"),
        stage.join("sdk"),
        stage.to_path_buf(),
    ] {
        std::fs::File::open(&p)
            .and_then(|h| h.set_modified(when))
            .with_context(|| format!("set the time of {}", p.display()))?;
    }
    std::process::Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(out)
        .args(["-V", ISO_VOLUME, "-R"])
        .args(["-e", ISO_ESP, "-no-emul-boot", "-isohybrid-gpt-basdat"])
        .arg(stage)
        .run_capture()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_command_line_keeps_root_in_memory() {
        let base: Vec<String> = [
            "root=PARTLABEL=ROOT",
            "rootfstype=ext4",
            "console=ttyS0,115200n8",
        ]
        .map(String::from)
        .to_vec();
        let c = cmdline(&base, "ab", 4096, "cdrom:/sdk/usr.img");
        assert_eq!(
            c,
            "root=tmpfs console=ttyS0,115200n8 usrhash=ab verity.usrhashoffset=4096 sdk.usr-url=cdrom:/sdk/usr.img"
        );
    }

    #[test]
    fn the_ipxe_script_fetches_everything_from_base() {
        let words = cmdline(&[], "ab", 4096, "${base}demo_dev_pxe_usr.squashfs");
        let s = ipxe_script("demo 1.0", "demo_dev_pxe", &words);
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(s.contains("isset ${base} || set base tftp://${next-server}/\n"));
        assert!(s.contains(
            "kernel ${base}demo_dev_pxe.vmlinuz root=tmpfs usrhash=ab verity.usrhashoffset=4096 sdk.usr-url=${base}demo_dev_pxe_usr.squashfs ip=${ip}::${gateway}:${netmask}:::off\n"
        ), "{s}");
        assert!(s.contains("initrd ${base}demo_dev_pxe.initrd\nboot\n"));
    }
}
