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
/// `qemu_fw_cfg` brings the Ignition config QEMU passes; the NIC and
/// `loop` a netboot's USR image ([`NETBOOT_MODULES`]), the CD drive and
/// ISO 9660 a live ISO's ([`ISO_MODULES`]).
pub const OPTIONAL_MODULES: &[&str] = &[
    "virtio_scsi",
    "sd_mod",
    "erofs",
    "squashfs",
    "nvme",
    "qemu_fw_cfg",
    "loop",
    "virtio_net",
    "isofs",
    "sr_mod",
    "ahci",
    "ata_piix",
];

/// What a netboot needs of the kernel: the NIC QEMU gives (and real
/// machines' drivers built in or added by the board), `loop` for the
/// fetched USR image, and the filesystem it is in.
pub const NETBOOT_MODULES: &[&str] = &["virtio_net", "loop"];
/// What a live ISO needs: the CD drive (SATA on q35), ISO 9660 and `loop`.
pub const ISO_MODULES: &[&str] = &["sr_mod", "isofs", "loop"];

/// Fail (a usage error naming the module) unless the kernel in `root`
/// has every one of `needed`, built in or as a module.
pub fn check_modules(root: &Path, needed: &[&str]) -> Result<(), BootError> {
    let kernel = super::kmod::find_kernel(root, None)?;
    let idx = ModuleIndex::load(&kernel.modules_dir)?;
    if !idx.knows_modules() {
        return Ok(());
    }
    match needed.iter().find(|m| !idx.has(m)) {
        Some(m) => Err(BootError::MissingModule {
            kernel: kernel.version,
            module: (*m).to_string(),
            dir: kernel.modules_dir,
        }),
        None => Ok(()),
    }
}

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
/// (`usr/share/sdk-update/keys/*.pem`) go in too, and for a foreign
/// `target` the init's shared libraries come from it (see
/// [`init_libraries`]).
pub fn build(
    kernel: &Kernel,
    target: &Target,
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

    // The init: sdk-tools built for the target, plus what the dynamic
    // loader needs for it.
    let exe = init_binary(target)?;
    tree.file("init", 0o755, exe.clone());
    let (lib_root, libs) = init_libraries(target, &exe, os_root)?;
    for lib in &libs {
        let real = resolve_in(&lib_root, lib)?;
        let data = read(&real, "read a shared library for the initramfs")?;
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

/// The machine an init is for: the board's architecture (`uname -m`) and
/// its GNU target triple (the cross tools' prefix, the multiarch dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub arch: String,
    pub triple: String,
}

impl Target {
    /// The machine these tools run on.
    pub fn host() -> Target {
        let arch = std::env::consts::ARCH;
        Target {
            arch: arch.to_string(),
            triple: format!("{arch}-linux-gnu"),
        }
    }

    /// The machine a board's images run on (its profile's `arch`, never
    /// its name).
    pub fn of(board: &crate::board::Board) -> Target {
        Target {
            arch: board.arch.clone(),
            triple: board.target.clone(),
        }
    }

    pub fn is_host(&self) -> bool {
        self.arch == std::env::consts::ARCH
    }
}

/// The file name of the sdk-tools built for `arch`, installed next to the
/// host's `sdk-tools` (and bound beside it into sandboxes): the init and
/// update agent of that architecture's images.
pub fn foreign_tools_name(arch: &str) -> String {
    format!("sdk-tools-{arch}")
}

/// Where the sdk-tools for a foreign `arch` is looked for:
/// `SDK_TOOLS_<ARCH>` (e.g. `SDK_TOOLS_AARCH64`), else next to this
/// executable.
pub fn foreign_tools_path(arch: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("SDK_TOOLS_{}", arch.to_ascii_uppercase())) {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    me.with_file_name(foreign_tools_name(arch))
}

/// The architecture (`uname -m` name) an ELF file is built for.
pub fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    let header = goblin::elf::Elf::parse_header(bytes).ok()?;
    match header.e_machine {
        goblin::elf::header::EM_X86_64 => Some("x86_64"),
        goblin::elf::header::EM_AARCH64 => Some("aarch64"),
        goblin::elf::header::EM_RISCV => Some("riscv64"),
        goblin::elf::header::EM_PPC64 => Some("ppc64le"),
        goblin::elf::header::EM_S390 => Some("s390x"),
        _ => None,
    }
}

