//! Reading images, for both binaries: OCI image layouts (directory or
//! tar), `docker save` tarballs and plain rootfs tarballs (plain, gzip,
//! zstd). Owns format detection, manifest/config parsing (oci-spec
//! types), digest verification and streaming layers, decompressed in
//! their own thread, into a [`LayerSink`]: a directory through the
//! hardened [`crate::layer`] applier ([`unpack`]; sdk-run's image store),
//! or sdk-tools' staging table (`build_image --from-oci`). It does not
//! decide where images live, nor enter a user namespace.
//!
//! Spec: <https://github.com/opencontainers/image-spec> (image-layout.md,
//! image-index.md, manifest.md, config.md, layer.md).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::compress::{self, Compression};
use crate::layer::{ExtractError, Extractor, Options, Report};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is not what it claims or is damaged: the user's to fix.
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpacking {path}: {source}")]
    Extract {
        path: PathBuf,
        #[source]
        source: SinkError,
    },
}

impl crate::error::BadInput for ImportError {
    fn is_bad_input(&self) -> bool {
        match self {
            ImportError::Bad { .. } => true,
            ImportError::Extract { source, .. } => source.bad_input,
            ImportError::Io { .. } => false,
        }
    }
}

/// Why a [`LayerSink`] could not apply a layer. Transparent: it prints as
/// the sink's own error and hands out that error's sources.
#[derive(Debug)]
pub struct SinkError {
    /// The layer itself is at fault (not a tar, a name or entry the sink
    /// refuses): the input's to fix, not the machine's.
    pub bad_input: bool,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

impl SinkError {
    pub fn new(bad_input: bool, e: impl std::error::Error + Send + Sync + 'static) -> SinkError {
        SinkError {
            bad_input,
            source: Box::new(e),
        }
    }
}

/// Where the layers of an image go, one decompressed tar stream at a
/// time, in order. Layer semantics (whiteouts or not) are the sink's:
/// [`ImagePlan::kind`] says whether the input is a plain tarball.
pub trait LayerSink {
    /// Apply one layer; `name` names it in messages.
    fn apply_layer(&mut self, name: &str, stream: &mut dyn Read) -> Result<(), SinkError>;
}

/// The directory sink: the hardened extractor.
impl LayerSink for Extractor {
    fn apply_layer(&mut self, _name: &str, stream: &mut dyn Read) -> Result<(), SinkError> {
        self.apply(stream).map_err(|e| {
            SinkError::new(
                matches!(e, ExtractError::Read(_) | ExtractError::NameTooLong(_)),
                e,
            )
        })
    }
}

fn bad(path: &Path, what: impl Into<String>) -> ImportError {
    ImportError::Bad {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn ioerr(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a container needs from an image's config on enter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RuntimeConfig {
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The kind of input, as detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    OciArchive,
    OciLayout,
    DockerSave,
    Tarball,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::OciArchive => "oci-archive",
            SourceKind::OciLayout => "oci-layout",
            SourceKind::DockerSave => "docker-save",
            SourceKind::Tarball => "tarball",
        }
    }
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
enum Loc {
    File(PathBuf),
    /// A member of an (uncompressed) tar archive.
    Member {
        archive: PathBuf,
        offset: u64,
        size: u64,
    },
}

impl Loc {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Loc::File(p) => Box::new(File::open(p)?),
            Loc::Member {
                archive,
                offset,
                size,
            } => {
                let mut f = File::open(archive)?;
                f.seek(SeekFrom::Start(*offset))?;
                Box::new(f.take(*size))
            }
        })
    }

    fn read_all(&self, what: &Path) -> Result<Vec<u8>, ImportError> {
        let mut v = Vec::new();
        self.open()
            .and_then(|mut r| r.read_to_end(&mut v))
            .map_err(ioerr(what))?;
        Ok(v)
    }
}

/// Expected digest of a layer's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// sha256 (hex) of the stored (maybe compressed) blob.
    Blob(String),
    /// sha256 (hex) of the uncompressed tar (a docker/OCI diff id).
    DiffId(String),
    None,
}

