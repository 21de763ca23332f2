//! `build_image`: packages (or a staging root, or an OCI archive) in, a
//! GPT disk image with a verity-protected USR-A and its outputs out.
//!
//! Stages, each timed in the log: install (staging tree), usr (the USR
//! filesystem), verity (hash tree appended after it), esp (boot files),
//! disk (partition table and partitions), outputs (lists, SBOM, manifest).
//! Everything is written in a temporary directory inside the output
//! directory and published by renames (`image::outputs`), so a failed or
//! killed build leaves the previous `latest` as it was.

use sdk_common::error::bad_input;
use sdk_common::error::classify;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::attrs;
use super::contents::contents_txt;
use super::derive::{Seed, env_epoch};
use super::esp::EspInputs;
use super::install::{Source, install};
use super::live::OutputFormat;
use super::outputs::{Artifact, OutputDir, artifacts};
use super::repo::Repo;
use super::sbom;
use super::tree::Tree;
use super::usr::make_usr_only;
use crate::board::Board;
use crate::exit::UsageError;
use crate::formats::disk::{self, Layout, Role};
use crate::formats::fs::ext4;
use crate::formats::fs::{self as fsb, FsOptions, FsType, Ownership};
use crate::formats::update;
use crate::formats::verity;

/// Spare room in an ext4 USR beyond its content (percent).
const USR_SLACK_PERCENT: u64 = 10;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub board: String,
    pub group: String,
    pub replace: bool,
    /// Where `<group>-<version>-a<N>/` and `latest` go; default
    /// `<repo>/__build__/images/<board>`.
    pub output: Option<PathBuf>,
    /// A staging root to build from instead of the board's packages.
    pub root: Option<PathBuf>,
    /// An OCI archive to build from.
    pub from_oci: Option<PathBuf>,
    /// Write the OS tree as an OCI archive here instead of a disk image.
    pub oci: Option<PathBuf>,
    pub check_reproducible: bool,
    /// Cross-root parent (`/build` by default).
    pub build_root: Option<PathBuf>,
    /// Disk layout variant (`[variant.NAME]` of the layout).
    pub layout_variant: Option<String>,
    /// The ed25519 key (PKCS#8 PEM) that signs the update metadata; else
    /// the repo's development key.
    pub sign_key: Option<PathBuf>,
    /// The disk image, a netboot set or a live ISO.
    pub format: OutputFormat,
}

/// The stages of a disk image build, in order.
const DISK_STAGES: &[&str] = &[
    "install", "usr", "verity", "esp", "disk", "outputs", "publish",
];
/// The stages of a netboot set or a live ISO.
const LIVE_STAGES: &[&str] = &["install", "usr", "verity", "boot", "outputs", "publish"];
/// The stages of `--oci`.
const OCI_STAGES: &[&str] = &["install", "oci"];

/// Stage timings, shown as the build goes: each stage when it starts and
/// when it ends (a spinner on a terminal, timestamped lines otherwise; see
/// `sdk_common::progress`), and a summary at the end.
struct Stages {
    start: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
    order: &'static [&'static str],
    progress: sdk_common::progress::Progress,
}

impl Stages {
    fn new(quiet: bool, order: &'static [&'static str]) -> Stages {
        let now = Instant::now();
        let mut progress = sdk_common::progress::Progress::new("build_image");
        if quiet {
            progress = progress.quiet();
        }
        if let Some(first) = order.first() {
            progress.begin(first);
        }
        Stages {
            start: now,
            last: now,
            done: Vec::new(),
            order,
            progress,
        }
    }
    /// `stage` is done; the next one in the order starts.
    fn mark(&mut self, stage: &'static str, detail: &str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        self.done.push((stage, took));
        tracing::info!(stage, seconds = took.as_secs_f64(), "{detail}");
        self.progress.end(stage, took, detail);
        let next = self
            .order
            .iter()
            .position(|s| *s == stage)
            .and_then(|i| self.order.get(i + 1));
        if let Some(next) = next {
            self.progress.begin(next);
        }
    }
    fn summary(&self) -> String {
        let mut s = String::new();
        for (stage, d) in &self.done {
            let _ = write!(s, "{stage} {:.2}s, ", d.as_secs_f64());
        }
        let _ = write!(s, "total {:.2}s", self.start.elapsed().as_secs_f64());
        s
    }
}

/// How an artifact is hashed: its size, sha256 and blocks-sha256.
type Digest = fn(&Path) -> std::io::Result<(u64, Option<String>, Option<String>)>;

/// A finished artifact's sha256, and its data reaching the disk (before
/// the build is published), worked out on other threads while the build
/// goes on: hashing takes a core, the sync waits on the device.
/// Dropped unwaited (the build failed), it still waits for its threads.
struct Settle {
    hash: Option<std::thread::JoinHandle<std::io::Result<Artifact>>>,
    sync: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(h) = self.hash.take() {
            let _ = h.join();
        }
        if let Some(h) = self.sync.take() {
            let _ = h.join();
        }
    }
}

impl Settle {
    /// A finished file: its sha256 and its sync, on other threads.
    fn start(path: &Path) -> Settle {
        let mut s = Settle::hashing(path, |p| {
            let (size, sum) = sdk_common::fsutil::hash_file(p)?;
            Ok((size, Some(hex::encode(sum)), None))
        });
        s.start_sync();
        s
    }

    /// A finished sparse disk image: its blocks digest, holes unread.
    fn start_blocks(path: &Path) -> Settle {
        Settle::hashing(path, |p| {
            let (size, sum) = sdk_common::fsutil::blocks_sha256(p)?;
            Ok((size, None, Some(hex::encode(sum))))
        })
    }

    /// Push the file's data to the disk (once it is all written).
    fn start_sync(&mut self) {
        let p = self.path.clone();
        self.sync = Some(std::thread::spawn(move || fs::File::open(&p)?.sync_data()));
    }

    /// `digest` (size, sha256, blocks-sha256) of `path` on a thread of its own.
    fn hashing(path: &Path, digest: Digest) -> Settle {
        let p = path.to_path_buf();
        let hash = std::thread::spawn(move || {
            let (size, sha256, blocks_sha256) = digest(&p)?;
            Ok(Artifact {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size,
                sha256,
                blocks_sha256,
            })
        });
        Settle {
            hash: Some(hash),
            sync: None,
            path: path.to_path_buf(),
        }
    }

