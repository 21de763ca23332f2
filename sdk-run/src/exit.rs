//! Exit codes are an interface. The inner command's status passes through
//! unchanged; sdk-run's own failures use codes a script can tell apart.

/// Bad input: a malformed flag, unknown sandbox, missing path. Nothing changed.
pub use sdk_common::error::USAGE;
/// sdk-run itself failed (a syscall, a helper tool) after input was accepted.
pub const FAILURE: i32 = 125;
/// The command inside could not be executed (like `env`, `docker run`).
pub const CANNOT_EXEC: i32 = 126;
/// The command inside was not found.
pub const NOT_FOUND: i32 = 127;

pub use sdk_common::UsageError;

/// Map an error chain to the exit code it deserves.
pub fn code_for(err: &anyhow::Error) -> i32 {
    sdk_common::error::exit_code(err, FAILURE)
}