#[derive(Debug, Clone)]
struct Layer {
    loc: Loc,
    name: String,
    size: u64,
    check: Check,
}

/// A parsed image, ready to unpack.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub path: PathBuf,
    pub kind: SourceKind,
    /// Content address (sha256 hex): the OCI manifest digest, the docker
    /// image id (config digest), or for a tarball the digest of its bytes
    /// (known only after unpacking).
    pub digest: Option<String>,
    pub config: RuntimeConfig,
    /// The architecture the image config names (GOARCH: `amd64`,
    /// `arm64`); `None` for a plain tarball.
    pub arch: Option<String>,
    /// The image config's labels.
    pub labels: HashMap<String, String>,
    /// Tag names recorded in the input (docker RepoTags, OCI ref names).
    pub ref_names: Vec<String>,
    layers: Vec<Layer>,
    /// A compressed image archive, decompressed once into a temporary
    /// file the layers are read from; removed when the last plan goes.
    _spool: Option<std::sync::Arc<tempfile::TempPath>>,
}

impl ImagePlan {
    /// Bytes to read when unpacking (for progress).
    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }
}

/// The members of a tar archive, by normalised name.
struct ArchiveIndex {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
    /// The first member's name (of any type): image archives announce
    /// themselves there.
    first: Option<String>,
}

impl ArchiveIndex {
    fn read(path: &Path) -> Result<ArchiveIndex, ImportError> {
        let f = File::open(path).map_err(ioerr(path))?;
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut first = None;
        let entries = ar
            .entries_with_seek()
            .map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| bad(path, format!("damaged or truncated tar archive: {e}")))?;
            if first.is_none() {
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                first = Some(name.trim_start_matches("./").to_string());
            }
            if e.header().entry_type().is_file() {
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let name = name.trim_start_matches("./").to_string();
                members.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        // A member cut short by truncation ends past the file's end.
        let len = std::fs::metadata(path).map_err(ioerr(path))?.len();
        if members.values().any(|(off, size)| off + size > len) {
            return Err(bad(
                path,
                "truncated archive: a member ends past the end of the file",
            ));
        }
        Ok(ArchiveIndex {
            path: path.to_path_buf(),
            members,
            first,
        })
    }

    fn get(&self, name: &str) -> Option<Loc> {
        self.members.get(name).map(|&(offset, size)| Loc::Member {
            archive: self.path.clone(),
            offset,
            size,
        })
    }
}

/// Where blobs come from: a layout directory or a tar of one.
enum Blobs<'a> {
    Dir(&'a Path),
    Tar(&'a ArchiveIndex),
}

impl Blobs<'_> {
    fn get(&self, name: &str) -> Option<(Loc, u64)> {
        match self {
            Blobs::Dir(d) => {
                let p = d.join(name);
                let size = std::fs::metadata(&p).ok()?.len();
                Some((Loc::File(p), size))
            }
            Blobs::Tar(ix) => {
                let loc = ix.get(name)?;
                let size = ix.members[name].1;
                Some((loc, size))
            }
        }
    }
}

/// Detect what `path` is and parse its manifests. Nothing is unpacked.
pub fn inspect(path: &Path) -> Result<ImagePlan, ImportError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            bad(path, "does not exist; give an OCI archive or layout, a docker-save tarball or a rootfs tarball")
        } else {
            ioerr(path)(e)
        }
    })?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(bad(
            path,
            format!(
                "is {}; give an OCI archive or layout, a docker-save tarball or a rootfs tarball",
                crate::fsutil::kind_of(&meta)
            ),
        ));
    }
    if meta.is_dir() {
        if !path.join("oci-layout").exists() {
            return Err(bad(
                path,
                "is a directory without an `oci-layout` file; give an OCI image layout",
            ));
        }
        return inspect_oci(path, SourceKind::OciLayout, &Blobs::Dir(path));
    }
    let mut head = [0u8; 512];
    let n = File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(ioerr(path))?;
    if n == 0 {
        return Err(bad(path, "is empty"));
    }
    if compress::sniff(&head[..n]) != Compression::None {
        if !compressed_image_archive(path)? {
            return Ok(tarball_plan(path, meta.len()));
        }
        return inspect_spooled(path);
    }
    inspect_archive(path, meta.len())
}