    fn wait(mut self) -> Result<Artifact> {
        let path = self.path.display().to_string();
        let (hash, sync) = (self.hash.take(), self.sync.take());
        let sum = hash
            .expect("waited once")
            .join()
            .map_err(|_| anyhow::anyhow!("hashing {path} failed"))?
            .with_context(|| format!("hash {path}"))?;
        if let Some(sync) = sync {
            sync.join()
                .map_err(|_| anyhow::anyhow!("syncing {path} failed"))?
                .with_context(|| format!("sync {path}"))?;
        }
        Ok(sum)
    }
}

/// Everything fixed before the first build (shared by the check build).
struct Plan {
    repo: Repo,
    board: Board,
    layout: Layout,
    layout_text: String,
    group: String,
    usr_fs: FsType,
    source: Source,
    /// Signs the update metadata (disk builds only).
    signing: Option<update::SignKey>,
    /// Public keys USR carries for updates: (file name, PEM text).
    trusted_keys: Vec<(String, String)>,
    /// The repo's and the board's `overrides/` trees, checked.
    overrides: super::overrides::Overrides,
    format: OutputFormat,
    /// `usr_fs` is squashfs because a netboot or ISO build implied it (the
    /// layout says ext4), not because the board asked for it.
    usr_fs_implied: bool,
}

/// The key that signs updates: `--sign-key` (or SDK_UPDATE_SIGN_KEY),
/// else the repo's development key (made once in `__build__/keys`); and
/// the public keys the OS will trust: the signing key's and every
/// `update-keys/*.pem` of the repo (how a key is rotated).
fn update_keys(
    req: &ImageRequest,
    repo: &Repo,
    cwd: &Path,
) -> Result<(update::SignKey, Vec<(String, String)>)> {
    let key = match &req.sign_key {
        Some(p) => update::load_signing_key(&absolute(cwd, p), false).map_err(classify)?,
        None => update::development_key(&repo.root.join("__build__/keys")).map_err(classify)?,
    };
    let mut trusted = vec![(format!("{}.pem", key.id()), key.public_pem())];
    for (_, k) in update::load_public_keys(&repo.root.join("update-keys")).map_err(classify)? {
        let name = format!("{}.pem", update::key_id(&k));
        if !trusted.iter().any(|(n, _)| *n == name) {
            trusted.push((name, update::public_pem(&k)));
        }
    }
    Ok((key, trusted))
}

/// The result of one build in a work directory.
struct Built {
    name: String,
    root_hash: String,
    artifacts: Vec<Artifact>,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 32
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn plan(req: &ImageRequest, cwd: &Path) -> Result<Plan> {
    let repo = Repo::find(cwd).map_err(bad_input)?;
    let board = Board::load(Some(&repo.root), &req.board).map_err(bad_input)?;
    if !valid_group(&req.group) {
        return Err(usage(format!(
            "--group {:?}: use letters, digits, - and _ (e.g. developer, production)",
            req.group
        )));
    }
    let (layout_path, layout_text) = board.read_file(&board.disk_layout).map_err(bad_input)?;
    let layout = Layout::parse(&layout_text, &layout_path, req.layout_variant.as_deref())
        .map_err(bad_input)?;
    let usr = layout.by_role(Role::UsrA).ok_or_else(|| {
        usage(format!(
            "{}: the layout has no usr-a partition (label USR-A, or `role = \"usr-a\"`); an A/B image needs usr-a and usr-b",
            layout_path.display()
        ))
    })?;
    let mut usr_fs: FsType = usr
        .fs
        .as_deref()
        .unwrap_or("ext4")
        .parse()
        .map_err(|e: fsb::FsError| usage(format!("{}: USR-A fs: {e}", layout_path.display())))?;
    // A netboot or live USR image is read whole into memory or off a
    // CD: compressed (squashfs, or erofs when the board's USR is).
    let usr_fs_implied = req.format != OutputFormat::Disk && usr_fs == FsType::Ext4;
    if usr_fs_implied {
        usr_fs = FsType::Squashfs;
    }
    if req.format != OutputFormat::Disk && req.oci.is_some() {
        return Err(usage(format!(
            "--oci writes an OCI archive, not a {} image; drop --format or --oci",
            req.format.name()
        )));
    }
    if usr_fs == FsType::Vfat {
        return Err(usage(format!(
            "{}: USR-A fs vfat cannot carry owners and modes; use ext4, erofs or squashfs",
            layout_path.display()
        )));
    }
    let source = match (&req.root, &req.from_oci) {
        (Some(dir), None) => Source::Dir(absolute(cwd, dir)),
        (None, Some(oci)) => Source::Oci(absolute(cwd, oci)),
        (None, None) => {
            let build_root = crate::packages::crossroot::build_root(req.build_root.as_deref());
            Source::Packages {
                cross: crate::packages::crossroot::CrossRoot::new(&build_root, &board.name),
                roots: vec![board.os_package.clone()],
                exclude: vec![],
            }
        }
        (Some(_), Some(_)) => {
            return Err(usage(
                "--root and --from-oci exclude each other; pick one input",
            ));
        }
    };
    // Before any output directory is made.
    source.check(&board)?;
    let board_dir = match &board.source {
        crate::board::ProfileSource::Dir(d) => Some(d.as_path()),
        crate::board::ProfileSource::Embedded => None,
    };
    let overrides = super::overrides::Overrides::load(&repo.root, board_dir).map_err(bad_input)?;
    let (signing, trusted_keys) = match req.oci {
        Some(_) => (None, Vec::new()),
        None => {
            let (k, t) = update_keys(req, &repo, cwd)?;
            (Some(k), t)
        }
    };
    Ok(Plan {
        usr_fs_implied,
        format: req.format,
        overrides,
        repo,
        board,
        layout,
        layout_text,
        group: req.group.clone(),
        usr_fs,
        source,
        signing,
        trusted_keys,
    })
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// `ID=` of the tree's os-release, the image's name prefix.
fn os_id(tree: &Tree) -> String {
    for p in [
        "usr/lib/os-release",
        "etc/os-release",
        "usr/share/factory/etc/os-release",
    ] {
        if let Ok(text) = fs::read_to_string(tree.disk_path(p)) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("ID=") {
                    let v = v.trim().trim_matches('"');
                    if !v.is_empty()
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    {
                        return v.to_string();
                    }
                }
            }
        }
    }
    "os".to_string()
}

