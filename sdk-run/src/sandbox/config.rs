//! What a sandbox is made of (`config.json`, written once at creation) and
//! what a running one is (`state.json`, written at each start). Owns their
//! types, their strict parsing and atomic writing; not the lifecycle.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::idmap::IdMap;

/// Where a sandbox's root filesystem comes from.
///
/// ```
/// use sdk_run::sandbox::RootfsSpec;
/// use sdk_run::state::{SandboxName, StateDir};
/// let state = StateDir::at("/home/a/.local/share/sdk-run");
/// let dev = SandboxName::parse("dev")?;
/// // A directory, used in place (writable):
/// let a = RootfsSpec::Bind("/srv/rootfs".into());
/// // A base from the image store with the sandbox's own writable layer:
/// let b = RootfsSpec::overlay_for(&state.sandbox(&dev), state.image("sha256-ab12"));
/// # Ok::<(), sdk_run::exit::UsageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RootfsSpec {
    /// A directory used as the root as is. At creation a path to a rootfs
    /// tarball (tar, tar.gz, tar.zst) is accepted too: it is extracted into
    /// `sandboxes/<name>/rootfs` inside the user namespace (so ownership is
    /// real) and the stored spec is `Bind` of that directory.
    Bind(PathBuf),
    /// overlayfs mounted inside the sandbox's user namespace: `lower` is
    /// read-only (an unpacked image, shared), `upper`/`work` belong to the
    /// sandbox (created empty if missing; same filesystem).
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
}

impl RootfsSpec {
    /// An overlay over `lower` whose writable layer lives in the sandbox's
    /// directory (`upper/`, `work/`).
    pub fn overlay_for(sandbox: &crate::state::SandboxPaths, lower: PathBuf) -> RootfsSpec {
        RootfsSpec::Overlay {
            lower,
            upper: sandbox.upper(),
            work: sandbox.work(),
        }
    }

    /// The path a person would recognise (for `list`).
    pub fn describe(&self) -> String {
        match self {
            RootfsSpec::Bind(p) => p.display().to_string(),
            RootfsSpec::Overlay { lower, .. } => format!("overlay:{}", lower.display()),
        }
    }
}

/// `-v SRC:DST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Volume {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    /// Parse `SRC:DST[:ro|:rw]`: both absolute after `SRC` is made absolute
    /// by the caller; `DST` must be absolute and have no `..`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, readonly) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => {
                return Err(format!(
                    "`{s}` is not SRC:DST or SRC:DST:ro (e.g. -v ~/distfiles:/var/cache/distfiles:ro)"
                ));
            }
        };
        if src.is_empty() {
            return Err(format!("`{s}`: the source path is empty"));
        }
        let dstp = Path::new(dst);
        if !dstp.is_absolute()
            || dstp
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "`{s}`: the destination must be an absolute path inside the sandbox without `..`"
            ));
        }
        if dstp == Path::new("/") {
            return Err(format!("`{s}`: cannot mount over the sandbox's root"));
        }
        Ok(Volume {
            src: src.into(),
            dst: dst.into(),
            readonly,
        })
    }
}

/// Network namespace choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Net {
    /// Share the host's network (default).
    Host,
    /// A new, empty network namespace with only loopback.
    None,
}

/// `config.json`: fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub rootfs: RootfsSpec,
    /// The repo bound at `/mnt/host/source` (canonical host path).
    pub source: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    /// Host device nodes bound into `/dev`.
    pub devices: Vec<PathBuf>,
    pub net: Net,
    pub idmap: IdMap,
    /// What `--rootfs` said at creation (a tarball's path, or the
    /// directory), to tell a later `--rootfs` that differs.
    pub rootfs_origin: Option<PathBuf>,
    /// Environment for every command entered (e.g. an image's `[env]`);
    /// the sandbox's own variables (HOME, PATH, ...) win over these.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The host folder bound at `/build` (see
    /// [`crate::state::StateDir::build_volume`]); none for a rootfs used
    /// in place (it keeps its own /build) and for `--rm` sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_volume: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_strictly() {
        let v: Volume = "/a:/b:ro".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                src: "/a".into(),
                dst: "/b".into(),
                readonly: true
            }
        );
        assert!(!"/a:/b".parse::<Volume>().unwrap().readonly);
        for bad in [
            "/a",
            "/a:b",
            "/a:/b:rx",
            ":/b",
            "/a:/../x",
            "/a:/",
            "/a:/b:ro:x",
        ] {
            assert!(bad.parse::<Volume>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_keys() {
        let c = Config {
            name: "n".into(),
            created: 1,
            rootfs: RootfsSpec::Overlay {
                lower: "/l".into(),
                upper: "/u".into(),
                work: "/w".into(),
            },
            source: Some("/src".into()),
            volumes: vec![],
            devices: vec!["/dev/kvm".into()],
            net: Net::None,
            rootfs_origin: None,
            env: vec![("LANG".into(), "C.UTF-8".into())],
            build_volume: Some("/v/build".into()),
            idmap: IdMap::single(&crate::idmap::Caller {
                name: None,
                uid: 5,
                gid: 5,
            }),
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&j).unwrap(), c);
        let bad = j.replacen("{", "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<Config>(&bad).is_err());
    }
}
