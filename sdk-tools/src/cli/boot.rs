//! Command line of the boot verbs: `image_to_vm`, `test_image`, and the
//! `boot` group (initramfs, esp, set-slot) for building pieces by hand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::boot::BOOT_MARKER;
use crate::boot::esp::{EspSpec, PartRef};
use crate::boot::vm::{Format, VmSpec};

/// `--format`: how the VM boots ([`Format`]), as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// Direct kernel boot (kernel + initramfs from the ESP).
    Qemu,
    /// Boot the disk through UEFI firmware (OVMF) and systemd-boot.
    #[value(name = "qemu_uefi")]
    QemuUefi,
    /// A netboot set (build_image --format pxe) over QEMU's TFTP and iPXE.
    Pxe,
    /// A live ISO (build_image --format iso) from -cdrom under UEFI.
    Iso,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Qemu => Format::Qemu,
            FormatArg::QemuUefi => Format::QemuUefi,
            FormatArg::Pxe => Format::Pxe,
            FormatArg::Iso => Format::Iso,
        }
    }
}
use sdk_common::error::classify;

/// Which image: a board's latest build, or a file.
#[derive(Debug, Args)]
pub struct ImageSel {
    /// Board whose latest image to use (`__build__/images/<board>/latest/`).
    #[arg(long, required_unless_present = "image")]
    pub board: Option<String>,
    /// A disk image file instead.
    #[arg(long, conflicts_with = "board")]
    pub image: Option<PathBuf>,
}

/// The board named on the command line, from the repo here (or the
/// shipped profiles).
fn load_board(b: &str) -> anyhow::Result<crate::board::Board> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let repo = crate::image::repo::Repo::find(&cwd).ok();
    crate::board::Board::load(repo.as_ref().map(|r| r.root.as_path()), b)
        .map_err(sdk_common::error::bad_input)
}

/// The machine `--board` names (its profile's arch), else this one.
fn target_of(board: Option<&str>) -> anyhow::Result<crate::boot::initramfs::Target> {
    Ok(match board {
        Some(b) => crate::boot::initramfs::Target::of(&load_board(b)?),
        None => crate::boot::initramfs::Target::host(),
    })
}

impl ImageSel {
    /// The image, and the architecture its board's profile says it is for
    /// (with `--image`, the image itself tells).
    fn resolve(&self, format: Format) -> anyhow::Result<(PathBuf, Option<String>)> {
        match (&self.image, &self.board) {
            (Some(i), _) => Ok((i.clone(), None)),
            (None, Some(b)) => {
                let board = load_board(b)?;
                let image = crate::boot::vm::find_board_output(b, format).map_err(classify)?;
                Ok((image, Some(board.arch)))
            }
            (None, None) => Err(anyhow::Error::new(crate::exit::UsageError(
                "pass --board B or --image FILE".into(),
            ))),
        }
    }
}

/// Make a QEMU disk (a qcow2 overlay over the raw image, or with --compress
/// a standalone compressed qcow2 to ship) and a launcher script.
///
/// Examples:
///   image_to_vm --board amd64-usr                    # direct kernel boot
///   image_to_vm --board amd64-usr --format qemu_uefi # OVMF + systemd-boot
///   image_to_vm --board amd64-usr --compress         # a qcow2 that stands alone
///   image_to_vm --board arm64-usr --format qemu_uefi # qemu-system-aarch64 -M virt, AAVMF
///   image_to_vm --board amd64-usr --format pxe       # the pxe/ set: QEMU's TFTP + iPXE, no disk
///   ./__build__/images/amd64-usr/latest/<name>_qemu.sh -nographic
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ImageToVmArgs {
    #[command(flatten)]
    pub sel: ImageSel,
    /// How the VM boots: qemu (kernel and initramfs given to QEMU), qemu_uefi (OVMF, systemd-boot),
    /// pxe (a netboot set over TFTP) or iso (a live ISO).
    #[arg(long, value_enum, default_value = "qemu")]
    pub format: FormatArg,
    /// Output directory (default: next to the image).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// UEFI firmware code (default: Debian's OVMF_CODE_4M.fd; AAVMF_CODE.fd for arm64).
    #[arg(long)]
    pub ovmf_code: Option<PathBuf>,
    /// UEFI variable store template (default: Debian's OVMF_VARS_4M.fd; AAVMF_VARS.fd for arm64).
    #[arg(long)]
    pub ovmf_vars: Option<PathBuf>,
    /// Write a standalone compressed qcow2 (to ship; seconds) instead of an
    /// overlay backed by the raw image beside it (to boot here; instant).
    #[arg(long)]
    pub compress: bool,
}

