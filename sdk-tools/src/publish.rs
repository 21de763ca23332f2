//! `publish`: an output set (a folder build_image or build_sysext wrote,
//! with its `manifest.json`) to S3 or any S3-compatible store, through the
//! `rust-s3` crate (sync, rustls; chosen over the AWS SDK because it needs
//! no async runtime in a binary that is also the initramfs init).
//!
//! What it promises:
//! - every file is checked against the manifest's sha256 before a byte
//!   goes out, and each upload's payload sha256 is signed (SigV4), so the
//!   store refuses bytes that are not the ones hashed;
//! - objects carry their sha256 as `x-amz-meta-sha256`; an object already
//!   there with the same size and sha256 is not uploaded again, so a
//!   second publish of the same outputs uploads nothing;
//! - files above [`MULTIPART_THRESHOLD`] go as multipart uploads (aborted
//!   on failure), and `manifest.json` goes last: a set without its
//!   manifest in the store is one that never finished publishing.
//!
//! Where to and as whom, the way the AWS tools read it: the endpoint from
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` or the profile's
//! `endpoint_url` (`~/.aws/config`, `AWS_CONFIG_FILE`), the region from
//! `AWS_REGION` / `AWS_DEFAULT_REGION` or the profile's `region`, the
//! credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`), `AWS_PROFILE`
//! naming the profile.

use std::io::Read;
use std::path::{Path, PathBuf};

use s3::Bucket;
use s3::creds::Credentials;
use s3::region::Region;

/// Files at least this big are sent in parts of this size.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
const META_SHA256: &str = "x-amz-meta-sha256";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The user's to fix (exit 2): the URL, the folder, the credentials.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl sdk_common::error::BadInput for PublishError {
    fn is_bad_input(&self) -> bool {
        matches!(self, PublishError::Usage(_))
    }
}

fn usage(m: impl Into<String>) -> PublishError {
    PublishError::Usage(m.into())
}

/// `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    pub fn parse(s: &str) -> Result<S3Url, PublishError> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            usage(format!(
                "`{s}`: publish to an s3://BUCKET/PREFIX URL (e.g. s3://images/demo)"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(usage(format!(
                "`{s}`: `{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, '-' and '.')"
            )));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The key of `file` of the set `set`.
    pub fn key(&self, set: &str, file: &str) -> String {
        if self.prefix.is_empty() {
            format!("{set}/{file}")
        } else {
            format!("{}/{set}/{file}", self.prefix)
        }
    }
}

/// Where the store is, as the environment and the AWS config file say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub region: String,
    /// None: AWS's own endpoint for the region.
    pub url: Option<String>,
    pub profile: String,
}

/// `key` of section `[section]` in an INI-style AWS config text.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') && l.ends_with(']') {
            inside = l[1..l.len() - 1].trim() == section;
        } else if inside
            && let Some((k, v)) = l.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

impl Endpoint {
    /// Read from `env` (a variable's value) and the config file text.
    pub fn from(env: &dyn Fn(&str) -> Option<String>, config: &str) -> Endpoint {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        let from_file = |k: &str| ini_value(config, &section, k);
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_file("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let url = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| from_file("endpoint_url"))
            .filter(|u| !u.is_empty());
        Endpoint {
            region,
            url,
            profile,
        }
    }

    /// This process's environment and config file.
    pub fn current() -> Endpoint {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/config")));
        let text = path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        Endpoint::from(&env, &text)
    }

    fn shown(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("AWS S3 in {}", self.region))
    }
}

/// What a publish did.
#[derive(Debug, Default)]
pub struct Report {
    pub uploaded: Vec<String>,
    pub unchanged: Vec<String>,
    pub bytes: u64,
    /// `s3://bucket/prefix/set/`.
    pub location: String,
}

/// One file of the set: its name, size and sha256 (hex).
#[derive(Debug, Clone)]
struct Item {
    name: String,
    size: u64,
    sha256: String,
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    sdk_common::fsutil::hash_file(path).map(|(n, sum)| (n, hex::encode(sum)))
}

/// The set's files from its manifest, each checked against it, the
/// manifest itself last; and the manifest's `format` (none: a disk build).
fn items(dir: &Path) -> Result<(Vec<Item>, Option<String>), PublishError> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read(&mpath).map_err(|e| {
        usage(format!(
            "{}: no manifest.json ({e}); publish a folder build_image wrote (e.g. __build__/images/BOARD/latest)",
            dir.display()
        ))
    })?;
    let m: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| usage(format!("{}: not a manifest: {e}", mpath.display())))?;
    let arts = m["artifacts"]
        .as_array()
        .ok_or_else(|| usage(format!("{}: no artifacts list", mpath.display())))?;
    let mut out = Vec::new();
    for a in arts {
        let (Some(name), Some(sum)) = (a["name"].as_str(), a["sha256"].as_str()) else {
            return Err(usage(format!(
                "{}: an artifact without name or sha256",
                mpath.display()
            )));
        };
        if name.contains('/') || name.starts_with('.') {
            return Err(usage(format!(
                "{}: artifact `{name}` is not a file of the folder",
                mpath.display()
            )));
        }
        let (size, have) = hash_file(&dir.join(name))
            .map_err(|e| usage(format!("{}: {e}", dir.join(name).display())))?;
        if have != sum {
            return Err(usage(format!(
                "{}: its sha256 is not the manifest's: the folder changed since it was built; build it again",
                dir.join(name).display()
            )));
        }
        out.push(Item {
            name: name.to_string(),
            size,
            sha256: have,
        });
    }
    let (size, sha256) =
        hash_file(&mpath).map_err(|e| usage(format!("{}: {e}", mpath.display())))?;
    out.push(Item {
        name: "manifest.json".into(),
        size,
        sha256,
    });
    let format = m["format"].as_str().map(str::to_string);
    Ok((out, format))
}

