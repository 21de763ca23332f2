//! sdk-run: the host launcher. Owns the CLI, the sandbox lifecycle
//! (namespaces, id maps, mounts, devices, enter) and the rootfs store.
//! It does not build packages or images: that is `sdk-tools`, which it binds
//! into every sandbox.

pub mod cli;
pub use sdk_common::cmd;
pub mod exit;
pub mod idmap;
pub mod rootfs;
pub mod sandbox;
pub mod state;
pub mod version;

#[cfg(test)]
mod fuzz;
