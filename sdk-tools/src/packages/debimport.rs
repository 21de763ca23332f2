//! Imports Debian binary packages for a board's architecture. apt resolves
//! the dependency closure and downloads it (never a resolver of ours), using
//! a private apt state per architecture under the build root's cache
//! (`.cache/apt/<debian-arch>/`) fed the sources this machine (or the SDK)
//! is configured with (`/etc/apt/sources.list{,.d}`) — no mirror is named
//! here. Downloaded .debs stay in that cache, keyed by apt's
//! `name_version_arch.deb` file names. `dpkg-deb --fsys-tarfile` gives each
//! package's files; their owners and modes come from the .deb's tar
//! headers. Paths are folded into `/usr` (`/bin`, `/sbin`, `/lib*` ->
//! `/usr/...`) because the OS is /usr-merged. Maintainer scripts are not
//! run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use super::binpkg::{Content, Data, DebInfo, FileKind, Item, PackageMeta};
use super::maintscripts::{self, Analysis, Note, Report};
use crate::cmd::CommandExt;

/// A private apt state for one Debian architecture, locked against other
/// processes (other boards of the same architecture, other sandboxes
/// sharing the cache) while this value lives.
pub struct Apt {
    dir: PathBuf,
    conf: PathBuf,
    arch: String,
    _lock: fs::File,
}

/// Architectures whose package lists this process already refreshed.
fn updated() -> &'static Mutex<BTreeSet<PathBuf>> {
    static UPDATED: OnceLock<Mutex<BTreeSet<PathBuf>>> = OnceLock::new();
    UPDATED.get_or_init(|| Mutex::new(BTreeSet::new()))
}