/// Run `build_image`. Returns the published directory.
pub fn build_image(req: &ImageRequest) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("read the working directory")?;
    let plan = plan(req, &cwd)?;
    if let Some(out) = &req.oci {
        let mut stages = Stages::new(false, OCI_STAGES);
        return export_oci(&plan, &absolute(&cwd, out), &mut stages);
    }
    let out_dir = req
        .output
        .as_ref()
        .map(|o| absolute(&cwd, o))
        .unwrap_or_else(|| {
            let d = plan
                .repo
                .root
                .join("__build__/images")
                .join(&plan.board.name);
            match plan.format {
                OutputFormat::Disk => d,
                f => d.join(f.name()),
            }
        });
    let out = OutputDir::open(&out_dir).map_err(|e| match e {
        e @ super::outputs::OutputError::Busy { .. } => bad_input(e),
        other => anyhow::Error::new(other),
    })?;
    let stem = format!("{}-{}", plan.group, plan.repo.os_version);
    let attempt = out.next_attempt(&stem, req.replace).map_err(bad_input)?;
    let name = format!("{stem}-a{attempt}");
    let work = out.temp()?;
    // Everything is checked: from here on the stages show as they go.
    let order = match plan.format {
        OutputFormat::Disk => DISK_STAGES,
        _ => LIVE_STAGES,
    };
    let mut stages = Stages::new(false, order);
    let built = build_any(&plan, work.path(), attempt, &mut stages).map_err(explain_full_disk)?;
    if req.check_reproducible {
        eprintln!("build_image: --check-reproducible: building a second time to compare");
        let again = build_any(
            &plan,
            &work.path().join("check"),
            attempt,
            &mut Stages::new(true, order),
        )
        .map_err(explain_full_disk)?;
        compare(&built, &again)?;
        eprintln!(
            "build_image: reproducible: both builds gave the same {} artifacts",
            built.artifacts.len()
        );
        super::outputs::remove_any(&work.path().join("check"))?;
    }
    let dest = out
        .publish(&work.path().join("out"), &name, &stem)
        .map_err(explain_full_disk_err)?;
    stages.mark("publish", &format!("latest -> {name}"));
    eprintln!(
        "build_image: {} in {}\nbuild_image: USR-A root hash {}\nbuild_image: stages: {}",
        built.name,
        dest.display(),
        built.root_hash,
        stages.summary()
    );
    let main = match plan.format {
        OutputFormat::Disk => format!("{}.bin", built.name),
        OutputFormat::Pxe => format!("{}.ipxe", built.name),
        OutputFormat::Iso => format!("{}.iso", built.name),
    };
    println!("{}", dest.join(main).display());
    Ok(dest)
}

fn build_any(plan: &Plan, work: &Path, attempt: u32, stages: &mut Stages) -> Result<Built> {
    match plan.format {
        OutputFormat::Disk => build_once(plan, work, attempt, stages),
        _ => build_live(plan, work, attempt, stages),
    }
}

/// A netboot set or a live ISO: the disk image's install, USR and
/// verity stages and its initramfs, without the disk (see `image::live`).
fn build_live(plan: &Plan, work: &Path, attempt: u32, stages: &mut Stages) -> Result<Built> {
    use super::live;
    fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    let mut ins = install_stage(plan, work, stages)?;
    crate::boot::initramfs::check_modules(ins.tree.root(), plan.format.modules())
        .map_err(classify)
        .with_context(|| format!("--format {}", plan.format.name()))?;
    let name = format!("{}_{}_{}", ins.id, plan.group, plan.format.name());
    let out = work.join("out");
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let esp_dir = work.join("esp");
    fs::create_dir_all(&esp_dir).with_context(|| format!("create {}", esp_dir.display()))?;
    let title = format!("{} {} ({})", ins.id, plan.repo.os_version, plan.group);
    let target = crate::boot::initramfs::Target::of(&plan.board);
    let arch = target.arch.clone();
    let mut esp_job = super::esp::start(&EspInputs {
        staging_root: ins.tree.root(),
        esp_dir: &esp_dir,
        usr_hash: "",
        usr_hash_offset: 0,
        usr_a_uuid: uuid::Uuid::nil(),
        usr_b_uuid: uuid::Uuid::nil(),
        root_uuid: None,
        title: title.clone(),
        epoch: ins.epoch,
        extra_cmdline: &plan.board.kernel_cmdline,
        target,
    });
    let (slot_boot, initrd, kernel) = esp_job.slot_boot()?;
    add_slot_boot(&mut ins.tree, &slot_boot, &initrd, kernel.as_deref())?;
    let kdir = initrd
        .parent()
        .expect("the initramfs is in the kernel's folder")
        .to_path_buf();

    // Unprivileged mksquashfs (4.5) and mkfs.erofs (1.5) cannot store
    // extended attributes: an OS with file capabilities (ping) gets the
    // ext4 USR the disk image has, unless the board asked for another.
    let usr_fs = if plan.usr_fs_implied && ins.tree.below("usr").any(|(_, e)| !e.xattrs.is_empty())
    {
        eprintln!(
            "build_image: USR carries extended attributes (file capabilities), which {} made without root cannot hold: the {} image's USR is ext4",
            plan.usr_fs.name(),
            plan.format.name()
        );
        FsType::Ext4
    } else {
        plan.usr_fs
    };
    let usr_file = format!("{name}_usr.{}", usr_fs.name());
    // An ext4 USR (uncompressed) is sent compressed over the network: the
    // init unpacks it as it arrives, and dm-verity checks what it unpacked.
    let zstd_net = plan.format == OutputFormat::Pxe && usr_fs == FsType::Ext4;
    let usr_img = match plan.format {
        OutputFormat::Pxe if !zstd_net => out.join(&usr_file),
        _ => work.join(&usr_file),
    };
    let fs_size = usr_stage(usr_fs, &ins, "USR", &usr_img, work, stages)?;
    let formatted = verity::format(&usr_img, &usr_img, &verity_options(&ins.seed, fs_size))?;
    let root_hash = formatted.root_hash_hex();
    stages.mark(
        "verity",
        &format!(
            "root hash {root_hash}, tree {} KiB",
            formatted.hash_size >> 10
        ),
    );
    let base = crate::boot::esp::base_cmdline(
        &crate::boot::esp::PartRef::label("ROOT"),
        &arch,
        &plan.board.kernel_cmdline,
    );
    let detail = match plan.format {
        OutputFormat::Pxe => {
            let sent = if zstd_net {
                let z = format!("{usr_file}.zst");
                live::compress(&usr_img, &out.join(&z))?;
                z
            } else {
                usr_file.clone()
            };
            let words = live::cmdline(&base, &root_hash, fs_size, &format!("${{base}}{sent}"));
            for (from, to) in [("linux", "vmlinuz"), ("initrd", "initrd")] {
                let dst = out.join(format!("{name}.{to}"));
                fs::copy(kdir.join(from), &dst)
                    .with_context(|| format!("write {}", dst.display()))?;
            }
            let script = out.join(format!("{name}.ipxe"));
            fs::write(&script, live::ipxe_script(&title, &name, &words))
                .with_context(|| format!("write {}", script.display()))?;
            format!("{name}.ipxe, cmdline: {words}")
        }
        _ => {
            let words = live::cmdline(
                &base,
                &root_hash,
                fs_size,
                &format!("cdrom:{}", live::ISO_USR),
            );
            let kd = kdir
                .strip_prefix(&esp_dir)
                .unwrap_or(&kdir)
                .display()
                .to_string();
            let entry = esp_dir.join("loader/entries/live.conf");
            fs::write(
                &entry,
                format!("title {title}\nlinux /{kd}/linux\ninitrd /{kd}/initrd\noptions {words}\n"),
            )
            .with_context(|| format!("write {}", entry.display()))?;
            let esp_img = work.join("esp.img");
            let size = fsb::suggested_size(FsType::Vfat, &esp_dir, 10).map_err(classify)?;
            fsb::build(
                FsType::Vfat,
                &esp_dir,
                &esp_img,
                &FsOptions {
                    label: Some("SDK-LIVE".into()),
                    uuid: Some(ins.seed.uuid("esp")),
                    epoch: ins.epoch,
                    size: Some(size),
                    read_only: false,
                    ..FsOptions::default()
                },
            )
            .map_err(classify)?;
            let iso = out.join(format!("{name}.iso"));
            live::write_iso(&iso, &work.join("iso"), &esp_img, &usr_img, ins.epoch)?;
            format!("{name}.iso, cmdline: {words}")
        }
    };
    drop(esp_job);
    stages.mark("boot", &detail);

    let texts = OutputTexts {
        version: version_txt(plan, usr_fs, &ins.id, attempt, ins.epoch, &root_hash),
        verity: verity_txt(&formatted, fs_size, None),
    };
    write_outputs(plan, &ins, &name, &out, texts)?;
    let arts = artifacts(&out, &["manifest.json"], &[])?;
    write_manifest(plan, &ins, &name, attempt, &root_hash, &arts, &out)?;
    for d in [ins.tree.root().to_path_buf(), esp_dir] {
        let _ = super::outputs::remove_any(&d);
    }
    stages.mark(
        "outputs",
        &format!("{} artifacts with sha256 in manifest.json", arts.len() + 1),
    );
    Ok(Built {
        name,
        root_hash,
        artifacts: arts,
    })
}

