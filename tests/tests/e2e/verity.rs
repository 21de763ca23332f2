//! `sdk-tools verity` against `veritysetup` (cryptsetup), the reference
//! implementation: same root hash and the same hash-file bytes for the same
//! salt and UUID, `veritysetup verify` accepting our trees, and flipped
//! bits caught by both. Everything runs as the unprivileged test user.

use std::path::{Path, PathBuf};

use sdk_e2e::{Session, flip_bit, pattern, run_bad_input, run_expect};

const UUID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const SALT: &str = "5a17ab1e0123456789abcdef0123456789abcdef0123456789abcdef00c0ffee";

/// A data file of `len` pseudo-random bytes owned by the test user.
fn data(env: &Session, name: &str, len: usize, seed: u64) -> PathBuf {
    env.write(name, &pattern(len, seed))
}

fn sdk_tools(env: &Session, args: &[&str]) -> String {
    env.run("sdk-tools", args)
}

fn veritysetup(env: &Session, args: &[&str]) -> String {
    env.run("veritysetup", args)
}

/// The value of a `Name:   value` line of veritysetup-style output.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
        .trim()
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn same_root_hash_and_bytes_as_veritysetup_for_many_sizes_block_sizes_and_salts() {
    let env = Session::new();
    for blocks in [1usize, 127, 128, 129, 16385] {
        for (dbs, hbs) in [(4096usize, 4096usize), (512, 512)] {
            let data = data(
                &env,
                "data.img",
                blocks * dbs,
                blocks as u64 * 31 + dbs as u64,
            );
            for salt in [SALT, "-"] {
                let (d, h) = (dbs.to_string(), hbs.to_string());
                let common = [
                    "--salt",
                    salt,
                    "--uuid",
                    UUID,
                    "--data-block-size",
                    &d,
                    "--hash-block-size",
                    &h,
                ];
                let ours_h = env.path("ours.hash");
                let theirs_h = env.path("theirs.hash");
                let _ = std::fs::remove_file(&theirs_h);
                let mut a = vec!["verity", "format"];
                a.extend_from_slice(&common);
                a.extend_from_slice(&[s(&data), s(&ours_h)]);
                let ours = sdk_tools(&env, &a);
                let mut b = vec!["format"];
                b.extend_from_slice(&common);
                b.extend_from_slice(&[s(&data), s(&theirs_h)]);
                let theirs = veritysetup(&env, &b);
                let what = format!("{blocks} blocks, {dbs}/{hbs}, salt {salt}");
                let root = field(&ours, "Root hash:");
                assert_eq!(root, field(&theirs, "Root hash:"), "{what}");
                assert_eq!(field(&ours, "Salt:"), field(&theirs, "Salt:"), "{what}");
                assert_eq!(
                    field(&ours, "Hash blocks:"),
                    field(&theirs, "Hash blocks:"),
                    "{what}"
                );
                assert!(
                    std::fs::read(&ours_h).unwrap() == std::fs::read(&theirs_h).unwrap(),
                    "hash files differ: {what}"
                );
                veritysetup(&env, &["verify", s(&data), s(&ours_h), &root]);
                sdk_tools(&env, &["verity", "verify", s(&data), s(&ours_h), &root]);
            }
        }
    }
}

#[test]
fn hundred_mib_sha512_and_small_blocks_agree_with_veritysetup() {
    let env = Session::new();
    let data = data(&env, "big.img", 100 << 20, 7);
    // Several hashing chunks; 512-byte blocks give a five-level tree.
    for (alg, bs) in [("sha256", "4096"), ("sha512", "4096"), ("sha256", "512")] {
        let common = [
            "--hash",
            alg,
            "--data-block-size",
            bs,
            "--hash-block-size",
            bs,
            "--salt",
            SALT,
            "--uuid",
            UUID,
        ];
        let ours_h = env.path("ours.hash");
        let mut a = vec!["verity", "format"];
        a.extend_from_slice(&common);
        a.extend_from_slice(&[s(&data), s(&ours_h)]);
        let ours = sdk_tools(&env, &a);
        let theirs_h = env.path("theirs.hash");
        let _ = std::fs::remove_file(&theirs_h);
        let mut b = vec!["format"];
        b.extend_from_slice(&common);
        b.extend_from_slice(&[s(&data), s(&theirs_h)]);
        let theirs = veritysetup(&env, &b);
        let root = field(&ours, "Root hash:");
        assert_eq!(root, field(&theirs, "Root hash:"), "{alg} {bs}");
        assert_eq!(field(&ours, "Hash algorithm:"), alg);
        assert!(
            std::fs::read(&ours_h).unwrap() == std::fs::read(&theirs_h).unwrap(),
            "hash files differ: {alg} {bs}"
        );
        veritysetup(&env, &["verify", s(&data), s(&ours_h), &root]);
    }
}

