//! The initramfs init (pid 1 before the real OS): loads the modules the
//! initramfs carries, finds USR and ROOT by partition label or UUID, sets up
//! dm-verity over USR with the root hash from the kernel command line,
//! mounts ROOT at /sysroot and the verity device read-only at /sysroot/usr,
//! creates ROOT's first-boot contents, and switches root to the OS init.
//!
//! Runs when this binary is started as `/init` with pid 1 (see `cli::main`).
//! Any failure prints `sdk-init: error: ...` to the console and exits, which
//! the kernel turns into a panic: a boot never continues without verity.
//!
//! Kernel command line it reads (Flatcar's names where they exist):
//! - `mount.usr=/dev/mapper/usr verity.usr=PARTUUID=<uuid>|PARTLABEL=<label>`
//!   or `mount.usr=PARTUUID=...` (the USR partition);
//! - `usrhash=<hex>` or `verity.usrhash=<hex>` (required);
//! - `verity.usrhashoffset=<bytes>` (optional: else the filesystem size
//!   read from the ext4/erofs/squashfs superblock);
//! - `verity.usrcorruption=panic|restart` (default panic): what the kernel
//!   does when a USR block does not match its hash;
//! - `root=PARTUUID=...|PARTLABEL=...` (default `PARTLABEL=ROOT`),
//!   `rootfstype=` (default ext4), `init=` (default the first of
//!   /usr/lib/systemd/systemd, /usr/sbin/init, /sbin/init),
//!   `rd.timeout=<s>` to wait for disks (default 60);
//! - `sdk.usr-url=tftp://...|http://...|cdrom:/PATH` instead of a USR
//!   partition: the USR image as a file (netboot, live ISO; see
//!   `boot::netroot`), with `ip=CLIENT:SERVER:GATEWAY:NETMASK::DEVICE:off`
//!   to fetch it; `root=tmpfs` keeps ROOT in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dm;
use super::initramfs::{KERNEL_VERSION_FILE, MODULES_LIST};
use crate::formats::disk::gpt;
use crate::formats::fs;
use crate::formats::verity::superblock::{self, Superblock};

/// Why the boot cannot go on. pid 1 prints it on the console and exits,
/// which the kernel turns into a panic: never a boot without verity.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The kernel command line lacks something or says something wrong.
    #[error("{0}")]
    Cmdline(String),
    /// A partition, filesystem, superblock or init is missing or wrong.
    #[error("{0}")]
    Disk(String),
    /// An operation on the running system failed (mount, open, exec, ...).
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// `.map_err(os("mount /proc"))`: an OS error with what was being done.
fn os<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> InitError {
    let what = what.into();
    move |e| InitError::Os {
        what,
        source: e.into(),
    }
}

type InitResult<T> = Result<T, InitError>;

/// Parsed kernel command line: `key=value` words (last wins) and bare flags.
pub fn parse_cmdline(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for word in s.split_whitespace() {
        let word = word.trim_matches('"');
        match word.split_once('=') {
            Some((k, v)) => out.insert(k.to_string(), v.trim_matches('"').to_string()),
            None => out.insert(word.to_string(), String::new()),
        };
    }
    out
}

/// How a partition is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSpec {
    Uuid(String),
    Label(String),
    Path(PathBuf),
    /// `root=tmpfs`: ROOT in memory, empty at every boot.
    Tmpfs,
}

impl PartSpec {
    pub fn parse(s: &str) -> InitResult<PartSpec> {
        if let Some(u) = s.strip_prefix("PARTUUID=") {
            Ok(PartSpec::Uuid(u.to_ascii_lowercase()))
        } else if let Some(l) = s.strip_prefix("PARTLABEL=") {
            Ok(PartSpec::Label(l.to_string()))
        } else if s.starts_with("/dev/") {
            Ok(PartSpec::Path(s.into()))
        } else if s == "tmpfs" {
            Ok(PartSpec::Tmpfs)
        } else {
            Err(InitError::Cmdline(format!(
                "`{s}`: name a partition as PARTUUID=, PARTLABEL= or /dev/..."
            )))
        }
    }
}

/// What to do on a hash mismatch (dm-verity optional arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    Panic,
    Restart,
}

impl OnCorruption {
    pub fn verity_arg(self) -> &'static str {
        match self {
            OnCorruption::Panic => "panic_on_corruption",
            OnCorruption::Restart => "restart_on_corruption",
        }
    }
}

