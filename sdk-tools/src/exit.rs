//! Exit codes of the tools: 0 ok, 1 the work failed (a build, a check),
//! 2 bad input (nothing was changed).

/// The work itself failed (a package build, a verification).
pub const FAILED: i32 = 1;
/// Bad input: unknown board, malformed manifest, wrong flags. Nothing changed.
pub const USAGE: i32 = 2;

/// An error that is the user's to fix: printed as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Map an error chain to the exit code it deserves.
pub fn code_for(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some())
    {
        USAGE
    } else {
        FAILED
    }
}
