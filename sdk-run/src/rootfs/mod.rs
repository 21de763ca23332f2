//! The SDK rootfs: manifests, the content-addressed image store, OCI /
//! docker-save / tarball import with a safe layer extractor, manifest builds
//! (mmdebstrap from the host's apt sources) and commit to an OCI archive.
//! It does not create or enter sandboxes (that is `sandbox`); it hands them
//! an unpacked read-only base to stack a writable layer on.
//!
//! For the sandbox side:
//! - [`default_sdk_image`] builds (once) and returns the embedded default
//!   SDK; `image.rootfs()` is the overlay lower directory;
//! - [`runtime_config_for`] gives the Env / WorkingDir / User an image
//!   asks for, from its lower directory.

pub mod apt_sources;
pub mod build;
pub mod commit;

pub mod import;
pub mod manifest;
pub mod store;

use std::path::Path;

/// The image config (env, working directory, user) of the store image
/// whose unpacked tree is `lower` (`images/<digest>/rootfs`); `None` when
/// `lower` is not a store image.
pub fn runtime_config_for(lower: &Path) -> Option<sdk_common::oci::RuntimeConfig> {
    let json = lower.parent()?.join("image.json");
    let meta: store::ImageMeta = serde_json::from_str(&std::fs::read_to_string(json).ok()?).ok()?;
    Some(meta.config)
}

/// The embedded default SDK image, built on first use.
pub fn default_sdk_image(ctx: &import::Ctx) -> anyhow::Result<store::Image> {
    build::ensure(ctx, &manifest::Manifest::default_sdk())
}
