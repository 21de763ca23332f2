//! The default verb, `sdk-run [-t] [-n NAME] ... [-- CMD]`: enter the
//! named sandbox, starting it if its init is gone and creating it if it does
//! not exist. A running sandbox is entered without taking the lock; create
//! and start happen under it, so concurrent calls make one sandbox.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::exit::UsageError;
use crate::idmap::{Caller, IdMap, SubIdFiles};
use crate::sandbox::config::{Config, Net, Volume};
use crate::sandbox::create::{self, Request};
use crate::sandbox::enter::{self, EnterOptions};
use crate::sandbox::{remove, start};
use crate::state::StateDir;
use crate::state::{SandboxName, SandboxPaths, State, is_running, lock, read_json, read_state};
use crate::version::{self, VersionFile};

/// Options of the default verb (see `cli::RunArgs`).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub tty: bool,
    pub name: Option<String>,
    /// `-u`; `None`: the image's `User`, else `sdk`.
    pub user: Option<String>,
    pub volumes: Vec<Volume>,
    pub devices: Vec<PathBuf>,
    pub rootfs: Option<PathBuf>,
    /// `--image TAG|DIGEST`: a store image for a new sandbox.
    pub image: Option<String>,
    /// Use `rootfs` (a directory) as the read-only lower layer of an overlay.
    pub overlay: bool,
    pub net: Option<Net>,
    pub rm: bool,
    /// `-e NAME[=VALUE]`.
    pub env: Vec<enter::EnvArg>,
    pub command: Vec<OsString>,
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// Where the caller stands: the sandbox name, the repo to bind, and the
/// store image the repo names for new sandboxes (`sdk-image`).
#[derive(Debug)]
struct Place {
    name: SandboxName,
    repo: PathBuf,
    repo_image: Option<String>,
}

/// The sandbox name and the repo to bind.
fn name_and_repo(opts: &RunOptions, cwd: &Path) -> anyhow::Result<Place> {
    let repo = version::find_repo(cwd);
    let file = repo
        .as_ref()
        .map(|r| VersionFile::load(&r.join(version::FILE_NAME)))
        .transpose()
        .map_err(sdk_common::error::bad_input)?;
    let repo_image = file.as_ref().and_then(|f| f.sdk_image.clone());
    let name = match (&opts.name, &file) {
        (Some(n), _) => n.clone(),
        (None, Some(f)) => f.sandbox_name(),
        (None, None) => {
            return Err(usage(format!(
                "no {} in {} or above; cd into a distro repo, or name the sandbox with -n NAME",
                version::FILE_NAME,
                cwd.display()
            )));
        }
    };
    let name = if opts.rm && opts.name.is_none() {
        format!("{name}-tmp{}", std::process::id())
    } else {
        name
    };
    let name = SandboxName::parse(&name)?;
    Ok(Place {
        name,
        repo: repo.unwrap_or_else(|| cwd.to_path_buf()),
        repo_image,
    })
}

/// A sandbox named after a repo's versions belongs to the repo it was
/// made in. Another repo with the same `sdk-version` and `os-version`
/// derives the same name: refuse rather than enter the first repo's
/// sandbox with the wrong source bound. A name given with `-n` is the
/// caller's choice and is entered from anywhere.
fn check_source(
    name: &str,
    named: bool,
    repo: &Path,
    recorded: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(recorded) = recorded.filter(|_| !named) else {
        return Ok(());
    };
    if recorded == repo {
        return Ok(());
    }
    let here = std::fs::canonicalize(repo).unwrap_or_else(|_| repo.to_path_buf());
    if recorded == here {
        return Ok(());
    }
    Err(usage(format!(
        "sandbox {name} belongs to the repo at {} and this is {}: both have the same sdk-version and os-version; work in that one from there, or give this repo its own sandbox with -n NAME",
        recorded.display(),
        here.display()
    )))
}

/// `--image` (or the repo's `sdk-image` for a sandbox made here): the store
/// image's unpacked tree, checked before anything changes.
fn resolve_image(state_dir: &StateDir, name: &str) -> anyhow::Result<PathBuf> {
    let store = crate::rootfs::store::Store::new(state_dir.images());
    let img = store.resolve(name).map_err(sdk_common::error::classify)?;
    Ok(img.rootfs())
}

