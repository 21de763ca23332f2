//! Signed update metadata: what an update payload is (the OS, version and
//! board it belongs to, its size and sha256, the dm-verity parameters of
//! the USR filesystem it carries) in a small JSON file, signed with
//! ed25519. `build_image` writes `<name>_update.json` and its detached
//! signature `<name>_update.json.sig` (the 64 raw signature bytes over the
//! JSON file's exact bytes, what `openssl pkeyutl -verify -rawin` checks)
//! beside the payload; an updater trusts the public keys built into USR
//! (`/usr/share/sdk-update/keys/*.pem`, covered by dm-verity).
//!
//! Keys are PKCS#8 / SPKI PEM files, as `openssl genpkey -algorithm
//! ed25519` writes them. A key's id is the first 16 hex digits of the
//! sha256 of its 32 public key bytes.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the OS keeps the public keys it trusts (inside USR).
pub const TRUSTED_KEYS_DIR: &str = "usr/share/sdk-update/keys";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{path}: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("{0}: not valid update metadata: {1}")]
    BadMetadata(PathBuf, String),
    #[error(
        "{0}: the signature does not match any trusted key ({1}); the metadata was changed or signed by a key this OS does not trust"
    )]
    BadSignature(PathBuf, String),
    #[error("{path}: {why}")]
    PayloadMismatch { path: PathBuf, why: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl sdk_common::error::BadInput for UpdateError {
    fn is_bad_input(&self) -> bool {
        !matches!(self, UpdateError::Io { .. })
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError {
    let path = path.to_path_buf();
    move |source| UpdateError::Io { what, path, source }
}

/// The payload part of the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Payload {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The dm-verity parameters of the USR filesystem in the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Usr {
    pub root_hash: String,
    pub salt: String,
    pub hash_offset: u64,
    pub data_blocks: u64,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub hash_algorithm: String,
}

/// `<name>_update.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metadata {
    pub format: u32,
    pub os_id: String,
    pub version: String,
    pub board: String,
    pub arch: String,
    pub payload: Payload,
    pub usr: Usr,
    /// Id of the key that signed it.
    pub key_id: String,
    /// Signed with a repo's generated development key (never for release).
    pub development_key: bool,
}

impl Metadata {
    /// The bytes that are signed and written (pretty JSON, fixed order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("plain data serializes");
        v.push(b'\n');
        v
    }
}

/// A key id: 16 hex digits of the sha256 of the public key bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A signing key and where it came from.
#[derive(Debug)]
pub struct SignKey {
    pub key: SigningKey,
    pub path: PathBuf,
    pub development: bool,
}

impl SignKey {
    pub fn id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        public_pem(&self.key.verifying_key())
    }

    /// Detached signature over `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }
}

pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an ed25519 key encodes")
}

/// Read a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
pub fn load_signing_key(path: &Path, development: bool) -> Result<SignKey, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(|e| UpdateError::BadKey {
        path: path.to_path_buf(),
        why: format!("cannot read the signing key: {e}"),
    })?;
    let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| UpdateError::BadKey {
        path: path.to_path_buf(),
        why: format!(
            "not an ed25519 private key in PKCS#8 PEM ({e}); make one with `openssl genpkey -algorithm ed25519 -out FILE`"
        ),
    })?;
    Ok(SignKey {
        key,
        path: path.to_path_buf(),
        development,
    })
}

/// The repo's development key in `dir` (private `update-dev.key`, public
/// `update-dev.pem` beside it), made once from the kernel's random
/// numbers when missing.
pub fn development_key(dir: &Path) -> Result<SignKey, UpdateError> {
    use std::io::Read;
    let path = dir.join("update-dev.key");
    if path.exists() {
        return load_signing_key(&path, true);
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io("read", Path::new("/dev/urandom")))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an ed25519 key encodes");
    // Private: 0600, written whole under a temporary name.
    let tmp = dir.join(format!(".update-dev.key.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(pem.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    let k = SignKey {
        key,
        path: path.clone(),
        development: true,
    };
    let public = dir.join("update-dev.pem");
    sdk_common::fsutil::write_atomic(&public, k.public_pem().as_bytes())
        .map_err(io("write", &public))?;
    Ok(k)
}

/// The `*.pem` file names of a key folder, sorted (none when it does not
/// exist).
pub fn key_files(dir: &Path) -> Result<Vec<String>, UpdateError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pem"))
        .collect();
    names.sort();
    Ok(names)
}