/// sdk-tools built for `target`, stripped (the initramfs is unpacked on
/// every boot: 52 MiB -> 7 MiB for a release build with line tables): the
/// initramfs's init, and the update agent build_image puts in USR. For
/// the host's architecture that is this very executable; for another one,
/// the `sdk-tools-<arch>` build installed beside it (see
/// [`foreign_tools_path`]). Stripping uses binutils' `strip` (the
/// target's `<triple>-strip` for a foreign build); without it the binary
/// goes in as it is, with a warning. A binary of any other architecture
/// than `target`'s is refused: an image never gets an init it cannot run.
pub fn init_binary(target: &Target) -> Result<Vec<u8>, BootError> {
    use crate::cmd::CommandExt;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Io { what, path, source }
    };
    let (src, strip) = if target.is_host() {
        // Our bytes, read by us: `/proc/self/exe` handed to strip would be
        // strip itself.
        (PathBuf::from("/proc/self/exe"), "strip".to_string())
    } else {
        let p = foreign_tools_path(&target.arch);
        if !p.is_file() {
            return Err(BootError::Usage(format!(
                "no {arch} build of sdk-tools at {path}: the init of a {arch} image is sdk-tools built for {arch}; build it with `make cross` (or `cargo build --release -p sdk-tools --target {arch}-unknown-linux-gnu`) and install it as {name} next to sdk-tools (make install does), or point SDK_TOOLS_{upper} at it",
                arch = target.arch,
                path = p.display(),
                name = foreign_tools_name(&target.arch),
                upper = target.arch.to_ascii_uppercase(),
            )));
        }
        (p, format!("{}-strip", target.triple))
    };
    let exe = std::fs::read(&src).map_err(io("read the sdk-tools for the init", &src))?;
    match elf_arch(&exe) {
        Some(a) if a == target.arch => {}
        found => {
            return Err(BootError::Usage(format!(
                "{} is {}, not {}: an image's init must be built for its board's architecture; install the {} build of sdk-tools as {}",
                src.display(),
                found.map_or(
                    "not an ELF program of a known architecture".to_string(),
                    |a| format!("an {a} program")
                ),
                target.arch,
                target.arch,
                foreign_tools_name(&target.arch),
            )));
        }
    }
    let dir = tempfile::tempdir().map_err(io("create a temp dir", &std::env::temp_dir()))?;
    let (full, stripped) = (dir.path().join("init.full"), dir.path().join("init"));
    std::fs::write(&full, &exe).map_err(io("write", &full))?;
    match std::process::Command::new(&strip)
        .args(["--strip-all", "-o"])
        .arg(&stripped)
        .arg(&full)
        .run_capture()
    {
        Ok(_) => std::fs::read(&stripped).map_err(io("read", &stripped)),
        Err(e) => {
            tracing::warn!(error = %e, strip, "cannot strip the init; the initramfs will be larger");
            Ok(exe)
        }
    }
}

