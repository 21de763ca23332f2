//! `sdk-tools disk` against util-linux `sfdisk --json` and gdisk's
//! `sgdisk -v`: every partition of the board layouts reads back exactly
//! (start, size, type, uuid, name, attribute bits), the tables verify, and
//! bad layouts are refused before anything is written.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sdk_e2e::{Session, chown_r, pattern, run_bad_input};
use serde_json::Value;

/// The board's layout, copied where the test user can read it.
fn board_layout(env: &Session, board: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles")
        .join(board)
        .join("disk-layout.toml");
    env.write(&format!("{board}.toml"), &std::fs::read(src).unwrap())
}

fn bad(env: &Session, args: &[&str]) -> String {
    run_bad_input(&mut env.cmd("sdk-tools", args))
}

fn sfdisk(env: &Session, image: &Path) -> Value {
    let out = env.run("sfdisk", &["--json", s(image)]);
    serde_json::from_str::<Value>(&out).unwrap()["partitiontable"].clone()
}

/// `len` bytes of `path` at `offset` (images are too large to read whole).
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const MIB: u64 = 1 << 20;
const EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
const USR: &str = "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6";
const DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const RESERVED: &str = "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0";
const RESIZE: &str = "3884DD41-8582-4404-B9A8-E9B84F2DF50E";
const USR_A_UUID: &str = "7130C94A-213A-4E5A-8E26-6CCE9662F132";
const USR_B_UUID: &str = "E03DD35C-7C2D-4A47-B3FE-27F15780A57C";

/// (number, name, type, size in MiB, fixed uuid, sfdisk attrs).
type Want = (
    u64,
    &'static str,
    &'static str,
    u64,
    Option<&'static str>,
    Option<&'static str>,
);

/// Flatcar's base layout, in disk order.
fn flatcar_base(root_mib: u64) -> Vec<Want> {
    vec![
        (1, "EFI-SYSTEM", EFI, 1024, None, None),
        (2, "BIOS-BOOT", BIOS, 2, None, None),
        (3, "USR-A", USR, 2048, Some(USR_A_UUID), Some("GUID:48,56")),
        (4, "USR-B", USR, 2048, Some(USR_B_UUID), None),
        (6, "OEM", DATA, 1024, None, None),
        (7, "OEM-CONFIG", RESERVED, 64, None, None),
        (9, "ROOT", RESIZE, root_mib, None, None),
    ]
}

/// Check sfdisk's view against the expected partitions, laid out from
/// 2 MiB on, each at the next 2 MiB boundary; return the uuids read.
fn check_table(table: &Value, image: &Path, want: &[Want]) -> Vec<String> {
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["sectorsize"], 512);
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), want.len(), "{table:#}");
    let mut start = 2 * MIB;
    let mut uuids = Vec::new();
    for (p, (num, name, ty, mib, uuid, attrs)) in parts.iter().zip(want) {
        let what = format!("partition {num} ({name})");
        assert_eq!(p["node"], format!("{}{num}", image.display()), "{what}");
        assert_eq!(p["start"].as_u64().unwrap(), start / 512, "{what} start");
        assert_eq!(p["size"].as_u64().unwrap(), mib * MIB / 512, "{what} size");
        assert_eq!(p["type"], *ty, "{what} type");
        assert_eq!(p["name"], *name, "{what} name");
        if let Some(u) = uuid {
            assert_eq!(p["uuid"], *u, "{what} uuid");
        }
        assert_eq!(p["attrs"].as_str(), *attrs, "{what} attrs");
        uuids.push(p["uuid"].as_str().unwrap().to_string());
        start = (start + mib * MIB).div_ceil(2 * MIB) * 2 * MIB;
    }
    // The disk ends with room for the backup GPT, rounded to 2 MiB.
    let size = std::fs::metadata(image).unwrap().len();
    assert_eq!(size, start + 2 * MIB, "disk size");
    uuids
}

fn sgdisk_clean(env: &Session, image: &Path) {
    let out = env.run("sgdisk", &["-v", s(image)]);
    assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
}

