//! A one-pass writer of read-only ext4 filesystems: the USR filesystem of
//! an image, written straight from the staging tree and its attribute
//! table.
//!
//! `mke2fs -d` copies owners and times from the staged files, which an
//! unprivileged build cannot give the right owners and whose ctimes cannot
//! be set; fixing that afterwards took two `debugfs` passes of one command
//! per field and path, more time than the copy itself. Here the owner,
//! mode and times of every inode come from the table, file data is copied
//! into place with `copy_file_range` (in the kernel, on every core), and
//! nothing is read back or patched. The output depends on the table, the
//! file contents and the options only.
//!
//! What it writes is deliberately plain, for a filesystem that is never
//! written again (dm-verity guards it, so metadata checksums would add
//! nothing):
//!
//! - 4 KiB blocks, 256-byte inodes, no journal, no resize inode;
//! - features `filetype`, `extents`, `flex_bg` (all bitmaps and inode
//!   tables packed after group 0's descriptors, so data runs are long),
//!   `sparse_super`, `large_file`, `dir_nlink`, `extra_isize`, and
//!   `read-only` when asked;
//! - linear directories (no hash index): lookups in large directories scan
//!   their blocks, as ext2 always did;
//! - inode numbers in table order (root 2, `lost+found` 11, then the
//!   table), data in the same order, directories first;
//! - unused blocks are holes in the output file, so the image is sparse.
//!
//! `fsck.ext4 -fn` and `debugfs` are the outside oracles in the tests, and
//! the boot tests mount it with a real kernel.

use sdk_common::error::BadInput;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::io_err;
use rayon::prelude::*;
use uuid::Uuid;

/// Block size in bytes.
pub const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE;
const EXTRA_ISIZE: u16 = 32;
const ROOT_INO: u32 = 2;
const LPF_INO: u32 = 11;
const FIRST_INO: u32 = 12;
const LPF_BLOCKS: u64 = 4;
/// Extents in the inode itself, and in one leaf block.
const INODE_EXTENTS: usize = 4;
const LEAF_EXTENTS: usize = ((BLOCK - 12) / 12) as usize;
const EXTENTS_FL: u32 = 0x80000;
/// A directory with more subdirectories than this counts 1 link.
const LINK_MAX: u32 = 65000;
/// The smallest last group kept.
const MIN_LAST_GROUP: u64 = 64;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_READONLY: u32 = 0x1000;
const COMPAT_EXT_ATTR: u32 = 0x8;
/// Bytes for extended attributes after the inode's extra fields.
const IBODY_XATTR: usize = INODE_SIZE as usize - 128 - EXTRA_ISIZE as usize;

/// What one path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Dir,
    /// `size` bytes read from `source`.
    File {
        source: PathBuf,
        size: u64,
    },
    Symlink(String),
}

/// One path of the filesystem: `""` is the root, else `a/b/c`.
#[derive(Debug, Clone)]
pub struct Node {
    pub path: String,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Content,
    /// Extended attributes (`security.capability`, ...), kept in the
    /// inode's spare bytes.
    pub xattrs: super::xattr::Xattrs,
}

/// How to write it.
#[derive(Debug, Clone)]
pub struct Options {
    pub uuid: Uuid,
    /// Up to 16 bytes.
    pub label: String,
    /// Every inode and superblock time.
    pub epoch: u64,
    /// The directory hash seed (kept for tools that add an index later).
    pub hash_seed: Uuid,
    /// Set the `read-only` feature: the kernel mounts it read-only only.
    pub read_only: bool,
    /// Size in bytes (a multiple of 4096); `None`: the content plus
    /// `slack_percent`, rounded up to 1 MiB.
    pub size: Option<u64>,
    pub slack_percent: u64,
    /// Blocks per group (32768, the most a 4 KiB bitmap covers); smaller
    /// in tests to exercise many groups.
    pub blocks_per_group: u64,
    /// Longest extent in blocks (32768); smaller in tests to exercise
    /// extent index blocks.
    pub max_extent: u64,
    /// Set by [`write`] when a node has extended attributes (the
    /// `ext_attr` feature).
    pub xattrs: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            uuid: Uuid::nil(),
            label: String::new(),
            epoch: 0,
            hash_seed: Uuid::nil(),
            read_only: true,
            size: None,
            slack_percent: 0,
            blocks_per_group: 32768,
            max_extent: 32768,
            xattrs: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the filesystem (the output file's length).
    pub size: u64,
    /// Blocks in use.
    pub used_blocks: u64,
    pub inodes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{path:?}: {msg}")]
    BadNode { path: String, msg: String },
    #[error(
        "the content needs {need} bytes of ext4 but the size asked for is {size}; give at least {need}"
    )]
    TooSmall { need: u64, size: u64 },
    #[error(
        "the content needs {need} bytes of ext4, more than the 16 TiB this writer addresses; use erofs or squashfs"
    )]
    TooBig { need: u64 },
    #[error("ext4 label {0:?} is longer than 16 bytes")]
    Label(String),
    #[error("{}: {what}", path.display())]
    Changed { path: PathBuf, what: String },
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

impl BadInput for Ext4Error {
    /// Errors the caller's input causes (as opposed to I/O trouble).
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Ext4Error::BadNode { .. }
                | Ext4Error::TooSmall { .. }
                | Ext4Error::TooBig { .. }
                | Ext4Error::Label(_)
        )
    }
}

fn bad(path: &str, msg: impl Into<String>) -> Ext4Error {
    Ext4Error::BadNode {
        path: path.to_string(),
        msg: msg.into(),
    }
}

/// A run of blocks: (first block, count).
type Run = (u64, u64);

