//! `sdk-tools` multi-call binary. Called as `sdk-tools VERB ...` or through a
//! link named after the verb (`build_packages`, `build_image`, ...), which is
//! how the sandbox puts the tools on PATH.

fn main() {
    std::process::exit(sdk_tools::cli::main(std::env::args_os().collect()));
}
