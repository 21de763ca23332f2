//! `image_to_vm` (a compressed qcow2 and a Flatcar-like launcher script)
//! and `test_image` (boot it headless and wait for the first-boot marker on
//! the serial console).
//!
//! Two formats: `qemu` boots the kernel and initramfs from the image's ESP
//! directly (`-kernel/-initrd/-append` with the command line of the entry
//! systemd-boot would pick), the fast path; `qemu_uefi` boots the disk by
//! itself through OVMF and systemd-boot. The launcher picks KVM only when a
//! short probe guest actually runs under it (a KVM device node that exists
//! but hangs is common in nested setups), TCG otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BootError;
use super::disk;
use super::init::parse_cmdline;
use crate::cmd::CommandExt;
use sdk_common::fsutil::shell_quote;

/// How a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Direct kernel boot (kernel + initramfs from the ESP).
    Qemu,
    /// Boot the disk through UEFI firmware (OVMF) and systemd-boot.
    QemuUefi,
    /// Boot a netboot set (`build_image --format pxe`) from QEMU's TFTP
    /// server through the NIC's iPXE; no disk.
    Pxe,
    /// Boot a live ISO (`build_image --format iso`) from `-cdrom` under
    /// UEFI; no disk.
    Iso,
}

impl Format {
    fn suffix(self) -> &'static str {
        match self {
            Format::Qemu => "qemu",
            Format::QemuUefi => "qemu_uefi",
            Format::Pxe => "pxe",
            Format::Iso => "iso",
        }
    }

    /// The folder of `build_image --format` outputs this boots, under
    /// `__build__/images/<board>/`, and the main file's extension.
    fn output(self) -> (Option<&'static str>, &'static str) {
        match self {
            Format::Qemu | Format::QemuUefi => (None, "bin"),
            Format::Pxe => (Some("pxe"), "ipxe"),
            Format::Iso => (Some("iso"), "iso"),
        }
    }
}

/// The QEMU machine an architecture's images boot in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// `uname -m` of the guest.
    pub arch: &'static str,
    pub qemu: &'static str,
    pub machine: &'static str,
    /// `-cpu` under TCG (empty: QEMU's default). On aarch64, `max` with the
    /// implementation-defined pointer-authentication algorithm: the
    /// architected QARMA5 costs TCG about three times the boot time.
    pub tcg_cpu: &'static str,
    /// UEFI firmware (code, variable store template), first found wins.
    pub firmware: &'static [(&'static str, &'static str)],
    /// The Debian package with that firmware.
    pub firmware_package: &'static str,
}

/// PCs: q35, Debian's `ovmf` (4 MiB flash layout first).
const X86_64: Machine = Machine {
    arch: "x86_64",
    qemu: "qemu-system-x86_64",
    machine: "q35",
    tcg_cpu: "",
    firmware: &[
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ],
    firmware_package: "ovmf",
};

/// 64-bit ARM: the `virt` machine, Debian's `qemu-efi-aarch64` (AAVMF).
const AARCH64: Machine = Machine {
    arch: "aarch64",
    qemu: "qemu-system-aarch64",
    machine: "virt",
    tcg_cpu: "max,pauth-impdef=on",
    firmware: &[(
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/AAVMF/AAVMF_VARS.fd",
    )],
    firmware_package: "qemu-efi-aarch64",
};

impl Machine {
    /// The machine for images of `arch` (`uname -m` name).
    pub fn for_arch(arch: &str) -> Result<Machine, BootError> {
        match arch {
            "x86_64" => Ok(X86_64),
            "aarch64" => Ok(AARCH64),
            o => Err(BootError::Usage(format!(
                "booting {o} images is not supported (x86_64 and aarch64 are)"
            ))),
        }
    }
}

