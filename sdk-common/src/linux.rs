//! The narrow syscall surface both binaries use: every namespace, mount
//! and process call of the sandbox (behind the [`Sys`] trait, so the order
//! of calls is checked by unit tests without root through [`Recorder`],
//! which can also inject a failure), and the allocation-free calls that
//! sdk-tools' build confinement makes between fork and exec
//! ([`set_readonly_recursive`], [`write_once`]). Almost all of the
//! project's `unsafe` lives here, each block with its reason.
//!
//! It does not decide *what* to mount; `sdk-run`'s `sandbox::mounts` and
//! `sdk-tools`' `packages::isolate` do.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Namespace, mount and file calls used to build and join a sandbox.
pub trait Sys {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> Result<(), Errno>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// Make a mount and everything below it read-only (`mount_setattr`).
    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno>;
    /// `chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`:
    /// the old root is stacked under the new one and detached.
    fn pivot_root(&self, new_root: &Path) -> Result<(), Errno>;
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// `mkdir -p`, mode 0755 for what it creates.
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno>;
    /// Create an empty file (a bind-mount target) if it does not exist.
    fn touch(&self, path: &Path) -> Result<(), Errno>;
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno>;
}

/// The real thing.
pub struct Linux;

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Sys for Linux {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> Result<(), Errno> {
        nix::sched::setns(fd, kind)
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        mount_setattr_rdonly(target)
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(new_root)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")
    }
    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        std::fs::create_dir_all(path).map_err(io_errno)
    }
    fn touch(&self, path: &Path) -> Result<(), Errno> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_errno(e)),
        }
    }
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno> {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_errno(e)),
        }
    }
}

/// A [`Sys`] that only records the calls, for unit tests of sequences;
/// [`Recorder::fail_on`] makes one call fail, for tests of error paths.
#[derive(Default)]
pub struct Recorder {
    pub calls: std::cell::RefCell<Vec<String>>,
    fail: std::cell::RefCell<Option<(String, Errno)>>,
}

fn flag_names<'a>(it: impl Iterator<Item = (&'a str, ())>) -> String {
    let v: Vec<&str> = it.map(|(n, ())| n).collect();
    if v.is_empty() {
        "0".into()
    } else {
        v.join("|")
    }
}

impl Recorder {
    fn push(&self, s: String) -> Result<(), Errno> {
        let fail = match &*self.fail.borrow() {
            Some((prefix, e)) if s.starts_with(prefix.as_str()) => Some(*e),
            _ => None,
        };
        self.calls.borrow_mut().push(s);
        fail.map_or(Ok(()), Err)
    }
    /// Make every later call whose record starts with `prefix` (e.g.
    /// `"pivot_root"`, `"mount proc"`) fail with `e` (it is still recorded).
    pub fn fail_on(&self, prefix: &str, e: Errno) {
        *self.fail.borrow_mut() = Some((prefix.to_string(), e));
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

impl Sys for Recorder {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        self.push(format!(
            "unshare {}",
            flag_names(flags.iter_names().map(|(n, _)| (n, ())))
        ))
    }
    fn setns(&self, _fd: BorrowedFd<'_>, kind: CloneFlags) -> Result<(), Errno> {
        self.push(format!(
            "setns {}",
            flag_names(kind.iter_names().map(|(n, _)| (n, ())))
        ))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.push(format!(
            "mount {} {} {} {} {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display(),
            fstype.unwrap_or("-"),
            flag_names(flags.iter_names().map(|(n, _)| (n, ()))),
            data.unwrap_or("-")
        ))
    }
    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        self.push(format!("readonly {}", target.display()))
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), Errno> {
        self.push(format!("pivot_root {}", new_root.display()))
    }
    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.push(format!("sethostname {name}"))
    }
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        self.push(format!("mkdir {}", path.display()))
    }
    fn touch(&self, path: &Path) -> Result<(), Errno> {
        self.push(format!("touch {}", path.display()))
    }
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno> {
        self.push(format!("symlink {target} {}", link.display()))
    }
}

// ---- calls nix does not wrap -------------------------------------------

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)
}

fn mount_setattr_rdonly(target: &Path) -> Result<(), Errno> {
    set_readonly_recursive(&cpath(target)?, true)
}

