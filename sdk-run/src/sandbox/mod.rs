//! The sandbox lifecycle: create, start, enter, stop, remove, list. One
//! operation per file; shared types in `config`. Namespaces and mounts go
//! through `crate::sys`.

pub mod config;
pub mod userns;

pub use config::{Config, Net, NsIds, RootfsSpec, State, Volume, validate_name};