/// Where groups, their metadata and the reserved superblock copies sit.
#[derive(Debug, Clone)]
struct Geometry {
    blocks: u64,
    bpg: u64,
    groups: u64,
    inodes_per_group: u64,
    itable_blocks: u64,
    gdt_blocks: u64,
    /// Groups holding a superblock copy (0 first).
    sb_groups: Vec<u64>,
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// `sparse_super`: copies in groups 0, 1 and powers of 3, 5 and 7.
fn has_super(g: u64) -> bool {
    g <= 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
}

impl Geometry {
    fn new(blocks: u64, inodes: u64, bpg: u64) -> Geometry {
        let inode_groups = inodes.div_ceil(bpg); // a group's bitmap holds bpg inodes
        let mut groups = blocks.div_ceil(bpg).max(inode_groups).max(1);
        let mut blocks = blocks.max((groups - 1) * bpg + 1);
        // A last group too small for its own metadata copy is dropped (or
        // grown when the inodes need it), as mke2fs does.
        if groups > 1 && blocks - (groups - 1) * bpg < MIN_LAST_GROUP {
            if groups > inode_groups {
                groups -= 1;
                blocks = groups * bpg;
            } else {
                blocks = (groups - 1) * bpg + MIN_LAST_GROUP;
            }
        }
        let ipg = inodes
            .div_ceil(groups)
            .next_multiple_of(INODES_PER_BLOCK)
            .max(INODES_PER_BLOCK);
        Geometry {
            blocks,
            bpg,
            groups,
            inodes_per_group: ipg,
            itable_blocks: ipg / INODES_PER_BLOCK,
            gdt_blocks: (groups * 32).div_ceil(BLOCK),
            sb_groups: (0..groups).filter(|&g| has_super(g)).collect(),
        }
    }

    fn group_blocks(&self, g: u64) -> u64 {
        if g + 1 == self.groups {
            self.blocks - g * self.bpg
        } else {
            self.bpg
        }
    }

    /// Superblock + descriptor copies.
    fn reserved(&self) -> Vec<Run> {
        self.sb_groups
            .iter()
            .map(|&g| {
                (
                    g * self.bpg,
                    (1 + self.gdt_blocks).min(self.group_blocks(g)),
                )
            })
            .collect()
    }
}

/// Hands out blocks in increasing order, around the reserved runs.
struct Alloc {
    next: u64,
    end: u64,
    reserved: Vec<Run>,
    max_run: u64,
}

impl Alloc {
    fn skip_reserved(&mut self) -> u64 {
        while let Some(&(s, n)) = self
            .reserved
            .iter()
            .find(|&&(s, n)| self.next >= s && self.next < s + n)
        {
            self.next = s + n;
        }
        // Free up to the next reserved run (or the end).
        self.reserved
            .iter()
            .map(|&(s, _)| s)
            .filter(|&s| s > self.next)
            .min()
            .unwrap_or(self.end)
            .min(self.end)
    }

    /// `n` blocks in as few runs as fit; `None` when the space is out.
    fn take(&mut self, mut n: u64) -> Option<Vec<Run>> {
        let mut runs: Vec<Run> = Vec::new();
        while n > 0 {
            let limit = self.skip_reserved();
            if self.next >= limit {
                return None;
            }
            let k = n.min(limit - self.next).min(self.max_run);
            match runs.last_mut() {
                Some((s, len)) if *s + *len == self.next && *len + k <= self.max_run => *len += k,
                _ => runs.push((self.next, k)),
            }
            self.next += k;
            n -= k;
        }
        Some(runs)
    }

    /// `n` blocks in one run.
    fn take_contiguous(&mut self, n: u64) -> Option<u64> {
        loop {
            let limit = self.skip_reserved();
            if self.next >= self.end {
                return None;
            }
            if limit - self.next >= n {
                let s = self.next;
                self.next += n;
                return Some(s);
            }
            self.next = limit;
        }
    }
}

/// An inode to write.
#[derive(Debug, Clone, Default)]
struct Ino<'a> {
    st_mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    data: Vec<Run>,
    /// Extent leaf blocks, when the runs do not fit in the inode.
    leaves: Vec<u64>,
    xattrs: Option<&'a super::xattr::Xattrs>,
}

impl Ino<'_> {
    fn blocks(&self) -> u64 {
        self.data.iter().map(|r| r.1).sum::<u64>() + self.leaves.len() as u64
    }
}

/// The fixed part of the layout: what every node needs, before blocks are
/// placed.
struct Plan<'a> {
    nodes: &'a [Node],
    /// Inode number of each node.
    ino: Vec<u32>,
    /// Directory contents of each directory node (and lost+found last).
    dir_bytes: HashMap<usize, Vec<u8>>,
    lpf_bytes: Vec<u8>,
    /// Link counts of directories.
    links: Vec<u32>,
    /// Data blocks each node needs (without extent leaves).
    need: Vec<u64>,
    inodes: u64,
}

fn file_type(c: &Content) -> u8 {
    match c {
        Content::File { .. } => 1,
        Content::Dir => 2,
        Content::Symlink(_) => 7,
    }
}

/// Linear directory blocks holding `entries` (name, inode, type).
fn dir_blocks(entries: &[(&[u8], u32, u8)]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut block_start = 0usize;
    let mut last = None::<usize>;
    let close = |out: &mut Vec<u8>, block_start: usize, last: Option<usize>| {
        let end = block_start + BLOCK as usize;
        match last {
            Some(at) => {
                let rec = (end - at) as u16;
                out[at + 4..at + 6].copy_from_slice(&rec.to_le_bytes());
            }
            None => {
                // An empty block: one unused entry spanning it.
                out[block_start + 4..block_start + 6]
                    .copy_from_slice(&(BLOCK as u16).to_le_bytes());
            }
        }
        out.resize(end, 0);
    };
    out.resize(BLOCK as usize, 0);
    let mut used = 0usize;
    for (name, ino, ft) in entries {
        let len = (8 + name.len()).next_multiple_of(4);
        if used + len > BLOCK as usize {
            close(&mut out, block_start, last);
            block_start = out.len();
            out.resize(block_start + BLOCK as usize, 0);
            used = 0;
        }
        let at = block_start + used;
        out[at..at + 4].copy_from_slice(&ino.to_le_bytes());
        out[at + 4..at + 6].copy_from_slice(&(len as u16).to_le_bytes());
        out[at + 6] = name.len() as u8;
        out[at + 7] = *ft;
        out[at + 8..at + 8 + name.len()].copy_from_slice(name);
        last = Some(at);
        used += len;
    }
    close(&mut out, block_start, last);
    out
}

fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn plan(nodes: &[Node]) -> Result<Plan<'_>, Ext4Error> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if index.insert(n.path.as_str(), i).is_some() {
            return Err(bad(&n.path, "listed twice"));
        }
        if !n.xattrs.is_empty() && super::xattr::ext4_ibody(&n.xattrs, IBODY_XATTR).is_none() {
            return Err(bad(
                &n.path,
                format!(
                    "its extended attributes ({} bytes of names and values) do not fit the {IBODY_XATTR} bytes an inode holds; keep them short",
                    n.xattrs
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                ),
            ));
        }
    }
    let root = *index
        .get("")
        .ok_or_else(|| bad("", "no root directory (path \"\") in the table"))?;
    if nodes[root].content != Content::Dir {
        return Err(bad("", "the root must be a directory"));
    }
    let mut ino = vec![0u32; nodes.len()];
    let mut next = FIRST_INO;
    for (i, n) in nodes.iter().enumerate() {
        if i == root {
            ino[i] = ROOT_INO;
            continue;
        }
        ino[i] = next;
        next = next
            .checked_add(1)
            .ok_or_else(|| bad(&n.path, "too many inodes"))?;
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut parent = vec![root; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if i == root {
            continue;
        }
        let (dir, name) = split_parent(&n.path);
        if name.is_empty() || name == "." || name == ".." || name.len() > 255 {
            return Err(bad(
                &n.path,
                "not a valid file name (empty, `.`, `..` or longer than 255 bytes)",
            ));
        }
        if dir.is_empty() && name == "lost+found" {
            return Err(bad(
                &n.path,
                "lost+found at the filesystem root is the filesystem's own; move it elsewhere in the package",
            ));
        }
        let p = *index.get(dir).ok_or_else(|| {
            bad(
                &n.path,
                format!("its directory {dir:?} is not in the table"),
            )
        })?;
        if nodes[p].content != Content::Dir {
            return Err(bad(&n.path, format!("{dir:?} is not a directory")));
        }
        children[p].push(i);
        parent[i] = p;
    }
    let name_of = |i: usize| split_parent(&nodes[i].path).1.as_bytes();
    let mut dir_bytes = HashMap::new();
    let mut links = vec![1u32; nodes.len()];
    let mut need = vec![0u64; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        match &n.content {
            Content::Dir => {
                let mut kids = children[i].clone();
                kids.sort_by(|&a, &b| name_of(a).cmp(name_of(b)));
                let mut entries: Vec<(&[u8], u32, u8)> =
                    vec![(b".", ino[i], 2), (b"..", ino[parent[i]], 2)];
                let mut subdirs = 0u32;
                if i == root {
                    entries.push((b"lost+found", LPF_INO, 2));
                    subdirs += 1;
                }
                for &k in &kids {
                    let ft = file_type(&nodes[k].content);
                    subdirs += u32::from(ft == 2);
                    entries.push((name_of(k), ino[k], ft));
                }
                let bytes = dir_blocks(&entries);
                need[i] = bytes.len() as u64 / BLOCK;
                dir_bytes.insert(i, bytes);
                links[i] = 2 + subdirs;
            }
            Content::File { size, .. } => need[i] = size.div_ceil(BLOCK),
            Content::Symlink(t) => {
                if t.is_empty() || t.len() >= BLOCK as usize {
                    return Err(bad(
                        &n.path,
                        "a symlink target must be 1 to 4095 bytes long; shorten the link in its package",
                    ));
                }
                need[i] = u64::from(t.len() >= 60);
            }
        }
    }
    let lpf_bytes = {
        let mut b = dir_blocks(&[(b".", LPF_INO, 2), (b"..", ROOT_INO, 2)]);
        b.extend(dir_blocks(&[]).repeat(LPF_BLOCKS as usize - 1));
        b
    };
    Ok(Plan {
        nodes,
        ino,
        dir_bytes,
        lpf_bytes,
        links,
        need,
        inodes: u64::from(next - 1),
    })
}

/// Placed blocks of everything.
struct Layout {
    geo: Geometry,
    block_bitmaps: u64,
    inode_bitmaps: u64,
    itables: Vec<u64>,
    lpf: Vec<Run>,
    /// Runs and extent leaves of each node.
    data: Vec<Vec<Run>>,
    leaves: Vec<Vec<u64>>,
    used: Vec<Run>,
    used_blocks: u64,
}

fn leaves_needed(runs: usize) -> u64 {
    if runs <= INODE_EXTENTS {
        0
    } else {
        runs.div_ceil(LEAF_EXTENTS) as u64
    }
}

/// Place everything in `blocks` blocks; `None` if it does not fit.
fn place(plan: &Plan, blocks: u64, opts: &Options) -> Result<Option<Layout>, Ext4Error> {
    let geo = Geometry::new(blocks, plan.inodes, opts.blocks_per_group);
    if geo.inodes_per_group > opts.blocks_per_group {
        return Ok(None);
    }
    let mut a = Alloc {
        next: 0,
        end: geo.blocks,
        reserved: geo.reserved(),
        max_run: opts.max_extent,
    };
    let mut used: Vec<Run> = geo.reserved();
    let Some(block_bitmaps) = a.take_contiguous(geo.groups) else {
        return Ok(None);
    };
    let Some(inode_bitmaps) = a.take_contiguous(geo.groups) else {
        return Ok(None);
    };
    used.push((block_bitmaps, geo.groups));
    used.push((inode_bitmaps, geo.groups));
    let mut itables = Vec::with_capacity(geo.groups as usize);
    for _ in 0..geo.groups {
        let Some(t) = a.take_contiguous(geo.itable_blocks) else {
            return Ok(None);
        };
        used.push((t, geo.itable_blocks));
        itables.push(t);
    }
    let n = plan.nodes.len();
    let mut data = vec![Vec::new(); n];
    let mut leaves = vec![Vec::new(); n];
    // Ok(None): out of space.
    let mut place_one =
        |i: usize, a: &mut Alloc, used: &mut Vec<Run>| -> Result<Option<()>, Ext4Error> {
            if plan.need[i] == 0 {
                return Ok(Some(()));
            }
            let Some(runs) = a.take(plan.need[i]) else {
                return Ok(None);
            };
            let l = leaves_needed(runs.len());
            if l > INODE_EXTENTS as u64 {
                return Err(bad(
                    &plan.nodes[i].path,
                    format!(
                        "{} bytes take {} extents, more than the {} of a one-level extent tree",
                        plan.need[i] * BLOCK,
                        runs.len(),
                        INODE_EXTENTS * LEAF_EXTENTS
                    ),
                ));
            }
            used.extend(&runs);
            for _ in 0..l {
                let Some(b) = a.take_contiguous(1) else {
                    return Ok(None);
                };
                used.push((b, 1));
                leaves[i].push(b);
            }
            data[i] = runs;
            Ok(Some(()))
        };
    // lost+found and directories first, then everything else, in order.
    let Some(lpf) = a.take(LPF_BLOCKS) else {
        return Ok(None);
    };
    used.extend(&lpf);
    for i in 0..n {
        if plan.nodes[i].content == Content::Dir && place_one(i, &mut a, &mut used)?.is_none() {
            return Ok(None);
        }
    }
    for i in 0..n {
        if plan.nodes[i].content != Content::Dir && place_one(i, &mut a, &mut used)?.is_none() {
            return Ok(None);
        }
    }
    let used_blocks = used.iter().map(|r| r.1).sum();
    Ok(Some(Layout {
        geo,
        block_bitmaps,
        inode_bitmaps,
        itables,
        lpf,
        data,
        leaves,
        used,
        used_blocks,
    }))
}

