//! `sdk-tools update`: signed update payloads.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use sdk_common::error::classify;

use crate::formats::update;

#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    /// Check update metadata against its signature and the trusted keys,
    /// then the payload against the metadata (size and sha256).
    ///
    /// Examples:
    ///   sdk-tools update verify __build__/images/amd64-usr/latest/os_developer_image_update.json --keys __build__/keys
    ///   sdk-tools update verify update.json --payload update.bin   # in the OS: keys from /usr/share/sdk-update/keys
    #[command(verbatim_doc_comment)]
    Verify {
        /// The metadata (`<name>_update.json`; its signature is `<name>_update.json.sig`).
        metadata: PathBuf,
        /// Folder of trusted public keys (`*.pem`) [default: /usr/share/sdk-update/keys].
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// The payload to check [default: the one the metadata names, beside it].
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
    },
}

pub fn run(cmd: UpdateCmd) -> Result<()> {
    match cmd {
        UpdateCmd::Verify {
            metadata,
            keys,
            payload,
        } => {
            let dir = keys.unwrap_or_else(|| PathBuf::from("/").join(update::TRUSTED_KEYS_DIR));
            let trusted = update::load_public_keys(&dir).map_err(classify)?;
            // The signature first: nothing of an unsigned file is trusted,
            // not even the payload name it gives.
            let (meta, signer) = update::verify(&metadata, &trusted, None).map_err(classify)?;
            let payload = payload.unwrap_or_else(|| {
                metadata
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(&meta.payload.name)
            });
            update::verify(&metadata, &trusted, Some(&payload)).map_err(classify)?;
            println!(
                "OK: {} {} for {}, payload {} ({} bytes, sha256 {}), USR root hash {}, signed by {}{}",
                meta.os_id,
                meta.version,
                meta.board,
                payload.display(),
                meta.payload.size,
                meta.payload.sha256,
                meta.usr.root_hash,
                signer,
                if meta.development_key {
                    " (a development key)"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}