/// The boot plan read from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub usr: PartSpec,
    pub usrhash: String,
    pub hash_offset: Option<u64>,
    pub on_corruption: OnCorruption,
    pub root: PartSpec,
    pub rootfstype: String,
    pub init: Option<String>,
    pub timeout: Duration,
    /// The kernel + initramfs running now (`sdk.boot=`, see `slotboot`).
    pub boot_id: Option<String>,
    /// The slot a kexec'd boot was started for (`sdk.usr-slot=`): booted
    /// without choosing again.
    pub pinned_slot: Option<String>,
    /// USR as a file (`sdk.usr-url=`) instead of `usr`.
    pub usr_url: Option<super::netroot::UsrUrl>,
    /// How to configure the network for `usr_url` (`ip=`).
    pub ip: Option<super::netroot::IpConfig>,
}

impl Plan {
    pub fn from_cmdline(c: &BTreeMap<String, String>) -> InitResult<Plan> {
        let usr_url = c
            .get("sdk.usr-url")
            .map(|u| super::netroot::UsrUrl::parse(u))
            .transpose()
            .map_err(InitError::Cmdline)?;
        let ip = match (&usr_url, c.get("ip")) {
            (Some(u), Some(v)) if u.needs_network() => {
                Some(super::netroot::IpConfig::parse(v).map_err(InitError::Cmdline)?)
            }
            _ => None,
        };
        let usr = match (c.get("verity.usr"), c.get("mount.usr")) {
            (Some(v), _) => PartSpec::parse(v)?,
            (None, Some(m)) if m != "/dev/mapper/usr" => PartSpec::parse(m)?,
            _ if usr_url.is_some() => PartSpec::Path("/dev/mapper/usr".into()),
            _ => return Err(InitError::Cmdline("no USR partition on the kernel command line (verity.usr=PARTUUID=... or mount.usr=PARTLABEL=...)".into())),
        };
        let usrhash = c
            .get("verity.usrhash")
            .or_else(|| c.get("usrhash"))
            .cloned()
            .ok_or_else(|| {
                InitError::Cmdline(
                    "no usrhash= on the kernel command line: refusing to mount USR without dm-verity"
                        .into(),
                )
            })?;
        if usrhash.len() < 64 || !usrhash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InitError::Cmdline(format!(
                "usrhash `{usrhash}` is not a hex sha256/sha512 digest"
            )));
        }
        let hash_offset = c
            .get("verity.usrhashoffset")
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    InitError::Cmdline(format!("verity.usrhashoffset `{v}` is not a byte count"))
                })
            })
            .transpose()?;
        let on_corruption = match c.get("verity.usrcorruption").map(String::as_str) {
            None | Some("panic") => OnCorruption::Panic,
            Some("restart") => OnCorruption::Restart,
            Some(o) => {
                return Err(InitError::Cmdline(format!(
                    "verity.usrcorruption `{o}`: use panic or restart"
                )));
            }
        };
        let root = PartSpec::parse(
            c.get("root")
                .map(String::as_str)
                .unwrap_or("PARTLABEL=ROOT"),
        )?;
        let timeout = c
            .get("rd.timeout")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(60));
        Ok(Plan {
            usr,
            usrhash: usrhash.to_ascii_lowercase(),
            hash_offset,
            on_corruption,
            root,
            rootfstype: c
                .get("rootfstype")
                .cloned()
                .unwrap_or_else(|| "ext4".into()),
            init: c.get("init").cloned(),
            timeout,
            boot_id: c.get(super::slotboot::CMDLINE_ID).cloned(),
            pinned_slot: c.get(super::slotboot::CMDLINE_SLOT).cloned(),
            usr_url,
            ip,
        })
    }
}