impl Apt {
    /// Lock and prepare (idempotently) the private apt state under
    /// `cache`. The configuration names this process's view of the cache
    /// path, so it is written under the lock.
    pub fn open(cache: &Path, debian_arch: &str) -> Result<Apt> {
        let dir = cache.join("apt").join(debian_arch);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = sdk_common::fsutil::lock_file(
            &lock_path,
            &format!("another Debian import for {debian_arch}"),
        )
        .with_context(|| format!("lock {}", lock_path.display()))?;
        for d in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            let p = dir.join(d);
            fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        }
        let mut conf = String::new();
        let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} \"{v}\";\n"));
        let d = dir.display().to_string();
        // Read first (APT_CONFIG), so the host's apt.conf.d is replaced by an
        // empty one: its hooks (like docker-clean) must not run here.
        set("Dir::Etc::Parts", &format!("{d}/etc/apt.conf.d"));
        set("Dir::Etc::Main", "/dev/null");
        set("Dir::Etc::Preferences", "/dev/null");
        set(
            "Dir::Etc::PreferencesParts",
            &format!("{d}/etc/preferences.d"),
        );
        set("Dir::State", &format!("{d}/state"));
        set("Dir::State::status", &format!("{d}/status"));
        set("Dir::Cache", &format!("{d}/cache"));
        set("Dir::Log", &format!("{d}/log"));
        set("APT::Architecture", debian_arch);
        set("APT::Architectures::", debian_arch);
        set("APT::Install-Recommends", "false");
        set("APT::Install-Suggests", "false");
        set("Acquire::Languages", "none");
        set("Debug::NoLocking", "true");
        set("Binary::apt-get::APT::Keep-Downloaded-Packages", "true");
        if nix::unistd::geteuid().is_root() {
            // Downloads as root drop to the _apt user, which cannot write a
            // cache owned by someone else.
            set("APT::Sandbox::User", "root");
        }
        // A proxy configured for this machine's apt still applies.
        for key in ["Acquire::http::Proxy", "Acquire::https::Proxy"] {
            if let Ok(v) = Command::new("apt-config")
                .args(["shell", "V", key])
                .run_stdout()
                && let Some(val) = v
                    .trim()
                    .strip_prefix("V='")
                    .and_then(|s| s.strip_suffix('\''))
                && !val.is_empty()
            {
                set(key, val);
            }
        }
        let conf_path = dir.join("apt.conf");
        if fs::read_to_string(&conf_path).ok().as_deref() != Some(conf.as_str()) {
            super::crossroot::write_atomic(&conf_path, conf.as_bytes())?;
        }
        Ok(Apt {
            dir,
            conf: conf_path,
            arch: debian_arch.to_string(),
            _lock: lock,
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &self.conf)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8");
        c
    }

    /// Refresh the package lists once per process. When the archive cannot
    /// be reached but lists exist, go on with them (and say so).
    pub fn update(&self) -> Result<()> {
        let mut done = updated().lock().unwrap();
        if done.contains(&self.dir) {
            return Ok(());
        }
        if let Err(e) = self.cmd("apt-get").args(["update", "-q"]).run_capture() {
            let have_lists = fs::read_dir(self.dir.join("state/lists"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with("Packages"))
                })
                .unwrap_or(false);
            if !have_lists {
                return Err(e).context(format!(
                    "apt-get update for {} failed; binary imports need the Debian archive configured in /etc/apt/sources.list.d",
                    self.arch
                ));
            }
            eprintln!(
                "warning: apt-get update for {} failed; using the package lists from the last update",
                self.arch
            );
        }
        done.insert(self.dir.clone());
        Ok(())
    }

    /// The first alternative the archive has.
    pub fn pick(&self, alternatives: &[String]) -> Result<String> {
        for a in alternatives {
            if self
                .cmd("apt-cache")
                .args(["show", "--no-all-versions", a])
                .run_capture()
                .is_ok()
            {
                return Ok(a.clone());
            }
        }
        bail!(
            "none of {} exists for {} in the configured Debian archive",
            alternatives.join(" | "),
            self.arch
        )
    }

    /// Resolve `names` (and their dependency closure, minus what
    /// `installed` already provides) with apt, download them, and return
    /// `(deb info, path)` in apt's install order.
    pub fn fetch(
        &self,
        names: &[String],
        installed: &[DebInfo],
    ) -> Result<Vec<(DebInfo, PathBuf)>> {
        let mut status = String::new();
        for d in installed {
            status.push_str(&format!(
                "Package: {}\nStatus: install ok installed\nVersion: {}\nArchitecture: {}\nMulti-Arch: same\n\n",
                d.package, d.version, d.architecture
            ));
        }
        super::crossroot::write_atomic(&self.dir.join("status"), status.as_bytes())?;
        let sim = self
            .cmd("apt-get")
            .args(["install", "--simulate", "-q", "-y"])
            .args(names)
            .run_stdout()
            .with_context(|| format!("apt cannot resolve {} for {}", names.join(" "), self.arch))?;
        let debs = parse_simulation(&sim);
        if debs.is_empty() {
            return Ok(Vec::new());
        }
        self.cmd("apt-get")
            .args(["install", "--download-only", "-q", "-y"])
            .args(names)
            .run_capture()
            .with_context(|| {
                format!("apt cannot download {} for {}", names.join(" "), self.arch)
            })?;
        let archives = self.dir.join("cache/archives");
        let mut out = Vec::new();
        for d in debs {
            let file = format!(
                "{}_{}_{}.deb",
                d.package,
                d.version.replace(':', "%3a"),
                d.architecture
            );
            let p = archives.join(&file);
            if !p.is_file() {
                bail!(
                    "apt reported {file} downloaded, but it is not in {}",
                    archives.display()
                );
            }
            out.push((d, p));
        }
        Ok(out)
    }
}

/// Parse `apt-get install --simulate` output: `Inst NAME [OLD] (VERSION
/// ORIGINS [ARCH])`.
fn parse_simulation(text: &str) -> Vec<DebInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Some(open) = rest.find('(') else { continue };
        let inner = &rest[open + 1..];
        let inner = inner.split(')').next().unwrap_or(inner);
        let version = inner.split_whitespace().next().unwrap_or_default();
        let arch = inner
            .rfind('[')
            .and_then(|i| inner[i + 1..].split(']').next())
            .unwrap_or_default();
        if !version.is_empty() && !arch.is_empty() {
            out.push(DebInfo {
                package: name.split(':').next().unwrap_or(name).to_string(),
                version: version.to_string(),
                architecture: arch.to_string(),
            });
        }
    }
    out
}

