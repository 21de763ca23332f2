//! `_contents.txt`: one line per path of the USR filesystem as the running
//! system sees it (`/usr/...`), tab-separated (shown with spaces here):
//!
//! ```text
//! /usr/bin/busybox  -rwxr-xr-x  0:0  2201616  <sha256>
//! /usr/bin/sh  lrwxrwxrwx  0:0  7  -> busybox
//! /usr/lib  drwxr-xr-x  0:0  -  -
//! /usr/bin/ping  -rwxr-xr-x  0:0  90568  <sha256>  security.capability=cap_net_raw=ep
//! ```
//!
//! Columns: path, `ls -l` mode, numeric uid:gid, size (bytes; a symlink's
//! target length; `-` for directories), sha256 (`-> target` for symlinks),
//! and for paths that have extended attributes, a sixth: `name=value`
//! each, space-separated (capabilities as `getcap` prints them).

use std::fmt::Write;

use super::tree::{Kind, Tree, mode_string};
use crate::formats::fs::xattr;

/// The contents list of everything under `prefix` (and `prefix` itself).
pub fn contents_txt(tree: &Tree, prefix: &str) -> String {
    let mut out = String::new();
    let me = tree.get(prefix).map(|e| (prefix.to_string(), e.clone()));
    let below = tree.below(prefix).map(|(k, e)| (k.clone(), e.clone()));
    for (path, e) in me.into_iter().chain(below) {
        let (size, sum) = match &e.kind {
            Kind::Dir => ("-".to_string(), "-".to_string()),
            Kind::File { size, sha256 } => (size.to_string(), hex::encode(sha256)),
            Kind::Symlink { target } => (target.len().to_string(), format!("-> {target}")),
        };
        let _ = write!(
            out,
            "/{path}\t{}\t{}:{}\t{size}\t{sum}",
            mode_string(&e),
            e.uid,
            e.gid
        );
        // Extended attributes, when there are any, as a sixth column.
        for (i, (name, value)) in e.xattrs.iter().enumerate() {
            let sep = if i == 0 { '\t' } else { ' ' };
            let _ = write!(out, "{sep}{}", xattr::display(name, value));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_files_links_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path()).unwrap();
        t.add_dir("usr", 0o755, 0, 0, "t", false).unwrap();
        t.add_file("usr/a", &b"abc"[..], 0o4755, 0, 0, "t", false)
            .unwrap();
        t.add_symlink("usr/l", "a", 0, 0, "t", false).unwrap();
        let txt = contents_txt(&t, "usr");
        let lines: Vec<&str> = txt.lines().collect();
        assert_eq!(lines[0], "/usr\tdrwxr-xr-x\t0:0\t-\t-");
        assert_eq!(
            lines[1],
            "/usr/a\t-rwsr-xr-x\t0:0\t3\tba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(lines[2], "/usr/l\tlrwxrwxrwx\t0:0\t1\t-> a");
    }
}