pub fn image_to_vm(a: ImageToVmArgs) -> anyhow::Result<()> {
    let (image, board_arch) = a.sel.resolve(a.format.into())?;
    let out = crate::boot::vm::image_to_vm(&VmSpec {
        image: image.clone(),
        format: a.format.into(),
        out_dir: a.output,
        ovmf_code: a.ovmf_code,
        ovmf_vars: a.ovmf_vars,
        compress: a.compress,
        board_arch,
    })
    .map_err(classify)
    .with_context(|| format!("image_to_vm {}", image.display()))?;
    match a.format {
        FormatArg::Pxe | FormatArg::Iso => println!("boots:    {}", out.disk.display()),
        _ => println!("disk:     {}", out.disk.display()),
    }
    println!("launcher: {}", out.launcher.display());
    println!("run it:   {} -nographic", out.launcher.display());
    Ok(())
}

/// Boot the image headless and wait for its first-boot marker on the
/// serial console. The console is saved next to the image.
///
/// Examples:
///   test_image --board amd64-usr
///   test_image --board amd64-usr --format qemu_uefi --timeout 900
///   test_image --board amd64-usr --format pxe        # build_image --format pxe first
///   test_image --board amd64-usr --format iso        # build_image --format iso first
///   test_image --board arm64-usr --tests tests/    # emulated: minutes, not seconds
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TestImageArgs {
    #[command(flatten)]
    pub sel: ImageSel,
    /// How the VM boots: qemu (kernel and initramfs given to QEMU), qemu_uefi (OVMF, systemd-boot),
    /// pxe (a netboot set over QEMU's TFTP and iPXE) or iso (a live ISO from -cdrom).
    #[arg(long, value_enum, default_value = "qemu")]
    pub format: FormatArg,
    /// Seconds to wait for the marker.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The console line that means the OS is up.
    #[arg(long, default_value = BOOT_MARKER)]
    pub marker: String,
    /// Extra QEMU arguments (after the launcher's `--`).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// An Ignition v3 config for the first boot (checked before QEMU starts).
    #[arg(long, value_name = "FILE")]
    pub ignition: Option<PathBuf>,
    /// After the marker, run each script of DIR in the guest over ssh (as the
    /// user `sdk-test`, provisioned through Ignition with a key made for the
    /// run) and print TAP; exit 1 naming the tests that failed.
    #[arg(long, value_name = "DIR")]
    pub tests: Option<PathBuf>,
    /// Seconds each test may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub test_timeout: u64,
    /// Also write the test results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE", requires = "tests")]
    pub junit: Option<PathBuf>,
    /// Boot N VMs and share the tests among them (each VM a fresh first
    /// boot; about 1 GiB of memory each).
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16), requires = "tests")]
    pub jobs: u16,
}