/// An uncompressed tar: an OCI archive, a docker-save or a rootfs tarball.
fn inspect_archive(path: &Path, len: u64) -> Result<ImagePlan, ImportError> {
    let ix = ArchiveIndex::read(path)?;
    if ix.members.contains_key("oci-layout") && ix.members.contains_key("index.json") {
        inspect_oci(path, SourceKind::OciArchive, &Blobs::Tar(&ix))
    } else if ix.members.contains_key("manifest.json") && !ix.members.contains_key("etc/passwd") {
        inspect_docker(path, &ix)
    } else if let Some(first) = ix.first.as_deref().filter(|f| starts_image_archive(f)) {
        // It starts as an image archive does but lacks what one holds: a
        // cut or damaged image, never a rootfs to unpack as it is.
        let wants = if ix.members.contains_key("oci-layout")
            || first == "index.json"
            || first.starts_with("blobs")
        {
            "an OCI archive needs both `oci-layout` and `index.json`"
        } else {
            "a docker-save archive needs `manifest.json`"
        };
        Err(bad(
            path,
            format!(
                "starts like an image archive (`{}`) but is not a whole one ({wants}): it is truncated or damaged; make or download it again",
                crate::error::quote_untrusted(first)
            ),
        ))
    } else {
        Ok(tarball_plan(path, len))
    }
}

/// Whether a compressed tar is an image archive (`docker save | gzip`, as
/// Flatcar ships its SDK, or a compressed OCI archive) rather than a
/// rootfs: its first member is one only image archives start with.
fn compressed_image_archive(path: &Path) -> Result<bool, ImportError> {
    let f = BufReader::new(File::open(path).map_err(ioerr(path))?);
    let mut ar = tar::Archive::new(compress::decoder(f).map_err(ioerr(path))?);
    let mut entries = ar
        .entries()
        .map_err(|e| bad(path, format!("not a compressed tar archive: {e}")))?;
    let Some(first) = entries.next() else {
        return Ok(false);
    };
    let first = first.map_err(|e| bad(path, format!("damaged compressed tar archive: {e}")))?;
    let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    Ok(starts_image_archive(name.trim_start_matches("./")))
}

