//! Input hashes: one sha256 over everything a package's build reads, so an
//! unchanged package is found in the binary package cache and a changed one
//! (or one whose dependency changed) is rebuilt. It hashes inputs, never
//! outputs, so every hash of a tree is known before anything builds.
//!
//! Inputs: a format tag; the board (name and profile file bytes); the
//! recipe kind; for `build` recipes the toolchain identity (the compilers'
//! `--version`); every file in the recipe directory (relative path, mode
//! class, contents or link target); the declared tarball checksums; and the
//! name and input hash of every dependency (runtime and build).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::recipe::{Recipe, RecipeKind};
use crate::board::Board;
use crate::cmd::CommandExt;

/// Bump when the build or package format changes what a hash produces.
const FORMAT_TAG: &str = "sdk-tools package inputs v1";

/// Identity of a board's cross toolchain: what each compiler says it is.
/// A missing compiler is part of the identity too (a build that needs it
/// fails; one that does not is unaffected).
pub fn toolchain_identity(board: &Board) -> String {
    let mut id = String::new();
    for tool in [&board.toolchain.cc, &board.toolchain.cxx] {
        let version = Command::new(tool)
            .arg("--version")
            .run_stdout()
            .map(|s| s.lines().next().unwrap_or_default().to_string())
            .unwrap_or_else(|_| "absent".into());
        let machine = Command::new(tool)
            .arg("-dumpmachine")
            .run_stdout()
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        id.push_str(&format!("{tool}: {version} ({machine})\n"));
    }
    id
}

fn update_line(h: &mut Sha256, parts: &[&[u8]]) {
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
}

/// Hash every file of a recipe directory into `h`, in path order.
fn hash_recipe_dir(h: &mut Sha256, dir: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ft = entry.file_type();
        if ft.is_dir() {
            update_line(h, &[b"dir", rel.as_bytes()]);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())
                .with_context(|| format!("read link {}", entry.path().display()))?;
            update_line(
                h,
                &[
                    b"link",
                    rel.as_bytes(),
                    target.as_os_str().as_encoded_bytes(),
                ],
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            let md = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            let exec: &[u8] = if md.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"-"
            };
            let bytes = std::fs::read(entry.path())
                .with_context(|| format!("read {}", entry.path().display()))?;
            update_line(h, &[b"file", rel.as_bytes(), exec, &Sha256::digest(&bytes)]);
        }
    }
    Ok(())
}

/// The input hash of `recipe` for `board`, given its dependencies' hashes
/// (`(name, hash)`, any order) and the toolchain identity.
pub fn input_hash(
    recipe: &Recipe,
    board: &Board,
    toolchain: &str,
    deps: &[(String, String)],
) -> Result<String> {
    let mut h = Sha256::new();
    update_line(&mut h, &[FORMAT_TAG.as_bytes()]);
    update_line(
        &mut h,
        &[
            b"board",
            board.name.as_bytes(),
            board.profile_sha256.as_bytes(),
        ],
    );
    update_line(&mut h, &[b"kind", recipe.kind_name().as_str().as_bytes()]);
    update_line(&mut h, &[b"name", recipe.name.as_bytes()]);
    if let RecipeKind::Build(spec) = &recipe.kind {
        update_line(&mut h, &[b"toolchain", toolchain.as_bytes()]);
        for t in &spec.tarballs {
            update_line(&mut h, &[b"tarball", t.sha256.as_bytes()]);
        }
    }
    hash_recipe_dir(&mut h, &recipe.dir)?;
    let mut deps = deps.to_vec();
    deps.sort();
    for (name, hash) in &deps {
        update_line(&mut h, &[b"dep", name.as_bytes(), hash.as_bytes()]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::recipe;

    #[test]
    fn hash_changes_with_files_deps_and_board_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("build.sh"), "true\n").unwrap();
        let text = "version = \"1\"\nkind = \"build\"\n";
        std::fs::write(d.path().join("package.toml"), text).unwrap();
        let r = recipe::parse("a/b", d.path(), text).unwrap();
        let amd = Board::load(None, "amd64-usr").unwrap();
        let arm = Board::load(None, "arm64-usr").unwrap();
        let h1 = input_hash(&r, &amd, "gcc 12", &[]).unwrap();
        assert_eq!(h1, input_hash(&r, &amd, "gcc 12", &[]).unwrap(), "stable");
        assert_ne!(h1, input_hash(&r, &arm, "gcc 12", &[]).unwrap());
        assert_ne!(h1, input_hash(&r, &amd, "gcc 13", &[]).unwrap());
        let dep = [("c/d".to_string(), "00".to_string())];
        assert_ne!(h1, input_hash(&r, &amd, "gcc 12", &dep).unwrap());
        std::fs::write(d.path().join("build.sh"), "true # changed\n").unwrap();
        assert_ne!(h1, input_hash(&r, &amd, "gcc 12", &[]).unwrap());
    }
}