/// Seconds as ext4 keeps them: the low 32 bits (signed) and the epoch
/// bits of the `_extra` field.
fn time_fields(t: u64) -> (u32, u32) {
    let lo = t as u32;
    let extra = ((t as i64 - i64::from(lo as i32)) >> 32) as u32 & 3;
    (lo, extra)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Extent header + entries.
fn extent_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, 0xF30A);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

/// Leaf entries for `runs` starting at logical block `logical`.
fn put_extents(b: &mut [u8], runs: &[Run], mut logical: u64) -> u64 {
    for (k, &(start, len)) in runs.iter().enumerate() {
        let e = 12 + 12 * k;
        put32(b, e, logical as u32);
        put16(b, e + 4, len as u16);
        put16(b, e + 6, (start >> 32) as u16);
        put32(b, e + 8, start as u32);
        logical += len;
    }
    logical
}

/// The inode's `i_block` and its leaf blocks (block, bytes).
fn extent_tree(ino: &Ino) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let mut root = [0u8; 60];
    if ino.leaves.is_empty() {
        extent_header(&mut root, ino.data.len(), INODE_EXTENTS, 0);
        put_extents(&mut root, &ino.data, 0);
        return (root, Vec::new());
    }
    extent_header(&mut root, ino.leaves.len(), INODE_EXTENTS, 1);
    let mut blocks = Vec::new();
    let mut logical = 0u64;
    for (k, (chunk, &leaf)) in ino.data.chunks(LEAF_EXTENTS).zip(&ino.leaves).enumerate() {
        let e = 12 + 12 * k;
        put32(&mut root, e, logical as u32);
        put32(&mut root, e + 4, leaf as u32);
        put16(&mut root, e + 8, (leaf >> 32) as u16);
        let mut b = vec![0u8; BLOCK as usize];
        extent_header(&mut b, chunk.len(), LEAF_EXTENTS, 0);
        logical = put_extents(&mut b, chunk, logical);
        blocks.push((leaf, b));
    }
    (root, blocks)
}

/// The inode's bytes; extent leaf blocks it needs go to `leaves`. A
/// fast symlink keeps its target in the inode (`inline`).
fn encode(
    ino: &Ino,
    inline: Option<&[u8]>,
    epoch: u64,
    leaves: &mut Vec<(u64, Vec<u8>)>,
) -> [u8; INODE_SIZE as usize] {
    let mut b = match inline {
        Some(target) => {
            let mut root = [0u8; 60];
            root[..target.len()].copy_from_slice(target);
            inode_bytes(ino, &root, 0, epoch)
        }
        None => {
            let (root, blocks) = extent_tree(ino);
            leaves.extend(blocks);
            inode_bytes(ino, &root, EXTENTS_FL, epoch)
        }
    };
    if let Some(attrs) = ino.xattrs.filter(|a| !a.is_empty()) {
        // `plan` refused attributes that do not fit.
        let area = super::xattr::ext4_ibody(attrs, IBODY_XATTR).unwrap_or_default();
        b[INODE_SIZE as usize - area.len()..].copy_from_slice(&area);
    }
    b
}

