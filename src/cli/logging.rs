//! Logging to stderr for every command: one line per event, whatever the event holds.

use std::io::Write;

use crate::config::{LOG_LEVELS, LogFormat};

pub type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The filter for a configured level: a bare level applies to mta-stsd itself, while
/// the libraries it uses (hickory, sled, hyper, rustls, ...) stay at WARN, since their
/// debug output runs to dozens of lines per lookup. Directives (`hickory_proto=debug`)
/// are taken as written, so a library's detail is there when asked for by name.
pub fn filter_for(level: &str) -> String {
    let level = level.trim();
    match level.to_ascii_lowercase().as_str() {
        l @ ("off" | "error" | "warn") => l.to_owned(),
        l if LOG_LEVELS.contains(&l) => format!("warn,mta_stsd={l}"),
        _ => level.to_owned(),
    }
}

/// Whether stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and
/// inode), which stamps every line itself.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, a valid stat buffer; fd 2 may be closed (-1).
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev as u64) && ino.parse() == Ok(st.st_ino as u64)
}

/// The longest line written; longer events (a library error carrying a raw packet)
/// are cut with a note of how much was left out.
const MAX_LINE: usize = 2048;

/// Folds one formatted event into one line: inner line breaks become " | " (a
/// multi-line error from a library would otherwise look like several events to a
/// reader of the journal or mail.log), and over-long lines are cut.
pub fn fold(event: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let body = text.trim_end_matches(['\n', '\r']);
    let mut line = body
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = line.len() - cut;
        line.truncate(cut);
        line.push_str(&format!(" … ({more} bytes more)"));
    }
    line.push('\n');
    line.into_bytes()
}

/// Stderr, one folded line per write (the formatter writes each event at once).
struct OneLine;

impl Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(&fold(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs to stderr: human format on a terminal, plain lines elsewhere (with a
/// timestamp unless the journal adds its own), JSON on request. RUST_LOG, when set,
/// wins over the configured level and is read the same way.
/// Whether the environment asks for no colours (`NO_COLOR` set and not empty).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

pub fn init(level: &str, format: LogFormat) -> Option<FilterHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let wanted = from_env.as_deref().unwrap_or(level);
    let filter = tracing_subscriber::EnvFilter::try_new(filter_for(wanted))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_for("info")));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = match format {
        LogFormat::Auto if terminal => LogFormat::Human,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    let base = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(|| OneLine);
    let result = match format {
        LogFormat::Json => base.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Plain if stderr_is_journal() => {
            base.with(layer.with_ansi(false).without_time()).try_init()
        }
        LogFormat::Plain => base.with(layer.with_ansi(false)).try_init(),
        // NO_COLOR (no-color.org): set to anything but "", no colours.
        _ => base
            .with(layer.with_ansi(terminal && !no_color()))
            .try_init(),
    };
    result.ok()?;
    from_env.is_none().then_some(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_keep_libraries_at_warn() {
        assert_eq!(filter_for("debug"), "warn,mta_stsd=debug");
        assert_eq!(filter_for("INFO"), "warn,mta_stsd=info");
        assert_eq!(filter_for("warn"), "warn");
        assert_eq!(filter_for("error"), "error");
        assert_eq!(filter_for("hickory_proto=debug"), "hickory_proto=debug");
    }

    #[test]
    fn events_become_one_line() {
        assert_eq!(fold(b"a\nb\r\n\nc\n"), b"a | b | c\n");
        assert_eq!(fold(b"plain\n"), b"plain\n");
        let long = vec![b'x'; 5000];
        let folded = String::from_utf8(fold(&long)).unwrap();
        assert!(folded.len() < 2100, "{}", folded.len());
        assert!(folded.ends_with("(2952 bytes more)\n"), "{folded}");
    }
}
