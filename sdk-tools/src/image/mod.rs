//! Image assembly: `build_image`, `build_sysext` and the OCI export/import
//! of the OS tree. Turns installed packages (or a staging root) into a GPT
//! disk image with A/B USR partitions under dm-verity and the outputs that
//! describe it. The on-disk formats themselves (verity, GPT, filesystems)
//! live in `verity`, `disk` and `fs`; this module decides what goes where.

pub mod attrs;
pub mod build;
pub mod cli;
pub mod contents;
pub mod derive;
pub mod esp;
pub mod install;
pub mod oci;
pub mod outputs;
pub mod repo;
pub mod sbom;
pub mod sysext;
pub mod tree;
pub mod usr;

/// A failed file operation, naming the operation and the path (the `Io`
/// variant of this module's error enums).
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `.map_err(io_err("create", &path))?`
pub fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> IoError + use<> {
    let path = path.to_path_buf();
    move |source| IoError { op, path, source }
}

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
}
