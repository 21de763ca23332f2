//! sdk-tools: the in-sandbox toolchain as a library (recipes, cross-roots,
//! verity, GPT, filesystem builders and an ext4 writer, image outputs) plus
//! the multi-call CLI over it. The sandbox is `sdk-run`'s; the one
//! namespace sdk-tools makes is the read-only confinement of a build
//! script (`packages::isolate`, through `sdk_common::linux`).

pub mod board;
pub mod boot;
pub mod cli;
pub use sdk_common::cmd;
pub mod exit;
pub mod formats;
pub mod image;
pub mod packages;
pub mod publish;
pub mod strict;

#[cfg(test)]
mod fuzz;

/// A failed file operation, naming the operation and the path (the `Io`
/// variant of every module's error enum).
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
