//! The sandbox lifecycle: create, start, enter, stop, remove, list. One
//! operation per file; shared types in `config`. Namespaces and mounts go
//! through `sdk_common::linux`.

pub mod config;
pub mod create;
pub mod enter;
pub mod list;

pub mod mounts;
pub mod remove;
pub mod run;
pub mod start;
pub mod userns;
pub mod users;

pub use config::{Config, Net, RootfsSpec, Volume};

/// Capabilities no process entered into a sandbox keeps, not even root
/// inside: CAP_SYS_ADMIN would remount the read-only binds (the sdk-tools
/// mount, /sys) writable, and CAP_SYS_PTRACE would reach into the init,
/// which still has it. Dropped from the bounding set, so no exec (sudo, a
/// file capability) brings them back; creating a nested user namespace
/// still works, and the kernel locks the copies of these mounts there.
pub const DROPPED_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_SYS_PTRACE,
];

/// Drop [`DROPPED_CAPS`] from the bounding set of this (forked, about to
/// exec) process: one prctl each. That is enough: the exec that follows
/// gives root (uid 0 after exec) the bounding set at most, and any other
/// user nothing, so nothing is cleared from the other sets on this path.
pub fn drop_sandbox_caps() -> Result<(), caps::errors::CapsError> {
    for c in DROPPED_CAPS {
        caps::drop(None, caps::CapSet::Bounding, *c)?;
    }
    Ok(())
}
