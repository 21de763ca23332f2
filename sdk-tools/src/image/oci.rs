//! The OS tree as an OCI image archive (`build_image --oci OUT.tar`) and
//! back (`build_image --from-oci IN.tar`).
//!
//! Export writes one gzip layer holding the installed tree with the owners
//! and modes of the package metadata, a config and a manifest, packed as an
//! OCI image layout in a tar (what `skopeo inspect oci-archive:OUT.tar`
//! reads and umoci/podman can layer on). Everything is deterministic: tar
//! headers carry SOURCE_DATE_EPOCH and numeric owners, gzip has no name or
//! time, and the single annotation keeps index.json stable.
//!
//! Import reads such an archive (any OCI archive or layout, or a
//! docker-save tarball) through sdk-common's image reader, which checks
//! every blob against its digest, and applies the layers in order with
//! whiteouts onto a staging tree.
//!
//! Spec: <https://github.com/opencontainers/image-spec> (image-layout.md,
//! manifest.md, config.md, layer.md for whiteouts).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use super::tree::{Tree, TreeError};
use super::{IoError, io_err};
use sdk_common::oci::{LayerSink, SinkError, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}: {msg}", path.display())]
    Bad { path: PathBuf, msg: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("OCI metadata: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Import(#[from] sdk_common::oci::ImportError),
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.len)
    }
}

fn sha256_digest(hex: &str) -> Result<Digest, OciError> {
    Ok(format!("sha256:{hex}").parse()?)
}

/// What the exported image says about itself.
pub struct ExportInfo<'a> {
    /// GOARCH name (`amd64`, `arm64`).
    pub arch: &'a str,
    /// The tag recorded as `org.opencontainers.image.ref.name`.
    pub tag: &'a str,
    pub epoch: u64,
    /// Labels for the image config (OS id, version, board).
    pub labels: Vec<(String, String)>,
}

/// Write `tree` as a one-layer OCI image archive at `out` (atomically:
/// a temporary file next to it, then a rename). Returns the manifest
/// digest.
pub fn export(tree: &Tree, out: &Path, info: &ExportInfo<'_>) -> Result<String, OciError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".oci-")
        .tempdir_in(dir)
        .map_err(io_err("create a temporary directory in", dir))?;
    let layer_path = work.path().join("layer");
    let layer = write_layer(tree, &layer_path, info.epoch)?;
    let config = Blob::json(&image_config(info, &layer.diff_id)?)?;
    let manifest = Blob::json(&image_manifest(&config, &layer)?)?;
    let index_json = canonical_json(&image_index(&manifest, info.tag)?)?;
    let tmp_out = work.path().join("archive.tar");
    write_archive(
        &tmp_out,
        info.epoch,
        &index_json,
        &config,
        &manifest,
        &layer,
        &layer_path,
    )?;
    fs::rename(&tmp_out, out).map_err(io_err("rename into place", out))?;
    Ok(format!("sha256:{}", manifest.digest))
}

/// A blob of the image: its sha256 (hex), size, and bytes when small.
struct Blob {
    digest: String,
    size: u64,
    bytes: Vec<u8>,
}

impl Blob {
    fn json(v: &impl serde::Serialize) -> Result<Blob, OciError> {
        let bytes = canonical_json(v)?;
        Ok(Blob {
            digest: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            bytes,
        })
    }
}

/// The one layer, gzip-compressed, written to `path`.
struct Layer {
    digest: String,
    size: u64,
    /// sha256 of the uncompressed tar.
    diff_id: String,
}

/// The layer: tar -> (diff_id hasher) -> gzip -> (digest hasher) -> file.
fn write_layer(tree: &Tree, layer_path: &Path, epoch: u64) -> Result<Layer, OciError> {
    let file = File::create(layer_path).map_err(io_err("create", layer_path))?;
    let compressed = HashWriter::new(BufWriter::new(file));
    let gz = flate2::GzBuilder::new().write(compressed, flate2::Compression::new(6));
    let diff = HashWriter::new(gz);
    let diff = tree.write_tar(diff, epoch)?;
    let (gz, diff_id, _) = diff.finish();
    let compressed = gz.finish().map_err(io_err("compress", layer_path))?;
    let (mut file, layer_digest, layer_size) = compressed.finish();
    file.flush().map_err(io_err("write", layer_path))?;
    drop(file);

    Ok(Layer {
        digest: layer_digest,
        size: layer_size,
        diff_id,
    })
}

