//! Builds the initramfs for an image's kernel: our own init (this very
//! binary, see `boot::init`), the shared libraries it needs found by walking
//! its ELF dependencies, the kernel modules boot needs with their
//! dependency closure, and `/dev/console`, packed as a deterministic gzip
//! cpio.
//!
//! Why our own init and not busybox + veritysetup: veritysetup pulls in
//! libcryptsetup, libdevmapper, libssl, libblkid, libudev, libjson-c and
//! friends, and its behaviour depends on udev being there to make
//! `/dev/mapper` nodes; our init talks to device-mapper through four ioctls
//! (`boot::dm`), reads the verity superblock itself, needs only libc, and
//! the same code is unit tested on the host. It is the same binary the SDK
//! runs, so there is no second toolchain to build for the guest.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::BootError;
use super::cpio::{Entry, Kind, write_newc};
use super::kmod::{Kernel, ModuleIndex};

/// Where the init reads its module load order (one path a line, relative to
/// `/lib/modules/<version>`).
pub const MODULES_LIST: &str = "etc/sdk-initrd/modules";
/// Where the init reads the kernel version the modules belong to.
pub const KERNEL_VERSION_FILE: &str = "etc/sdk-initrd/kernel-version";

/// Modules boot cannot do without: the virtio disk of a QEMU guest,
/// device-mapper with the verity target, and the filesystems USR and ROOT
/// may use (built-in ones are fine too).
pub const REQUIRED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "dm-verity", "ext4"];
/// Taken when the kernel has them: other disk buses and USR filesystems.
/// `qemu_fw_cfg` brings the Ignition config QEMU passes.
pub const OPTIONAL_MODULES: &[&str] = &[
    "virtio_scsi",
    "sd_mod",
    "erofs",
    "squashfs",
    "nvme",
    "qemu_fw_cfg",
];

/// What went into an initramfs.
#[derive(Debug, Clone)]
pub struct Initramfs {
    pub kernel_version: String,
    /// Loadable modules, in load order.
    pub modules: Vec<String>,
    /// Files copied from the build environment (the init and its libraries).
    pub host_files: Vec<PathBuf>,
    pub bytes: u64,
}

/// Where the initramfs carries the update keys the OS trusts (the init
/// checks a slot's signed record with them before booting a slot the
/// kernel command line does not name).
pub const KEYS_DIR: &str = "etc/sdk-update/keys";

/// Build the initramfs for `kernel` into `out` (written to a temporary name
/// and renamed). `mtime` stamps every member (SOURCE_DATE_EPOCH).
/// `os_root` is the OS tree: its trusted update keys
/// (`usr/share/sdk-update/keys/*.pem`) go in too.
pub fn build(
    kernel: &Kernel,
    out: &Path,
    mtime: u32,
    os_root: &Path,
) -> Result<Initramfs, BootError> {
    let idx = ModuleIndex::load(&kernel.modules_dir)?;
    let modules = idx.closure(&kernel.version, REQUIRED_MODULES, OPTIONAL_MODULES)?;

    let mut tree = Entries::default();
    for d in ["dev", "proc", "sys", "run", "sysroot", "tmp"] {
        tree.dir(d);
    }
    tree.entries.push(Entry {
        path: "dev/console".into(),
        perm: 0o600,
        kind: Kind::CharDev { major: 5, minor: 1 },
    });

    // The init: this executable, plus what the dynamic loader needs for it.
    let exe = init_binary()?;
    tree.file("init", 0o755, exe.clone());
    let libs = elf_closure(&exe, Path::new("/"))?;
    for lib in &libs {
        let data = read(lib, "read a shared library for the initramfs")?;
        tree.file(&lib.to_string_lossy(), 0o755, data);
    }
    for m in &modules {
        let src = kernel.modules_dir.join(m);
        if !m.ends_with(".ko") {
            return Err(BootError::BadModule {
                path: src,
                why: "compressed modules are not supported yet; build the kernel with CONFIG_MODULE_COMPRESS_NONE".into(),
            });
        }
        let data = read(&src, "read a kernel module")?;
        tree.file(&format!("lib/modules/{}/{m}", kernel.version), 0o644, data);
    }
    let keys = os_root.join(crate::formats::update::TRUSTED_KEYS_DIR);
    for n in
        crate::formats::update::key_files(&keys).map_err(|e| BootError::Usage(e.to_string()))?
    {
        let data = read(&keys.join(&n), "read an update key for the initramfs")?;
        tree.file(&format!("{KEYS_DIR}/{n}"), 0o644, data);
    }
    let list: String = modules.iter().map(|m| format!("{m}\n")).collect();
    tree.file(MODULES_LIST, 0o644, list.into_bytes());
    tree.file(
        KERNEL_VERSION_FILE,
        0o644,
        format!("{}\n", kernel.version).into_bytes(),
    );

    let bytes = write_gz(out, &tree.entries, mtime)?;
    tracing::info!(kernel = %kernel.version, modules = modules.len(), bytes, "initramfs built");
    Ok(Initramfs {
        kernel_version: kernel.version.clone(),
        modules,
        host_files: libs,
        bytes,
    })
}

/// The archive's entries, each parent directory once, before its files.
#[derive(Default)]
struct Entries {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
}

