//! `sdk-tools update serve DIR`: the files of one folder over HTTP, for
//! machines that fetch their updates (`sdk-update apply URL`, the update
//! timer). The folder is looked up again on every request, so serving
//! `__build__/images/<board>/latest` always offers the newest build.
//! Nothing but plain file names directly in the folder is served.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The address a QEMU guest reaches the host's server at, through the
/// launcher's `-u PORT` (a `guestfwd`).
pub const GUEST_URL: &str = "http://10.0.2.100";

/// The file a request path names in `dir`, if it is a plain name of a
/// regular file there.
fn file_for(dir: &Path, url: &str) -> Option<PathBuf> {
    let name = url.split(['?', '#']).next()?.strip_prefix('/')?;
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\');
    let p = dir.join(name);
    (ok && p.is_file()).then_some(p)
}

/// Serve `dir` on `listen` until killed.
pub fn serve(dir: &Path, listen: &str) -> Result<()> {
    if !dir.is_dir() {
        return Err(crate::exit::UsageError(format!(
            "{}: no such folder; give the folder build_image wrote (e.g. __build__/images/amd64-usr/latest)",
            dir.display()
        ))
        .into());
    }
    let server = tiny_http::Server::http(listen).map_err(|e| {
        anyhow::Error::new(crate::exit::UsageError(format!(
            "cannot listen on {listen}: {e}; give another --listen address or port"
        )))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "serving {} at http://{addr}/ (Ctrl-C stops)",
        dir.display()
    )?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_update.json"))
        .collect();
    names.sort();
    for n in names {
        writeln!(
            out,
            "update: http://{addr}/{n} (a VM whose launcher has -u {}: {GUEST_URL}/{n})",
            addr.port()
        )?;
    }
    out.flush()?;
    let dir = dir.to_path_buf();
    for rq in server.incoming_requests() {
        let dir = dir.clone();
        std::thread::spawn(move || respond(&dir, rq));
    }
    Ok(())
}

fn respond(dir: &Path, rq: tiny_http::Request) {
    let method = rq.method().clone();
    let url = rq.url().to_string();
    let found = matches!(method, tiny_http::Method::Get | tiny_http::Method::Head)
        .then(|| file_for(dir, &url))
        .flatten()
        .and_then(|p| std::fs::File::open(p).ok());
    let (status, result) = match found {
        Some(f) => {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let r = tiny_http::Response::from_file(f);
            (format!("200 {size} bytes"), rq.respond(r))
        }
        None => {
            let r = tiny_http::Response::from_string("not found\n").with_status_code(404);
            ("404".to_string(), rq.respond(r))
        }
    };
    let end = match result {
        Ok(()) => String::new(),
        Err(e) => format!(" (cut short: {e})"),
    };
    eprintln!("{method} {url} {status}{end}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_of_files_in_the_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a_update.json"), "{}").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(file_for(d.path(), "/a_update.json").is_some());
        assert!(file_for(d.path(), "/a_update.json?x=1").is_some());
        for bad in [
            "/",
            "/sub",
            "/../etc/passwd",
            "/sub/../a_update.json",
            "a_update.json",
            "/nope",
        ] {
            assert!(file_for(d.path(), bad).is_none(), "{bad}");
        }
    }
}
