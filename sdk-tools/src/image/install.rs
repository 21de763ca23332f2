//! Fill a staging tree from one of the three inputs of an image build:
//! the board's binary packages (the runtime closure of a package set, from
//! the cross-root's package database), an OCI image archive, or a plain
//! directory (`--root`, for trees made elsewhere). Ownership and modes come
//! from the package metadata / tar headers, never from the uid running the
//! build.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::PackageInfo;
use super::tree::{IdMap, Tree};
use crate::board::Board;
use crate::exit::UsageError;
use crate::packages::binpkg::PackageMeta;
use crate::packages::crossroot::CrossRoot;

/// Where the OS tree comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The runtime closure of these packages in the board's cross-root.
    Packages {
        cross: CrossRoot,
        roots: Vec<String>,
        /// Leave out what these packages' closure holds (a sysext on top
        /// of the OS image).
        exclude: Vec<String>,
    },
    /// An OCI image archive (`--from-oci`).
    Oci(PathBuf),
    /// A directory (`--root`); the running user's files count as root's.
    Dir(PathBuf),
}

impl Source {
    /// Check what can be checked before any output is made: the board's
    /// cross-root is set up and the packages resolve (bad input, exit 2).
    /// Returns how many packages a `Packages` source resolves to.
    pub fn check(&self, board: &Board) -> Result<Option<usize>> {
        match self {
            Source::Packages {
                cross,
                roots,
                exclude,
            } => Ok(Some(closure(cross, board, roots, exclude)?.len())),
            _ => Ok(None),
        }
    }
}

/// Install `source` into `tree`; returns what the SBOM and package list
/// say about it.
pub fn install(tree: &mut Tree, source: &Source, board: &Board) -> Result<Vec<PackageInfo>> {
    match source {
        Source::Dir(dir) => {
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "--root {}: not a directory; give the staging root to build from",
                    dir.display()
                ))
                .into());
            }
            tree.import_dir(dir, IdMap::current(), "--root")
                .map_err(sdk_common::error::bad_input)
                .with_context(|| format!("--root {}", dir.display()))?;
            Ok(vec![PackageInfo {
                name: "staging-root".into(),
                version: "unknown".into(),
                arch: board.debian_arch.clone(),
                license: None,
                sha256: None,
                depends: vec![],
                debs: vec![],
                maintainer_scripts: Default::default(),
            }])
        }
        Source::Oci(archive) => {
            let got = super::oci::import(archive, tree).map_err(|e| {
                UsageError(format!(
                    "--from-oci {}: {e}; give an OCI image archive such as one `build_image --oci` wrote",
                    archive.display()
                ))
            })?;
            if got.arch != board.debian_arch {
                return Err(UsageError(format!(
                    "--from-oci {}: the image is for {}, board {} is {}; use the archive of this board",
                    archive.display(),
                    got.arch,
                    board.name,
                    board.debian_arch
                ))
                .into());
            }
            Ok(vec![PackageInfo {
                name: "oci-image".into(),
                version: got.manifest.clone(),
                arch: got.arch,
                license: None,
                sha256: got.manifest.strip_prefix("sha256:").map(str::to_string),
                depends: vec![],
                debs: vec![],
                maintainer_scripts: Default::default(),
            }])
        }
        Source::Packages {
            cross,
            roots,
            exclude,
        } => {
            let metas = closure(cross, board, roots, exclude)?;
            for meta in &metas {
                let path = cross.archive_path(meta);
                let (_, sum) = sdk_common::fsutil::hash_file(&path)
                    .with_context(|| format!("read binary package {}", path.display()))?;
                if hex::encode(sum) != meta.archive_sha256 {
                    return Err(UsageError(format!(
                        "binary package {} does not match its metadata (sha256 differs); rebuild it with `build_packages --board {} {}`",
                        path.display(),
                        board.name,
                        meta.name
                    ))
                    .into());
                }
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("open binary package {}", path.display()))?;
                let dec = zstd::Decoder::new(BufReader::new(file))
                    .with_context(|| format!("read binary package {}", path.display()))?;
                let origin = format!("{}-{}", meta.name, meta.version);
                tree.extract_tar(dec, &origin, false)
                    .map_err(sdk_common::error::bad_input)
                    .with_context(|| format!("installing {origin}"))?;
            }
            Ok(metas.iter().map(info_of).collect())
        }
    }
}

fn info_of(m: &PackageMeta) -> PackageInfo {
    PackageInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        arch: m.debian_arch.clone(),
        license: None,
        sha256: Some(m.archive_sha256.clone()),
        depends: m.depends.clone(),
        debs: m.debs.clone(),
        maintainer_scripts: m.maintainer_scripts.clone(),
    }
}

/// The installed packages `roots` need, minus `exclude`'s closure, each
/// checked to be built for `board`.
fn closure(
    cross: &CrossRoot,
    board: &Board,
    roots: &[String],
    exclude: &[String],
) -> Result<Vec<PackageMeta>> {
    if !cross.is_set_up() {
        return Err(UsageError(format!(
            "board {} is not set up in {}; run `setup_board --board {0}` and `build_packages --board {0}` first",
            board.name,
            cross.root.display()
        ))
        .into());
    }
    let metas = cross
        .runtime_closure(roots)
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let skip: Vec<String> = if exclude.is_empty() {
        vec![]
    } else {
        cross
            .runtime_closure(exclude)
            .map(|m| m.into_iter().map(|m| m.name).collect())
            .unwrap_or_default()
    };
    let metas: Vec<PackageMeta> = metas
        .into_iter()
        .filter(|m| !skip.contains(&m.name))
        .collect();
    for m in &metas {
        if m.board != board.name || m.debian_arch != board.debian_arch {
            return Err(UsageError(format!(
                "package {} in {} was built for board {} ({}), not {} ({}); rebuild it with `build_packages --board {}`",
                m.name,
                cross.root.display(),
                m.board,
                m.debian_arch,
                board.name,
                board.debian_arch,
                board.name
            ))
            .into());
        }
    }
    Ok(metas)
}