/// The architecture a kernel image is for, from its boot header: x86's
/// bzImage (`HdrS` at 0x202), arm64's Image (`ARM\x64` at 0x38), the
/// latter also gzip-compressed as Debian ships it (QEMU and the EFI stub
/// unpack it), and EFI zboot images (`zimg`, the payload's arch in the PE
/// header).
pub fn kernel_arch(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0x202, b"HdrS") {
        return Some("x86_64");
    }
    if at(0x38, b"ARM\x64") {
        return Some("aarch64");
    }
    if at(0, &[0x1f, 0x8b]) {
        let mut inner = [0u8; 0x40];
        let mut gz = flate2::read::GzDecoder::new(head);
        let mut n = 0;
        while n < inner.len() {
            match std::io::Read::read(&mut gz, &mut inner[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        return if n >= 0x3c && &inner[0x38..0x3c] == b"ARM\x64" {
            Some("aarch64")
        } else {
            None
        };
    }
    if at(0, b"MZ") && at(4, b"zimg") {
        // The PE header's machine field: after "PE\0\0" at e_lfanew.
        let lfanew = u32::from_le_bytes(head.get(0x3c..0x40)?.try_into().ok()?) as usize;
        let machine = u16::from_le_bytes(head.get(lfanew + 4..lfanew + 6)?.try_into().ok()?);
        return match machine {
            0xaa64 => Some("aarch64"),
            0x8664 => Some("x86_64"),
            _ => None,
        };
    }
    None
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub image: PathBuf,
    pub format: Format,
    /// Where the outputs go (default: next to the image).
    pub out_dir: Option<PathBuf>,
    pub ovmf_code: Option<PathBuf>,
    pub ovmf_vars: Option<PathBuf>,
    /// A standalone compressed qcow2 (to ship) instead of an overlay
    /// backed by the raw image (to boot here, made in milliseconds).
    pub compress: bool,
    /// The architecture the image's board profile says (with `--board`);
    /// an image whose kernel is of another one is refused.
    pub board_arch: Option<String>,
}

/// What `image_to_vm` wrote.
#[derive(Debug, Clone)]
pub struct VmOutput {
    pub launcher: PathBuf,
    pub disk: PathBuf,
    /// Where `test_image` saves the console.
    pub console_log: PathBuf,
    pub cmdline: Option<String>,
}

/// The image's base name: `demo_production_image.bin` -> `demo_production`.
pub fn image_name(image: &Path) -> String {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    stem.strip_suffix("_image")
        .map(str::to_string)
        .unwrap_or(stem)
}

/// Find the disk image of `board`: `__build__/images/<board>/latest/*.bin`
/// (not the `_update.bin` payload) under the current directory or one of
/// its parents.
pub fn find_board_image(board: &str) -> Result<PathBuf, BootError> {
    find_board_output(board, Format::Qemu)
}

/// What `format` boots of `board`'s latest build: the disk image, or
/// the iPXE script of `pxe/latest/`, or the ISO of `iso/latest/`.
pub fn find_board_output(board: &str, format: Format) -> Result<PathBuf, BootError> {
    let (sub, ext) = format.output();
    let build = match sub {
        Some(f) => format!("build_image --board {board} --format {f}"),
        None => format!("build_image --board {board}"),
    };
    let cwd = std::env::current_dir().map_err(|source| BootError::Io {
        what: "read",
        path: ".".into(),
        source,
    })?;
    let dir = cwd
        .ancestors()
        .map(|a| {
            let d = a.join("__build__/images").join(board);
            sub.map_or(d.clone(), |s| d.join(s)).join("latest")
        })
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            let at = sub.map_or(String::new(), |s| format!("{s}/"));
            BootError::Usage(format!("no __build__/images/{board}/{at}latest here or above; run {build} first (or pass --image FILE)"))
        })?;
    let mut bins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| BootError::Io {
            what: "read",
            path: dir.clone(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.ends_with(&format!(".{ext}")) && !n.ends_with("_update.bin")
        })
        .collect();
    bins.sort();
    match bins.len() {
        1 => Ok(bins.remove(0)),
        0 => Err(BootError::Usage(format!(
            "no *.{ext} in {}; run {build}",
            dir.display()
        ))),
        _ => Err(BootError::Usage(format!(
            "several *.{ext} in {}; pass --image FILE",
            dir.display()
        ))),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io { what, path, source }
}

/// The outputs of an earlier `image_to_vm` for this image and format, when
/// they are all there and newer than the image (test_image reuses them
/// instead of converting again).
pub fn up_to_date(spec: &VmSpec) -> Option<VmOutput> {
    let image = &spec.image;
    let out_dir = spec
        .out_dir
        .clone()
        .unwrap_or_else(|| image.parent().unwrap_or(Path::new(".")).to_path_buf());
    let name = vm_name(image, spec.format);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = mtime(image)?;
    let mut needed = vec![
        out_dir.join(format!("{name}.sh")),
        match spec.format {
            Format::Pxe | Format::Iso => image.clone(),
            _ => out_dir.join(format!("{name}_image.img")),
        },
    ];
    match spec.format {
        Format::Pxe => {}
        Format::Qemu => needed.extend([
            out_dir.join(format!("{name}_vmlinuz")),
            out_dir.join(format!("{name}_initrd")),
        ]),
        Format::QemuUefi | Format::Iso => needed.extend([
            out_dir.join(format!("{name}_efi_code.fd")),
            out_dir.join(format!("{name}_efi_vars.fd")),
        ]),
    }
    if needed.iter().all(|p| mtime(p).is_some_and(|t| t >= built)) {
        Some(VmOutput {
            launcher: needed[0].clone(),
            disk: needed[1].clone(),
            console_log: out_dir.join(format!("{name}_console.log")),
            cmdline: None,
        })
    } else {
        None
    }
}

/// Make the qcow2 and launcher for `spec.image`. Everything is checked
/// before anything is written.
pub fn image_to_vm(spec: &VmSpec) -> Result<VmOutput, BootError> {
    if matches!(spec.format, Format::Pxe | Format::Iso) {
        return live_to_vm(spec);
    }
    let image = &spec.image;
    let parts = disk::partitions(image)?;
    let esp = disk::esp(&parts, image)?;
    disk::usr_slot(&parts, 'a', image)?;
    let entry = super::slot::boot_entry(image)?;
    let c = parse_cmdline(&entry.options);
    if !c.contains_key("usrhash") && !c.contains_key("verity.usrhash") {
        return Err(BootError::Usage(format!(
            "{}: the boot entry {} carries no USR root hash (usrhash=); rebuild the image with build_image",
            image.display(),
            entry.file_name
        )));
    }
    let out_dir = spec
        .out_dir
        .clone()
        .unwrap_or_else(|| image.parent().unwrap_or(Path::new(".")).to_path_buf());
    std::fs::create_dir_all(&out_dir).map_err(io("create", &out_dir))?;
    let name = vm_name(image, spec.format);
    // The machine follows the kernel the image boots (the board's profile
    // says the same, or the image is not that board's).
    let kernel_tmp = out_dir.join(format!(".{name}_vmlinuz.tmp"));
    disk::esp_copy_out(image, &esp, &entry.linux, &kernel_tmp)?;
    let head = read_head(&kernel_tmp, 64 << 10);
    let arch = kernel_arch(&head).ok_or_else(|| {
        let _ = std::fs::remove_file(&kernel_tmp);
        BootError::Usage(format!(
            "{}: the kernel {} is neither an x86_64 bzImage nor an arm64 Image; rebuild the image with build_image",
            image.display(),
            entry.linux
        ))
    })?;
    if let Some(b) = spec.board_arch.as_deref().filter(|b| *b != arch) {
        let _ = std::fs::remove_file(&kernel_tmp);
        return Err(BootError::Usage(format!(
            "{}: its kernel is for {arch}, but its board is {b}; rebuild it with build_image for that board",
            image.display()
        )));
    }
    let machine = match Machine::for_arch(arch) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&kernel_tmp);
            return Err(e);
        }
    };
    let firmware = match spec.format {
        Format::Qemu | Format::Pxe | Format::Iso => None,
        Format::QemuUefi => match find_firmware(spec, &machine) {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = std::fs::remove_file(&kernel_tmp);
                return Err(e);
            }
        },
    };
    let disk_out = out_dir.join(format!("{name}_image.img"));
    let tmp = out_dir.join(format!(".{name}_image.img.tmp"));
    if spec.compress {
        let mut progress = sdk_common::progress::Progress::new("image_to_vm");
        progress.begin("compressing the qcow2");
        let t = Instant::now();
        Command::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(image)
            .arg(&tmp)
            .run_capture()?;
        let size = std::fs::metadata(&tmp).map(|m| m.len() >> 20).unwrap_or(0);
        progress.end("compressing the qcow2", t.elapsed(), &format!("{size} MiB"));
    } else {
        // An overlay: the guest reads the raw image and writes only to the
        // qcow2. The backing file is named relative to the overlay when
        // they share a folder, so the folder can be moved as a whole.
        let same_dir = image
            .parent()
            .map(std::fs::canonicalize)
            .and_then(Result::ok)
            == std::fs::canonicalize(&out_dir).ok();
        let backing = if same_dir {
            PathBuf::from(image.file_name().unwrap_or_default())
        } else {
            std::fs::canonicalize(image).map_err(io("resolve", image))?
        };
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&backing)
            .arg(&tmp)
            .run_capture()?;
    }
    std::fs::rename(&tmp, &disk_out).map_err(io("rename", &tmp))?;

    let boot_args = match firmware {
        None => {
            let kernel = format!("{name}_vmlinuz");
            let initrd = format!("{name}_initrd");
            std::fs::rename(&kernel_tmp, out_dir.join(&kernel))
                .map_err(io("rename", &kernel_tmp))?;
            disk::esp_copy_out(image, &esp, &entry.initrd, &out_dir.join(&initrd))?;
            format!(
                "-kernel \"$DIR/{kernel}\" -initrd \"$DIR/{initrd}\" -append {}",
                shell_quote(&entry.options)
            )
        }
        Some((code, vars)) => {
            let _ = std::fs::remove_file(&kernel_tmp);
            let code_out = format!("{name}_efi_code.fd");
            let vars_out = format!("{name}_efi_vars.fd");
            std::fs::copy(&code, out_dir.join(&code_out)).map_err(io("copy", &code))?;
            std::fs::copy(&vars, out_dir.join(&vars_out)).map_err(io("copy", &vars))?;
            format!(
                "-drive if=pflash,format=raw,unit=0,readonly=on,file=\"$DIR/{code_out}\" -drive if=pflash,format=raw,unit=1,file=\"$DIR/{vars_out}\""
            )
        }
    };
    let launcher = out_dir.join(format!("{name}.sh"));
    let disk = format!("{name}_image.img");
    let script = launcher_script(
        &machine,
        &Media {
            name: &name,
            file: &disk,
            args: &format!("-drive if=virtio,format=qcow2,file=\"$DIR/{disk}\""),
            net: "",
            memory: 1024,
        },
        &boot_args,
    );
    write_executable(&launcher, &script)?;
    Ok(VmOutput {
        launcher,
        disk: disk_out,
        console_log: out_dir.join(format!("{name}_console.log")),
        cmdline: (spec.format == Format::Qemu).then(|| entry.options.clone()),
    })
}

