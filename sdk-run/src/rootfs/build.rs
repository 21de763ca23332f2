//! Building an image from a rootfs manifest: the base (mmdebstrap from the
//! host's apt sources, or an archive), then files, packages and commands
//! run in a chroot, all as root inside the caller's user namespace. The
//! result is stored under the digest of the manifest's resolved inputs, so
//! a second `ensure` is a lookup. Owns the build sequence and the input
//! digest; not the formats (`oci`) nor the store layout (`store`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use super::apt_sources;
use super::import::{Ctx, in_userns, own_root_dir, progress};
use super::manifest::{Base, Manifest};
use super::store::{Image, ImageMeta, Store};
use crate::exit::UsageError;
use sdk_common::layer::{Extractor, Options, Report};
use sdk_common::oci;

/// Bumped when the build sequence changes what a manifest produces.
const BUILD_FORMAT: u32 = 1;

/// What a manifest resolves to before building: everything its output
/// depends on, in a canonical form.
#[derive(Debug, serde::Serialize)]
struct Inputs<'a> {
    format: u32,
    base: BTreeMap<&'static str, String>,
    packages: &'a [String],
    commands: &'a [String],
    env: &'a BTreeMap<String, String>,
    files: Vec<(String, Option<u32>, String)>,
    /// Each playbook and every file of its folder (roles, templates, vars).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    playbooks: Vec<(String, Vec<(String, String)>)>,
}

fn sha256_file(path: &Path) -> Result<String> {
    sdk_common::fsutil::regular_file(path)
        .and_then(|_| sdk_common::fsutil::sha256_hex(path))
        .map_err(sdk_common::error::bad_input)
        .with_context(|| path.display().to_string())
}

/// The apt sources a Debian base is bootstrapped from.
fn debian_sources(suite: &str) -> Result<String> {
    let etc_apt = std::env::var_os("SDK_RUN_APT_ETC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/apt"));
    let host = apt_sources::host_sources(&etc_apt);
    apt_sources::for_suite(&host, suite).ok_or_else(|| {
        UsageError(format!(
            "no Debian apt sources configured in {}; a `debian` base is bootstrapped from the host's mirror, so configure one (or use an oci-archive/tarball base)",
            etc_apt.display()
        ))
        .into()
    })
}

/// The store image a `base.image` names.
fn base_image(store: &Store, name: &str) -> Result<Image> {
    store
        .resolve(name)
        .map_err(sdk_common::error::classify)
        .context("base.image")
}

/// The resolved inputs and their digest (sha256 hex). `store` resolves a
/// `base.image` (to the digest it names, which its own inputs fixed).
fn resolve(m: &Manifest, store: Option<&Store>) -> Result<(String, Option<String>)> {
    let mut base = BTreeMap::new();
    let mut sources = None;
    match &m.base {
        Base::Debian { suite, variant } => {
            let s = debian_sources(suite)?;
            base.insert("debian-suite", suite.clone());
            base.insert("debian-variant", variant.clone());
            base.insert("apt-sources", s.clone());
            sources = Some(s);
        }
        Base::OciArchive(p) | Base::OciLayout(p) | Base::Tarball(p) => {
            let plan = oci::inspect(p)
                .map_err(sdk_common::error::bad_input)
                .context("base")?;
            let d = match plan.digest {
                Some(d) => d,
                None => sha256_file(p)?,
            };
            base.insert("image", d);
        }
        Base::Image(name) => {
            let store = match store {
                Some(s) => s,
                None => &Ctx::from_env()?.store,
            };
            base.insert("store-image", base_image(store, name)?.meta.digest);
        }
    }
    let mut files = Vec::new();
    for f in &m.files {
        let d = sha256_file(&f.src).map_err(|e| {
            UsageError(format!(
                "{}: files.src {}: {e:#}",
                m.origin,
                f.src.display()
            ))
        })?;
        files.push((f.dst.display().to_string(), f.mode, d));
    }
    let mut playbooks = Vec::new();
    for p in &m.playbooks {
        let bad =
            |msg: String| UsageError(format!("{}: playbooks {}: {msg}", m.origin, p.display()));
        if !p.is_file() {
            return Err(
                bad("no such file; give a playbook relative to the manifest".into()).into(),
            );
        }
        let dir = p.parent().unwrap_or(Path::new("/"));
        let mut tree = Vec::new();
        for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let e = e.map_err(|e| bad(e.to_string()))?;
            if e.file_type().is_file() {
                let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
                tree.push((rel.display().to_string(), sha256_file(e.path())?));
            }
        }
        playbooks.push((
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            tree,
        ));
    }
    let inputs = Inputs {
        format: BUILD_FORMAT,
        base,
        packages: &m.packages,
        commands: &m.commands,
        env: &m.env,
        files,
        playbooks,
    };
    let json = serde_json::to_vec(&inputs).expect("serialisable");
    Ok((hex::encode(Sha256::digest(&json)), sources))
}

