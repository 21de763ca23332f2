//! User and group id maps for the sandbox's user namespace. Owns reading
//! `/etc/subuid` / `/etc/subgid` (paths are parameters so tests use temp
//! files), laying out the map, and writing it for a child process (through
//! `newuidmap`/`newgidmap`, or directly where the kernel allows it). It does
//! not create namespaces (see `sandbox::userns`).
//!
//! Layout of the full map, for a caller with range `START:COUNT`:
//!
//! ```text
//! inside 0..999         -> START..START+999        (root and system users)
//! inside 1000 (sdk)     -> the caller's own uid    (files on binds stay the caller's)
//! inside 1001..COUNT    -> START+1000..START+COUNT-1
//! ```
//!
//! Without a range the map is the single line `1000 CALLER 1`, with a
//! warning: only the sdk user exists inside, there is no root. Root is the
//! exception: it may write any map itself, so without an entry it uses
//! [`ROOT_DEFAULT_RANGE`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::CommandExt;

/// The uid (and gid) the caller has inside every sandbox: the `sdk` user.
pub const SDK_ID: u32 = 1000;

/// Root without an `/etc/subuid` entry needs no helper to map ids (it may
/// map any), so it gets this fixed range: ids no account uses, the same on
/// every run so existing sandboxes and images keep their owners.
pub const ROOT_DEFAULT_RANGE: IdRange = IdRange {
    start: 1_000_000_000,
    count: 65536,
};

#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write the {which} map of process {pid}: {source}")]
    Write {
        which: &'static str,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] crate::cmd::CmdError),
    /// A sandbox made with a subordinate range the files no longer grant.
    #[error(
        "it was made with subordinate {which}s {start}-{end}, which {file} no longer grants to {who}; give them back (`sudo usermod --add-sub{which}s {start}-{end} {who}`)"
    )]
    NotGranted {
        which: &'static str,
        start: u32,
        end: u32,
        file: String,
        who: String,
    },
}

impl sdk_common::error::BadInput for IdMapError {
    fn is_bad_input(&self) -> bool {
        matches!(self, IdMapError::NotGranted { .. })
    }
}

/// Where the subordinate id files are (`/etc/subuid`, `/etc/subgid`).
#[derive(Debug, Clone)]
pub struct SubIdFiles {
    pub subuid: PathBuf,
    pub subgid: PathBuf,
}

impl Default for SubIdFiles {
    fn default() -> Self {
        SubIdFiles {
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
        }
    }
}

/// Who is asking: host uid/gid and login name (subid files may use either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    /// The calling process's real ids and its passwd name: from
    /// `/etc/passwd` itself, else through NSS (LDAP, sssd). The released
    /// launcher is linked statically, and a static glibc reaches NSS only
    /// through the shared modules of the glibc it was built with, so the
    /// file, which shadow's own tools read too, comes first.
    pub fn current() -> Caller {
        let uid = nix::unistd::getuid();
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| crate::sandbox::users::lookup(&p, &uid.to_string()))
            .filter(|a| a.uid == uid.as_raw())
            .map(|a| a.name)
            .or_else(|| {
                nix::unistd::User::from_uid(uid)
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
        Caller {
            name,
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }
}

/// A range of subordinate ids from `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// Ranges for `name` (or the numeric `id`) in a subid file's contents.
/// Lines that are not `who:start:count` are skipped, as shadow's own
/// parser does.
pub fn parse_subid(contents: &str, name: Option<&str>, id: u32) -> Vec<IdRange> {
    let id_text = id.to_string();
    contents
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut f = line.split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || !(Some(who) == name || who == id_text) {
                return None;
            }
            let r = IdRange {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            };
            (r.count > 0).then_some(r)
        })
        .collect()
}