/// Write `text` to `path` as an executable script, by a rename (a
/// launcher is never seen half-written).
fn write_executable(path: &Path, text: &str) -> Result<(), BootError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", &tmp))
}

/// The first `max` bytes of `path` (fewer when it is shorter or unreadable).
fn read_head(path: &Path, max: u64) -> Vec<u8> {
    let mut head = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, max), &mut head);
    }
    head
}

/// The UEFI firmware: `--ovmf-code`/`--ovmf-vars`, else the machine's
/// Debian package's.
fn find_firmware(spec: &VmSpec, m: &Machine) -> Result<(PathBuf, PathBuf), BootError> {
    let pkg = m.firmware_package;
    match (&spec.ovmf_code, &spec.ovmf_vars) {
        (Some(c), v) => {
            let v = v.clone().unwrap_or_else(|| PathBuf::from(m.firmware[0].1));
            for f in [c, &v] {
                if !f.is_file() {
                    return Err(BootError::Usage(format!("UEFI firmware {} does not exist; install {pkg} (apt-get install {pkg}) or point --ovmf-code/--ovmf-vars at it", f.display())));
                }
            }
            Ok((c.clone(), v))
        }
        (None, _) => m
            .firmware
            .iter()
            .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
            .find(|(c, v)| c.is_file() && v.is_file())
            .ok_or_else(|| {
                BootError::Usage(format!(
                    "no {} UEFI firmware at {}; install it with `apt-get install {pkg}` or pass --ovmf-code",
                    m.arch, m.firmware[0].0
                ))
            }),
    }
}

