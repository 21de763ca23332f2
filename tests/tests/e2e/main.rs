//! Every end-to-end test, in one binary with a module per area, so that
//! expensive fixtures (the default SDK store, the .deb cache, booted
//! images) are shared in one process and the tiers link once. Helpers live
//! in `tests/src` (the `sdk_e2e` crate), never here.
//!
//!   cargo test -p sdk-e2e --release -- --test-threads=2   # as `make test` runs it
//!   cargo test -p sdk-e2e --release -- boot::             # one area

mod arm64;
mod boot;
mod chaos;
mod disk;
mod fs;
mod harness;
mod image;
mod install;
mod oci;
mod packages;
mod rootfs;
mod sandbox;
mod update;
mod verity;