/// Every range of a subid file, whoever it belongs to.
fn all_ranges(contents: &str) -> Vec<IdRange> {
    contents
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (_, start, count) = (f.next()?, f.next()?, f.next()?);
            Some(IdRange {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The first 65536-id block from 100000 up (aligned as `useradd` lays
/// them out) that no range in any of `files` overlaps: what to suggest
/// adding for a user who has none.
pub fn free_range(files: &[&str]) -> IdRange {
    const COUNT: u64 = 65536;
    let taken: Vec<IdRange> = files.iter().flat_map(|f| all_ranges(f)).collect();
    let mut start: u64 = 100_000;
    loop {
        let clash = taken.iter().find(|r| {
            let (a, b) = (u64::from(r.start), u64::from(r.start) + u64::from(r.count));
            a < start + COUNT && start < b
        });
        match clash {
            // Past the clash, rounded up to the next block.
            Some(r) => {
                let end = u64::from(r.start) + u64::from(r.count);
                start = 100_000 + (end - 100_000).div_ceil(COUNT) * COUNT;
            }
            None if start + COUNT <= u64::from(u32::MAX) => {
                return IdRange {
                    start: start as u32,
                    count: COUNT as u32,
                };
            }
            None => return ROOT_DEFAULT_RANGE,
        }
    }
}

/// One line of `/proc/PID/uid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub uid: Vec<Mapping>,
    pub gid: Vec<Mapping>,
}

/// Lay out `ranges` over inside ids 0.. with `own` at [`SDK_ID`].
fn layout(own: u32, ranges: &[IdRange]) -> Vec<Mapping> {
    let mut out = vec![Mapping {
        inside: SDK_ID,
        outside: own,
        count: 1,
    }];
    let mut next_inside: u32 = 0;
    for r in ranges {
        let mut outside = r.start;
        let mut left = r.count;
        while left > 0 {
            if next_inside == SDK_ID {
                next_inside += 1;
            }
            // Fill up to the sdk id, or to the end of the range.
            let room = if next_inside < SDK_ID {
                SDK_ID - next_inside
            } else {
                u32::MAX - next_inside
            };
            let n = left.min(room);
            if n == 0 {
                break;
            }
            out.push(Mapping {
                inside: next_inside,
                outside,
                count: n,
            });
            next_inside += n;
            outside += n;
            left -= n;
        }
    }
    out.sort_by_key(|m| m.inside);
    out
}

impl IdMap {
    /// The map for `caller` from the subid files. Returns a warning line
    /// when it had to fall back to a single mapping.
    pub fn for_caller(
        files: &SubIdFiles,
        caller: &Caller,
    ) -> Result<(IdMap, Option<String>), IdMapError> {
        let read = |p: &Path| match std::fs::read_to_string(p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(IdMapError::Read(p.to_path_buf(), e)),
        };
        let name = caller.name.as_deref();
        let mut uids = parse_subid(&read(&files.subuid)?, name, caller.uid);
        let mut gids = parse_subid(&read(&files.subgid)?, name, caller.gid);
        if caller.uid == 0 {
            if uids.is_empty() {
                uids.push(ROOT_DEFAULT_RANGE);
            }
            if gids.is_empty() {
                gids.push(ROOT_DEFAULT_RANGE);
            }
        }
        if uids.is_empty() || gids.is_empty() {
            let who = name.map_or_else(|| caller.uid.to_string(), str::to_string);
            let missing = if uids.is_empty() {
                &files.subuid
            } else {
                &files.subgid
            };
            let free = free_range(&[&read(&files.subuid)?, &read(&files.subgid)?]);
            let range = format!("{}-{}", free.start, free.start + (free.count - 1));
            let warning = format!(
                "warning: no subordinate id range for {who} in {}; using a single mapping (no root inside); add a free range with `sudo usermod --add-subuids {range} --add-subgids {range} {who}`",
                missing.display()
            );
            return Ok((IdMap::single(caller), Some(warning)));
        }
        Ok((
            IdMap {
                uid: layout(caller.uid, &uids),
                gid: layout(caller.gid, &gids),
            },
            None,
        ))
    }

    /// Whether the subid files still grant every subordinate id this map
    /// (made at creation) uses; the setuid helpers would refuse otherwise
    /// with a message naming neither the file nor the fix. Root and the
    /// single mapping need no grant.
    pub fn check_granted(&self, files: &SubIdFiles, caller: &Caller) -> Result<(), IdMapError> {
        if self.is_single() || caller.uid == 0 {
            return Ok(());
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let name = caller.name.as_deref();
        let who = name.map_or_else(|| caller.uid.to_string(), str::to_string);
        for (which, maps, file, own) in [
            ("uid", &self.uid, &files.subuid, caller.uid),
            ("gid", &self.gid, &files.subgid, caller.gid),
        ] {
            let granted = parse_subid(&read(file), name, own);
            // The host ranges used, contiguous pieces joined (the layout
            // splits one range around the sdk id).
            let mut used: Vec<(u64, u64)> = maps
                .iter()
                .filter(|m| m.inside != SDK_ID)
                .map(|m| {
                    (
                        u64::from(m.outside),
                        u64::from(m.outside) + u64::from(m.count),
                    )
                })
                .collect();
            used.sort_unstable();
            let mut joined: Vec<(u64, u64)> = Vec::new();
            for (a, b) in used {
                match joined.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => joined.push((a, b)),
                }
            }
            for (start, end) in joined {
                let ok = granted.iter().any(|r| {
                    u64::from(r.start) <= start && end <= u64::from(r.start) + u64::from(r.count)
                });
                if !ok {
                    return Err(IdMapError::NotGranted {
                        which,
                        start: start as u32,
                        end: (end - 1) as u32,
                        file: file.display().to_string(),
                        who,
                    });
                }
            }
        }
        Ok(())
    }

    /// Only the caller, as the sdk user.
    pub fn single(caller: &Caller) -> IdMap {
        IdMap {
            uid: layout(caller.uid, &[]),
            gid: layout(caller.gid, &[]),
        }
    }

    /// True when only the caller is mapped (no subordinate range).
    pub fn is_single(&self) -> bool {
        self.uid.len() == 1
    }

    /// True when uid 0 and gid 0 exist inside.
    pub fn has_root(&self) -> bool {
        self.to_host_uid(0).is_some() && to_host(&self.gid, 0).is_some()
    }

    /// The host uid of an inside uid, if mapped.
    pub fn to_host_uid(&self, inside: u32) -> Option<u32> {
        to_host(&self.uid, inside)
    }

    /// The host gid of an inside gid, if mapped.
    pub fn to_host_gid(&self, inside: u32) -> Option<u32> {
        to_host(&self.gid, inside)
    }

    /// Write both maps for process `pid`, which has just unshared its user
    /// namespace. A caller with subordinate ranges goes through the setuid
    /// helpers; root and the single mapping write `/proc` directly (the
    /// kernel allows both). `proc_root` is `/proc` outside tests.
    pub fn write_for(&self, pid: i32, proc_root: &Path) -> Result<(), IdMapError> {
        let direct = self.is_single() || nix::unistd::geteuid().is_root();
        if direct {
            let dir = proc_root.join(pid.to_string());
            if self.is_single() && !nix::unistd::geteuid().is_root() {
                // An unprivileged gid map needs setgroups disabled first.
                write_proc(&dir.join("setgroups"), "deny", "setgroups", pid)?;
            }
            write_proc(&dir.join("uid_map"), &render(&self.uid), "uid", pid)?;
            write_proc(&dir.join("gid_map"), &render(&self.gid), "gid", pid)?;
            return Ok(());
        }
        // Run both helpers at once: each is a setuid exec (~1 ms).
        let mut uid = helper("newuidmap", pid, &self.uid);
        let mut gid = helper("newgidmap", pid, &self.gid);
        let a = uid.spawn_captured()?;
        let b = gid.spawn_captured()?;
        let ra = a.finish();
        let rb = b.finish();
        ra?;
        rb?;
        Ok(())
    }
}

fn to_host(maps: &[Mapping], inside: u32) -> Option<u32> {
    maps.iter()
        .find(|m| inside >= m.inside && inside - m.inside < m.count)
        .map(|m| m.outside + (inside - m.inside))
}

/// The map as the kernel's `uid_map` text.
pub fn render(maps: &[Mapping]) -> String {
    let mut s = String::new();
    for m in maps {
        let _ = writeln!(s, "{} {} {}", m.inside, m.outside, m.count);
    }
    s
}

fn helper(tool: &str, pid: i32, maps: &[Mapping]) -> Command {
    let mut c = Command::new(tool);
    c.arg(pid.to_string());
    for m in maps {
        c.args([
            m.inside.to_string(),
            m.outside.to_string(),
            m.count.to_string(),
        ]);
    }
    c
}

fn write_proc(path: &Path, text: &str, which: &'static str, pid: i32) -> Result<(), IdMapError> {
    // One write(2): the kernel accepts a map only in a single write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| IdMapError::Write { which, pid, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBUID: &str =
        "# comment\nalice:100000:65536\nbob:200000:65536\n1002:300000:10\nbroken line\n";

    fn caller(name: &str, uid: u32) -> Caller {
        Caller {
            name: Some(name.into()),
            uid,
            gid: uid,
        }
    }

    #[test]
    fn parses_by_name_and_by_uid() {
        assert_eq!(
            parse_subid(SUBUID, Some("alice"), 1001),
            vec![IdRange {
                start: 100000,
                count: 65536
            }]
        );
        assert_eq!(
            parse_subid(SUBUID, Some("carol"), 1002),
            vec![IdRange {
                start: 300000,
                count: 10
            }]
        );
        assert!(parse_subid(SUBUID, Some("dave"), 1003).is_empty());
        assert!(parse_subid("x:1:0\nx:a:3\nx:1:2:3\n", Some("x"), 9).is_empty());
    }

    #[test]
    fn full_map_puts_caller_at_1000_and_root_at_range_start() {
        let m = layout(
            1001,
            &[IdRange {
                start: 100000,
                count: 65536,
            }],
        );
        assert_eq!(
            render(&m),
            "0 100000 1000\n1000 1001 1\n1001 101000 64536\n"
        );
        let map = IdMap {
            uid: m.clone(),
            gid: m,
        };
        assert_eq!(map.to_host_uid(0), Some(100000));
        assert_eq!(map.to_host_uid(1000), Some(1001));
        assert_eq!(map.to_host_uid(1001), Some(101000));
        assert_eq!(map.to_host_uid(65536), Some(165535));
        assert_eq!(map.to_host_uid(65537), None);
        assert!(map.has_root() && !map.is_single());
    }

    #[test]
    fn small_and_split_ranges_fill_in_order() {
        let m = layout(
            5,
            &[
                IdRange {
                    start: 10,
                    count: 600,
                },
                IdRange {
                    start: 5000,
                    count: 600,
                },
            ],
        );
        assert_eq!(
            render(&m),
            "0 10 600\n600 5000 400\n1000 5 1\n1001 5400 200\n"
        );
    }

    #[test]
    fn free_range_skips_every_taken_block() {
        assert_eq!(free_range(&["", ""]).start, 100_000);
        let uid = "alice:100000:65536\nbob:165536:65536\n";
        let gid = "carol:231072:10\n";
        assert_eq!(free_range(&[uid, gid]).start, 100_000 + 3 * 65536);
        // An unaligned range pushes past its end to the next block.
        assert_eq!(free_range(&["x:150000:1000\n"]).start, 165_536);
        assert_eq!(free_range(&["x:1:99999\n"]).start, 100_000);
    }

    #[test]
    fn a_range_taken_back_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let files = SubIdFiles {
            subuid: dir.path().join("subuid"),
            subgid: dir.path().join("subgid"),
        };
        std::fs::write(&files.subuid, SUBUID).unwrap();
        std::fs::write(&files.subgid, SUBUID).unwrap();
        let alice = caller("alice", 1001);
        let (map, _) = IdMap::for_caller(&files, &alice).unwrap();
        map.check_granted(&files, &alice).unwrap();
        std::fs::write(&files.subgid, "alice:300000:65536\n").unwrap();
        let e = map.check_granted(&files, &alice).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("subordinate gids 100000-165535")
                && msg.contains("--add-subgids 100000-165535 alice"),
            "{msg}"
        );
        assert!(sdk_common::error::BadInput::is_bad_input(&e));
    }

    #[test]
    fn missing_range_falls_back_to_single_map_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let files = SubIdFiles {
            subuid: dir.path().join("subuid"),
            subgid: dir.path().join("subgid"),
        };
        std::fs::write(&files.subuid, SUBUID).unwrap();
        // No subgid file at all.
        let (map, warn) = IdMap::for_caller(&files, &caller("alice", 1001)).unwrap();
        assert!(map.is_single() && !map.has_root());
        assert_eq!(render(&map.uid), "1000 1001 1\n");
        let warn = warn.unwrap();
        assert!(
            warn.contains("subgid") && warn.contains("usermod"),
            "{warn}"
        );
        assert!(!warn.contains('\n'));

        std::fs::write(&files.subgid, SUBUID).unwrap();
        let (map, warn) = IdMap::for_caller(&files, &caller("alice", 1001)).unwrap();
        assert!(warn.is_none() && map.has_root());
    }

    #[test]
    fn root_without_a_range_gets_the_fixed_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = SubIdFiles {
            subuid: dir.path().join("none"),
            subgid: dir.path().join("none"),
        };
        let (map, warn) = IdMap::for_caller(&files, &caller("root", 0)).unwrap();
        assert!(warn.is_none());
        assert_eq!(map.to_host_uid(0), Some(1_000_000_000));
        assert_eq!(map.to_host_uid(1000), Some(0));
        assert_eq!(map.to_host_gid(5), Some(1_000_000_005));
    }

    #[test]
    fn writes_maps_directly_for_single_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir(&p).unwrap();
        for f in ["setgroups", "uid_map", "gid_map"] {
            std::fs::write(p.join(f), "").unwrap();
        }
        let map = IdMap::single(&caller("a", 1234));
        map.write_for(42, dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.join("uid_map")).unwrap(),
            "1000 1234 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("gid_map")).unwrap(),
            "1000 1234 1\n"
        );
    }
}
