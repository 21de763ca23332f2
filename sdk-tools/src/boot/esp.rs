//! The EFI system partition's contents: systemd-boot as the removable-media
//! loader (`EFI/BOOT/BOOTX64.EFI`), the kernel and our initramfs, and one
//! Boot Loader Specification entry per bootable USR slot.
//!
//! A/B selection, compared with Flatcar's GRUB `gptprio`:
//! - Flatcar: GRUB reads the GPT attributes of the USR partitions, boots
//!   the one with the highest priority that has tries left or is marked
//!   successful, decrements its tries in the GPT, and passes
//!   `mount.usr`/`verity.usr` for it.
//! - Here: the GPT attributes stay the source of truth (build_image and
//!   `sdk-tools boot set-slot` write them), and the ESP mirrors them as
//!   entries systemd-boot understands: priority becomes the `sort-key`
//!   (higher priority sorts first), tries left become systemd-boot's boot
//!   counter in the file name (`usr-b+1.conf`), successful means no
//!   counter. systemd-boot boots the first entry that has tries left or
//!   no counter, and decrements the counter by renaming the file before
//!   booting (`usr-b+0-1.conf`), so a slot that never gets marked good
//!   falls behind the other one: the same rollback as gptprio.
//! - The GPT stays the truth: sdk-init applies gptprio on every boot
//!   (`boot::gptprio`, tries written back) and boots the slot it picks,
//!   whichever entry systemd-boot started; the update agent marks a slot
//!   successful in the GPT. The ESP holds the kernel and initramfs USR-A
//!   was built with; a slot whose USR carries another pair is started
//!   from it by kexec (`boot::slotboot`), and every entry says which pair
//!   it boots (`sdk.boot=`).

use std::path::{Path, PathBuf};

use super::BootError;
use super::initramfs;
use super::kmod;

/// A partition as the kernel command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    /// GPT partition name, e.g. `USR-A`.
    pub label: String,
    /// GPT unique partition GUID, when known: preferred, labels can clash
    /// with a second disk carrying the same OS.
    pub uuid: Option<String>,
}

impl PartRef {
    pub fn label(l: &str) -> PartRef {
        PartRef {
            label: l.to_string(),
            uuid: None,
        }
    }
    pub fn cmdline(&self) -> String {
        match &self.uuid {
            Some(u) => format!("PARTUUID={}", u.to_ascii_lowercase()),
            None => format!("PARTLABEL={}", self.label),
        }
    }
}

/// Everything the ESP hook needs from build_image.
#[derive(Debug, Clone)]
pub struct EspSpec {
    /// The image's staging root (the kernel and its modules are found here).
    pub staging_root: PathBuf,
    /// Directory to fill; becomes the vfat ESP.
    pub esp_dir: PathBuf,
    /// dm-verity root hash of USR-A.
    pub usr_hash: String,
    /// Byte offset of the verity superblock inside USR-A (the filesystem
    /// size). `None` lets the initramfs read it from the filesystem.
    pub usr_hash_offset: Option<u64>,
    pub usr_a: PartRef,
    pub root: PartRef,
    /// Title shown in the boot menu, e.g. "Demo OS 1.2.3".
    pub title: String,
    /// Extra kernel command line words.
    pub extra_cmdline: Vec<String>,
    /// Pick a kernel when the root has several.
    pub kernel_version: Option<String>,
    /// Timestamp for the initramfs members (SOURCE_DATE_EPOCH).
    pub mtime: u32,
    /// The machine the image boots on (the board's architecture).
    pub target: initramfs::Target,
}

/// What `populate_esp` wrote.
#[derive(Debug, Clone)]
pub struct EspReport {
    pub kernel_version: String,
    pub modules: Vec<String>,
    /// Paths relative to the ESP root.
    pub files: Vec<String>,
    pub cmdline: String,
}