/// `mount_setattr(AT_FDCWD, target, AT_RECURSIVE, {RDONLY set or cleared})`
/// (Linux 5.12): read-only (or writable again) for a whole mount tree in
/// one call, without repeating each mount's locked flags as `MS_REMOUNT`
/// would. Allocation-free: safe between fork and exec.
pub fn set_readonly_recursive(target: &CStr, readonly: bool) -> Result<(), Errno> {
    let mut attr = libc::mount_attr {
        attr_set: if readonly { libc::MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if readonly { 0 } else { libc::MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `target` is a valid NUL-terminated path and `attr` a valid
    // mount_attr that outlives the call; the size passed is its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Write `data` to `path` in one `write(2)` (a `/proc/self/uid_map` must
/// be written at once). Allocation-free: safe between fork and exec.
pub fn write_once(path: &CStr, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: `path` is a valid NUL-terminated string; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    let fd = Errno::result(fd)?;
    // SAFETY: `data` is a live buffer of `data.len()` bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = Errno::last();
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(if n < 0 { err } else { Errno::EIO });
    }
    Ok(())
}

/// `kexec_file_load(2)`: stage `kernel` and `initrd` with `cmdline` as
/// the kernel to start on the next `reboot(RB_KEXEC)`. The kernel reads
/// both files itself (and checks the kernel's signature where its policy
/// asks for one).
pub fn kexec_file_load(
    kernel: BorrowedFd<'_>,
    initrd: BorrowedFd<'_>,
    cmdline: &CStr,
) -> Result<(), Errno> {
    let bytes = cmdline.to_bytes_with_nul();
    // SAFETY: two open fds, and a NUL-terminated string of `bytes.len()`
    // bytes (the length counts the NUL, as the call wants) that outlives
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            bytes.len(),
            bytes.as_ptr(),
            0usize,
        )
    };
    Errno::result(r).map(drop)
}

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// Attach `file` to a free loop device (asked of `/dev/loop-control`),
/// its data starting `offset` bytes in. The device is read-only when
/// `file` was opened read-only. Returns the loop device's number
/// (`/dev/loop<N>`, block major 7, minor N). The device stays attached
/// after this returns (no auto-clear: the caller's open of it would be
/// the last one and detach it).
pub fn loop_attach(file: BorrowedFd<'_>, offset: u64) -> Result<u32, Errno> {
    use std::os::fd::AsFd;
    let ctl = nix::fcntl::open(
        "/dev/loop-control",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let n = Errno::result(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    let n = u32::try_from(n).map_err(|_| Errno::EINVAL)?;
    let read_only = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map(|f| f & libc::O_ACCMODE == libc::O_RDONLY)
        .unwrap_or(true);
    let mode = if read_only {
        nix::fcntl::OFlag::O_RDONLY
    } else {
        nix::fcntl::OFlag::O_RDWR
    };
    let dev = nix::fcntl::open(
        format!("/dev/loop{n}").as_str(),
        mode | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: LOOP_SET_FD takes an fd number by value; `file` is open.
    Errno::result(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, file.as_raw_fd()) })?;
    if offset == 0 {
        return Ok(n);
    }
    let info = LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: 0,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
    // SAFETY: LOOP_SET_STATUS64 reads a loop_info64, which `info` is
    // (repr(C), the kernel's layout), alive for the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &info) };
    if let Err(e) = Errno::result(r) {
        // SAFETY: LOOP_CLR_FD (0x4C01) takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), 0x4C01) };
        return Err(e);
    }
    Ok(n)
}

/// `addr` as the `sockaddr` the interface and route ioctls take.
fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; sockaddr is
    // plain bytes, so any bit pattern is valid.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Give interface `name` the IPv4 address `addr`/`netmask`, bring it up,
/// and route everything through `gateway` when there is one: what the
/// kernel's `ip=` autoconfiguration would do with a static address.
pub fn ipv4_configure(
    name: &str,
    addr: std::net::Ipv4Addr,
    netmask: std::net::Ipv4Addr,
    gateway: Option<std::net::Ipv4Addr>,
) -> Result<(), Errno> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(Errno::ENAMETOOLONG);
    }
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = || {
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req
    };
    let mut req = request();
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR reads the ifreq we own for the duration of the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) })?;
    let mut req = request();
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
    // SAFETY: as above, SIOCSIFNETMASK.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) })?;
    let mut req = request();
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above, SIOCSIFFLAGS.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    if let Some(gw) = gateway.filter(|g| !g.is_unspecified()) {
        // SAFETY: rtentry is plain data; zeroed is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: SIOCADDRT reads the rtentry we own for the call (its
        // device pointer is null: the kernel picks it by the gateway).
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) };
        match Errno::result(r) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `fork(2)`.