fn compare(a: &Built, b: &Built) -> Result<()> {
    for (x, y) in a.artifacts.iter().zip(&b.artifacts) {
        if x != y {
            anyhow::bail!(
                "not reproducible: {} differs between two builds from the same inputs ({} vs {}); the inputs carry something time- or host-dependent",
                x.name,
                x.digest(),
                y.digest()
            );
        }
    }
    if a.artifacts.len() != b.artifacts.len() {
        anyhow::bail!("not reproducible: the two builds wrote different sets of files");
    }
    Ok(())
}

/// A full filesystem anywhere in the chain: our own writes fail with
/// ENOSPC (or EDQUOT), external tools with a [`CmdError`] that says so.
///
/// [`CmdError`]: sdk_common::cmd::CmdError
fn is_enospc(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }) || e
            .downcast_ref::<sdk_common::cmd::CmdError>()
            .is_some_and(sdk_common::cmd::CmdError::is_out_of_space)
            || e.downcast_ref::<fsb::FsError>()
                .is_some_and(|f| matches!(f, fsb::FsError::Tool(c) if c.is_out_of_space()))
    })
}

/// A full disk is the user's to fix: say so in one line (exit 2).
fn explain_full_disk(err: anyhow::Error) -> anyhow::Error {
    if is_enospc(&err) && err.downcast_ref::<UsageError>().is_none() {
        usage(format!(
            "out of disk space while building ({}); free space where the output goes and retry — the previous image is untouched",
            err.root_cause()
        ))
    } else {
        err
    }
}

fn explain_full_disk_err(err: super::outputs::OutputError) -> anyhow::Error {
    explain_full_disk(err.into())
}

fn export_oci(plan: &Plan, out: &Path, stages: &mut Stages) -> Result<PathBuf> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(usage(format!(
            "--oci {}: directory {} does not exist",
            out.display(),
            dir.display()
        )));
    }
    let work = tempfile::Builder::new()
        .prefix(".oci-staging-")
        .tempdir_in(dir)
        .with_context(|| format!("create a temporary directory in {}", dir.display()))?;
    let mut tree = Tree::new(&work.path().join("staging"))?;
    let packages = install(&mut tree, &plan.source, &plan.board)?;
    stages.mark(
        "install",
        &format!(
            "{} packages, {} paths",
            packages.len(),
            tree.entries().len()
        ),
    );
    let epoch = env_epoch()
        .map_err(usage)?
        .unwrap_or_else(|| tree.newest_mtime());
    let id = os_id(&tree);
    let tag = format!("{}-{}", plan.repo.os_version, plan.group);
    let digest = super::oci::export(
        &tree,
        out,
        &super::oci::ExportInfo {
            arch: &plan.board.debian_arch,
            tag: &tag,
            epoch,
            labels: vec![
                (
                    "org.opencontainers.image.version".into(),
                    plan.repo.os_version.clone(),
                ),
                ("org.opencontainers.image.title".into(), id),
                ("dev.sdk-run.board".into(), plan.board.name.clone()),
            ],
        },
    )
    .map_err(|e| explain_full_disk(e.into()))?;
    stages.mark("oci", &format!("{} ({digest})", out.display()));
    println!("{}", out.display());
    Ok(out.to_path_buf())
}

