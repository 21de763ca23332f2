//! Command line of `sdk-run` (clap derive). Parses, sets up logging, and
//! hands each verb to its module; prints errors as one `{:#}` line and maps
//! them to exit codes (`crate::exit`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

pub mod rootfs;

/// `--net`: the sandbox's [`Net`], as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetArg {
    /// Share the host's network (default).
    Host,
    /// A new, empty network namespace with only loopback.
    None,
}

impl From<NetArg> for Net {
    fn from(n: NetArg) -> Net {
        match n {
            NetArg::Host => Net::Host,
            NetArg::None => Net::None,
        }
    }
}

use crate::sandbox::{Net, Volume, list, remove, run};
use crate::state::StateDir;

/// Enter a rootless, persistent SDK sandbox for the distro repo you stand in.
///
/// With no verb, sdk-run enters the sandbox named after the repo's
/// sdk-version.toml (sdk-<sdk-version>_os-<os-version>), starting it if it is
/// stopped and creating it if it does not exist, then runs CMD inside (the
/// login shell without one). The repo is at /mnt/host/source inside; the
/// exit status is CMD's.
///
/// Examples:
///   sdk-run -t                               a shell in the repo's sandbox
///   sdk-run --rootfs ~/sdk.tar.zst -t        first time: create it from a rootfs
///   sdk-run -- make -C src                   one command; its exit status is ours
///   sdk-run -u root -- apt-get install -y vim     as root inside
///   sdk-run -e V=1 -e CC -- make             V=1, and your CC, inside
///   sdk-run import sdk.tar --tag my-sdk && sdk-run -n mine --image my-sdk -t
///   sdk-run -n scratch --rootfs /srv/rootfs -v ~/distfiles:/var/cache/distfiles:ro -t
///   sdk-run --rm -n try --rootfs rootfs.tar -- ./check.sh    throwaway sandbox
///   sdk-run list --json;  sdk-run stop NAME;  sdk-run rm -f NAME;  sdk-run prune
#[derive(Debug, Parser)]
#[command(
    name = "sdk-run",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More logging (--verbose info, twice debug, three times trace); RUST_LOG also works.
    #[arg(long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Allocate a terminal inside the sandbox (for interactive shells).
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Accepted as podman and docker users type it (`-it`): stdin always
    /// reaches the command.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Sandbox name (default: from the repo's sdk-version.toml).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// User to run as inside: sdk (you, uid 1000), root, or a name/uid from the sandbox's /etc/passwd [default: the image's User, else sdk].
    // No clap default: "not given" must stay visible, since the image's
    // User applies only then (and the fast path below agrees).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Bind a host path into the sandbox (at creation), read-only with :ro.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volumes: Vec<Volume>,
    /// Pass a host device node through (at creation); /dev/kvm and /dev/fuse are added when you can open them.
    #[arg(long = "device", value_name = "PATH")]
    pub devices: Vec<PathBuf>,
    /// Root filesystem for a new sandbox: an unpacked directory (used in place) or a .tar/.tar.gz/.tar.zst (extracted).
    #[arg(long = "rootfs", value_name = "DIR|TARBALL")]
    pub rootfs: Option<PathBuf>,
    /// Image from the store for a new sandbox (a tag or digest from `sdk-run images`), under its own overlay layer; the repo's sdk-version.toml may name one as `sdk-image`.
    #[arg(long = "image", value_name = "TAG|DIGEST", conflicts_with = "rootfs")]
    pub image: Option<String>,
    /// With --rootfs DIR: leave DIR untouched (shareable) and keep the sandbox's changes in its own overlay layer.
    #[arg(long = "overlay", requires = "rootfs")]
    pub overlay: bool,
    /// Network of a new sandbox: the host's (default) or none (loopback only).
    #[arg(long = "net", value_enum, value_name = "host|none")]
    pub net: Option<NetArg>,
    /// Remove the sandbox when CMD exits (it must not exist yet).
    #[arg(long = "rm")]
    pub rm: bool,
    /// Set a variable inside: NAME=VALUE, or NAME for your value (skipped
    /// when unset). TERM, LANG, LC_*, TZ, SOURCE_DATE_EPOCH and the proxy
    /// variables pass through without it.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<crate::sandbox::enter::EnvArg>,
    /// The command to run inside, after `--`.
    #[arg(last = true, value_name = "CMD ARGS")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// List sandboxes: name, state, init pid, created, rootfs, mounts.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop sandboxes: every process in them ends; files stay.
    Stop {
        /// Sandboxes to stop; each is handled (and reported) on its own.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove sandboxes and their files (their rootfs or writable layer).
    Rm {
        /// Stop running ones first.
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// Also delete each sandbox's /build (cross-roots and binary
        /// packages), which is otherwise kept for the next sandbox of that name.
        #[arg(long)]
        volumes: bool,
        /// Sandboxes to remove; each is handled (and reported) on its own.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove sandboxes that are not running (listed, then asked; -f skips the question).
    ///
    /// Examples:
    ///   sdk-run prune --dry-run        # only list
    ///   sdk-run prune                  # list, then ask on the terminal
    ///   sdk-run prune -f --volumes     # no question; kept /build folders go too
    Prune {
        /// Remove without asking (needed when stdin is not a terminal).
        #[arg(short = 'f', long = "force", conflicts_with = "dry_run")]
        force: bool,
        /// List what would be removed and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also the kept /build of removed sandboxes (and of the ones pruned now).
        #[arg(long)]
        volumes: bool,
    },
    /// Print a shell completion script (e.g. `sdk-run completions bash > /etc/bash_completion.d/sdk-run`).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (e.g. `sdk-run man | man -l -`), or write every page (`--dir`).
    Man {
        /// Write sdk-run.1 and a page per verb (sdk-run-rm.1, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    Import(rootfs::ImportArgs),
    Images(rootfs::ImagesArgs),
    Rmi(rootfs::RmiArgs),
    Commit(rootfs::CommitArgs),
    Build(rootfs::BuildArgs),
}

/// The common forms, `[-t|-it] [-n NAME] [-u USER] [-e VAR] [--rm]
/// [--rootfs DIR [--overlay] | --image TAG] [-- CMD...]`, parsed without
/// building the clap command (about 0.3 ms: entering is the hot path, and
/// a throwaway `--rm` run pays it once per command). Anything else, or
/// anything odd, returns `None` and goes through clap.
pub fn fast_args(args: &[OsString]) -> Option<run::RunOptions> {
    let mut o = run::RunOptions::default();
    let mut interactive = false;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let value = |v: Option<&OsString>| -> Option<String> {
            let v = v?.to_str()?;
            (!v.is_empty() && !v.starts_with('-')).then(|| v.to_string())
        };
        match a.to_str()? {
            "-t" | "--tty" if !o.tty => o.tty = true,
            "-i" | "--interactive" if !interactive => interactive = true,
            "-it" | "-ti" if !o.tty && !interactive => {
                o.tty = true;
                interactive = true;
            }
            "-n" | "--name" if o.name.is_none() => o.name = Some(value(it.next())?),
            "-u" | "--user" if o.user.is_none() => o.user = Some(value(it.next())?),
            "-e" | "--env" => o.env.push(value(it.next())?.parse().ok()?),
            "--rm" if !o.rm => o.rm = true,
            "--overlay" if !o.overlay => o.overlay = true,
            "--rootfs" if o.rootfs.is_none() && o.image.is_none() => {
                o.rootfs = Some(value(it.next())?.into())
            }
            "--image" if o.image.is_none() && o.rootfs.is_none() => {
                o.image = Some(value(it.next())?)
            }
            "--" => {
                o.command = it.cloned().collect();
                break;
            }
            _ => return None,
        }
    }
    // `--overlay` needs `--rootfs`: clap says so.
    (!o.overlay || o.rootfs.is_some()).then_some(o)
}

/// Parse arguments, run, and return the process exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    if std::env::var_os("RUST_LOG").is_none()
        && let Some(opts) = fast_args(&args)
    {
        return finish(run::run(opts));
    }
    let cli = match Cli::try_parse_from(hoist_globals(args)) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            eprintln!("sdk-run: {}", one_line(&e.render().to_string()));
            return crate::exit::USAGE;
        }
    };
    init_logging(cli.verbose);
    finish(dispatch(cli))
}

