//! Command-line arguments of `build_image` and `build_sysext`.

use std::path::PathBuf;

use anyhow::Result;

use crate::formats::fs::FsType;
use crate::image::build::{ImageRequest, build_image};
use crate::image::live::OutputFormat;
use crate::image::sysext::{SysextRequest, build_sysext};

/// Build a GPT disk image with A/B USR partitions under dm-verity.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  build_image --board amd64-usr
      Install the board's OS meta-package (and its runtime dependencies)
      from the binary packages in /build/amd64-usr and write
      __build__/images/amd64-usr/developer-<version>-a1/ and `latest`.
  build_image --board amd64-usr --replace --check-reproducible
      Build the same version again (as attempt 2), twice, and fail unless
      both builds are byte-identical.
  build_image --board amd64-usr --root ./staging
      Build from a staging root made elsewhere (files owned by you count
      as root's in the image).
  build_image --board amd64-usr --format pxe
      A netboot set in __build__/images/amd64-usr/pxe/: kernel, initramfs,
      the USR image (squashfs + verity tree) and an iPXE script that boots
      them from the TFTP server it came from (test_image --format pxe).
  build_image --board amd64-usr --format iso
      A hybrid live ISO (UEFI, CD or USB stick) in .../iso/; ROOT is in
      memory, USR verified from the medium (test_image --format iso).
  build_image --board amd64-usr --oci os.tar
      Write the OS tree as a one-layer OCI image archive instead; layer on
      it (umoci, podman) and come back with --from-oci os-custom.tar.

Outputs (in <group>-<version>-a<attempt>/): <name>.bin (the disk image),
<name>_update.bin (USR-A: filesystem + verity tree), <name>_verity.txt,
<name>_contents.txt, <name>_packages.txt, <name>_sbom.json (SPDX 2.3),
version.txt and manifest.json (sha256 and size of each).
SOURCE_DATE_EPOCH, when set, fixes every timestamp; by default it is the
newest modification time among the inputs.")]
pub struct BuildImageArgs {
    /// Board to build for (profiles/<board>/ in the repo or shipped).
    #[arg(long)]
    pub board: String,
    /// Image group: part of the output folder and image names.
    #[arg(long, default_value = "developer")]
    pub group: String,
    /// Build again when this group and version exist (as the next attempt;
    /// the older attempt is removed once `latest` points at the new one).
    #[arg(long)]
    pub replace: bool,
    /// Output folder holding the builds and `latest` [default:
    /// <repo>/__build__/images/<board>].
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Build from this staging root instead of the board's packages.
    #[arg(long, value_name = "DIR", conflicts_with = "from_oci")]
    pub root: Option<PathBuf>,
    /// Build twice and fail unless every artifact is byte-identical.
    #[arg(long)]
    pub check_reproducible: bool,
    /// Write the OS tree as an OCI image archive (one layer) and stop.
    #[arg(long, value_name = "OUT.tar")]
    pub oci: Option<PathBuf>,
    /// Build from an OCI image archive (its layers applied in order).
    #[arg(long, value_name = "IN.tar")]
    pub from_oci: Option<PathBuf>,
    /// Disk layout variant (`[variant.NAME]` in the board's disk layout).
    #[arg(long, value_name = "NAME")]
    pub disk_layout: Option<String>,
    /// Where the cross-roots live [default: /build].
    #[arg(long, value_name = "DIR", env = "SDK_BUILD_ROOT")]
    pub build_root: Option<PathBuf>,
    /// ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`)
    /// that signs the update metadata [default: the repo's development key,
    /// made once in __build__/keys].
    #[arg(long, value_name = "FILE", env = "SDK_UPDATE_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// What to build: the disk image, a netboot set (pxe) or a live ISO
    /// (iso); the last two go to <output>/<format>/ by default.
    #[arg(long, value_enum, default_value = "disk")]
    pub format: OutputFormat,
    /// Then upload the build to s3://BUCKET/PREFIX (see `sdk-tools publish`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub publish: Option<String>,
}

/// Upload an output set to S3 or an S3-compatible store.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  sdk-tools publish __build__/images/amd64-usr/latest s3://images/demo
      Upload the latest disk build as s3://images/demo/developer-1.0.0-a1/...
      (every file of its manifest, checked against it, manifest.json last).
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 sdk-tools publish __build__/images/amd64-usr/pxe/latest s3://boot/nodes
      The netboot set to a store of one's own (MinIO, Ceph, moto).
  build_image --board amd64-usr --format iso --publish s3://images/demo
      Build, then publish.

Publishing again uploads only what the store does not hold already (same
size and sha256). Endpoint, region and credentials are read as the AWS
tools read them: AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config and ~/.aws/credentials.")]
pub struct PublishArgs {
    /// The build folder (with its manifest.json).
    pub dir: PathBuf,
    /// Where to: s3://BUCKET/PREFIX.
    pub url: String,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Build a systemd-sysext image from packages.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  build_sysext --board amd64-usr tools app-misc/tool
      Install app-misc/tool and what it needs beyond the OS image into
      __build__/images/amd64-usr/sysext/tools.raw (squashfs) with
      usr/lib/extension-release.d/extension-release.tools.
  build_sysext --board amd64-usr --fs erofs --verity tools app-misc/tool
      erofs, plus tools.verity and tools.roothash beside tools.raw.")]
pub struct BuildSysextArgs {
    /// Board whose packages and OS image the extension is for.
    #[arg(long)]
    pub board: String,
    /// Extension name (file name and extension-release suffix).
    pub name: String,
    /// Packages to install (`category/name`); dependencies the OS image
    /// already has are left out.
    pub packages: Vec<String>,
    /// Build from this staging root instead of packages.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// squashfs or erofs.
    #[arg(long, default_value = "squashfs", value_parser = parse_fs)]
    pub fs: FsType,
    /// Also write NAME.verity (hash tree) and NAME.roothash.
    #[arg(long)]
    pub verity: bool,
    /// Overwrite an existing NAME.raw.
    #[arg(long)]
    pub replace: bool,
    /// Output folder [default: <repo>/__build__/images/<board>/sysext].
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Where the cross-roots live [default: /build].
    #[arg(long, value_name = "DIR", env = "SDK_BUILD_ROOT")]
    pub build_root: Option<PathBuf>,
}

fn parse_fs(s: &str) -> Result<FsType, String> {
    s.parse::<FsType>().map_err(|e| e.to_string())
}

pub fn run_build_image(a: BuildImageArgs) -> Result<()> {
    let target = a
        .publish
        .as_deref()
        .map(crate::publish::S3Url::parse)
        .transpose()
        .map_err(sdk_common::error::classify)?;
    let dest = build_image(&ImageRequest {
        board: a.board,
        group: a.group,
        replace: a.replace,
        output: a.output,
        root: a.root,
        from_oci: a.from_oci,
        oci: a.oci,
        check_reproducible: a.check_reproducible,
        build_root: a.build_root,
        layout_variant: a.disk_layout,
        sign_key: a.sign_key,
        format: a.format,
    })?;
    if let Some(url) = target {
        print_report(&publish_dir(&dest, &url)?, false)?;
    }
    Ok(())
}

fn publish_dir(
    dir: &std::path::Path,
    url: &crate::publish::S3Url,
) -> Result<crate::publish::Report> {
    let ep = crate::publish::Endpoint::current();
    crate::publish::publish(dir, url, &ep).map_err(sdk_common::error::classify)
}

fn print_report(r: &crate::publish::Report, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "location": r.location,
            "uploaded": r.uploaded,
            "unchanged": r.unchanged,
            "bytes": r.bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!(
            "publish: {}: {} uploaded ({} bytes), {} unchanged",
            r.location,
            r.uploaded.len(),
            r.bytes,
            r.unchanged.len()
        );
        println!("{}", r.location);
    }
    Ok(())
}

pub fn run_publish(a: PublishArgs) -> Result<()> {
    let url = crate::publish::S3Url::parse(&a.url).map_err(sdk_common::error::classify)?;
    print_report(&publish_dir(&a.dir, &url)?, a.json)
}

pub fn run_build_sysext(a: BuildSysextArgs) -> Result<()> {
    build_sysext(&SysextRequest {
        board: a.board,
        name: a.name,
        packages: a.packages,
        root: a.root,
        fs: a.fs,
        verity: a.verity,
        replace: a.replace,
        output: a.output,
        build_root: a.build_root,
    })
    .map(|_| ())
}
