//! sdk-tools: the in-sandbox toolchain as a library (recipes, cross-roots,
//! verity, GPT, filesystem builders, image outputs) plus the multi-call CLI
//! over it. It never creates namespaces; that is `sdk-run`'s job.

pub mod board;
pub mod boot;
pub mod cli;
pub use sdk_common::cmd;
pub mod disk;
pub mod exit;
pub mod ext4;
pub mod fs;
pub mod image;
pub mod packages;
pub mod strict;
pub mod verity;