/// What a launcher boots: its own name, the file it needs beside it,
/// the QEMU arguments that attach it, the NIC's extra user-mode
/// networking options (non-empty: the guest always gets a NIC), and the
/// default memory.
struct Media<'a> {
    name: &'a str,
    file: &'a str,
    args: &'a str,
    net: &'a str,
    memory: u32,
}

/// The launcher: Flatcar's `<name>_qemu.sh` options, KVM by probe (only
/// when the guest's architecture is this machine's).
fn launcher_script(m: &Machine, media: &Media<'_>, boot_args: &str) -> String {
    let Media {
        name,
        file,
        args: media_args,
        net,
        memory,
    } = *media;
    let always_net = if net.is_empty() { "" } else { "1" };
    let Machine {
        arch,
        qemu,
        machine,
        tcg_cpu,
        ..
    } = *m;
    format!(
        r#"#!/bin/bash
# QEMU launcher made by image_to_vm. Runs the image next to this script.
#
#   ./{name}.sh -nographic              serial console in this terminal
#   ./{name}.sh -M 2048 -p 2223 -- -snapshot
set -euo pipefail
DIR=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
VM_MEMORY={memory}
SSH_PORT=2222
CONFIG_FILE=""
NOGRAPHIC=""
SAFE=""
RESTRICT=""
UPDATE_PORT=""

usage() {{
  cat <<'EOF'
Usage: launcher [options] [-- extra qemu args]
  -M MB         memory (default {memory})
  -p PORT       forward host port PORT to the guest's ssh port 22 (default 2222; "none" for no forward)
  -i FILE       an Ignition config for the first boot, passed by fw_cfg as
                opt/com.coreos/config and opt/org.flatcar-linux/config (checked
                with ignition-validate first when it is installed)
  -r            restricted network: the guest reaches nothing but the
                forwarded ssh port (user-mode networking with restrict=on)
  -u PORT       the guest's http://10.0.2.100/ is this machine's
                127.0.0.1:PORT (an update server: sdk-tools update serve),
                through nc; works with -r
  -nographic    no window; the serial console is this terminal
  -s            safe mode: never use KVM (TCG emulation)
  -h            this help
Anything after -- goes to {qemu} unchanged.
KVM is used when /dev/kvm works and this is not itself a virtual machine;
SDK_VM_ACCEL=kvm or SDK_VM_ACCEL=tcg decides instead.
EOF
}}

while [ $# -gt 0 ]; do
  case "$1" in
    -M) VM_MEMORY=${{2:?-M needs a size in MiB}}; shift 2 ;;
    -p) SSH_PORT=${{2:?-p needs a port}}; shift 2 ;;
    -i) CONFIG_FILE=${{2:?-i needs a file}}; shift 2 ;;
    -nographic) NOGRAPHIC=1; shift ;;
    -r) RESTRICT=1; shift ;;
    -u) UPDATE_PORT=${{2:?-u needs a port}}; shift 2 ;;
    -s) SAFE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see -h)" >&2; exit 2 ;;
  esac
