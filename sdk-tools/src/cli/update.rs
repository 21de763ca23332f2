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
    /// In the running OS: the USR slots, which one runs, and what the GPT
    /// says happened to each (installed, tried and not healthy, good).
    ///
    /// Examples:
    ///   sdk-update status
    ///   sdk-update status --json
    #[command(verbatim_doc_comment)]
    Status {
        /// One JSON object a slot, in a list.
        #[arg(long)]
        json: bool,
    },
    /// In the running OS (as root): install a signed update into the USR
    /// slot not running, verified before and after writing, and make it
    /// boot next; the old slot comes back by itself if the new one never
    /// proves healthy.
    ///
    /// Examples:
    ///   sdk-update apply /var/tmp/os_developer_image_update.json
    ///   sdk-update apply update.json --payload /mnt/usb/update.bin --tries 2
    #[command(verbatim_doc_comment)]
    Apply {
        /// The update metadata (`<name>_update.json`, its `.sig` beside it).
        metadata: PathBuf,
        /// The payload [default: the one the metadata names, beside it].
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
        /// Install a version that is not newer than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Boots the new slot gets to prove healthy.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=15))]
        tries: u8,
    },
    /// In the running OS (as root): mark the running slot good (GPT
    /// `successful`), as the boot's health check does once
    /// `boot-complete.target` is reached.
    MarkGood,
}

fn in_os() -> Result<(crate::boot::agent::Booted, crate::boot::agent::Release)> {
    use crate::boot::agent::{Booted, RELEASE_FILE, Release, SLOT_FILE};
    let booted = Booted::read(std::path::Path::new(SLOT_FILE)).map_err(classify)?;
    let path = PathBuf::from("/").join(RELEASE_FILE);
    let release = std::fs::read_to_string(&path)
        .map(|t| Release::parse(&t))
        .map_err(|e| {
            anyhow::Error::new(crate::exit::UsageError(format!(
                "{}: {e}; this OS image was not built by build_image with the update agent",
                path.display()
            )))
        })?;
    Ok((booted, release))
}

pub fn run(cmd: UpdateCmd) -> Result<()> {
    match cmd {
        UpdateCmd::Status { json } => {
            let (booted, release) = in_os()?;
            let slots = crate::boot::agent::status(&booted, &release).map_err(classify)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&slots)?);
            } else {
                println!(
                    "{} {} ({}), running from {}",
                    release.os_id, release.version, release.board, booted.label
                );
                for s in &slots {
                    println!(
                        "  {}{}: {}; priority {}, tries {}, {}{}",
                        s.label,
                        if s.booted { " *" } else { "" },
                        s.version.as_deref().unwrap_or("-"),
                        s.priority,
                        s.tries,
                        if s.successful {
                            "successful"
                        } else {
                            "not successful"
                        },
                        format_args!(": {}", s.state)
                    );
                }
            }
            Ok(())
        }
        UpdateCmd::Apply {
            metadata,
            payload,
            allow_downgrade,
            tries,
        } => {
            let (booted, release) = in_os()?;
            let keys = PathBuf::from("/").join(update::TRUSTED_KEYS_DIR);
            let label = crate::boot::agent::apply(&crate::boot::agent::ApplyRequest {
                metadata: &metadata,
                payload: payload.as_deref(),
                keys_dir: &keys,
                release: &release,
                booted: &booted,
                allow_downgrade,
                tries,
                progress: &|step| {
                    use std::io::Write as _;
                    let mut e = std::io::stderr();
                    let _ = writeln!(e, "sdk-update: {step}");
                    let _ = e.flush();
                },
            })
            .map_err(classify)?;
            println!(
                "{label} holds the update and boots next ({tries} tries to become healthy, else {} comes back); reboot to finish",
                booted.label
            );
            Ok(())
        }
        UpdateCmd::MarkGood => {
            let (booted, _) = in_os()?;
            crate::boot::agent::mark_good(&booted).map_err(classify)?;
            println!("{} is marked good", booted.label);
            Ok(())
        }
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
