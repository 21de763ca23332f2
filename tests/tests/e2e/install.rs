//! Getting the tools on PATH without `make demo`: `.ci/install.sh` (what
//! `make install` runs) and the release tarball of `.ci/release.sh`, from
//! the binaries under test, checked the way a person would use them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sdk_e2e::{Scratch, TestUser, bin_dir, busybox_rootfs, chown_r, run_ok};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn script(name: &str) -> Command {
    let mut c = Command::new(repo_root().join(".ci").join(name));
    c.env("BIN_DIR", bin_dir());
    c
}

#[test]
fn make_install_and_the_release_tarball_give_working_tools() {
    let user = TestUser::get();
    let scratch = Scratch::new(&user);
    let prefix = scratch.path().join("prefix");
    run_ok(script("install.sh").env("PREFIX", &prefix));
    let names = run_ok(Command::new(prefix.join("bin/sdk-tools")).arg("list-tools"));
    assert!(names.lines().any(|n| n == "build_image"), "{names}");
    for n in ["sdk-run", "sdk-tools"] {
        let f = prefix.join("bin").join(n);
        let file = run_ok(Command::new("file").arg(&f));
        assert!(
            file.contains("stripped") && !file.contains("not stripped"),
            "{file}"
        );
    }
    // Every page a page refers to exists, and each multi-call name has one.
    let man = prefix.join("share/man/man1");
    let pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in names.lines().chain(["sdk-run", "sdk-tools"]) {
        assert!(
            pages.contains(&format!("{n}.1.gz")),
            "no page for {n}: {pages:?}"
        );
    }
    for p in &pages {
        let text = run_ok(Command::new("zcat").arg(man.join(p)));
        for word in text.split_whitespace() {
            if let Some(r) = word.strip_suffix("(1)") {
                let r = r.replace("\\-", "-");
                assert!(pages.contains(&format!("{r}.1.gz")), "{p} refers to {r}(1)");
            }
        }
    }
    let rendered = run_ok(
        Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(man.join("build_image.1.gz"))
            .env("MANWIDTH", "100"),
    );
    assert!(rendered.contains("--board"), "{rendered}");
    // bash completes a multi-call name from its installed script.
    let comp = prefix.join("share/bash-completion/completions");
    let out = run_ok(Command::new("bash").arg("-c").arg(format!(
        "source {}; source {}; complete -p build_image sdk-run",
        comp.join("build_image").display(),
        comp.join("sdk-run").display()
    )));
    assert!(
        out.contains("build_image") && out.contains("sdk-run"),
        "{out}"
    );

    // The release tarball: unpack, run its install.sh, use it.
    let dist = scratch.path().join("dist");
    let tarball = run_ok(script("release.sh").env("OUT_DIR", &dist));
    let tarball = PathBuf::from(tarball.trim().lines().last().unwrap());
    assert!(tarball.starts_with(&dist), "{}", tarball.display());
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dist),
    );
    let top = tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_string();
    let prefix2 = scratch.path().join("prefix2");
    run_ok(
        Command::new("sh")
            .arg(dist.join(&top).join("install.sh"))
            .arg(&prefix2),
    );
    busybox_rootfs(&scratch.path().join("rootfs"));
    chown_r(&user, scratch.path());
    // The installed sdk-run, as the user, finds the sdk-tools next to it
    // and puts the multi-call names on PATH inside.
    let mut c = user.command(&scratch, prefix2.join("bin/sdk-run"));
    c.args(["--rm", "-n", "inst", "--rootfs"])
        .arg(scratch.path().join("rootfs"))
        .args(["--", "sh", "-c", "ls /run/sdk-tools/bin"]);
    let inside = run_ok(&mut c);
    assert!(inside.contains("build_image"), "{inside}");
}