impl Entries {
    /// `path` (relative, `/`-separated) and every directory above it.
    fn dir(&mut self, path: &str) {
        let mut acc = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                self.entries.push(Entry {
                    path: acc.clone(),
                    perm: 0o755,
                    kind: Kind::Dir,
                });
            }
        }
    }

    /// A file at `path` (a leading `/` is dropped), after its directories.
    fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry {
            path: path.to_string(),
            perm,
            kind: Kind::File(data),
        });
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|source| BootError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The gzip-compressed newc archive at `out` (a temporary file synced and
/// renamed into place); returns its size.
fn write_gz(out: &Path, entries: &[Entry], mtime: u32) -> Result<u64, BootError> {
    let tmp = out.with_extension("tmp");
    let write = || -> std::io::Result<u64> {
        let f = std::fs::File::create(&tmp)?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(std::io::BufWriter::new(f), flate2::Compression::fast());
        write_newc(&mut gz, entries, mtime)?;
        let mut w = gz.finish()?;
        w.flush()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        Ok(std::fs::metadata(out)?.len())
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        BootError::Io {
            what: "write the initramfs",
            path: out.to_path_buf(),
            source,
        }
    })
}

/// This executable without symbols and debug info (52 MiB -> 7 MiB for a
/// release build with line tables; the initramfs is unpacked on every
/// boot). `strip` is binutils', which every SDK with a C compiler has;
/// without it the binary goes in as it is, with a warning.
/// This executable, stripped (as it is when `strip` is not at hand): the
/// initramfs's init, and the update agent build_image puts in USR.
pub fn init_binary() -> Result<Vec<u8>, BootError> {
    use crate::cmd::CommandExt;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Io { what, path, source }
    };
    // Our bytes, read by us: `/proc/self/exe` handed to strip would be
    // strip itself.
    let exe = std::fs::read("/proc/self/exe")
        .map_err(io("read our own executable", Path::new("/proc/self/exe")))?;
    let dir = tempfile::tempdir().map_err(io("create a temp dir", &std::env::temp_dir()))?;
    let (full, stripped) = (dir.path().join("init.full"), dir.path().join("init"));
    std::fs::write(&full, &exe).map_err(io("write", &full))?;
    match std::process::Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&stripped)
        .arg(&full)
        .run_capture()
    {
        Ok(_) => std::fs::read(&stripped).map_err(io("read", &stripped)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot strip the init; the initramfs will be larger");
            Ok(exe)
        }
    }
}

/// The dynamic loader and every shared library `exe` needs, transitively,
/// resolved the way the loader does on a Debian-like system (RUNPATH, then
/// the multiarch and plain library directories) under `root`.
pub fn elf_closure(exe: &[u8], root: &Path) -> Result<Vec<PathBuf>, BootError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, Vec<u8>)> = vec![("init".into(), exe.to_vec())];
    while let Some((who, bytes)) = todo.pop() {
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| BootError::BadElf {
            path: who.clone().into(),
            why: e.to_string(),
        })?;
        let multiarch = match elf.header.e_machine {
            goblin::elf::header::EM_X86_64 => "x86_64-linux-gnu",
            goblin::elf::header::EM_AARCH64 => "aarch64-linux-gnu",
            other => {
                return Err(BootError::BadElf {
                    path: who.into(),
                    why: format!("unsupported machine {other}"),
                });
            }
        };
        let mut dirs: Vec<String> = elf.runpaths.iter().map(|s| s.to_string()).collect();
        dirs.extend([
            format!("/lib/{multiarch}"),
            format!("/usr/lib/{multiarch}"),
            "/lib64".into(),
            "/usr/lib64".into(),
            "/lib".into(),
            "/usr/lib".into(),
        ]);
        let mut needed: Vec<PathBuf> = Vec::new();
        if let Some(interp) = elf.interpreter {
            needed.push(PathBuf::from(interp));
        }
        for lib in &elf.libraries {
            let found = dirs
                .iter()
                .map(|d| PathBuf::from(d).join(lib))
                .find(|p| root.join(p.strip_prefix("/").unwrap_or(p)).is_file())
                .ok_or_else(|| BootError::BadElf {
                    path: who.clone().into(),
                    why: format!("needs {lib}, not found in {}", dirs.join(", ")),
                })?;
            needed.push(found);
        }
        for p in needed {
            if seen.insert(p.clone()) {
                let real = root.join(p.strip_prefix("/").unwrap_or(&p));
                let data = std::fs::read(&real).map_err(|source| BootError::Io {
                    what: "read a shared library",
                    path: real.clone(),
                    source,
                })?;
                todo.push((p.to_string_lossy().into_owned(), data));
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_is_this_binary_stripped() {
        let init = init_binary().unwrap();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(init.len() <= exe.len());
        // Same program (entry point and code size), no symbol table left.
        let (a, b) = (
            goblin::elf::Elf::parse(&init).unwrap(),
            goblin::elf::Elf::parse(&exe).unwrap(),
        );
        assert_eq!(
            a.header.e_entry, b.header.e_entry,
            "the init is not our binary"
        );
        let text = |e: &goblin::elf::Elf| {
            e.section_headers
                .iter()
                .find(|s| e.shdr_strtab.get_at(s.sh_name) == Some(".text"))
                .map(|s| s.sh_size)
        };
        assert_eq!(text(&a), text(&b));
        assert!(a.syms.is_empty(), "not stripped");
    }

    #[test]
    fn our_own_binary_needs_libc_and_the_loader() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let libs = elf_closure(&exe, Path::new("/")).unwrap();
        let names: Vec<String> = libs
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
    }
}
