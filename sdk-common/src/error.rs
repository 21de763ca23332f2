//! The error convention of both binaries: a mistake that is the user's to
//! fix (a bad flag, an unknown name, a malformed file) exits with
//! [`USAGE`] and one line; anything else is the work failing. A typed
//! error says which it is through [`BadInput`]; [`classify`] turns it into
//! an `anyhow::Error` that keeps the typed error and its sources in the
//! chain, so `{:#}` prints all of it and [`exit_code`] finds the mark.

/// Exit code of bad input (nothing was changed).
pub const USAGE: i32 = 2;

/// An error that is the user's to fix, written as a sentence that ends
/// with what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A typed error that knows whether it is about the input.
pub trait BadInput: std::error::Error + Send + Sync + 'static {
    /// True for errors about the input (exit code 2), not the machine.
    fn is_bad_input(&self) -> bool;
}

/// The mark [`classify`] puts on a bad-input error. Transparent: it prints
/// as the error it wraps and hands out that error's sources.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadInputError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl BadInputError {
    /// The typed error inside.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// `.map_err(classify)?`: a typed error into `anyhow`, marked as bad input
/// when it is, its sources kept.
pub fn classify<E: BadInput>(e: E) -> anyhow::Error {
    if e.is_bad_input() {
        anyhow::Error::new(BadInputError(Box::new(e)))
    } else {
        anyhow::Error::new(e)
    }
}

/// `.map_err(bad_input)?`: a typed error that is always the input's fault
/// (a malformed manifest, an unknown board) into `anyhow`, marked as bad
/// input, its sources kept.
pub fn bad_input<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::Error::new(BadInputError(Box::new(e)))
}

/// Whether anything in the chain is bad input.
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<UsageError>() || e.is::<BadInputError>())
}

/// The exit code an error chain deserves: [`USAGE`] for bad input, else
/// `failure` (each binary has its own: 1 for the tools, 125 for sdk-run,
/// whose other codes are the command's).
pub fn exit_code(err: &anyhow::Error, failure: i32) -> i32 {
    if is_usage(err) { USAGE } else { failure }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    enum Typed {
        #[error("bad key `x` in f.toml")]
        Bad,
        #[error("cannot read f.toml")]
        Io(#[source] std::io::Error),
    }

    impl BadInput for Typed {
        fn is_bad_input(&self) -> bool {
            matches!(self, Typed::Bad)
        }
    }

    #[test]
    fn usage_errors_are_found_anywhere_in_the_chain() {
        let inner: anyhow::Result<()> = Err(UsageError("bad flag".into()).into());
        let err = inner.context("while parsing").unwrap_err();
        assert!(is_usage(&err));
        assert_eq!(exit_code(&err, 1), USAGE);
        assert!(!is_usage(&anyhow::anyhow!("disk full")));
        assert_eq!(exit_code(&anyhow::anyhow!("disk full"), 125), 125);
    }

    #[test]
    fn classify_marks_bad_input_and_keeps_the_chain() {
        let bad: anyhow::Result<()> = Err(classify(Typed::Bad));
        let bad = bad.context("loading the board").unwrap_err();
        assert!(is_usage(&bad));
        assert_eq!(
            format!("{bad:#}"),
            "loading the board: bad key `x` in f.toml"
        );
        let io = Typed::Io(std::io::Error::other("disk on fire"));
        let io = classify(io);
        assert!(!is_usage(&io));
        assert_eq!(format!("{io:#}"), "cannot read f.toml: disk on fire");
        assert!(io.downcast_ref::<Typed>().is_some());
        let marked = bad_input(Typed::Io(std::io::Error::other("no such file")));
        assert!(is_usage(&marked));
        assert_eq!(format!("{marked:#}"), "cannot read f.toml: no such file");
    }
}

/// The one line an error prints as: its messages joined with `: `, as
/// `{:#}` does, but without a cause whose text the message before it
/// already ends with (error types that name their source in their own
/// message and also give it as the source would otherwise say it twice).
/// Control characters (a terminal escape from an archive header, a
/// newline in a file name) are shown escaped, never sent to the terminal.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    escape_controls(&out)
}

/// A clap usage error (rendered, several lines) as one line: the error,
/// its tips, and where help is (`help`, e.g. "sdk-run --help").
pub fn clap_line(text: &str, help: &str) -> String {
    let mut lines = text.lines();
    let mut out = lines.next().unwrap_or("error: bad arguments").to_string();
    for l in lines {
        if let Some(tip) = l.trim_start().strip_prefix("tip: ") {
            out.push_str("; ");
            out.push_str(tip);
        }
    }
    out.push_str(&format!(" (see `{help}`)"));
    escape_controls(&out)
}

/// `s` with every control character written as an escape (`\x1b`, `\n`).
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Longest untrusted string a message shows (before escaping).
const UNTRUSTED_MAX: usize = 120;

/// A string from untrusted input (an archive member name, a header
/// field) as a message shows it: control characters escaped and at most
/// 120 characters, the rest marked as cut.
pub fn quote_untrusted(s: &str) -> String {
    let n = s.chars().count();
    if n <= UNTRUSTED_MAX {
        escape_controls(s)
    } else {
        let head: String = s.chars().take(UNTRUSTED_MAX).collect();
        format!("{}... ({n} characters)", escape_controls(&head))
    }
}

#[cfg(test)]
mod one_line_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x: {0}")]
    struct Named(#[source] std::io::Error);

    #[test]
    fn untrusted_bytes_never_reach_the_terminal() {
        let e = anyhow::anyhow!("bad member \x1b]0;owned\x07name\nnext");
        let line = super::one_line(&e);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("\\u{1b}]0;owned"), "{line}");
        let long = "a".repeat(5000);
        let q = super::quote_untrusted(&long);
        assert!(q.len() < 200 && q.ends_with("(5000 characters)"), "{q}");
    }

    #[test]
    fn a_source_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Named(io)).context("apply");
        assert_eq!(super::one_line(&e), "apply: cannot read x: no such file");
    }
}
