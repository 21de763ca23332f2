//! What a Debian package's maintainer scripts would do on a fresh
//! install, read from the scripts instead of run: binary imports unpack
//! .debs without root, so nothing runs them.
//!
//! Each `preinst` and `postinst` is read command by command (quotes,
//! `;`, `&&`, `||` and pipes respected; simple `NAME=value` and
//! `NAME=$(dpkg-divert --truename PATH)` assignments expanded), and every
//! command falls in one of four bins:
//!
//! - **reproduced at build time**: `setcap` becomes the file's
//!   `security.capability` attribute; `update-alternatives --install`
//!   becomes the `/usr/bin/x -> /etc/alternatives/x -> target` links of
//!   the highest priority;
//! - **accounts**: `adduser`/`useradd`/`addgroup`/`groupadd` are recorded;
//!   `build_image` checks that a `sysusers.d` entry (or base-passwd)
//!   declares each, and lists the ones none does;
//! - **done by the booted OS or meaningless on a fresh image**: shell
//!   syntax and read-only commands, service enabling (presets),
//!   `ldconfig`, `systemd-tmpfiles`/`-sysusers`/`-hwdb`, host keys
//!   (`ssh-keygen`: the OS generates them on first boot), conffile moves
//!   of upgrades, debconf, bytecode compiling;
//! - **everything else**: listed by `build_image` (package, script, line)
//!   in `<image>_maintscripts.txt`, never silently dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A script line the build does not reproduce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Note {
    /// The Debian package.
    pub package: String,
    /// `preinst` or `postinst`.
    pub script: String,
    pub line: usize,
    pub text: String,
}

/// A user or group a script creates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Account {
    /// `user` or `group`.
    pub kind: String,
    pub name: String,
    /// Where the script does it.
    pub at: Note,
}

/// One `update-alternatives --install` (a slave is its own entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// `/usr/bin/awk`.
    pub link: String,
    /// `awk`.
    pub name: String,
    /// `/usr/bin/mawk`.
    pub path: String,
    pub priority: i64,
}

/// What reading one package's scripts gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// (path, setcap text).
    pub capabilities: Vec<(String, String)>,
    pub alternatives: Vec<Alternative>,
    pub accounts: Vec<Account>,
    pub unreproduced: Vec<Note>,
}

/// What the build records of a binary package's scripts (its metadata's
/// `maintainer-scripts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Report {
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub unreproduced: Vec<Note>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.unreproduced.is_empty()
    }
}

/// Commands that change nothing on an image, or whose effect the booted
/// OS has by other means.
const NOTHING_TO_DO: &[&str] = &[
    // shell syntax and builtins
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "case",
    "esac",
    "for",
    "while",
    "until",
    "do",
    "done",
    "in",
    "{",
    "}",
    "(",
    ")",
    ";;",
    "!",
    "set",
    "exit",
    "return",
    "echo",
    "printf",
    "true",
    "false",
    ":",
    "[",
    "[[",
    "test",
    "local",
    "export",
    "shift",
    "unset",
    "trap",
    ".",
    "wait",
    "break",
    "continue",
    "eval",
    "umask",
    "read",
    "sleep",
    // read-only
    "getent",
    "grep",
    "egrep",
    "command",
    "which",
    "type",
    "cat",
    "head",
    "tail",
    "cut",
    "tr",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "id",
    "dpkg-query",
    "dpkg-architecture",
    "ls",
    "stat",
    "find",
    "wc",
    "sort",
    "uniq",
    "awk",
    "expr",
    "uname",
    "pidof",
    "env",
    "logger",
    "ischroot",
    "dpkg-statoverride",
    "lsmod",
    "getcap",
    "cmp",
    "mountpoint",
    // services: enabled by presets at boot, nothing runs at build time
    "deb-systemd-helper",
    "deb-systemd-invoke",
    "systemctl",
    "update-rc.d",
    "invoke-rc.d",
    "/lib/runit-helper/runit-helper",
    "runit-helper",
    "service",
    "start-stop-daemon",
    // done at boot by the OS's own units
    "ldconfig",
    "systemd-tmpfiles",
    "systemd-sysusers",
    "systemd-hwdb",
    "udevadm",
    "systemd-machine-id-setup",
    "journalctl",
    "systemd-sysctl",
    "ssh-keygen",
    "restorecon",
    // upgrades and removals only; packaging bookkeeping
    "dpkg-maintscript-helper",
    "dpkg-trigger",
    "dpkg",
    "ucfr",
    "ucfq",
    "db_version",
    "db_get",
    "db_set",
    "db_input",
    "db_go",
    "db_stop",
    "db_purge",
    "db_fset",
    "db_fget",
    "db_register",
    "db_unregister",
    "db_subst",
    "db_title",
    "db_reset",
    "db_capb",
    "db_metaget",
    "db_x_loadtemplatefile",
    // the initramfs is sdk-init; bytecode is optional on a read-only /usr
    "update-initramfs",
    "py3compile",
    "pycompile",
    "py3clean",
    "pyclean",
    "update-mime",
    "update-desktop-database",
    "gtk-update-icon-cache",
    "mandb",
    "install-info",
    "update-catalog",
    "update-xmlcatalog",
];