/// The image config: architecture, labels, the layer's diff id, and a
/// history line, all dated SOURCE_DATE_EPOCH.
fn image_config(
    info: &ExportInfo<'_>,
    diff_id: &str,
) -> Result<oci_spec::image::ImageConfiguration, OciError> {
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(info.epoch),
    )
    .to_string();
    let labels: HashMap<String, String> = info.labels.iter().cloned().collect();
    Ok(ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::from(info.arch))
        .os(Os::Linux)
        .config(ConfigBuilder::default().labels(labels).build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{diff_id}")])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(created)
                .created_by(format!("sdk-tools build_image --oci ({})", info.tag))
                .build()?,
        ])
        .build()?)
}

fn image_manifest(
    config: &Blob,
    layer: &Layer,
) -> Result<oci_spec::image::ImageManifest, OciError> {
    Ok(ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(sha256_digest(&config.digest)?)
                .size(config.size)
                .build()?,
        )
        .layers(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayerGzip)
                .digest(sha256_digest(&layer.digest)?)
                .size(layer.size)
                .build()?,
        ])
        .build()?)
}

fn image_index(manifest: &Blob, tag: &str) -> Result<oci_spec::image::ImageIndex, OciError> {
    Ok(ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(sha256_digest(&manifest.digest)?)
                .size(manifest.size)
                .annotations(HashMap::from([(
                    "org.opencontainers.image.ref.name".to_string(),
                    tag.to_string(),
                )]))
                .build()?,
        ])
        .build()?)
}

/// The OCI layout as a tar at `tmp_out`: `oci-layout`, `index.json`, the
/// blobs by digest in a fixed order, every header dated `epoch`; synced.
fn write_archive(
    tmp_out: &Path,
    epoch: u64,
    index_json: &[u8],
    config: &Blob,
    manifest: &Blob,
    layer: &Layer,
    layer_path: &Path,
) -> Result<(), OciError> {
    let f = File::create(tmp_out).map_err(io_err("create", tmp_out))?;
    let mut b = tar::Builder::new(BufWriter::new(f));
    let add = |b: &mut tar::Builder<BufWriter<File>>,
               name: &str,
               size: u64,
               data: &mut dyn Read,
               dir: bool|
     -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(size);
        }
        b.append_data(&mut h, name, data)
    };
    let werr = io_err("write", tmp_out);
    (|| -> io::Result<()> {
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(
            &mut b,
            "oci-layout",
            layout.len() as u64,
            &mut &layout[..],
            false,
        )?;
        add(
            &mut b,
            "index.json",
            index_json.len() as u64,
            &mut &index_json[..],
            false,
        )?;
        add(&mut b, "blobs/", 0, &mut io::empty(), true)?;
        add(&mut b, "blobs/sha256/", 0, &mut io::empty(), true)?;
        let mut blobs: Vec<(String, Box<dyn Read>, u64)> = vec![
            (
                config.digest.clone(),
                Box::new(&config.bytes[..]),
                config.size,
            ),
            (
                manifest.digest.clone(),
                Box::new(&manifest.bytes[..]),
                manifest.size,
            ),
            (
                layer.digest.clone(),
                Box::new(BufReader::new(File::open(layer_path)?)),
                layer.size,
            ),
        ];
        blobs.sort_by(|a, b| a.0.cmp(&b.0));
        for (digest, mut r, size) in blobs {
            add(
                &mut b,
                &format!("blobs/sha256/{digest}"),
                size,
                &mut r,
                false,
            )?;
        }
        let mut w = b.into_inner()?;
        w.flush()?;
        w.get_ref().sync_all()
    })()
    .map_err(werr)?;
    Ok(())
}

/// JSON with sorted keys, for stable bytes: serde_json writes map keys in
/// order only for a BTreeMap, and oci-spec's labels and annotations are
/// HashMaps, so everything goes through `serde_json::Value` (sorted maps).
fn canonical_json(v: &impl serde::Serialize) -> Result<Vec<u8>, OciError> {
    let value = serde_json::to_value(v).map_err(|e| OciError::Bad {
        path: PathBuf::from("json"),
        msg: e.to_string(),
    })?;
    serde_json::to_vec(&value).map_err(|e| OciError::Bad {
        path: PathBuf::from("json"),
        msg: e.to_string(),
    })
}