fn inode_bytes(ino: &Ino, i_block: &[u8; 60], flags: u32, epoch: u64) -> [u8; INODE_SIZE as usize] {
    let mut b = [0u8; INODE_SIZE as usize];
    let (t, extra) = time_fields(epoch);
    put16(&mut b, 0x00, ino.st_mode);
    put16(&mut b, 0x02, ino.uid as u16);
    put32(&mut b, 0x04, ino.size as u32);
    put32(&mut b, 0x08, t); // atime
    put32(&mut b, 0x0C, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, ino.gid as u16);
    put16(&mut b, 0x1A, ino.links);
    put32(&mut b, 0x1C, (ino.blocks() * (BLOCK / 512)) as u32);
    put32(&mut b, 0x20, flags);
    b[0x28..0x64].copy_from_slice(i_block);
    put32(&mut b, 0x6C, (ino.size >> 32) as u32);
    put16(&mut b, 0x74, ((ino.blocks() * (BLOCK / 512)) >> 32) as u16);
    put16(&mut b, 0x78, (ino.uid >> 16) as u16);
    put16(&mut b, 0x7A, (ino.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    put32(&mut b, 0x84, extra); // ctime_extra
    put32(&mut b, 0x88, extra); // mtime_extra
    put32(&mut b, 0x8C, extra); // atime_extra
    put32(&mut b, 0x90, t); // crtime
    put32(&mut b, 0x94, extra);
    b
}

/// The smallest layout, then grown by the slack.
fn fit(plan: &Plan, opts: &Options) -> Result<Layout, Ext4Error> {
    let data: u64 = plan.need.iter().sum::<u64>() + LPF_BLOCKS;
    let itable = plan.inodes.div_ceil(INODES_PER_BLOCK);
    let mut blocks = data + data / 256 + itable + 16;
    let min = loop {
        if let Some(l) = place(plan, blocks, opts)? {
            break l;
        }
        blocks += blocks / 64 + 16;
    };
    let mib = (1 << 20) / BLOCK;
    let mut blocks = (min.used_blocks * (100 + opts.slack_percent))
        .div_ceil(100)
        .next_multiple_of(mib)
        .max(min.geo.blocks);
    loop {
        if let Some(l) = place(plan, blocks, opts)? {
            return Ok(l);
        }
        blocks += mib;
    }
}

/// Write the filesystem of `nodes` into `out` (a new, empty file) and
/// return its size. File contents are read from their `source` paths.
pub fn write(
    nodes: &[Node],
    out: &File,
    out_path: &std::path::Path,
    opts: &Options,
) -> Result<Written, Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::Label(opts.label.clone()));
    }
    let plan = plan(nodes)?;
    let with_xattrs = Options {
        xattrs: nodes.iter().any(|n| !n.xattrs.is_empty()),
        ..opts.clone()
    };
    let opts = &with_xattrs;
    let lay = sized_layout(&plan, opts)?;
    let geo = &lay.geo;
    // Block numbers are 32-bit without the `64bit` feature: 16 TiB.
    if geo.blocks > u64::from(u32::MAX) {
        return Err(Ext4Error::TooBig {
            need: geo.blocks * BLOCK,
        });
    }
    out.set_len(geo.blocks * BLOCK)
        .map_err(io_err("size", out_path))?;
    let put = Put {
        file: out,
        path: out_path,
    };
    let (dirs_in_group, leaf_blocks) = write_inodes(nodes, &plan, &lay, opts.epoch, &put)?;
    let counts = write_bitmaps(&plan, &lay, &put)?;

    // Directories, long symlinks, extent leaves.
    put.runs(&lay.lpf, &plan.lpf_bytes)?;
    for (i, n) in nodes.iter().enumerate() {
        match &n.content {
            Content::Dir => put.runs(&lay.data[i], &plan.dir_bytes[&i])?,
            Content::Symlink(t) if t.len() >= 60 => put.runs(&lay.data[i], t.as_bytes())?,
            _ => {}
        }
    }
    for (blk, bytes) in &leaf_blocks {
        put.at(*blk, bytes)?;
    }
    write_superblocks(&lay, opts, &counts, &dirs_in_group, plan.inodes, &put)?;

    // File data, in parallel: in-kernel copies straight into place.
    nodes
        .par_iter()
        .enumerate()
        .try_for_each(|(i, n)| match &n.content {
            Content::File { source, size } if *size > 0 => {
                copy_into(source, *size, &lay.data[i], out, out_path)
            }
            _ => Ok(()),
        })?;

    Ok(Written {
        size: geo.blocks * BLOCK,
        used_blocks: lay.used_blocks,
        inodes: plan.inodes as u32,
    })
}

/// An extent leaf block: where it goes and its bytes.
type LeafBlock = (u64, Vec<u8>);

/// Block writes into the image, with its path in errors.
struct Put<'a> {
    file: &'a File,
    path: &'a std::path::Path,
}

impl Put<'_> {
    fn at(&self, block: u64, bytes: &[u8]) -> Result<(), Ext4Error> {
        Ok(self
            .file
            .write_all_at(bytes, block * BLOCK)
            .map_err(io_err("write", self.path))?)
    }

    /// `bytes` laid over the block runs, in order.
    fn runs(&self, runs: &[Run], bytes: &[u8]) -> Result<(), Ext4Error> {
        let mut at = 0usize;
        for &(s, n) in runs {
            let len = (n * BLOCK) as usize;
            self.at(s, &bytes[at..(at + len).min(bytes.len())])?;
            at += len;
        }
        Ok(())
    }
}

/// The layout: fitted to the content (with slack), or at the size asked,
/// which must hold it.
fn sized_layout(plan: &Plan, opts: &Options) -> Result<Layout, Ext4Error> {
    let Some(size) = opts.size else {
        return fit(plan, opts);
    };
    let blocks = size / BLOCK;
    match place(plan, blocks, opts)? {
        Some(l) if size.is_multiple_of(BLOCK) && l.geo.blocks == blocks => Ok(l),
        _ => {
            let tight = Options {
                slack_percent: 0,
                ..opts.clone()
            };
            Err(Ext4Error::TooSmall {
                need: fit(plan, &tight)?.geo.blocks * BLOCK,
                size,
            })
        }
    }
}

/// The inode tables: lost+found and every node's inode, encoded and
/// written group by group. Returns the directories per group (for the
/// descriptors) and the extent leaf blocks still to write.
fn write_inodes(
    nodes: &[Node],
    plan: &Plan,
    lay: &Layout,
    epoch: u64,
    put: &Put<'_>,
) -> Result<(Vec<u32>, Vec<LeafBlock>), Ext4Error> {
    let geo = &lay.geo;
    let total_inodes = geo.inodes_per_group * geo.groups;
    let mut itable = vec![0u8; (total_inodes * INODE_SIZE) as usize];
    let mut dirs_in_group = vec![0u32; geo.groups as usize];
    let mut set_inode = |n: u32, bytes: &[u8; INODE_SIZE as usize]| {
        let at = ((n - 1) as u64 * INODE_SIZE) as usize;
        itable[at..at + INODE_SIZE as usize].copy_from_slice(bytes);
    };
    let links = |l: u32| if l > LINK_MAX { 1 } else { l as u16 };
    let mut leaf_blocks: Vec<LeafBlock> = Vec::new();
    let mut count_dir = |n: u32| {
        dirs_in_group[((n - 1) as u64 / geo.inodes_per_group) as usize] += 1;
    };
    let lpf = Ino {
        st_mode: 0o040700,
        size: LPF_BLOCKS * BLOCK,
        links: 2,
        data: lay.lpf.clone(),
        ..Ino::default()
    };
    count_dir(LPF_INO);
    set_inode(LPF_INO, &encode(&lpf, None, epoch, &mut leaf_blocks));
    for (i, n) in nodes.iter().enumerate() {
        let perm = (n.mode & 0o7777) as u16;
        let mut ino = Ino {
            uid: n.uid,
            gid: n.gid,
            links: 1,
            data: lay.data[i].clone(),
            leaves: lay.leaves[i].clone(),
            xattrs: Some(&n.xattrs),
            ..Ino::default()
        };
        let mut inline = None;
        match &n.content {
            Content::Dir => {
                ino.st_mode = 0o040000 | perm;
                ino.size = plan.need[i] * BLOCK;
                ino.links = links(plan.links[i]);
                count_dir(plan.ino[i]);
            }
            Content::File { size, .. } => {
                ino.st_mode = 0o100000 | perm;
                ino.size = *size;
            }
            Content::Symlink(t) => {
                ino.st_mode = 0o120777;
                ino.size = t.len() as u64;
                if t.len() < 60 {
                    inline = Some(t.as_bytes());
                }
            }
        }
        set_inode(plan.ino[i], &encode(&ino, inline, epoch, &mut leaf_blocks));
    }
    for g in 0..geo.groups {
        let at = (g * geo.inodes_per_group * INODE_SIZE) as usize;
        let len = (geo.itable_blocks * BLOCK) as usize;
        put.at(lay.itables[g as usize], &itable[at..at + len])?;
    }
    Ok((dirs_in_group, leaf_blocks))
}

