//! Putting images into the store and taking them out: `sdk-run import`,
//! `rmi`, and the user-namespace glue the manifest build shares. Unpacking
//! and deleting run as root inside a user namespace with the caller's id
//! map (the same map sandboxes get), so ownership recorded in an archive
//! becomes real ownership in the store. Owns the sequence lock -> clean
//! leftovers -> unpack into `.tmp/` -> publish by rename; not the formats
//! (`oci`, `extract`) nor the layout (`store`).

use sdk_common::error::{BadInput, bad_input, classify};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::store::{Image, ImageMeta, Store, StoreLock, valid_tag};
use crate::exit::UsageError;
use crate::idmap::{Caller, IdMap, SubIdFiles};
use crate::sandbox::userns;
use crate::state::StateDir;
use sdk_common::fsutil::remove_any;
use sdk_common::layer::Report;
use sdk_common::oci::{self, ImportError};

/// What store operations need: where, and the id map to unpack with.
pub struct Ctx {
    pub state: StateDir,
    pub map: IdMap,
    pub store: Store,
}

impl Ctx {
    /// From `$XDG_DATA_HOME`/`$HOME` and `/etc/subuid`; prints the id-map
    /// warning when the caller has no subordinate range.
    pub fn from_env() -> Result<Ctx> {
        let state = StateDir::from_env()?;
        let (map, warning) = IdMap::for_caller(&SubIdFiles::default(), &Caller::current())
            .context("reading the subordinate id ranges")?;
        if let Some(w) = warning {
            eprintln!("{w}");
        }
        Ok(Ctx::new(state, map))
    }

    pub fn new(state: StateDir, map: IdMap) -> Ctx {
        let store = Store::new(state.images());
        Ctx { state, map, store }
    }

    /// Delete `paths` (trees that may belong to subordinate ids) from
    /// inside the user namespace.
    pub fn remove_trees(&self, paths: Vec<PathBuf>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        userns::run_in_userns(&self.map, move || {
            for p in &paths {
                if std::fs::symlink_metadata(p).is_ok() {
                    remove_any(p).with_context(|| format!("removing {}", p.display()))?;
                }
            }
            Ok(())
        })
        .context("cleaning up in the user namespace")
    }

    /// Remove what killed imports or builds left in `.tmp/`.
    pub fn clean_leftovers(&self, lock: &StoreLock) -> Result<()> {
        let left = self.store.leftovers(lock);
        if !left.is_empty() {
            tracing::info!(n = left.len(), "removing leftovers of interrupted imports");
        }
        self.remove_trees(left)
    }
}

#[derive(Serialize, Deserialize)]
enum Outcome<T> {
    Ok(T),
    Err { message: String, bad_input: bool },
}

/// Run `f` as root in the caller's user namespace and bring its result
/// back through `result_file` (in a directory the caller owns). Errors
/// about the input stay usage errors (exit code 2).
pub fn in_userns<T, F>(map: &IdMap, result_file: &Path, f: F) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T>,
{
    let rf = result_file.to_path_buf();
    let parent = nix::unistd::getpid();
    userns::run_in_userns(map, move || {
        // Die with sdk-run: a killed import must not keep writing (and
        // holding the store lock) behind its back.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        if nix::unistd::getppid() != parent {
            anyhow::bail!("sdk-run exited before the unpack started");
        }
        // Modes come from the archive, not from the caller's umask.
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let outcome = match f() {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Err {
                message: format!("{e:#}"),
                bad_input: is_bad_input(&e),
            },
        };
        std::fs::write(&rf, serde_json::to_vec(&outcome)?)
            .with_context(|| format!("writing {}", rf.display()))?;
        Ok(())
    })
    .context("in the user namespace")?;
    let bytes =
        std::fs::read(result_file).with_context(|| format!("reading {}", result_file.display()))?;
    let _ = std::fs::remove_file(result_file);
    match serde_json::from_slice(&bytes).context("decoding the user-namespace result")? {
        Outcome::Ok(v) => Ok(v),
        Outcome::Err { message, bad_input } if bad_input => Err(UsageError(message).into()),
        Outcome::Err { message, .. } => Err(anyhow::anyhow!(message)),
    }
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    sdk_common::is_usage(e)
        || e.chain().any(|c| {
            c.downcast_ref::<ImportError>()
                .is_some_and(BadInput::is_bad_input)
        })
}

/// A progress callback over `total` bytes: a bar on a terminal,
/// timestamped lines at each tenth otherwise (see `sdk_common::progress`).
pub fn progress(total: u64, what: &str) -> Box<dyn Fn(u64) + Sync> {
    sdk_common::progress::bytes("sdk-run", what, total)
}

/// Make the fresh `rootfs/` of an unpack belong to root, 0755 (an archive
/// without a `./` entry says nothing about it).
pub fn own_root_dir(rootfs: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(rootfs, Some(0), Some(0))
            .with_context(|| format!("chown {}", rootfs.display()))?;
    }
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", rootfs.display()))?;
    Ok(())
}

