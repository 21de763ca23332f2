//! Ignition configs handed to a VM on its first boot (the launcher passes
//! them by fw_cfg as `opt/com.coreos/config`, where Ignition's QEMU
//! platform reads them, and as Flatcar's `opt/org.flatcar-linux/config`).
//! Checked on the host before QEMU starts: a config that is not there, not
//! JSON, or not a spec version Ignition v3 reads is refused in one line;
//! Debian's `ignition-validate` then checks the rest when installed, its
//! "unused key" warnings counting as errors.

use std::path::Path;
use std::process::Command;

use super::BootError;

/// Spec versions the Ignition v3 line reads.
const SPEC_VERSIONS: &[&str] = &["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0"];

fn bad(path: &Path, why: impl std::fmt::Display) -> BootError {
    BootError::Usage(format!("Ignition config {}: {why}", path.display()))
}

/// Refuse `path` unless it is an Ignition v3 config.
pub fn check(path: &Path) -> Result<(), BootError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(path, "no such file"),
        _ => bad(path, format!("cannot read it: {e}")),
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON ({e})")))?;
    let version = v
        .get("ignition")
        .and_then(|i| i.get("version"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            bad(
                path,
                "no ignition.version; start it with {\"ignition\": {\"version\": \"3.3.0\"}}",
            )
        })?;
    if !SPEC_VERSIONS.contains(&version) {
        return Err(bad(
            path,
            format!(
                "spec version {version} is not one Ignition v3 reads ({})",
                SPEC_VERSIONS.join(", ")
            ),
        ));
    }
    // The full check (paths, units, sources, ...) by Ignition's own
    // validator, where installed (Debian package ignition). A key it does
    // not know is only a warning there; here it is an error, as a typo
    // would otherwise be dropped without a word.
    let Ok(out) = Command::new("ignition-validate").arg(path).output() else {
        return Ok(());
    };
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let unknown = text.lines().find(|l| l.contains("Unused key"));
    if !out.status.success() || unknown.is_some() {
        let first = unknown
            .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
            .unwrap_or("invalid")
            .trim()
            .to_string();
        return Err(bad(path, format!("ignition-validate: {first}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_refused_in_one_line_naming_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("missing.ign", None, "no such file"),
            ("notjson.ign", Some("{ignition"), "not JSON"),
            (
                "noversion.ign",
                Some("{\"storage\": {}}"),
                "no ignition.version",
            ),
            (
                "v2.ign",
                Some("{\"ignition\": {\"version\": \"2.3.0\"}}"),
                "spec version 2.3.0",
            ),
        ];
        for (name, text, needle) in cases {
            let p = d.path().join(name);
            if let Some(t) = text {
                std::fs::write(&p, t).unwrap();
            }
            let e = check(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{name}: {e}");
        }
        let ok = d.path().join("ok.ign");
        std::fs::write(&ok, "{\"ignition\": {\"version\": \"3.3.0\"}}").unwrap();
        check(&ok).unwrap();
    }
}
