//! The SDK rootfs: manifests, the content-addressed image store, OCI /
//! docker-save / tarball import with a safe layer extractor, manifest builds
//! (mmdebstrap from the host's apt sources) and commit to an OCI archive.
//! It does not create or enter sandboxes (that is `sandbox`); it hands them
//! an unpacked read-only base to stack a writable layer on.

pub mod extract;
pub mod manifest;
pub mod oci;
pub mod store;
