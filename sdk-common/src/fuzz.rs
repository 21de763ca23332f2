//! Mutation fuzzing of what imports read from archives: OCI `index.json`,
//! manifests and image configs (through `oci::inspect` and a verify
//! of a layout whose documents are mutated), and tar headers (through the
//! hardened extractor into a scratch directory, which must never be left
//! by what it writes). See `mutate`; `SDK_FUZZ_SEED` repeats a run.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::mutate::check;

const LIMIT: Duration = Duration::from_secs(10);

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A one-layer OCI layout; returns (index, manifest, config) bytes.
fn layout(dir: &Path, index: &[u8], manifest: &[u8], config: &[u8], layer: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in [manifest, config, layer] {
        std::fs::write(blobs.join(sha(b)), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), index).unwrap();
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, name, *data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    t.append_link(&mut h, "link", "../../etc/passwd").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    t.append_data(&mut h, "dir/", std::io::empty()).unwrap();
    t.into_inner().unwrap()
}

fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha(config),
        config.len(),
        sha(layer),
        layer.len()
    )
    .into_bytes()
}

fn index_for(manifest: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
        sha(manifest),
        manifest.len()
    )
    .into_bytes()
}

/// Inspect (and, when that passes, verify) a layout made of these.
fn read_layout(index: &[u8], manifest: &[u8], config: &[u8], layer: &[u8]) {
    let d = tempfile::tempdir().unwrap();
    layout(d.path(), index, manifest, config, layer);
    if let Ok(plan) = crate::oci::inspect(d.path()) {
        let _ = crate::oci::verify(&plan, &|_| {});
    }
}

#[test]
fn oci_documents_never_panic() {
    let layer = tar_of(&[("etc/os-release", b"ID=x\n")]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=b"],"User":"sdk","WorkingDir":"/w"}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha(&layer)
    )
    .into_bytes();
    let manifest = manifest_for(&config, &layer);
    let index = index_for(&manifest);
    // Each document mutated in turn; the documents that name it by digest
    // follow, so the reader gets past the digest checks to the parsing.
    let (m, c, l) = (manifest.clone(), config.clone(), layer.clone());
    check("OCI index.json", &[index], 2000, LIMIT, move |i| {
        read_layout(i, &m, &c, &l)
    });
    let (c, l) = (config.clone(), layer.clone());
    check("OCI manifest", &[manifest], 2000, LIMIT, move |m| {
        read_layout(&index_for(m), m, &c, &l)
    });
    check("OCI config", &[config], 2000, LIMIT, move |c| {
        let m = manifest_for(c, &layer);
        read_layout(&index_for(&m), &m, c, &layer)
    });
}

#[test]
fn tar_headers_never_panic_or_write_outside() {
    let seeds = vec![tar_of(&[
        ("a", b"hello"),
        ("dir/b", b"x"),
        (&"n".repeat(150), b"long name"),
    ])];
    check("tar headers", &seeds, 3000, LIMIT, |b| {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let mut x = crate::layer::Extractor::new(&target, crate::layer::Options::tarball());
        let _ = x.apply(b);
        // Nothing beside the target.
        let around: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            around,
            vec![std::ffi::OsString::from("target")],
            "wrote outside"
        );
    });
}
