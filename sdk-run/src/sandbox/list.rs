//! `sdk-run list [--json]`: every sandbox with its state, init pid,
//! creation time, rootfs and mounts.

use serde::Serialize;

use crate::sandbox::config::Config;
use crate::sandbox::mounts::SOURCE_DIR;
use crate::state::StateDir;
use crate::state::{SandboxName, is_running, read_json, read_state};

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub name: String,
    /// `running` or `stopped`.
    pub state: &'static str,
    pub pid: Option<i32>,
    /// Seconds since the epoch.
    pub created: u64,
    pub rootfs: String,
    /// `SRC:DST[:ro]`, the repo first.
    pub mounts: Vec<String>,
}

pub fn entries(state: &StateDir) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(state.sandboxes()) else {
        return vec![];
    };
    let mut out: Vec<Entry> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            let sb = state.sandbox(&SandboxName::parse(&name).ok()?);
            let cfg: Config = read_json(&sb.config()).ok()?;
            let st = read_state(&sb).filter(is_running);
            let mut mounts = Vec::new();
            if let Some(s) = &cfg.source {
                mounts.push(format!("{}:{SOURCE_DIR}", s.display()));
            }
            for v in &cfg.volumes {
                mounts.push(format!(
                    "{}:{}{}",
                    v.src.display(),
                    v.dst.display(),
                    if v.readonly { ":ro" } else { "" }
                ));
            }
            for d in &cfg.devices {
                mounts.push(format!("{}:{}", d.display(), d.display()));
            }
            Some(Entry {
                name,
                state: if st.is_some() { "running" } else { "stopped" },
                pid: st.map(|s| s.pid),
                created: cfg.created,
                rootfs: cfg.rootfs.describe(),
                mounts,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// UTC `YYYY-MM-DD HH:MM` for a time in seconds since the epoch.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

pub fn list(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let e = entries(state);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    let w = e.iter().map(|x| x.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:w$}  {:8} {:>8}  {:16}  {:30}  MOUNTS",
        "NAME", "STATE", "PID", "CREATED (UTC)", "ROOTFS"
    );
    for x in &e {
        println!(
            "{:w$}  {:8} {:>8}  {:16}  {:30}  {}",
            x.name,
            x.state,
            x.pid.map_or("-".into(), |p| p.to_string()),
            format_time(x.created),
            x.rootfs,
            x.mounts.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(951_782_400 + 3661), "2000-02-29 01:01");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13");
    }
}
