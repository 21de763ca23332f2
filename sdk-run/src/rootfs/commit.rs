//! `sdk-run commit SANDBOX OUT.tar`: write an OCI image archive (image
//! layout in a tar, as `skopeo copy oci-archive:` makes) of a sandbox: its
//! base image as the first layer and its overlay upper directory (its
//! changes) as the second, with overlayfs whiteouts (0/0 character devices,
//! `*.overlay.opaque` xattrs) turned into OCI whiteout files (image-spec
//! layer.md). Reading runs inside the caller's user namespace (the trees
//! belong to subordinate ids); the output file belongs to the caller and
//! appears only when complete (temp name, then rename).

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::import::{Ctx, in_userns};
use crate::exit::UsageError;
use crate::sandbox::{Config, RootfsSpec};
use sdk_common::oci::RuntimeConfig;

/// Hashes what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    digest: String,
    size: u64,
    diff_id: String,
    path: PathBuf,
}

/// Which paths a layer tar gets, and how upper-dir whiteouts translate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LayerKind {
    Base,
    Upper,
}

/// Write `dir` as a gzip tar layer into `out`; returns the blob.
fn write_layer(dir: &Path, out: &Path, kind: LayerKind) -> Result<Blob> {
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gz_out = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        count: 0,
    };
    let diff_id;
    {
        let gz = flate2::write::GzEncoder::new(&mut gz_out, flate2::Compression::fast());
        let mut tar_out = HashWriter {
            inner: gz,
            hasher: Sha256::new(),
            count: 0,
        };
        {
            let mut b = tar::Builder::new(&mut tar_out);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            add_tree(&mut b, dir, Path::new(""), kind)?;
            b.finish()?;
        }
        diff_id = hex::encode(tar_out.hasher.finalize_reset());
        tar_out.inner.finish()?;
    }
    gz_out.flush()?;
    Ok(Blob {
        digest: hex::encode(gz_out.hasher.finalize()),
        size: gz_out.count,
        diff_id,
        path: out.to_path_buf(),
    })
}

fn is_opaque(path: &Path) -> bool {
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|n| matches!(xattr::get(path, n), Ok(Some(v)) if v == b"y"))
}

/// Append the children of `dir` (recursively, sorted for stable output).
fn add_tree<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    kind: LayerKind,
) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    if kind == LayerKind::Upper && !rel.as_os_str().is_empty() && is_opaque(dir) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, rel.join(".wh..wh..opq"), io::empty())?;
    }
    for name in names {
        let path = dir.join(&name);
        let r = rel.join(&name);
        let m = std::fs::symlink_metadata(&path)?;
        if kind == LayerKind::Upper && m.file_type().is_char_device() && m.rdev() == 0 {
            // overlayfs whiteout -> OCI whiteout file.
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o644);
            b.append_data(&mut h, rel.join(wh), io::empty())?;
            continue;
        }
        if kind == LayerKind::Base && rel.as_os_str().is_empty() {
            // Mount points the sandbox fills; their content is not the image's.
            if name == "proc" || name == "sys" || name == "dev" {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                b.append_data(&mut h, &r, io::empty())?;
                continue;
            }
        }
        b.append_path_with_name(&path, &r)
            .with_context(|| format!("adding {}", path.display()))?;
        if m.is_dir() {
            add_tree(b, &path, &r, kind)?;
        }
    }
    Ok(())
}

