//! Logging to stderr for both binaries: default level warn, `-v` raises it,
//! `RUST_LOG` (a full filter) wins over both.

/// Install the subscriber (idempotent). Without `RUST_LOG` a plain
/// max-level subscriber is used: it costs less to set up than an env
/// filter, which matters on sdk-run's millisecond enter path.
pub fn init(verbose: u8) {
    use tracing_subscriber::fmt;
    if let Ok(spec) = std::env::var("RUST_LOG") {
        let _ = fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
            .with_writer(std::io::stderr)
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
        .without_time()
        .try_init();
}