/// Read one script (`script` is `preinst` or `postinst`) of `package`.
pub fn analyse(package: &str, script: &str, text: &str) -> Analysis {
    let mut out = Analysis::default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut functions: Vec<String> = Vec::new();
    let mut chmod_ok: Vec<String> = Vec::new();
    let note = |line: usize, text: &str| Note {
        package: package.to_string(),
        script: script.to_string(),
        line,
        text: text.trim().to_string(),
    };
    let lines = logical_lines(text);
    // Function names first: calls to them are read as their bodies are.
    for (_, l) in &lines {
        if let Some(name) = function_name(l) {
            functions.push(name);
        }
    }
    let mut heredoc: Option<String> = None;
    let mut answers: Vec<bool> = Vec::new();
    for (no, line) in &lines {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        if let Some(at) = line.find("<<") {
            let tag = line[at + 2..]
                .trim_start_matches('-')
                .trim()
                .trim_matches(['\'', '"']);
            if let Some(tag) = tag.split_whitespace().next() {
                heredoc = Some(tag.to_string());
            }
        }
        let trimmed = without_case_pattern(line.trim());
        if trimmed.is_empty() || trimmed.starts_with('#') || function_name(trimmed).is_some() {
            continue;
        }
        for cmd in split_commands(trimmed) {
            // Branches that depend on a debconf answer (`$RET` after
            // `db_get`): what they do is the admin's choice, not a fact of
            // the package.
            let head = cmd.split_whitespace().next().unwrap_or("");
            match head {
                "if" => {
                    let top = answers.last().copied().unwrap_or(false);
                    answers.push(top || cmd.contains("$RET"));
                }
                "elif" => {
                    if let Some(t) = answers.last_mut() {
                        *t = *t || cmd.contains("$RET");
                    }
                }
                "fi" => {
                    answers.pop();
                }
                _ => {}
            }
            let on_answer = answers.last().copied().unwrap_or(false);
            let words: Vec<String> = without_redirections(words(&cmd))
                .into_iter()
                .map(|w| expand(&w, &vars))
                .collect();
            let mut w = words.as_slice();
            // Keywords before a command, `configure)` of a case,
            // `NAME=value` prefixes, assignments.
            while let Some(first) = w.first() {
                let keyword = [
                    "if", "then", "else", "elif", "while", "until", "do", "!", "{", "(", "time",
                ]
                .contains(&first.as_str())
                    && w.len() > 1;
                let case_pattern = first.ends_with(')') && !first.contains('(');
                if keyword || case_pattern {
                    w = &w[1..];
                } else if let Some((name, value)) = assignment(first) {
                    if w.len() == 1 {
                        vars.insert(name, assigned_value(&value));
                    }
                    w = &w[1..];
                } else {
                    break;
                }
            }
            let Some(program) = w.first().map(String::as_str) else {
                continue;
            };
            let args = &w[1..];
            match program {
                "setcap" if args.iter().any(|a| a == "-r") => {}
                "setcap" => match setcap(args) {
                    Some(_) if on_answer => out.unreproduced.push(note(*no, line)),
                    Some((caps, path)) => {
                        chmod_ok.push(path.clone());
                        out.capabilities.push((path, caps));
                    }
                    None => out.unreproduced.push(note(*no, line)),
                },
                "chmod" if args.last().is_some_and(|p| chmod_ok.contains(p)) => {}
                "update-alternatives" => match alternatives(args) {
                    Some(alts) => out.alternatives.extend(alts),
                    None if args.iter().any(|a| a == "--remove" || a == "--remove-all") => {}
                    None => out.unreproduced.push(note(*no, line)),
                },
                "adduser" | "useradd" | "addgroup" | "groupadd" => {
                    let group = program.contains("group")
                        || (program == "adduser" && args.iter().any(|a| a == "--group"))
                            && args.iter().all(|a| a != "--system");
                    match account_name(args) {
                        Some(name) => out.accounts.push(Account {
                            kind: if group { "group" } else { "user" }.into(),
                            name,
                            at: note(*no, line),
                        }),
                        None => out.unreproduced.push(note(*no, line)),
                    }
                }
                p if p.starts_with("db_") || NOTHING_TO_DO.contains(&p) => {}
                p if functions.iter().any(|f| f == p) => {}
                _ => out.unreproduced.push(note(*no, line)),
            }
        }
    }
    out.unreproduced.dedup();
    out
}

