//! Tests in a booted guest over ssh, the way kola runs them: `test_image`
//! makes a key pair, provisions a user with it through Ignition (merged
//! with the user's own config, if any), waits for ssh on the forwarded
//! loopback port once the boot marker is seen, then runs each test script
//! of a folder in the guest and prints TAP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BootError;

/// The user the tests log in as (in group `sudo`).
pub const TEST_USER: &str = "sdk-test";

/// A key pair in a private temporary folder.
pub struct GuestKey {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: String,
}

fn tool(what: &str, e: impl std::fmt::Display) -> BootError {
    BootError::Usage(format!("{what}: {e}"))
}

/// `ssh-keygen -t ed25519` without a passphrase.
pub fn make_key() -> Result<GuestKey, BootError> {
    let dir = tempfile::tempdir().map_err(|e| tool("a temporary folder for the key", e))?;
    let private = dir.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "sdk-tools test_image",
            "-f",
        ])
        .arg(&private)
        .output()
        .map_err(|e| tool("ssh-keygen (Debian package openssh-client)", e))?;
    if !out.status.success() {
        return Err(tool("ssh-keygen", String::from_utf8_lossy(&out.stderr)));
    }
    let public = std::fs::read_to_string(private.with_extension("pub"))
        .map_err(|e| tool("read the public key", e))?
        .trim()
        .to_string();
    Ok(GuestKey {
        _dir: dir,
        private,
        public,
    })
}

/// Percent-encode for a `data:` URL.
fn data_url(bytes: &[u8]) -> String {
    let mut s = String::from("data:,");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// An Ignition config that creates [`TEST_USER`] with `public` as its ssh
/// key and merges `user_config` (already checked) into it.
pub fn ignition_config(user_config: Option<&Path>, public: &str) -> Result<String, BootError> {
    let mut cfg = serde_json::json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{
            "name": TEST_USER,
            "groups": ["sudo"],
            "sshAuthorizedKeys": [public],
        }]},
    });
    if let Some(p) = user_config {
        let bytes = std::fs::read(p).map_err(|e| tool(&p.display().to_string(), e))?;
        cfg["ignition"]["config"] = serde_json::json!({"merge": [{"source": data_url(&bytes)}]});
    }
    Ok(serde_json::to_string_pretty(&cfg).expect("plain data"))
}

fn ssh(key: &Path, port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{TEST_USER}@127.0.0.1"));
    c
}

/// Run `cmd` to its end or until `limit`, then kill it. Returns the exit
/// code (None when killed or killed by a signal) and what it printed.
fn run_for(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> (Option<i32>, String) {
    let mut child = match cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot run ssh: {e}")),
    };
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(data);
    }
    let readers: Vec<_> = super::vm::output_streams(&mut child)
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        })
        .collect();
    let start = Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break None,
        }
    };
    let mut out = Vec::new();
    for r in readers {
        out.extend(r.join().unwrap_or_default());
    }
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Wait until ssh answers as [`TEST_USER`].
pub fn wait_for_ssh(key: &Path, port: u16, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let (code, out) = run_for(ssh(key, port).arg("true"), None, Duration::from_secs(15));
        if code == Some(0) {
            return Ok(());
        }
        last = out.trim().to_string();
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "ssh as {TEST_USER} did not answer within {}s ({last})",
        timeout.as_secs()
    ))
}

/// The test scripts of `dir`: its regular files, by name.
pub fn test_scripts(dir: &Path) -> Result<Vec<PathBuf>, BootError> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        BootError::Usage(format!(
            "--tests {}: {e}; give a folder of test scripts",
            dir.display()
        ))
    })?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(BootError::Usage(format!(
            "--tests {}: no test scripts in it",
            dir.display()
        )));
    }
    Ok(v)
}

/// One test's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    /// Exit code; None when it did not finish in time (or could not run).
    pub code: Option<i32>,
    pub output: String,
    pub seconds: f64,
}

/// The exit code a test script uses to say it had nothing to check here
/// (the automake convention): TAP `# SKIP`, not a failure.
pub const SKIP_CODE: i32 = 77;

impl TestResult {
    pub fn skipped(&self) -> bool {
        self.code == Some(SKIP_CODE)
    }