/// One complete build in `work`; the finished artifacts are in
/// `work/out`.
fn build_once(plan: &Plan, work: &Path, attempt: u32, stages: &mut Stages) -> Result<Built> {
    fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    let mut ins = install_stage(plan, work, stages)?;
    let mut layout = plan.layout.clone();
    layout.derive_uuids(&ins.seed.hex());
    let part = |role: Role| layout.by_role(role).cloned();
    let usr_a = part(Role::UsrA).expect("checked in plan");
    let name = format!("{}_{}_image", ins.id, plan.group);
    let out = work.join("out");
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    // The ESP's boot files (systemd-boot, the kernel, our initramfs) need
    // the tree only; the boot entry follows the root hash. The kernel and
    // initramfs go into USR as well, so that every slot boots its own
    // (see `boot::slotboot`).
    let esp_dir = work.join("esp");
    fs::create_dir_all(&esp_dir).with_context(|| format!("create {}", esp_dir.display()))?;
    let mut esp_job = super::esp::start(&EspInputs {
        staging_root: ins.tree.root(),
        esp_dir: &esp_dir,
        usr_hash: "",
        usr_hash_offset: 0,
        usr_a_uuid: usr_a.uuid,
        usr_b_uuid: part(Role::UsrB).map_or(uuid::Uuid::nil(), |p| p.uuid),
        root_uuid: part(Role::Root).map(|p| p.uuid),
        title: format!("{} {} ({})", ins.id, plan.repo.os_version, plan.group),
        epoch: ins.epoch,
        extra_cmdline: &plan.board.kernel_cmdline,
        target: crate::boot::initramfs::Target::of(&plan.board),
    });
    let (slot_boot, initrd, kernel) = esp_job.slot_boot()?;
    add_slot_boot(&mut ins.tree, &slot_boot, &initrd, kernel.as_deref())?;

    let usr_img = out.join(format!("{name}_update.bin"));
    let fs_size = usr_stage(plan.usr_fs, &ins, &usr_a.label, &usr_img, work, stages)?;
    let formatted = verity::format(&usr_img, &usr_img, &verity_options(&ins.seed, fs_size))?;
    check_usr_fits(&usr_a, fs_size, formatted.hash_size, &layout.source)?;
    let root_hash = formatted.root_hash_hex();
    // The update payload is final: hash it and push it to the disk while
    // the next stages run.
    let usr_done = Settle::start(&usr_img);
    stages.mark(
        "verity",
        &format!(
            "root hash {root_hash}, tree {} KiB",
            formatted.hash_size >> 10
        ),
    );

    // esp
    let esp = esp_job.finish(&root_hash, fs_size)?;
    let mut images: Vec<(u32, PathBuf)> = vec![(usr_a.number, usr_img.clone())];
    if let Some(p) = part(Role::Esp) {
        let img = work.join("esp.img");
        fsb::build(
            FsType::Vfat,
            &esp_dir,
            &img,
            &FsOptions {
                label: Some(vfat_label(&p.label)),
                uuid: Some(ins.seed.uuid("esp")),
                epoch: ins.epoch,
                size: Some(p.size),
                read_only: false,
                ..FsOptions::default()
            },
        )
        .map_err(classify)?;
        images.push((p.number, img));
    }
    stages.mark(
        "esp",
        &format!("kernel {}, cmdline: {}", esp.kernel_version, esp.cmdline),
    );
    // The staged trees are spent (the table is all the outputs read now):
    // remove them beside the rest instead of after it.
    let cleanup = {
        let dirs = [ins.tree.root().to_path_buf(), esp_dir.clone()];
        std::thread::spawn(move || {
            for d in dirs {
                let _ = super::outputs::remove_any(&d);
            }
        })
    };

    images.extend(empty_filesystems(&layout, &ins.seed, ins.epoch, work)?);
    let disk_img = out.join(format!("{name}.bin"));
    let disk_done = disk_stage(&layout, &disk_img, images, stages)?;

    // outputs
    let texts = OutputTexts {
        version: version_txt(plan, plan.usr_fs, &ins.id, attempt, ins.epoch, &root_hash),
        verity: verity_txt(&formatted, fs_size, Some(&usr_a)),
    };
    write_outputs(plan, &ins, &name, &out, texts)?;
    let known = [usr_done.wait()?, disk_done.wait()?];
    if let Some(key) = &plan.signing {
        write_update_metadata(plan, &ins, key, &known[0], &formatted, fs_size, &out, &name)?;
    }
    let arts = artifacts(&out, &["manifest.json"], &known)?;
    write_manifest(plan, &ins, &name, attempt, &root_hash, &arts, &out)?;
    let _ = cleanup.join();
    stages.mark(
        "outputs",
        &format!("{} artifacts with sha256 in manifest.json", arts.len() + 1),
    );
    Ok(Built {
        name,
        root_hash,
        artifacts: arts,
    })
}

/// `manifest.json`: what was built (the format too: `publish` files a
/// netboot set or ISO under it) and every other artifact's size and digest.
fn write_manifest(
    plan: &Plan,
    ins: &Installed,
    name: &str,
    attempt: u32,
    root_hash: &str,
    arts: &[Artifact],
    out: &Path,
) -> Result<()> {
    let manifest = serde_json::json!({
        "name": name,
        "format": plan.format.name(),
        "board": plan.board.name,
        "group": plan.group,
        "version": plan.repo.os_version,
        "attempt": attempt,
        "source-date-epoch": ins.epoch,
        "usr-root-hash": root_hash,
        "artifacts": arts,
    });
    let mpath = out.join("manifest.json");
    fs::write(
        &mpath,
        serde_json::to_vec_pretty(&manifest).context("render manifest")?,
    )
    .with_context(|| format!("write {}", mpath.display()))
}

/// The slot's own kernel and initramfs, in USR: the initramfs copied
/// from the ESP's, `boot.conf` naming them (the kernel is in USR already).
fn add_slot_boot(
    tree: &mut Tree,
    conf: &crate::boot::slotboot::SlotBoot,
    initrd: &Path,
    kernel: Option<&Path>,
) -> Result<()> {
    use crate::boot::slotboot::{CONF, INITRD, KERNEL};
    let f = fs::File::open(initrd).with_context(|| format!("open {}", initrd.display()))?;
    tree.add_file(INITRD, f, 0o644, 0, 0, "boot files", true)?;
    if let Some(k) = kernel {
        let f = fs::File::open(k).with_context(|| format!("open {}", k.display()))?;
        tree.add_file(KERNEL, f, 0o644, 0, 0, "boot files", true)?;
    }
    tree.add_file(
        CONF,
        conf.render().as_bytes(),
        0o644,
        0,
        0,
        "boot files",
        true,
    )?;
    Ok(())
}

/// What the install stage leaves for the others: the staged tree and
/// what was installed, the OS id, and the epoch and seed every
/// timestamp, UUID and salt of the image derive from.
struct Installed {
    tree: Tree,
    packages: Vec<super::PackageInfo>,
    id: String,
    epoch: u64,
    seed: Seed,
    /// What the maintainer scripts do that the build did not.
    scripts: super::postinst::ScriptListing,
}