#[test]
fn appended_form_verifies_with_hash_offset() {
    let env = Session::new();
    // A 129-block "filesystem" in a partition image with 1 MiB of room
    // before the tree, as USR-A carries it.
    let fs_len = 129 * 4096;
    let offset = (1 << 20).to_string();
    let part = data(&env, "part.img", fs_len, 99);
    let out = sdk_tools(
        &env,
        &[
            "verity",
            "format",
            "--salt",
            SALT,
            "--uuid",
            UUID,
            "--data-blocks",
            "129",
            "--hash-offset",
            &offset,
            s(&part),
            s(&part),
        ],
    );
    let root = field(&out, "Root hash:");
    // The partition grew by the superblock block plus the tree.
    let len = std::fs::metadata(&part).unwrap().len();
    assert_eq!(len, (1 << 20) + 4096 + 3 * 4096);
    veritysetup(
        &env,
        &[
            "verify",
            "--hash-offset",
            &offset,
            s(&part),
            s(&part),
            &root,
        ],
    );
    sdk_tools(
        &env,
        &[
            "verity",
            "verify",
            "--hash-offset",
            &offset,
            s(&part),
            s(&part),
            &root,
        ],
    );
    // veritysetup computing the same layout gives the same root.
    let copy = data(&env, "copy.img", fs_len, 99);
    let theirs = veritysetup(
        &env,
        &[
            "format",
            "--salt",
            SALT,
            "--uuid",
            UUID,
            "--data-blocks",
            "129",
            "--hash-offset",
            &offset,
            s(&copy),
            s(&copy),
        ],
    );
    assert_eq!(root, field(&theirs, "Root hash:"));
    assert!(std::fs::read(&part).unwrap() == std::fs::read(&copy).unwrap());

    // Without a superblock: the parameters travel on the command line.
    let bare = data(&env, "bare.img", fs_len, 5);
    let off = (fs_len as u64).to_string();
    let out = sdk_tools(
        &env,
        &[
            "verity",
            "format",
            "--no-superblock",
            "--salt",
            SALT,
            "--hash-offset",
            &off,
            s(&bare),
            s(&bare),
        ],
    );
    let root = field(&out, "Root hash:");
    veritysetup(
        &env,
        &[
            "verify",
            "--no-superblock",
            "--salt",
            SALT,
            "--data-blocks",
            "129",
            "--hash-offset",
            &off,
            s(&bare),
            s(&bare),
            &root,
        ],
    );
    sdk_tools(
        &env,
        &[
            "verity",
            "verify",
            "--no-superblock",
            "--salt",
            SALT,
            "--hash-offset",
            &off,
            s(&bare),
            s(&bare),
            &root,
        ],
    );
}

#[test]
fn a_flipped_bit_in_data_or_tree_is_caught_by_us_and_by_veritysetup() {
    let env = Session::new();
    let data = data(&env, "data.img", 300 * 4096, 3);
    let hash = env.path("data.hash");
    let out = sdk_tools(&env, &["verity", "format", s(&data), s(&hash)]);
    let root = field(&out, "Root hash:");
    // Tree layout for 300 blocks: superblock block, level 1 (1 block),
    // level 0 (3 blocks).
    let cases: [(&Path, u64, &str); 5] = [
        (&data, 0, "data block 0 "),
        (&data, 217 * 4096 + 1234, "data block 217 "),
        (&data, 300 * 4096 - 1, "data block 299 "),
        (&hash, 3 * 4096 + 77, "hash block 1 of level 0"),
        (&hash, 4096 + 5, "root hash mismatch"),
    ];
    for (file, byte, needle) in cases {
        flip_bit(file, byte, 3);
        let ours = run_expect(
            &mut env.cmd(
                "sdk-tools",
                &["verity", "verify", s(&data), s(&hash), &root],
            ),
            1,
        );
        let msg = String::from_utf8_lossy(&ours.stderr);
        assert!(
            msg.contains(needle),
            "byte {byte}: wanted {needle:?} in {msg}"
        );
        let theirs = env
            .cmd("veritysetup", &["verify", s(&data), s(&hash), &root])
            .output()
            .unwrap();
        assert!(!theirs.status.success(), "veritysetup missed byte {byte}");
        flip_bit(file, byte, 3);
    }
    veritysetup(&env, &["verify", s(&data), s(&hash), &root]);
    sdk_tools(&env, &["verity", "verify", s(&data), s(&hash), &root]);
}

#[test]
fn bad_input_exits_2_with_one_line_and_writes_nothing() {
    let env = Session::new();
    let odd = data(&env, "odd.img", 4096 * 3 + 100, 1);
    let hash = env.path("out.hash");
    let e = run_bad_input(&mut env.cmd("sdk-tools", &["verity", "format", s(&odd), s(&hash)]));
    assert!(e.contains("not a multiple of the data block size"), "{e}");
    assert!(!hash.exists());

    let data = data(&env, "data.img", 4096 * 8, 2);
    let e = run_bad_input(&mut env.cmd(
        "sdk-tools",
        &[
            "verity",
            "format",
            "--data-blocks",
            "8",
            "--hash-offset",
            "4096",
            s(&data),
            s(&data),
        ],
    ));
    assert!(e.contains("inside the data area"), "{e}");
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 4096 * 8);

    for (args, needle) in [
        (vec!["--data-block-size", "1000"], "power of two"),
        (vec!["--salt", "xyz"], "not hex"),
        (vec!["--hash", "md5"], "unknown hash algorithm"),
    ] {
        let mut a = vec!["verity", "format"];
        a.extend(args);
        a.extend([s(&data), s(&hash)]);
        let e = run_bad_input(&mut env.cmd("sdk-tools", &a));
        assert!(e.contains(needle), "{e}");
        assert!(!hash.exists());
    }
    let e = run_bad_input(&mut env.cmd(
        "sdk-tools",
        &["verity", "format", s(&env.path("missing.img")), s(&hash)],
    ));
    assert!(e.contains("cannot open data file"), "{e}");

    // Options that disagree with the superblock.
    let out = sdk_tools(&env, &["verity", "format", s(&data), s(&hash)]);
    let root = field(&out, "Root hash:");
    let e = run_bad_input(&mut env.cmd(
        "sdk-tools",
        &[
            "verity",
            "verify",
            "--data-block-size",
            "512",
            s(&data),
            s(&hash),
            &root,
        ],
    ));
    assert!(e.contains("disagrees with the superblock"), "{e}");
    let e = run_bad_input(&mut env.cmd(
        "sdk-tools",
        &["verity", "verify", s(&data), s(&hash), "abc"],
    ));
    assert!(e.contains("root hash"), "{e}");
}