/// A sandbox keeps the mounts, devices, rootfs and network it was created
/// with; asking for others is an error rather than silently ignored.
fn check_matches(
    cfg: &Config,
    volumes: &[Volume],
    devices: &[PathBuf],
    rootfs: Option<&Path>,
    net: Option<Net>,
) -> anyhow::Result<()> {
    let mut diff = Vec::new();
    if !volumes.is_empty() && volumes != cfg.volumes.as_slice() {
        diff.push("-v");
    }
    if devices.iter().any(|d| !cfg.devices.contains(d)) {
        diff.push("--device");
    }
    if rootfs.is_some() && rootfs != cfg.rootfs_origin.as_deref() {
        diff.push("--rootfs");
    }
    if net.is_some_and(|n| n != cfg.net) {
        diff.push("--net");
    }
    if diff.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "sandbox {n} exists with other {}; enter it without them, remove it with `sdk-run rm -f {n}` (its /build is kept), or pick another name with -n",
        diff.join(", "),
        n = cfg.name
    )))
}

/// User namespaces disabled by sysctl: say so before changing anything.
fn check_userns() -> anyhow::Result<()> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err(usage(
            "user namespaces are disabled (user.max_user_namespaces = 0); enable them with `sysctl -w user.max_user_namespaces=15000`".into(),
        ));
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0")
        && !nix::unistd::geteuid().is_root()
    {
        return Err(usage(
            "unprivileged user namespaces are disabled; enable them with `sysctl -w kernel.unprivileged_userns_clone=1`".into(),
        ));
    }
    Ok(())
}

pub fn run(opts: RunOptions) -> anyhow::Result<i32> {
    let state_dir = StateDir::from_env()?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let Place {
        name,
        repo,
        repo_image,
    } = name_and_repo(&opts, &cwd)?;
    let sb = state_dir.sandbox(&name);
    let eo = EnterOptions {
        user: opts.user.clone(),
        tty: opts.tty,
        command: opts.command.clone(),
        cwd: cwd.clone(),
        name: name.to_string(),
        env: opts.env.clone(),
    };
    let asks = !opts.volumes.is_empty()
        || !opts.devices.is_empty()
        || opts.rootfs.is_some()
        || opts.image.is_some()
        || opts.net.is_some();

    // Hot path: running, nothing to check but whose repo it is.
    if !opts.rm
        && !asks
        && let Some(st) = read_state(&sb).filter(is_running)
    {
        check_source(
            name.as_str(),
            opts.name.is_some(),
            &repo,
            st.source.as_deref(),
        )?;
        warn_if_tools_replaced(name.as_str(), &st);
        return enter::enter(&st, &eo);
    }

    // Off the hot path: logging for the work below (the fast argument
    // path skipped it).
    sdk_common::log::init(0);
    let Checked {
        volumes,
        devices,
        rootfs,
        image,
        spec,
    } = check_request(&opts, &cwd, &state_dir, &sb, &name, repo_image.as_deref())?;
    check_userns()?;

    let st = {
        let _lock = lock::lock(&sb)?;
        match read_state(&sb).filter(is_running) {
            Some(st) => st,
            None => {
                let create = NewSandbox {
                    name: &name,
                    spec: spec.as_ref(),
                    rootfs_origin: rootfs.as_ref().map(|r| r.1.clone()).or(image.clone()),
                    repo: &repo,
                    volumes: &volumes,
                    devices: &devices,
                    net: opts.net.unwrap_or(Net::Host),
                    keep_build: !opts.rm,
                };
                create_and_start(&state_dir, &sb, &create)?
            }
        }
    };

    if !opts.rm {
        warn_if_tools_replaced(name.as_str(), &st);
        return enter::enter(&st, &eo);
    }
    // --rm: enter from a child (entering moves us into the sandbox's mount
    // namespace), then remove the sandbox from here.
    let status = enter_in_child(&st, &eo)?;
    remove::remove(&state_dir, &sb)?;
    Ok(enter::pass_through(status))
}

/// What a run asks for, checked before anything changes.
struct Checked {
    volumes: Vec<Volume>,
    devices: Vec<PathBuf>,
    /// `--rootfs`: the spec it makes and the path as resolved.
    rootfs: Option<(crate::sandbox::RootfsSpec, PathBuf)>,
    /// The store image's tree (`--image`, or the repo's for a new sandbox).
    image: Option<PathBuf>,
    /// The rootfs of a sandbox made now (None: it exists).
    spec: Option<crate::sandbox::RootfsSpec>,
}