/// Free blocks and inodes per group, as the bitmaps left them.
struct FreeCounts {
    blocks: Vec<u64>,
    inodes: Vec<u64>,
}

/// The block and inode bitmaps of every group (the bits past a group's
/// end set, as ext4 wants), written; returns the free counts.
fn write_bitmaps(plan: &Plan, lay: &Layout, put: &Put<'_>) -> Result<FreeCounts, Ext4Error> {
    let geo = &lay.geo;
    let per_bitmap = BLOCK as usize;
    let mut bbm = vec![0u8; per_bitmap * geo.groups as usize];
    let set_bit = |bm: &mut [u8], bit: u64| bm[(bit / 8) as usize] |= 1 << (bit % 8);
    for &(s, n) in &lay.used {
        for blk in s..s + n {
            let (g, off) = (blk / geo.bpg, blk % geo.bpg);
            set_bit(&mut bbm[g as usize * per_bitmap..], off);
        }
    }
    let mut free_blocks = vec![0u64; geo.groups as usize];
    for g in 0..geo.groups {
        let bm = &mut bbm[g as usize * per_bitmap..(g as usize + 1) * per_bitmap];
        let have = geo.group_blocks(g);
        for off in have..(BLOCK * 8) {
            set_bit(bm, off);
        }
        // Set bits are the used blocks plus the padding past `have`.
        free_blocks[g as usize] =
            BLOCK * 8 - bm.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
    }
    let mut ibm = vec![0u8; per_bitmap * geo.groups as usize];
    let mut free_inodes = vec![0u64; geo.groups as usize];
    for g in 0..geo.groups {
        let bm = &mut ibm[g as usize * per_bitmap..(g as usize + 1) * per_bitmap];
        let first = g * geo.inodes_per_group; // 0-based inode index
        let used_here = plan.inodes.saturating_sub(first).min(geo.inodes_per_group);
        for k in 0..used_here {
            set_bit(bm, k);
        }
        for k in geo.inodes_per_group..BLOCK * 8 {
            set_bit(bm, k);
        }
        free_inodes[g as usize] = geo.inodes_per_group - used_here;
    }
    put.at(lay.block_bitmaps, &bbm)?;
    put.at(lay.inode_bitmaps, &ibm)?;
    Ok(FreeCounts {
        blocks: free_blocks,
        inodes: free_inodes,
    })
}

/// The group descriptors and the superblock, in group 0 and in every
/// group that carries a backup copy.
fn write_superblocks(
    lay: &Layout,
    opts: &Options,
    free: &FreeCounts,
    dirs_in_group: &[u32],
    used_inodes: u64,
    put: &Put<'_>,
) -> Result<(), Ext4Error> {
    let geo = &lay.geo;
    let total_free: u64 = free.blocks.iter().sum();
    let total_inodes = geo.inodes_per_group * geo.groups;
    let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK) as usize];
    for g in 0..geo.groups as usize {
        let d = &mut gdt[g * 32..g * 32 + 32];
        put32(d, 0x00, (lay.block_bitmaps + g as u64) as u32);
        put32(d, 0x04, (lay.inode_bitmaps + g as u64) as u32);
        put32(d, 0x08, lay.itables[g] as u32);
        put16(d, 0x0C, free.blocks[g] as u16);
        put16(d, 0x0E, free.inodes[g] as u16);
        put16(d, 0x10, dirs_in_group[g] as u16);
    }
    for &g in &geo.sb_groups {
        let sb = superblock(geo, opts, total_free, total_inodes - used_inodes, g);
        let start = g * geo.bpg;
        if g == 0 {
            let mut first = vec![0u8; BLOCK as usize];
            first[1024..2048].copy_from_slice(&sb);
            put.at(0, &first)?;
        } else {
            put.at(start, &sb)?;
        }
        put.at(start + 1, &gdt)?;
    }
    Ok(())
}

