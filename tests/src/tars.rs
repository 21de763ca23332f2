//! Tarballs built entry by entry for the tests, hostile names included
//! (written into the header by hand, past the `tar` builder's checks), a
//! `docker save` archive around them, and the hostile corpus that every
//! path that unpacks layers is checked with.

use sha2::{Digest, Sha256};

/// A tar entry list, with raw names (hostile ones included).
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Tar {
        Tar::new()
    }
}

impl Tar {
    pub fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        name: &str,
        data: &[u8],
        link: &str,
        uid: u64,
    ) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub fn file(self, name: &str, data: &str) -> Tar {
        self.raw(tar::EntryType::Regular, name, data.as_bytes(), "", 0)
    }
    pub fn owned(self, name: &str, uid: u64) -> Tar {
        self.raw(tar::EntryType::Regular, name, b"owned", "", uid)
    }
    pub fn dir(self, name: &str) -> Tar {
        self.raw(tar::EntryType::Directory, name, b"", "", 0)
    }
    pub fn symlink(self, name: &str, to: &str) -> Tar {
        self.raw(tar::EntryType::Symlink, name, b"", to, 0)
    }
    pub fn hardlink(self, name: &str, to: &str) -> Tar {
        self.raw(tar::EntryType::Link, name, b"", to, 0)
    }
    /// Debian's static busybox as `bin/busybox`, with `bin/sh` and
    /// `bin/true` linked to it: enough of a rootfs to start a sandbox.
    pub fn busybox(mut self) -> Tar {
        let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        self = self.dir("bin");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bb.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
        self.symlink("bin/sh", "busybox")
            .symlink("bin/true", "busybox")
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A rootfs tarball of `count` small files (`file N` said `repeat`
/// times) spread over `dirs` folders `dK/`: an import long enough to be
/// killed in the middle.
pub fn many_small_files(count: usize, dirs: usize, repeat: usize) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for i in 0..count {
        let mut h = tar::Header::new_gnu();
        let data = format!("file {i}\n").repeat(repeat);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, format!("d{}/f{i}", i % dirs), data.as_bytes())
            .unwrap();
    }
    t.into_inner().unwrap()
}

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A `docker save` style tarball: manifest.json, config, `<id>/layer.tar`.
pub fn docker_save(layers: &[Vec<u8>], env: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": env, "WorkingDir": "/work", "User": "0:0" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cfg_name = format!("{}.json", sha(&config));
    let mut names = Vec::new();
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for (i, l) in layers.iter().enumerate() {
        let n = format!("{:064x}/layer.tar", i + 1);
        add(&mut b, &n, l);
        names.push(n);
    }
    add(&mut b, &cfg_name, &config);
    let manifest =
        serde_json::json!([{ "Config": cfg_name, "RepoTags": ["test/sdk:1"], "Layers": names }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

/// A hostile entry list, added to a tar: names with `..`, absolute names,
/// writes through symlinks and hard links that point outside, device
/// nodes. `outside` is a directory nothing may be written into.
pub type Hostile = Box<dyn Fn(Tar) -> Tar>;

/// The corpus every unpacking path is checked with, by name.
pub fn hostile_corpus(outside: &str) -> Vec<(&'static str, Hostile)> {
    let o = outside.to_string();
    vec![
        (
            "dotdot",
            Box::new(|t: Tar| t.file("../escape", "x").file("a/../../escape", "x")),
        ),
        (
            "absolute",
            Box::new({
                let o = o.clone();
                move |t: Tar| t.file(&format!("{o}/abs"), "x")
            }),
        ),
        (
            "symlink-then-write",
            Box::new({
                let o = o.clone();
                move |t: Tar| {
                    t.symlink("link", &o)
                        .file("link/pwned", "x")
                        .symlink("up", "../../../../../../..")
                        .file(&format!("up{o}/pwned2"), "x")
                }
            }),
        ),
        (
            "symlink-replaced-file",
            Box::new({
                let o = o.clone();
                move |t: Tar| {
                    t.symlink("victim", &format!("{o}/secret"))
                        .file("victim", "overwritten?")
                }
            }),
        ),
        (
            "hardlinks-out",
            Box::new({
                let o = o.clone();
                move |t: Tar| {
                    t.hardlink("h1", &format!("{o}/secret"))
                        .hardlink("h2", "../outside/secret")
                        .symlink("l", &o)
                        .hardlink("h3", "l/secret")
                }
            }),
        ),
        (
            "devices",
            Box::new(|t: Tar| {
                t.raw(tar::EntryType::Block, "sda", b"", "", 0).raw(
                    tar::EntryType::Char,
                    "mem",
                    b"",
                    "",
                    0,
                )
            }),
        ),
    ]
}
