//! Kernel discovery in an image root and kernel module resolution for the
//! initramfs: which of the modules boot needs are built in
//! (`modules.builtin`), which are loadable, and their dependency closure in
//! load order. Dependencies come from `modules.dep` when the root has one;
//! a kernel package unpacked with `dpkg-deb -x` has none (depmod runs at
//! install time), so then each module's own `.modinfo` `depends=` field is
//! read from its ELF section. Does not load anything; the guest-side init
//! does that.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::BootError;

/// A kernel found in an image root.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// The kernel image (`vmlinuz`).
    pub image: PathBuf,
    /// `lib/modules/<version>` inside the root.
    pub modules_dir: PathBuf,
}

/// Find the one kernel in `root`: `lib/modules/<v>` (or `usr/lib/modules`)
/// with its image in `boot/vmlinuz-<v>`, `usr/boot/vmlinuz-<v>` or
/// `lib/modules/<v>/vmlinuz`. More than one kernel is an error that names
/// them (pick one with `version`).
pub fn find_kernel(root: &Path, version: Option<&str>) -> Result<Kernel, BootError> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    for base in ["usr/lib/modules", "lib/modules"] {
        let dir = root.join(base);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("kernel").is_dir()
                || e.path().join("modules.builtin").is_file()
                || e.path().join("vmlinuz").is_file()
            {
                found.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    let (ver, modules_dir) = match version {
        Some(v) => found
            .get_key_value(v)
            .map(|(k, p)| (k.clone(), p.clone()))
            .ok_or_else(|| BootError::NoKernel {
                root: root.to_path_buf(),
                why: format!(
                    "no lib/modules/{v} (found: {})",
                    found.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?,
        None => {
            if found.len() > 1 {
                return Err(BootError::NoKernel {
                    root: root.to_path_buf(),
                    why: format!(
                        "more than one kernel ({}); name the one to boot",
                        found.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            found.into_iter().next().ok_or_else(|| BootError::NoKernel {
                root: root.to_path_buf(),
                why: "no lib/modules/<version> directory; add a kernel package (e.g. linux-image-cloud-amd64) to the OS".into(),
            })?
        }
    };
    let candidates = [
        root.join(format!("boot/vmlinuz-{ver}")),
        root.join(format!("usr/boot/vmlinuz-{ver}")),
        modules_dir.join("vmlinuz"),
    ];
    let image = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BootError::NoKernel {
            root: root.to_path_buf(),
            why: format!("modules for {ver} but no kernel image (looked for boot/vmlinuz-{ver}, usr/boot/vmlinuz-{ver}, lib/modules/{ver}/vmlinuz)"),
        })?;
    Ok(Kernel {
        version: ver,
        image,
        modules_dir,
    })
}

/// Module name as the kernel spells it internally (`dm-verity` -> `dm_verity`).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(rel: &str) -> Option<String> {
    let file = rel.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(canonical(stem))
}

/// The modules of one kernel: what is built in, where each loadable module
/// is, and what it depends on.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    builtin: HashSet<String>,
    /// name -> path relative to the modules dir.
    paths: BTreeMap<String, String>,
    /// name -> dependency names (only filled from modules.dep).
    deps: BTreeMap<String, Vec<String>>,
    from_modules_dep: bool,
}

impl ModuleIndex {
    pub fn load(dir: &Path) -> Result<ModuleIndex, BootError> {
        let mut idx = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.builtin")) {
            idx.builtin = text.lines().filter_map(module_name).collect();
        }
        match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(text) => {
                idx.from_modules_dep = true;
                for line in text.lines() {
                    let Some((m, rest)) = line.split_once(':') else {
                        continue;
                    };
                    let Some(name) = module_name(m) else { continue };
                    idx.paths.insert(name.clone(), m.trim().to_string());
                    idx.deps.insert(
                        name,
                        rest.split_whitespace().filter_map(module_name).collect(),
                    );
                }
            }
            Err(_) => walk(dir, dir, &mut idx.paths).map_err(|source| BootError::Io {
                what: "read the kernel modules tree",
                path: dir.to_path_buf(),
                source,
            })?,
        }
        Ok(idx)
    }

    /// Whether the tree says anything about modules at all: a kernel with
    /// everything built in may ship neither `modules.builtin` nor modules.
    pub fn knows_modules(&self) -> bool {
        !self.builtin.is_empty() || !self.paths.is_empty()
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical(name))
    }

    pub fn has(&self, name: &str) -> bool {
        let n = canonical(name);
        self.builtin.contains(&n) || self.paths.contains_key(&n)
    }

    fn deps_of(&self, name: &str) -> Result<Vec<String>, BootError> {
        if self.from_modules_dep {
            return Ok(self.deps.get(name).cloned().unwrap_or_default());
        }
        let rel = &self.paths[name];
        let path = self.dir.join(rel);
        let bytes = std::fs::read(&path).map_err(|source| BootError::Io {
            what: "read a kernel module",
            path: path.clone(),
            source,
        })?;
        modinfo_depends(&bytes).map_err(|why| BootError::BadModule { path, why })
    }

    /// The loadable modules needed for `wanted` (built-in ones drop out), in
    /// an order where every module comes after its dependencies, as paths
    /// relative to the modules dir. `optional` names are taken when the
    /// kernel has them and skipped silently otherwise.
    pub fn closure(
        &self,
        version: &str,
        wanted: &[&str],
        optional: &[&str],
    ) -> Result<Vec<String>, BootError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        if !self.knows_modules() {
            tracing::info!(
                kernel = version,
                dir = %self.dir.display(),
                "no modules.builtin and no modules: assuming everything boot needs is built in (the boot fails clearly if not)"
            );
            return Ok(order);
        }
        for w in wanted {
            if !self.has(w) {
                return Err(BootError::MissingModule {
                    kernel: version.to_string(),
                    module: (*w).to_string(),
                    dir: self.dir.clone(),
                });
            }
            self.visit(&canonical(w), &mut seen, &mut order)?;
        }
        for o in optional {
            if self.has(o) {
                self.visit(&canonical(o), &mut seen, &mut order)?;
            }
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), BootError> {
        if self.builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(rel) = self.paths.get(name) else {
            return Err(BootError::MissingModule {
                kernel: String::new(),
                module: name.to_string(),
                dir: self.dir.clone(),
            });
        };
        for d in self.deps_of(name)? {
            self.visit(&d, seen, order)?;
        }
        order.push(rel.clone());
        Ok(())
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(base, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(base) {
            let rel = rel.to_string_lossy().into_owned();
            if let Some(name) = module_name(&rel) {
                out.insert(name, rel);
            }
        }
    }
    Ok(())
}

/// The `depends=` list from a module's `.modinfo` ELF section.
pub fn modinfo_depends(bytes: &[u8]) -> Result<Vec<String>, String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| format!("not an ELF module: {e}"))?;
    for sh in &elf.section_headers {
        if elf.shdr_strtab.get_at(sh.sh_name) != Some(".modinfo") {
            continue;
        }
        let start = usize::try_from(sh.sh_offset).map_err(|e| e.to_string())?;
        let len = usize::try_from(sh.sh_size).map_err(|e| e.to_string())?;
        let data = bytes
            .get(start..start + len)
            .ok_or("truncated .modinfo section")?;
        for field in data.split(|b| *b == 0) {
            if let Some(v) = field.strip_prefix(b"depends=") {
                return Ok(String::from_utf8_lossy(v)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(canonical)
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    Err("no .modinfo section".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dep: Option<&str>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(d.join("kernel/drivers/md")).unwrap();
        std::fs::create_dir_all(t.path().join("boot")).unwrap();
        std::fs::write(t.path().join("boot/vmlinuz-6.1.0-test"), b"kernel").unwrap();
        std::fs::write(
            d.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/crypto/sha256_generic.ko\n",
        )
        .unwrap();
        for m in ["dm-mod", "dm-verity", "dm-bufio"] {
            std::fs::write(d.join(format!("kernel/drivers/md/{m}.ko")), b"").unwrap();
        }
        if let Some(dep) = dep {
            std::fs::write(d.join("modules.dep"), dep).unwrap();
        }
        t
    }

    #[test]
    fn closure_orders_dependencies_first_and_drops_builtins() {
        let t = tree(Some(
            "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
             kernel/drivers/md/dm-bufio.ko:\nkernel/drivers/md/dm-mod.ko:\n",
        ));
        let k = find_kernel(t.path(), None).unwrap();
        assert_eq!(k.version, "6.1.0-test");
        let idx = ModuleIndex::load(&k.modules_dir).unwrap();
        let order = idx
            .closure(&k.version, &["dm-verity", "ext4"], &["virtio_scsi"])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-verity.ko"
            ]
        );
        assert!(idx.is_builtin("ext4"));
    }

    #[test]
    fn missing_module_is_named() {
        let t = tree(Some("kernel/drivers/md/dm-mod.ko:\n"));
        let k = find_kernel(t.path(), None).unwrap();
        let idx = ModuleIndex::load(&k.modules_dir).unwrap();
        let err = idx.closure(&k.version, &["virtio_blk"], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("virtio_blk") && msg.contains("6.1.0-test"),
            "{msg}"
        );
    }

    #[test]
    fn no_kernel_says_what_to_add() {
        let t = tempfile::tempdir().unwrap();
        let err = find_kernel(t.path(), None).unwrap_err().to_string();
        assert!(err.contains("kernel package"), "{err}");
    }
}