/// Validate everything a run asks for before any change: binds, devices,
/// the rootfs or image, and that an existing sandbox was made with them.
fn check_request(
    opts: &RunOptions,
    cwd: &Path,
    state_dir: &StateDir,
    sb: &crate::state::SandboxPaths,
    name: &SandboxName,
    repo_image: Option<&str>,
) -> anyhow::Result<Checked> {
    let volumes = create::resolve_volumes(cwd, &opts.volumes)?;
    let devices = create::resolve_devices(&opts.devices)?;
    let rootfs = opts
        .rootfs
        .as_deref()
        .map(|p| create::resolve_rootfs(cwd, p))
        .transpose()?;
    let exists = sb.config().is_file();
    // A store image: asked for, or the repo's for a sandbox made now.
    let image = match (&opts.image, repo_image) {
        (Some(i), _) => Some(resolve_image(state_dir, i)?),
        (None, Some(i)) if !exists && rootfs.is_none() => Some(
            resolve_image(state_dir, i)
                .with_context(|| format!("sdk-image in {}", version::FILE_NAME))?,
        ),
        _ => None,
    };
    if exists && opts.rm {
        return Err(usage(format!(
            "sandbox {name} already exists; --rm makes a throwaway sandbox, so pick an unused name with -n"
        )));
    }
    if exists {
        let cfg: Config = read_json(&sb.config())?;
        if let Some(repo) = version::find_repo(cwd) {
            check_source(
                name.as_str(),
                opts.name.is_some(),
                &repo,
                cfg.source.as_deref(),
            )?;
        }
        check_matches(
            &cfg,
            &volumes,
            &devices,
            rootfs
                .as_ref()
                .map(|r| r.1.as_path())
                .or(image.as_deref().filter(|_| opts.image.is_some())),
            opts.net,
        )?;
    }
    let spec = match &rootfs {
        Some((_, dir)) if opts.overlay => {
            if !dir.is_dir() {
                return Err(usage(format!(
                    "--overlay needs --rootfs to be a directory, not {}; unpack it first",
                    dir.display()
                )));
            }
            Some(crate::sandbox::RootfsSpec::overlay_for(sb, dir.clone()))
        }
        Some((spec, _)) => Some(spec.clone()),
        None if exists => None,
        None if image.is_some() => image
            .clone()
            .map(|lower| crate::sandbox::RootfsSpec::overlay_for(sb, lower)),
        None => Some(create::default_rootfs(state_dir, sb)?.ok_or_else(|| {
            usage(format!(
                "sandbox {name} does not exist and there is no default SDK rootfs yet; create it with --rootfs DIR|TARBALL"
            ))
        })?),
    };
    Ok(Checked {
        volumes,
        devices,
        rootfs,
        image,
        spec,
    })
}

/// What a sandbox that does not exist yet is created with.
struct NewSandbox<'a> {
    name: &'a SandboxName,
    spec: Option<&'a crate::sandbox::RootfsSpec>,
    rootfs_origin: Option<PathBuf>,
    repo: &'a Path,
    volumes: &'a [Volume],
    devices: &'a [PathBuf],
    net: Net,
    /// Bind the persistent `/build` volume (not for `--rm`).
    keep_build: bool,
}

