//! Exit codes of the tools: 0 ok, 1 the work failed (a build, a check),
//! 2 bad input (nothing was changed).

/// The work itself failed (a package build, a verification).
pub const FAILED: i32 = 1;
/// Bad input: unknown board, malformed manifest, wrong flags. Nothing changed.
pub use sdk_common::error::USAGE;

pub use sdk_common::UsageError;

/// Map an error chain to the exit code it deserves.
pub fn code_for(err: &anyhow::Error) -> i32 {
    sdk_common::error::exit_code(err, FAILED)
}
