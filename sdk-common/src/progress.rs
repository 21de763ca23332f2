//! Progress for long work, the same in both binaries: on a terminal an
//! indicatif spinner or bar on stderr; otherwise (CI logs, pipes) plain
//! lines, each with a UTC timestamp, printed when a stage starts, when it
//! ends and, for long waits, as a heartbeat. Short work shows nothing.
//!
//! ```text
//! 2026-12-02T13:40:01Z build_image: install ...
//! 2026-12-02T13:40:01Z build_image: install done in 0.45s (6 packages, 1234 paths)
//! ```

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

/// One tool's progress reporter.
pub struct Progress {
    tool: &'static str,
    tty: bool,
    quiet: bool,
    spinner: Option<ProgressBar>,
    stage: Option<(String, Instant)>,
    last_beat: Instant,
}

/// `2026-12-02T13:40:01Z`.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Progress {
    /// Reports for `tool` (the prefix of every line); a terminal on stderr
    /// gets spinners, anything else plain lines.
    pub fn new(tool: &'static str) -> Progress {
        Progress::with_terminal(tool, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`], with the choice made by the caller (tests).
    pub fn with_terminal(tool: &'static str, tty: bool) -> Progress {
        Progress {
            tool,
            tty,
            quiet: false,
            spinner: None,
            stage: None,
            last_beat: Instant::now(),
        }
    }

    /// Show nothing (a second, comparing build).
    pub fn quiet(mut self) -> Progress {
        self.quiet = true;
        self
    }

    /// Whether the lines go to a terminal.
    pub fn is_terminal(&self) -> bool {
        self.tty
    }

    fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.spinner {
            Some(s) => s.println(format!("{}: {msg}", self.tool)),
            None if self.tty => eprintln!("{}: {msg}", self.tool),
            None => eprintln!("{} {}: {msg}", timestamp(), self.tool),
        }
    }

    /// A stage starts: a spinner on a terminal, a line otherwise.
    pub fn begin(&mut self, stage: &str) {
        self.finish_spinner();
        self.stage = Some((stage.to_string(), Instant::now()));
        self.last_beat = Instant::now();
        if self.quiet {
            return;
        }
        if self.tty {
            let s = ProgressBar::new_spinner();
            s.set_style(
                ProgressStyle::with_template("{spinner} {prefix}: {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            s.set_prefix(self.tool);
            s.set_message(stage.to_string());
            s.enable_steady_tick(Duration::from_millis(120));
            self.spinner = Some(s);
        } else {
            self.line(&format!("{stage} ..."));
        }
    }

    /// The current stage is done; `detail` says what it made.
    pub fn end(&mut self, stage: &str, took: Duration, detail: &str) {
        self.finish_spinner();
        self.stage = None;
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        if self.tty {
            self.line(&format!("{stage:<8} {:>6.2}s{detail}", took.as_secs_f64()));
        } else {
            self.line(&format!(
                "{stage} done in {:.2}s{detail}",
                took.as_secs_f64()
            ));
        }
    }

    /// During a long stage: on a terminal the spinner shows `msg` at once;
    /// otherwise a line at most every `every`.
    pub fn beat(&mut self, msg: &str, every: Duration) {
        let msg = &printable(msg);
        if let Some(s) = &self.spinner {
            let stage = self.stage.as_ref().map(|(n, _)| n.as_str()).unwrap_or("");
            s.set_message(format!("{stage}: {msg}"));
            return;
        }
        if self.last_beat.elapsed() >= every {
            self.last_beat = Instant::now();
            let since = self
                .stage
                .as_ref()
                .map(|(n, t)| format!("{n}, {}s: ", t.elapsed().as_secs()))
                .unwrap_or_default();
            self.line(&format!("{since}{msg}"));
        }
    }

    /// A line of its own (above the spinner on a terminal).
    pub fn say(&self, msg: &str) {
        self.line(msg);
    }

    fn finish_spinner(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish_spinner();
    }
}

/// `text` fit for one status line: escape sequences (a guest's colours,
/// cursor moves) and control characters (`\r`) out, at most 100 characters.
/// Raw, they move the cursor under the spinner and leave its lines behind.
pub fn printable(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    let out = out.trim();
    match out.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &out[..i]),
        None => out.to_string(),
    }
}

/// Byte counts below this pass without progress (a second's work or less).
pub const SHOWN_FROM: u64 = 64 << 20;

/// A byte count's progress: a bar on a terminal; otherwise a line each
/// time another tenth is done (and at most one per second).
pub fn bytes(tool: &'static str, what: &str, total: u64) -> Box<dyn Fn(u64) + Sync> {
    // Short work shows nothing.
    if total < SHOWN_FROM {
        return Box::new(|_| {});
    }
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("{tool}: {what}"));
        return Box::new(move |n| {
            bar.inc(n);
            if bar.position() >= total {
                bar.finish_and_clear();
            }
        });
    }
    let what = what.to_string();
    let state = std::sync::Mutex::new((0u64, 0u64, Instant::now()));
    Box::new(move |n| {
        let Ok(mut st) = state.lock() else {
            return;
        };
        st.0 += n;
        let tenth = (st.0.min(total) * 10 / total).min(10);
        let due = tenth > st.1 && (st.2.elapsed() >= Duration::from_secs(1) || tenth == 10);
        if due {
            st.1 = tenth;
            st.2 = Instant::now();
            eprintln!(
                "{} {tool}: {what}: {}% ({} of {} MiB)",
                timestamp(),
                tenth * 10,
                st.0 >> 20,
                total >> 20
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_is_made_printable() {
        assert_eq!(
            printable("\u{1b}[0;32m  OK  \u{1b}[0m] Started x\r"),
            "OK  ] Started x"
        );
        assert_eq!(printable(&"y".repeat(150)).chars().count(), 101);
    }

    #[test]
    fn timestamps_are_utc_seconds() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }

    #[test]
    fn plain_mode_beats_at_most_every_interval() {
        let mut p = Progress::with_terminal("t", false);
        p.begin("wait");
        // Right after the start: too early for a heartbeat.
        let before = p.last_beat;
        p.beat("x", Duration::from_secs(3600));
        assert_eq!(p.last_beat, before);
        p.beat("y", Duration::ZERO);
        assert!(p.last_beat > before);
    }
}
