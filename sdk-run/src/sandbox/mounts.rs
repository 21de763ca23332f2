//! The sandbox's root: what gets mounted where, in which order. Owns the
//! [`RootPlan`] (computed on the host from the config) and [`assemble`],
//! which runs in the sandbox's init before `pivot_root`, through the
//! [`Sys`] trait so the sequence is unit-tested. It does not create
//! namespaces or users.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sandbox::config::{RootfsSpec, Volume};
use sdk_common::linux::Sys;

/// Where the repo appears inside.
pub const SOURCE_DIR: &str = "/mnt/host/source";
/// Where the sdk-tools binary and its multi-call links appear inside.
pub const TOOLS_DIR: &str = "/run/sdk-tools/bin";
/// PATH inside the sandbox.
pub const PATH: &str =
    "/run/sdk-tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes every sandbox has, bound from the host's.
const BASIC_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {errno}", path.display())]
pub struct MountError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub errno: Errno,
}

/// An agent socket bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub host: PathBuf,
    pub inside: PathBuf,
}

/// Everything the init needs to assemble the root.
#[derive(Debug, Clone)]
pub struct RootPlan {
    /// The empty directory the root is assembled on.
    pub mnt: PathBuf,
    pub rootfs: RootfsSpec,
    pub hostname: String,
    /// The repo (host path), bound at [`SOURCE_DIR`].
    pub source: Option<PathBuf>,
    /// The repo's `__build__` (resolved on the host, so a symlink to
    /// another disk works), bound at `SOURCE_DIR/__build__`.
    pub build_dir: Option<PathBuf>,
    /// The persistent folder bound at `/build`.
    pub build_volume: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    /// Host device nodes, bound at the same path.
    pub devices: Vec<PathBuf>,
    /// `gid=` for devpts, when the tty group (5) is mapped.
    pub devpts_gid: Option<u32>,
    /// The host `sdk-tools` binary and its multi-call names.
    pub tools: Option<(PathBuf, Vec<String>)>,
    /// `sdk-tools` built for other architectures (`sdk-tools-aarch64`):
    /// the init and update agent of those boards' images, bound beside it.
    pub foreign_tools: Vec<PathBuf>,
    pub sockets: Vec<Socket>,
}

struct Step<'a> {
    sys: &'a dyn Sys,
}

impl Step<'_> {
    fn at(&self, op: &'static str, path: &Path, r: Result<(), Errno>) -> Result<(), MountError> {
        r.map_err(|errno| MountError {
            op,
            path: path.to_path_buf(),
            errno,
        })
    }
    fn mkdir(&self, p: &Path) -> Result<(), MountError> {
        self.at("create directory", p, self.sys.mkdir_all(p))
    }
    fn touch(&self, p: &Path) -> Result<(), MountError> {
        if let Some(parent) = p.parent() {
            self.mkdir(parent)?;
        }
        self.at("create file", p, self.sys.touch(p))
    }
    fn bind(&self, src: &Path, dst: &Path) -> Result<(), MountError> {
        self.at(
            "bind-mount onto",
            dst,
            self.sys.mount(
                Some(src),
                dst,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
        )
    }
    fn fs(&self, fstype: &str, dst: &Path, flags: MsFlags, data: &str) -> Result<(), MountError> {
        self.at(
            "mount",
            dst,
            self.sys.mount(
                Some(Path::new(fstype)),
                dst,
                Some(fstype),
                flags,
                Some(data),
            ),
        )
    }
    fn readonly(&self, p: &Path) -> Result<(), MountError> {
        self.at("make read-only", p, self.sys.make_readonly_recursive(p))
    }
}

/// `mnt` + an absolute inside path.
fn inside(mnt: &Path, p: impl AsRef<Path>) -> PathBuf {
    mnt.join(p.as_ref().strip_prefix("/").unwrap_or(p.as_ref()))
}

/// Overlay mount options; `,` and `:` in paths would be read as
/// separators, so such paths are refused when the config is made.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// Assemble the root at `plan.mnt` and `pivot_root` into it. Runs in the
/// init, inside the new user and mount namespaces, as root there.
pub fn assemble(sys: &dyn Sys, plan: &RootPlan) -> Result<(), MountError> {
    let s = Step { sys };
    let m = &plan.mnt;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // Host mount events still reach us; ours never reach the host.
    s.at(
        "make mounts private under",
        Path::new("/"),
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None,
        ),
    )?;
    match &plan.rootfs {
        RootfsSpec::Bind(dir) => s.bind(dir, m)?,
        RootfsSpec::Overlay { lower, upper, work } => {
            // Made here, as root inside, on first start: the sandbox's /
            // (the upper directory) is root's, with no namespace of its
            // own at create.
            s.mkdir(upper)?;
            s.mkdir(work)?;
            s.fs(
                "overlay",
                m,
                MsFlags::empty(),
                &overlay_options(lower, upper, work),
            )?
        }
    }
    for d in ["proc", "dev", "sys", "tmp", "run"] {
        s.mkdir(&m.join(d))?;
    }
    s.fs(
        "proc",
        &m.join("proc"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        "",
    )?;

    populate_dev(&s, plan)?;

    // /sys from the host, read-only (a fresh sysfs needs our own netns).
    let sysdir = m.join("sys");
    s.bind(Path::new("/sys"), &sysdir)?;
    s.readonly(&sysdir)?;

    s.fs("tmpfs", &m.join("tmp"), nosuid_nodev, "mode=1777")?;
    s.fs("tmpfs", &m.join("run"), nosuid_nodev, "mode=0755")?;

    bind_in(&s, plan)?;
    let host: String = plan.hostname.chars().take(64).collect();
    s.at("set hostname", Path::new(&host), sys.sethostname(&host))?;
    s.at("pivot_root into", m, sys.pivot_root(m))
}

