//! The host's configured apt sources, rewritten for the suite a manifest
//! asks for. Owns reading `/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/*.{list,sources}` (one-line and deb822
//! formats); the mirror always comes from there, never from this program.
//! It does not run apt or mmdebstrap.

use std::path::Path;

/// One `deb` source of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Read every `deb` source under `etc_apt` (normally `/etc/apt`).
pub fn host_sources(etc_apt: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_one_line(&t));
    }
    let mut files: Vec<_> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(t) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_one_line(&t)),
            Some("sources") => out.extend(parse_deb822(&t)),
            _ => {}
        }
    }
    out
}

fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ") {
            Some(r) => r.trim(),
            None => continue,
        };
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((o, r)) = opts.split_once(']') else {
                continue;
            };
            for kv in o.split_whitespace() {
                if let Some(v) = kv.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = r.trim();
        }
        let mut f = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (f.next(), f.next()) else {
            continue;
        };
        out.push(Source {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: f.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut comps = Vec::new();
        let mut signed_by = None;
        let mut enabled = true;
        for line in para.lines() {
            if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let words = || v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = words(),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "components" => comps = words(),
                "signed-by" => signed_by = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
                "enabled" => enabled = v.trim() != "no",
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in uris {
            out.push(Source {
                uri,
                suites: suites.clone(),
                components: comps.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
    out
}

/// A one-line-format sources list for `suite`, from the host's sources:
/// each host suite `X`, `X-updates`, `X-security` becomes the same pocket
/// of `suite`. `None` when the host has no Debian sources.
pub fn for_suite(sources: &[Source], suite: &str) -> Option<String> {
    let mut lines = Vec::new();
    for s in sources {
        for host_suite in &s.suites {
            let pocket = match host_suite.split_once('-') {
                Some((_, p)) => format!("{suite}-{p}"),
                None => suite.to_string(),
            };
            let comps = if s.components.is_empty() {
                "main".to_string()
            } else {
                s.components.join(" ")
            };
            // A deb822 Signed-By may hold an inline key; only paths pass.
            let opts = match &s.signed_by {
                Some(k) if k.starts_with('/') && !k.contains(char::is_whitespace) => {
                    format!("[signed-by={k}] ")
                }
                _ => String::new(),
            };
            let line = format!("deb {opts}{} {pocket} {comps}", s.uri);
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n") + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line_become_the_requested_suite() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources"),
            "Types: deb\n# a comment\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://mirror.test/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main contrib\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "# nothing\ndeb [arch=amd64 signed-by=/k2.gpg] http://other.test/d bookworm main\ndeb-src http://x.test/d bookworm main\n",
        )
        .unwrap();
        let s = host_sources(d.path());
        assert_eq!(s.len(), 3);
        assert_eq!(
            for_suite(&s, "trixie").unwrap(),
            "deb [signed-by=/k2.gpg] http://other.test/d trixie main\n\
             deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.test/debian trixie main\n\
             deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.test/debian trixie-updates main\n\
             deb http://mirror.test/debian-security trixie-security main contrib\n"
        );
        assert_eq!(for_suite(&[], "bookworm"), None);
    }
}
