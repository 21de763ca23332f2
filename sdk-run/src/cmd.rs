//! The one helper sdk-run uses to run external tools (newuidmap,
//! newgidmap, sdk-tools): logs the command line, checks the exit status,
//! keeps the tail of stderr for the error.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, Stdio};

const STDERR_TAIL: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(
        "cannot start `{cmd}`: {source}; is it installed (Debian package uidmap for newuidmap) and on PATH?"
    )]
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
}

/// Render a command line for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut out = quote(cmd.get_program());
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

/// A started command whose status is checked by [`Running::finish`].
pub struct Running {
    shown: String,
    child: Child,
}

impl Running {
    /// Wait; return stdout, or the failure with the stderr tail.
    pub fn finish(mut self) -> Result<Vec<u8>, CmdError> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_end(&mut err);
        }
        let status = self.child.wait().map_err(|source| CmdError::Spawn {
            cmd: self.shown.clone(),
            source,
        })?;
        if !status.success() {
            let start = err.len().saturating_sub(STDERR_TAIL);
            return Err(CmdError::Failed {
                cmd: self.shown,
                status,
                stderr_tail: String::from_utf8_lossy(&err[start..]).trim().to_string(),
            });
        }
        Ok(out)
    }
}

pub trait RunExt {
    /// Start with stdin closed and stdout/stderr captured.
    fn spawn_captured(&mut self) -> Result<Running, CmdError>;
    /// Run to completion; stdout on success, the stderr tail on failure.
    fn run_capture(&mut self) -> Result<Vec<u8>, CmdError>;
}

impl RunExt for Command {
    fn spawn_captured(&mut self) -> Result<Running, CmdError> {
        let shown = display(self);
        tracing::debug!(cmd = %shown, "running");
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CmdError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
        Ok(Running { shown, child })
    }

    fn run_capture(&mut self) -> Result<Vec<u8>, CmdError> {
        self.spawn_captured()?.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stderr_are_checked() {
        assert_eq!(
            Command::new("sh")
                .args(["-c", "echo hi"])
                .run_capture()
                .unwrap(),
            b"hi\n"
        );
        let e = Command::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run_capture()
            .unwrap_err()
            .to_string();
        assert!(e.contains("boom") && e.contains("exit status: 3"), "{e}");
    }
}