/// /dev: a fresh tmpfs with host nodes bound in (mknod is not allowed in
/// a user namespace), its own devpts instance, /dev/shm and the fd links.
fn populate_dev(s: &Step<'_>, plan: &RootPlan) -> Result<(), MountError> {
    let sys = s.sys;
    let m = &plan.mnt;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let dev = m.join("dev");
    s.fs(
        "tmpfs",
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME,
        "mode=0755,size=4m",
    )?;
    for d in BASIC_DEVICES {
        let p = dev.join(d);
        s.touch(&p)?;
        s.bind(&Path::new("/dev").join(d), &p)?;
    }
    for d in &plan.devices {
        let p = inside(m, d);
        s.touch(&p)?;
        s.bind(d, &p)?;
    }
    let pts = dev.join("pts");
    s.mkdir(&pts)?;
    let mut pts_opts = "newinstance,ptmxmode=0666,mode=0620".to_string();
    if let Some(gid) = plan.devpts_gid {
        pts_opts.push_str(&format!(",gid={gid}"));
    }
    s.fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        &pts_opts,
    )?;
    s.at(
        "link",
        &dev.join("ptmx"),
        sys.symlink("pts/ptmx", &dev.join("ptmx")),
    )?;
    let shm = dev.join("shm");
    s.mkdir(&shm)?;
    s.fs("tmpfs", &shm, nosuid_nodev, "mode=1777")?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        s.at(
            "link",
            &dev.join(name),
            sys.symlink(target, &dev.join(name)),
        )?;
    }

    Ok(())
}

