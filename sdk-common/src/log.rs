//! Logging to stderr for both binaries: default level warn, `-v` raises it,
//! `RUST_LOG` (a full filter) wins over both. Colours only on a terminal
//! (never escape codes into a CI log or a pipe), and never with
//! `NO_COLOR` set.

/// Install the subscriber (idempotent). Without `RUST_LOG` a plain
/// max-level subscriber is used: it costs less to set up than an env
/// filter, which matters on sdk-run's millisecond enter path.
pub fn init(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if let Ok(spec) = std::env::var("RUST_LOG") {
        let _ = fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .without_time()
            .try_init();
        return;
    }
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .try_init();
}