/// A USR slot's boot entry, derived from its GPT attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// `a` or `b`.
    pub slot: char,
    pub part: PartRef,
    pub usr_hash: String,
    pub usr_hash_offset: Option<u64>,
    /// GPT priority (bits 48-51): 0 never boots, 15 highest.
    pub priority: u8,
    /// GPT tries left (bits 52-55).
    pub tries: u8,
    /// GPT successful (bit 56).
    pub successful: bool,
    pub title: String,
    /// `linux` and `initrd` paths on the ESP.
    pub linux: String,
    pub initrd: String,
    /// Every other command line word (console, root=, extras).
    pub base_cmdline: Vec<String>,
}

impl SlotEntry {
    /// File name under `loader/entries/`, or `None` when the slot must not
    /// boot (priority 0, or neither tries left nor successful).
    pub fn file_name(&self) -> Option<String> {
        if self.priority == 0 || (!self.successful && self.tries == 0) {
            return None;
        }
        Some(if self.successful {
            format!("usr-{}.conf", self.slot)
        } else {
            format!("usr-{}+{}.conf", self.slot, self.tries)
        })
    }

    pub fn cmdline(&self) -> String {
        let mut words = vec![
            "mount.usr=/dev/mapper/usr".to_string(),
            format!("verity.usr={}", self.part.cmdline()),
            format!("verity.usrhash={}", self.usr_hash),
            format!("usrhash={}", self.usr_hash),
        ];
        if let Some(o) = self.usr_hash_offset {
            words.push(format!("verity.usrhashoffset={o}"));
        }
        words.extend(self.base_cmdline.iter().cloned());
        words.join(" ")
    }

    pub fn render(&self) -> String {
        format!(
            "title {} (USR-{})\nsort-key usr-{:02}\nlinux {}\ninitrd {}\noptions {}\n",
            self.title,
            self.slot.to_ascii_uppercase(),
            15 - self.priority.min(15),
            self.linux,
            self.initrd,
            self.cmdline()
        )
    }
}

/// A parsed Boot Loader Specification entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderEntry {
    pub file_name: String,
    pub title: String,
    pub sort_key: Option<String>,
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

impl LoaderEntry {
    pub fn parse(file_name: &str, text: &str) -> LoaderEntry {
        let mut e = LoaderEntry {
            file_name: file_name.to_string(),
            title: String::new(),
            sort_key: None,
            linux: String::new(),
            initrd: String::new(),
            options: String::new(),
        };
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(char::is_whitespace) else {
                continue;
            };
            let v = v.trim().to_string();
            match k {
                "title" => e.title = v,
                "sort-key" => e.sort_key = Some(v),
                "linux" => e.linux = v,
                "initrd" => e.initrd = v,
                "options" => e.options = v,
                _ => {}
            }
        }
        e
    }

    /// systemd-boot's boot counter from the file name: `name+LEFT[-DONE].conf`.
    pub fn tries_left(&self) -> Option<u32> {
        let stem = self.file_name.strip_suffix(".conf")?;
        let (_, counter) = stem.rsplit_once('+')?;
        counter.split('-').next()?.parse().ok()
    }
}

/// The entry systemd-boot picks with no menu interaction: entries with no
/// tries left sort last, then by `sort-key`, then by file name descending.
pub fn default_entry(entries: &[LoaderEntry]) -> Option<&LoaderEntry> {
    let mut v: Vec<&LoaderEntry> = entries.iter().collect();
    v.sort_by(|a, b| {
        (a.tries_left() == Some(0))
            .cmp(&(b.tries_left() == Some(0)))
            .then_with(|| match (&a.sort_key, &b.sort_key) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| b.file_name.cmp(&a.file_name))
    });
    v.into_iter().next()
}

/// The systemd-boot binary for `arch`, from the image root when it ships
/// one, else from the build environment (Debian's systemd-boot-efi).
pub fn find_systemd_boot(staging_root: &Path, arch: &str) -> Result<PathBuf, BootError> {
    let efi_arch = efi_arch(arch)?;
    let rel = format!("usr/lib/systemd/boot/efi/systemd-boot{efi_arch}.efi");
    [staging_root.join(&rel), Path::new("/").join(&rel)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| BootError::Usage(format!(
            "no systemd-boot{efi_arch}.efi in the image root or at /{rel}; install systemd-boot-efi in the SDK (apt-get install systemd-boot-efi)"
        )))
}

