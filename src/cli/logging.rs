//! Logging to stderr for every command.

use crate::config::LogFormat;

pub type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr: human format on a terminal, plain lines under systemd (or as
/// configured), JSON on request. RUST_LOG, when set, wins over the configured level.
pub fn init(level: &str, format: LogFormat) -> Option<FilterHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = match format {
        LogFormat::Auto if terminal => LogFormat::Human,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    let base = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => base.with(layer.json().flatten_event(true)).try_init(),
        // Under systemd the journal adds its own timestamps.
        LogFormat::Plain => base.with(layer.with_ansi(false).without_time()).try_init(),
        _ => base.with(layer.with_ansi(terminal)).try_init(),
    };
    result.ok()?;
    (!from_env).then_some(handle)
}
