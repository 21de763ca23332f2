//! `sdk-run` binary: logging setup, then the library; errors are printed as
//! one chain and mapped to an exit code (see `sdk_run::exit`).

fn main() {
    std::process::exit(sdk_run::cli::main());
}