///
/// Only call it while the process is single-threaded, or from code that
/// only does async-signal-safe work (and allocations, which glibc makes
/// fork-safe) in the child.
pub fn fork() -> Result<nix::unistd::ForkResult, Errno> {
    // SAFETY: sdk-run is single-threaded where it forks (it starts no
    // threads); library callers are told the same in `sandbox::userns`.
    unsafe { nix::unistd::fork() }
}

/// A pidfd for `pid` (Linux 5.3): poll it to wait for a process that is
/// not our child, and signal it without racing pid reuse.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal`.
pub fn pidfd_kill(fd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall; a null siginfo means "as kill(2) would".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Close every fd from `first` up, except `keep` (in the sandbox init,
/// which must not hold the launcher's lock or pipes).
pub fn close_fds_from(first: RawFd, keep: &[RawFd]) {
    let mut lo = first;
    let mut sorted = keep.to_vec();
    sorted.sort_unstable();
    for k in sorted.into_iter().filter(|&k| k >= first) {
        if k > lo {
            close_range(lo, k - 1);
        }
        lo = k + 1;
    }
    close_range(lo, RawFd::MAX);
}

fn close_range(lo: RawFd, hi: RawFd) {
    // SAFETY: close_range only closes fds; the callers own the process's
    // fd table at this point (the init after fork).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lo as libc::c_uint,
            hi as libc::c_uint,
            0,
        );
    }
}

/// The window size of a terminal.
pub fn get_winsize(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid struct we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Set the window size of a terminal (the pty master).
pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one winsize from the valid struct we pass.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize);
    }
}

/// Open the peer (slave) of a pty master without a path lookup
/// (`TIOCGPTPEER`, Linux 4.13): it is always the master's own devpts.
pub fn open_pty_peer(master: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let fd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make `fd` (a terminal) the controlling terminal of this session leader.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY with arg 0 only changes this process's session.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}

/// Bring the loopback interface up in a fresh network namespace.
pub fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own for the duration of the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map(drop)
}

/// Undo what the launcher changed about signals before exec: Rust
/// ignores SIGPIPE (ignored signals survive exec), and the launcher blocks
/// the signals it relays. Dispositions the caller set up (e.g. `nohup`'s
/// ignored SIGHUP) are left alone, as any launcher would.
pub fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    // SAFETY: setting SIG_DFL installs no Rust handler.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Ask the kernel to send `sig` to this process when the thread that
/// forked it exits, whatever ends it (a signal, SIGKILL, a crash).
/// Returns false when that parent is gone already (the death signal would
/// never come): the caller should exit. Call it in a forked child after
/// any change of user ids (a credential change clears the setting).
pub fn die_with_parent(sig: i32, parent: i32) -> bool {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches
    // no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    r == 0 && nix::unistd::getppid().as_raw() == parent
}

/// Make `cmd`'s process get `sig` when the calling thread exits, so a
/// helper (mmdebstrap, ...) never outlives an sdk-run that was killed.
pub fn dies_with_us(cmd: &mut std::process::Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs between fork and exec and calls only
    // prctl(2) and getppid(2), both async-signal-safe; it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            if die_with_parent(sig, parent) {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "the parent exited before the helper started",
                ))
            }
        });
    }
}

/// Run `cmd` with `root` as its root directory (chroot(2), then chdir to
/// `/`), set up between fork and exec: the caller keeps its own root.
pub fn chroot_before_exec(cmd: &mut std::process::Command, root: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let Ok(root) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: the closure runs between fork and exec and calls only
    // chroot(2) and chdir(2), both async-signal-safe, on a string made
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