/// Lines with `\` continuations joined, numbered from 1 by their first.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (no, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = raw.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            pending = Some((no, acc));
        } else {
            acc.push_str(raw);
            out.push((no, acc));
        }
    }
    out.extend(pending);
    out
}

/// `name() {` or `function name {`: the function's name.
fn function_name(line: &str) -> Option<String> {
    let t = line.trim();
    let t = t.strip_prefix("function ").unwrap_or(t);
    let (name, rest) = t.split_once("()")?;
    let name = name.trim();
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        && (rest.trim().is_empty() || rest.trim_start().starts_with('{')))
    .then(|| name.to_string())
}

/// A line split into simple commands at `;`, `&&`, `||`, `|` and `&`
/// outside quotes, with `$(...)` kept whole.
fn split_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double, mut depth) = (false, false, 0u32);
    let mut chars = line.chars().peekable();
    let mut backtick = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '`' if !single => backtick = !backtick,
            '#' if !single && !double && (cur.is_empty() || cur.ends_with(char::is_whitespace)) => {
                break; // a comment
            }
            '(' if !single && cur.ends_with('$') => depth += 1,
            ')' if !single && depth > 0 => depth -= 1,
            _ if backtick => {}
            // `>&2`, `2>&1`, `&>file` are redirections.
            '&' if cur.ends_with(['>', '<']) || chars.peek() == Some(&'>') => {}
            ';' | '|' | '&' if !single && !double && depth == 0 => {
                if matches!(chars.peek(), Some(&n) if n == c) {
                    chars.next();
                }
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Words of a simple command, quotes removed (`$(...)` kept whole).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double, mut depth, mut any) = (false, false, 0u32, false);
    let mut backtick = false;
    for c in cmd.chars() {
        match c {
            '`' if !single => backtick = !backtick,
            _ if backtick => {}
            '\'' if !double && depth == 0 => {
                single = !single;
                any = true;
                continue;
            }
            '"' if !single && depth == 0 => {
                double = !double;
                any = true;
                continue;
            }
            '(' if !single && cur.ends_with('$') => depth += 1,
            ')' if !single && depth > 0 => depth -= 1,
            c if c.is_whitespace() && !single && !double && depth == 0 => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A line without the pattern of a `case` branch it starts with
/// (`configure)`, `(abort-upgrade|abort-remove)`, `N*|n*)`).
fn without_case_pattern(line: &str) -> &str {
    let Some(end) = line.find(')') else {
        return line;
    };
    let pattern = line[..end].trim_start_matches('(');
    let plain = |p: &str| {
        let p = p.trim();
        !p.is_empty() && !p.contains([' ', '\t', '$', '(', '=', '`', '"', '\'']) || p == "\"\""
    };
    if pattern
        .split('|')
        .all(|p| plain(p) || p.trim().starts_with('"'))
        && !line[..end].contains("$(")
    {
        line[end + 1..].trim_start()
    } else {
        line
    }
}

/// Words without redirections (`>/dev/null`, `2>&1`, `> file`).
fn without_redirections(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut skip_next = false;
    for w in words {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let op = w.trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
        if op.starts_with(['>', '<']) {
            // `>` alone takes the next word as its target.
            skip_next =
                op.trim_start_matches(['>', '<', '&', '|']).is_empty() && !op.ends_with('&');
            continue;
        }
        out.push(w);
    }
    out
}

/// `NAME=value` (a shell assignment word).
fn assignment(word: &str) -> Option<(String, String)> {
    let (name, value) = word.split_once('=')?;
    (!name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then(|| (name.to_string(), value.to_string()))
}

/// An assigned value as a path: `$(dpkg-divert --truename P)` is P on an
/// image without diversions.
fn assigned_value(value: &str) -> String {
    if let Some(inner) = value.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
        let w = words(inner);
        if w.first().is_some_and(|p| p == "dpkg-divert")
            && w.iter().any(|a| a == "--truename")
            && let Some(path) = w.last()
        {
            return path.clone();
        }
    }
    value.to_string()
}

/// `$NAME` and `${NAME}` replaced where NAME is known.
fn expand(word: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = word.to_string();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// `setcap [-q] [-n ROOTID] CAPS PATH`: (caps, path) when both are known.
fn setcap(args: &[String]) -> Option<(String, String)> {
    let mut rest: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-q" | "-v" => {}
            "-n" => {
                it.next();
            }
            _ => rest.push(a),
        }
    }
    match rest.as_slice() {
        [caps, path] if !caps.contains('$') && path.starts_with('/') && !path.contains('$') => {
            Some(((*caps).clone(), (*path).clone()))
        }
        _ => None,
    }
}

/// `--install LINK NAME PATH PRIO [--slave LINK NAME PATH]...`.
fn alternatives(args: &[String]) -> Option<Vec<Alternative>> {
    let at = args.iter().position(|a| a == "--install")?;
    let a = &args[at + 1..];
    let known = |s: &String| !s.contains('$');
    if a.len() < 4 || !a[..4].iter().all(known) {
        return None;
    }
    let priority: i64 = a[3].parse().ok()?;
    let mut out = vec![Alternative {
        link: a[0].clone(),
        name: a[1].clone(),
        path: a[2].clone(),
        priority,
    }];
    let mut rest = &a[4..];
    while let [flag, link, name, path, tail @ ..] = rest {
        if flag != "--slave" || ![link, name, path].into_iter().all(known) {
            return None;
        }
        out.push(Alternative {
            link: link.clone(),
            name: name.clone(),
            path: path.clone(),
            priority,
        });
        rest = tail;
    }
    rest.is_empty().then_some(out)
}

/// The account name of an `adduser`/`useradd`/`addgroup`/`groupadd`: the
/// last word that is no option or option value.
fn account_name(args: &[String]) -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "--home",
        "--shell",
        "--gecos",
        "--ingroup",
        "--gid",
        "--uid",
        "--firstuid",
        "--lastuid",
        "--comment",
        "-d",
        "-s",
        "-c",
        "-g",
        "-G",
        "-u",
        "-k",
        "-K",
        "-e",
        "-f",
        "-p",
        "--groups",
        "--password",
        "--key",
        "--skel",
        "--add-extra-groups",
    ];
    let mut name = None;
    let mut it = args.iter();
    let mut positional = Vec::new();
    while let Some(a) = it.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') && !a.starts_with('>') && !a.contains('$') {
            positional.push(a.clone());
        } else if a.contains('$') && !a.starts_with('-') {
            return None;
        }
    }
    // `adduser USER GROUP` adds a user to a group: the user is first.
    if let Some(first) = positional.first() {
        name = Some(first.clone());
    }
    name.filter(|n| n != "/dev/null")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: &str = r#"#!/bin/sh