fn superblock(
    geo: &Geometry,
    opts: &Options,
    free_blocks: u64,
    free_inodes: u64,
    group: u64,
) -> Vec<u8> {
    let mut s = vec![0u8; 1024];
    let (t, _) = time_fields(opts.epoch);
    put32(&mut s, 0x00, (geo.inodes_per_group * geo.groups) as u32);
    put32(&mut s, 0x04, geo.blocks as u32);
    put32(&mut s, 0x0C, free_blocks as u32);
    put32(&mut s, 0x10, free_inodes as u32);
    put32(&mut s, 0x14, 0); // first data block
    put32(&mut s, 0x18, 2); // log2(block size) - 10
    put32(&mut s, 0x1C, 2);
    put32(&mut s, 0x20, geo.bpg as u32);
    put32(&mut s, 0x24, geo.bpg as u32);
    put32(&mut s, 0x28, geo.inodes_per_group as u32);
    put32(&mut s, 0x30, t); // write time
    put16(&mut s, 0x36, 0xFFFF); // max mount count: none
    put16(&mut s, 0x38, 0xEF53);
    put16(&mut s, 0x3A, 1); // clean
    put16(&mut s, 0x3C, 1); // on errors: continue
    put32(&mut s, 0x40, t); // last check
    put32(&mut s, 0x4C, 1); // dynamic revision
    put32(&mut s, 0x54, LPF_INO);
    put16(&mut s, 0x58, INODE_SIZE as u16);
    put16(&mut s, 0x5A, group as u16);
    if opts.xattrs {
        put32(&mut s, 0x5C, COMPAT_EXT_ATTR);
    }
    put32(
        &mut s,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG,
    );
    let mut ro =
        RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE;
    if opts.read_only {
        ro |= RO_COMPAT_READONLY;
    }
    put32(&mut s, 0x64, ro);
    s[0x68..0x78].copy_from_slice(opts.uuid.as_bytes());
    s[0x78..0x78 + opts.label.len()].copy_from_slice(opts.label.as_bytes());
    s[0xEC..0xFC].copy_from_slice(opts.hash_seed.as_bytes());
    s[0xFC] = 1; // half_md4
    put32(&mut s, 0x108, t); // mkfs time
    put16(&mut s, 0x15C, EXTRA_ISIZE);
    put16(&mut s, 0x15E, EXTRA_ISIZE);
    put32(&mut s, 0x160, 1); // signed directory hash
    s[0x174] = 4; // 16 groups per flex group
    s
}