fn efi_arch(arch: &str) -> Result<&'static str, BootError> {
    match arch {
        "x86_64" | "amd64" => Ok("x64"),
        "aarch64" | "arm64" => Ok("aa64"),
        o => Err(BootError::Usage(format!(
            "no UEFI boot support for architecture {o}"
        ))),
    }
}

/// The serial console of `arch`'s QEMU and generic machines: the 16550
/// UART on PCs, the PL011 on ARM's `virt` machine and SBSA servers.
pub fn serial_console(arch: &str) -> &'static str {
    match arch {
        "aarch64" | "arm64" => "ttyAMA0",
        _ => "ttyS0",
    }
}

/// Command line words every entry carries besides the USR ones. The
/// last `console=` is `/dev/console`: the serial one, where test_image
/// reads the boot.
pub fn base_cmdline(root: &PartRef, arch: &str, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("root={}", root.cmdline()),
        "rootfstype=ext4".to_string(),
        "console=tty0".to_string(),
        format!("console={},115200n8", serial_console(arch)),
        "panic=10".to_string(),
        // Our initramfs sets up USR's verity device; systemd's generator
        // would read usrhash= and wait for partitions named after it.
        "systemd.verity=no".to_string(),
    ];
    v.extend(extra.iter().cloned());
    v
}

/// The build_image hook: fill `spec.esp_dir` so the disk boots by itself
/// under UEFI. Writes `EFI/BOOT/BOOTX64.EFI` (systemd-boot),
/// `loader/loader.conf`, `sdk/<kver>/linux`, `sdk/<kver>/initrd` (built by
/// `boot::initramfs::build` for the root's kernel) and
/// `loader/entries/usr-a.conf` (USR-A: priority 1, successful, as
/// build_image marks it in the GPT). Fails with a usage error when the
/// root has no kernel or the kernel lacks a needed module.
///
/// ```no_run
/// # use sdk_tools::boot::esp::*;
/// let report = populate_esp(&EspSpec {
///     staging_root: "/build/amd64-usr/staging".into(),
///     esp_dir: "/tmp/esp".into(),
///     usr_hash: "ab12...".into(),
///     usr_hash_offset: Some(1_073_741_824),
///     usr_a: PartRef { label: "USR-A".into(), uuid: Some("7130c94a-...".into()) },
///     root: PartRef::label("ROOT"),
///     title: "Demo OS 1.0.0".into(),
///     extra_cmdline: vec![],
///     kernel_version: None,
///     mtime: 0,
///     target: sdk_tools::boot::initramfs::Target::host(),
/// })?;
/// # Ok::<(), sdk_tools::boot::BootError>(())
/// ```
pub fn populate_esp(spec: &EspSpec) -> Result<EspReport, BootError> {
    let staged = stage_esp_files(spec)?;
    finish_esp(spec, staged)
}

/// The part of the ESP that does not depend on USR-A's root hash.
#[derive(Debug)]
pub struct StagedEsp {
    kernel_version: String,
    modules: Vec<String>,
    kdir: String,
    efi: String,
    /// The kernel inside the staging root.
    kernel_image: PathBuf,
    /// `slotboot::boot_id` of the kernel and the initramfs.
    boot_id: String,
    /// The kernel on the ESP is `kernel_image` unpacked (see
    /// [`copy_kernel`]); USR then carries that unpacked copy too.
    unpacked: bool,
}

