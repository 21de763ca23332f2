//! Man pages and shell completions from a clap command tree, the same way
//! for both binaries: `man` prints one page or writes the whole set (a
//! page per verb, so every page a `SEE ALSO`-style list names exists),
//! `completions` prints the script for the binary or for one of its
//! multi-call names. Nothing here parses arguments.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Command;

/// `cmd` as the pages describe it: built, without clap's `help` verb
/// (it has no page of its own).
fn prepared(cmd: Command) -> Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The verb `name` of `cmd` as a command of its own (a multi-call link
/// named after it), or None when `cmd` has no such verb.
fn as_own_command(cmd: &Command, name: &str) -> Option<Command> {
    cmd.find_subcommand(name).map(|s| {
        s.clone()
            .name(name.to_string())
            .bin_name(name.to_string())
            .display_name(name.to_string())
    })
}

/// Print the man page of `cmd`, or of its multi-call name `name`.
pub fn print_man(cmd: Command, name: Option<&str>, out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = prepared(cmd);
    let page = match name {
        Some(n) => as_own_command(&cmd, n).ok_or_else(|| unknown(n))?,
        None => cmd,
    };
    clap_mangen::Man::new(page).render(out)
}

/// Write every page into `dir`: `<bin>.1`, `<bin>-<verb>.1` for each verb
/// (nested verbs too), and `<name>.1` for each multi-call name. Returns
/// the files written.
pub fn write_man_pages(
    cmd: Command,
    multicall: &[&str],
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = prepared(cmd);
    let mut written = Vec::new();
    fn each(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            each(s, dir, written)?;
        }
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        Ok(())
    }
    each(&cmd, dir, &mut written)?;
    for name in multicall {
        let page = as_own_command(&cmd, name).ok_or_else(|| unknown(name))?;
        written.push(clap_mangen::Man::new(page).generate_to(dir)?);
    }
    Ok(written)
}

/// Print the completion script of `cmd` for `shell`, or of its
/// multi-call name `name` (completing that verb's arguments).
pub fn print_completions(
    cmd: Command,
    shell: clap_complete::Shell,
    name: Option<&str>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let cmd = prepared(cmd);
    let (mut c, bin) = match name {
        Some(n) => (
            as_own_command(&cmd, n).ok_or_else(|| unknown(n))?,
            n.to_string(),
        ),
        None => {
            let bin = cmd.get_name().to_string();
            (cmd, bin)
        }
    };
    clap_complete::generate(shell, &mut c, bin, out);
    Ok(())
}

fn unknown(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("`{name}` is not one of the command's verbs"),
    )
}

/// Arguments and verbs of `cmd` (nested) that `--help` shows without a
/// description, as `path: name` (for a test in each binary).
pub fn undescribed(cmd: Command) -> Vec<String> {
    fn walk(cmd: &Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path}: {id}"));
            }
        }
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let p = format!("{path} {}", s.get_name());
            if s.get_about().is_none() && s.get_long_about().is_none() {
                out.push(format!("{p}: (the verb itself)"));
            }
            walk(s, &p, out);
        }
    }
    let cmd = prepared(cmd);
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("tool")
            .about("A tool")
            .subcommand(
                Command::new("build_it")
                    .about("Build it")
                    .arg(clap::arg!(--board <B> "The board")),
            )
            .subcommand(
                Command::new("group")
                    .about("A group")
                    .subcommand(Command::new("leaf").about("A leaf")),
            )
    }

    #[test]
    fn every_page_a_page_names_is_written() {
        let d = tempfile::tempdir().unwrap();
        let files = write_man_pages(cli(), &["build_it"], d.path()).unwrap();
        let mut names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "build_it.1",
                "tool-build_it.1",
                "tool-group-leaf.1",
                "tool-group.1",
                "tool.1"
            ]
        );
        // Every `x(1)` a page refers to is one of the pages.
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for word in text.split_whitespace() {
                if let Some(page) = word.strip_suffix("(1)") {
                    let page = page.replace("\\-", "-");
                    assert!(names.contains(&format!("{page}.1")), "{f:?} names {page}");
                }
            }
        }
        let own = std::fs::read_to_string(d.path().join("build_it.1")).unwrap();
        assert!(
            own.contains("build_it") && own.contains("\\-\\-board"),
            "{own}"
        );
    }

    #[test]
    fn completions_for_a_multicall_name() {
        let mut out = Vec::new();
        print_completions(
            cli(),
            clap_complete::Shell::Bash,
            Some("build_it"),
            &mut out,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("complete -F _build_it") && s.contains("--board"),
            "{s}"
        );
        assert!(
            print_completions(
                cli(),
                clap_complete::Shell::Bash,
                Some("nope"),
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
