//! Create a sandbox: validate what was asked (before anything is written),
//! extract a rootfs tarball if one was given, and write `config.json`
//! last, so a sandbox exists exactly when its config does. The caller
//! holds the sandbox lock and starts it afterwards.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sdk_common::compress;
use sdk_common::layer::{ExtractError, Extractor, Options};

use crate::exit::UsageError;
use crate::idmap::IdMap;
use crate::sandbox::config::{Config, Net, RootfsSpec, Volume};
use crate::sandbox::userns;
use crate::state::SandboxPaths;
use crate::state::write_json;

/// What the user asked for, validated by [`Request::validate`].
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    /// `None`: the default SDK image (see [`default_rootfs`]).
    pub rootfs: Option<RootfsSpec>,
    /// The path `--rootfs` named, as given.
    pub rootfs_origin: Option<PathBuf>,
    pub source: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    pub devices: Vec<PathBuf>,
    pub net: Net,
    /// Environment for every command entered (an image's `[env]`).
    pub env: Vec<(String, String)>,
    /// The persistent `/build` for a disposable root (None: /build lives
    /// in the root, e.g. for `--rm` or a rootfs used in place).
    pub build_volume: Option<PathBuf>,
}

/// The rootfs a sandbox gets when no `--rootfs` is given: an overlay over
/// the embedded default SDK image, built into the image store on first use
/// (see `crate::rootfs`).
pub fn default_rootfs(
    state: &crate::state::StateDir,
    sb: &SandboxPaths,
) -> anyhow::Result<Option<RootfsSpec>> {
    let (map, _warning) = crate::idmap::IdMap::for_caller(
        &crate::idmap::SubIdFiles::default(),
        &crate::idmap::Caller::current(),
    )?;
    let ctx = crate::rootfs::import::Ctx::new(state.clone(), map);
    let image = crate::rootfs::default_sdk_image(&ctx)?;
    Ok(Some(RootfsSpec::overlay_for(sb, image.rootfs())))
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// Make `-v` sources absolute and check they exist.
pub fn resolve_volumes(cwd: &Path, vols: &[Volume]) -> anyhow::Result<Vec<Volume>> {
    vols.iter()
        .map(|v| {
            let src = cwd.join(&v.src);
            let src = std::fs::canonicalize(&src).map_err(|_| {
                usage(format!(
                    "-v {}:{}: {} does not exist; create it or fix the path",
                    v.src.display(),
                    v.dst.display(),
                    src.display()
                ))
            })?;
            Ok(Volume {
                src,
                dst: v.dst.clone(),
                readonly: v.readonly,
            })
        })
        .collect()
}

/// Check `--device` paths are device nodes.
pub fn resolve_devices(devs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    devs.iter()
        .map(|d| {
            let m = std::fs::metadata(d).map_err(|_| {
                usage(format!(
                    "--device {}: no such device; check the path (e.g. --device /dev/kvm)",
                    d.display()
                ))
            })?;
            let ft = m.file_type();
            if !(ft.is_char_device() || ft.is_block_device()) || !d.is_absolute() {
                return Err(usage(format!(
                    "--device {}: not a device node; pass an absolute /dev path",
                    d.display()
                )));
            }
            Ok(d.clone())
        })
        .collect()
}

/// Devices every sandbox gets when present and usable by the caller.
pub fn default_devices() -> Vec<PathBuf> {
    ["/dev/kvm", "/dev/fuse"]
        .iter()
        .map(PathBuf::from)
        .filter(|d| {
            nix::unistd::access(
                d,
                nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
            )
            .is_ok()
        })
        .collect()
}

/// `--rootfs DIR|TARBALL`: check it exists and is one or the other.
pub fn resolve_rootfs(cwd: &Path, p: &Path) -> anyhow::Result<(RootfsSpec, PathBuf)> {
    let abs = cwd.join(p);
    let m = std::fs::metadata(&abs).map_err(|_| {
        usage(format!(
            "--rootfs {}: no such directory or tarball; pass an unpacked rootfs directory or a .tar, .tar.gz or .tar.zst",
            p.display()
        ))
    })?;
    let abs =
        std::fs::canonicalize(&abs).with_context(|| format!("cannot resolve {}", abs.display()))?;
    if m.is_dir() {
        if !abs.join("bin").exists() && !abs.join("usr/bin").exists() {
            return Err(usage(format!(
                "--rootfs {}: not a rootfs (no bin/ or usr/bin/ in it)",
                p.display()
            )));
        }
    } else if compress::sniff_tarball(&abs)
        .with_context(|| format!("cannot read {}", abs.display()))?
        .is_none()
    {
        return Err(usage(format!(
            "--rootfs {}: not a directory, nor a tar, gzip or zstd tarball",
            p.display()
        )));
    }
    for c in [",", ":"] {
        if abs.to_string_lossy().contains(c) {
            return Err(usage(format!(
                "--rootfs {}: the path may not contain `{c}`; move or link it elsewhere",
                p.display()
            )));
        }
    }
    Ok((RootfsSpec::Bind(abs.clone()), abs))
}

/// Unpack `tarball` (plain, gzip or zstd) into `dest` (which must not
/// exist) with the hardened extractor (`sdk_common::layer`: no `..`, no
/// write through a link that leaves `dest`, hard links resolved inside),
/// as root in a user namespace with `map` so file ownership is kept.
/// Device nodes cannot be created there and are skipped (the sandbox's
/// /dev is made at start).
pub fn extract_tarball(map: &IdMap, tarball: &Path, dest: &Path) -> anyhow::Result<()> {
    compress::sniff_tarball(tarball)
        .with_context(|| format!("cannot read {}", tarball.display()))?
        .context("not a tarball")?;
    let shown = tarball.display().to_string();
    let tarball = tarball.to_path_buf();
    let dest = dest.to_path_buf();
    userns::run_in_userns(map, move || {
        let f = std::fs::File::open(&tarball)
            .with_context(|| format!("cannot open {}", tarball.display()))?;
        let reader = compress::decoder(BufReader::with_capacity(1 << 20, f))
            .context("cannot read the tarball")?;
        std::fs::create_dir(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        // Owners are applied when root exists inside the namespace.
        let mut x = Extractor::new(&dest, Options::tarball());
        x.apply(reader).map_err(|e| match e {
            ExtractError::Read(_) => anyhow::Error::new(UsageError(format!(
                "{e}; give a plain, gzip or zstd tar of a root filesystem"
            ))),
            e => anyhow::Error::new(e),
        })?;
        if x.report.skipped_total > 0 {
            tracing::info!(
                skipped = x.report.skipped_total,
                first = ?x.report.skipped.first(),
                "entries of the rootfs tarball refused or neutralised"
            );
        }
        Ok(())
    })
    .with_context(|| format!("cannot extract {shown}"))
}

/// Write the sandbox's config (and extract its rootfs). On failure nothing
/// of the sandbox is left but its directory, which the caller removes.
pub fn create(
    sb: &SandboxPaths,
    req: &Request,
    rootfs: RootfsSpec,
    map: IdMap,
) -> anyhow::Result<Config> {
    // A rootfs used in place keeps its own /build; a disposable root
    // (an extracted tarball, an overlay layer) gets the persistent one.
    let in_place = matches!(&rootfs, RootfsSpec::Bind(p) if !p.is_file());
    let build_volume = req.build_volume.clone().filter(|_| !in_place);
    if let Some(v) = &build_volume {
        if v.is_dir() {
            eprintln!(
                "sdk-run: {} keeps the /build of an earlier sandbox of that name (`sdk-run rm --volumes {}` drops it)",
                req.name, req.name
            );
        }
        // Made by the caller, so it is the sdk user's inside.
        std::fs::create_dir_all(v).with_context(|| format!("cannot create {}", v.display()))?;
    }
    let rootfs = match rootfs {
        RootfsSpec::Bind(p) if p.is_file() => {
            let tmp = sb.dir.join("rootfs.tmp");
            if tmp.exists() {
                remove_tree(&map, &tmp)?;
            }
            extract_tarball(&map, &p, &tmp)?;
            std::fs::rename(&tmp, sb.rootfs())
                .context("cannot move the extracted rootfs into place")?;
            RootfsSpec::Bind(sb.rootfs())
        }
        other => other,
    };
    let cfg = Config {
        name: req.name.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        rootfs,
        source: req.source.clone(),
        volumes: req.volumes.clone(),
        devices: req.devices.clone(),
        net: req.net,
        idmap: map,
        rootfs_origin: req.rootfs_origin.clone(),
        env: req.env.clone(),
        build_volume,
    };
    write_json(&sb.config(), &cfg)?;
    Ok(cfg)
}

/// Remove a directory tree that may hold files owned by subordinate ids
/// (only root inside the user namespace may delete those).
pub fn remove_tree(map: &IdMap, dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if map.has_root() {
        let d = dir.to_path_buf();
        userns::run_in_userns(map, move || {
            std::fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))
        })?;
        Ok(())
    } else {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_tarballs() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("x.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&t).unwrap());
        b.append_dir("bin", d.path()).unwrap();
        b.finish().unwrap();
        drop(b);
        std::fs::write(d.path().join("n"), b"hello").unwrap();
        assert!(resolve_rootfs(d.path(), Path::new("n")).is_err());
        assert!(resolve_rootfs(d.path(), Path::new("missing")).is_err());
        assert!(resolve_rootfs(d.path(), Path::new("x.tar")).is_ok());
    }

    #[test]
    fn bad_devices_and_volumes_are_usage_errors() {
        let e = resolve_devices(&["/dev/nope".into()]).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert!(resolve_devices(&["/etc/passwd".into()]).is_err());
        assert!(resolve_devices(&["/dev/null".into()]).is_ok());
        let v: Volume = "nope:/x".parse().unwrap();
        let e = resolve_volumes(Path::new("/"), &[v]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