/// Under the sandbox lock: create the sandbox if it has no config yet,
/// then start its init and record it. A failed create leaves nothing
/// behind.
fn create_and_start(
    state_dir: &StateDir,
    sb: &SandboxPaths,
    new: &NewSandbox<'_>,
) -> anyhow::Result<State> {
    let fresh = !sb.config().is_file();
    let result = (|| {
        let cfg: Config = if fresh {
            let caller = Caller::current();
            let (map, warning) = IdMap::for_caller(&SubIdFiles::default(), &caller)?;
            if let Some(w) = warning {
                eprintln!("{w}");
            }
            if caller.uid == 0 {
                eprintln!(
                    "sdk-run: note: as root, the sandboxes and images are root's own ({}); inside, you are sdk (uid 1000), which is the host's root on the repo and -v binds, and root inside is a subordinate id without power over the host; run sdk-run as your own user to share nothing with root",
                    state_dir.root().display()
                );
            }
            let mut devs = new.devices.to_vec();
            for d in create::default_devices() {
                if !devs.contains(&d) {
                    devs.push(d);
                }
            }
            let req = Request {
                name: new.name.to_string(),
                rootfs: new.spec.cloned(),
                rootfs_origin: new.rootfs_origin.clone(),
                source: Some(std::fs::canonicalize(new.repo).unwrap_or(new.repo.to_path_buf())),
                volumes: new.volumes.to_vec(),
                devices: devs,
                net: new.net,
                env: Vec::new(),
                build_volume: new.keep_build.then(|| state_dir.build_volume(new.name)),
            };
            // Checked as existing, gone under the lock: another command
            // removed it meanwhile. Never made again from something else.
            let spec = new.spec.cloned().ok_or_else(|| {
                usage(format!(
                    "sandbox {} was removed while this command was starting it; run the command again to make it anew",
                    new.name
                ))
            })?;
            create::create(sb, &req, spec, map)?
        } else {
            read_json(&sb.config())?
        };
        let (st, commit) = start::start(sb, &cfg)?;
        start::record(sb, &st, commit)?;
        Ok::<_, anyhow::Error>(st)
    })();
    match result {
        Err(e) if fresh => {
            if let Err(e2) = remove::remove_locked(state_dir, sb) {
                eprintln!(
                    "sdk-run: warning: removing the half-made sandbox {} failed too: {e2:#}; `sdk-run prune` retries",
                    new.name
                );
            }
            Err(e)
        }
        r => r,
    }
}

fn enter_in_child(
    st: &crate::state::State,
    eo: &EnterOptions,
) -> anyhow::Result<nix::sys::wait::WaitStatus> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
    match sdk_common::linux::fork()? {
        nix::unistd::ForkResult::Child => {
            drop(sfd);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
            let code = match enter::enter(st, eo) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sdk-run: error: {e:#}");
                    crate::exit::code_for(&e)
                }
            };
            // SAFETY: leave without the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => enter::wait_relaying(&sfd, child),
    }
}

/// A running sandbox keeps the sdk-tools it started with (the file is
/// bind-mounted: a replaced file's old inode stays): say so in one line
/// when the host's has been replaced since. One stat.
fn warn_if_tools_replaced(name: &str, st: &State) {
    if let Some(then) = &st.tools
        && super::start::current_tools_key().as_ref() != Some(then)
    {
        eprintln!(
            "sdk-run: warning: sdk-tools was replaced since sandbox {name} started; it still runs the old one until `sdk-run stop {name}`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            name: "box".into(),
            created: 0,
            rootfs: crate::sandbox::RootfsSpec::Bind("/r".into()),
            source: None,
            volumes: vec!["/a:/b".parse().unwrap()],
            devices: vec!["/dev/kvm".into()],
            net: Net::Host,
            idmap: IdMap::single(&Caller {
                name: None,
                uid: 1,
                gid: 1,
            }),
            rootfs_origin: Some("/r.tar".into()),
            env: vec![],
            build_volume: None,
        }
    }

    #[test]
    fn same_or_no_settings_match() {
        let c = cfg();
        assert!(check_matches(&c, &[], &[], None, None).is_ok());
        assert!(
            check_matches(
                &c,
                &c.volumes,
                &c.devices,
                Some(Path::new("/r.tar")),
                Some(Net::Host)
            )
            .is_ok()
        );
    }

    #[test]
    fn other_settings_are_a_usage_error_naming_them() {
        let c = cfg();
        let e = check_matches(
            &c,
            &["/x:/y".parse().unwrap()],
            &["/dev/fuse".into()],
            Some(Path::new("/other")),
            Some(Net::None),
        )
        .unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        let m = e.to_string();
        assert!(m.contains("-v, --device, --rootfs, --net"), "{m}");
    }

    #[test]
    fn name_comes_from_the_version_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(version::FILE_NAME),
            "sdk-version = \"1.2\"\nos-version = \"3.4\"\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let o = RunOptions::default();
        let p = name_and_repo(&o, &d.path().join("sub")).unwrap();
        assert_eq!(
            (p.name.as_str(), p.repo.as_path()),
            ("sdk-1.2_os-3.4", d.path())
        );
        assert_eq!(p.repo_image, None);
        let e = name_and_repo(&o, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("-n NAME"));
    }
}
