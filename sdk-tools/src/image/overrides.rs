//! Local files dropped into the image at build time (COSA's `overlay.d`,
//! mkosi's extra trees): the repo's `overrides/` tree for every board, then
//! the board's own `profiles/<board>/overrides/`, each laid out like the
//! image's root. `usr/...` goes into USR; `etc/...` becomes the OS's
//! `/etc` defaults (`usr/share/factory/etc`, copied to ROOT on first
//! boot). Anything else has no place in a /usr-only image and is refused.
//!
//! Owners and modes never come from the checkout (git keeps only the
//! executable bit, and the builder's umask varies): files are 0644, or 0755
//! when executable, directories 0755, all root's, unless `overrides.toml`
//! beside the tree declares otherwise:
//!
//! ```toml
//! [[path]]
//! path = "usr/libexec/hello"   # as inside the tree
//! mode = "0750"
//! uid = 0
//! gid = 10
//! ```
//!
//! Everything is read and checked when the build is planned, before
//! anything is written; a later tree's file replaces an earlier one's, and
//! both replace what packages installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tree::Tree;
use super::usr::FACTORY;

/// Where an override file came from, as the contents list says.
const ORIGIN: &str = "overrides";

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error(
        "{tree}: {path} is outside USR; put files under usr/ (or etc/ for the OS's /etc defaults)"
    )]
    OutsideUsr { tree: String, path: String },
    #[error("{tree}: {path} is {kind}; overrides hold files, directories and symlinks only")]
    Special {
        tree: String,
        path: String,
        kind: &'static str,
    },
    #[error("{file}: {msg}")]
    Manifest { file: String, msg: String },
    #[error("{file} declares {path}, which no overrides tree has; fix the path or add the file")]
    Undeclared { file: String, path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    path: Vec<Declared>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    path: String,
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Dir,
    File(PathBuf),
    Symlink(String),
}

/// One path to put into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// The path in the staged tree (`usr/...`).
    dest: String,
    what: What,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Named in overrides.toml.
    declared: bool,
}

/// The checked overrides of one build, in the order they apply.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    items: Vec<Item>,
}

impl Overrides {
    /// The repo's `overrides/` then `board_dir/overrides/` (when the board
    /// profile is a directory), each with its `overrides.toml`.
    pub fn load(repo_root: &Path, board_dir: Option<&Path>) -> Result<Overrides, OverrideError> {
        let mut items = Vec::new();
        let mut bases = vec![repo_root.to_path_buf()];
        bases.extend(board_dir.map(Path::to_path_buf));
        for base in bases {
            items.extend(load_tree(
                &base.join("overrides"),
                &base.join("overrides.toml"),
            )?);
        }
        Ok(Overrides { items })
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Put every override into `tree` (after the packages).
    pub fn apply(&self, tree: &mut Tree) -> anyhow::Result<()> {
        use anyhow::Context;
        for it in &self.items {
            // A symlink the packages made (usr/foo -> /etc/foo) must not
            // carry an override out of USR. A directory is followed to the
            // end (usr/lib64 -> lib is the same directory), so the probe.
            let landed = match it.what {
                What::Dir => {
                    let p = tree.resolve_path(&format!("{}/.probe", it.dest), ORIGIN)?;
                    p.strip_suffix("/.probe").unwrap_or(&p).to_string()
                }
                _ => tree.resolve_path(&it.dest, ORIGIN)?,
            };
            if !(landed == "usr" || landed.starts_with("usr/")) {
                anyhow::bail!(
                    "override {} would land on /{landed} through a symlink of the image, outside USR; put it at the link's target under usr/",
                    it.dest
                );
            }
            match &it.what {
                // A directory the packages made keeps its owner and mode
                // unless overrides.toml says otherwise.
                What::Dir if tree.get(&landed).is_some_and(|e| !e.is_dir()) => {
                    anyhow::bail!(
                        "override directory {} meets a file of the image at /{landed}; an override replaces files, not a file with a directory",
                        it.dest
                    );
                }
                What::Dir if !it.declared && tree.get(&landed).is_some() => {}
                What::Dir => tree.add_dir(&landed, it.mode, it.uid, it.gid, ORIGIN, true)?,
                What::File(src) => {
                    let f = std::fs::File::open(src)
                        .with_context(|| format!("cannot read {}", src.display()))?;
                    tree.add_file(&it.dest, f, it.mode, it.uid, it.gid, ORIGIN, true)?
                }
                What::Symlink(target) => {
                    tree.add_symlink(&it.dest, target, it.uid, it.gid, ORIGIN, true)?
                }
            }
        }
        Ok(())
    }
}

/// The image path a tree path goes to, `None` outside USR.
fn destination(rel: &str) -> Option<String> {
    let (top, rest) = rel.split_once('/').unwrap_or((rel, ""));
    let join = |base: &str| {
        if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{rest}")
        }
    };
    match top {
        "usr" => Some(join("usr")),
        "etc" => Some(join(&format!("{FACTORY}/etc"))),
        _ => None,
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8).ok()?;
    (m <= 0o7777).then_some(m)
}

