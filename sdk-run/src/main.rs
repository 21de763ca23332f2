//! `sdk-run` binary: logging setup, then the library; errors are printed as
//! one chain and mapped to an exit code (see `sdk_run::exit`).
//!
//! `no_main`: entering a sandbox is the hot path, and Rust's runtime setup
//! (reading /proc/self/maps for the main thread's stack guard, an
//! alternate signal stack) costs more than the rest of `sdk-run -- true`
//! in user space. Without it SIGPIPE keeps its default action, as in any C
//! tool: `sdk-run list | head -1` ends quietly.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    // std reads the arguments itself on glibc (std::env::args_os).
    let code = sdk_run::cli::main();
    // Flush stdout like returning from a Rust main would.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}
