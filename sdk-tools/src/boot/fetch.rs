//! Where an update comes from: a local file or block device, or an
//! HTTP(S) URL (`sdk-tools update serve`, or any static web server). The
//! metadata and its signature are small and fetched whole; the payload is
//! read as a stream, twice (once to check its sha256 before a byte is
//! written, once to write it), so no copy of it needs room on the machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file, or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Url(u) => f.write_str(u),
        }
    }
}

impl Origin {
    pub fn parse(s: &str) -> Origin {
        if s.starts_with("http://") || s.starts_with("https://") {
            Origin::Url(s.to_string())
        } else {
            Origin::File(PathBuf::from(s))
        }
    }

    /// The file `name` in the same folder.
    pub fn sibling(&self, name: &str) -> Origin {
        match self {
            Origin::File(p) => Origin::File(p.parent().unwrap_or(Path::new(".")).join(name)),
            Origin::Url(u) => {
                let base = u.rsplit_once('/').map_or(u.as_str(), |(b, _)| b);
                Origin::Url(format!("{base}/{name}"))
            }
        }
    }

    /// Read it from the start.
    pub fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        match self {
            Origin::File(p) => Ok(Box::new(std::fs::File::open(p)?)),
            Origin::Url(u) => {
                let resp = agent().get(u).call().map_err(|e| http_error(u, e))?;
                Ok(Box::new(resp.into_body().into_reader()))
            }
        }
    }

    /// All of it (a small file: metadata, signature).
    pub fn read_small(&self, limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open()?.take(limit + 1).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(std::io::Error::other(format!(
                "{self} is bigger than {limit} bytes"
            )));
        }
        Ok(out)
    }
}

/// One client for every request: connect and read timeouts, so a server
/// that goes away stops an apply instead of hanging it.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("sdk-update/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn http_error(url: &str, e: ureq::Error) -> std::io::Error {
    match e {
        ureq::Error::StatusCode(404) => std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{url}: not found (404)"),
        ),
        ureq::Error::StatusCode(c) => std::io::Error::other(format!("{url}: HTTP status {c}")),
        ureq::Error::Io(io) => std::io::Error::new(io.kind(), format!("{url}: {io}")),
        other => std::io::Error::other(format!("{url}: {other}")),
    }
}

/// Copy the metadata at `origin` and its signature (`.sig` beside it)
/// into `dir`; returns the local metadata path. A file stays where it is.
pub fn local_metadata(origin: &Origin, dir: &Path) -> std::io::Result<PathBuf> {
    let Origin::Url(url) = origin else {
        let Origin::File(p) = origin else {
            unreachable!()
        };
        return Ok(p.clone());
    };
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{url}: the URL names no file; give the metadata's URL (`.../<name>_update.json`)"),
            )
        })?;
    std::fs::create_dir_all(dir)?;
    let meta = origin.read_small(1 << 20)?;
    let sig = origin.sibling(&format!("{name}.sig")).read_small(64)?;
    let path = dir.join(name);
    sdk_common::fsutil::write_atomic(&path, &meta)?;
    sdk_common::fsutil::write_atomic(&dir.join(format!("{name}.sig")), &sig)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_of_files_and_urls() {
        let u = Origin::parse("http://10.0.2.100/ch/os_update.json");
        assert_eq!(
            u.sibling("os_update.bin"),
            Origin::Url("http://10.0.2.100/ch/os_update.bin".into())
        );
        let f = Origin::parse("/var/tmp/v2/os_update.json");
        assert_eq!(
            f.sibling("os_update.bin"),
            Origin::File("/var/tmp/v2/os_update.bin".into())
        );
    }

    #[test]
    fn a_url_is_fetched_with_its_signature() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let t = std::thread::spawn(move || {
            for _ in 0..2 {
                let rq = server.recv().unwrap();
                let body: Vec<u8> = if rq.url().ends_with(".sig") {
                    vec![7; 64]
                } else {
                    b"{}".to_vec()
                };
                rq.respond(tiny_http::Response::from_data(body)).unwrap();
            }
        });
        let d = tempfile::tempdir().unwrap();
        let o = Origin::parse(&format!("http://127.0.0.1:{port}/x/os_update.json"));
        let p = local_metadata(&o, d.path()).unwrap();
        t.join().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        assert_eq!(
            std::fs::read(d.path().join("os_update.json.sig")).unwrap(),
            vec![7; 64]
        );
    }
}
