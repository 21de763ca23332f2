//! Builds one `build` recipe: fetches and checks its tarballs, copies the
//! recipe directory into a fresh work directory, and runs the build script
//! with a clean environment (CC, CXX, AR, CHOST, CBUILD, SYSROOT,
//! PKG_CONFIG_*, DESTDIR, PREFIX=/usr, JOBS, ...), confined so it can only
//! write into the work directory. Returns the DESTDIR's contents; packing
//! and installing them is the caller's job.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::binpkg::{self, Content};
use super::crossroot::CrossRoot;
use super::isolate;
use super::recipe::{BuildSpec, Recipe, TarballSource};
use crate::board::Board;
use crate::cmd::{CmdError, CommandExt};

/// The build machine's triple (CBUILD).
pub fn build_triple() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// Fixed timestamp for builds and archives (1980-01-01, the oldest date
/// zip and friends accept), so outputs do not depend on the clock.
pub const SOURCE_DATE_EPOCH: u64 = 315_532_800;

/// Why a build failed, for the user.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{recipe}: tarball {tarball} (line {line}) has sha256 {actual}, but the recipe says {expected}; check the download or update sha256"
    )]
    Checksum {
        recipe: String,
        tarball: String,
        line: usize,
        expected: String,
        actual: String,
    },
    #[error("{recipe}: the build script failed ({status}){hint}")]
    Script {
        recipe: String,
        status: String,
        hint: String,
    },
}

/// Copy a directory tree (files, dirs, symlinks), keeping modes.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.with_context(|| format!("read {}", from.display()))?;
        let dest = to.join(entry.path().strip_prefix(from).unwrap());
        let ft = entry.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest).with_context(|| format!("create {}", dest.display()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(target, &dest)
                .with_context(|| format!("symlink {}", dest.display()))?;
        } else {
            fs::copy(entry.path(), &dest).with_context(|| {
                format!("copy {} to {}", entry.path().display(), dest.display())
            })?;
        }
    }
    Ok(())
}

/// Get a tarball into place and check its checksum. URLs are downloaded
/// once into `<cache>/distfiles/<sha256>-<file>`.
fn fetch_tarball(
    recipe: &Recipe,
    t: &super::recipe::Tarball,
    cross: &CrossRoot,
    log: &Path,
) -> Result<PathBuf> {
    let path = match &t.source {
        TarballSource::File(f) => recipe.dir.join(f),
        TarballSource::Url(url) => {
            let dir = cross.cache_dir().join("distfiles");
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let path = dir.join(format!("{}-{}", &t.sha256[..16], t.file_name()));
            if !path.exists() {
                let tmp = dir.join(format!(".{}.{}.part", t.file_name(), std::process::id()));
                Command::new("curl")
                    .args([
                        "--fail",
                        "--location",
                        "--silent",
                        "--show-error",
                        "--output",
                    ])
                    .arg(&tmp)
                    .arg(url)
                    .run_logged(log)
                    .with_context(|| format!("{}: download {url}", recipe.name))?;
                let actual = binpkg::sha256_file(&tmp)?;
                if actual != t.sha256 {
                    let _ = fs::remove_file(&tmp);
                    return Err(BuildError::Checksum {
                        recipe: recipe.name.clone(),
                        tarball: url.clone(),
                        line: t.line,
                        expected: t.sha256.clone(),
                        actual,
                    }
                    .into());
                }
                fs::rename(&tmp, &path)
                    .with_context(|| format!("rename into {}", path.display()))?;
            }
            path
        }
    };
    let actual = binpkg::sha256_file(&path)
        .with_context(|| format!("{}: tarball {}", recipe.name, t.file_name()))?;
    if actual != t.sha256 {
        return Err(BuildError::Checksum {
            recipe: recipe.name.clone(),
            tarball: t.file_name().to_string(),
            line: t.line,
            expected: t.sha256.clone(),
            actual,
        }
        .into());
    }
    Ok(path)
}