/// Copy `size` bytes of `source` into the runs, in the kernel where it
/// can.
fn copy_into(
    source: &std::path::Path,
    size: u64,
    runs: &[Run],
    out: &File,
    out_path: &std::path::Path,
) -> Result<(), Ext4Error> {
    let src = File::open(source).map_err(io_err("open", source))?;
    let now = src.metadata().map_err(io_err("stat", source))?.len();
    if now != size {
        return Err(Ext4Error::Changed {
            path: source.to_path_buf(),
            what: format!(
                "is {now} bytes, but was {size} when the tree was staged; leave the staging root alone while build_image runs, then run it again"
            ),
        });
    }
    let mut pos = 0u64;
    let mut buf = Vec::new();
    for &(start, n) in runs {
        let len = (n * BLOCK).min(size - pos);
        let mut done = 0u64;
        while done < len {
            let mut off_in = (pos + done) as i64;
            let mut off_out = (start * BLOCK + done) as i64;
            let want = (len - done).min(1 << 30) as usize;
            let got = match nix::fcntl::copy_file_range(
                &src,
                Some(&mut off_in),
                out,
                Some(&mut off_out),
                want,
            ) {
                Ok(k) => k as u64,
                Err(
                    nix::errno::Errno::EXDEV
                    | nix::errno::Errno::EINVAL
                    | nix::errno::Errno::ENOSYS
                    | nix::errno::Errno::EOPNOTSUPP,
                ) => {
                    // Across filesystems on old kernels: copy by hand.
                    buf.resize(want.min(1 << 20), 0);
                    let k = src
                        .read_at(&mut buf, pos + done)
                        .map_err(io_err("read", source))?;
                    out.write_all_at(&buf[..k], start * BLOCK + done)
                        .map_err(io_err("write", out_path))?;
                    k as u64
                }
                Err(e) => return Err(io_err("copy from", source)(e.into()).into()),
            };
            if got == 0 {
                return Err(Ext4Error::Changed {
                    path: source.to_path_buf(),
                    what: format!(
                        "shrank to {} bytes while being copied (was {size})",
                        pos + done
                    ),
                });
            }
            done += got;
        }
        pos += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let g: Vec<u64> = (0..30).filter(|&g| has_super(g)).collect();
        assert_eq!(g, vec![0, 1, 3, 5, 7, 9, 25, 27]);
    }

    #[test]
    fn times_after_2038_use_the_extra_bits() {
        assert_eq!(time_fields(1_700_000_000), (1_700_000_000, 0));
        let t = (1u64 << 31) + 5;
        let (lo, extra) = time_fields(t);
        assert_eq!(i64::from(lo as i32) + (i64::from(extra) << 32), t as i64);
    }

    #[test]
    fn directory_blocks_fill_and_close() {
        let names: Vec<String> = (0..400).map(|i| format!("file-number-{i:04}")).collect();
        let entries: Vec<(&[u8], u32, u8)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes(), 20 + i as u32, 1))
            .collect();
        let b = dir_blocks(&entries);
        assert_eq!(b.len() % BLOCK as usize, 0);
        assert!(b.len() > BLOCK as usize);
        // Every block's rec_lens add up to the block.
        for blk in b.chunks(BLOCK as usize) {
            let mut at = 0usize;
            while at < BLOCK as usize {
                let rec = u16::from_le_bytes([blk[at + 4], blk[at + 5]]) as usize;
                assert!(rec >= 8 && rec.is_multiple_of(4));
                at += rec;
            }
            assert_eq!(at, BLOCK as usize);
        }
    }

    #[test]
    fn bad_tables_are_refused() {
        let dir = |p: &str| Node {
            path: p.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            content: Content::Dir,
            xattrs: Default::default(),
        };
        let err = plan(&[dir("a")]).err().unwrap().to_string();
        assert!(err.contains("no root directory"), "{err}");
        let err = plan(&[dir(""), dir("a/b")]).err().unwrap().to_string();
        assert!(err.contains("is not in the table"), "{err}");
        let err = plan(&[dir(""), dir("lost+found")])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lost+found"), "{err}");
    }

    /// A tree on disk and its table: every kind, sizes around block
    /// boundaries, owners and modes the staged files do not have.
    fn sample(dir: &std::path::Path, big: usize) -> Vec<Node> {
        let mut nodes = vec![Node {
            path: String::new(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            content: Content::Dir,
            xattrs: Default::default(),
        }];
        let add_dir = |nodes: &mut Vec<Node>, p: &str, mode: u32, uid: u32| {
            nodes.push(Node {
                path: p.into(),
                mode,
                uid,
                gid: uid,
                content: Content::Dir,
                xattrs: Default::default(),
            });
        };
        add_dir(&mut nodes, "bin", 0o755, 0);
        add_dir(&mut nodes, "lib", 0o755, 0);
        add_dir(&mut nodes, "lib/many", 0o755, 0);
        add_dir(&mut nodes, "secret", 0o700, 70000);
        let sizes = [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 17, big];
        for (k, size) in sizes.iter().enumerate() {
            let src = dir.join(format!("f{k}"));
            let data: Vec<u8> = (0..*size).map(|i| (i * 7 + k) as u8).collect();
            std::fs::write(&src, &data).unwrap();
            nodes.push(Node {
                path: format!("bin/file-{k}"),
                mode: if k == 2 { 0o4755 } else { 0o644 },
                uid: k as u32,
                gid: 100 + k as u32,
                content: Content::File {
                    source: src,
                    size: *size as u64,
                },
                xattrs: Default::default(),
            });
        }
        // Attributes: a file capability, and a user attribute on a
        // directory.
        nodes[6].xattrs.insert(
            crate::formats::fs::xattr::CAPABILITY.into(),
            crate::formats::fs::xattr::capability_from_text("cap_net_raw+ep").unwrap(),
        );
        nodes[4].xattrs.insert("user.note".into(), b"kept".to_vec());
        let src = dir.join("small");
        std::fs::write(&src, b"x").unwrap();
        for k in 0..300 {
            nodes.push(Node {
                path: format!("lib/many/a-rather-long-file-name-to-fill-blocks-{k:04}"),
                mode: 0o644,
                uid: 0,
                gid: 0,
                content: Content::File {
                    source: src.clone(),
                    size: 1,
                },
                xattrs: Default::default(),
            });
        }
        nodes.push(Node {
            path: "lib/short".into(),
            mode: 0o777,
            uid: 0,
            gid: 0,
            content: Content::Symlink("../bin/file-1".into()),
            xattrs: Default::default(),
        });
        nodes.push(Node {
            path: "lib/long".into(),
            mode: 0o777,
            uid: 0,
            gid: 0,
            content: Content::Symlink(format!("../{}/x", "d".repeat(120))),
            xattrs: Default::default(),
        });
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        nodes
    }

    fn tool(args: &[&str]) -> std::process::Output {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (install e2fsprogs)", args[0]))
    }

    /// Write, then check with e2fsck and read everything back with
    /// debugfs.
    fn round_trip(opts: &Options, big: usize) {
        let dir = tempfile::tempdir().unwrap();
        let nodes = sample(dir.path(), big);
        let img = dir.path().join("usr.img");
        let f = File::create(&img).unwrap();
        let w = write(&nodes, &f, &img, opts).unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), w.size);
        let fsck = tool(&["e2fsck", "-fn", img.to_str().unwrap()]);
        assert!(
            fsck.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let out = dir.path().join("dump");
        std::fs::create_dir(&out).unwrap();
        let r = tool(&[
            "debugfs",
            "-R",
            &format!("rdump / {}", out.display()),
            img.to_str().unwrap(),
        ]);
        assert!(r.status.success());
        for n in &nodes {
            let got = out.join(&n.path);
            match &n.content {
                Content::File { source, .. } => assert_eq!(
                    std::fs::read(&got).unwrap(),
                    std::fs::read(source).unwrap(),
                    "{}",
                    n.path
                ),
                Content::Symlink(t) => {
                    assert_eq!(std::fs::read_link(&got).unwrap().to_str().unwrap(), t)
                }
                Content::Dir => assert!(got.is_dir(), "{}", n.path),
            }
            let stat = tool(&[
                "debugfs",
                "-R",
                &format!("stat \"/{}\"", n.path),
                img.to_str().unwrap(),
            ]);
            let text = String::from_utf8_lossy(&stat.stdout);
            let want_mode = match n.content {
                Content::Symlink(_) => 0o777,
                _ => n.mode,
            };
            assert!(
                text.contains(&format!("Mode:  0{want_mode:03o}")),
                "{}: {text}",
                n.path
            );
            assert!(
                text.contains(&format!("User: {:>5}   Group: {:>5}", n.uid, n.gid)),
                "{}: {text}",
                n.path
            );
            assert!(
                text.contains("mtime: 0x6553f100:00000000"),
                "{}: {text}",
                n.path
            );
            assert!(
                text.contains("crtime: 0x6553f100:00000000"),
                "{}: {text}",
                n.path
            );
            for (name, value) in &n.xattrs {
                let want = format!("{name} ({})", value.len());
                assert!(text.contains(&want), "{}: {want} not in {text}", n.path);
            }
        }
        let sb = tool(&["dumpe2fs", "-h", img.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&sb.stdout);
        assert!(text.contains("Filesystem volume name:   USR-A"), "{text}");
        assert!(text.contains("read-only"), "{text}");
    }

    fn opts() -> Options {
        Options {
            uuid: Uuid::from_u128(0x1234),
            label: "USR-A".into(),
            epoch: 1_700_000_000,
            hash_seed: Uuid::from_u128(0x5678),
            slack_percent: 10,
            ..Options::default()
        }
    }

    #[test]
    fn e2fsck_and_debugfs_agree_with_the_table() {
        round_trip(&opts(), 1 << 20);
    }

    #[test]
    fn many_groups_and_extent_leaf_blocks() {
        // 256-block groups with superblock copies in the way, 8-block
        // extents: a 2 MiB file needs 64+ extents (a leaf block).
        let o = Options {
            blocks_per_group: 256,
            max_extent: 8,
            ..opts()
        };
        round_trip(&o, 2 << 20);
    }

    #[test]
    fn same_input_same_bytes_and_a_fixed_size_that_is_too_small() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = sample(dir.path(), 100_000);
        let build = |name: &str, o: &Options| {
            let p = dir.path().join(name);
            let f = File::create(&p).unwrap();
            write(&nodes, &f, &p, o).map(|_| std::fs::read(&p).unwrap())
        };
        assert_eq!(build("a", &opts()).unwrap(), build("b", &opts()).unwrap());
        let err = build(
            "c",
            &Options {
                size: Some(1 << 20),
                ..opts()
            },
        )
        .unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("give at least"),
            "{err}"
        );
    }
}