set -e
PROGRAM=$(dpkg-divert --truename /bin/ping)
if [ "$1" = configure ]; then
    if command -v setcap > /dev/null; then
        if setcap cap_net_raw+ep $PROGRAM; then
            chmod u-s $PROGRAM
        else
            echo "Setcap failed on $PROGRAM, falling back to setuid" >&2
            chmod u+s $PROGRAM
        fi
    fi
fi
exit 0
"#;

    #[test]
    fn setcap_through_a_diverted_name_is_reproduced() {
        let a = analyse("iputils-ping", "postinst", PING);
        assert_eq!(
            a.capabilities,
            vec![("/bin/ping".to_string(), "cap_net_raw+ep".to_string())]
        );
        assert!(a.unreproduced.is_empty(), "{:?}", a.unreproduced);
    }

    #[test]
    fn alternatives_accounts_and_the_rest() {
        let text = "#!/bin/sh\nset -e\n\
            setup() {\n\
              mkdir -p /var/lib/thing\n\
            }\n\
            case \"$1\" in\n\
              configure)\n\
                update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n\
                  --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz\n\
                if ! getent passwd sshd >/dev/null; then\n\
                  adduser --quiet --system --no-create-home --home /run/sshd --shell /usr/sbin/nologin sshd\n\
                fi\n\
                addgroup --system netdev\n\
                setup\n\
                deb-systemd-helper enable thing.service || true\n\
                sed -i 's/a;b/c/' /etc/thing.conf\n\
              ;;\n\
            esac\n";
        let a = analyse("x", "postinst", text);
        assert_eq!(a.alternatives.len(), 2);
        assert_eq!(a.alternatives[0].link, "/usr/bin/awk");
        assert_eq!(a.alternatives[0].path, "/usr/bin/mawk");
        assert_eq!(a.alternatives[1].name, "awk.1.gz");
        assert_eq!(a.alternatives[1].priority, 5);
        let accounts: Vec<_> = a
            .accounts
            .iter()
            .map(|a| format!("{} {} {}", a.kind, a.name, a.at.line))
            .collect();
        assert_eq!(accounts, ["user sshd 11", "group netdev 13"]);
        let lines: Vec<_> = a
            .unreproduced
            .iter()
            .map(|n| format!("{}: {}", n.line, n.text))
            .collect();
        assert_eq!(
            lines,
            [
                "4: mkdir -p /var/lib/thing",
                "16: sed -i 's/a;b/c/' /etc/thing.conf"
            ]
        );
    }

    #[test]
    fn unknown_variables_are_listed_not_guessed() {
        let a = analyse("y", "postinst", "setcap cap_net_raw+ep \"$DIR/tool\"\n");
        assert!(a.capabilities.is_empty());
        assert_eq!(a.unreproduced.len(), 1);
        assert_eq!(a.unreproduced[0].line, 1);
    }
}