/// Build `recipe` (a `build` recipe) and return its DESTDIR contents.
/// Output goes to `log`. The work directory is
/// `<build-root>/.work/<board>/<category>/<name>` (the same path every
/// time, so builds that record their path stay reproducible); it is
/// removed after a successful build and kept after a failure.
pub fn build(
    recipe: &Recipe,
    spec: &BuildSpec,
    board: &Board,
    cross: &CrossRoot,
    jobs: usize,
    log: &Path,
) -> Result<Content> {
    let work = cross.work_dir().join(&recipe.name);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clean {}", work.display()))?;
    }
    let src = work.join("src");
    let dest = work.join("dest");
    let tmp = work.join("tmp");
    let home = work.join("home");
    for d in [&src, &dest, &tmp, &home] {
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    copy_tree(&recipe.dir, &src)?;
    for t in &spec.tarballs {
        let file = fetch_tarball(recipe, t, cross, log)?;
        Command::new("tar")
            .arg("-xf")
            .arg(&file)
            .arg("-C")
            .arg(&src)
            .arg("--no-same-owner")
            .run_logged(log)
            .with_context(|| format!("{}: unpack {}", recipe.name, t.file_name()))?;
    }
    let t = &board.toolchain;
    let (category, name) = recipe.name.split_once('/').unwrap_or(("", &recipe.name));
    let path_var = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        cross.wrappers_dir().display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-e")
        .arg(src.join(&spec.script))
        .current_dir(&src)
        .env_clear()
        .env("PATH", path_var)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
        .env("CC", cross.wrapper("cc"))
        .env("CXX", cross.wrapper("c++"))
        .env("AR", cross.wrapper("ar"))
        .env("CHOST", &board.target)
        .env("CBUILD", build_triple())
        .env("CFLAGS", &t.cflags)
        .env("CXXFLAGS", &t.cxxflags)
        .env("LDFLAGS", &t.ldflags)
        .env("SYSROOT", &cross.root)
        .env("PKG_CONFIG", cross.wrapper("pkg-config"))
        .env("PKG_CONFIG_SYSROOT_DIR", &cross.root)
        .env("PKG_CONFIG_LIBDIR", cross.pkg_config_libdir(board))
        .env("PKG_CONFIG_PATH", "")
        .env("DESTDIR", &dest)
        .env("PREFIX", "/usr")
        .env("JOBS", jobs.max(1).to_string())
        .env("BOARD", &board.name)
        .env("ARCH", &board.arch)
        .env("DEBIAN_ARCH", &board.debian_arch)
        .env("CATEGORY", category)
        .env("PN", name)
        .env("PV", &recipe.version)
        .env("S", &src);
    isolate::confine(&mut cmd, &work)?;
    let mut result = cmd.run_logged(log);
    if let Err(CmdError::Spawn { source, .. }) = &result {
        tracing::warn!(
            recipe = %recipe.name,
            "cannot confine the build ({source}); running it without write protection"
        );
        let mut plain = Command::new("sh");
        plain.arg("-e").arg(src.join(&spec.script));
        plain.current_dir(&src).env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                plain.env(k, v);
            }
        }
        result = plain.run_logged(log);
    }
    if let Err(e) = result {
        let status = match &e {
            CmdError::Failed { status, .. } => status.to_string(),
            other => other.to_string(),
        };
        let tail = crate::cmd::file_tail(log, 40);
        let hint = if tail.contains("Read-only file system") {
            "; it tried to write outside DESTDIR (everything but the work directory is read-only during a build): install into \"$DESTDIR\"".to_string()
        } else {
            String::new()
        };
        return Err(BuildError::Script {
            recipe: recipe.name.clone(),
            status,
            hint,
        }
        .into());
    }
    let mut content = binpkg::collect_destdir(&dest)
        .with_context(|| format!("{}: collect DESTDIR", recipe.name))?;
    if content.is_empty() {
        bail!(
            "{}: the build script installed nothing into DESTDIR; install with DESTDIR=\"$DESTDIR\" (or make the recipe kind \"meta\")",
            recipe.name
        );
    }
    binpkg::add_parents(&mut content);
    Ok(content)
}

/// Remove a successful build's work directory.
pub fn clean(cross: &CrossRoot, recipe: &Recipe) {
    let _ = fs::remove_dir_all(cross.work_dir().join(&recipe.name));
}