/// install: the source's packages (or tree) into a /usr-only staging
/// tree, settled; the seed hashes everything the image depends on.
fn install_stage(plan: &Plan, work: &Path, stages: &mut Stages) -> Result<Installed> {
    let mut tree = Tree::new(&work.join("staging"))?;
    let packages = install(&mut tree, &plan.source, &plan.board)?;
    let id = os_id(&tree);
    make_usr_only(&mut tree).map_err(bad_input)?;
    // What the kernel's and base-passwd's postinst would have made.
    super::postinst::index(&mut tree, work)?;
    super::postinst::base_passwd(&mut tree)?;
    // Read while the staged files are all in place.
    let scripts = super::postinst::script_listing(&tree, &packages);
    // Local files last, over what the packages installed (the update keys
    // and agent below still win: overrides cannot replace them).
    plan.overrides
        .apply(&mut tree)
        .map_err(|e| usage(format!("{e:#}")))?;
    // The update keys the OS trusts, under dm-verity with the rest of USR.
    for (name, pem) in &plan.trusted_keys {
        tree.add_file(
            &format!("{}/{name}", update::TRUSTED_KEYS_DIR),
            pem.as_bytes(),
            0o644,
            0,
            0,
            "update keys",
            true,
        )?;
    }
    super::postinst::update_agent(&mut tree, &id, &plan.repo.os_version, &plan.board)?;
    let epoch = env_epoch()
        .map_err(usage)?
        .unwrap_or_else(|| tree.newest_mtime());
    let seed = Seed::new(
        &[
            &tree.digest(),
            plan.board.name.as_bytes(),
            plan.board.profile_sha256.as_bytes(),
            plan.layout_text.as_bytes(),
            plan.repo.os_version.as_bytes(),
            plan.group.as_bytes(),
            plan.usr_fs.name().as_bytes(),
        ],
        epoch,
    );
    tree.settle()?;
    stages.mark(
        "install",
        &format!(
            "{} packages, {} paths{}, SOURCE_DATE_EPOCH={epoch}",
            packages.len(),
            tree.entries().len(),
            if plan.overrides.is_empty() {
                String::new()
            } else {
                format!(" ({} from overrides)", plan.overrides.len())
            }
        ),
    );
    Ok(Installed {
        tree,
        packages,
        id,
        epoch,
        seed,
        scripts,
    })
}

/// usr: the /usr filesystem image at `usr_img`, padded to a 4 KiB
/// boundary where the hash tree will start; returns that size.
fn usr_stage(
    fs_type: FsType,
    ins: &Installed,
    label: &str,
    usr_img: &Path,
    work: &Path,
    stages: &mut Stages,
) -> Result<u64> {
    let usr_src = ins.tree.disk_path("usr");
    let mut usr_detail = String::new();
    let built_size = if fs_type == FsType::Ext4 {
        // Our own writer: owners, modes and times straight from the table,
        // file data copied into place in one pass (see `crate::formats::fs::ext4`).
        let uuid = ins.seed.uuid("usr");
        let f =
            fs::File::create(usr_img).with_context(|| format!("create {}", usr_img.display()))?;
        let written = ext4::write(
            &usr_nodes(&ins.tree),
            &f,
            usr_img,
            &ext4::Options {
                uuid,
                label: label.to_string(),
                epoch: ins.epoch,
                hash_seed: uuid::Uuid::new_v5(&uuid, b"ext4 hash seed"),
                read_only: true,
                slack_percent: USR_SLACK_PERCENT,
                ..ext4::Options::default()
            },
        )
        .map_err(classify)?;
        usr_detail = format!(
            ", {} inodes, {} of {} blocks used",
            written.inodes,
            written.used_blocks,
            written.size / ext4::BLOCK
        );
        written.size
    } else {
        let mut opts = FsOptions {
            label: None,
            uuid: (fs_type != FsType::Squashfs).then(|| ins.seed.uuid("usr")),
            epoch: ins.epoch,
            owner: Ownership::Root,
            read_only: true,
            // zstd at level 3: as small as mksquashfs's default gzip within
            // 3 % and 30 times faster (0.6 s against 19 s for the busybox
            // example's 183 MB on two cores); the kernel reads it natively.
            compression: (fs_type == FsType::Squashfs).then(|| "zstd:3".to_string()),
            ..FsOptions::default()
        };
        attrs::read_only_owners(
            &ins.tree,
            "usr",
            fs_type,
            &work.join("usr.pseudo"),
            &mut opts,
        )?;
        fsb::build(fs_type, &usr_src, usr_img, &opts)
            .map_err(classify)?
            .size
    };
    // The hash area starts at a data-block boundary.
    let fs_size = built_size.div_ceil(4096) * 4096;
    if fs_size != built_size {
        fs::OpenOptions::new()
            .write(true)
            .open(usr_img)
            .and_then(|f| f.set_len(fs_size))
            .with_context(|| format!("pad {}", usr_img.display()))?;
    }
    stages.mark(
        "usr",
        &format!(
            "{} {} MiB from {}{usr_detail}",
            fs_type.name(),
            fs_size >> 20,
            usr_src.display()
        ),
    );

    Ok(fs_size)
}

/// The verity parameters: salt and UUID from the seed, the tree right
/// after the filesystem.
fn verity_options(seed: &Seed, fs_size: u64) -> verity::Options {
    verity::Options {
        salt: Some(seed.salt("verity").to_vec()),
        uuid: Some(seed.uuid("verity")),
        data_blocks: Some(fs_size / 4096),
        hash_offset: fs_size,
        ..verity::Options::default()
    }
}

/// USR-A must hold the filesystem and its hash tree: one line saying how
/// much is missing and where to grow it otherwise.
fn check_usr_fits(
    usr_a: &disk::Partition,
    fs_size: u64,
    hash_size: u64,
    layout: &Path,
) -> Result<()> {
    let usr_total = fs_size + hash_size;
    if usr_total > usr_a.size {
        let short = usr_total - usr_a.size;
        return Err(usage(format!(
            "{} is {} but the USR filesystem ({}) and its verity tree ({}) need {} — {} more; grow it (and the update slot) in {}",
            usr_a.label,
            mib(usr_a.size),
            mib(fs_size),
            mib(hash_size),
            mib(usr_total),
            mib(short),
            layout.display()
        )));
    }
    Ok(())
}