done

case "$UPDATE_PORT" in
  "") ;;
  *[!0-9]*) echo "error: -u $UPDATE_PORT: give the port of the update server on 127.0.0.1" >&2; exit 2 ;;
  *) command -v nc >/dev/null ||
       {{ echo "error: -u needs nc (netcat) on this machine: apt install netcat-openbsd" >&2; exit 2; }} ;;
esac
if [ -n "$CONFIG_FILE" ] && [ ! -f "$CONFIG_FILE" ]; then
  echo "error: config file $CONFIG_FILE does not exist; pass an existing file to -i" >&2
  exit 2
fi
if [ -n "$CONFIG_FILE" ] && command -v ignition-validate >/dev/null &&
   ! why=$(ignition-validate "$CONFIG_FILE" 2>&1); then
  echo "error: $CONFIG_FILE is not a valid Ignition config: $(printf '%s' "$why" | head -1)" >&2
  exit 2
fi
if [ ! -f "$DIR/{file}" ]; then
  echo "error: $DIR/{file} is missing; run image_to_vm again" >&2
  exit 2
fi

# KVM only when a probe guest (the firmware finding nothing to boot and
# resetting, about 0.2 s even under TCG) really runs under it with the CPU
# model the VM uses: a /dev/kvm that exists but hangs, crawls or rejects
# the host CPU's MSRs (nested virtualization) would break the VM too.
# Inside a virtual machine (nested KVM), the probe can pass and the real
# guest still stop on an emulation failure: TCG there unless
# SDK_VM_ACCEL=kvm asks for KVM (SDK_VM_ACCEL=tcg never uses it).
# A guest of another architecture ({arch}) is always emulated.
ACCEL=tcg
case "${{SDK_VM_ACCEL:-auto}}" in
  kvm) ACCEL=kvm ;;
  tcg) ;;
  *)
    if [ -z "$SAFE" ] && [ "$(uname -m)" = {arch} ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
       ! grep -qw hypervisor /proc/cpuinfo 2>/dev/null &&
       (timeout 3 {qemu} -accel kvm -cpu host -machine {machine} -m 32 -nodefaults \
         -display none -no-reboot -boot reboot-timeout=0) >/dev/null 2>&1; then
      ACCEL=kvm
    fi ;;
esac

args=(-name sdk-run-vm -machine {machine},accel=$ACCEL -m "$VM_MEMORY" -smp 1)
if [ "$ACCEL" = kvm ]; then args+=(-cpu host); elif [ -n "{tcg_cpu}" ]; then args+=(-cpu "{tcg_cpu}"); fi
args+=({media_args})
if [ "$SSH_PORT" != none ] || [ -n "{always_net}" ]; then
  # guestfwd runs the command once a connection, its stdio the stream.
  netdev="user,id=eth0${{RESTRICT:+,restrict=on}}{net}"
  if [ "$SSH_PORT" != none ]; then netdev+=",hostfwd=tcp:127.0.0.1:$SSH_PORT-:22"; fi
  if [ -n "$UPDATE_PORT" ]; then netdev+=",guestfwd=tcp:10.0.2.100:80-cmd:nc -N 127.0.0.1 $UPDATE_PORT"; fi
  args+=(-netdev "$netdev" -device virtio-net-pci,netdev=eth0)
else
  args+=(-nic none)
fi
if [ -n "$CONFIG_FILE" ]; then
  args+=(-fw_cfg name=opt/com.coreos/config,file="$CONFIG_FILE")
  args+=(-fw_cfg name=opt/org.flatcar-linux/config,file="$CONFIG_FILE")
fi
if [ -n "$NOGRAPHIC" ]; then args+=(-nographic); fi
exec {qemu} "${{args[@]}}" {boot_args} "$@"
"#,
    )
}

