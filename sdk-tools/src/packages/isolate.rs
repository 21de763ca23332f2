//! Confines a build script so it can only write into its work directory:
//! the child enters a new user and mount namespace (mapping the caller's
//! own uid and gid, so no privilege is needed), the whole mount tree is made
//! read-only with `mount_setattr(2)` (`AT_RECURSIVE`, Linux 5.12+), and only
//! a bind mount of the work directory (holding the sources, DESTDIR and
//! TMPDIR) stays writable. A script that writes into the cross-root, the
//! SDK or the home directory fails with EROFS instead of corrupting them.
//! This module holds the only unsafe code of the package builder.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

/// Everything the child needs, prepared before `fork` so the code between
/// `fork` and `exec` only makes system calls (no allocation).
struct Prepared {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    root: CString,
    writable: CString,
    uid_map_path: CString,
    gid_map_path: CString,
    setgroups_path: CString,
    /// The working directory, entered again after the mounts: the one
    /// `Command` entered before them still points at the read-only mount.
    cwd: Option<CString>,
}

fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is a live buffer of `data.len()` bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_readonly(path: &CString, readonly: bool) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: if readonly { libc::MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if readonly { 0 } else { libc::MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `attr` (a live struct of the size
    // passed) and the NUL-terminated `path`; no memory is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(rc)
}

impl Prepared {
    /// Runs in the forked child before exec.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: unshare only changes this (single-threaded, forked) process.
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) }.into())?;
        write_file(&self.setgroups_path, b"deny")?;
        write_file(&self.uid_map_path, &self.uid_map)?;
        write_file(&self.gid_map_path, &self.gid_map)?;
        // SAFETY: plain mount(2) calls with valid NUL-terminated strings or
        // null pointers where the kernel accepts them.
        unsafe {
            check(
                libc::mount(
                    std::ptr::null(),
                    self.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            check(
                libc::mount(
                    self.writable.as_ptr(),
                    self.writable.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
                .into(),
            )?;
        }
        set_readonly(&self.root, true)?;
        set_readonly(&self.writable, false)?;
        if let Some(cwd) = &self.cwd {
            // SAFETY: `cwd` is a valid NUL-terminated string.
            check(unsafe { libc::chdir(cwd.as_ptr()) }.into())?;
        }
        Ok(())
    }
}

/// Make `cmd` run confined: everything read-only but `writable`. Set the
/// command's working directory before calling this.
pub fn confine(cmd: &mut Command, writable: &Path) -> io::Result<()> {
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let prepared = Prepared {
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        root: cstr(b"/")?,
        writable: cstr(writable.as_os_str().as_bytes())?,
        uid_map_path: cstr(b"/proc/self/uid_map")?,
        gid_map_path: cstr(b"/proc/self/gid_map")?,
        setgroups_path: cstr(b"/proc/self/setgroups")?,
        cwd: match cmd.get_current_dir() {
            Some(d) => Some(cstr(d.as_os_str().as_bytes())?),
            None => None,
        },
    };
    // SAFETY: the closure runs between fork and exec; it only makes system
    // calls on data prepared above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || prepared.enter());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where user namespaces work (CI, this machine), a confined script can
    /// write its work dir and nothing else.
    #[test]
    fn confined_script_writes_only_its_work_dir() {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo ok > in && ! echo bad > \"$2/out\" 2>/dev/null")
            .current_dir(work.path())
            .arg("sh")
            .arg(work.path())
            .arg(outside.path());
        confine(&mut cmd, work.path()).unwrap();
        let status = cmd.status().expect("user namespaces must be available");
        assert!(status.success());
        assert!(work.path().join("in").exists());
        assert!(!outside.path().join("out").exists());
    }
}
