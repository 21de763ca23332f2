//! The update agent's install path on the host, for `bench/apply.sh`.
//!
//!   apply_bench sign PAYLOAD ROOT_HASH SALT HASH_OFFSET DIR
//!       signed metadata for PAYLOAD (data + appended hash tree) in DIR,
//!       with a development key whose public half is DIR/keys/
//!   apply_bench apply METADATA KEYS_DIR TARGET
//!       what `sdk-update apply` does to the slot, TARGET standing for
//!       it: the signature and the payload's sha256 checked, the payload
//!       written, synced, and read back through its hash tree

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sdk_tools::boot::agent;
use sdk_tools::boot::fetch::Origin;
use sdk_tools::formats::update;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sign", payload, root, salt, offset, dir] => sign(
            Path::new(payload),
            root,
            salt,
            offset.parse()?,
            Path::new(dir),
        ),
        ["apply", meta, keys, target] => apply(Path::new(meta), Path::new(keys), Path::new(target)),
        _ => bail!(
            "usage: apply_bench sign PAYLOAD ROOT_HASH SALT HASH_OFFSET DIR | apply METADATA KEYS_DIR TARGET"
        ),
    }
}

fn sign(payload: &Path, root: &str, salt: &str, hash_offset: u64, dir: &Path) -> Result<()> {
    let key = update::development_key(&dir.join("key"))?;
    let (size, sum) = sdk_common::fsutil::hash_file(payload)?;
    let name = payload.file_name().context("a payload file")?;
    let meta = update::Metadata {
        format: 1,
        os_id: "bench".into(),
        version: "2.0.0".into(),
        board: "bench".into(),
        arch: std::env::consts::ARCH.into(),
        payload: update::Payload {
            name: name.to_string_lossy().into_owned(),
            size,
            sha256: hex::encode(sum),
        },
        usr: update::Usr {
            root_hash: root.into(),
            salt: salt.into(),
            hash_offset,
            data_blocks: hash_offset / 4096,
            data_block_size: 4096,
            hash_block_size: 4096,
            hash_algorithm: "sha256".into(),
        },
        key_id: key.id(),
        development_key: true,
    };
    let bytes = meta.to_bytes();
    let meta_path = dir.join("bench_update.json");
    std::fs::write(&meta_path, &bytes)?;
    std::fs::write(update::sig_path(&meta_path), key.sign(&bytes))?;
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::write(dir.join("keys/bench.pem"), key.public_pem())?;
    let beside = dir.join(name);
    if beside != payload && !beside.exists() {
        std::os::unix::fs::symlink(std::fs::canonicalize(payload)?, beside)?;
    }
    println!("{}", meta_path.display());
    Ok(())
}

fn apply(meta_path: &Path, keys: &Path, target: &Path) -> Result<()> {
    let keys = update::load_public_keys(keys)?;
    let (meta, _) = update::verify(meta_path, &keys, None)?;
    let payload = Origin::File(
        meta_path
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf)
            .join(&meta.payload.name),
    );
    agent::check_payload(&meta, &payload)?;
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("open {}", target.display()))?;
    agent::write_slot(&meta, &payload, &mut out, target, "the target", &|_| {})?;
    Ok(())
}
