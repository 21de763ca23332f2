//! What both binaries need and neither owns: the one helper that runs
//! external tools (`cmd`), logging setup (`log`) and the error type that
//! marks a mistake as the user's to fix (`UsageError`). No CLI parsing, no
//! sandbox or image logic lives here.

pub mod cmd;
pub mod log;

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

/// An error that is the user's to fix (bad flag, unknown name, malformed
/// file): printed as one line, mapped to exit code 2 by each binary.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Whether any error in the chain is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_are_found_anywhere_in_the_chain() {
        let inner: anyhow::Result<()> = Err(UsageError("bad flag".into()).into());
        let err = inner.context("while parsing").unwrap_err();
        assert!(is_usage(&err));
        assert!(!is_usage(&anyhow::anyhow!("disk full")));
    }
}