pub fn test_image(a: TestImageArgs) -> anyhow::Result<()> {
    let (image, board_arch) = a.sel.resolve(a.format.into())?;
    if let Some(i) = &a.ignition {
        crate::boot::ignition::check(i).map_err(classify)?;
    }
    if let Some(j) = &a.junit {
        let dir = j
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(anyhow::Error::new(crate::exit::UsageError(format!(
                "--junit {}: the folder {} does not exist",
                j.display(),
                dir.display()
            ))));
        }
    }
    // Tests in the guest: a key for this run, and a user with it added to
    // the Ignition config (the user's own merged in).
    let scripts = a
        .tests
        .as_deref()
        .map(crate::boot::guest::test_scripts)
        .transpose()
        .map_err(classify)?;
    let key = scripts
        .as_ref()
        .map(|_| crate::boot::guest::make_key())
        .transpose()
        .map_err(classify)?;
    let provisioned = match &key {
        Some(k) => {
            let text = crate::boot::guest::ignition_config(a.ignition.as_deref(), &k.public)
                .map_err(classify)?;
            let f = tempfile::Builder::new()
                .suffix(".ign")
                .tempfile()
                .context("a temporary Ignition config")?;
            std::fs::write(f.path(), text).context("write the Ignition config")?;
            Some(f)
        }
        None => None,
    };
    let ignition = provisioned
        .as_ref()
        .map(|f| f.path().to_path_buf())
        .or(a.ignition.clone());
    let spec = VmSpec {
        image: image.clone(),
        format: a.format.into(),
        out_dir: None,
        ovmf_code: None,
        ovmf_vars: None,
        compress: false,
        board_arch,
    };
    let out = match crate::boot::vm::up_to_date(&spec) {
        Some(out) => out,
        None => crate::boot::vm::image_to_vm(&spec)
            .map_err(classify)
            .with_context(|| format!("prepare {} for QEMU", image.display()))?,
    };
    eprintln!(
        "booting {} ({:?}), waiting up to {}s for `{}`",
        image.display(),
        a.format,
        a.timeout,
        a.marker
    );
    let timeout = Duration::from_secs(a.timeout);
    let test_limit = Duration::from_secs(a.test_timeout);
    // The tests, shared by the VMs; each test's console in its own log.
    let stem = out
        .console_log
        .file_name()
        .map(|n| n.to_string_lossy().replace("_console.log", ""))
        .unwrap_or_default();
    let queue = scripts.map(|s| {
        crate::boot::guest::TestQueue::new(
            s,
            test_limit,
            out.console_log.with_file_name(format!("{stem}_tests")),
        )
    });
    let vms = match &queue {
        Some(q) => usize::from(a.jobs).min(q.len()),
        None => 1,
    };
    let started = std::time::Instant::now();
    let in_guest = |port: u16, tap: &crate::boot::vm::ConsoleTap| -> Result<(), String> {
        let (Some(queue), Some(key)) = (&queue, &key) else {
            return Ok(());
        };
        crate::boot::guest::wait_for_ssh(&key.private, port, timeout)?;
        eprintln!(
            "test_image: ssh answered {:.1}s after QEMU started",
            started.elapsed().as_secs_f64()
        );
        queue.run(&key.private, port, tap);
        Ok(())
    };
    let logs: Vec<PathBuf> = (0..vms)
        .map(|k| match k {
            0 => out.console_log.clone(),
            k => out
                .console_log
                .with_file_name(format!("{stem}_console.{}.log", k + 1)),
        })
        .collect();
    let outcomes: Vec<Result<crate::boot::vm::TestOutcome, crate::boot::BootError>> =
        std::thread::scope(|s| {
            let workers: Vec<_> = logs
                .iter()
                .map(|log| {
                    let boot = crate::boot::vm::Boot {
                        launcher: &out.launcher,
                        console_log: log,
                        marker: &a.marker,
                        timeout,
                        ignition: ignition.as_deref(),
                        extra: &a.qemu_args,
                        plain: vms > 1,
                    };
                    let in_guest = &in_guest;
                    s.spawn(move || crate::boot::vm::boot_and_wait(&boot, Some(in_guest)))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a boot thread panicked"))
                .collect()
        });
    let mut outcomes = outcomes
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(classify)?;
    // The run passes when every VM booted and every test passed.
    let boot_failure = outcomes
        .iter()
        .find(|o| !o.passed)
        .and_then(|o| o.reason.clone());
    let mut r = outcomes.remove(0);
    if let Some(q) = queue {
        let logs_dir = q.logs().to_path_buf();
        let results = q.finish(boot_failure.as_deref().unwrap_or("its VM stopped"));
        if let Some(path) = &a.junit {
            std::fs::write(path, crate::boot::guest::junit("test_image", &results))
                .with_context(|| format!("write {}", path.display()))?;
        }
        eprintln!("console logs of the tests: {}", logs_dir.display());
        match crate::boot::guest::verdict(&results) {
            Err(why) => {
                r.passed = false;
                r.reason = Some(why);
            }
            Ok(()) if boot_failure.is_some() => {
                r.passed = false;
                r.reason = boot_failure;
            }
            Ok(()) => {}
        }
    } else if let Some(why) = boot_failure {
        r.passed = false;
        r.reason = Some(why);
    }
    if r.passed {
        println!(
            "PASS in {:.1}s: {}",
            r.elapsed.as_secs_f64(),
            r.marker_line.unwrap_or_default()
        );
        println!("console log: {}", r.console_log.display());
        Ok(())
    } else {
        println!(
            "FAIL after {:.1}s: {}",
            r.elapsed.as_secs_f64(),
            r.reason.clone().unwrap_or_default()
        );
        println!("console log: {}", r.console_log.display());
        anyhow::bail!(
            "test_image failed: {}; see {}",
            r.reason.unwrap_or_default(),
            r.console_log.display()
        )
    }
}

#[derive(Debug, Subcommand)]
#[command(
    about = "Boot plumbing build_image and image_to_vm use: the initramfs, the ESP, A/B slot switching"
)]
pub enum BootCmd {
    /// Build the initramfs for the kernel in an image root.
    ///
    /// Example: sdk-tools boot initramfs --root staging/ --output initrd
    Initramfs {
        /// The image root holding the kernel and its modules.
        #[arg(long)]
        root: PathBuf,
        /// The initramfs file to write (cpio, compressed).
        #[arg(long)]
        output: PathBuf,
        /// Kernel version whose modules go in [default: the kernel found in ROOT].
        #[arg(long)]
        kernel_version: Option<String>,
        /// The board whose architecture the init is built for [default: this machine's].
        #[arg(long)]
        board: Option<String>,
    },
    /// Fill an ESP directory (systemd-boot, kernel, initramfs, USR-A entry):
    /// what build_image calls.
    ///
    /// Example: sdk-tools boot esp --root staging/ --esp esp/ --usrhash HEX --hash-offset 1073741824
    Esp {
        /// The image root (kernel, systemd-boot's EFI binary).
        #[arg(long)]
        root: PathBuf,
        /// The ESP directory to fill.
        #[arg(long)]
        esp: PathBuf,
        /// USR-A's dm-verity root hash (hex), put on the kernel command line.
        #[arg(long)]
        usrhash: String,
        /// Byte offset of the hash tree inside the USR partition.
        #[arg(long)]
        hash_offset: Option<u64>,
        /// USR-A's partition GUID (else it is found by label).
        #[arg(long)]
        usr_a_uuid: Option<String>,
        /// The boot menu title.
        #[arg(long, default_value = "Demo OS")]
        title: String,
        /// Extra kernel command line words.
        #[arg(long = "cmdline", allow_hyphen_values = true)]
        cmdline: Vec<String>,
        /// The board whose architecture the boot files are for [default: this machine's].
        #[arg(long)]
        board: Option<String>,
    },
    /// Write an update payload into a USR slot and make it the next boot
    /// (GPT priority above the other slot, one try, not successful), then
    /// rewrite the ESP's boot entries from the GPT.
    ///
    /// Example: sdk-tools boot set-slot disk.bin --slot B --payload demo_update.bin --usrhash HEX
    SetSlot {
        /// The disk image (raw) to change.
        image: PathBuf,
        /// The USR slot: A or B.
        #[arg(long)]
        slot: char,
        /// An update payload (a USR partition image) to write into the slot first.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// The payload's dm-verity root hash (hex) for the slot's boot entry.
        #[arg(long)]
        usrhash: Option<String>,
        /// GPT priority [default: one above the other slot].
        #[arg(long)]
        priority: Option<u8>,
        /// Boot attempts left before the slot counts as failed.
        #[arg(long, default_value_t = 1)]
        tries: u8,
        /// Mark the slot as having booted successfully.
        #[arg(long)]
        successful: bool,
    },
}

