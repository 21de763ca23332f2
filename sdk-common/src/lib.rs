//! What both binaries need and neither owns: the one helper that runs
//! external tools (`cmd`), logging setup (`log`), the error and exit-code
//! convention (`error`), file helpers (`fsutil`), compressed streams
//! (`compress`), the hardened tar layer applier (`layer`) and the image
//! reader (`oci`), man pages and completions from a clap tree (`clidoc`),
//! progress lines and bars (`progress`).
//! No argument parsing, no sandbox or image logic lives here.

pub mod clidoc;
pub mod cmd;
pub mod compress;
pub mod error;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod layer;
pub mod linux;
pub mod log;
pub mod mutate;
pub mod oci;
pub mod progress;

pub use error::{UsageError, is_usage};

/// Mark `dir` as the top of unrelated trees (ext4's `T` attribute, set
/// with `chattr +T`): each directory made in it then gets inodes in a block
/// group of its own. Both binaries make and delete big trees in such
/// directories (image unpacks, image builds' staging trees), and on an
/// ext4 without a journal the inode allocator steps over every inode of a
/// group freed in the last minutes for each new one, so a tree made where
/// the previous one was just deleted took several times longer. Only a
/// hint: on other filesystems, or without `chattr`, nothing changes.
pub fn spread_subdirs(dir: &std::path::Path) {
    use cmd::CommandExt;
    if let Err(e) = std::process::Command::new("chattr")
        .arg("+T")
        .arg(dir)
        .run_capture()
    {
        tracing::debug!(dir = %dir.display(), "no ext4 spreading hint: {e}");
    }
}