/// First member names of image archives: OCI (`oci-layout`, `index.json`,
/// `blobs/`) and docker-save, old (`<id>/`, `<id>.json`) and new.
fn starts_image_archive(name: &str) -> bool {
    let head = name.split(['/', '.']).next().unwrap_or("");
    matches!(
        name,
        "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || head == "blobs"
        || head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Decompress an image archive once into a temporary file (`TMPDIR`) and
/// read it from there; the plan keeps the file until it is dropped.
fn inspect_spooled(path: &Path) -> Result<ImagePlan, ImportError> {
    let f = BufReader::new(File::open(path).map_err(ioerr(path))?);
    let mut dec = compress::decoder(f).map_err(ioerr(path))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sdk-image-")
        .tempfile()
        .map_err(ioerr(&std::env::temp_dir()))?;
    let len = io::copy(&mut dec, tmp.as_file_mut()).map_err(|e| {
        bad(
            path,
            format!("cannot decompress: {e} (truncated or damaged?)"),
        )
    })?;
    let spool = std::sync::Arc::new(tmp.into_temp_path());
    let mut plan = inspect_archive(&spool, len).map_err(|e| match e {
        ImportError::Bad { what, .. } => bad(path, what),
        other => other,
    })?;
    plan.path = path.to_path_buf();
    plan._spool = Some(spool);
    Ok(plan)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn tarball_plan(path: &Path, size: u64) -> ImagePlan {
    ImagePlan {
        path: path.to_path_buf(),
        kind: SourceKind::Tarball,
        digest: None,
        config: RuntimeConfig::default(),
        arch: None,
        labels: HashMap::new(),
        ref_names: Vec::new(),
        layers: vec![Layer {
            loc: Loc::File(path.to_path_buf()),
            name: "rootfs tarball".into(),
            size,
            check: Check::None,
        }],
        _spool: None,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `blobs/sha256/<hex>` of a descriptor, after checking its algorithm.
fn blob_name(path: &Path, d: &Descriptor) -> Result<(String, String), ImportError> {
    let digest = d.digest();
    let algo = digest.algorithm().to_string();
    if algo != "sha256" {
        return Err(bad(
            path,
            format!("digest algorithm {algo} is not supported (only sha256)"),
        ));
    }
    let hex = digest.digest().to_string();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(path, format!("malformed digest {digest}")));
    }
    Ok((format!("blobs/sha256/{hex}"), hex))
}

/// Read a small blob (manifest, config) and verify its digest and size.
fn read_verified(path: &Path, blobs: &Blobs<'_>, d: &Descriptor) -> Result<Vec<u8>, ImportError> {
    let (name, hex) = blob_name(path, d)?;
    let (loc, _) = blobs
        .get(&name)
        .ok_or_else(|| bad(path, format!("missing blob {name}")))?;
    let bytes = loc.read_all(path)?;
    if sha256_hex(&bytes) != hex {
        return Err(bad(
            path,
            format!("digest mismatch for {name}: the archive is damaged or was altered"),
        ));
    }
    if bytes.len() as u64 != d.size() {
        return Err(bad(path, format!("size mismatch for {name}")));
    }
    Ok(bytes)
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn inspect_oci(path: &Path, kind: SourceKind, blobs: &Blobs<'_>) -> Result<ImagePlan, ImportError> {
    let (index_loc, _) = blobs
        .get("index.json")
        .ok_or_else(|| bad(path, "no index.json; not an OCI image layout"))?;
    let index_bytes = index_loc.read_all(path)?;
    let mut index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| bad(path, format!("index.json is not a valid OCI index: {e}")))?;
    // Follow nested indexes (multi-platform images) a few levels down.
    for _ in 0..4 {
        let chosen = pick(path, index.manifests())?;
        match chosen.media_type() {
            MediaType::ImageManifest => {
                return oci_manifest(path, kind, blobs, &chosen);
            }
            MediaType::Other(s) if s == "application/vnd.docker.distribution.manifest.v2+json" => {
                return oci_manifest(path, kind, blobs, &chosen);
            }
            MediaType::ImageIndex => {
                let bytes = read_verified(path, blobs, &chosen)?;
                index = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| bad(path, format!("nested index is not valid: {e}")))?;
            }
            other => {
                return Err(bad(
                    path,
                    format!("unknown manifest media type {other}; expected an OCI image manifest"),
                ));
            }
        }
    }
    Err(bad(path, "image indexes nested too deeply"))
}

/// The manifest for this machine: the only one, or the one whose platform
/// matches the host.
fn pick(path: &Path, manifests: &[Descriptor]) -> Result<Descriptor, ImportError> {
    match manifests {
        [] => Err(bad(path, "the index lists no image")),
        [one] => Ok(one.clone()),
        many => many
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
                })
            })
            .cloned()
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "the index lists {} images and none for linux/{}; import a single-image archive",
                        many.len(),
                        host_arch()
                    ),
                )
            }),
    }
}

fn runtime_config(cfg: &ImageConfiguration) -> RuntimeConfig {
    let c = cfg.config().clone().unwrap_or_default();
    RuntimeConfig {
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|s| !s.is_empty()),
        user: c.user().clone().filter(|s| !s.is_empty()),
    }
}

fn labels(cfg: &ImageConfiguration) -> HashMap<String, String> {
    cfg.config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default()
}

