//! Mutation fuzzing of every parser sdk-tools has for input it did not
//! write: board profiles, disk layouts, recipes, the repo's version file,
//! the GPT, verity superblocks, slot records, update metadata, the boot
//! configuration and command line (see `sdk_common::mutate`; the seed is
//! printed on failure, `SDK_FUZZ_SEED` repeats it).

use std::path::Path;
use std::time::Duration;

use sdk_common::mutate::check;

const LIMIT: Duration = Duration::from_secs(10);
const RUNS: usize = 20_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn board_profiles_and_layouts_never_panic() {
    let seeds = vec![
        include_bytes!("../../profiles/amd64-usr/profile.toml").to_vec(),
        include_bytes!("../../profiles/arm64-usr/profile.toml").to_vec(),
    ];
    check("board profile", &seeds, RUNS, LIMIT, |b| {
        let _ = crate::board::Board::parse(
            "fuzz",
            Path::new("profile.toml"),
            &text(b),
            crate::board::ProfileSource::Embedded,
        );
    });
    let seeds = vec![
        include_bytes!("../../profiles/amd64-usr/disk-layout.toml").to_vec(),
        include_bytes!("../../profiles/arm64-usr/disk-layout.toml").to_vec(),
    ];
    check("disk layout", &seeds, RUNS, LIMIT, |b| {
        for variant in [None, Some("vm"), Some("container")] {
            let _ = crate::formats::disk::Layout::parse(&text(b), Path::new("l.toml"), variant);
        }
    });
}

#[test]
fn recipes_and_version_files_never_panic() {
    let seeds = vec![
        include_bytes!("../../examples/systemd-os/packages/sys-apps/systemd/package.toml").to_vec(),
        include_bytes!("../../examples/demo-os/packages/demo-apps/greet/package.toml").to_vec(),
        include_bytes!("../../examples/demo-os/packages/meta/os/package.toml").to_vec(),
        b"version = \"1\"\nkind = \"build\"\n[build]\nscript = \"b.sh\"\n[[build.tarball]]\nurl = \"https://example.invalid/x.tar.gz\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\ncapabilities = { \"/usr/bin/x\" = \"cap_net_raw=ep\" }\n".to_vec(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    check("recipe", &seeds, RUNS, LIMIT, move |b| {
        let _ = crate::packages::recipe::parse("cat/name", &d, &text(b));
    });
    let seeds = vec![include_bytes!("../../examples/systemd-os/sdk-version.toml").to_vec()];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    check("sdk-version.toml", &seeds, RUNS / 3, LIMIT, move |b| {
        let _ = std::fs::write(root.join("sdk-version.toml"), b);
        let _ = crate::image::repo::Repo::load(&root);
    });
}

#[test]
fn gpt_superblocks_records_and_boot_files_never_panic() {
    // A GPT as build_image writes it: primary header and array mutated,
    // read back through the same reader the boot code uses.
    let layout = crate::formats::disk::Layout::parse(
        include_str!("../../profiles/amd64-usr/disk-layout.toml"),
        Path::new("l.toml"),
        Some("vm"),
    )
    .unwrap();
    let table = crate::formats::disk::gpt::Table::from_layout(&layout);
    let pieces = table.encode();
    let primary: Vec<u8> = {
        let mut v = vec![0u8; 34 * 512];
        for (off, bytes) in &pieces {
            let off = *off as usize;
            if off < v.len() {
                let end = (off + bytes.len()).min(v.len());
                v[off..end].copy_from_slice(&bytes[..end - off]);
            }
        }
        v
    };
    check("GPT", &[primary], RUNS / 3, LIMIT, |b| {
        let _ = crate::formats::disk::gpt::Table::decode(|off, buf| {
            for (i, x) in buf.iter_mut().enumerate() {
                *x = b.get(off as usize + i).copied().unwrap_or(0);
            }
            Ok(())
        });
    });
    let sb = crate::formats::verity::superblock::Superblock {
        uuid: [7; 16],
        algorithm: crate::formats::verity::Algorithm::Sha256,
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: 1000,
        salt: vec![1; 32],
    };
    check(
        "verity superblock",
        &[sb.encode().to_vec()],
        RUNS,
        LIMIT,
        |b| {
            let mut block = [0u8; crate::formats::verity::superblock::SIZE];
            let n = b.len().min(block.len());
            block[..n].copy_from_slice(&b[..n]);
            let _ = crate::formats::verity::superblock::Superblock::decode(&block);
        },
    );
    let record = crate::formats::update::encode_record(b"{\"format\": 1}", &[9; 64]).unwrap();
    check("slot record", &[record], RUNS, LIMIT, |b| {
        let _ = crate::formats::update::decode_record(b);
    });
    let conf =
        b"kernel=/usr/boot/vmlinuz-6.1\ninitrd=/usr/lib/sdk-boot/initrd\nversion=6.1\nid=ab\n";
    let cmdline = b"mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 verity.usrhash=ab root=PARTLABEL=ROOT console=ttyS0 sdk.boot=aa";
    check(
        "boot.conf and command line",
        &[conf.to_vec(), cmdline.to_vec()],
        RUNS,
        LIMIT,
        |b| {
            let t = text(b);
            let _ = crate::boot::slotboot::SlotBoot::parse(&t);
            let words = crate::boot::init::parse_cmdline(&t);
            for v in words.values() {
                let _ = crate::boot::init::PartSpec::parse(v);
            }
            let _ = crate::boot::agent::Release::parse(&t);
        },
    );
}