/// What an S3 error response's body says (`<Code>`, `<Message>`).
fn s3_error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        text.split_once(&open)
            .and_then(|(_, r)| r.split_once(&close))
            .map(|(v, _)| v.to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => String::new(),
    }
}

/// An error response, as one line saying what to do.
fn refused(url: &S3Url, ep: &Endpoint, status: u16, body: &[u8]) -> PublishError {
    let why = match s3_error_text(body) {
        t if t.is_empty() => String::new(),
        t => format!(" {t}"),
    };
    let bucket = &url.bucket;
    let at = ep.shown();
    match status {
        403 | 401 => usage(format!(
            "s3://{bucket} at {at} refused the credentials (HTTP {status}{why}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile's in ~/.aws/credentials) to a key that may write there"
        )),
        404 => usage(format!(
            "s3://{bucket} does not exist at {at} (HTTP 404{why}): create the bucket or fix the URL"
        )),
        _ => PublishError::Failed(format!("s3://{bucket} at {at}: HTTP {status}{why}")),
    }
}

fn s3_err(ep: &Endpoint, e: s3::error::S3Error) -> PublishError {
    PublishError::Failed(format!(
        "cannot talk to {} ({e}); is AWS_ENDPOINT_URL right and the store up?",
        ep.shown()
    ))
}

fn bucket(url: &S3Url, ep: &Endpoint) -> Result<Box<Bucket>, PublishError> {
    let creds = Credentials::new(None, None, None, None, Some(&ep.profile)).map_err(|e| {
        usage(format!(
            "no AWS credentials ({e}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them to ~/.aws/credentials"
        ))
    })?;
    let region = match &ep.url {
        Some(u) => Region::Custom {
            region: ep.region.clone(),
            endpoint: u.trim_end_matches('/').to_string(),
        },
        None => ep
            .region
            .parse()
            .map_err(|e| usage(format!("region `{}`: {e}", ep.region)))?,
    };
    let mut b = Bucket::new(&url.bucket, region, creds).map_err(|e| s3_err(ep, e))?;
    // A store of one's own (MinIO, moto, Ceph) is addressed by path.
    if ep.url.is_some() {
        b.set_path_style();
    }
    b.set_request_timeout(Some(std::time::Duration::from_secs(120)));
    Ok(b)
}

/// Whether the store holds `key` as `item` already.
fn holds(b: &Bucket, key: &str, item: &Item) -> bool {
    match b.head_object(key) {
        Ok((h, 200)) => {
            h.content_length == Some(item.size as i64)
                && h.metadata
                    .as_ref()
                    .and_then(|m| m.get("sha256"))
                    .is_some_and(|s| *s == item.sha256)
        }
        _ => false,
    }
}

