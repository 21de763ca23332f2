//! The `setup_board` and `build_packages` verbs: argument parsing and
//! output. The work is in the other `packages` modules.

use sdk_common::error::bad_input;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::board::Board;
use crate::exit::UsageError;
use crate::packages::build::{self, Action, Options, Outcome};
use crate::packages::crossroot::{self, CrossRoot};

/// The version file that marks a distro repo's root.
pub const VERSION_FILE: &str = "sdk-version.toml";

/// The distro repo: `--repo`, else the nearest directory at or above the
/// working directory with `sdk-version.toml`, else one with `packages/`.
pub fn find_repo(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    for marker in [VERSION_FILE, "packages"] {
        if let Some(dir) = cwd.ancestors().find(|d| d.join(marker).exists()) {
            return Ok(dir.to_path_buf());
        }
    }
    Ok(cwd)
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  setup_board --board arm64-usr          create /build/arm64-usr (or update its wrappers)
  setup_board --board amd64-usr --force  start over with an empty cross-root
  SDK_BUILD_ROOT=$PWD/build setup_board --board amd64-usr   outside the SDK

Creates the board's cross-root (sysroot layout, package database, binary
package directory) and the wrappers amd64-usr-cc, amd64-usr-c++,
amd64-usr-ar and pkg-config-amd64-usr in <build-root>/bin.")]
pub struct SetupBoardArgs {
    /// Board to set up (a profile in the repo's profiles/ or a shipped one).
    #[arg(long)]
    pub board: String,
    /// Remove the cross-root first (its installed packages and binary
    /// packages go too).
    #[arg(long)]
    pub force: bool,
    /// Where cross-roots live.
    #[arg(long, env = "SDK_BUILD_ROOT", default_value = crossroot::DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    /// The distro repo (default: found from the working directory).
    #[arg(long, env = "SDK_REPO")]
    pub repo: Option<PathBuf>,
}

pub fn setup_board(args: SetupBoardArgs) -> Result<()> {
    let repo = find_repo(args.repo.as_deref())?;
    let board = Board::load(Some(&repo), &args.board).map_err(bad_input)?;
    let cross = CrossRoot::new(&args.build_root, &board.name);
    let fresh = cross.setup(&board, args.force)?;
    println!(
        "{} {} for {} ({}); wrappers in {}",
        if fresh { "created" } else { "up to date:" },
        cross.root.display(),
        board.name,
        board.target,
        cross.wrappers_dir().display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  build_packages --board amd64-usr                 everything the OS meta-package needs
  build_packages --board arm64-usr demo-apps/greet  one package and what it needs
  build_packages --board amd64-usr -j4 --keep-going
  build_packages --board amd64-usr --pretend --json what would happen, with input hashes

Packages whose inputs (recipe files, sources, board, toolchain, dependencies)
are unchanged are not rebuilt: an installed one is up to date, a binary
package with the same input hash is installed from the cache. Each build's
log is in <build-root>/<board>/var/log/sdk/<category>/<name>.log.")]
pub struct BuildPackagesArgs {
    /// Board to build for.
    #[arg(long)]
    pub board: String,
    /// Packages to build (`category/name`, or `name` when unique); default:
    /// the board's OS meta-package.
    pub packages: Vec<String>,
    /// Builds to run at once (default: the number of CPUs). Also passed to
    /// build scripts as JOBS.
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// After a failure, still build what does not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Only print what would be done.
    #[arg(short = 'p', long)]
    pub pretend: bool,
    /// Machine-readable output (with --pretend: the plan; else: the report).
    #[arg(long)]
    pub json: bool,
    /// Where cross-roots live.
    #[arg(long, env = "SDK_BUILD_ROOT", default_value = crossroot::DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    /// The distro repo (default: found from the working directory).
    #[arg(long, env = "SDK_REPO")]
    pub repo: Option<PathBuf>,
}

pub fn build_packages(args: BuildPackagesArgs) -> Result<()> {
    let jobs = match args.jobs {
        Some(0) => return Err(UsageError("-j must be at least 1".into()).into()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let opts = Options {
        repo: find_repo(args.repo.as_deref())?,
        build_root: args.build_root,
        board: args.board,
        packages: args.packages,
        jobs,
        keep_going: args.keep_going,
    };
    if args.pretend {
        let plan = build::pretend(&opts)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan.packages)?);
        } else {
            for p in &plan.packages {
                let what = match p.action {
                    Action::UpToDate => "up to date",
                    Action::Install => "install from cache",
                    Action::Build => "build",
                };
                let from = if p.tree == "." {
                    String::new()
                } else {
                    format!(" from {}", p.tree)
                };
                println!(
                    "{:<20} {} {} ({}){from}",
                    what,
                    p.name,
                    p.version,
                    &p.input_hash[..16]
                );
            }
        }
        return Ok(());
    }
    let report = build::run(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let total = report.packages.len();
        let up = report.count(&Outcome::UpToDate);
        if up == total {
            println!(
                "nothing to build: all {total} packages for {} are up to date",
                report.board
            );
        } else {
            for (label, o) in [
                ("built", Outcome::Built),
                ("installed from cache", Outcome::Cached),
                ("failed", Outcome::Failed),
                (
                    "skipped (a dependency failed or the run stopped)",
                    Outcome::Skipped,
                ),
            ] {
                let names = report.names(&o);
                if !names.is_empty() {
                    println!("{label}: {}", names.join(" "));
                }
            }
            println!(
                "{}: {} built, {} from cache, {up} up to date, {} failed, {} skipped",
                report.board,
                report.count(&Outcome::Built),
                report.count(&Outcome::Cached),
                report.count(&Outcome::Failed),
                report.count(&Outcome::Skipped)
            );
        }
    }
    if !report.ok() {
        anyhow::bail!(
            "{} package(s) failed for {}; see the logs named above",
            report.count(&Outcome::Failed),
            report.board
        );
    }
    Ok(())
}
