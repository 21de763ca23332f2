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
