//! Log set-up: `tracing` to stderr, filter from `ALLSPARK_LOG` (default `info`).

/// Install the subscriber once.
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALLSPARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