impl StagedEsp {
    /// What USR carries of these boot files (see `boot::slotboot`): the
    /// conf, where the initramfs to add as its `initrd` is, and the
    /// kernel to add as its `linux` when the package's own is compressed
    /// (kexec and the EFI stub take the arm64 Image unpacked only).
    pub fn slot_boot(
        &self,
        spec: &EspSpec,
    ) -> (super::slotboot::SlotBoot, PathBuf, Option<PathBuf>) {
        let kdir = spec.esp_dir.join(&self.kdir);
        let (kernel, add) = if self.unpacked {
            (
                format!("/{}", super::slotboot::KERNEL),
                Some(kdir.join("linux")),
            )
        } else {
            let k = self
                .kernel_image
                .strip_prefix(&spec.staging_root)
                .unwrap_or(&self.kernel_image);
            (format!("/{}", k.display()), None)
        };
        let conf = super::slotboot::SlotBoot {
            kernel,
            initrd: format!("/{}", super::slotboot::INITRD),
            version: self.kernel_version.clone(),
            id: self.boot_id.clone(),
        };
        (conf, kdir.join("initrd"), add)
    }
}

/// First half of [`populate_esp`]: systemd-boot, the kernel, the
/// initramfs and `loader.conf` — everything but the boot entry, so it can
/// be built while USR-A and its hash tree are (`spec.usr_hash` is not
/// read).
pub fn stage_esp_files(spec: &EspSpec) -> Result<StagedEsp, BootError> {
    let arch = spec.target.arch.as_str();
    let kernel = kmod::find_kernel(&spec.staging_root, spec.kernel_version.as_deref())?;
    let sdboot = find_systemd_boot(&spec.staging_root, arch)?;
    let efi = efi_arch(arch)?.to_ascii_uppercase();
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Io { what, path, source }
    };

    let kdir = format!("sdk/{}", kernel.version);
    let dest = spec.esp_dir.join(&kdir);
    std::fs::create_dir_all(&dest).map_err(io("create", &dest))?;
    let initrd = initramfs::build(
        &kernel,
        &spec.target,
        &dest.join("initrd"),
        spec.mtime,
        &spec.staging_root,
    )?;
    let unpacked = copy_kernel(&kernel.image, &dest.join("linux"), arch)
        .map_err(io("copy the kernel", &kernel.image))?;
    let boot_id = super::slotboot::boot_id(&dest.join("linux"), &dest.join("initrd"))
        .map_err(io("read", &dest))?;

    let boot_dir = spec.esp_dir.join("EFI/BOOT");
    std::fs::create_dir_all(&boot_dir).map_err(io("create", &boot_dir))?;
    std::fs::copy(&sdboot, boot_dir.join(format!("BOOT{efi}.EFI")))
        .map_err(io("copy systemd-boot", &sdboot))?;
    let loader = spec.esp_dir.join("loader");
    std::fs::create_dir_all(loader.join("entries")).map_err(io("create", &loader))?;
    // No menu (timeout 0): the first entry in systemd-boot's order boots.
    std::fs::write(
        loader.join("loader.conf"),
        "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n",
    )
    .map_err(io("write", &loader))?;
    Ok(StagedEsp {
        kernel_version: kernel.version,
        modules: initrd.modules,
        kdir,
        efi,
        kernel_image: kernel.image,
        boot_id,
        unpacked,
    })
}

/// Copy the kernel to the ESP. An arm64 kernel as Debian ships it is the
/// Image gzip-compressed, which GRUB unpacks itself; systemd-boot starts
/// kernels as EFI programs and `kexec_file_load` on arm64 takes the Image
/// format only, so it is unpacked here (the Image carries the EFI stub's
/// PE header). Returns whether it was unpacked.
pub fn copy_kernel(src: &Path, dst: &Path, arch: &str) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let gz = {
        use std::io::Read;
        let mut f = std::fs::File::open(src)?;
        f.read(&mut magic)? == 2 && magic == [0x1f, 0x8b]
    };
    if !(gz && matches!(arch, "aarch64" | "arm64")) {
        std::fs::copy(src, dst)?;
        return Ok(false);
    }
    let mut input =
        flate2::read::GzDecoder::new(std::io::BufReader::new(std::fs::File::open(src)?));
    let mut out = std::io::BufWriter::new(std::fs::File::create(dst)?);
    std::io::copy(&mut input, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(true)
}