/// Where the shared libraries of `target`'s init are found: this machine
/// for the host's architecture; for another one the image's own root
/// (its Debian libc), else the cross toolchain's sysroot (`/usr/<triple>`,
/// Debian's `libc6-<arch>-cross`), the libraries the init was linked
/// against.
pub fn init_libraries(
    target: &Target,
    exe: &[u8],
    os_root: &Path,
) -> Result<(PathBuf, Vec<PathBuf>), BootError> {
    if target.is_host() {
        let root = PathBuf::from("/");
        return elf_closure(exe, &root).map(|l| (root, l));
    }
    let cross = PathBuf::from("/usr").join(&target.triple);
    let mut last = None;
    for root in [os_root.to_path_buf(), cross] {
        match elf_closure(exe, &root) {
            Ok(libs) => return Ok((root, libs)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("two roots tried"))
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
                .find(|p| resolve_in(root, p).is_ok_and(|r| r.is_file()))
                .ok_or_else(|| BootError::BadElf {
                    path: who.clone().into(),
                    why: format!("needs {lib}, not found in {}", dirs.join(", ")),
                })?;
            needed.push(found);
        }
        for p in needed {
            if seen.insert(p.clone()) {
                let real = resolve_in(root, &p)?;
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

/// `path` (absolute, as a program inside `root` names it) resolved inside
/// `root` the way the kernel would after a chroot: symlinks are followed
/// component by component, absolute targets and `..` never leave `root`.
/// The result has no symlink left in it below `root`, so reading it reads
/// the image's file and never the build machine's.
pub fn resolve_in(root: &Path, path: &Path) -> Result<PathBuf, BootError> {
    use std::path::Component;
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = std::iter::once(root.as_os_str().to_os_string())
            .chain(done.iter().cloned())
            .chain(std::iter::once(part.clone()))
            .collect();
        match std::fs::read_link(&here) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(BootError::BadElf {
                        path: path.to_path_buf(),
                        why: format!("too many symlinks under {}", root.display()),
                    });
                }
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => done.push(part),
        }
    }
    Ok(std::iter::once(root.as_os_str().to_os_string())
        .chain(done)
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_format_the_kernel_cannot_boot_is_refused_naming_the_module() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("usr/lib/modules/6.1.0-9-test");
        std::fs::create_dir_all(dir.join("kernel/drivers/block")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.join("modules.builtin"), "kernel/fs/isofs/isofs.ko\n").unwrap();
        std::fs::write(dir.join("kernel/drivers/block/loop.ko"), b"").unwrap();
        check_modules(root.path(), &["loop", "isofs"]).unwrap();
        let e = check_modules(root.path(), NETBOOT_MODULES).unwrap_err();
        assert!(
            matches!(&e, BootError::MissingModule { module, .. } if module == "virtio_net"),
            "{e}"
        );
        assert!(sdk_common::error::BadInput::is_bad_input(&e));
    }
    use super::*;

    #[test]
    fn the_init_is_this_binary_stripped() {
        let init = init_binary(&Target::host()).unwrap();
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
        let (_, libs) = init_libraries(&Target::host(), &exe, Path::new("/nonexistent")).unwrap();
        let names: Vec<String> = libs
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
    }

    #[test]
    fn symlinks_resolve_inside_the_root_never_outside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(r.join("usr/lib/aarch64-linux-gnu/libc.so.6"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        // Absolute, as some packages ship them: inside the image, not here.
        std::os::unix::fs::symlink(
            "/lib/aarch64-linux-gnu/libc.so.6",
            r.join("usr/lib/libc-abs.so"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("usr/lib/escape")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/passwd", r.join("usr/lib/dotdot")).unwrap();
        let real = r.join("usr/lib/aarch64-linux-gnu/libc.so.6");
        assert_eq!(
            resolve_in(r, Path::new("/lib/aarch64-linux-gnu/libc.so.6")).unwrap(),
            real
        );
        assert_eq!(
            resolve_in(r, Path::new("/usr/lib/libc-abs.so")).unwrap(),
            real
        );
        for escape in ["/usr/lib/escape", "/usr/lib/dotdot"] {
            let p = resolve_in(r, Path::new(escape)).unwrap();
            assert_eq!(p, r.join("etc/passwd"), "{escape}");
            assert!(!p.exists());
        }
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in(r, Path::new("/loop")).is_err());
    }

    #[test]
    fn a_foreign_init_must_be_built_for_the_board() {
        let t = tempfile::tempdir().unwrap();
        let target = Target {
            arch: "aarch64".into(),
            triple: "aarch64-linux-gnu".into(),
        };
        // Missing: says how to build and install it.
        let missing = t.path().join("none");
        // SAFETY: set_var is unsound only with threads reading the
        // environment concurrently; this variable is read by this test only.
        unsafe { std::env::set_var("SDK_TOOLS_AARCH64", &missing) };
        let e = init_binary(&target).unwrap_err().to_string();
        assert!(
            e.contains("no aarch64 build of sdk-tools") && e.contains("make cross"),
            "{e}"
        );
        // The host's binary in its place: refused, one line.
        let wrong = t.path().join("sdk-tools-aarch64");
        std::fs::copy("/proc/self/exe", &wrong).unwrap();
        // SAFETY: as above.
        unsafe { std::env::set_var("SDK_TOOLS_AARCH64", &wrong) };
        let e = init_binary(&target).unwrap_err().to_string();
        // SAFETY: as above.
        unsafe { std::env::remove_var("SDK_TOOLS_AARCH64") };
        assert!(
            e.contains(&format!(
                "is an {} program, not aarch64",
                std::env::consts::ARCH
            )),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