/// The store digest of a manifest (its resolved inputs).
pub fn digest(m: &Manifest) -> Result<String> {
    Ok(resolve(m, None)?.0)
}

/// The image for `m`, building it first when the store lacks it.
pub fn ensure(ctx: &Ctx, m: &Manifest) -> Result<Image> {
    let (digest, sources) = resolve(m, Some(&ctx.store))?;
    if let Some(img) = ctx.store.get(&digest) {
        return Ok(img);
    }
    let lock = ctx.store.lock()?;
    // Someone may have built it while we waited for the lock.
    if let Some(img) = ctx.store.get(&digest) {
        return Ok(img);
    }
    ctx.clean_leftovers(&lock)?;
    eprintln!(
        "sdk-run: building the SDK rootfs from {} (once; later runs reuse it)",
        m.origin
    );
    let tmp = ctx.store.begin(&lock)?;
    let built = build_into(ctx, m, sources.as_deref(), &tmp);
    let report = match built {
        Ok(r) => r,
        Err(e) => {
            if let Err(c) = ctx.remove_trees(vec![tmp]) {
                return Err(e.context(format!("and removing the partial build failed: {c:#}")));
            }
            return Err(e);
        }
    };
    // On a store image, its runtime settings carry over, the manifest's
    // `env` added (a name set in both takes the manifest's value).
    let mut config = match &m.base {
        Base::Image(name) => base_image(&ctx.store, name)?.meta.config,
        _ => oci::RuntimeConfig::default(),
    };
    for (k, v) in &m.env {
        config
            .env
            .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
        config.env.push(format!("{k}={v}"));
    }
    let meta = ImageMeta::new(&digest, "manifest", &m.origin, config, report.skipped_total);
    if !ctx.store.publish(&lock, &tmp, &meta)? {
        ctx.remove_trees(vec![tmp])?;
    }
    ctx.store
        .get(&digest)
        .context("the built image vanished right after publishing")
}

