//! Command line of `sdk-run` (clap derive). Parses, sets up logging, and
//! hands each verb to its module; prints errors as one `{:#}` chain.

use clap::Parser;

/// Enter a rootless, persistent SDK sandbox for the distro repo you stand in.
///
/// Examples:
///   sdk-run -t                     enter (creating if needed) the repo's sandbox
///   sdk-run -- make -C src         run one command inside and return its status
#[derive(Debug, Parser)]
#[command(name = "sdk-run", version, verbatim_doc_comment)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG also works.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub verb: Option<Verb>,
}

/// Verbs besides entering a sandbox.
#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    Import(crate::rootfs::verbs::ImportArgs),
    Images(crate::rootfs::verbs::ImagesArgs),
    Rmi(crate::rootfs::verbs::RmiArgs),
    Commit(crate::rootfs::verbs::CommitArgs),
    Build(crate::rootfs::verbs::BuildArgs),
}

fn run_verb(verb: &Verb) -> anyhow::Result<i32> {
    use crate::rootfs::verbs;
    match verb {
        Verb::Import(a) => verbs::import(a),
        Verb::Images(a) => verbs::images(a),
        Verb::Rmi(a) => verbs::rmi(a),
        Verb::Commit(a) => verbs::commit(a),
        Verb::Build(a) => verbs::build(a),
    }
}

/// Parse arguments, run, and return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let Some(verb) = &cli.verb else {
        return 0;
    };
    match run_verb(verb) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdk-run: {e:#}");
            crate::exit::code_for(&e)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
