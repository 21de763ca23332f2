//! The rootfs verbs of the CLI: `import`, `images`, `rmi`, `commit`,
//! `build`. Argument types (clap) and what each prints; the work is in the
//! sibling modules.

use sdk_common::error::bad_input;
use std::path::PathBuf;

use anyhow::Result;

use crate::rootfs::import::{self, Ctx};
use crate::rootfs::manifest::Manifest;
use crate::rootfs::{build, commit};

#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
/// Import an image into the store: an OCI archive or layout, a
/// `docker save` tarball, or a rootfs tarball (plain, .gz, .zst).
///
/// Examples:
///   sdk-run import sdk.oci.tar --tag sdk:2024.1
///   skopeo copy docker-archive:sdk.tar oci:layout && sdk-run import layout
///   sdk-run import rootfs.tar.zst
pub struct ImportArgs {
    /// The archive, layout directory or tarball.
    pub archive: PathBuf,
    /// Name the image (letters, digits, `._:-`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
/// List the images in the store.
///
/// Examples:
///   sdk-run images
///   sdk-run images --json | jq -r '.[].digest'
pub struct ImagesArgs {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
/// Remove images (by tag, digest or unique digest prefix).
///
/// Examples:
///   sdk-run rmi sdk:2024.1
///   sdk-run rmi 3f2a9c
pub struct RmiArgs {
    /// Images to remove: tags, digests or unique digest prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even when sandboxes stack on it (they stop working).
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
/// Write a sandbox as an OCI image archive: its base plus its changes as a
/// new layer. Read it with `skopeo inspect oci-archive:OUT.tar`, unpack it
/// with umoci, or `sdk-run import` it.
///
/// Examples:
///   sdk-run commit sdk-1.0_os-2.0 my-sdk.oci.tar
pub struct CommitArgs {
    /// The sandbox whose root becomes the image.
    pub sandbox: String,
    /// The OCI archive to write.
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
/// Build an image from a rootfs manifest (default: the embedded SDK
/// manifest) unless the store already has it; print its digest.
///
/// Examples:
///   sdk-run build                                 the default SDK
///   sdk-run build rootfs-manifests/mine.toml --tag mine
///   sdk-run build site.toml --tag site:2025.03 --tag site:latest
pub struct BuildArgs {
    /// A rootfs manifest (see README "Rootfs manifests").
    pub manifest: Option<PathBuf>,
    /// Name the image (letters, digits, `._:-`); repeat for several names.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only print the digest the manifest resolves to; build nothing.
    #[arg(long)]
    pub digest_only: bool,
}

fn short(d: &str) -> &str {
    &d[..12.min(d.len())]
}

pub fn import(a: &ImportArgs) -> Result<i32> {
    let ctx = Ctx::from_env()?;
    let r = import::import(&ctx, &a.archive, a.tag.as_deref())?;
    import::print_report(&r.report);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "digest": r.image.meta.digest,
                "tags": r.image.tags,
                "kind": r.image.meta.kind,
                "existed": r.existed,
                "skipped": r.report.skipped_total,
                "entries": r.report.entries,
            })
        );
    } else {
        let what = if r.existed {
            "already in the store"
        } else {
            "imported"
        };
        println!(
            "{} {what} ({}{})",
            r.image.meta.digest,
            r.image.meta.kind,
            if r.image.tags.is_empty() {
                String::new()
            } else {
                format!(", tags: {}", r.image.tags.join(" "))
            }
        );
    }
    Ok(0)
}

pub fn images(a: &ImagesArgs) -> Result<i32> {
    let ctx = Ctx::from_env()?;
    let list = ctx.store.list()?;
    if a.json {
        let v: Vec<_> = list
            .iter()
            .map(|i| {
                serde_json::json!({
                    "digest": i.meta.digest,
                    "tags": i.tags,
                    "kind": i.meta.kind,
                    "source": i.meta.source,
                    "created": i.meta.created,
                    "rootfs": i.rootfs(),
                    "config": i.meta.config,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<12}  {:<24}  {:<11}  SOURCE", "DIGEST", "TAGS", "KIND");
    for i in list {
        let tags = if i.tags.is_empty() {
            "-".to_string()
        } else {
            i.tags.join(",")
        };
        println!(
            "{:<12}  {:<24}  {:<11}  {}",
            short(&i.meta.digest),
            tags,
            i.meta.kind,
            i.meta.source
        );
    }
    Ok(0)
}

pub fn rmi(a: &RmiArgs) -> Result<i32> {
    let ctx = Ctx::from_env()?;
    for d in import::remove(&ctx, &a.images, a.force)? {
        println!("removed {d}");
    }
    Ok(0)
}

pub fn commit(a: &CommitArgs) -> Result<i32> {
    let ctx = Ctx::from_env()?;
    let digest = commit::commit(&ctx, &a.sandbox, &a.out)?;
    println!("{} sha256:{digest}", a.out.display());
    Ok(0)
}

pub fn build(a: &BuildArgs) -> Result<i32> {
    let m = match &a.manifest {
        Some(p) => Manifest::load(p).map_err(bad_input)?,
        None => Manifest::default_sdk(),
    };
    if a.digest_only {
        println!("{}", build::digest(&m)?);
        return Ok(0);
    }
    // Every name checked before anything is built.
    if let Some(t) = a.tag.iter().find(|t| !crate::rootfs::store::valid_tag(t)) {
        return Err(bad_input(crate::rootfs::store::StoreError::BadTag(
            t.clone(),
        )));
    }
    let ctx = Ctx::from_env()?;
    let img = build::ensure(&ctx, &m)?;
    if !a.tag.is_empty() {
        let lock = ctx.store.lock()?;
        for t in &a.tag {
            ctx.store.tag(&lock, t, &img.meta.digest)?;
        }
    }
    println!("{}", img.meta.digest);
    Ok(0)
}