/// Public keys in PEM files: every `*.pem` of `dir`, as (file name, key).
pub fn load_public_keys(dir: &Path) -> Result<Vec<(String, VerifyingKey)>, UpdateError> {
    let mut out = Vec::new();
    for n in key_files(dir)? {
        let p = dir.join(&n);
        let text = std::fs::read_to_string(&p).map_err(io("read", &p))?;
        let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| UpdateError::BadKey {
            path: p.clone(),
            why: format!(
                "not an ed25519 public key in PEM ({e}); write it with `openssl pkey -pubout`"
            ),
        })?;
        out.push((n, key));
    }
    Ok(out)
}

/// Check `meta_path` against its `.sig` and the trusted `keys`, then (when
/// given) the payload's size and sha256. Returns the metadata and the id
/// of the key that signed it.
pub fn verify(
    meta_path: &Path,
    keys: &[(String, VerifyingKey)],
    payload: Option<&Path>,
) -> Result<(Metadata, String), UpdateError> {
    let bytes = std::fs::read(meta_path).map_err(io("read", meta_path))?;
    let sig_path = sig_path(meta_path);
    let sig = std::fs::read(&sig_path).map_err(io("read", &sig_path))?;
    let sig = <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| {
        UpdateError::BadSignature(
            meta_path.to_path_buf(),
            format!("{} is not a 64-byte ed25519 signature", sig_path.display()),
        )
    })?;
    let (meta, signer) = verify_bytes(meta_path, &bytes, &sig, keys)?;
    if let Some(p) = payload {
        check_payload(&meta, p)?;
    }
    Ok((meta, signer))
}

/// The payload at `p` is the one `meta` describes (size and sha256).
/// The payload read from `r` (named `p` in errors) against the signed
/// size and sha256.
pub fn check_payload_stream(
    meta: &Metadata,
    p: &Path,
    mut r: impl std::io::Read,
) -> Result<(), UpdateError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io("read", p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    compare_payload(meta, p, size, h.finalize().into())
}

fn compare_payload(meta: &Metadata, p: &Path, size: u64, sum: [u8; 32]) -> Result<(), UpdateError> {
    if size != meta.payload.size || hex::encode(sum) != meta.payload.sha256 {
        return Err(UpdateError::PayloadMismatch {
            path: p.to_path_buf(),
            why: format!(
                "is {size} bytes with sha256 {}, the signed metadata says {} bytes with sha256 {}; it was changed or is another payload",
                hex::encode(sum),
                meta.payload.size,
                meta.payload.sha256
            ),
        });
    }
    Ok(())
}

pub fn check_payload(meta: &Metadata, p: &Path) -> Result<(), UpdateError> {
    let (size, sum) = sdk_common::fsutil::hash_file(p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            UpdateError::PayloadMismatch {
                path: p.to_path_buf(),
                why: format!(
                    "does not exist; give the payload {} with --payload, or put it beside the metadata",
                    meta.payload.name
                ),
            }
        } else {
            io("read", p)(e)
        }
    })?;
    compare_payload(meta, p, size, sum)
}

/// Metadata `bytes` signed with `sig` by one of `keys` (`origin` names
/// where they came from in errors).
pub fn verify_bytes(
    origin: &Path,
    bytes: &[u8],
    sig: &[u8; 64],
    keys: &[(String, VerifyingKey)],
) -> Result<(Metadata, String), UpdateError> {
    let meta_path = origin;
    let sig = Signature::from_bytes(sig);
    let signer = keys
        .iter()
        .find(|(_, k)| k.verify(bytes, &sig).is_ok())
        .map(|(_, k)| key_id(k))
        .ok_or_else(|| {
            let ids: Vec<String> = keys.iter().map(|(_, k)| key_id(k)).collect();
            UpdateError::BadSignature(
                meta_path.to_path_buf(),
                if ids.is_empty() {
                    "no trusted keys".into()
                } else {
                    format!("trusted: {}", ids.join(", "))
                },
            )
        })?;
    let meta: Metadata = serde_json::from_slice(bytes)
        .map_err(|e| UpdateError::BadMetadata(meta_path.to_path_buf(), e.to_string()))?;
    Ok((meta, signer))
}

