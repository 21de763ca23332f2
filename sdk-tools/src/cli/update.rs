//! `sdk-tools update`: signed update payloads.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use sdk_common::error::classify;

use crate::boot::fetch::Origin;
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
    ///   sdk-update apply http://10.0.2.100/os_developer_image_update.json
    ///   sdk-update apply update.json --payload /mnt/usb/update.bin --tries 2
    #[command(verbatim_doc_comment)]
    Apply {
        /// The update metadata (`<name>_update.json`, its `.sig` beside
        /// it): a file, or an http:// or https:// URL.
        #[arg(value_name = "SOURCE")]
        metadata: String,
        /// The payload, a file, block device or URL [default: the one the
        /// metadata names, beside it].
        #[arg(long, value_name = "FILE|URL")]
        payload: Option<String>,
        /// Install a version that is not newer than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Boots the new slot gets to prove healthy.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=15))]
        tries: u8,
    },
    /// In the running OS (as root): is there a newer update at the
    /// source? With --apply, install it (once: an update already in the
    /// other slot, or one that was tried there and did not become
    /// healthy, is not installed again). `sdk-update.timer` runs
    /// `check --apply` when /etc/sdk-update/source names a source.
    ///
    /// Examples:
    ///   sdk-update check http://10.0.2.100/os_developer_image_update.json
    ///   echo http://updates.example/os_developer_image_update.json > /etc/sdk-update/source
    ///   sdk-update check --apply
    #[command(verbatim_doc_comment)]
    Check {
        /// The update metadata's file or URL [default: the first line of
        /// /etc/sdk-update/source].
        #[arg(value_name = "SOURCE")]
        source: Option<String>,
        /// Install a newer update that is found.
        #[arg(long)]
        apply: bool,
        /// Boots the new slot gets to prove healthy.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=15))]
        tries: u8,
    },
    /// On the build host: serve a folder of updates over HTTP (the
    /// metadata, its signature and the payload build_image wrote), the
    /// newest build each time when the folder is a `latest` link.
    ///
    /// Examples:
    ///   sdk-tools update serve __build__/images/amd64-usr/latest
    ///   sdk-tools update serve __build__/images/amd64-usr/latest --listen 127.0.0.1:8080
    ///   # a VM reaches it as http://10.0.2.100/ with its launcher's -u 8080
    #[command(verbatim_doc_comment)]
    Serve {
        /// The folder to serve.
        dir: PathBuf,
        /// Address and port to listen on (port 0: any free one).
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
        listen: String,
    },
    /// In the running OS (as root): mark the running slot good (GPT
    /// `successful`), as the boot's health check does once
    /// `boot-complete.target` is reached.
    MarkGood,
}

/// Where fetched metadata is kept while it is checked and applied.
const WORK_DIR: &str = "/run/sdk-update";
/// The configured update source: its first line that is not a comment.
const SOURCE_FILE: &str = "/etc/sdk-update/source";

fn configured_source() -> Result<Origin> {
    let text = std::fs::read_to_string(SOURCE_FILE).map_err(|e| {
        anyhow::Error::new(crate::exit::UsageError(format!(
            "{SOURCE_FILE}: {e}; give a SOURCE, or write the update metadata's URL into {SOURCE_FILE}"
        )))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Origin::parse)
        .ok_or_else(|| {
            anyhow::Error::new(crate::exit::UsageError(format!(
                "{SOURCE_FILE} names no source; write the update metadata's URL into it"
            )))
        })
}

fn apply(
    booted: &crate::boot::agent::Booted,
    release: &crate::boot::agent::Release,
    source: &Origin,
    payload: Option<&Origin>,
    allow_downgrade: bool,
    tries: u8,
) -> Result<()> {
    let keys = PathBuf::from("/").join(update::TRUSTED_KEYS_DIR);
    let label = crate::boot::agent::apply(&crate::boot::agent::ApplyRequest {
        source,
        payload,
        work_dir: std::path::Path::new(WORK_DIR),
        keys_dir: &keys,
        release,
        booted,
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
            let source = Origin::parse(&metadata);
            let payload = payload.as_deref().map(Origin::parse);
            apply(
                &booted,
                &release,
                &source,
                payload.as_ref(),
                allow_downgrade,
                tries,
            )
        }
        UpdateCmd::Check {
            source,
            apply: and_apply,
            tries,
        } => {
            use crate::boot::agent::Offer;
            let (booted, release) = in_os()?;
            let source = match source {
                Some(s) => Origin::parse(&s),
                None => configured_source()?,
            };
            let keys = PathBuf::from("/").join(update::TRUSTED_KEYS_DIR);
            let offer = crate::boot::agent::check(
                &source,
                std::path::Path::new(WORK_DIR),
                &keys,
                &release,
                &booted,
            )
            .map_err(classify)?;
            match offer {
                Offer::UpToDate { offered } => println!(
                    "up to date: running {}, {source} offers {offered}",
                    release.version
                ),
                Offer::Installed { version, label } => {
                    println!("{version} is installed in {label} and boots next: reboot to finish")
                }
                Offer::Failed { version, label } => println!(
                    "{version} was installed in {label}, tried, and did not become healthy: not installing it again (`sdk-update apply {source}` retries it)"
                ),
                Offer::Available { version } if and_apply => {
                    println!(
                        "{version} is available (running {}): installing",
                        release.version
                    );
                    apply(&booted, &release, &source, None, false, tries)?;
                }
                Offer::Available { version } => println!(
                    "{version} is available (running {}): `sdk-update apply {source}` installs it",
                    release.version
                ),
            }
            Ok(())
        }
        UpdateCmd::Serve { dir, listen } => crate::boot::serve::serve(&dir, &listen),
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
            if let Err(e) = sdk_common::fsutil::regular_file(&metadata) {
                return Err(anyhow::Error::new(crate::exit::UsageError(format!(
                    "{}: {e}; give the update's <name>_update.json (its .sig beside it)",
                    metadata.display()
                ))));
            }
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