fn oci_manifest(
    path: &Path,
    kind: SourceKind,
    blobs: &Blobs<'_>,
    desc: &Descriptor,
) -> Result<ImagePlan, ImportError> {
    let bytes = read_verified(path, blobs, desc)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| bad(path, format!("image manifest is not valid: {e}")))?;
    let config_bytes = read_verified(path, blobs, manifest.config())?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| bad(path, format!("image config is not valid: {e}")))?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        layer_media_type(path, l.media_type())?;
        let (name, hex) = blob_name(path, l)?;
        let (loc, size) = blobs
            .get(&name)
            .ok_or_else(|| bad(path, format!("missing layer blob {name}")))?;
        if size != l.size() {
            return Err(bad(
                path,
                format!(
                    "layer {name} is {size} bytes, the manifest says {}",
                    l.size()
                ),
            ));
        }
        layers.push(Layer {
            loc,
            name,
            size,
            check: Check::Blob(hex),
        });
    }
    let ref_names = desc
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
        .into_iter()
        .collect();
    Ok(ImagePlan {
        path: path.to_path_buf(),
        kind,
        digest: Some(desc.digest().digest().to_string()),
        config: runtime_config(&config),
        arch: Some(config.architecture().to_string()),
        labels: labels(&config),
        ref_names,
        layers,
        _spool: None,
    })
}

