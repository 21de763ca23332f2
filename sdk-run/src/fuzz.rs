//! Mutation fuzzing of sdk-run's parsers: the repo's version file and
//! rootfs manifests (see `sdk_common::mutate`; the seed is printed on
//! failure, `SDK_FUZZ_SEED` repeats it).

use std::path::Path;
use std::time::Duration;

use sdk_common::mutate::check;

const LIMIT: Duration = Duration::from_secs(10);
const RUNS: usize = 20_000;

#[test]
fn version_files_and_manifests_never_panic() {
    let seeds = vec![
        include_bytes!("../../examples/systemd-os/sdk-version.toml").to_vec(),
        b"sdk-version = \"2025.05.0\"\nos-version = \"1.0.0\"\nsdk-image = \"sdk:1\"\n".to_vec(),
    ];
    check("sdk-version.toml", &seeds, RUNS, LIMIT, |b| {
        if let Ok(v) =
            crate::version::VersionFile::parse(&String::from_utf8_lossy(b), Path::new("v.toml"))
        {
            let _ = crate::state::SandboxName::parse(&v.sandbox_name());
        }
    });
    let seeds = vec![
        include_bytes!("../../rootfs-manifests/sdk.toml").to_vec(),
        b"packages = [\"gcc\"]\ncommands = [\"true\"]\n[base]\ntarball = \"r.tar\"\n[env]\nA = \"b\"\n[[files]]\nsrc = \"f\"\ndst = \"/etc/f\"\nmode = \"0644\"\n".to_vec(),
    ];
    check("rootfs manifest", &seeds, RUNS, LIMIT, |b| {
        let _ = crate::rootfs::manifest::Manifest::parse(
            &String::from_utf8_lossy(b),
            "m.toml",
            Path::new("/srv/m"),
        );
    });
}