/// The launcher's and console log's base name: `<image>_<format>`; a
/// netboot set or ISO is named for its format already.
fn vm_name(image: &Path, format: Format) -> String {
    match format {
        Format::Pxe | Format::Iso => format!("{}_qemu", image_name(image)),
        f => format!("{}_{}", image_name(image), f.suffix()),
    }
}

/// `image_to_vm` of a netboot set (`spec.image` its iPXE script, the
/// rest beside it, served by QEMU's TFTP server) or of a live ISO. No
/// disk: the launcher boots what is there, every boot a first boot.
fn live_to_vm(spec: &VmSpec) -> Result<VmOutput, BootError> {
    let image = &spec.image;
    let file = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let want = spec.format.output().1;
    if !image.is_file() || !file.ends_with(&format!(".{want}")) {
        return Err(BootError::Usage(format!(
            "{}: --format {} boots a *.{want} that build_image --format {} wrote; pass that file",
            image.display(),
            spec.format.suffix(),
            spec.format.suffix()
        )));
    }
    let dir = image.parent().unwrap_or(Path::new(".")).to_path_buf();
    let out_dir = spec.out_dir.clone().unwrap_or_else(|| dir.clone());
    let same_dir = std::fs::canonicalize(&dir).ok() == std::fs::canonicalize(&out_dir).ok();
    if !same_dir {
        return Err(BootError::Usage(format!(
            "--output: a {} launcher lives beside {}; leave --output out",
            spec.format.suffix(),
            image.display()
        )));
    }
    let arch = spec.board_arch.clone().unwrap_or_else(|| "x86_64".into());
    if arch != "x86_64" {
        return Err(BootError::Usage(format!(
            "booting {} sets in QEMU is x86_64 only so far (this board is {arch}); the set itself is built",
            spec.format.suffix()
        )));
    }
    let mut machine = Machine::for_arch(&arch)?;
    if spec.format == Format::Iso {
        // `-cdrom` on q35 is a SATA (AHCI) drive, a driver Debian's cloud
        // kernel leaves out; on the i440fx machine it is an IDE one
        // (ata_piix), which that kernel has. OVMF boots either.
        machine.machine = "pc";
    }
    let name = vm_name(image, spec.format);
    let (media, net, boot_args, memory) = match spec.format {
        Format::Pxe => {
            let stem = image_name(image);
            for part in ["vmlinuz", "initrd"] {
                let p = dir.join(format!("{stem}.{part}"));
                if !p.is_file() {
                    return Err(BootError::Usage(format!(
                        "{}: the netboot set is incomplete; build it again with build_image --format pxe",
                        p.display()
                    )));
                }
            }
            // The NIC's iPXE takes QEMU's DHCP offer, whose boot file is
            // the script; the script fetches the rest from the same TFTP
            // server (QEMU's, serving the set's folder).
            (
                String::new(),
                format!(",tftp=$DIR,bootfile={file}"),
                "-boot n".to_string(),
                2048,
            )
        }
        _ => {
            let (code, vars) = find_firmware(spec, &machine)?;
            let code_out = format!("{name}_efi_code.fd");
            let vars_out = format!("{name}_efi_vars.fd");
            std::fs::copy(&code, out_dir.join(&code_out)).map_err(io("copy", &code))?;
            std::fs::copy(&vars, out_dir.join(&vars_out)).map_err(io("copy", &vars))?;
            (
                format!("-cdrom \"$DIR/{file}\""),
                String::new(),
                format!(
                    "-drive if=pflash,format=raw,unit=0,readonly=on,file=\"$DIR/{code_out}\" -drive if=pflash,format=raw,unit=1,file=\"$DIR/{vars_out}\""
                ),
                1536,
            )
        }
    };
    let launcher = out_dir.join(format!("{name}.sh"));
    let script = launcher_script(
        &machine,
        &Media {
            name: &name,
            file: &file,
            args: &media,
            net: &net,
            memory,
        },
        &boot_args,
    );
    write_executable(&launcher, &script)?;
    Ok(VmOutput {
        launcher,
        disk: image.clone(),
        console_log: out_dir.join(format!("{name}_console.log")),
        cmdline: None,
    })
}

/// The result of one `test_image` boot.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub passed: bool,
    pub elapsed: Duration,
    /// The marker line, when seen.
    pub marker_line: Option<String>,
    pub console_log: PathBuf,
    /// Why it failed.
    pub reason: Option<String>,
}

/// One headless boot of a launcher.
pub struct Boot<'a> {
    pub launcher: &'a Path,
    /// Where the whole console goes.
    pub console_log: &'a Path,
    /// The console line that means the OS is up.
    pub marker: &'a str,
    pub timeout: Duration,
    pub ignition: Option<&'a Path>,
    /// Extra QEMU arguments.
    pub extra: &'a [String],
    /// Plain progress lines even on a terminal (several boots at once).
    pub plain: bool,
}