/// `sdk-run --verbose list`: global flags typed before a verb move after
/// it, since the enter flags and the verbs exclude each other in clap.
fn hoist_globals(mut args: Vec<OsString>) -> Vec<OsString> {
    let lead = args
        .iter()
        .skip(1)
        .take_while(|a| *a == "--verbose")
        .count();
    let verb = args.get(1 + lead).and_then(|a| a.to_str());
    let is_verb = verb.is_some_and(|v| {
        Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == v || c.get_all_aliases().any(|a| a == v))
    });
    if lead > 0 && is_verb {
        args[1..=1 + lead].rotate_left(lead);
    }
    args
}

/// A clap error as the one line bad input gets: what is wrong, clap's
/// tips ("a similar argument exists: '--name'") kept, the usage block
/// left to `--help`.
fn one_line(text: &str) -> String {
    sdk_common::error::clap_line(text, "sdk-run --help")
}

fn finish(r: anyhow::Result<i32>) -> i32 {
    match r {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sdk-run: error: {}", sdk_common::error::one_line(&err));
            crate::exit::code_for(&err)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let Some(verb) = cli.verb else {
        let r = cli.run;
        return run::run(run::RunOptions {
            tty: r.tty,
            name: r.name,
            user: r.user,
            volumes: r.volumes,
            devices: r.devices,
            rootfs: r.rootfs,
            image: r.image,
            overlay: r.overlay,
            net: r.net.map(Net::from),
            rm: r.rm,
            env: r.env,
            command: r.command,
        });
    };
    match verb {
        Verb::List { json } => list::list(&StateDir::from_env()?, json)?,
        Verb::Stop { names } => remove::stop(&StateDir::from_env()?, &names)?,
        Verb::Rm {
            force,
            volumes,
            names,
        } => remove::rm(&StateDir::from_env()?, &names, force, volumes)?,
        Verb::Prune {
            force,
            dry_run,
            volumes,
        } => {
            let confirm = match (force, dry_run) {
                (true, _) => remove::Confirm::Force,
                (_, true) => remove::Confirm::DryRun,
                _ => remove::Confirm::Ask,
            };
            remove::prune(&StateDir::from_env()?, confirm, volumes)?
        }
        Verb::Completions { shell } => sdk_common::clidoc::print_completions(
            Cli::command(),
            shell,
            None,
            &mut std::io::stdout(),
        )?,
        Verb::Man { dir: None } => {
            sdk_common::clidoc::print_man(Cli::command(), None, &mut std::io::stdout())?
        }
        Verb::Man { dir: Some(d) } => {
            for f in sdk_common::clidoc::write_man_pages(Cli::command(), &[], &d)? {
                println!("{}", f.display());
            }
        }
        Verb::Import(a) => return rootfs::import(&a),
        Verb::Images(a) => return rootfs::images(&a),
        Verb::Rmi(a) => return rootfs::rmi(&a),
        Verb::Commit(a) => return rootfs::commit(&a),
        Verb::Build(a) => return rootfs::build(&a),
    }
    Ok(0)
}

/// Logging to stderr, default level warn (idempotent).
pub fn init_logging(verbose: u8) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("sdk-run")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        Cli::try_parse_from(hoist_globals(argv))
    }

    #[test]
    fn global_flags_work_before_the_verb() {
        let c = parse(&["--verbose", "--verbose", "list", "--json"]).unwrap();
        assert_eq!(c.verbose, 2);
        assert!(matches!(c.verb, Some(Verb::List { json: true })));
        assert_eq!(parse(&["list", "--verbose"]).unwrap().verbose, 1);
        // Before the default verb it stays where it is.
        let c = parse(&["--verbose", "-t"]).unwrap();
        assert!(c.verb.is_none() && c.run.tty && c.verbose == 1);
    }

    #[test]
    fn env_arguments() {
        let c = parse(&["-e", "A=1", "--env", "B", "--", "env"]).unwrap();
        assert_eq!(c.run.env.len(), 2);
        assert_eq!(c.run.env[1].value, None);
        let e = parse(&["-e", "1x=2"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("not a variable name"), "{e}");
    }

    #[test]
    fn run_flags_and_command() {
        let c = parse(&[
            "-t", "-n", "box", "-u", "root", "-v", "/a:/b:ro", "-v", "/c:/d", "--device",
            "/dev/kvm", "--net", "none", "--rm", "--", "make", "-j2",
        ])
        .unwrap();
        assert!(c.verb.is_none());
        let r = c.run;
        assert!(r.tty && r.rm);
        assert_eq!(r.name.as_deref(), Some("box"));
        assert_eq!(r.user.as_deref(), Some("root"));
        assert_eq!(
            parse(&["-t"]).unwrap().run.user,
            None,
            "no -u: the image decides"
        );
        assert_eq!(r.volumes.len(), 2);
        assert!(r.volumes[0].readonly && !r.volumes[1].readonly);
        assert_eq!(r.net, Some(NetArg::None));
        assert_eq!(r.command, vec![OsString::from("make"), "-j2".into()]);
    }

    #[test]
    fn verbs_and_bad_input() {
        assert!(matches!(
            parse(&["list", "--json"]).unwrap().verb,
            Some(Verb::List { json: true })
        ));
        assert!(matches!(
            parse(&["rm", "-f", "a", "b"]).unwrap().verb,
            Some(Verb::Rm { force: true, .. })
        ));
        // A command needs `--`, so a verb is never mistaken for one.
        assert!(parse(&["make"]).is_err());
        assert!(parse(&["stop"]).is_err());
        assert!(parse(&["-v", "nonsense"]).is_err());
        assert!(parse(&["--net", "bridge"]).is_err());
        assert!(parse(&["-t", "list"]).is_err());
        assert!(parse(&["--overlay"]).is_err());
        assert_eq!(parse(&["-v", "x"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_arguments_are_one_line_with_clap_tips() {
        let e = parse(&["--nmae", "x"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with("error: unexpected argument '--nmae' found"),
            "{line}"
        );
        assert!(
            line.contains("a similar argument exists: '--name'"),
            "{line}"
        );
        assert!(line.ends_with("(see `sdk-run --help`)"), "{line}");
    }

    /// The fast path parses exactly what clap would, or declines.
    #[test]
    fn fast_args_agree_with_clap() {
        let cases: &[&[&str]] = &[
            &[],
            &["-t"],
            &["-it"],
            &["-ti", "-n", "box"],
            &["-i", "--", "cat"],
            &["-n", "box", "--", "make", "-j2"],
            &["-u", "root", "-n", "b", "-t", "--", "sh", "-c", "x -- y"],
            &["--name", "b", "--user", "0", "--"],
            &["--", "-n", "x"],
            &["-e", "A=1", "-e", "B", "--", "env"],
            &["--rm", "-n", "x", "--rootfs", "../r", "--", "true"],
            &["--rootfs", "/r", "--overlay", "-t"],
            &["--overlay", "--rootfs", "r.tar"],
            &["--image", "sdk:1", "--rm"],
        ];
        for c in cases {
            let argv: Vec<OsString> = std::iter::once("sdk-run")
                .chain(c.iter().copied())
                .map(OsString::from)
                .collect();
            let fast = fast_args(&argv).unwrap_or_else(|| panic!("declined {c:?}"));
            let r = parse(c).unwrap().run;
            assert_eq!(
                (fast.tty, fast.name, fast.user, fast.env, fast.command),
                (r.tty, r.name, r.user, r.env, r.command),
                "{c:?}"
            );
            assert_eq!(
                (fast.rm, fast.overlay, fast.rootfs, fast.image),
                (r.rm, r.overlay, r.rootfs, r.image),
                "{c:?}"
            );
            assert!(fast.volumes.is_empty() && fast.devices.is_empty() && fast.net.is_none());
        }
        for c in [
            &["list"][..],
            &["-v", "/a:/b"],
            &["-n"],
            &["-n", "-t"],
            &["-t", "-t"],
            &["-it", "-t"],
            &["-i", "-i"],
            &["-u", "a", "-u", "b"],
            &["--rootfs", "x", "--image", "y"],
            &["--image", "y", "--rootfs", "x"],
            &["--rootfs"],
            &["--rootfs", "-t"],
            &["--overlay"],
            &["--overlay", "--image", "y"],
            &["--rm", "--rm"],
            &["--rootfs=x"],
            &["--net", "none"],
            &["--verbose"],
            &["-tn", "x"],
            &["--help"],
            &["-e", "1x"],
            &["-e"],
        ] {
            let argv: Vec<OsString> = std::iter::once("sdk-run")
                .chain(c.iter().copied())
                .map(OsString::from)
                .collect();
            assert!(fast_args(&argv).is_none(), "{c:?}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
