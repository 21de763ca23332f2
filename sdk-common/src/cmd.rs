//! The one helper that runs external tools (newuidmap, mkfs.*, mcopy,
//! qemu-img, dpkg, ...) for both binaries: logs the command line, checks the
//! exit status, and keeps the tail of stderr for the error. Never call
//! `.output()?` and ignore the status.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, Stdio};

/// How many bytes of stderr a failure message keeps.
const STDERR_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{cmd}`: {source}; is it installed and on PATH?")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr_tail}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr_tail: String,
    },
    #[error("`{cmd}` printed output that is not UTF-8")]
    NotUtf8 { cmd: String },
}

impl CmdError {
    /// The tool failed because a filesystem was full. Tools say so only
    /// in words on stderr: strerror(ENOSPC) from any tool, mke2fs's "Could
    /// not allocate block".
    pub fn is_out_of_space(&self) -> bool {
        const SAID: &[&str] = &["No space left on device", "Could not allocate block"];
        match self {
            CmdError::Failed { stderr_tail, .. } => SAID.iter().any(|s| stderr_tail.contains(s)),
            _ => false,
        }
    }
}

/// Render a command line for logs and errors, quoting what needs it.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    out.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Extension trait: run a command and check its status.
pub trait CommandExt {
    /// Run with stdout/stderr captured; fail with the stderr tail on a
    /// non-zero status. Returns stdout.
    fn run_capture(&mut self) -> Result<Vec<u8>, CmdError>;
    /// Like `run_capture`, but the stdout is returned as a `String`.
    fn run_stdout(&mut self) -> Result<String, CmdError>;
    /// Run with stdout passed through (or wherever it was set) and stderr
    /// captured for the error message.
    fn run_checked(&mut self) -> Result<(), CmdError>;
    /// Like `run_capture`, but returns stderr too (for tools such as
    /// debugfs that report failed requests only there, with status 0).
    fn run_output(&mut self) -> Result<std::process::Output, CmdError>;
    /// Run with stdout and stderr appended to the file `log` (a build log);
    /// a failure carries the log's last lines.
    fn run_logged(&mut self, log: &std::path::Path) -> Result<(), CmdError>;
    /// Start a long-running process (a VM) whose output the caller reads
    /// as it comes; logs the command line like the others. The caller owns
    /// the child: it must wait for it and judge its status.
    fn spawn_streaming(&mut self) -> Result<std::process::Child, CmdError>;
    /// Start with stdin closed and stdout/stderr captured, so several tools
    /// can run at once (newuidmap beside newgidmap); [`Running::finish`]
    /// checks the status.
    fn spawn_captured(&mut self) -> Result<Running, CmdError>;
}

/// A started command whose status is checked by [`Running::finish`].
pub struct Running {
    shown: String,
    child: Child,
}

impl Running {
    /// Wait; return stdout, or the failure with the stderr tail.
    pub fn finish(self) -> Result<Vec<u8>, CmdError> {
        self.finish_output().map(|out| out.stdout)
    }

    /// Wait, reading stdout and stderr together (a child that fills one
    /// pipe while we wait on the other would hang); check the status.
    fn finish_output(self) -> Result<std::process::Output, CmdError> {
        let out = self
            .child
            .wait_with_output()
            .map_err(spawn_err(&self.shown))?;
        check(&self.shown, out.status, &out.stderr)?;
        Ok(out)
    }
}

/// The error for a command that could not be started or waited for.
fn spawn_err(shown: &str) -> impl Fn(std::io::Error) -> CmdError + Copy + '_ {
    move |source| CmdError::Spawn {
        cmd: shown.to_string(),
        source,
    }
}

/// A non-zero status becomes `Failed` with the command and stderr's tail.
fn check(shown: &str, status: std::process::ExitStatus, stderr: &[u8]) -> Result<(), CmdError> {
    if status.success() {
        Ok(())
    } else {
        Err(CmdError::Failed {
            cmd: shown.to_string(),
            status,
            stderr_tail: tail(stderr),
        })
    }
}

impl CommandExt for Command {
    fn run_capture(&mut self) -> Result<Vec<u8>, CmdError> {
        self.run_output().map(|out| out.stdout)
    }

    fn run_output(&mut self) -> Result<std::process::Output, CmdError> {
        self.spawn_captured()?.finish_output()
    }

    fn run_stdout(&mut self) -> Result<String, CmdError> {
        let shown = display(self);
        let out = self.run_capture()?;
        String::from_utf8(out).map_err(|_| CmdError::NotUtf8 { cmd: shown })
    }

    fn run_checked(&mut self) -> Result<(), CmdError> {
        let shown = display(self);
        tracing::debug!(cmd = %shown, "running");
        let mut child = self
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err(&shown))?;
        let mut err = Vec::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_end(&mut err);
        }
        let status = child.wait().map_err(spawn_err(&shown))?;
        check(&shown, status, &err)
    }

    fn run_logged(&mut self, log: &std::path::Path) -> Result<(), CmdError> {
        let shown = display(self);
        tracing::debug!(cmd = %shown, log = %log.display(), "running");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        };
        let spawn_err = spawn_err(&shown);
        let out = open().map_err(spawn_err)?;
        let err = open().map_err(spawn_err)?;
        let status = self
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(spawn_err)?;
        if !status.success() {
            return Err(CmdError::Failed {
                cmd: shown,
                status,
                stderr_tail: file_tail(log, 20),
            });
        }
        Ok(())
    }

    fn spawn_streaming(&mut self) -> Result<std::process::Child, CmdError> {
        let shown = display(self);
        tracing::info!(cmd = %shown, "starting");
        self.spawn().map_err(spawn_err(&shown))
    }

    fn spawn_captured(&mut self) -> Result<Running, CmdError> {
        let shown = display(self);
        tracing::debug!(cmd = %shown, "running");
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err(&shown))?;
        Ok(Running { shown, child })
    }
}

/// The last `lines` lines of a text file (for failure messages).
pub fn file_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        let out = Command::new("sh")
            .args(["-c", "echo hi"])
            .run_stdout()
            .unwrap();
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn failure_keeps_stderr_tail_and_command() {
        let err = Command::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run_capture()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("'echo boom >&2; exit 3'"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn two_started_commands_are_each_checked() {
        let a = Command::new("sh")
            .args(["-c", "echo a"])
            .spawn_captured()
            .unwrap();
        let b = Command::new("sh")
            .args(["-c", "echo nope >&2; exit 4"])
            .spawn_captured()
            .unwrap();
        assert_eq!(a.finish().unwrap(), b"a\n");
        let e = b.finish().unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("exit status: 4"), "{e}");
    }

    #[test]
    fn missing_program_says_so() {
        let err = Command::new("no-such-tool-here").run_capture().unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }));
        assert!(err.to_string().contains("installed"));
    }
}
