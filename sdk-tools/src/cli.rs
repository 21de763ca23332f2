//! The multi-call command line. `argv[0]` picks the verb when the binary is
//! invoked through a link named after it; otherwise the first argument does.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, Parser, Subcommand};

pub mod boot;
pub mod disk;
pub mod fs;
pub mod image;
pub mod packages;
pub mod update;
pub mod verity;

/// Verbs reachable through a link of the same name (multi-call).
pub const MULTICALL_NAMES: &[&str] = &[
    "setup_board",
    "build_packages",
    "build_image",
    "build_sysext",
    "image_to_vm",
    "test_image",
];

/// The SDK's in-sandbox toolchain.
#[derive(Debug, Parser)]
#[command(name = "sdk-tools", version)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG also works.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the multi-call names, one a line (used by sdk-run to fill PATH).
    ListTools,
    /// dm-verity hash trees, compatible with `veritysetup format/verify`.
    #[command(subcommand)]
    Verity(verity::VerityCommand),
    /// GPT disk images: create from a layout, show, write and extract
    /// partitions.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Filesystem images from a directory (ext4, erofs, squashfs, vfat).
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// Create or update a board's cross-root (/build/<board>) and its wrappers.
    #[command(name = "setup_board")]
    SetupBoard(packages::SetupBoardArgs),
    /// Build package recipes into a board's cross-root, reusing unchanged ones.
    #[command(name = "build_packages")]
    BuildPackages(packages::BuildPackagesArgs),
    /// Build a GPT disk image with A/B USR partitions under dm-verity.
    #[command(name = "build_image")]
    BuildImage(image::BuildImageArgs),
    /// Build a systemd-sysext image from packages.
    #[command(name = "build_sysext")]
    BuildSysext(image::BuildSysextArgs),
    #[command(name = "image_to_vm")]
    ImageToVm(boot::ImageToVmArgs),
    #[command(name = "test_image")]
    TestImage(boot::TestImageArgs),
    /// Upload an output set (a build folder with its manifest) to S3.
    Publish(image::PublishArgs),
    #[command(subcommand)]
    Boot(boot::BootCmd),
    /// Signed update payloads: check metadata, its signature and the payload.
    #[command(subcommand)]
    Update(update::UpdateCmd),
    /// Print a shell completion script for sdk-tools or one of its multi-call names.
    ///
    /// Examples:
    ///   sdk-tools completions bash > ~/.local/share/bash-completion/completions/sdk-tools
    ///   sdk-tools completions bash build_image > ~/.local/share/bash-completion/completions/build_image
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// A multi-call name (build_image, ...) instead of sdk-tools.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(MULTICALL_NAMES))]
        name: Option<String>,
    },
    /// Print a man page, or write every page (`--dir`), multi-call names included.
    ///
    /// Examples:
    ///   sdk-tools man build_image | man -l -
    ///   sdk-tools man --dir /usr/local/share/man/man1
    Man {
        /// A multi-call name (build_image, ...) instead of sdk-tools.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(MULTICALL_NAMES), conflicts_with = "dir")]
        name: Option<String>,
        /// Write sdk-tools.1, a page per verb, and build_image.1 etc. into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Rewrite `build_image --x` into `sdk-tools build_image --x` when invoked
/// through a multi-call link.
pub fn normalize_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(argv0) = args.first() else {
        return args;
    };
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "sdk-update" {
        // The update agent in the OS: `sdk-update status` is
        // `sdk-tools update status`.
        args[0] = OsString::from("update");
        args.insert(0, OsString::from("sdk-tools"));
        return args;
    }
    if MULTICALL_NAMES.contains(&name.as_str()) {
        // `/usr/bin/build_image` and `build_image` both mean the verb.
        args[0] = OsString::from(&name);
        args.insert(0, OsString::from("sdk-tools"));
    }
    args
}

/// Parse, run, and return the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    // Started by the kernel as the initramfs's /init: boot the OS.
    if std::process::id() == 1
        && args.first().and_then(|a| Path::new(a).file_name()) == Some("init".as_ref())
    {
        crate::boot::init::run();
    }
    let args = normalize_args(args);
    let verb = args
        .get(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| MULTICALL_NAMES.contains(&a.as_str()) || a == "update");
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One line, as every other error: the problem, clap's tips,
            // where help is.
            let help = match verb.as_deref() {
                Some(v) if v != "update" => format!("{v} --help"),
                _ => "sdk-tools --help".to_string(),
            };
            eprintln!(
                "{}",
                sdk_common::error::clap_line(&e.render().to_string(), &help)
            );
            return crate::exit::USAGE;
        }
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::ListTools => {
            for name in MULTICALL_NAMES {
                println!("{name}");
            }
            Ok(())
        }
        Command::Verity(cmd) => verity::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Fs(cmd) => fs::run(cmd),
        Command::SetupBoard(args) => packages::setup_board(args),
        Command::BuildPackages(args) => packages::build_packages(args),
        Command::BuildImage(a) => image::run_build_image(a),
        Command::BuildSysext(a) => image::run_build_sysext(a),
        Command::ImageToVm(a) => boot::image_to_vm(a),
        Command::TestImage(a) => boot::test_image(a),
        Command::Publish(a) => image::run_publish(a),
        Command::Boot(c) => boot::boot(c),
        Command::Update(c) => update::run(c),
        Command::Completions { shell, name } => sdk_common::clidoc::print_completions(
            Cli::command(),
            shell,
            name.as_deref(),
            &mut std::io::stdout(),
        )
        .map_err(Into::into),
        Command::Man { name, dir: None } => {
            sdk_common::clidoc::print_man(Cli::command(), name.as_deref(), &mut std::io::stdout())
                .map_err(Into::into)
        }
        Command::Man { dir: Some(d), .. } => {
            sdk_common::clidoc::write_man_pages(Cli::command(), MULTICALL_NAMES, &d)
                .map(|files| {
                    for f in files {
                        println!("{}", f.display());
                    }
                })
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {}", sdk_common::error::one_line(&err));
            crate::exit::code_for(&err)
        }
    }
}

fn init_logging(verbose: u8) {
    sdk_common::log::init(verbose);
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_and_verb_is_described() {
        let missing = sdk_common::clidoc::undescribed(super::Cli::command());
        assert!(missing.is_empty(), "no --help text: {missing:#?}");
    }
}