/// The filesystem an otherwise empty partition gets: USR-A and the ESP
/// have their contents already; ROOT and OEM get an empty ext4 unless the
/// layout names another filesystem; read-only ones stay empty (nothing to
/// put in them).
fn empty_fs_for(p: &disk::Partition) -> Result<Option<FsType>> {
    let wanted = match (p.role, p.fs.as_deref()) {
        (Role::UsrA | Role::Esp, _) => None,
        (_, Some(f)) => Some(f),
        (Role::Root | Role::Oem, None) => Some("ext4"),
        _ => None,
    };
    let Some(f) = wanted else { return Ok(None) };
    let fs_type: FsType = f
        .parse()
        .map_err(|e: fsb::FsError| usage(format!("partition {}: {e}", p.label)))?;
    Ok((!matches!(fs_type, FsType::Erofs | FsType::Squashfs)).then_some(fs_type))
}

/// Empty filesystems for the partitions [`empty_fs_for`] names, as
/// (partition number, image) pairs.
fn empty_filesystems(
    layout: &Layout,
    seed: &Seed,
    epoch: u64,
    work: &Path,
) -> Result<Vec<(u32, PathBuf)>> {
    let empty = work.join("empty");
    fs::create_dir_all(&empty).with_context(|| format!("create {}", empty.display()))?;
    let mut images = Vec::new();
    for p in &layout.partitions {
        let Some(fs_type) =
            empty_fs_for(p).with_context(|| format!("disk layout {}", layout.source.display()))?
        else {
            continue;
        };
        let img = work.join(format!("part{}.img", p.number));
        let label = if fs_type == FsType::Vfat {
            vfat_label(&p.label)
        } else {
            p.label.clone()
        };
        fsb::build(
            fs_type,
            &empty,
            &img,
            &FsOptions {
                label: Some(label),
                uuid: Some(seed.uuid(&format!("fs-{}", p.label))),
                epoch,
                owner: Ownership::Root,
                size: Some(p.size),
                read_only: false,
                ..FsOptions::default()
            },
        )
        .map_err(classify)?;
        images.push((p.number, img));
    }
    Ok(images)
}

/// disk: the table, then the partition images copied in; the returned
/// [`Settle`] works out the disk's blocks digest (its holes, most of it,
/// are neither read nor hashed) and syncs it.
fn disk_stage(
    layout: &Layout,
    disk_img: &Path,
    mut images: Vec<(u32, PathBuf)>,
    stages: &mut Stages,
) -> Result<Settle> {
    layout.write_image(disk_img).map_err(classify)?;
    images.sort();
    let parts: Vec<(u32, &Path)> = images.iter().map(|(n, p)| (*n, p.as_path())).collect();
    drop(disk::write_partitions(disk_img, &parts).map_err(classify)?);
    let mut disk_done = Settle::start_blocks(disk_img);
    disk_done.start_sync();
    stages.mark(
        "disk",
        &format!(
            "{} MiB, {} partitions written",
            layout.size >> 20,
            images.len()
        ),
    );
    Ok(disk_done)
}

/// The two small text outputs that describe the image.
struct OutputTexts {
    version: String,
    verity: String,
}

/// `version.txt`: what was built, from what, when.
fn version_txt(
    plan: &Plan,
    usr_fs: FsType,
    id: &str,
    attempt: u32,
    epoch: u64,
    root_hash: &str,
) -> String {
    format!(
        "OS_ID={id}\nOS_VERSION={}\nSDK_VERSION={}\nBOARD={}\nARCH={}\nGROUP={}\nATTEMPT={attempt}\nBUILD_ID={}-{}-a{attempt}\nSOURCE_DATE_EPOCH={epoch}\nUSR_FS={}\nUSR_ROOT_HASH={root_hash}\n",
        plan.repo.os_version,
        plan.repo.sdk_version,
        plan.board.name,
        plan.board.arch,
        plan.group,
        plan.group,
        plan.repo.os_version,
        usr_fs.name(),
    ) + &match &plan.signing {
        Some(k) => format!(
            "UPDATE_KEY_ID={}\nUPDATE_KEY={}\n",
            k.id(),
            if k.development {
                "development"
            } else {
                "release"
            }
        ),
        None => String::new(),
    }
}

/// `<name>_verity.txt`: what `veritysetup` and an updater need.
/// (`usr_a`: the partition it is for; a netboot or ISO USR image has none.)
fn verity_txt(
    formatted: &verity::Formatted,
    fs_size: u64,
    usr_a: Option<&disk::Partition>,
) -> String {
    format!(
        "VERITY_ROOT_HASH={}\nVERITY_SALT={}\nVERITY_UUID={}\nVERITY_HASH_OFFSET={fs_size}\nVERITY_DATA_BLOCKS={}\nVERITY_DATA_BLOCK_SIZE={}\nVERITY_HASH_BLOCK_SIZE={}\nVERITY_HASH_ALGORITHM={}\n",
        formatted.root_hash_hex(),
        formatted.salt_hex(),
        formatted.uuid.map(|u| u.to_string()).unwrap_or_default(),
        formatted.data_blocks,
        formatted.data_block_size,
        formatted.hash_block_size,
        formatted.algorithm.name(),
    ) + &usr_a
        .map(|p| format!("VERITY_PARTITION={}\nVERITY_PARTUUID={}\n", p.label, p.uuid))
        .unwrap_or_default()
}

/// outputs: the text files beside the images (version, verity, package
/// and contents lists, SBOM).
/// `<name>_update.json` and its signature `<name>_update.json.sig`: what
/// an updater checks before writing a byte of the payload.
#[allow(clippy::too_many_arguments)]
fn write_update_metadata(
    plan: &Plan,
    ins: &Installed,
    key: &update::SignKey,
    payload: &Artifact,
    formatted: &verity::Formatted,
    fs_size: u64,
    out: &Path,
    name: &str,
) -> Result<()> {
    let meta = update::Metadata {
        format: 1,
        os_id: ins.id.clone(),
        version: plan.repo.os_version.clone(),
        board: plan.board.name.clone(),
        arch: plan.board.arch.clone(),
        payload: update::Payload {
            name: payload.name.clone(),
            size: payload.size,
            sha256: payload.sha256.clone().context("the payload's sha256")?,
        },
        usr: update::Usr {
            root_hash: formatted.root_hash_hex(),
            salt: formatted.salt_hex(),
            hash_offset: fs_size,
            data_blocks: formatted.data_blocks,
            data_block_size: formatted.data_block_size,
            hash_block_size: formatted.hash_block_size,
            hash_algorithm: formatted.algorithm.name().to_string(),
        },
        key_id: key.id(),
        development_key: key.development,
    };
    let bytes = meta.to_bytes();
    let path = out.join(format!("{name}_update.json"));
    fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
    let sig = update::sig_path(&path);
    fs::write(&sig, key.sign(&bytes)).with_context(|| format!("write {}", sig.display()))?;
    if key.development {
        eprintln!(
            "build_image: the update is signed with this repo's DEVELOPMENT key {} ({}); sign images you ship with --sign-key FILE",
            key.id(),
            key.path.display()
        );
    }
    Ok(())
}