/// Print what the extractor refused or neutralised (one line each).
pub fn print_report(report: &Report) {
    if report.skipped_total == 0 {
        return;
    }
    eprintln!(
        "sdk-run: {} archive entries were skipped or neutralised:",
        report.skipped_total
    );
    for (name, why) in &report.skipped {
        // Names and reasons come from the archive's headers.
        eprintln!(
            "  {}: {}",
            sdk_common::error::quote_untrusted(name),
            sdk_common::error::quote_untrusted(why)
        );
    }
    let more = report.skipped_total - report.skipped.len() as u64;
    if more > 0 {
        eprintln!("  ... and {more} more (-v lists them all)");
    }
}

/// The result of an import.
pub struct Imported {
    pub image: Image,
    pub report: Report,
    /// The same content was already in the store.
    pub existed: bool,
}

#[derive(Serialize, Deserialize)]
struct Unpacked {
    report: Report,
    digest: String,
}

/// Import `path` (OCI archive or layout, docker-save tarball, rootfs
/// tarball) into the store, tagging it `tag` when given.
pub fn import(ctx: &Ctx, path: &Path, tag: Option<&str>) -> Result<Imported> {
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(UsageError(format!(
            "--tag {t:?} is not valid: use letters, digits and `._:-`, starting with a letter or digit"
        ))
        .into());
    }
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let plan = oci::inspect(&path).map_err(classify)?;
    let lock = ctx.store.lock()?;
    ctx.clean_leftovers(&lock)?;
    if let Some(d) = &plan.digest
        && let Some(image) = ctx.store.get(d)
    {
        // The manifest says it is an image we have: its bytes must say so
        // too before anything is tagged from them.
        let bar = progress(plan.total_bytes(), "verifying");
        oci::verify(&plan, &*bar).map_err(classify)?;
        if let Some(t) = tag {
            ctx.store.tag(&lock, t, d)?;
        }
        let image = ctx.store.get(d).unwrap_or(image);
        return Ok(Imported {
            image,
            report: Report::default(),
            existed: true,
        });
    }
    let tmp = ctx.store.begin(&lock)?;
    let rootfs = tmp.join("rootfs");
    let result_file = tmp.join("result.json");
    let total = plan.total_bytes();
    let plan2 = plan.clone();
    let unpacked: Result<Unpacked> = in_userns(&ctx.map, &result_file, move || {
        own_root_dir(&rootfs)?;
        let bar = progress(total, "unpacking");
        let (report, digest) = oci::unpack(&plan2, &rootfs, &*bar)?;
        Ok(Unpacked { report, digest })
    });
    let unpacked = match unpacked {
        Ok(u) => u,
        Err(e) => {
            // The store stays as it was; report a cleanup failure too.
            if let Err(c) = ctx.remove_trees(vec![tmp.clone()]) {
                return Err(e.context(format!(
                    "and removing the partial unpack failed: {c:#}; it is removed by the next import"
                )));
            }
            return Err(e);
        }
    };
    let meta = ImageMeta::new(
        &unpacked.digest,
        plan.kind.as_str(),
        &path.display().to_string(),
        plan.config.clone(),
        unpacked.report.skipped_total,
    );
    let existed = !ctx.store.publish(&lock, &tmp, &meta)?;
    if existed {
        ctx.remove_trees(vec![tmp])?;
    }
    if let Some(t) = tag {
        ctx.store.tag(&lock, t, &unpacked.digest)?;
    }
    let image = ctx
        .store
        .get(&unpacked.digest)
        .context("the image vanished right after import")?;
    Ok(Imported {
        image,
        report: unpacked.report,
        existed,
    })
}

/// Sandboxes whose config mentions image `digest` (they stack on it).
pub fn users_of(state: &StateDir, digest: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(state.sandboxes()) {
        for e in rd.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join("config.json"))
                && text.contains(digest)
            {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    v
}

/// `sdk-run rmi NAME...`: remove images (refusing those sandboxes stack
/// on, unless `force`).
pub fn remove(ctx: &Ctx, names: &[String], force: bool) -> Result<Vec<String>> {
    let mut images = Vec::new();
    for n in names {
        let img = ctx.store.resolve(n).map_err(bad_input)?;
        let users = users_of(&ctx.state, &img.meta.digest);
        if !users.is_empty() && !force {
            return Err(UsageError(format!(
                "image {n} is the base of sandbox(es) {}; remove them first (`sdk-run rm NAME`) or pass --force",
                users.join(", ")
            ))
            .into());
        }
        images.push(img.meta.digest);
    }
    let lock = ctx.store.lock()?;
    let mut trash = Vec::new();
    for d in &images {
        if ctx.store.get(d).is_some() {
            trash.push(ctx.store.trash(&lock, d)?);
        }
    }
    ctx.remove_trees(trash)?;
    Ok(images)
}