fn build_into(ctx: &Ctx, m: &Manifest, sources: Option<&str>, tmp: &Path) -> Result<Report> {
    let rootfs = tmp.join("rootfs");
    let result = tmp.join("result.json");
    // mmdebstrap runs as the caller in its own user namespace and streams
    // a tar (with numeric ownership) into our extractor.
    let mut mmdebstrap = None;
    let mut stream = None;
    let mut messages = None;
    if let Base::Debian { suite, variant } = &m.base {
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--mode=unshare", "--format=tar"])
            .arg(format!("--variant={variant}"));
        if !m.packages.is_empty() {
            cmd.arg(format!("--include={}", m.packages.join(",")));
        }
        cmd.args([suite.as_str(), "-", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // mmdebstrap cleans up after itself on SIGTERM; it gets one when
        // sdk-run dies, however it dies.
        sdk_common::linux::dies_with_us(&mut cmd, libc::SIGTERM);
        tracing::info!(cmd = ?cmd, "bootstrapping");
        let mut child = cmd
            .spawn()
            .context("cannot start mmdebstrap; install it (Debian package mmdebstrap)")?;
        let mut stdin = child.stdin.take().expect("piped");
        std::io::Write::write_all(&mut stdin, sources.unwrap_or_default().as_bytes())
            .context("feeding apt sources to mmdebstrap")?;
        drop(stdin);
        stream = child.stdout.take();
        messages = Some((child.stderr.take().expect("piped"), suite.clone()));
        mmdebstrap = Some(child);
    }
    // A store image as the base: its tree is copied (never linked: the
    // commands below may change files, and the base must stay as it is).
    let parent = match &m.base {
        Base::Image(name) => Some(base_image(&ctx.store, name)?.rootfs()),
        _ => None,
    };
    let m2 = m.clone();
    // Ansible's own state (~/.ansible) for the run, not the caller's home.
    let ansible_home = tmp.join("ansible");
    let res: Result<Report> = in_userns(&ctx.map, &result, move || {
        own_root_dir(&rootfs)?;
        let mut report = Report::default();
        match &m2.base {
            Base::Debian { .. } => {
                // Threads only here, in the forked child: the parent
                // forks, so it stays single-threaded.
                let shown = messages.map(|(m, suite)| show_mmdebstrap(m, &suite));
                let s = stream.expect("spawned above");
                let mut x = Extractor::new(&rootfs, Options::tarball());
                x.apply(s).context("unpacking mmdebstrap's output")?;
                report.merge(x.report);
                if let Some(t) = shown {
                    let _ = t.join();
                }
            }
            Base::OciArchive(p) | Base::OciLayout(p) | Base::Tarball(p) => {
                let plan = oci::inspect(p)?;
                let bar = progress(plan.total_bytes(), "unpacking base");
                let (r, _) = oci::unpack(&plan, &rootfs, &*bar)?;
                report.merge(r);
            }
            Base::Image(_) => {
                let src = parent.expect("resolved above");
                // As root inside: owners, modes, links, xattrs kept.
                let st = Command::new("cp")
                    .args(["-a", "--reflink=auto", "--"])
                    .arg(src.join("."))
                    .arg(&rootfs)
                    .status()
                    .context("cannot run cp")?;
                if !st.success() {
                    bail!("copying the base image {} failed ({st})", src.display());
                }
            }
        }
        copy_files(&m2, &rootfs, &mut report)?;
        let mut commands = Vec::new();
        if !m2.packages.is_empty() && !matches!(m2.base, Base::Debian { .. }) {
            commands.push(format!(
                "apt-get update && apt-get install -y --no-install-recommends {} && apt-get clean",
                m2.packages.join(" ")
            ));
        }
        commands.extend(m2.commands.iter().cloned());
        if !commands.is_empty() || !m2.playbooks.is_empty() {
            run_in_chroot(&rootfs, &m2.env, &commands, &m2.playbooks, &ansible_home)?;
        }
        Ok(report)
    });
    if let Some(mut child) = mmdebstrap {
        let status = child.wait().context("waiting for mmdebstrap")?;
        if !status.success() {
            bail!("mmdebstrap failed ({status}); its messages are above");
        }
    }
    res
}

/// mmdebstrap's messages as progress: on a terminal a spinner shows the
/// latest (errors and warnings stay, as lines of their own), otherwise
/// each is a timestamped line.
fn show_mmdebstrap(
    messages: std::process::ChildStderr,
    suite: &str,
) -> std::thread::JoinHandle<()> {
    let what = format!("bootstrapping Debian {suite} (mmdebstrap)");
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut p = sdk_common::progress::Progress::new("sdk-run");
        p.begin(&what);
        let start = std::time::Instant::now();
        for line in std::io::BufReader::new(messages)
            .lines()
            .map_while(Result::ok)
        {
            let important = line.starts_with("E:") || line.starts_with("W:");
            if p.is_terminal() && !important {
                p.beat(&line, std::time::Duration::ZERO);
            } else {
                p.say(&format!("mmdebstrap: {line}"));
            }
        }
        p.end(&what, start.elapsed(), "");
    })
}

/// Copy the manifest's files in, through the extractor (so a `dst` under
/// a symlink stays inside the rootfs).
fn copy_files(m: &Manifest, rootfs: &Path, report: &mut Report) -> Result<()> {
    if m.files.is_empty() {
        return Ok(());
    }
    let mut b = tar::Builder::new(Vec::new());
    for f in &m.files {
        let data = std::fs::read(&f.src).with_context(|| format!("reading {}", f.src.display()))?;
        let mode = match f.mode {
            Some(m) => m,
            None => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&f.src)?.permissions().mode() & 0o7777
            }
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        let rel = f.dst.strip_prefix("/").unwrap_or(&f.dst);
        b.append_data(&mut h, rel, &data[..])
            .with_context(|| format!("files.dst {}", f.dst.display()))?;
    }
    let bytes = b.into_inner()?;
    let mut x = Extractor::new(rootfs, Options::tarball());
    x.apply(&bytes[..])?;
    report.merge(x.report);
    Ok(())
}