/// The verity target parameters (kernel Documentation/admin-guide/
/// device-mapper/verity.rst): with a superblock at `hash_offset`, the
/// tree starts one hash block later.
pub fn verity_table(
    sb: &Superblock,
    dev: &str,
    hash_offset: u64,
    usrhash: &str,
    on: OnCorruption,
) -> InitResult<dm::Target> {
    if !hash_offset.is_multiple_of(u64::from(sb.hash_block_size)) {
        return Err(InitError::Disk(format!(
            "hash offset {hash_offset} is not a multiple of the hash block size {}",
            sb.hash_block_size
        )));
    }
    let salt = if sb.salt.is_empty() {
        "-".to_string()
    } else {
        hex(&sb.salt)
    };
    let hash_start = hash_offset / u64::from(sb.hash_block_size) + 1;
    Ok(dm::Target {
        start: 0,
        length: sb.data_blocks * u64::from(sb.data_block_size) / 512,
        kind: "verity".into(),
        params: format!(
            "1 {dev} {dev} {} {} {} {hash_start} {} {usrhash} {salt} 1 {}",
            sb.data_block_size,
            sb.hash_block_size,
            sb.data_blocks,
            sb.algorithm.name(),
            on.verity_arg()
        ),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GPT unique partition GUIDs of a whole disk, by partition number, as
/// lower-case text (the shared GPT reader checks signature and CRCs).
pub fn gpt_partuuids(disk: &File) -> InitResult<BTreeMap<u32, String>> {
    use std::os::unix::fs::FileExt;
    let table =
        gpt::Table::decode(|off, buf| disk.read_exact_at(buf, off)).map_err(InitError::Disk)?;
    Ok(table
        .entries
        .iter()
        .map(|e| (e.number, e.uuid.hyphenated().to_string()))
        .collect())
}

// ---- the side-effecting part: only ever runs as pid 1 in the guest ----

/// Entry point as pid 1. Never returns.
pub fn run() -> ! {
    say("sdk-init: starting");
    if let Err(e) = boot() {
        say(&format!("sdk-init: error: {e}"));
        // What this boot wrote to ROOT (the first-boot mark, /etc) on the
        // disk before the panic, and before the line that says it is over:
        // ROOT has no journal, and a power cut on top of unwritten
        // metadata left its bitmaps broken for the next boot (seen under
        // load: the next first boot did not see the mark).
        nix::unistd::sync();
        say("sdk-init: cannot continue the boot");
        // Exiting pid 1 makes the kernel panic (and reboot with panic=N).
        std::process::exit(1);
    }
    unreachable_exec()
}

fn unreachable_exec() -> ! {
    say("sdk-init: error: exec of the OS init returned");
    std::process::exit(1)
}

fn say(msg: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> InitResult<()> {
    std::fs::create_dir_all(target).map_err(os(format!("mkdir {target}")))?;
    nix::mount::mount(Some(src), target, Some(fstype), flags, data)
        .map_err(os(format!("mount {src} on {target} ({fstype})")))
}

fn boot() -> InitResult<()> {
    use nix::mount::MsFlags;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount("proc", "/proc", "proc", nosuid, None)?;
    mount("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;

    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(os("read /proc/cmdline"))?;
    let plan = Plan::from_cmdline(&parse_cmdline(&cmdline))?;
    load_modules()?;

    let slot = setup_verity_usr(&plan)?;
    mount_root_and_usr(&plan)?;
    start_slot_kernel(&plan, &cmdline, &slot)?;
    let first = first_boot(Path::new("/sysroot"))?;
    switch_root(&plan, first)
}

/// Find USR, read its verity superblock and create `/dev/mapper/usr`
/// with the root hash from the command line. Returns the slot's label.
fn setup_verity_usr(plan: &Plan) -> InitResult<String> {
    let (usr_dev, usrhash, hash_offset) = match &plan.usr_url {
        Some(url) => {
            let file = super::netroot::usr_file(url, plan.ip.as_ref(), plan.timeout, &say)
                .map_err(InitError::Disk)?;
            let (name, major, minor) = super::netroot::attach(&file).map_err(InitError::Disk)?;
            let dev = BlockDev {
                name,
                label: "USR image".into(),
                major,
                minor,
            };
            (dev, plan.usrhash.clone(), plan.hash_offset)
        }
        None => pick_slot(plan, wait_for(&plan.usr, plan.timeout)?),
    };
    let plan = &Plan {
        usrhash,
        hash_offset,
        ..plan.clone()
    };
    say(&format!(
        "sdk-init: USR is {} ({}, {}:{})",
        usr_dev.name, usr_dev.label, usr_dev.major, usr_dev.minor
    ));
    let mut f = File::open(format!("/dev/{}", usr_dev.name))
        .map_err(os(format!("open /dev/{}", usr_dev.name)))?;
    let hash_offset = match plan.hash_offset {
        Some(o) => o,
        None => {
            let mut head = vec![0u8; 4096];
            f.read_exact(&mut head).map_err(os("read USR"))?;
            fs::image_size(&head).ok_or_else(|| InitError::Disk("USR holds no ext4, erofs or squashfs filesystem and verity.usrhashoffset= is not set".into()))?
        }
    };
    let mut sbb = [0u8; superblock::SIZE];
    f.seek(SeekFrom::Start(hash_offset))
        .and_then(|_| f.read_exact(&mut sbb))
        .map_err(os(format!("read the verity superblock at {hash_offset}")))?;
    let sb = Superblock::decode(&sbb)
        .map_err(|e| InitError::Disk(format!("USR at offset {hash_offset}: {e}")))?;
    let dev = format!("{}:{}", usr_dev.major, usr_dev.minor);
    let table = verity_table(&sb, &dev, hash_offset, &plan.usrhash, plan.on_corruption)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(os("open /dev/mapper/control (is dm-mod loaded?)"))?;
    let (maj, min) =
        dm::create_readonly(&control, "usr", "", &[table]).map_err(os("set up dm-verity"))?;
    std::fs::create_dir_all("/dev/mapper").map_err(os("mkdir /dev/mapper"))?;
    if !Path::new("/dev/mapper/usr").exists() {
        nix::sys::stat::mknod(
            "/dev/mapper/usr",
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(maj.into(), min.into()),
        )
        .map_err(os("mknod /dev/mapper/usr"))?;
    }
    say(&format!(
        "sdk-init: dm-verity USR ready ({} blocks, {}, {})",
        sb.data_blocks,
        sb.algorithm.name(),
        plan.on_corruption.verity_arg()
    ));

    Ok(usr_dev.label)
}

/// When the slot's USR carries another kernel + initramfs than the ones
/// running (its `boot.conf` id against `sdk.boot=`), start those with
/// kexec: see `boot::slotboot`. A boot that was itself kexec'd for a slot
/// (`sdk.usr-slot=`), or whose command line does not say what runs, goes
/// on with what it has.
fn start_slot_kernel(plan: &Plan, cmdline: &str, slot: &str) -> InitResult<()> {
    use super::slotboot::{CONF, SlotBoot};
    use nix::mount::{MntFlags, umount2};
    let Some(running) = &plan.boot_id else {
        return Ok(());
    };
    let Some(conf) = std::fs::read_to_string(format!("/sysroot/{CONF}"))
        .ok()
        .and_then(|t| SlotBoot::parse(&t))
    else {
        return Ok(());
    };
    if conf.id == *running {
        return Ok(());
    }
    if plan.pinned_slot.is_some() {
        say(&format!(
            "sdk-init: warning: {slot} holds kernel {} (boot {}), this is boot {running}; booting on with this one",
            conf.version, conf.id
        ));
        return Ok(());
    }
    say(&format!(
        "sdk-init: {slot} boots with its own kernel {} (boot {}, this is {running}): starting it",
        conf.version, conf.id
    ));
    let open = |p: &str| {
        let path = format!("/sysroot{p}");
        File::open(&path).map_err(os(format!("open {path}")))
    };
    let (kernel, initrd) = (open(&conf.kernel)?, open(&conf.initrd)?);
    let next = super::slotboot::kexec_cmdline(cmdline, &conf.id, slot);
    let next = std::ffi::CString::new(next)
        .map_err(|_| InitError::Cmdline("the command line holds a NUL byte".into()))?;
    use std::os::fd::AsFd;
    sdk_common::linux::kexec_file_load(kernel.as_fd(), initrd.as_fd(), &next)
        .map_err(os("load the slot's kernel (kexec_file_load)"))?;
    drop((kernel, initrd));
    for m in ["/sysroot/usr", "/sysroot"] {
        umount2(m, MntFlags::empty()).map_err(os(format!("unmount {m}")))?;
    }
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC);
    Err(os("start the slot's kernel (reboot RB_KEXEC)")(e))
}

/// ROOT on /sysroot, the verity device read-only on /sysroot/usr.
fn mount_root_and_usr(plan: &Plan) -> InitResult<()> {
    use nix::mount::MsFlags;
    if plan.root == PartSpec::Tmpfs {
        mount(
            "tmpfs",
            "/sysroot",
            "tmpfs",
            MsFlags::empty(),
            Some("mode=0755"),
        )?;
    } else {
        let root_dev = wait_for(&plan.root, plan.timeout)?;
        mount(
            &format!("/dev/{}", root_dev.name),
            "/sysroot",
            &plan.rootfstype,
            MsFlags::empty(),
            None,
        )?;
    }
    let mut head = vec![0u8; 4096];
    File::open("/dev/mapper/usr")
        .and_then(|mut u| u.read_exact(&mut head))
        .map_err(os(
            "read /dev/mapper/usr (a verity failure shows in the kernel log above)",
        ))?;
    let usrfs = if head.get(..4) == Some(b"hsqs") {
        "squashfs"
    } else if head.get(1024..1028) == Some(&0xE0F5_E1E2u32.to_le_bytes()) {
        "erofs"
    } else {
        "ext4"
    };
    mount(
        "/dev/mapper/usr",
        "/sysroot/usr",
        usrfs,
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;

    Ok(())
}

/// Move the API filesystems into /sysroot, make it / and exec the OS init.
fn switch_root(plan: &Plan, first: bool) -> InitResult<()> {
    use nix::mount::MsFlags;
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("/sysroot{m}");
        std::fs::create_dir_all(&target).map_err(os(format!("mkdir {target}")))?;
        nix::mount::mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(os(format!("move {m}")))?;
    }
    if first {
        ignition()?;
        first_boot_done(Path::new("/sysroot"))?;
    }
    let init = pick_init(plan)?;
    say(&format!("sdk-init: switching root to {init}"));
    free_initramfs();
    std::env::set_current_dir("/sysroot").map_err(os("chdir /sysroot"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(os("move /sysroot to /"))?;
    nix::unistd::chroot(".").map_err(os("chroot"))?;
    std::env::set_current_dir("/").map_err(os("chdir /"))?;
    let prog = std::ffi::CString::new(init.clone())
        .map_err(|_| InitError::Cmdline(format!("init `{init}` holds a NUL byte")))?;
    let Err(err) = nix::unistd::execv(&prog, std::slice::from_ref(&prog));
    Err(os(format!("exec {init}"))(err))
}

fn load_modules() -> InitResult<()> {
    let ver = std::fs::read_to_string(format!("/{KERNEL_VERSION_FILE}"))
        .map_err(os(format!("read {KERNEL_VERSION_FILE}")))?;
    let list = std::fs::read_to_string(format!("/{MODULES_LIST}"))
        .map_err(os(format!("read {MODULES_LIST}")))?;
    for m in list.lines().filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{}/{m}", ver.trim());
        let f = File::open(&path).map_err(os(format!("open {path}")))?;
        match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(os(format!("load module {m}"))(e)),
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct BlockDev {
    name: String,
    label: String,
    major: u32,
    minor: u32,
}

fn uevent(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("uevent"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The disk a partition (`vda3`) is on (`vda`).
fn parent_disk(part: &str) -> Option<String> {
    Some(
        std::fs::canonicalize(format!("/sys/class/block/{part}"))
            .ok()?
            .parent()?
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// The slot to boot, by the GPT (see `gptprio`), among the USR partitions
/// of the disk that holds the one the command line names (`named`); with
/// its root hash and hash offset: those of the slot's signed record
/// (checked with the keys the initramfs carries), else the command line's
/// when it names that slot. Whatever stands in the way (one USR partition, no slot
/// bootable by the GPT, a record missing or not signed by a trusted key)
/// is said on the console and the command line's slot boots. The choice
/// is left in `/run/sdk-init/usr-slot` for the update agent.
fn pick_slot(plan: &Plan, named: BlockDev) -> (BlockDev, String, Option<u64>) {
    let fallback = |named: BlockDev| (named, plan.usrhash.clone(), plan.hash_offset);
    let Some(disk) = parent_disk(&named.name) else {
        return fallback(named);
    };
    let disk_path = PathBuf::from(format!("/dev/{disk}"));
    let table = match File::open(&disk_path)
        .map_err(|e| e.to_string())
        .and_then(|f| gpt::Table::decode(|off, buf| f.read_exact_at(buf, off)))
    {
        Ok(t) => t,
        Err(e) => {
            say(&format!(
                "sdk-init: cannot read the GPT of {disk} ({e}); booting {} from the command line",
                named.label
            ));
            return fallback(named);
        }
    };
    let Some(named_type) = table
        .entries
        .iter()
        .find(|e| e.label == named.label)
        .map(|e| e.type_guid)
    else {
        return fallback(named);
    };
    let slots: Vec<gpt::Entry> = table
        .entries
        .iter()
        .filter(|e| e.type_guid == named_type)
        .cloned()
        .collect();
    if slots.len() < 2 {
        return fallback(named);
    }
    let chosen = match &plan.pinned_slot {
        Some(label) => super::gptprio::pinned(&slots, label),
        None => super::gptprio::choose(&slots),
    };
    let Some(choice) = chosen else {
        say(&format!(
            "sdk-init: no USR slot may boot by the GPT (priority 0, or tries spent and not successful); booting {} from the command line",
            named.label
        ));
        return fallback(named);
    };
    let record =
        |choice: &super::gptprio::Choice| -> Result<(BlockDev, String, Option<u64>), String> {
            let dev = find_part(&PartSpec::Label(choice.label.clone()))
                .ok_or_else(|| format!("no device for {}", choice.label))?;
            let path = format!("/dev/{}", dev.name);
            let mut f = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            let size = f
                .seek(SeekFrom::End(0))
                .map_err(|e| format!("size of {path}: {e}"))?;
            let mut b = vec![0u8; crate::formats::update::RECORD_BYTES as usize];
            f.read_exact_at(&mut b, crate::formats::update::record_offset(size))
                .map_err(|e| format!("read its record: {e}"))?;
            let (bytes, sig) = crate::formats::update::decode_record(&b).ok_or_else(|| {
                "it holds no slot record (never installed, or cut short)".to_string()
            })?;
            let keys = crate::formats::update::load_public_keys(Path::new(&format!(
                "/{}",
                super::initramfs::KEYS_DIR
            )))
            .map_err(|e| e.to_string())?;
            let (meta, _) =
                crate::formats::update::verify_bytes(Path::new(&path), &bytes, &sig, &keys)
                    .map_err(|e| e.to_string())?;
            Ok((dev, meta.usr.root_hash, Some(meta.usr.hash_offset)))
        };
    // The slot's record says what it holds now (an update may have
    // rewritten the slot the command line names); without one, the
    // command line's hash is the named slot's.
    let picked = match record(&choice) {
        Ok(p) => Ok(p),
        Err(_) if choice.label == named.label => Ok(fallback(named.clone())),
        Err(why) => Err(why),
    };
    let picked = match picked {
        Ok(p) => p,
        Err(why) => {
            // The GPT stays as it is: a record that cannot be read here
            // says nothing about the slot's health.
            say(&format!(
                "sdk-init: {} cannot boot: {why}; {} boots, from the command line",
                choice.label, named.label
            ));
            return fallback(named);
        }
    };
    if let Some(attrs) = choice.write_back
        && let Err(e) = crate::formats::disk::set_attributes(&disk_path, choice.number, attrs)
    {
        say(&format!(
            "sdk-init: warning: cannot count this try in the GPT: {e}"
        ));
    }
    say(&format!(
        "sdk-init: slot {} by the GPT ({}, {} tries left)",
        choice.label,
        if choice.successful {
            "successful"
        } else {
            "not yet successful"
        },
        choice.tries_left
    ));
    let _ = std::fs::create_dir_all("/run/sdk-init");
    let _ = std::fs::write(
        "/run/sdk-init/usr-slot",
        format!(
            "label={}\nnumber={}\ndisk={}\nsuccessful={}\ntries-left={}\n",
            choice.label,
            choice.number,
            disk_path.display(),
            u8::from(choice.successful),
            choice.tries_left
        ),
    );
    picked
}

fn find_part(spec: &PartSpec) -> Option<BlockDev> {
    let rd = std::fs::read_dir("/sys/class/block").ok()?;
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.join("partition").exists() {
            continue;
        }
        let ev = uevent(&dir);
        let name = ev.get("DEVNAME")?.clone();
        let hit = match spec {
            PartSpec::Label(l) => ev.get("PARTNAME") == Some(l),
            PartSpec::Path(p) => p == &PathBuf::from(format!("/dev/{name}")),
            PartSpec::Tmpfs => false,
            PartSpec::Uuid(u) => {
                let parent = std::fs::canonicalize(&dir)
                    .ok()?
                    .parent()?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned();
                let partn: u32 = ev.get("PARTN")?.parse().ok()?;
                let disk = File::open(format!("/dev/{parent}")).ok()?;
                gpt_partuuids(&disk).ok()?.get(&partn) == Some(u)
            }
        };
        if hit {
            return Some(BlockDev {
                name,
                label: ev.get("PARTNAME").cloned().unwrap_or_default(),
                major: ev.get("MAJOR")?.parse().ok()?,
                minor: ev.get("MINOR")?.parse().ok()?,
            });
        }
    }
    None
}

fn wait_for(spec: &PartSpec, timeout: Duration) -> InitResult<BlockDev> {
    let start = Instant::now();
    loop {
        if let Some(d) = find_part(spec)
            && std::fs::metadata(format!("/dev/{}", d.name))
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false)
        {
            return Ok(d);
        }
        if start.elapsed() > timeout {
            return Err(InitError::Disk(format!(
                "partition {spec:?} did not appear within {}s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On ROOT while a first boot is under way: made before the first boot
/// writes anything, removed once /etc and Ignition are done. A first
/// boot cut short (power lost, a config Ignition refused) leaves it, and
/// the next boot starts the first boot over from an empty ROOT rather
/// than booting a half-provisioned machine without its config.
const FIRST_BOOT_MARK: &str = ".sdk-init-first-boot";

/// An unfinished first boot's leftovers: everything on ROOT but
/// `lost+found`, the mark and the mount points of this boot.
fn start_over(sysroot: &Path) -> InitResult<()> {
    say("sdk-init: the first boot did not finish last time: ROOT starts over");
    for e in std::fs::read_dir(sysroot)
        .map_err(os("read ROOT"))?
        .flatten()
    {
        let name = e.file_name();
        if [
            "lost+found",
            FIRST_BOOT_MARK,
            "usr",
            "dev",
            "proc",
            "sys",
            "run",
        ]
        .iter()
        .any(|k| name == *k)
        {
            continue;
        }
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        r.map_err(os(format!("remove {} from ROOT", p.display())))?;
    }
    Ok(())
}

/// The first boot finished: drop the mark, durably.
fn first_boot_done(sysroot: &Path) -> InitResult<()> {
    let mark = sysroot.join(FIRST_BOOT_MARK);
    nix::unistd::sync();
    std::fs::remove_file(&mark).map_err(os(format!("remove {}", mark.display())))?;
    nix::unistd::sync();
    Ok(())
}

/// ROOT starts empty: make the top-level directories and the /usr-merge
/// links, and on the first boot copy /usr/share/factory/etc (the image's
/// /etc defaults, systemd's convention) into /etc.
fn first_boot(sysroot: &Path) -> InitResult<bool> {
    let mark = sysroot.join(FIRST_BOOT_MARK);
    let unfinished = mark.exists();
    let first = unfinished || !sysroot.join("etc").exists();
    if unfinished {
        start_over(sysroot)?;
    }
    if first {
        std::fs::write(&mark, b"").map_err(os(format!("write {}", mark.display())))?;
        nix::unistd::sync();
    }
    for d in [
        "etc", "var", "home", "root", "tmp", "run", "proc", "sys", "dev", "mnt", "opt", "media",
        "srv",
    ] {
        std::fs::create_dir_all(sysroot.join(d)).map_err(os(format!("create /{d} on ROOT")))?;
    }
    let _ = nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &sysroot.join("tmp"),
        nix::sys::stat::Mode::from_bits_truncate(0o1777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    );
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let l = sysroot.join(link);
        if sysroot.join(target).exists() && std::fs::symlink_metadata(&l).is_err() {
            std::os::unix::fs::symlink(target, &l).map_err(os(format!("link /{link}")))?;
        }
    }
    let factory = sysroot.join("usr/share/factory/etc");
    if first && factory.is_dir() {
        copy_tree(&factory, &sysroot.join("etc"))
            .map_err(os("copy /usr/share/factory/etc to /etc"))?;
        say("sdk-init: first boot: /etc populated from /usr/share/factory/etc");
    }
    Ok(first)
}

/// Debian's Ignition binary, as the OS image carries it (package ignition).
const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";
/// Where QEMU's fw_cfg shows the configs (Ignition's QEMU platform name and
/// Flatcar's), with the API filesystems already moved into /sysroot.
const FW_CFG_CONFIGS: &[&str] = &[
    "/sysroot/sys/firmware/qemu_fw_cfg/by_name/opt/com.coreos/config",
    "/sysroot/sys/firmware/qemu_fw_cfg/by_name/opt/org.flatcar-linux/config",
];

/// First boot only: apply the Ignition config QEMU passed, with the OS's
/// own Ignition run inside the new root (so `useradd` and the rest are the
/// OS's), stages fetch-offline then files. A config Ignition refuses stops
/// the boot; a config for an OS without Ignition is said on the console.
fn ignition() -> InitResult<()> {
    if !FW_CFG_CONFIGS.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    if !Path::new(&format!("/sysroot{IGNITION}")).exists() {
        say(
            "sdk-init: warning: an Ignition config was passed, but this OS carries no Ignition (Debian package ignition); booting without it",
        );
        return Ok(());
    }
    // Debian's Ignition relabels what it wrote with setfiles whatever the
    // OS says; an OS with SELinux disabled has nothing to label, and gets a
    // setfiles that says so, on Ignition's PATH only.
    let mut path = "/usr/sbin:/usr/bin".to_string();
    let selinux = std::fs::read_to_string("/sysroot/etc/selinux/config").unwrap_or_default();
    if selinux.lines().any(|l| l.trim() == "SELINUX=disabled") {
        let dir = "/sysroot/run/sdk-init/bin";
        std::fs::create_dir_all(dir).map_err(os(format!("mkdir {dir}")))?;
        let shim = format!("{dir}/setfiles");
        std::fs::write(
            &shim,
            "#!/bin/sh\n# SELinux is disabled in this OS (/etc/selinux/config): nothing to label.\nexit 0\n",
        )
        .map_err(os(format!("write {shim}")))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))
            .map_err(os(format!("chmod {shim}")))?;
        path = format!("/run/sdk-init/bin:{path}");
    }
    for stage in ["fetch-offline", "files"] {
        say(&format!("sdk-init: Ignition stage {stage}"));
        let mut cmd = std::process::Command::new(IGNITION);
        cmd.args([
            "-platform",
            "qemu",
            "-root",
            "/",
            "-stage",
            stage,
            "-log-to-stdout",
        ])
        .env("PATH", &path);
        sdk_common::linux::chroot_before_exec(&mut cmd, Path::new("/sysroot"));
        let status = cmd
            .status()
            .map_err(os(format!("run Ignition ({stage})")))?;
        if !status.success() {
            return Err(InitError::Disk(format!(
                "Ignition stage {stage} failed ({status}); its messages are above: fix the config and boot a fresh image"
            )));
        }
    }
    let _ = std::fs::remove_dir_all("/sysroot/run/sdk-init/bin");
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let md = std::fs::symlink_metadata(&src)?;
        if md.is_dir() {
            copy_tree(&src, &dst)?;
        } else if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
        if !md.file_type().is_symlink() {
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(md.permissions().mode()),
            )?;
        }
    }
    Ok(())
}

fn pick_init(plan: &Plan) -> InitResult<String> {
    if let Some(i) = &plan.init {
        return Ok(i.clone());
    }
    for c in [
        "/usr/lib/systemd/systemd",
        "/usr/sbin/init",
        "/usr/bin/init",
    ] {
        if std::fs::symlink_metadata(format!("/sysroot{c}")).is_ok() {
            return Ok(c.to_string());
        }
    }
    Err(InitError::Disk("no init in the OS (/usr/lib/systemd/systemd, /usr/sbin/init, /usr/bin/init); set init= on the kernel command line".into()))
}

/// Delete the initramfs contents (they stay in RAM otherwise). Only files
/// on the initramfs itself: /sysroot and the moved mounts are skipped.
fn free_initramfs() {
    use std::os::unix::fs::MetadataExt;
    fn rm(dir: &Path, dev: u64) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.dev() == dev && p != Path::new("/sysroot") => {
                    if md.is_dir() {
                        rm(&p, dev);
                        let _ = std::fs::remove_dir(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(md) = std::fs::metadata("/") {
        rm(Path::new("/"), md.dev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "4b8c0d5bbc3a4bc1e1a5e0a7f2b5a6c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4";

    #[test]
    fn flatcar_style_cmdline() {
        let c = parse_cmdline(&format!(
            "console=ttyS0 mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130C94A-213A-4E5A-8E26-6CCE9662F132 verity.usrhash={HASH} root=PARTLABEL=ROOT"
        ));
        let p = Plan::from_cmdline(&c).unwrap();
        assert_eq!(
            p.usr,
            PartSpec::Uuid("7130c94a-213a-4e5a-8e26-6cce9662f132".into())
        );
        assert_eq!(p.usrhash, HASH);
        assert_eq!(p.on_corruption, OnCorruption::Panic);
        assert_eq!(p.root, PartSpec::Label("ROOT".into()));
    }

    #[test]
    fn mount_usr_label_and_restart() {
        let c = parse_cmdline(&format!(
            "mount.usr=PARTLABEL=USR-B usrhash={HASH} verity.usrcorruption=restart verity.usrhashoffset=8192"
        ));
        let p = Plan::from_cmdline(&c).unwrap();
        assert_eq!(p.usr, PartSpec::Label("USR-B".into()));
        assert_eq!(p.hash_offset, Some(8192));
        assert_eq!(p.on_corruption, OnCorruption::Restart);
    }

    #[test]
    fn a_usr_image_from_the_network_with_root_in_memory() {
        let c = parse_cmdline(&format!(
            "sdk.usr-url=tftp://10.0.2.2/x_usr.squashfs ip=10.0.2.15:10.0.2.2:10.0.2.2:255.255.255.0:::off usrhash={HASH} root=tmpfs"
        ));
        let p = Plan::from_cmdline(&c).unwrap();
        assert!(matches!(
            p.usr_url,
            Some(crate::boot::netroot::UsrUrl::Tftp { .. })
        ));
        assert_eq!(p.ip.unwrap().client, std::net::Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p.root, PartSpec::Tmpfs);
        // A network source without ip=, or a bad one, is refused up front.
        let c = parse_cmdline(&format!(
            "sdk.usr-url=tftp://10.0.2.2/x ip=dhcp usrhash={HASH}"
        ));
        assert!(Plan::from_cmdline(&c).is_err());
        // The verity hash stays required.
        let c = parse_cmdline("sdk.usr-url=cdrom:/usr.img root=tmpfs");
        assert!(Plan::from_cmdline(&c).is_err());
    }

    #[test]
    fn no_hash_no_boot() {
        let c = parse_cmdline("mount.usr=PARTLABEL=USR-A");
        assert!(
            Plan::from_cmdline(&c)
                .unwrap_err()
                .to_string()
                .contains("without dm-verity")
        );
        let c = parse_cmdline(&format!("usrhash={HASH}"));
        assert!(Plan::from_cmdline(&c).is_err());
    }

    #[test]
    fn verity_table_from_the_shared_superblock() {
        let sb = Superblock {
            uuid: [7; 16],
            algorithm: crate::formats::verity::Algorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 100,
            salt: vec![0xab, 0xcd],
        };
        let v = Superblock::decode(&sb.encode()).unwrap();
        let t = verity_table(&v, "254:3", 409600, HASH, OnCorruption::Panic).unwrap();
        assert_eq!(t.length, 800);
        assert_eq!(
            t.params,
            format!("1 254:3 254:3 4096 4096 100 101 sha256 {HASH} abcd 1 panic_on_corruption")
        );
        assert!(verity_table(&v, "254:3", 1000, HASH, OnCorruption::Panic).is_err());
    }

    #[test]
    fn partuuids_come_from_the_shared_gpt_reader() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        let layout = crate::formats::disk::Layout::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/amd64-usr/disk-layout.toml"),
            None,
        )
        .unwrap();
        layout.write_image(&img).unwrap();
        let got = gpt_partuuids(&File::open(&img).unwrap()).unwrap();
        assert_eq!(
            got.get(&3).map(String::as_str),
            Some("7130c94a-213a-4e5a-8e26-6cce9662f132")
        );
    }
}