fn mtime() -> u32 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn boot(c: BootCmd) -> anyhow::Result<()> {
    match c {
        BootCmd::Initramfs {
            root,
            output,
            kernel_version,
            board,
        } => {
            let target = target_of(board.as_deref())?;
            let k = crate::boot::kmod::find_kernel(&root, kernel_version.as_deref())
                .map_err(classify)?;
            let r = crate::boot::initramfs::build(&k, &target, &output, mtime(), &root)
                .map_err(classify)?;
            println!(
                "{}: kernel {}, {} modules, {} bytes",
                output.display(),
                r.kernel_version,
                r.modules.len(),
                r.bytes
            );
            Ok(())
        }
        BootCmd::Esp {
            root,
            esp,
            usrhash,
            hash_offset,
            usr_a_uuid,
            title,
            cmdline,
            board,
        } => {
            let target = target_of(board.as_deref())?;
            let r = crate::boot::esp::populate_esp(&EspSpec {
                staging_root: root,
                esp_dir: esp.clone(),
                usr_hash: usrhash,
                usr_hash_offset: hash_offset,
                usr_a: PartRef {
                    label: "USR-A".into(),
                    uuid: usr_a_uuid,
                },
                root: PartRef::label("ROOT"),
                title,
                extra_cmdline: cmdline,
                kernel_version: None,
                mtime: mtime(),
                target,
            })
            .map_err(classify)?;
            for f in &r.files {
                println!("{}", esp.join(f).display());
            }
            println!("cmdline: {}", r.cmdline);
            Ok(())
        }
        BootCmd::SetSlot {
            image,
            slot,
            payload,
            usrhash,
            priority,
            tries,
            successful,
        } => {
            let written = crate::boot::slot::set_slot(&crate::boot::slot::SlotChange {
                image: image.clone(),
                slot,
                payload,
                usr_hash: usrhash,
                priority,
                tries,
                successful,
            })
            .map_err(classify)
            .with_context(|| format!("set-slot {}", image.display()))?;
            println!("boot entries: {}", written.join(" "));
            Ok(())
        }
    }
}