/// Run `commands` with `/bin/sh -c` chrooted into `rootfs`, with the host's
/// /proc, /dev and /sys bound in and its resolv.conf for network access.
/// Must run in a throwaway process (it unshares the mount namespace), as
/// root in the user namespace.
fn run_in_chroot(
    rootfs: &Path,
    env: &BTreeMap<String, String>,
    commands: &[String],
    playbooks: &[PathBuf],
    ansible_home: &Path,
) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    for d in ["proc", "dev", "sys"] {
        let target = rootfs.join(d);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(Path::new("/").join(d).as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding /{d} into the rootfs"))?;
    }
    let resolv = rootfs.join("etc/resolv.conf");
    // Only when the image has a plain file there (never follow a link).
    let had_resolv = std::fs::symlink_metadata(&resolv).ok();
    if Path::new("/etc/resolv.conf").exists() && rootfs.join("etc").is_dir() {
        if had_resolv.is_none() {
            std::fs::write(&resolv, "")?;
        }
        if std::fs::symlink_metadata(&resolv).is_ok_and(|m| m.is_file()) {
            mount(
                Some("/etc/resolv.conf"),
                &resolv,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .context("binding /etc/resolv.conf")?;
        }
    }
    let mut result = Ok(());
    for c in commands {
        tracing::info!(command = %c, "running in the new rootfs");
        // chroot(8) in a child: this process keeps the host's root (it
        // still writes its result there).
        let mut chroot = Command::new("chroot");
        sdk_common::linux::dies_with_us(&mut chroot, libc::SIGTERM);
        let status = chroot
            .arg(rootfs)
            .args(["/bin/sh", "-c", c])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .envs(env)
            .stdin(Stdio::null())
            // What commands print goes to stderr: stdout is the digest's.
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("cannot run chroot(8) for `{c}`"))?;
        if !status.success() {
            result = Err(UsageError(format!(
                "manifest command `{c}` failed ({status}); fix the manifest's `commands`"
            ))
            .into());
            break;
        }
    }
    if result.is_ok() {
        result = run_playbooks(rootfs, env, playbooks, ansible_home);
    }
    if had_resolv.is_none() && rootfs.join("etc").is_dir() {
        // Unmount (in our own mount namespace), then drop the placeholder.
        let _ = nix::mount::umount2(&resolv, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&resolv);
    }
    result
}

/// `ansible-playbook` against `rootfs` through Ansible's chroot connection
/// (community.general.chroot, shipped in Debian's `ansible`), as root
/// inside the user namespace; the inventory is the root itself.
fn run_playbooks(
    rootfs: &Path,
    env: &BTreeMap<String, String>,
    playbooks: &[PathBuf],
    ansible_home: &Path,
) -> Result<()> {
    for p in playbooks {
        // Absolute: ansible-playbook runs from the playbook's folder.
        let p = &p
            .canonicalize()
            .with_context(|| format!("cannot find the playbook {}", p.display()))?;
        tracing::info!(playbook = %p.display(), "running ansible-playbook on the new rootfs");
        std::fs::create_dir_all(ansible_home.join("tmp"))?;
        let mut cmd = Command::new("ansible-playbook");
        sdk_common::linux::dies_with_us(&mut cmd, libc::SIGTERM);
        let inventory = format!("{},", rootfs.display());
        let status = cmd
            .args(["-i", &inventory, "-c", "community.general.chroot"])
            .arg(p)
            .current_dir(p.parent().unwrap_or(Path::new("/")))
            .env("HOME", ansible_home)
            .env("ANSIBLE_HOME", ansible_home)
            .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PYTHON_INTERPRETER", "auto_silent")
            .envs(env)
            .stdin(Stdio::null())
            // Its report goes to stderr: stdout is the digest's.
            .stdout(Stdio::from(std::io::stderr()))
            .status();
        let status = match status {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(UsageError(
                    "the manifest has playbooks, but ansible-playbook is not installed; install Debian's ansible".into(),
                )
                .into());
            }
            Err(e) => return Err(e).context("cannot run ansible-playbook"),
        };
        if !status.success() {
            return Err(UsageError(format!(
                "ansible-playbook {} failed ({status}); its output is above",
                p.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Where the default SDK comes from: the embedded manifest.
pub fn default_manifest() -> Manifest {
    Manifest::default_sdk()
}