/// What an imported archive was.
#[derive(Debug, Clone)]
pub struct Imported {
    /// GOARCH of the image config.
    pub arch: String,
    pub layers: usize,
    /// The manifest digest (`sha256:...`).
    pub manifest: String,
    pub labels: HashMap<String, String>,
}

/// Apply the image in `archive` (an OCI archive or layout, or a
/// docker-save tarball) onto `tree`: sdk-common's image reader picks the
/// manifest, checks every blob against its digest and streams the layers,
/// with whiteouts, into the staging table.
pub fn import(archive: &Path, tree: &mut Tree) -> Result<Imported, OciError> {
    let plan = sdk_common::oci::inspect(archive)?;
    if plan.kind == SourceKind::Tarball {
        return Err(OciError::Bad {
            path: archive.to_path_buf(),
            msg: "is a plain tarball, not an image archive (make one with `build_image --oci` or `skopeo copy ... oci-archive:FILE`)".into(),
        });
    }
    let mut sink = TreeSink(tree);
    sdk_common::oci::apply_layers(&plan, &mut sink, &|_| {})?;
    Ok(Imported {
        arch: plan.arch.clone().unwrap_or_default(),
        layers: plan.layer_count(),
        manifest: format!("sha256:{}", plan.digest.clone().unwrap_or_default()),
        labels: plan.labels,
    })
}

/// The staging-table sink: layers become entries of the image tree.
struct TreeSink<'a>(&'a mut Tree);

impl LayerSink for TreeSink<'_> {
    fn apply_layer(&mut self, name: &str, stream: &mut dyn Read) -> Result<(), SinkError> {
        self.0
            .extract_tar(stream, &format!("layer {name}"), true)
            .map_err(|e| {
                // A tree refuses what is wrong with the layer (devices,
                // bad paths, conflicts); an I/O error is the machine's,
                // or a stream that is not a tar.
                let bad = !matches!(&e, TreeError::Io(io) if io.op != "read archive");
                SinkError::new(bad, e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_deterministic_and_imports_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.add_file(
            "usr/bin/tool",
            &b"#!/bin/sh\n"[..],
            0o4755,
            0,
            0,
            "p",
            false,
        )
        .unwrap();
        t.add_symlink("bin", "usr/bin", 0, 0, "p", false).unwrap();
        t.add_file("etc/conf", &b"k=v\n"[..], 0o640, 0, 7, "p", false)
            .unwrap();
        let info = ExportInfo {
            arch: "amd64",
            tag: "1.0.0",
            epoch: 1_700_000_000,
            labels: vec![("org.example.os".into(), "demo".into())],
        };
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let da = export(&t, &a, &info).unwrap();
        let db = export(&t, &b, &info).unwrap();
        assert_eq!(da, db);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let mut u = Tree::new(&dir.path().join("u")).unwrap();
        let got = import(&a, &mut u).unwrap();
        assert_eq!(got.arch, "amd64");
        assert_eq!(got.layers, 1);
        assert_eq!(got.manifest, da);
        assert_eq!(t.digest(), u.digest());
    }

    #[test]
    fn corrupt_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.add_file("usr/x", &b"x"[..], 0o644, 0, 0, "p", false)
            .unwrap();
        let a = dir.path().join("a.tar");
        export(
            &t,
            &a,
            &ExportInfo {
                arch: "arm64",
                tag: "t",
                epoch: 0,
                labels: vec![],
            },
        )
        .unwrap();
        // Flip a byte inside the last blob's data (the archive ends with
        // two zero blocks and padding).
        let mut bytes = fs::read(&a).unwrap();
        let pos = bytes.iter().rposition(|&b| b != 0).unwrap();
        bytes[pos] ^= 0xff;
        fs::write(&a, bytes).unwrap();
        let mut u = Tree::new(&dir.path().join("u")).unwrap();
        let err = import(&a, &mut u).unwrap_err().to_string();
        assert!(
            err.contains("digest mismatch") || err.contains("manifest") || err.contains("config"),
            "{err}"
        );
    }
}
