//! setup_board and build_packages, driven as the unprivileged test user:
//! the example distro repo for both boards (real cross compiler, real
//! Debian imports), caching, rebuilds, failures and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sdk_e2e::{Scratch, TestUser, Tmux, chown_r, default_sdk_store, run_expect, run_ok};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A .deb download cache shared by the tests of one run (and kept between
/// runs: it is only a cache, apt refreshes its lists every run). Given to
/// the test user once, before any test's apt writes in it: a `chown -R`
/// while another test's apt renames its temporary files fails.
fn deb_cache(user: &TestUser) -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let base = std::env::var("SDK_E2E_TMP").unwrap_or_else(|_| "/tmp".into());
            let dir = PathBuf::from(base).join(format!("sdk-e2e-packages-cache-{}", user.uid));
            std::fs::create_dir_all(&dir).unwrap();
            chown_r(user, &dir);
            dir
        })
        .clone()
}

struct Env {
    user: TestUser,
    scratch: Scratch,
    repo: PathBuf,
    build: PathBuf,
}

impl Env {
    /// A scratch dir with an empty repo (or a copy of `from`).
    fn new(from: Option<&Path>) -> Env {
        let user = TestUser::get();
        let scratch = Scratch::new(&user);
        let repo = scratch.path().join("repo");
        match from {
            Some(src) => {
                let st = Command::new("cp")
                    .arg("-a")
                    .arg(src)
                    .arg(&repo)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            None => {
                std::fs::create_dir_all(repo.join("packages")).unwrap();
                std::fs::write(
                    repo.join("sdk-version.toml"),
                    "sdk-version = \"1\"\nos-version = \"1\"\n",
                )
                .unwrap();
            }
        }
        let build = scratch.path().join("build");
        chown_r(&user, scratch.path());
        Env {
            user,
            scratch,
            repo,
            build,
        }
    }

    fn tool(&self, verb: &str) -> Command {
        let mut c = self.user.command(&self.scratch, "sdk-tools");
        c.arg(verb)
            .current_dir(&self.repo)
            .env("SDK_BUILD_ROOT", &self.build)
            .env("SDK_CACHE_DIR", deb_cache(&self.user));
        c
    }

    fn build(&self, board: &str, args: &[&str]) -> Command {
        let mut c = self.tool("build_packages");
        c.args(["--board", board]).args(args);
        c
    }

    /// Add a recipe: `package.toml` text and an optional build script.
    fn recipe(&self, name: &str, toml: &str, script: Option<&str>) {
        let dir = self.repo.join("packages").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package.toml"), toml).unwrap();
        if let Some(s) = script {
            std::fs::write(dir.join("build.sh"), s).unwrap();
        }
        chown_r(&self.user, &self.repo);
    }

    fn cross(&self, board: &str) -> PathBuf {
        self.build.join(board)
    }

    /// The JSON report of a run.
    fn report(&self, board: &str, args: &[&str], code: i32) -> (serde_json::Value, Output) {
        let out = run_expect(self.build(board, args).arg("--json"), code);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (v, out)
    }
}

/// name -> outcome of a JSON report.
fn outcomes(v: &serde_json::Value) -> Vec<(String, String)> {
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn with_outcome(v: &serde_json::Value, outcome: &str) -> Vec<String> {
    let mut names: Vec<String> = outcomes(v)
        .into_iter()
        .filter(|(_, o)| o == outcome)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn meta(cross: &Path, name: &str) -> serde_json::Value {
    let p = cross.join("var/lib/sdk/db").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn demo_os_builds_for_both_boards_and_cross_links() {
    let env = Env::new(Some(&repo_root().join("examples/demo-os")));
    for board in ["amd64-usr", "arm64-usr"] {
        let (v, out) = env.report(board, &["-j2"], 0);
        assert_eq!(
            with_outcome(&v, "built").len(),
            6,
            "{v:#}\n{}",
            stderr(&out)
        );
    }
    let arm = env.cross("arm64-usr");
    let amd = env.cross("amd64-usr");

    // The arm64 program is aarch64, needs libgreet, and runs under qemu-user
    // with the library from the arm64 cross-root.
    let file = run_ok(
        Command::new("file")
            .arg("-L")
            .arg(arm.join("usr/bin/greet")),
    );
    assert!(file.contains("ARM aarch64"), "{file}");
    let lib = run_ok(
        Command::new("file")
            .arg("-L")
            .arg(arm.join("usr/lib/libgreet.so.1")),
    );
    assert!(lib.contains("ARM aarch64"), "{lib}");
    let dynamic = run_ok(
        Command::new("readelf")
            .arg("-d")
            .arg(arm.join("usr/bin/greet")),
    );
    assert!(dynamic.contains("[libgreet.so.1]"), "{dynamic}");
    let ran = run_ok(
        Command::new("qemu-aarch64-static")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .env("LD_LIBRARY_PATH", arm.join("usr/lib"))
            .arg(arm.join("usr/bin/greet")),
    );
    assert_eq!(ran.trim(), "hello from libgreet 1.0.0 built for aarch64");
    let ran =
        run_ok(Command::new(amd.join("usr/bin/greet")).env("LD_LIBRARY_PATH", amd.join("usr/lib")));
    assert_eq!(ran.trim(), "hello from libgreet 1.0.0 built for x86_64");

    // Binary imports: the board's architecture, files folded into /usr,
    // owners and modes from the .debs.
    for (cross, arch) in [(&amd, "amd64"), (&arm, "arm64")] {
        let kernel = meta(cross, "sys-kernel/linux");
        let debs = kernel["debs"].as_array().unwrap();
        assert!(
            debs.iter().any(
                |d| d["package"].as_str().unwrap().starts_with("linux-image-")
                    && d["architecture"] == arch
            ),
            "{debs:?}"
        );
        // apt resolved the closure: the kernel's tools need the C library.
        assert!(
            debs.iter()
                .any(|d| d["package"] == "libc6" && d["architecture"] == arch),
            "{debs:?}"
        );
        let files = kernel["files"].as_array().unwrap();
        assert!(
            files
                .iter()
                .any(|f| f["path"].as_str().unwrap().starts_with("boot/vmlinuz-"))
        );
        assert!(
            files
                .iter()
                .any(|f| f["path"].as_str().unwrap().starts_with("usr/lib/modules/"))
        );
        assert!(
            !files
                .iter()
                .any(|f| f["path"].as_str().unwrap().starts_with("lib/"))
        );
        let busybox = meta(cross, "sys-apps/busybox");
        let bb = busybox["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "usr/bin/busybox")
            .expect("busybox in /usr/bin")
            .clone();
        assert_eq!(
            (bb["mode"].as_u64(), bb["uid"].as_u64(), bb["user"].as_str()),
            (Some(0o755), Some(0), Some("root"))
        );
    }
    let bb = run_ok(Command::new("file").arg(arm.join("usr/bin/busybox")));
    assert!(bb.contains("ARM aarch64"), "{bb}");

    // Nothing changed: nothing is built, and the run says so.
    for board in ["amd64-usr", "arm64-usr"] {
        let out = run_ok(&mut env.build(board, &[]));
        assert!(
            out.contains(&format!(
                "nothing to build: all 6 packages for {board} are up to date"
            )),
            "{out}"
        );
    }

    // A sysext of packages the OS image already holds would carry
    // nothing: one line, exit 2, nothing written.
    let mut c = env.tool("build_sysext");
    c.args(["--board", "amd64-usr", "same", "demo-apps/greet"]);
    let out = run_expect(&mut c, 2);
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("demo-apps/greet adds anything"), "{err}");
    assert!(!env.repo.join("__build__/images/amd64-usr/sysext").exists());
}

const LIB_TOML: &str = "version = \"1.0\"\nkind = \"build\"\n";
const LIB_SH: &str = "printf 'int answer(void) { return 42; }\\n' > a.c\n$CC $CFLAGS -fPIC -shared -o liba.so a.c\ninstall -Dm0755 liba.so \"$DESTDIR$PREFIX/lib/liba.so\"\nprintf 'int answer(void);\\n' > a.h\ninstall -Dm0644 a.h \"$DESTDIR$PREFIX/include/a.h\"\n";
const APP_SH: &str = "printf '#include <a.h>\\nint main(void) { return answer() - 42; }\\n' > m.c\n$CC $CFLAGS -o app m.c -la\ninstall -Dm0755 app \"$DESTDIR$PREFIX/bin/app\"\n";

fn file_sh(path: &str, text: &str) -> String {
    format!("mkdir -p \"$DESTDIR/$(dirname {path})\"\necho '{text}' > \"$DESTDIR/{path}\"\n")
}

/// base/a <- mid/b <- top/c, plus other/d, under meta/all.
fn chain_repo(env: &Env) {
    env.recipe("base/a", LIB_TOML, Some(LIB_SH));
    env.recipe(
        "mid/b",
        "version = \"1.0\"\nkind = \"build\"\ndepends = [\"base/a\"]\nbuild-depends = [\"base/a\"]\n",
        Some(APP_SH),
    );
    env.recipe(
        "top/c",
        "version = \"2\"\nkind = \"build\"\ndepends = [\"mid/b\"]\n",
        Some(&file_sh("usr/share/c/c.txt", "c")),
    );
    env.recipe(
        "other/d",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/d/d.txt", "d")),
    );
    env.recipe(
        "meta/all",
        "version = \"1\"\nkind = \"meta\"\ndepends = [\"top/c\", \"other/d\"]\n",
        None,
    );
}

#[test]
fn unchanged_is_a_no_op_and_a_change_rebuilds_exactly_its_dependents() {
    let env = Env::new(None);
    chain_repo(&env);
    let (v, _) = env.report("amd64-usr", &["meta/all"], 0);
    assert_eq!(with_outcome(&v, "built").len(), 5, "{v:#}");
    let hashes1 = v["packages"].clone();
    // The app linked against base/a from the cross-root.
    assert!(env.cross("amd64-usr").join("usr/bin/app").is_file());

    let out = run_ok(&mut env.build("amd64-usr", &["meta/all"]));
    assert!(
        out.contains("nothing to build: all 5 packages for amd64-usr are up to date"),
        "{out}"
    );

    // Touch mid/b: it, top/c and meta/all rebuild; base/a and other/d do not.
    let script = env.repo.join("packages/mid/b/build.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("# changed\n");
    std::fs::write(&script, text).unwrap();
    let (v, _) = env.report("amd64-usr", &["meta/all", "-j2"], 0);
    assert_eq!(
        with_outcome(&v, "built"),
        vec!["meta/all", "mid/b", "top/c"],
        "{v:#}"
    );
    assert_eq!(with_outcome(&v, "up-to-date"), vec!["base/a", "other/d"]);

    // Revert: the old binary packages come back from the cache.
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("# changed\n", "");
    std::fs::write(&script, text).unwrap();
    let (v, _) = env.report("amd64-usr", &["meta/all"], 0);
    assert_eq!(
        with_outcome(&v, "cached"),
        vec!["meta/all", "mid/b", "top/c"],
        "{v:#}"
    );

    // Hash stability: a fresh build root computes the same input hashes and
    // builds byte-identical binary packages.
    let env2 = Env {
        user: env.user.clone(),
        scratch: Scratch::new(&env.user),
        repo: env.repo.clone(),
        build: env.scratch.path().join("build2"),
    };
    let (v2, _) = env2.report("amd64-usr", &["meta/all"], 0);
    let hashes = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().into(),
                    p["input-hash"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(hashes(&hashes1), hashes(&v2["packages"]));
    for name in ["base/a", "mid/b", "top/c"] {
        assert_eq!(
            meta(&env.cross("amd64-usr"), name)["archive-sha256"],
            meta(&env2.cross("amd64-usr"), name)["archive-sha256"],
            "{name} is reproducible"
        );
    }
}

/// A derivative names the repo above as its parent tree, overrides one of
/// its recipes and adds one: only those (and what depends on them) build,
/// in the same build root the parent's packages are in; `--pretend` says
/// which tree each recipe comes from; a cycle of parents is one line.
#[test]
fn a_derivative_overrides_one_recipe_adds_one_and_rebuilds_nothing_else() {
    let env = Env::new(None);
    chain_repo(&env);
    let (v, _) = env.report("amd64-usr", &["meta/all"], 0);
    assert_eq!(with_outcome(&v, "built").len(), 5, "{v:#}");

    let derived_dir = env.scratch.path().join("derived");
    let derived = Env {
        user: env.user.clone(),
        scratch: Scratch::new(&env.user),
        repo: derived_dir.clone(),
        build: env.build.clone(),
    };
    std::fs::create_dir_all(derived_dir.join("packages")).unwrap();
    std::fs::write(
        derived_dir.join("sdk-version.toml"),
        "sdk-version = \"1\"\nos-version = \"1\"\nparents = [\"../repo\"]\n",
    )
    .unwrap();
    derived.recipe(
        "other/d",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/d/d.txt", "derived d")),
    );
    derived.recipe(
        "extra/e",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/e/e.txt", "e")),
    );
    chown_r(&env.user, env.scratch.path());

    let pretend = run_ok(&mut derived.build("amd64-usr", &["meta/all", "extra/e", "--pretend"]));
    let line = |name: &str| {
        pretend
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} not in {pretend}"))
            .to_string()
    };
    let parent = env.repo.canonicalize().unwrap();
    assert!(
        line("base/a").ends_with(&format!(" from {}", parent.display())),
        "{pretend}"
    );
    assert!(line("base/a").starts_with("up to date"), "{pretend}");
    assert!(!line("other/d").contains(" from "), "{pretend}");
    assert!(line("other/d").starts_with("build"), "{pretend}");

    let (v, _) = derived.report("amd64-usr", &["meta/all", "extra/e"], 0);
    assert_eq!(
        with_outcome(&v, "built"),
        vec!["extra/e", "meta/all", "other/d"],
        "{v:#}"
    );
    assert_eq!(
        with_outcome(&v, "up-to-date"),
        vec!["base/a", "mid/b", "top/c"],
        "{v:#}"
    );
    let d = std::fs::read_to_string(env.cross("amd64-usr").join("usr/share/d/d.txt")).unwrap();
    assert_eq!(d.trim(), "derived d");

    // The parent naming the derivative back: a cycle, said in one line.
    std::fs::write(
        env.repo.join("sdk-version.toml"),
        "sdk-version = \"1\"\nos-version = \"1\"\nparents = [\"../derived\"]\n",
    )
    .unwrap();
    let out = run_expect(&mut derived.build("amd64-usr", &["meta/all"]), 2);
    let err = stderr(&out);
    assert_eq!(sdk_e2e::error_lines(&err).len(), 1, "{err}");
    assert!(err.contains("a cycle"), "{err}");
}

#[test]
fn new_version_drops_files_the_old_one_owned() {
    let env = Env::new(None);
    env.recipe(
        "x/p",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&(file_sh("usr/share/p/old", "o") + &file_sh("usr/share/p/keep", "1"))),
    );
    run_ok(&mut env.build("amd64-usr", &["x/p"]));
    let cross = env.cross("amd64-usr");
    assert!(cross.join("usr/share/p/old").is_file());
    env.recipe(
        "x/p",
        "version = \"2\"\nkind = \"build\"\n",
        Some(&(file_sh("usr/share/p/new", "n") + &file_sh("usr/share/p/keep", "2"))),
    );
    run_ok(&mut env.build("amd64-usr", &["x/p"]));
    assert!(!cross.join("usr/share/p/old").exists());
    assert!(cross.join("usr/share/p/new").is_file());
    assert_eq!(
        std::fs::read_to_string(cross.join("usr/share/p/keep")).unwrap(),
        "2\n"
    );
    assert_eq!(meta(&cross, "x/p")["version"], "2");
}

#[test]
fn failures_keep_previous_state_and_keep_going_builds_the_rest() {
    let env = Env::new(None);
    env.recipe(
        "ok/a",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/a", "a")),
    );
    env.recipe(
        "bad/b",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/b", "good b")),
    );
    env.recipe(
        "dep/c",
        "version = \"1\"\nkind = \"build\"\ndepends = [\"bad/b\"]\n",
        Some(&file_sh("usr/share/c", "c")),
    );
    env.recipe(
        "ind/d",
        "version = \"1\"\nkind = \"build\"\ndepends = [\"ok/a\"]\n",
        Some(&file_sh("usr/share/d", "d")),
    );
    env.recipe(
        "meta/all",
        "version = \"1\"\nkind = \"meta\"\ndepends = [\"ok/a\", \"dep/c\", \"ind/d\"]\n",
        None,
    );
    let cross = env.cross("amd64-usr");
    // Build b (good) first, then break it and change d.
    run_ok(&mut env.build("amd64-usr", &["bad/b"]));
    let good_hash = meta(&cross, "bad/b")["input-hash"].clone();
    env.recipe(
        "bad/b",
        "version = \"2\"\nkind = \"build\"\n",
        Some("echo building b\necho boom >&2\nexit 3\n"),
    );

    // Without --keep-going the run stops at the failure, naming the package,
    // its log and the log's last lines.
    let out = run_expect(&mut env.build("amd64-usr", &["meta/all", "-j1"]), 1);
    let err = stderr(&out);
    let log = cross.join("var/log/sdk/bad/b.log");
    assert!(err.contains("error: bad/b failed"), "{err}");
    assert!(err.contains(&log.display().to_string()), "{err}");
    assert!(err.contains("| boom"), "{err}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("building b")
    );
    // The previous b is still installed, files and record.
    assert_eq!(
        std::fs::read_to_string(cross.join("usr/share/b")).unwrap(),
        "good b\n"
    );
    assert_eq!(meta(&cross, "bad/b")["input-hash"], good_hash);
    assert!(!cross.join("usr/share/c").exists());

    // With --keep-going, what does not depend on b is built.
    let (v, out) = env.report("amd64-usr", &["meta/all", "-j1", "--keep-going"], 1);
    assert_eq!(
        with_outcome(&v, "failed"),
        vec!["bad/b"],
        "{}",
        stderr(&out)
    );
    assert_eq!(with_outcome(&v, "skipped"), vec!["dep/c", "meta/all"]);
    assert!(cross.join("usr/share/a").is_file() && cross.join("usr/share/d").is_file());

    // Fixed: the run finishes.
    env.recipe(
        "bad/b",
        "version = \"2\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/b", "b2")),
    );
    let (v, _) = env.report("amd64-usr", &["meta/all"], 0);
    assert_eq!(
        with_outcome(&v, "built"),
        vec!["bad/b", "dep/c", "meta/all"]
    );
}

/// (recipe, package.toml, build.sh, exit code, expected message parts)
type Case = (&'static str, String, Option<String>, i32, Vec<String>);

#[test]
fn bad_input_is_one_clear_error_and_loses_nothing() {
    let env = Env::new(None);
    env.recipe(
        "ok/a",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/a/a.txt", "a")),
    );
    run_ok(&mut env.build("amd64-usr", &["ok/a"]));
    let cross = env.cross("amd64-usr");
    let installed = |env: &Env| {
        assert_eq!(
            std::fs::read_to_string(cross.join("usr/share/a/a.txt")).unwrap(),
            "a\n"
        );
        assert_eq!(meta(&env.cross("amd64-usr"), "ok/a")["name"], "ok/a");
    };
    let tarball = env.repo.join("t.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(env.repo.join("packages"))
            .arg("ok"),
    );
    let tar_sha = run_ok(Command::new("sha256sum").arg(&tarball));
    let tar_sha = tar_sha.split_whitespace().next().unwrap();

    let cases: Vec<Case> = vec![
        (
            "bad/unknown-key",
            "version = \"1\"\nkind = \"meta\"\ncolour = \"red\"\n".into(),
            None,
            2,
            vec![
                "packages/bad/unknown-key/package.toml:3:1".into(),
                "colour".into(),
            ],
        ),
        (
            "bad/no-sha",
            format!(
                "version = \"1\"\nkind = \"build\"\n[[build.tarball]]\nurl = \"file://{}\"\n",
                tarball.display()
            ),
            Some("true\n".into()),
            2,
            vec![
                "packages/bad/no-sha/package.toml:3:".into(),
                "no sha256".into(),
            ],
        ),
        (
            "bad/checksum",
            format!(
                "version = \"1\"\nkind = \"build\"\n[[build.tarball]]\nurl = \"file://{}\"\nsha256 = \"{}\"\n",
                tarball.display(),
                "0".repeat(64)
            ),
            Some("true\n".into()),
            1,
            vec![
                "bad/checksum".into(),
                format!("has sha256 {tar_sha}"),
                "line 3".into(),
            ],
        ),
        (
            "bad/cycle",
            "version = \"1\"\nkind = \"meta\"\ndepends = [\"bad/cycle2\"]\n".into(),
            None,
            2,
            vec!["dependency cycle: bad/cycle -> bad/cycle2 -> bad/cycle".into()],
        ),
        (
            "bad/missing",
            "version = \"1\"\nkind = \"meta\"\ndepends = [\"ok/a\", \"no/such\"]\n".into(),
            None,
            2,
            vec!["bad/missing needs no/such, which has no recipe".into()],
        ),
        (
            "bad/outside",
            "version = \"1\"\nkind = \"build\"\n".into(),
            Some("mkdir -p \"$DESTDIR/usr\"\necho evil > \"$SYSROOT/usr/share/a/a.txt\"\n".into()),
            1,
            vec!["bad/outside".into(), "outside DESTDIR".into()],
        ),
        (
            "bad/conflict",
            "version = \"1\"\nkind = \"build\"\n".into(),
            Some(file_sh("usr/share/a/a.txt", "mine")),
            1,
            vec!["bad/conflict installs /usr/share/a/a.txt, which already belongs to ok/a".into()],
        ),
    ];
    for (name, toml, script, code, expect) in cases {
        env.recipe(name, &toml, script.as_deref());
        if name == "bad/cycle" {
            env.recipe(
                "bad/cycle2",
                "version = \"1\"\nkind = \"meta\"\ndepends = [\"bad/cycle\"]\n",
                None,
            );
        }
        let out = run_expect(&mut env.build("amd64-usr", &[name]), code);
        let err = stderr(&out);
        for e in &expect {
            assert!(err.contains(e.as_str()), "{name}: wanted `{e}` in:\n{err}");
        }
        installed(&env);
        assert!(
            std::fs::read_dir(cross.join("var/lib/sdk/db/bad")).map_or(true, |d| d.count() == 0),
            "{name}: nothing recorded"
        );
        std::fs::remove_dir_all(env.repo.join("packages").join(name)).unwrap();
        let _ = std::fs::remove_dir_all(env.repo.join("packages/bad/cycle2"));
    }

    // Unknown board: usage error listing the known ones.
    let out = run_expect(&mut env.build("pdp11-usr", &[]), 2);
    assert!(
        stderr(&out).contains("unknown board `pdp11-usr`; known boards: amd64-usr, arm64-usr"),
        "{}",
        stderr(&out)
    );
    let out = run_expect(env.tool("setup_board").args(["--board", "pdp11-usr"]), 2);
    assert!(stderr(&out).contains("unknown board"));
    installed(&env);
}

#[test]
fn setup_board_is_idempotent_and_wrappers_use_the_cross_root() {
    let env = Env::new(None);
    let out = run_ok(env.tool("setup_board").args(["--board", "arm64-usr"]));
    assert!(out.starts_with("created"), "{out}");
    let out = run_ok(env.tool("setup_board").args(["--board", "arm64-usr"]));
    assert!(out.starts_with("up to date"), "{out}");
    let cross = env.cross("arm64-usr");
    for d in [
        "usr/include",
        "usr/lib/pkgconfig",
        "var/lib/sdk/db",
        "packages",
    ] {
        assert!(cross.join(d).is_dir(), "{d}");
    }
    let bin = env.build.join("bin");
    // A header and a library in the cross-root are found by the wrappers.
    std::fs::write(cross.join("usr/include/wrapped.h"), "#define WRAPPED 7\n").unwrap();
    std::fs::write(
        cross.join("usr/lib/pkgconfig/w.pc"),
        "prefix=/usr\nName: w\nDescription: w\nVersion: 1\nCflags: -I${prefix}/include\n",
    )
    .unwrap();
    chown_r(&env.user, &cross);
    std::fs::write(
        env.scratch.path().join("t.c"),
        "#include <wrapped.h>\nint main(void) { return WRAPPED - 7; }\n",
    )
    .unwrap();
    chown_r(&env.user, env.scratch.path());
    run_ok(
        env.user
            .command(&env.scratch, bin.join("arm64-usr-cc"))
            .args(["-o", "t", "t.c"]),
    );
    let file = run_ok(Command::new("file").arg(env.scratch.path().join("t")));
    assert!(file.contains("ARM aarch64"), "{file}");
    let flags = run_ok(
        env.user
            .command(&env.scratch, bin.join("pkg-config-arm64-usr"))
            .args(["--cflags", "w"]),
    );
    assert_eq!(flags.trim(), format!("-I{}/usr/include", cross.display()));
    // --force starts over.
    let out = run_ok(
        env.tool("setup_board")
            .args(["--board", "arm64-usr", "--force"]),
    );
    assert!(out.starts_with("created"), "{out}");
    assert!(!cross.join("usr/include/wrapped.h").exists());
}

#[test]
fn killed_run_resumes_consistently() {
    let env = Env::new(None);
    env.recipe(
        "fast/f",
        "version = \"1\"\nkind = \"build\"\n",
        Some(&file_sh("usr/share/f", "f")),
    );
    env.recipe(
        "slow/s",
        "version = \"1\"\nkind = \"build\"\ndepends = [\"fast/f\"]\n",
        Some(&(file_sh("usr/share/s", "s") + "touch \"$HOME/../started\"\nsleep 30\n")),
    );
    let mut child = {
        use std::os::unix::process::CommandExt;
        env.build("amd64-usr", &["slow/s", "-j1"])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let started = env.build.join(".work/amd64-usr/slow/s/started");
    let t0 = std::time::Instant::now();
    while !started.exists() {
        assert!(t0.elapsed().as_secs() < 60, "the slow build never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // kill -9 the whole run (the tool and its build script).
    let pgid = child.id();
    run_ok(Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]));
    let _ = child.wait();
    let cross = env.cross("amd64-usr");
    assert_eq!(meta(&cross, "fast/f")["name"], "fast/f");
    assert!(!cross.join("var/lib/sdk/db/slow/s.json").exists());

    // The next run resumes: f is up to date, s builds.
    env.recipe(
        "slow/s",
        "version = \"1\"\nkind = \"build\"\ndepends = [\"fast/f\"]\n",
        Some(&file_sh("usr/share/s", "s")),
    );
    let (v, _) = env.report("amd64-usr", &["slow/s"], 0);
    assert_eq!(with_outcome(&v, "up-to-date"), vec!["fast/f"]);
    assert_eq!(with_outcome(&v, "built"), vec!["slow/s"]);
    assert!(cross.join("usr/share/s").is_file());
}

/// The example repo builds for both boards inside a sandbox of the default
/// SDK, with the tools sdk-run binds in (`build_packages` on PATH).
#[test]
fn demo_os_builds_inside_the_default_sdk_sandbox() {
    let env = Env::new(Some(&repo_root().join("examples/demo-os")));
    let store = default_sdk_store();
    let digest = run_ok(
        env.user
            .command(&env.scratch, "sdk-run")
            .arg("build")
            .env("XDG_DATA_HOME", &store),
    );
    let rootfs = store
        .join("sdk-run/images")
        .join(digest.trim())
        .join("rootfs");
    let name = format!("e2e-packages-{}", std::process::id());
    let cache = deb_cache(&env.user);
    // Cross-roots in the sandbox's /build; the programs are copied to the
    // repo's __build__ (bound into the sandbox) for the host to run them.
    let script = "set -e
export SDK_CACHE_DIR=/mnt/debcache
build_packages --board amd64-usr -j2
build_packages --board arm64-usr -j2
build_packages --board amd64-usr
build_packages --board arm64-usr
file -L /build/arm64-usr/usr/bin/greet
cp /build/arm64-usr/usr/bin/greet /build/arm64-usr/usr/lib/libgreet.so.1 __build__/";
    let mut cmd = env.user.command(&env.scratch, "sdk-run");
    cmd.current_dir(&env.repo)
        .env("XDG_DATA_HOME", &store)
        .args(["-n", &name, "--rootfs"])
        .arg(&rootfs)
        .arg("--overlay")
        .arg("-v")
        .arg(format!("{}:/mnt/debcache", cache.display()))
        .args(["--", "sh", "-c", script]);
    let out = cmd.output().unwrap();
    let _ = env
        .user
        .command(&env.scratch, "sdk-run")
        .env("XDG_DATA_HOME", &store)
        .args(["rm", "-f", &name])
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    for board in ["amd64-usr", "arm64-usr"] {
        assert!(stdout.contains(&format!("{board}: 6 built")), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "nothing to build: all 6 packages for {board} are up to date"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout
            .contains("/build/arm64-usr/usr/bin/greet: ELF 64-bit LSB pie executable, ARM aarch64"),
        "{stdout}"
    );
    let out = env.repo.join("__build__");
    let ran = run_ok(
        Command::new("qemu-aarch64-static")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .env("LD_LIBRARY_PATH", &out)
            .arg(out.join("greet")),
    );
    assert_eq!(ran.trim(), "hello from libgreet 1.0.0 built for aarch64");
}

/// `sdk-run -t` in the default SDK, typed into a real terminal as a person
/// does: the login shell (whose Debian /etc/profile resets PATH) finds the
/// SDK tools and the sbin tools, as the sdk user and as root, and
/// `build_packages --pretend` runs in it.
#[test]
fn interactive_shell_in_the_default_sdk_has_the_tools() {
    let env = Env::new(Some(&repo_root().join("examples/demo-os")));
    let store = default_sdk_store();
    let name = format!("e2e-shell-{}", std::process::id());
    let tmux = |user: &str| {
        let mut c = env.user.command(&env.scratch, "tmux");
        c.current_dir(&env.repo).env("XDG_DATA_HOME", &store);
        Tmux::start(c, &env.scratch, &format!("sdk-run -n {name} -u {user} -t"))
    };
    let limit = Duration::from_secs(120);
    for (user, prompt) in [("sdk", "$"), ("root", "#")] {
        let t = tmux(user);
        t.wait_for("the shell's prompt", limit, |s| {
            let want = format!("/mnt/host/source{prompt}");
            s.lines().any(|l| l.trim_end().ends_with(&want))
        });
        t.type_line("for c in build_packages build_image image_to_vm test_image mkfs.vfat sfdisk; do command -v $c || echo missing-$c; done");
        t.type_line("build_packages --board amd64-usr --pretend; echo pretend-rc-$?");
        t.wait_for("build_packages --pretend", limit, |s| {
            s.lines().any(|l| l.starts_with("pretend-rc-"))
        });
        let s = t.screen();
        assert!(
            !s.lines().any(|l| l.starts_with("missing-")),
            "as {user}, a tool is not on PATH:\n{s}"
        );
        assert!(
            s.contains("\n/run/sdk-tools/bin/build_packages\n"),
            "as {user}:\n{s}"
        );
        assert!(s.contains("/sbin/mkfs.vfat\n"), "as {user}:\n{s}");
        assert!(s.contains("\npretend-rc-0\n"), "as {user}:\n{s}");
        t.type_line("exit");
        t.wait_for("the shell to end", limit, |_| !t.alive());
    }
    run_ok(
        env.user
            .command(&env.scratch, "sdk-run")
            .env("XDG_DATA_HOME", &store)
            .args(["rm", "-f", &name]),
    );
}