fn load_tree(dir: &Path, manifest: &Path) -> Result<Vec<Item>, OverrideError> {
    let shown = dir.display().to_string();
    let declared: BTreeMap<String, Declared> = match std::fs::read_to_string(manifest) {
        Ok(text) => {
            let file = manifest.display().to_string();
            let m: Manifest = toml::from_str(&text).map_err(|e| OverrideError::Manifest {
                file: file.clone(),
                msg: e.message().to_string(),
            })?;
            let mut by_path = BTreeMap::new();
            for d in m.path {
                let key = d.path.trim_matches('/').to_string();
                if let Some(mode) = &d.mode
                    && parse_mode(mode).is_none()
                {
                    return Err(OverrideError::Manifest {
                        file,
                        msg: format!(
                            "mode {mode:?} of {key} is not an octal mode such as \"0644\""
                        ),
                    });
                }
                if by_path.insert(key.clone(), d).is_some() {
                    return Err(OverrideError::Manifest {
                        file,
                        msg: format!("{key} is declared twice"),
                    });
                }
            }
            by_path
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(source) => {
            return Err(OverrideError::Read {
                path: manifest.display().to_string(),
                source,
            });
        }
    };
    if !dir.is_dir() {
        if let Some(path) = declared.keys().next() {
            return Err(OverrideError::Undeclared {
                file: manifest.display().to_string(),
                path: path.clone(),
            });
        }
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    // Sorted, so the order (and so the image) does not depend on readdir.
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false)
    {
        let entry = entry.map_err(|e| OverrideError::Read {
            path: shown.clone(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("below the walk's root")
            .to_string_lossy()
            .into_owned();
        let ft = entry.file_type();
        let Some(dest) = destination(&rel) else {
            return Err(OverrideError::OutsideUsr {
                tree: shown,
                path: rel,
            });
        };
        let (what, default_mode) = if ft.is_dir() {
            (What::Dir, 0o755)
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(entry.path()).map_err(|source| OverrideError::Read {
                    path: entry.path().display().to_string(),
                    source,
                })?;
            (What::Symlink(target.to_string_lossy().into_owned()), 0o777)
        } else if ft.is_file() {
            let md = entry.metadata().map_err(|e| OverrideError::Read {
                path: entry.path().display().to_string(),
                source: e.into(),
            })?;
            let exec = std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o111 != 0;
            (
                What::File(entry.path().to_path_buf()),
                if exec { 0o755 } else { 0o644 },
            )
        } else {
            let md =
                std::fs::symlink_metadata(entry.path()).map_err(|source| OverrideError::Read {
                    path: entry.path().display().to_string(),
                    source,
                })?;
            return Err(OverrideError::Special {
                tree: shown,
                path: rel,
                kind: sdk_common::fsutil::kind_of(&md),
            });
        };
        let d = declared.get(&rel);
        seen.insert(rel.clone());
        items.push(Item {
            dest,
            what,
            mode: d
                .and_then(|d| d.mode.as_deref())
                .and_then(parse_mode)
                .unwrap_or(default_mode),
            uid: d.and_then(|d| d.uid).unwrap_or(0),
            gid: d.and_then(|d| d.gid).unwrap_or(0),
            declared: d.is_some(),
        });
    }
    if let Some(path) = declared.keys().find(|k| !seen.contains(*k)) {
        return Err(OverrideError::Undeclared {
            file: manifest.display().to_string(),
            path: path.clone(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }

    #[test]
    fn trees_apply_in_order_with_declared_or_fixed_modes() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let board = repo.join("profiles/b");
        // Modes in the checkout do not matter, only the executable bit.
        write(&repo.join("overrides/usr/lib/motd"), "repo\n", 0o600);
        write(
            &repo.join("overrides/usr/libexec/hello"),
            "#!/bin/sh\n",
            0o700,
        );
        write(&repo.join("overrides/etc/issue"), "hi\n", 0o664);
        write(&board.join("overrides/usr/lib/motd"), "board\n", 0o644);
        std::fs::write(
            board.join("overrides.toml"),
            "[[path]]\npath = \"usr/lib/motd\"\nmode = \"0640\"\ngid = 42\n",
        )
        .unwrap();
        let o = Overrides::load(&repo, Some(&board)).unwrap();
        let got: Vec<_> = o
            .items
            .iter()
            .map(|i| (i.dest.as_str(), i.mode, i.uid, i.gid))
            .collect();
        assert_eq!(
            got,
            [
                ("usr/share/factory/etc", 0o755, 0, 0),
                ("usr/share/factory/etc/issue", 0o644, 0, 0),
                ("usr", 0o755, 0, 0),
                ("usr/lib", 0o755, 0, 0),
                ("usr/lib/motd", 0o644, 0, 0),
                ("usr/libexec", 0o755, 0, 0),
                ("usr/libexec/hello", 0o755, 0, 0),
                ("usr", 0o755, 0, 0),
                ("usr/lib", 0o755, 0, 0),
                ("usr/lib/motd", 0o640, 0, 42),
            ]
        );
        let mut tree = Tree::new(&d.path().join("staging")).unwrap();
        o.apply(&mut tree).unwrap();
        let e = tree.get("usr/lib/motd").unwrap();
        assert_eq!((e.mode, e.gid, e.origin.as_str()), (0o640, 42, "overrides"));
        assert_eq!(
            std::fs::read_to_string(tree.disk_path("usr/lib/motd")).unwrap(),
            "board\n"
        );
    }

    #[test]
    fn bad_trees_are_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path();
        write(&repo.join("overrides/var/lib/x"), "x", 0o644);
        let e = Overrides::load(repo, None).unwrap_err().to_string();
        assert!(e.contains("var is outside USR"), "{e}");
        std::fs::remove_dir_all(repo.join("overrides/var")).unwrap();

        write(&repo.join("overrides/usr/a"), "a", 0o644);
        std::fs::write(repo.join("overrides.toml"), "[[path]]\npath = \"usr/b\"\n").unwrap();
        let e = Overrides::load(repo, None).unwrap_err().to_string();
        assert!(
            e.contains("declares usr/b, which no overrides tree has"),
            "{e}"
        );

        std::fs::write(
            repo.join("overrides.toml"),
            "[[path]]\npath = \"usr/a\"\nmode = \"rw\"\n",
        )
        .unwrap();
        let e = Overrides::load(repo, None).unwrap_err().to_string();
        assert!(e.contains("not an octal mode"), "{e}");

        std::fs::write(
            repo.join("overrides.toml"),
            "[[path]]\npath = \"usr/a\"\nowner = 1\n",
        )
        .unwrap();
        assert!(Overrides::load(repo, None).is_err());
        std::fs::remove_file(repo.join("overrides.toml")).unwrap();

        nix::unistd::mkfifo(
            &repo.join("overrides/usr/fifo"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let e = Overrides::load(repo, None).unwrap_err().to_string();
        assert!(
            e.contains("usr/fifo is a FIFO") || e.contains("usr/fifo is"),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_of_the_image_cannot_carry_an_override_out_of_usr() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        write(&repo.join("overrides/usr/share/x/conf"), "c", 0o644);
        let o = Overrides::load(&repo, None).unwrap();
        let mut tree = Tree::new(&d.path().join("staging")).unwrap();
        tree.add_dir("usr", 0o755, 0, 0, "pkg", false).unwrap();
        tree.add_dir("usr/share", 0o755, 0, 0, "pkg", false)
            .unwrap();
        tree.add_symlink("usr/share/x", "/etc/x", 0, 0, "pkg", false)
            .unwrap();
        let e = o.apply(&mut tree).unwrap_err().to_string();
        assert!(e.contains("outside USR"), "{e}");
    }
}