/// A slot's record: the signed metadata of what the USR partition holds,
/// in the partition's last [`RECORD_BYTES`] (past the filesystem and its
/// hash tree). The init reads it to boot a slot the kernel command line
/// does not name, checking the signature with the keys the initramfs
/// carries; the update agent writes it last, after the payload verified.
///
/// Layout: `SDKSLOT1`, the metadata's length and the signature's (u32
/// little-endian each), the metadata's exact bytes, the 64 signature bytes,
/// zeros.
pub const RECORD_BYTES: u64 = 64 * 1024;
const RECORD_MAGIC: &[u8; 8] = b"SDKSLOT1";

/// Where a partition of `size` bytes keeps its record.
pub fn record_offset(size: u64) -> u64 {
    size - RECORD_BYTES
}

/// The record block for metadata `bytes` and its signature.
pub fn encode_record(bytes: &[u8], sig: &[u8; 64]) -> Result<Vec<u8>, String> {
    if 16 + bytes.len() + 64 > RECORD_BYTES as usize {
        return Err(format!(
            "the update metadata is {} bytes, more than a slot record holds",
            bytes.len()
        ));
    }
    let mut b = vec![0u8; RECORD_BYTES as usize];
    b[..8].copy_from_slice(RECORD_MAGIC);
    b[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    b[12..16].copy_from_slice(&64u32.to_le_bytes());
    b[16..16 + bytes.len()].copy_from_slice(bytes);
    b[16 + bytes.len()..16 + bytes.len() + 64].copy_from_slice(sig);
    Ok(b)
}

/// The metadata bytes and signature of a record block; None when the
/// block holds no record (an empty slot, or one being written).
pub fn decode_record(b: &[u8]) -> Option<(Vec<u8>, [u8; 64])> {
    if b.len() < 16 || &b[..8] != RECORD_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(b[8..12].try_into().ok()?) as usize;
    let m = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    if m != 64 || 16 + n + m > b.len() {
        return None;
    }
    let sig: [u8; 64] = b[16 + n..16 + n + 64].try_into().ok()?;
    Some((b[16..16 + n].to_vec(), sig))
}

/// `<metadata>.sig`.
pub fn sig_path(meta: &Path) -> PathBuf {
    let mut s = meta.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key_id: &str) -> Metadata {
        Metadata {
            format: 1,
            os_id: "demo".into(),
            version: "1.0.0".into(),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            payload: Payload {
                name: "p.bin".into(),
                size: 3,
                sha256: hex::encode(Sha256::digest(b"abc")),
            },
            usr: Usr {
                root_hash: "00".repeat(32),
                salt: "11".repeat(32),
                hash_offset: 4096,
                data_blocks: 1,
                data_block_size: 4096,
                hash_block_size: 4096,
                hash_algorithm: "sha256".into(),
            },
            key_id: key_id.into(),
            development_key: true,
        }
    }

    #[test]
    fn signed_metadata_verifies_and_tampering_does_not() {
        let d = tempfile::tempdir().unwrap();
        let k = development_key(&d.path().join("keys")).unwrap();
        // Made once: loading again gives the same key.
        assert_eq!(
            development_key(&d.path().join("keys")).unwrap().id(),
            k.id()
        );
        let keys = load_public_keys(&d.path().join("keys")).unwrap();
        assert_eq!(keys.len(), 1, "the public half is beside the private key");
        let m = d.path().join("u.json");
        let bytes = meta(&k.id()).to_bytes();
        std::fs::write(&m, &bytes).unwrap();
        std::fs::write(sig_path(&m), k.sign(&bytes)).unwrap();
        let payload = d.path().join("p.bin");
        std::fs::write(&payload, b"abc").unwrap();
        let (got, signer) = verify(&m, &keys, Some(&payload)).unwrap();
        assert_eq!((got, signer), (meta(&k.id()), k.id()));
        // One byte of the payload.
        std::fs::write(&payload, b"abd").unwrap();
        assert!(matches!(
            verify(&m, &keys, Some(&payload)),
            Err(UpdateError::PayloadMismatch { .. })
        ));
        // One byte of the metadata.
        let mut t = bytes.clone();
        t[20] ^= 1;
        std::fs::write(&m, &t).unwrap();
        assert!(matches!(
            verify(&m, &keys, None),
            Err(UpdateError::BadSignature(..))
        ));
        // Another key.
        std::fs::write(&m, &bytes).unwrap();
        let other = development_key(&d.path().join("other")).unwrap();
        let keys = load_public_keys(&d.path().join("other")).unwrap();
        assert_ne!(other.id(), k.id());
        assert!(matches!(
            verify(&m, &keys, None),
            Err(UpdateError::BadSignature(..))
        ));
    }
}