/// Where the console also goes while the caller works in the booted guest
/// (a log per test); the caller switches it.
#[derive(Clone, Default)]
pub struct ConsoleTap(std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>);

impl ConsoleTap {
    /// Send what the console says from now on to `file` (None: nowhere).
    pub fn to(&self, file: Option<std::fs::File>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = file;
    }

    fn write(&self, line: &[u8]) {
        if let Some(f) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(line);
        }
    }
}

/// What the caller runs in the guest once the marker is seen: given the
/// host port forwarded to the guest's ssh and the console tap.
pub type InGuest<'a> = &'a (dyn Fn(u16, &ConsoleTap) -> Result<(), String> + Sync);

/// Boot `b.launcher` headless (a snapshot: the image is not modified),
/// copy the console to `b.console_log`, and wait up to `b.timeout` for
/// the marker; then run `then` in the guest, the console still flowing.
pub fn boot_and_wait(b: &Boot<'_>, then: Option<InGuest<'_>>) -> Result<TestOutcome, BootError> {
    let Boot {
        launcher,
        console_log,
        marker,
        timeout,
        ignition,
        extra,
        plain,
    } = *b;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port().to_string())
        .unwrap_or_else(|_| "none".into());
    let mut cmd = Command::new("bash");
    // Restricted user networking: the guest reaches nothing but the
    // forwarded ssh port on the host's loopback.
    cmd.arg(launcher).args(["-nographic", "-r", "-p", &port]);
    if let Some(i) = ignition {
        cmd.arg("-i").arg(i);
    }
    cmd.args(["--", "-snapshot", "-no-reboot"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn_streaming()?;
    let start = Instant::now();
    let log = std::fs::File::create(console_log).map_err(io("create", console_log))?;
    let rx = console_lines(&mut child);
    let mut watch = Watch::new(marker, log);
    // A heartbeat while waiting: the last console line, on a spinner on a
    // terminal, every 10 s as a timestamped line otherwise.
    let mut progress = if plain {
        sdk_common::progress::Progress::with_terminal("test_image", false)
    } else {
        sdk_common::progress::Progress::new("test_image")
    };
    progress.begin("booting");
    let mut closed = 0;
    while closed < 2 && watch.verdict.is_none() {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            watch.verdict = Some(Err(format!("no marker within {}s", timeout.as_secs())));
            break;
        }
        if let Some(l) = watch.last.back() {
            progress.beat(&format!("console: {l}"), Duration::from_secs(10));
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(Some(line)) => watch.line(&line),
            Ok(None) => closed += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let passed = matches!(watch.verdict, Some(Ok(_)));
    progress.end(
        "booting",
        start.elapsed(),
        if passed { "marker seen" } else { "no marker" },
    );
    drop(progress);
    // With the marker seen and the VM still up: what the caller runs in
    // it (tests over ssh); its failure fails the boot.
    if let (true, Some(then)) = (passed, then) {
        let tap = ConsoleTap::default();
        let result = match port.parse::<u16>() {
            Ok(p) => std::thread::scope(|s| {
                let work = s.spawn(|| then(p, &tap));
                // The console keeps flowing to the log (and the tap).
                while !work.is_finished() {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(line)) => {
                            watch.line(&line);
                            tap.write(&line);
                        }
                        Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                work.join()
                    .unwrap_or_else(|_| Err("the work in the guest panicked".into()))
            }),
            Err(_) => Err("no free port on the host's loopback for ssh".into()),
        };
        // The work in the guest fails only when ssh never answered: the
        // reason names the last console lines, as for a boot that failed.
        if let Err(why) = result {
            watch.verdict = Some(Err(why));
        }
    }
    let _ = child.kill();
    let status = child.wait().ok();
    // What the console said meanwhile still goes to the log.
    while let Ok(Some(line)) = rx.try_recv() {
        let _ = watch.log.write_all(&line);
    }
    Ok(watch.outcome(status, start.elapsed(), console_log))
}

/// A child's piped stdout and stderr, taken, to read on threads of their own.
pub fn output_streams(child: &mut std::process::Child) -> Vec<Box<dyn std::io::Read + Send>> {
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    out.into_iter().chain(err).collect()
}

/// The guest's stdout and stderr, line by line (None when one closes).
fn console_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    for stream in output_streams(child) {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    rx
}

/// What the console says, line by line: saved to the log, the last lines
/// kept, and a verdict once there is one (the marker: Ok; a KVM failure:
/// Err). Corruption dm-verity reports is noted for the failure reason.
struct Watch<'a> {
    marker: &'a str,
    log: std::fs::File,
    last: std::collections::VecDeque<String>,
    corruption: Option<String>,
    verdict: Option<Result<String, String>>,
}

impl<'a> Watch<'a> {
    fn new(marker: &'a str, log: std::fs::File) -> Watch<'a> {
        Watch {
            marker,
            log,
            last: std::collections::VecDeque::new(),
            corruption: None,
            verdict: None,
        }
    }

    fn line(&mut self, line: &[u8]) {
        let _ = self.log.write_all(line);
        let text = String::from_utf8_lossy(line);
        let t = text.trim();
        if !t.is_empty() {
            if self.last.len() == 4 {
                self.last.pop_front();
            }
            // Without the guest's colours and cursor moves: they go into
            // a one-line failure reason.
            self.last.push_back(sdk_common::progress::printable(t));
        }
        if text.contains("verity")
            && (text.contains("corrupted") || text.contains("mismatch"))
            && self.corruption.is_none()
        {
            self.corruption = Some(t.to_string());
        }
        if text.contains(self.marker) {
            self.verdict = Some(Ok(t.to_string()));
        } else if text.contains("KVM internal error") {
            // QEMU stops the guest and waits: say why now.
            self.verdict = Some(Err(format!(
                "KVM could not run the guest ({t}); boot under TCG with SDK_VM_ACCEL=tcg"
            )));
        }
    }

    fn outcome(
        mut self,
        status: Option<std::process::ExitStatus>,
        elapsed: Duration,
        console_log: &Path,
    ) -> TestOutcome {
        let _ = self.log.flush();
        let (marker_line, mut reason) = match self.verdict.take() {
            Some(Ok(m)) => (Some(m), None),
            Some(Err(r)) => (None, Some(r)),
            None => (
                None,
                Some(format!(
                    "the VM stopped before the marker ({})",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into())
                )),
            ),
        };
        if let Some(r) = reason.as_mut() {
            match &self.corruption {
                Some(c) => r.push_str(&format!("; dm-verity reported corruption: {c}")),
                None => {
                    let tail: Vec<String> = self.last.iter().cloned().collect();
                    r.push_str(&format!("; last console lines: {}", tail.join(" | ")));
                }
            }
        }
        TestOutcome {
            passed: marker_line.is_some(),
            elapsed,
            marker_line,
            console_log: console_log.to_path_buf(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_flatcar() {
        assert_eq!(
            image_name(Path::new("/x/demo_production_image.bin")),
            "demo_production"
        );
        assert_eq!(image_name(Path::new("disk.img")), "disk");
    }

    #[test]
    fn launcher_is_valid_bash_and_rejects_missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("x_qemu.sh");
        for arch in ["aarch64", "x86_64"] {
            let m = Machine::for_arch(arch).unwrap();
            let text = launcher_script(
                &m,
                &Media {
                    name: "x_qemu",
                    file: "x_qemu_image.img",
                    args: "-drive if=virtio,format=qcow2,file=\"$DIR/x_qemu_image.img\"",
                    net: "",
                    memory: 1024,
                },
                "-kernel k",
            );
            assert!(text.contains(&format!("exec {} ", m.qemu)), "{text}");
            std::fs::write(&s, text).unwrap();
            Command::new("bash")
                .arg("-n")
                .arg(&s)
                .run_capture()
                .unwrap();
        }
        // A netboot launcher: no disk, a NIC always, QEMU's TFTP server.
        let pxe = dir.path().join("x_pxe_qemu.sh");
        let text = launcher_script(
            &Machine::for_arch("x86_64").unwrap(),
            &Media {
                name: "x_pxe_qemu",
                file: "x_pxe.ipxe",
                args: "",
                net: ",tftp=$DIR,bootfile=x_pxe.ipxe",
                memory: 2048,
            },
            "-boot n",
        );
        assert!(!text.contains("-drive if=virtio"), "{text}");
        assert!(text.contains("VM_MEMORY=2048"), "{text}");
        std::fs::write(&pxe, text).unwrap();
        let out = Command::new("bash").arg(&pxe).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("x_pxe.ipxe is missing"));
        let out = Command::new("bash")
            .arg(&s)
            .args(["-i", "/nonexistent/config.ign"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
        let help = Command::new("bash").arg(&s).arg("-h").run_stdout().unwrap();
        assert!(help.contains("-nographic"));
    }

    #[test]
    fn kernels_say_their_architecture() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some("x86_64"));
        let mut image = vec![0u8; 0x40];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image), Some("aarch64"));
        // Debian's arm64 vmlinuz: the Image, gzip-compressed.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &image).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(kernel_arch(&gz), Some("aarch64"));
        assert_eq!(kernel_arch(b"not a kernel at all"), None);
        assert!(Machine::for_arch("riscv64").is_err());
    }
}