/// What is bound in from the host: the repo (and its `__build__`), the
/// persistent `/build`, `-v` volumes, agent sockets and the tools.
fn bind_in(s: &Step<'_>, plan: &RootPlan) -> Result<(), MountError> {
    let sys = s.sys;
    let m = &plan.mnt;
    if let Some(src) = &plan.source {
        let dst = inside(m, SOURCE_DIR);
        s.mkdir(&dst)?;
        s.bind(src, &dst)?;
        if let Some(build) = &plan.build_dir {
            let dst = dst.join("__build__");
            s.mkdir(&dst)?;
            s.bind(build, &dst)?;
        }
    }
    if let Some(vol) = &plan.build_volume {
        let dst = m.join("build");
        s.mkdir(&dst)?;
        s.bind(vol, &dst)?;
    }
    for v in &plan.volumes {
        let dst = inside(m, &v.dst);
        if v.src.is_dir() {
            s.mkdir(&dst)?;
        } else {
            s.touch(&dst)?;
        }
        s.bind(&v.src, &dst)?;
        if v.readonly {
            s.readonly(&dst)?;
        }
    }
    for sock in &plan.sockets {
        let dst = inside(m, &sock.inside);
        s.touch(&dst)?;
        s.bind(&sock.host, &dst)?;
    }
    if let Some((bin, names)) = &plan.tools {
        let dir = inside(m, TOOLS_DIR);
        let dst = dir.join("sdk-tools");
        s.touch(&dst)?;
        s.bind(bin, &dst)?;
        s.readonly(&dst)?;
        for n in names {
            s.at("link", &dir.join(n), sys.symlink("sdk-tools", &dir.join(n)))?;
        }
        for bin in &plan.foreign_tools {
            let Some(name) = bin.file_name() else {
                continue;
            };
            let dst = dir.join(name);
            s.touch(&dst)?;
            s.bind(bin, &dst)?;
            s.readonly(&dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdk_common::linux::Recorder;

    fn plan(rootfs: RootfsSpec) -> RootPlan {
        RootPlan {
            mnt: "/s/mnt".into(),
            rootfs,
            hostname: "box".into(),
            source: Some("/repo".into()),
            build_dir: Some("/big/build".into()),
            build_volume: None,
            volumes: vec![Volume {
                src: "/etc/hostname".into(),
                dst: "/etc/host-name".into(),
                readonly: true,
            }],
            devices: vec!["/dev/kvm".into()],
            devpts_gid: Some(5),
            tools: Some(("/usr/bin/sdk-tools".into(), vec!["build_image".into()])),
            foreign_tools: vec!["/usr/bin/sdk-tools-aarch64".into()],
            sockets: vec![Socket {
                host: "/run/user/1/ssh".into(),
                inside: "/run/host/ssh-agent.sock".into(),
            }],
        }
    }

    fn pos(calls: &[String], needle: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {calls:#?}"))
    }

    /// A failing call stops the sequence there and names what it was
    /// doing and where (the init reports that line).
    #[test]
    fn a_failed_mount_stops_and_names_its_step() {
        let r = Recorder::default();
        r.fail_on("mount proc", Errno::EPERM);
        let e = assemble(&r, &plan(RootfsSpec::Bind("/rootfs".into()))).unwrap_err();
        assert_eq!(e.path, Path::new("/s/mnt/proc"));
        assert_eq!(e.errno, Errno::EPERM);
        assert_eq!(
            e.to_string(),
            "cannot mount /s/mnt/proc: EPERM: Operation not permitted"
        );
        let c = r.take();
        assert!(
            c.last().unwrap().starts_with("mount proc "),
            "nothing after it: {c:#?}"
        );
        let r = Recorder::default();
        r.fail_on("pivot_root", Errno::EINVAL);
        let e = assemble(&r, &plan(RootfsSpec::Bind("/rootfs".into()))).unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL);
    }

    #[test]
    fn bind_root_sequence() {
        let r = Recorder::default();
        assemble(&r, &plan(RootfsSpec::Bind("/rootfs".into()))).unwrap();
        let c = r.take();
        assert_eq!(c[0], "mount - / - MS_REC|MS_SLAVE -");
        assert_eq!(c[1], "mount /rootfs /s/mnt - MS_BIND|MS_REC -");
        assert_eq!(c.last().unwrap(), "pivot_root /s/mnt");
        assert_eq!(c[c.len() - 2], "sethostname box");
        // /dev is a fresh tmpfs before anything is bound into it.
        assert!(pos(&c, "mount tmpfs /s/mnt/dev ") < pos(&c, "mount /dev/null /s/mnt/dev/null"));
        assert!(pos(&c, "mount tmpfs /s/mnt/dev ") < pos(&c, "mount /dev/kvm /s/mnt/dev/kvm"));
        assert!(c.contains(&"mount devpts /s/mnt/dev/pts devpts MS_NOSUID|MS_NOEXEC newinstance,ptmxmode=0666,mode=0620,gid=5".to_string()));
        assert!(c.contains(&"symlink pts/ptmx /s/mnt/dev/ptmx".to_string()));
        // /sys is read-only right after it is bound.
        let sys = pos(&c, "mount /sys /s/mnt/sys");
        assert_eq!(c[sys + 1], "readonly /s/mnt/sys");
        // The repo before its __build__, which lands on top of it.
        assert!(
            pos(&c, "mount /repo /s/mnt/mnt/host/source ")
                < pos(&c, "mount /big/build /s/mnt/mnt/host/source/__build__")
        );
        let v = pos(&c, "mount /etc/hostname /s/mnt/etc/host-name");
        assert_eq!(c[v - 1], "touch /s/mnt/etc/host-name");
        assert_eq!(c[v + 1], "readonly /s/mnt/etc/host-name");
        let t = pos(
            &c,
            "mount /usr/bin/sdk-tools /s/mnt/run/sdk-tools/bin/sdk-tools",
        );
        assert_eq!(c[t + 1], "readonly /s/mnt/run/sdk-tools/bin/sdk-tools");
        assert!(c.contains(&"symlink sdk-tools /s/mnt/run/sdk-tools/bin/build_image".to_string()));
        // The aarch64 build beside it, read-only too: arm64 images' init.
        let f = pos(
            &c,
            "mount /usr/bin/sdk-tools-aarch64 /s/mnt/run/sdk-tools/bin/sdk-tools-aarch64",
        );
        assert_eq!(
            c[f + 1],
            "readonly /s/mnt/run/sdk-tools/bin/sdk-tools-aarch64"
        );
        assert!(pos(&c, "mount tmpfs /s/mnt/run ") < t);
        assert!(pos(&c, "mount proc /s/mnt/proc proc") < pos(&c, "pivot_root"));
    }

    #[test]
    fn overlay_root_and_no_tty_group() {
        let r = Recorder::default();
        let mut p = plan(RootfsSpec::Overlay {
            lower: "/img".into(),
            upper: "/s/upper".into(),
            work: "/s/work".into(),
        });
        p.devpts_gid = None;
        assemble(&r, &p).unwrap();
        let c = r.take();
        assert_eq!(c[1..3], ["mkdir /s/upper", "mkdir /s/work"]);
        assert_eq!(
            c[3],
            "mount overlay /s/mnt overlay 0 lowerdir=/img,upperdir=/s/upper,workdir=/s/work,userxattr"
        );
        assert!(c.contains(&"mount devpts /s/mnt/dev/pts devpts MS_NOSUID|MS_NOEXEC newinstance,ptmxmode=0666,mode=0620".to_string()));
    }
}