/// Fold a path from a .deb into the /usr-merged layout.
pub fn merge_usr(path: &str) -> String {
    let p = path
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if p == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = p.strip_prefix(top).and_then(|r| r.strip_prefix('/')) {
            return format!("usr/{top}/{rest}");
        }
    }
    p.to_string()
}

/// Add one .deb's files to `content`.
pub fn unpack_deb(deb: &Path, content: &mut Content) -> Result<()> {
    let data = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .run_capture()
        .with_context(|| format!("read {}", deb.display()))?;
    let mut archive = tar::Archive::new(data.as_slice());
    for entry in archive.entries().context("read .deb data")? {
        let mut entry = entry.context("read .deb data")?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let path = merge_usr(&raw);
        if path.is_empty() || path == "." {
            continue;
        }
        super::crossroot::check_rel_path(&path).with_context(|| format!("{}", deb.display()))?;
        let h = entry.header();
        let mut item = Item {
            kind: FileKind::File,
            mode: h.mode()? & 0o7777,
            uid: h.uid()? as u32,
            gid: h.gid()? as u32,
            user: h.username().ok().flatten().unwrap_or("root").to_string(),
            group: h.groupname().ok().flatten().unwrap_or("root").to_string(),
            data: Data::None,
            xattrs: Default::default(),
        };
        match h.entry_type() {
            tar::EntryType::Directory => {
                item.kind = FileKind::Dir;
                if content.get(&path).is_some_and(|i| i.kind == FileKind::Dir) {
                    continue;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                item.data = Data::Bytes(bytes);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("symlink without target")?;
                let target = target.to_string_lossy();
                let target = if target.starts_with('/') {
                    format!("/{}", merge_usr(&target))
                } else {
                    target.into_owned()
                };
                item.kind = FileKind::Symlink;
                item.mode = 0o777;
                item.data = Data::Link(target);
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.context("hard link without target")?;
                item.kind = FileKind::Hardlink;
                item.data = Data::Link(merge_usr(&target.to_string_lossy()));
            }
            other => bail!(
                "{}: /{path} is a {other:?}, which packages cannot hold",
                deb.display()
            ),
        }
        if let Some(prev) = content.get(&path)
            && prev.kind != FileKind::Dir
        {
            tracing::warn!(path, deb = %deb.display(), "path shipped twice; the later package wins");
        }
        content.insert(path, item);
    }
    Ok(())
}

/// A .deb's `preinst` and `postinst` (those it has), as text.
fn maintainer_scripts(deb: &Path) -> Result<Vec<(String, String)>> {
    let ctrl = Command::new("dpkg-deb")
        .arg("--ctrl-tarfile")
        .arg(deb)
        .run_capture()
        .with_context(|| format!("read the control part of {}", deb.display()))?;
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(ctrl.as_slice());
    for entry in archive.entries().context("read .deb control")? {
        let mut entry = entry.context("read .deb control")?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == "preinst" || name == "postinst" {
            let mut text = Vec::new();
            entry.read_to_end(&mut text)?;
            out.push((name, String::from_utf8_lossy(&text).into_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// Do at build time what the scripts' analysis can: file capabilities
/// on the files, the links of each alternative's highest priority. The
/// rest goes into the returned report.
fn apply_scripts(content: &mut Content, found: Vec<(String, Analysis)>) -> Report {
    use crate::formats::fs::xattr;
    let mut report = Report::default();
    // (package, alternative) by name: the highest priority whose target
    // this package set holds.
    let mut best: BTreeMap<String, (String, maintscripts::Alternative)> = BTreeMap::new();
    let mut unplaced: Vec<(String, maintscripts::Alternative)> = Vec::new();
    for (package, a) in found {
        for (path, text) in a.capabilities {
            let rel = merge_usr(path.trim_start_matches('/'));
            let value = xattr::capability_from_text(&text);
            match (content.get_mut(&rel), value) {
                (Some(item), Ok(v)) if item.kind == FileKind::File => {
                    item.xattrs.insert(xattr::CAPABILITY.into(), v);
                }
                _ => report.unreproduced.push(Note {
                    package: package.clone(),
                    script: "postinst".into(),
                    line: 0,
                    text: format!(
                        "setcap {text} {path} (no such file in the package, or bad capability text)"
                    ),
                }),
            }
        }
        for alt in a.alternatives {
            let target = merge_usr(alt.path.trim_start_matches('/'));
            if !content.contains_key(&target) {
                unplaced.push((package.clone(), alt));
                continue;
            }
            match best.get(&alt.name) {
                Some((_, b)) if b.priority >= alt.priority => {}
                _ => {
                    best.insert(alt.name.clone(), (package.clone(), alt));
                }
            }
        }
        report.accounts.extend(a.accounts);
        report.unreproduced.extend(a.unreproduced);
    }
    // An alternative whose file another package set holds cannot be
    // chosen here: said, unless another of its name was.
    for (package, alt) in unplaced {
        if !best.contains_key(&alt.name) {
            report.unreproduced.push(Note {
                package,
                script: "postinst".into(),
                line: 0,
                text: format!(
                    "update-alternatives --install {} {} {} {} (its file is not in this package set)",
                    alt.link, alt.name, alt.path, alt.priority
                ),
            });
        }
    }
    for (_, alt) in best.values() {
        let link = merge_usr(alt.link.trim_start_matches('/'));
        let target = merge_usr(alt.path.trim_start_matches('/'));
        let chosen = format!("etc/alternatives/{}", alt.name);
        for (path, to) in [
            (link, format!("/{chosen}")),
            (chosen.clone(), format!("/{target}")),
        ] {
            if content
                .get(&path)
                .is_some_and(|i| i.kind != FileKind::Symlink)
            {
                continue; // a real file wins over an alternative's link
            }
            let mut item = Item::root_dir(0o777);
            item.kind = FileKind::Symlink;
            item.data = Data::Link(to);
            content.insert(path, item);
        }
    }
    report
}

/// Import a binary recipe: resolve, download, unpack. `installed` are the
/// .debs the recipe's dependencies already hold (not imported again).
/// What the packages' maintainer scripts would have done is done where
/// it can be (see `maintscripts`) and reported where it cannot.
pub fn import(
    cache: &Path,
    debian_arch: &str,
    alternatives: &[Vec<String>],
    installed: &[DebInfo],
) -> Result<(Content, Vec<DebInfo>, Report)> {
    let apt = Apt::open(cache, debian_arch)?;
    apt.update()?;
    let mut names = Vec::new();
    for alts in alternatives {
        names.push(apt.pick(alts)?);
    }
    let debs = apt.fetch(&names, installed)?;
    let mut content = Content::new();
    let mut infos = Vec::new();
    let mut found = Vec::new();
    for (info, path) in debs {
        unpack_deb(&path, &mut content)?;
        for (script, text) in maintainer_scripts(&path)? {
            found.push((
                info.package.clone(),
                maintscripts::analyse(&info.package, &script, &text),
            ));
        }
        infos.push(info);
    }
    if content.is_empty() {
        bail!("{} brought no files", names.join(" "));
    }
    // Hard links must point at an entry that precedes them in the archive.
    for (path, item) in content.iter_mut() {
        if let (FileKind::Hardlink, Data::Link(t)) = (&item.kind, &item.data)
            && t.as_str() >= path.as_str()
        {
            item.kind = FileKind::File;
            item.data = Data::None;
            tracing::warn!(path, "hard link to a later entry; stored as an empty file");
        }
    }
    let report = apply_scripts(&mut content, found);
    super::binpkg::add_parents(&mut content);
    infos.sort();
    Ok((content, infos, report))
}

/// The .debs the given installed packages hold.
pub fn debs_of(metas: &[&PackageMeta]) -> Vec<DebInfo> {
    let mut out: Vec<DebInfo> = metas.iter().flat_map(|m| m.debs.iter().cloned()).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines() {
        let text = "NOTE: x\nInst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64]) []\nInst libattr1 (1:2.5.1-4 Debian:12.15/oldstable [arm64])\nInst base-files [12.4] (12.4+deb12u1 Debian:12 [amd64])\nConf libc6 (2.36)\n";
        let d = parse_simulation(text);
        assert_eq!(d.len(), 3);
        assert_eq!(
            (
                d[0].package.as_str(),
                d[0].version.as_str(),
                d[0].architecture.as_str()
            ),
            ("libc6", "2.36-9+deb12u14", "arm64")
        );
        assert_eq!(d[1].version, "1:2.5.1-4");
        assert_eq!(d[2].version, "12.4+deb12u1");
    }

    #[test]
    fn scripts_give_capabilities_and_the_best_alternative_and_say_the_rest() {
        let file = |data: &[u8]| Item {
            kind: FileKind::File,
            data: Data::Bytes(data.to_vec()),
            ..Item::root_dir(0o755)
        };
        let mut content = Content::new();
        content.insert("usr/bin/ping".into(), file(b"ping"));
        content.insert("usr/bin/mawk".into(), file(b"mawk"));
        let alt = |path: &str, priority| maintscripts::Alternative {
            link: "/usr/bin/awk".into(),
            name: "awk".into(),
            path: path.into(),
            priority,
        };
        let found = vec![
            (
                "iputils-ping".to_string(),
                Analysis {
                    capabilities: vec![
                        ("/bin/ping".into(), "cap_net_raw+ep".into()),
                        ("/bin/nothere".into(), "cap_net_raw+ep".into()),
                    ],
                    ..Analysis::default()
                },
            ),
            (
                "mawk".to_string(),
                Analysis {
                    alternatives: vec![alt("/usr/bin/mawk", 5), alt("/usr/bin/gawk", 10)],
                    ..Analysis::default()
                },
            ),
            (
                "x".to_string(),
                Analysis {
                    alternatives: vec![maintscripts::Alternative {
                        link: "/usr/bin/pager".into(),
                        name: "pager".into(),
                        path: "/usr/bin/less".into(),
                        priority: 77,
                    }],
                    ..Analysis::default()
                },
            ),
        ];
        let report = apply_scripts(&mut content, found);
        assert_eq!(
            content["usr/bin/ping"].xattrs[crate::formats::fs::xattr::CAPABILITY].len(),
            20
        );
        // gawk is not in this package set: mawk's lower priority wins.
        let link = |p: &str| match &content[p].data {
            Data::Link(t) => t.clone(),
            _ => panic!("{p} is no link"),
        };
        assert_eq!(link("usr/bin/awk"), "/etc/alternatives/awk");
        assert_eq!(link("etc/alternatives/awk"), "/usr/bin/mawk");
        let said: Vec<&str> = report
            .unreproduced
            .iter()
            .map(|n| n.text.as_str())
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("setcap cap_net_raw+ep /bin/nothere"),
            "{said:?}"
        );
        assert!(
            said[1].contains("/usr/bin/pager pager /usr/bin/less 77"),
            "{said:?}"
        );
        assert!(!content.contains_key("usr/bin/pager"));
    }

    #[test]
    fn usr_merge() {
        assert_eq!(merge_usr("./bin/busybox"), "usr/bin/busybox");
        assert_eq!(
            merge_usr("./lib/modules/6.1/x.ko"),
            "usr/lib/modules/6.1/x.ko"
        );
        assert_eq!(merge_usr("./lib64/"), "usr/lib64");
        assert_eq!(merge_usr("./boot/vmlinuz"), "boot/vmlinuz");
        assert_eq!(merge_usr("./library/x"), "library/x");
        assert_eq!(merge_usr("./usr/lib/x"), "usr/lib/x");
    }
}
