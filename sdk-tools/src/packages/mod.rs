//! Packages: recipes, their dependency graph, binary packages and the
//! per-board cross-root they are installed into (`setup_board`,
//! `build_packages`). Images are not built here (see `image`).
//!
//! # For the image builder
//!
//! Everything an image needs is in the cross-root's installed-package
//! database; recipes are not needed:
//!
//! ```no_run
//! use std::path::Path;
//! use sdk_tools::board::Board;
//! use sdk_tools::packages::crossroot::{self, CrossRoot};
//!
//! # fn main() -> anyhow::Result<()> {
//! let repo = Path::new(".");                                  // the distro repo
//! let board = Board::load(Some(repo), "amd64-usr")?;           // profile
//! let (_layout_path, _layout_toml) = board.disk_layout_text()?; // disk layout file
//! let cross = CrossRoot::new(&crossroot::build_root(None), &board.name);
//! // The OS meta-package and everything it needs at runtime, by name.
//! for meta in cross.runtime_closure(&[board.os_package.clone()])? {
//!     // meta.files: path, kind, mode, uid/gid, user/group, size, sha256, target
//!     let mut archive = cross.open_archive(&meta)?; // tar stream, same order
//!     for entry in archive.entries()? {
//!         let entry = entry?;
//!         let _owner = (entry.header().uid()?, entry.header().gid()?);
//!         // ... put it into the staging tree with that owner and mode
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! - [`crossroot::CrossRoot::runtime_closure`] fails naming the chain when
//!   a needed package is not installed (tell the user to run
//!   `build_packages --board B`).
//! - [`binpkg::PackageMeta`] is the JSON metadata (`installed()`,
//!   `installed_package(name)` give it too); `board`, `arch` and
//!   `debian_arch` say what it was built for, `input_hash` identifies the
//!   build, `debs` lists imported Debian packages (for an SBOM).
//! - Paths are relative (`usr/bin/greet`), every parent directory has its
//!   own entry, Debian imports are folded into `/usr` (`/lib/modules` ->
//!   `usr/lib/modules`), the kernel is at `boot/vmlinuz-<version>`.
//! - Owners and modes in the metadata and the tar headers are the
//!   intended ones (root:root for builds, the .deb's for imports); files in
//!   the cross-root itself belong to whoever ran the build.

pub mod binpkg;
pub mod build;
pub mod builder;
pub mod crossroot;
pub mod debimport;
pub mod graph;
pub mod hash;
pub mod isolate;
pub mod maintscripts;
pub mod recipe;
