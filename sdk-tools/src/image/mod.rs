//! Image assembly: `build_image`, `build_sysext` and the OCI export/import
//! of the OS tree. Turns installed packages (or a staging root) into a GPT
//! disk image with A/B USR partitions under dm-verity and the outputs that
//! describe it. The on-disk formats themselves (verity, GPT, filesystems)
//! live in `verity`, `disk`, `fs` and `ext4`; this module decides what goes
//! where.

pub mod attrs;
pub mod build;
pub mod contents;
pub mod derive;
pub mod esp;
pub mod install;
pub mod live;
pub mod oci;
pub mod outputs;
pub mod overrides;
pub mod postinst;
pub mod repo;
pub mod sbom;
pub mod sysext;
pub mod tree;
pub mod usr;

pub use crate::{IoError, io_err};

/// What the outputs say about one installed package (from its metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SPDX license expression, when the package declares one.
    pub license: Option<String>,
    /// sha256 of the binary package archive.
    pub sha256: Option<String>,
    /// Runtime dependencies (package names).
    pub depends: Vec<String>,
    /// The Debian binary packages whose files it holds (binary imports).
    pub debs: Vec<crate::packages::binpkg::DebInfo>,
    /// What the .debs' maintainer scripts do that the package build did
    /// not.
    pub maintainer_scripts: crate::packages::maintscripts::Report,
}