/// Commit sandbox `name` to the OCI archive `out`.
pub fn commit(ctx: &Ctx, name: &str, out: &Path) -> Result<String> {
    let paths = ctx.state.sandbox(&crate::state::SandboxName::parse(name)?);
    if !paths.config().exists() {
        return Err(UsageError(format!(
            "no sandbox named {name:?}; `sdk-run list` shows them"
        ))
        .into());
    }
    let config: Config = crate::state::read_json(&paths.config())?;
    let (lower, upper) = match &config.rootfs {
        RootfsSpec::Overlay { lower, upper, .. } => (Some(lower.clone()), upper.clone()),
        RootfsSpec::Bind(dir) => (None, dir.clone()),
    };
    let runtime = lower
        .as_deref()
        .and_then(super::runtime_config_for)
        .unwrap_or_default();
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let parent = out
        .parent()
        .filter(|p| p.is_dir())
        .ok_or_else(|| UsageError(format!("{}: the folder does not exist", out.display())))?;
    let work = tempfile_dir(parent)?;
    let tmp_out = work.join("out.tar");
    let archive =
        File::create(&tmp_out).with_context(|| format!("creating {}", tmp_out.display()))?;
    let work2 = work.clone();
    // Archive members belong to the caller, as skopeo's own archives do
    // (skopeo chowns what it untars to the recorded owner).
    let owner = (
        nix::unistd::getuid().as_raw() as u64,
        nix::unistd::getgid().as_raw() as u64,
    );
    let result = in_userns(&ctx.map, &work.join("result.json"), move || {
        let mut blobs = Vec::new();
        if let Some(l) = &lower {
            blobs.push(write_layer(l, &work2.join("base.tar.gz"), LayerKind::Base)?);
        }
        std::fs::create_dir_all(&upper).ok();
        let kind = if lower.is_some() {
            LayerKind::Upper
        } else {
            LayerKind::Base
        };
        blobs.push(write_layer(&upper, &work2.join("upper.tar.gz"), kind)?);
        write_archive(archive, &blobs, &runtime, owner)
    });
    let finished = result.and_then(|digest| {
        std::fs::rename(&tmp_out, &out)
            .with_context(|| format!("renaming into {}", out.display()))?;
        Ok(digest)
    });
    // The blobs belong to the namespace's root; the folder to the caller.
    let _ = ctx.remove_trees(vec![work.clone()]);
    let _ = std::fs::remove_dir_all(&work);
    finished
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let d = parent.join(format!(".sdk-run-commit-{}", std::process::id()));
    std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        o => o,
    }
}

/// Assemble the OCI image layout tar. Returns the manifest digest.
fn write_archive(
    out: File,
    blobs: &[Blob],
    rc: &RuntimeConfig,
    (uid, gid): (u64, u64),
) -> Result<String> {
    let mut cfg = serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "config": { "Env": rc.env },
        "rootfs": {
            "type": "layers",
            "diff_ids": blobs.iter().map(|b| format!("sha256:{}", b.diff_id)).collect::<Vec<_>>(),
        },
        "history": blobs.iter().enumerate().map(|(i, _)| serde_json::json!({
            "created_by": if i + 1 == blobs.len() { "sdk-run commit" } else { "sdk-run base" }
        })).collect::<Vec<_>>(),
    });
    if let Some(w) = &rc.working_dir {
        cfg["config"]["WorkingDir"] = w.clone().into();
    }
    if let Some(u) = &rc.user {
        cfg["config"]["User"] = u.clone().into();
    }
    let cfg_bytes = serde_json::to_vec(&cfg)?;
    let cfg_digest = hex::encode(Sha256::digest(&cfg_bytes));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{cfg_digest}"),
            "size": cfg_bytes.len(),
        },
        "layers": blobs.iter().map(|b| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", b.digest),
            "size": b.size,
        })).collect::<Vec<_>>(),
    });
    let man_bytes = serde_json::to_vec(&manifest)?;
    let man_digest = hex::encode(Sha256::digest(&man_bytes));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{man_digest}"),
            "size": man_bytes.len(),
            "platform": { "architecture": arch(), "os": "linux" },
        }],
    });
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_entry_type(kind);
        h.set_uid(uid);
        h.set_gid(gid);
        h
    };
    let small = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| -> io::Result<()> {
        b.append_data(
            &mut header(tar::EntryType::Regular, data.len() as u64),
            name,
            data,
        )
    };
    for d in ["blobs/", "blobs/sha256/"] {
        b.append_data(&mut header(tar::EntryType::Directory, 0), d, io::empty())?;
    }
    small(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    small(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
    small(&mut b, &format!("blobs/sha256/{man_digest}"), &man_bytes)?;
    small(&mut b, &format!("blobs/sha256/{cfg_digest}"), &cfg_bytes)?;
    for blob in blobs {
        let mut f = File::open(&blob.path)?;
        f.rewind()?;
        let mut h = header(tar::EntryType::Regular, blob.size);
        b.append_data(&mut h, format!("blobs/sha256/{}", blob.digest), f)?;
    }
    let mut w = b.into_inner()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(man_digest)
}