    pub fn passed(&self) -> bool {
        self.code == Some(0) || self.skipped()
    }
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                o.push_str(&format!("&#{};", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

/// The results as JUnit XML (one suite), what CI systems read.
pub fn junit(suite: &str, results: &[TestResult]) -> String {
    let failures = results.iter().filter(|r| !r.passed()).count();
    let skipped = results.iter().filter(|r| r.skipped()).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
        xml_escape(suite),
        results.len()
    );
    for r in results {
        x.push_str(&format!(
            "<testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml_escape(suite),
            xml_escape(&r.name),
            r.seconds
        ));
        if r.skipped() {
            x.push_str(&format!(
                "<skipped message=\"{}\"/>",
                xml_escape(r.output.lines().next().unwrap_or(""))
            ));
        } else if !r.passed() {
            let msg = match r.code {
                Some(c) => format!("exit {c}"),
                None => "no result in time".to_string(),
            };
            x.push_str(&format!(
                "<failure message=\"{}\">{}</failure>",
                xml_escape(&msg),
                xml_escape(&r.output)
            ));
        }
        x.push_str(&format!(
            "<system-out>{}</system-out></testcase>\n",
            xml_escape(&r.output)
        ));
    }
    x.push_str("</testsuite>\n</testsuites>\n");
    x
}

/// The tests of one `test_image` run, shared by its VMs: each VM takes
/// the next test, runs it (copied in and run with its own `#!`, as
/// [`TEST_USER`], within the time limit) with the console going to the
/// test's own log, and the results print as TAP in order.
pub struct TestQueue {
    scripts: Vec<PathBuf>,
    limit: Duration,
    /// Where each test's console log goes (`<dir>/<test>.console.log`).
    logs: PathBuf,
    state: std::sync::Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    next: usize,
    results: Vec<Option<TestResult>>,
    printed: usize,
}

fn script_name(script: &Path) -> String {
    script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl TestQueue {
    /// Prints the TAP plan. `logs` is emptied of earlier runs' logs.
    pub fn new(scripts: Vec<PathBuf>, limit: Duration, logs: PathBuf) -> TestQueue {
        println!("1..{}", scripts.len());
        let _ = std::fs::remove_dir_all(&logs);
        let _ = std::fs::create_dir_all(&logs);
        let results = vec![None; scripts.len()];
        TestQueue {
            scripts,
            limit,
            logs,
            state: std::sync::Mutex::new(QueueState {
                results,
                ..QueueState::default()
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// The folder of the per-test console logs.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One VM's share: tests until none is left.
    pub fn run(&self, key: &Path, port: u16, tap: &super::vm::ConsoleTap) {
        loop {
            let i = {
                let mut st = self.lock();
                if st.next >= self.scripts.len() {
                    return;
                }
                st.next += 1;
                st.next - 1
            };
            let name = script_name(&self.scripts[i]);
            tap.to(std::fs::File::create(self.logs.join(format!("{name}.console.log"))).ok());
            let r = self.run_one(&self.scripts[i], key, port);
            tap.to(None);
            self.record(i, r);
        }
    }

    fn run_one(&self, script: &Path, key: &Path, port: u16) -> TestResult {
        let name = script_name(script);
        let body = match std::fs::read(script) {
            Ok(b) => b,
            Err(e) => {
                return TestResult {
                    name,
                    code: None,
                    output: format!("cannot read it: {e}"),
                    seconds: 0.0,
                };
            }
        };
        let started = Instant::now();
        let (code, output) = run_for(
            ssh(key, port).arg(
                "f=$(mktemp) && cat >\"$f\" && chmod +x \"$f\" && \"$f\"; rc=$?; rm -f \"$f\"; exit $rc",
            ),
            Some(&body),
            self.limit,
        );
        TestResult {
            name,
            code,
            output,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Keep result `i`; print every result whose turn has come.
    fn record(&self, i: usize, r: TestResult) {
        let mut st = self.lock();
        st.results[i] = Some(r);
        while st.printed < st.results.len() {
            let n = st.printed;
            let Some(r) = &st.results[n] else { break };
            print_tap(n + 1, r, self.limit);
            st.printed += 1;
        }
    }

    /// Every result; tests no VM ran (it did not boot) fail with `why`.
    pub fn finish(self, why: &str) -> Vec<TestResult> {
        let taken = self.lock().next;
        for i in taken..self.scripts.len() {
            let name = script_name(&self.scripts[i]);
            self.record(
                i,
                TestResult {
                    name,
                    code: None,
                    output: format!("not run: {why}"),
                    seconds: 0.0,
                },
            );
        }
        let st = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        st.results.into_iter().flatten().collect()
    }
}

fn print_tap(n: usize, r: &TestResult, limit: Duration) {
    let name = &r.name;
    match r.code {
        Some(0) => println!("ok {n} - {name}"),
        Some(SKIP_CODE) => println!(
            "ok {n} - {name} # SKIP {}",
            r.output.lines().next().unwrap_or("nothing to check here")
        ),
        Some(c) => println!("not ok {n} - {name} # exit {c}"),
        None if r.output.starts_with("not run: ") || r.output.starts_with("cannot read it: ") => {
            println!(
                "not ok {n} - {name} # {}",
                r.output.lines().next().unwrap_or("")
            )
        }
        None => println!(
            "not ok {n} - {name} # no result within {}s",
            limit.as_secs()
        ),
    }
    if !r.passed() {
        for l in r.output.lines() {
            println!("# {l}");
        }
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// Err naming the tests that failed.
pub fn verdict(results: &[TestResult]) -> Result<(), String> {
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.name.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} tests failed: {}",
            failed.len(),
            results.len(),
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_names_failures_and_escapes_output() {
        let r = vec![
            TestResult {
                name: "a".into(),
                code: Some(0),
                output: "fine".into(),
                seconds: 1.0,
            },
            TestResult {
                name: "b<".into(),
                code: Some(3),
                output: "x & y".into(),
                seconds: 0.5,
            },
            TestResult {
                name: "c".into(),
                code: Some(SKIP_CODE),
                output: "nothing here\n".into(),
                seconds: 0.1,
            },
        ];
        let x = junit("suite", &r);
        assert!(
            x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("<skipped message=\"nothing here\"/>"), "{x}");
        assert!(x.contains("name=\"b&lt;\""), "{x}");
        assert!(
            x.contains("<failure message=\"exit 3\">x &amp; y</failure>"),
            "{x}"
        );
        assert!(verdict(&r).unwrap_err().contains("1 of 3 tests failed: b<"));
    }

    #[test]
    fn the_test_user_is_added_and_the_users_config_merged() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine.ign");
        std::fs::write(&mine, "{\"ignition\": {\"version\": \"3.3.0\"}}").unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&ignition_config(Some(&mine), "ssh-ed25519 AAAA k").unwrap())
                .unwrap();
        assert_eq!(cfg["passwd"]["users"][0]["name"], TEST_USER);
        assert_eq!(
            cfg["ignition"]["config"]["merge"][0]["source"],
            "data:,%7B%22ignition%22%3A%20%7B%22version%22%3A%20%223.3.0%22%7D%7D"
        );
    }
}