#[test]
fn board_layouts_read_back_exactly_with_sfdisk_and_verify_with_sgdisk() {
    let env = Session::new();
    for (board, arch_usr) in [("amd64-usr", "x86-64"), ("arm64-usr", "arm64")] {
        let layout = board_layout(&env, board);
        let image = env.path(&format!("{board}.img"));
        env.run(
            "sdk-tools",
            &["disk", "layout", "--layout", s(&layout), s(&image)],
        );
        let uuids = check_table(&sfdisk(&env, &image), &image, &flatcar_base(2162));
        sgdisk_clean(&env, &image);
        // Sparse: only the tables are allocated.
        assert!(std::fs::metadata(&image).unwrap().blocks() * 512 < 4 * MIB);
        // Our reader agrees with sfdisk.
        let shown: Value =
            serde_json::from_str(&env.run("sdk-tools", &["disk", "show", "--json", s(&image)]))
                .unwrap();
        let ours: Vec<String> = shown["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["uuid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ours, uuids, "{board} ({arch_usr})");
        assert_eq!(shown["partitions"][2]["priority"], 1);
        assert_eq!(shown["partitions"][2]["successful"], true);

        // The vm variant: small partitions for quick boot tests.
        let vm = env.path(&format!("{board}-vm.img"));
        env.run(
            "sdk-tools",
            &[
                "disk",
                "layout",
                "--layout",
                s(&layout),
                "--type",
                "vm",
                s(&vm),
            ],
        );
        let mut want = flatcar_base(256);
        for (num, _, _, mib, _, _) in want.iter_mut() {
            *mib = match *num {
                1 | 6 => 128,
                3 | 4 => 1024,
                _ => *mib,
            };
        }
        check_table(&sfdisk(&env, &vm), &vm, &want);
        sgdisk_clean(&env, &vm);
        let container = env.path(&format!("{board}-container.img"));
        env.run(
            "sdk-tools",
            &[
                "disk",
                "layout",
                "--layout",
                s(&layout),
                "--type",
                "container",
                s(&container),
            ],
        );
        sgdisk_clean(&env, &container);
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_uuids() {
    let env = Session::new();
    let layout = board_layout(&env, "amd64-usr");
    let img = |name: &str, seed: &str| {
        let p = env.path(name);
        env.run(
            "sdk-tools",
            &[
                "disk",
                "layout",
                "--layout",
                s(&layout),
                "--type",
                "vm",
                "--seed",
                seed,
                s(&p),
            ],
        );
        p
    };
    let a = img("a.img", "build-1");
    let b = img("b.img", "build-1");
    let c = img("c.img", "build-2");
    let head = |p: &Path| read_at(p, 0, 34 * 512);
    assert!(head(&a) == head(&b), "same seed, different tables");
    let (ta, tc) = (sfdisk(&env, &a), sfdisk(&env, &c));
    assert_ne!(ta["id"], tc["id"], "disk GUID should follow the seed");
    assert_ne!(ta["partitions"][0]["uuid"], tc["partitions"][0]["uuid"]);
    // Fixed UUIDs stay fixed.
    assert_eq!(ta["partitions"][2]["uuid"], tc["partitions"][2]["uuid"]);
}

#[test]
fn write_partition_and_extract_round_trip_keeping_holes() {
    let env = Session::new();
    let layout = board_layout(&env, "amd64-usr");
    let image = env.path("disk.img");
    env.run(
        "sdk-tools",
        &[
            "disk",
            "layout",
            "--layout",
            s(&layout),
            "--type",
            "vm",
            s(&image),
        ],
    );
    // A 6 MiB "filesystem": data, a 4 MiB hole, data.
    let fsimg = env.path("fs.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&fsimg).unwrap();
        f.set_len(6 * MIB).unwrap();
        f.write_all_at(&pattern(MIB as usize, 1), 0).unwrap();
        f.write_all_at(&pattern(MIB as usize, 2), 5 * MIB).unwrap();
    }
    chown_r(&env.user, &fsimg);
    env.run(
        "sdk-tools",
        &["disk", "write-partition", s(&image), "3", s(&fsimg)],
    );
    // sfdisk still sees an intact table, and the data sits at USR-A's start.
    let t = sfdisk(&env, &image);
    let start = t["partitions"][2]["start"].as_u64().unwrap() * 512;
    let src = std::fs::read(&fsimg).unwrap();
    assert!(read_at(&image, start, 6 * MIB as usize) == src);
    // Only the data was allocated, not the hole.
    let used = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(used < 4 * MIB + 2 * MIB, "image allocates {used} bytes");
    sgdisk_clean(&env, &image);

    let out = env.path("usr-a.img");
    env.run("sdk-tools", &["disk", "extract", s(&image), "3", s(&out)]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1024 * MIB);
    assert!(read_at(&out, 0, 6 * MIB as usize) == src);
    for off in (6..1024).step_by(64) {
        let n = (1024 - off).min(64);
        let chunk = read_at(&out, off * MIB, (n * MIB) as usize);
        assert!(
            chunk.iter().all(|&b| b == 0),
            "non-zero after the data at {off} MiB"
        );
    }
    assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < 4 * MIB);
}

#[test]
fn bad_layouts_and_requests_exit_2_and_leave_the_image_alone() {
    let env = Session::new();
    let base = std::fs::read_to_string(board_layout(&env, "amd64-usr")).unwrap();
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let image = env.write("precious.img", b"do not touch");
    let cases: Vec<(String, String)> = vec![
        {
            let t = base.replace("type = \"bios\"", "type = \"bois\"");
            let l = line_of(&t, "\"bois\"");
            (
                t,
                format!(":{l}: partition 2 (BIOS-BOOT): unknown partition type \"bois\""),
            )
        },
        {
            let t = base.replace("label = \"OEM\"", "label = \"OEM\"\ncolour = \"red\"");
            let l = line_of(&t, "colour");
            (t, format!(":{l}: unknown field `colour`"))
        },
        {
            let t = base.replace("label = \"USR-B\"", "label = \"USR-B\"\nstart = \"3MiB\"");
            let l = line_of(&t, "\"3MiB\"");
            (
                t,
                format!(":{l}: partition 4 (USR-B): start 3145728 is not aligned"),
            )
        },
        {
            let t = base.replace(
                "label = \"USR-B\"",
                "label = \"USR-B\"\nstart = \"1028MiB\"",
            );
            let l = line_of(&t, "\"1028MiB\"");
            (t, format!(":{l}: partition 4 (USR-B) at bytes"))
        },
        {
            let t = base.replace(
                "alignment = \"2MiB\"",
                "alignment = \"2MiB\"\nsize = \"4GiB\"",
            );
            let l = line_of(&t, "size = \"2162MiB\"");
            (t, format!(":{l}: partition 9 (ROOT) ends at byte"))
        },
        {
            let t = base.replace("size = \"64MiB\"", "size = 1000");
            let l = line_of(&t, "size = 1000");
            (
                t,
                format!(":{l}: partition 7 (OEM-CONFIG): size 1000 is not a multiple"),
            )
        },
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let file = env.write(&format!("bad{i}.toml"), text.as_bytes());
        let e = bad(&env, &["disk", "layout", "--layout", s(&file), s(&image)]);
        assert!(
            e.contains(&format!("{}{needle}", file.display())),
            "wanted {needle:?}: {e}"
        );
        assert_eq!(std::fs::read(&image).unwrap(), b"do not touch");
        let fresh = env.path("fresh.img");
        bad(&env, &["disk", "layout", "--layout", s(&file), s(&fresh)]);
        assert!(!fresh.exists());
    }
    let layout = board_layout(&env, "amd64-usr");
    let e = bad(
        &env,
        &[
            "disk",
            "layout",
            "--layout",
            s(&layout),
            "--type",
            "metal",
            s(&image),
        ],
    );
    assert!(e.contains("no variant \"metal\""), "{e}");

    // write-partition: a file bigger than the partition, a missing
    // partition; nothing is written.
    let disk = env.path("disk.img");
    env.run(
        "sdk-tools",
        &[
            "disk",
            "layout",
            "--layout",
            s(&layout),
            "--type",
            "vm",
            s(&disk),
        ],
    );
    let md = std::fs::metadata(&disk).unwrap();
    let before = (md.mtime(), md.mtime_nsec());
    let big = env.write("big.img", &vec![1u8; 3 * MIB as usize]);
    let e = bad(&env, &["disk", "write-partition", s(&disk), "2", s(&big)]);
    assert!(e.contains("partition 2 (BIOS-BOOT) holds 2097152"), "{e}");
    let e = bad(&env, &["disk", "write-partition", s(&disk), "5", s(&big)]);
    assert!(e.contains("has no partition 5"), "{e}");
    let e = bad(&env, &["disk", "show", s(&big)]);
    assert!(e.contains("no GPT found"), "{e}");
    let md = std::fs::metadata(&disk).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), before);
    sgdisk_clean(&env, &disk);
}