fn write_outputs(
    plan: &Plan,
    ins: &Installed,
    name: &str,
    out: &Path,
    texts: OutputTexts,
) -> Result<()> {
    let packages_txt: String = ins
        .packages
        .iter()
        .map(|p| format!("{}\t{}\t{}\n", p.name, p.version, p.arch))
        .collect();
    let sbom = sbom::spdx(
        &sbom::ImageInfo {
            name,
            os_id: &ins.id,
            version: &plan.repo.os_version,
            board: &plan.board.name,
            epoch: ins.epoch,
            namespace_uuid: ins.seed.uuid("sbom"),
        },
        &ins.packages,
    );
    let scripts = &ins.scripts;
    if scripts.lines > 0 {
        eprintln!(
            "build_image: {} maintainer-script lines of {} Debian packages were not reproduced at build time: see {}",
            scripts.lines,
            scripts.packages,
            out.join(format!("{name}_maintscripts.txt")).display()
        );
    }
    let files: [(String, Vec<u8>); 6] = [
        (
            format!("{name}_maintscripts.txt"),
            scripts.text.clone().into_bytes(),
        ),
        ("version.txt".into(), texts.version.into_bytes()),
        (format!("{name}_verity.txt"), texts.verity.into_bytes()),
        (format!("{name}_packages.txt"), packages_txt.into_bytes()),
        (
            format!("{name}_contents.txt"),
            contents_txt(&ins.tree, "usr").into_bytes(),
        ),
        (
            format!("{name}_sbom.json"),
            serde_json::to_vec_pretty(&sbom).context("render the SBOM")?,
        ),
    ];
    for (file, bytes) in &files {
        let p = out.join(file);
        fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// The USR filesystem's table: `usr` of the tree as the root.
fn usr_nodes(tree: &Tree) -> Vec<ext4::Node> {
    use super::tree::Kind;
    let node = |path: String, k: &str, e: &super::tree::Entry| ext4::Node {
        path,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        content: match &e.kind {
            Kind::Dir => ext4::Content::Dir,
            Kind::File { size, .. } => ext4::Content::File {
                source: tree.disk_path(k),
                size: *size,
            },
            Kind::Symlink { target } => ext4::Content::Symlink(target.clone()),
        },
        xattrs: e.xattrs.clone(),
    };
    let mut nodes = Vec::with_capacity(tree.entries().len());
    match tree.get("usr") {
        Some(e) => nodes.push(node(String::new(), "usr", e)),
        None => nodes.push(ext4::Node {
            path: String::new(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            content: ext4::Content::Dir,
            xattrs: Default::default(),
        }),
    }
    for (k, e) in tree.below("usr") {
        nodes.push(node(k["usr/".len()..].to_string(), k, e));
    }
    nodes
}

/// A partition label as a vfat volume label (11 bytes at most).
fn vfat_label(label: &str) -> String {
    label.chars().take(11).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_layout() -> Layout {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/amd64-usr/disk-layout.toml");
        Layout::load(&path, None).unwrap()
    }

    /// The disk stage's choice of empty filesystems goes by role: the
    /// slots and the ESP are filled elsewhere, ROOT and OEM get ext4,
    /// read-only ones nothing, a bad name one clear error.
    #[test]
    fn empty_filesystems_follow_roles() {
        let layout = board_layout();
        let chosen: Vec<(String, Option<FsType>)> = layout
            .partitions
            .iter()
            .map(|p| (p.label.clone(), empty_fs_for(p).unwrap()))
            .collect();
        let get = |l: &str| chosen.iter().find(|(x, _)| x == l).unwrap().1;
        assert_eq!(get("USR-A"), None);
        assert_eq!(get("EFI-SYSTEM"), None);
        assert_eq!(get("BIOS-BOOT"), None);
        assert_eq!(get("ROOT"), Some(FsType::Ext4));
        assert_eq!(get("OEM"), Some(FsType::Ext4));
        let mut p = layout.by_role(Role::Root).unwrap().clone();
        p.fs = Some("erofs".into());
        assert_eq!(empty_fs_for(&p).unwrap(), None);
        p.fs = Some("zfs".into());
        let e = empty_fs_for(&p).unwrap_err();
        assert!(sdk_common::is_usage(&e), "{e}");
        assert!(e.to_string().starts_with("partition ROOT: "), "{e}");
        // A renamed root is still the root.
        p.fs = None;
        p.label = "data".into();
        assert_eq!(empty_fs_for(&p).unwrap(), Some(FsType::Ext4));
    }

    #[test]
    fn usr_must_hold_its_filesystem_and_tree() {
        let layout = board_layout();
        let usr_a = layout.by_role(Role::UsrA).unwrap();
        assert!(check_usr_fits(usr_a, usr_a.size - 4096, 4096, &layout.source).is_ok());
        let e = check_usr_fits(usr_a, usr_a.size, 8 << 20, &layout.source).unwrap_err();
        assert!(sdk_common::is_usage(&e));
        let msg = e.to_string();
        assert!(msg.starts_with("USR-A is 2048.0 MiB"), "{msg}");
        assert!(msg.contains("8.0 MiB more; grow it"), "{msg}");
    }

    /// The verity stage's record names what `veritysetup verify` needs,
    /// from the real tree of a small filesystem-sized file.
    #[test]
    fn verity_text_matches_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("usr.img");
        std::fs::write(&img, vec![7u8; 64 << 10]).unwrap();
        let seed = Seed::new(&[b"t"], 0);
        let formatted = verity::format(&img, &img, &verity_options(&seed, 64 << 10)).unwrap();
        let layout = board_layout();
        let text = verity_txt(&formatted, 64 << 10, layout.by_role(Role::UsrA));
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .to_string()
        };
        assert_eq!(get("VERITY_ROOT_HASH"), formatted.root_hash_hex());
        assert_eq!(get("VERITY_HASH_OFFSET"), "65536");
        assert_eq!(get("VERITY_DATA_BLOCKS"), "16");
        assert_eq!(get("VERITY_PARTITION"), "USR-A");
        assert_eq!(get("VERITY_SALT"), hex::encode(seed.salt("verity")));
    }
}
