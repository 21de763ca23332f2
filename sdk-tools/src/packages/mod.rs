//! Packages: recipes, their dependency graph, binary packages and the
//! per-board cross-root they are installed into (`setup_board`,
//! `build_packages`). The image builder reads the results through
//! [`crossroot::CrossRoot`] and [`binpkg::PackageMeta`].

pub mod binpkg;
pub mod build;
pub mod builder;
pub mod crossroot;
pub mod debimport;
pub mod graph;
pub mod hash;
pub mod isolate;
pub mod recipe;
pub mod verbs;