/// Second half of [`populate_esp`]: USR-A's boot entry, with its hash.
pub fn finish_esp(spec: &EspSpec, staged: StagedEsp) -> Result<EspReport, BootError> {
    let StagedEsp {
        kernel_version,
        modules,
        kdir,
        efi,
        boot_id,
        ..
    } = staged;
    let mut words = base_cmdline(&spec.root, &spec.target.arch, &spec.extra_cmdline);
    words.push(format!("{}={boot_id}", super::slotboot::CMDLINE_ID));
    let entry = SlotEntry {
        slot: 'a',
        part: spec.usr_a.clone(),
        usr_hash: spec.usr_hash.clone(),
        usr_hash_offset: spec.usr_hash_offset,
        priority: 1,
        tries: 0,
        successful: true,
        title: spec.title.clone(),
        linux: format!("/{kdir}/linux"),
        initrd: format!("/{kdir}/initrd"),
        base_cmdline: words,
    };
    let name = entry.file_name().unwrap_or_else(|| "usr-a.conf".into());
    let path = spec.esp_dir.join("loader/entries").join(&name);
    std::fs::write(&path, entry.render()).map_err(|source| BootError::Io {
        what: "write",
        path: path.clone(),
        source,
    })?;
    Ok(EspReport {
        kernel_version,
        modules,
        files: vec![
            format!("EFI/BOOT/BOOT{efi}.EFI"),
            "loader/loader.conf".into(),
            format!("loader/entries/{name}"),
            format!("{kdir}/linux"),
            format!("{kdir}/initrd"),
        ],
        cmdline: entry.cmdline(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(slot: char, priority: u8, tries: u8, successful: bool) -> SlotEntry {
        SlotEntry {
            slot,
            part: PartRef::label(&format!("USR-{}", slot.to_ascii_uppercase())),
            usr_hash: "ab".repeat(32),
            usr_hash_offset: Some(4096),
            priority,
            tries,
            successful,
            title: "Demo".into(),
            linux: "/sdk/6.1/linux".into(),
            initrd: "/sdk/6.1/initrd".into(),
            base_cmdline: base_cmdline(&PartRef::label("ROOT"), "x86_64", &[]),
        }
    }

    fn entry(s: &SlotEntry) -> LoaderEntry {
        LoaderEntry::parse(&s.file_name().unwrap(), &s.render())
    }

    #[test]
    fn gptprio_semantics_map_to_systemd_boot_order() {
        let a = slot('a', 1, 0, true);
        let b = slot('b', 2, 1, false);
        assert_eq!(a.file_name().unwrap(), "usr-a.conf");
        assert_eq!(b.file_name().unwrap(), "usr-b+1.conf");
        // B has the higher priority and a try left: it boots.
        let picked = default_entry(&[entry(&a), entry(&b)]).unwrap().clone();
        assert_eq!(picked.file_name, "usr-b+1.conf");
        assert!(picked.options.contains("verity.usr=PARTLABEL=USR-B"));
        // systemd-boot renamed it after a boot that never got blessed: A again.
        let mut spent = entry(&b);
        spent.file_name = "usr-b+0-1.conf".into();
        assert_eq!(
            default_entry(&[entry(&a), spent]).unwrap().file_name,
            "usr-a.conf"
        );
        // Priority 0 or no tries and not successful: no entry at all.
        assert_eq!(slot('b', 0, 3, false).file_name(), None);
        assert_eq!(slot('b', 2, 0, false).file_name(), None);
    }

    #[test]
    fn entry_carries_flatcar_style_cmdline() {
        let a = slot('a', 1, 0, true);
        let text = a.render();
        assert!(text.contains("sort-key usr-14"), "{text}");
        assert!(
            text.contains("mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-A"),
            "{text}"
        );
        assert!(
            text.contains(&format!("usrhash={}", "ab".repeat(32))),
            "{text}"
        );
        assert!(text.contains("root=PARTLABEL=ROOT"), "{text}");
        // systemd must not set up USR's verity a second time.
        assert!(text.contains(" systemd.verity=no"), "{text}");
    }
}