fn layer_media_type(path: &Path, m: &MediaType) -> Result<(), ImportError> {
    match m {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => Ok(()),
        MediaType::Other(s)
            if s.starts_with("application/vnd.docker.image.rootfs.")
                && (s.ends_with(".tar.gzip") || s.ends_with(".tar")) =>
        {
            Ok(())
        }
        other => Err(bad(
            path,
            format!(
                "unknown layer media type {other}; sdk-run reads tar, tar+gzip and tar+zstd layers"
            ),
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn inspect_docker(path: &Path, ix: &ArchiveIndex) -> Result<ImagePlan, ImportError> {
    let bytes = ix
        .get("manifest.json")
        .expect("checked by caller")
        .read_all(path)?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            path,
            format!("manifest.json is not a docker-save manifest: {e}"),
        )
    })?;
    let entry = match &entries[..] {
        [one] => one,
        [] => return Err(bad(path, "manifest.json lists no image")),
        many => {
            return Err(bad(
                path,
                format!(
                    "manifest.json lists {} images; save one image per archive",
                    many.len()
                ),
            ));
        }
    };
    let norm = |s: &str| s.trim_start_matches("./").to_string();
    let config_loc = ix
        .get(&norm(&entry.config))
        .ok_or_else(|| bad(path, format!("missing config {}", entry.config)))?;
    let config_bytes = config_loc.read_all(path)?;
    let image_id = sha256_hex(&config_bytes);
    // The config's name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let stem = Path::new(&entry.config)
        .file_name()
        .map(|s| s.to_string_lossy().trim_end_matches(".json").to_string())
        .unwrap_or_default();
    if stem.len() == 64 && stem != image_id {
        return Err(bad(
            path,
            format!(
                "digest mismatch for config {}: the archive is damaged or was altered",
                entry.config
            ),
        ));
    }
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| bad(path, format!("image config is not valid: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(bad(
            path,
            format!(
                "config lists {} layers, manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (name, diff) in entry.layers.iter().zip(diff_ids) {
        let name = norm(name);
        let loc = ix
            .get(&name)
            .ok_or_else(|| bad(path, format!("missing layer {name}")))?;
        let size = ix.members[&name].1;
        let hex = diff
            .strip_prefix("sha256:")
            .ok_or_else(|| bad(path, format!("diff id {diff} is not sha256")))?;
        layers.push(Layer {
            loc,
            name,
            size,
            check: Check::DiffId(hex.to_string()),
        });
    }
    Ok(ImagePlan {
        path: path.to_path_buf(),
        kind: SourceKind::DockerSave,
        digest: Some(image_id),
        config: runtime_config(&config),
        arch: Some(config.architecture().to_string()),
        labels: labels(&config),
        ref_names: entry.repo_tags.clone().unwrap_or_default(),
        layers,
        _spool: None,
    })
}

/// Reads, hashes, and reports progress.
struct Hashing<'p, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    progress: &'p (dyn Fn(u64) + Sync),
    /// Hash at all (counting and progress happen regardless).
    enabled: bool,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.enabled {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

fn no_progress(_: u64) {}

/// The consumer end of the decompression thread.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    let _ = self.back.send(spent);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

const CHUNK: usize = 1 << 20;

/// Unpack every layer of `plan` in order into `target` (an existing,
/// empty directory). Returns the report and the content digest (for a
/// tarball, the sha256 of its bytes). `progress` is called with bytes read.
pub fn unpack(
    plan: &ImagePlan,
    target: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Report, String), ImportError> {
    let opts = if plan.kind == SourceKind::Tarball {
        Options::tarball()
    } else {
        Options::layer()
    };
    let mut x = Extractor::new(target, opts);
    let digest = apply_layers(plan, &mut x, progress)?;
    Ok((x.report, digest))
}

/// A sink that only reads each layer to its end: [`verify`]'s.
struct Discard;

impl LayerSink for Discard {
    fn apply_layer(&mut self, _name: &str, stream: &mut dyn Read) -> Result<(), SinkError> {
        io::copy(stream, &mut io::sink())
            .map(|_| ())
            .map_err(|e| SinkError::new(true, e))
    }
}

/// Read every layer of `plan` and check it against its digest and size
/// without writing anything: what an import does before it trusts that an
/// image already in the store is the same as the archive's. Returns the
/// content digest.
pub fn verify(plan: &ImagePlan, progress: &(dyn Fn(u64) + Sync)) -> Result<String, ImportError> {
    apply_layers(plan, &mut Discard, progress)
}

/// Stream every layer of `plan` in order into `sink`, checking each
/// against its digest (blob digest, or docker's diff id) and size.
/// Returns the content digest (for a tarball, the sha256 of its bytes).
/// A layer is applied while it is read: a mismatch is found at its end, so
/// the caller discards what the sink made when this fails.
pub fn apply_layers(
    plan: &ImagePlan,
    sink: &mut dyn LayerSink,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<String, ImportError> {
    let mut content_digest = plan.digest.clone();
    for (i, layer) in plan.layers.iter().enumerate() {
        tracing::info!(layer = %layer.name, n = i + 1, of = plan.layers.len(), bytes = layer.size, "unpacking");
        let raw = layer.loc.open().map_err(ioerr(&plan.path))?;
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
        // Spent chunks go back to the producer: no fresh zeroed megabyte
        // (and its page faults) per read.
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let result = std::thread::scope(|s| {
            let producer = s.spawn(move || decompress_layer(raw, layer, progress, &tx, &back_rx));
            let mut reader = ChunkReader {
                rx,
                back: back_tx,
                cur: Vec::new(),
                pos: 0,
            };
            let applied = sink.apply_layer(&layer.name, &mut reader);
            // Unblock and collect the producer.
            drop(reader);
            let produced = producer.join().expect("decompression thread panicked");
            (applied, produced)
        });
        let (applied, produced) = result;
        let produced = produced.map_err(|e| {
            bad(
                &plan.path,
                format!(
                    "layer {}: cannot decompress: {e} (truncated or damaged?)",
                    layer.name
                ),
            )
        });
        // A decompression error explains a tar read error better.
        if (applied.is_err() || produced.is_err())
            && let Check::Blob(want) = &layer.check
        {
            // A damaged blob usually fails to decompress first; say what
            // is really wrong when its digest does not match.
            let mut h = Hashing {
                inner: layer.loc.open().map_err(ioerr(&plan.path))?,
                hasher: Sha256::new(),
                count: 0,
                progress: &no_progress,
                enabled: true,
            };
            io::copy(&mut h, &mut io::sink()).map_err(ioerr(&plan.path))?;
            if hex::encode(h.hasher.finalize()) != *want {
                return Err(bad(
                    &plan.path,
                    format!(
                        "digest mismatch for layer {}: the archive is damaged or was altered",
                        layer.name
                    ),
                ));
            }
        }
        let (blob_hex, diff_hex, count) = match (applied, produced) {
            (_, Err(e)) => return Err(e),
            (Err(e), _) => {
                return Err(ImportError::Extract {
                    path: plan.path.clone(),
                    source: e,
                });
            }
            (Ok(()), Ok(v)) => v,
        };
        if count != layer.size {
            return Err(bad(
                &plan.path,
                format!(
                    "layer {} is truncated ({count} of {} bytes)",
                    layer.name, layer.size
                ),
            ));
        }
        match &layer.check {
            Check::Blob(want) if *want != blob_hex => {
                return Err(bad(
                    &plan.path,
                    format!(
                        "digest mismatch for layer {}: the archive is damaged or was altered",
                        layer.name
                    ),
                ));
            }
            Check::DiffId(want) if *want != diff_hex => {
                return Err(bad(
                    &plan.path,
                    format!(
                        "diff id mismatch for layer {}: the archive is damaged or was altered",
                        layer.name
                    ),
                ));
            }
            _ => {}
        }
        if content_digest.is_none() {
            content_digest = Some(blob_hex);
        }
    }
    Ok(content_digest.unwrap_or_default())
}

/// The decompression thread of one layer: reads the blob (hashing it and
/// reporting progress), decompresses it (hashing that too when a docker
/// diff id checks it) and sends the tar stream in chunks to the applier;
/// reads to the blob's end even when the applier is done, so the digest
/// covers every byte. Returns the blob and diff sha256 and the bytes read.
fn decompress_layer(
    raw: Box<dyn Read + Send>,
    layer: &Layer,
    progress: &(dyn Fn(u64) + Sync),
    tx: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    back_rx: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<(String, String, u64)> {
    let mut hashed = Hashing {
        inner: raw,
        hasher: Sha256::new(),
        count: 0,
        progress,
        enabled: true,
    };
    let diff_hex;
    {
        let br = BufReader::with_capacity(CHUNK, &mut hashed);
        let mut dec = compress::decoder(br)?;
        let mut diff = Hashing {
            inner: &mut dec,
            hasher: Sha256::new(),
            count: 0,
            progress: &no_progress,
            // Only docker-save layers are checked by diff id.
            enabled: matches!(layer.check, Check::DiffId(_)),
        };
        // The tar reader stops at the end-of-archive blocks;
        // keep reading (and hashing) what follows.
        let mut consumer_gone = false;
        loop {
            let mut chunk = back_rx.try_recv().unwrap_or_default();
            chunk.resize(CHUNK, 0);
            let n = read_up_to(&mut diff, &mut chunk)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            if !consumer_gone && tx.send(Ok(chunk)).is_err() {
                consumer_gone = true;
            }
        }
        diff_hex = hex::encode(diff.hasher.finalize_reset());
    }
    // Drain what the decompressor left (trailing padding) so
    // the blob digest covers every byte.
    io::copy(&mut hashed, &mut io::sink())?;
    Ok((
        hex::encode(hashed.hasher.finalize()),
        diff_hex,
        hashed.count,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_members_that_start_image_archives() {
        let id_dir = format!("{}/", "ab".repeat(32));
        let id_json = format!("{}.json", "0f".repeat(32));
        for yes in [
            "oci-layout",
            "index.json",
            "manifest.json",
            "blobs/",
            "blobs/sha256/aa",
            &id_dir,
            &id_json,
        ] {
            assert!(super::starts_image_archive(yes), "{yes}");
        }
        for no in ["", "bin/", "etc/passwd", "usr", "abc/", "blobsx/"] {
            assert!(!super::starts_image_archive(no), "{no}");
        }
    }
}