fn upload(
    b: &Bucket,
    url: &S3Url,
    ep: &Endpoint,
    key: &str,
    path: &Path,
    item: &Item,
) -> Result<(), PublishError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        META_SHA256,
        item.sha256
            .parse()
            .map_err(|_| PublishError::Failed("a sha256 header".into()))?,
    );
    let ctype = "application/octet-stream";
    let io = |e: std::io::Error| PublishError::Failed(format!("read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    if item.size < MULTIPART_THRESHOLD {
        let mut data = Vec::with_capacity(item.size as usize);
        f.read_to_end(&mut data).map_err(io)?;
        let r = b
            .put_object_with_content_type_and_headers(key, &data, ctype, Some(headers))
            .map_err(|e| s3_err(ep, e))?;
        if r.status_code() >= 300 {
            return Err(refused(url, ep, r.status_code(), r.as_slice()));
        }
        return Ok(());
    }
    let with_meta = b.with_extra_headers(headers).map_err(|e| s3_err(ep, e))?;
    let up = with_meta
        .initiate_multipart_upload(key, ctype)
        .map_err(|e| match e {
            s3::error::S3Error::HttpFailWithBody(status, body) => {
                refused(url, ep, status, body.as_bytes())
            }
            e => s3_err(ep, e),
        })?;
    let result = (|| {
        let mut parts = Vec::new();
        let mut buf = vec![0u8; MULTIPART_THRESHOLD as usize];
        let mut number = 1u32;
        loop {
            let mut n = 0;
            while n < buf.len() {
                let k = f.read(&mut buf[n..]).map_err(io)?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            let part = b
                .put_multipart_chunk(&buf[..n], key, number, &up.upload_id, ctype)
                .map_err(|e| s3_err(ep, e))?;
            parts.push(part);
            number += 1;
            if n < buf.len() {
                break;
            }
        }
        match b.complete_multipart_upload(key, &up.upload_id, parts) {
            Ok(_) => Ok(()),
            // Stores that answer 200 with another root element than AWS's
            // (moto's CompleteMultipartUploadResponse): the HEAD after the
            // upload says whether the object is there.
            Err(s3::error::S3Error::HttpFailWithBody(200, _)) => Ok(()),
            Err(e) => Err(s3_err(ep, e)),
        }
    })();
    if result.is_err() {
        let _ = b.abort_upload(key, &up.upload_id);
    }
    result
}

/// Publish the set in `dir` to `url`: `<prefix>/<set>/<file>`, the set
/// named after the folder (`latest` resolved), under `<format>/` for a
/// netboot set or ISO (as they are in `__build__/images/<board>/`).
pub fn publish(dir: &Path, url: &S3Url, ep: &Endpoint) -> Result<Report, PublishError> {
    let real = std::fs::canonicalize(dir).map_err(|e| {
        usage(format!(
            "{}: {e}; give a folder build_image wrote (e.g. __build__/images/BOARD/latest)",
            dir.display()
        ))
    })?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| usage(format!("{}: not a build folder", dir.display())))?;
    let (items, format) = items(&real)?;
    let set = match format.as_deref() {
        None | Some("disk") => name,
        Some(f) => format!("{f}/{name}"),
    };
    let b = bucket(url, ep)?;
    let mut report = Report {
        location: format!("s3://{}/{}", url.bucket, url.key(&set, "")),
        ..Report::default()
    };
    for item in &items {
        let key = url.key(&set, &item.name);
        if holds(&b, &key, item) {
            report.unchanged.push(item.name.clone());
            continue;
        }
        upload(&b, url, ep, &key, &real.join(&item.name), item)?;
        // What the store holds now is what was sent.
        if !holds(&b, &key, item) {
            return Err(PublishError::Failed(format!(
                "s3://{}/{key}: the store does not hold the {} bytes with sha256 {} just sent",
                url.bucket, item.size, item.sha256
            )));
        }
        eprintln!("publish: {} ({} bytes)", item.name, item.size);
        report.uploaded.push(item.name.clone());
        report.bytes += item.size;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let u = S3Url::parse("s3://images/demo/amd64/").unwrap();
        assert_eq!(u.bucket, "images");
        assert_eq!(
            u.key("developer-1.0.0-a1", "x.bin"),
            "demo/amd64/developer-1.0.0-a1/x.bin"
        );
        let u = S3Url::parse("s3://images").unwrap();
        assert_eq!(u.key("s", "f"), "s/f");
        for bad in ["images/x", "s3://", "s3://Upper/x", "s3://ab"] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_endpoint_comes_from_the_environment_then_the_config_file() {
        let config = "[default]\nregion = eu-west-1\n\n[profile lab]\nregion=lab-1\nendpoint_url = http://127.0.0.1:9000\n";
        let none = |_: &str| None;
        let e = Endpoint::from(&none, config);
        assert_eq!((e.region.as_str(), e.url.as_deref()), ("eu-west-1", None));
        let lab = |k: &str| (k == "AWS_PROFILE").then(|| "lab".to_string());
        let e = Endpoint::from(&lab, config);
        assert_eq!(
            (e.region.as_str(), e.url.as_deref()),
            ("lab-1", Some("http://127.0.0.1:9000"))
        );
        let env = |k: &str| match k {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:5000".to_string()),
            "AWS_REGION" => Some("us-west-2".to_string()),
            _ => None,
        };
        let e = Endpoint::from(&env, config);
        assert_eq!(
            (e.region.as_str(), e.url.as_deref()),
            ("us-west-2", Some("http://127.0.0.1:5000"))
        );
        assert_eq!(Endpoint::from(&none, "").region, "us-east-1");
    }

    #[test]
    fn error_bodies_become_one_line() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The key does not exist.</Message></Error>";
        assert_eq!(
            s3_error_text(body),
            "InvalidAccessKeyId: The key does not exist."
        );
        let u = S3Url::parse("s3://images/x").unwrap();
        let ep = Endpoint::from(&|_: &str| None, "");
        let e = refused(&u, &ep, 403, body);
        assert!(matches!(e, PublishError::Usage(_)));
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    }

    #[test]
    fn a_folder_that_changed_since_its_manifest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"abc").unwrap();
        let m = serde_json::json!({"artifacts": [{"name": "a.bin", "size": 3,
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]});
        std::fs::write(d.path().join("manifest.json"), m.to_string()).unwrap();
        let (it, format) = items(d.path()).unwrap();
        assert_eq!(format, None);
        assert_eq!(it.len(), 2);
        assert_eq!(it[1].name, "manifest.json");
        std::fs::write(d.path().join("a.bin"), b"abd").unwrap();
        let e = items(d.path()).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
        assert!(items(&d.path().join("nope")).is_err());
    }
}
