//! Confines a build script so it can only write into its work directory:
//! the child enters a new user and mount namespace (mapping the caller's
//! own uid and gid, so no privilege is needed), the whole mount tree is made
//! read-only with `mount_setattr(2)` (`AT_RECURSIVE`, Linux 5.12+), and only
//! a bind mount of the work directory (holding the sources, DESTDIR and
//! TMPDIR) stays writable. A script that writes into the cross-root, the
//! SDK or the home directory fails with EROFS instead of corrupting them.
//! The namespace and mount calls are the shared ones (`sdk_common::linux`);
//! this module only decides what to mount, and keeps the builder's one
//! `unsafe` (registering the `pre_exec` hook).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use sdk_common::linux;

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

impl Prepared {
    /// Runs in the forked child before exec.
    fn enter(&self) -> io::Result<()> {
        use nix::mount::{MsFlags, mount};
        use nix::sched::{CloneFlags, unshare};
        // Only allocation-free calls: build_packages runs builds from
        // several threads, and this runs between fork and exec.
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)?;
        linux::write_once(&self.setgroups_path, b"deny")?;
        linux::write_once(&self.uid_map_path, &self.uid_map)?;
        linux::write_once(&self.gid_map_path, &self.gid_map)?;
        let none: Option<&CStr> = None;
        mount(
            none,
            self.root.as_c_str(),
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        )?;
        mount(
            Some(self.writable.as_c_str()),
            self.writable.as_c_str(),
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )?;
        linux::set_readonly_recursive(&self.root, true)?;
        linux::set_readonly_recursive(&self.writable, false)?;
        if let Some(cwd) = &self.cwd {
            nix::unistd::chdir(cwd.as_c_str())?;
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
