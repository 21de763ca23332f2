//! The persisted state of a sandbox: `state.json` (the running init, what
//! `enter` needs, read in one small file), the JSON read/write helpers for
//! every file under `sandboxes/<name>/`, and the liveness check (a
//! recorded init is running only with the same pid *and* start time, so a
//! recycled pid is never taken for it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SandboxPaths;

/// Namespace ids (`/proc/PID/ns/*` inode numbers) of a running sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NsIds {
    pub user: u64,
    pub mnt: u64,
    pub pid: u64,
    pub uts: u64,
    pub ipc: u64,
    pub net: u64,
}

/// `state.json`: the running init. Everything `enter` needs is here so it
/// reads one small file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct State {
    /// Host pid of the sandbox's init (pid 1 inside).
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: tells a recycled pid apart.
    pub start_time: u64,
    pub ns: NsIds,
    /// Seconds since the epoch.
    pub started: u64,
    pub source: Option<PathBuf>,
    /// Whether uid 0 exists inside (false with a single mapping).
    pub has_root: bool,
    /// Whether the sandbox has its own network namespace (`--net none`).
    pub own_net: bool,
    /// Extra environment for every command: the image's `Env`, the
    /// sandbox's own variables, agent sockets.
    pub env: Vec<(String, String)>,
    /// The image's `WorkingDir` (absolute): where a command starts when
    /// the caller stands outside the bound repo. The init creates it at
    /// start when the image lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The image's `User` (`USER[:GROUP]`, names or ids), as written in its
    /// config: whom a command runs as when the caller gives no `-u`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The sdk-tools binary the sandbox started with (path, inode, size,
    /// mtime): the sandbox keeps running that one after the host's is
    /// replaced, which `enter` tells the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
}

/// Read and strictly parse a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is damaged; remove the sandbox with `sdk-run rm -f NAME`",
            path.display()
        )
    })
}

/// Write JSON to a temp file and rename it into place.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} into place", tmp.display()))
}

/// A JSON file that may be missing or damaged: `None` for both, without
/// making an error (an `anyhow::Error` captures a backtrace when
/// `RUST_BACKTRACE` is set, which costs more than the rest of a start).
pub fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The recorded state, if any (a damaged file counts as none).
pub fn read_state(sb: &SandboxPaths) -> Option<State> {
    read_json_opt(&sb.state())
}

/// Is the recorded init still alive (same pid *and* same start time)?
pub fn is_running(state: &State) -> bool {
    start_time(Path::new("/proc"), state.pid) == Some(state.start_time)
}

/// Field 22 of `/proc/PID/stat` (clock ticks after boot), or `None` when
/// the process is gone or a zombie.
pub fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    use std::io::Read;
    // One read(2) of a buffer that fits any stat line (this is on the
    // enter hot path; fs::read would grow its buffer in small steps).
    let mut f = std::fs::File::open(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let mut buf = [0u8; 1024];
    let n = f.read(&mut buf).ok()?;
    parse_start_time(&buf[..n])
}

/// The comm field may hold spaces and parentheses: split after the last `)`.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After ")": field 3 (state) is the first; starttime is field 22. A
    // zombie init (its reaper has not run yet) has no namespaces left.
    let mut f = rest.split_ascii_whitespace();
    if matches!(f.next()?, "Z" | "X" | "x") {
        return None;
    }
    f.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comm() {
        let stat =
            b"1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time(b"garbage"), None);
        let zombie =
            b"1234 (a) Z 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(zombie), None);
    }

    #[test]
    fn this_process_has_a_start_time() {
        let me = std::process::id() as i32;
        assert!(start_time(Path::new("/proc"), me).is_some());
        assert!(start_time(Path::new("/proc"), i32::MAX).is_none());
    }
}
