//! The TOML configuration. Every setting has a default, so no file is needed;
//! unknown keys are errors so that a typo never silently changes behaviour. Values are
//! parsed into types when the file is read (`values.rs`); the checks that relate
//! settings to each other are [`Config::validate`], which reports every problem at once
//! (`error.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod error;
mod sections;
mod values;

use error::invalid;
pub use error::{ConfigError, Problem};
pub use sections::*;
use values::overlaps;
pub use values::{
    ListenAddr, MetricsListen, SocketMode, check_address, is_host_name, parse_host_port,
};

/// Where the packaged configuration lives; every command reads it when it exists and
/// no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/mta-stsd/mta-stsd.toml";

/// The names `log.level` takes on its own.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether `filter` is a log level or a list of tracing directives whose every part
/// names a level: a bare word that is not a level (`warning`, `inof`) would be read
/// by tracing as a module name and silence the daemon, so it is refused.
pub fn log_filter_problem(filter: &str) -> Option<String> {
    let allowed = || {
        format!(
            "{filter:?} is not a log level: use one of {} or directives like \"mta_stsd=debug,warn\"",
            LOG_LEVELS.join(", ")
        )
    };
    if filter.trim().is_empty() {
        return Some(allowed());
    }
    for directive in filter.split(',') {
        let directive = directive.trim();
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Some(allowed()),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Some(allowed());
        }
    }
    if tracing_subscriber::EnvFilter::try_new(filter).is_err() {
        return Some(allowed());
    }
    None
}

impl Config {
    /// Parses TOML text and validates it; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Self::parse_toml(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without the semantic checks, for callers that run them with
    /// the file checks in [`crate::setup::prepare`] to report every problem at once.
    pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: toml_message(text, &e),
        })?;
        config.origin = origin.to_owned();
        Ok(config)
    }

    /// Reads and parses a file without the semantic checks (see [`Self::parse_toml`]).
    /// (A TOML error reads as [`toml_message`] makes it.)
    pub fn read_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: crate::io_error_text(&e),
        })?;
        Config::parse_toml(&text, &path.display().to_string())
    }

    /// Reads a file, or returns the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(path) => {
                let config = Config::read_unchecked(path)?;
                config.validate()?;
                Ok(config)
            }
        }
    }

    /// The file every command reads: `given`, else [`DEFAULT_PATH`] when it exists,
    /// else none (built-in defaults).
    pub fn path_or_default(given: Option<&Path>) -> Option<PathBuf> {
        given.map(Path::to_owned).or_else(|| {
            let default = Path::new(DEFAULT_PATH);
            default.exists().then(|| default.to_owned())
        })
    }

    /// Every setting that cannot be used, as one error naming the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: self.origin.clone(),
                problems,
            })
        }
    }

    /// Checks that need nothing beyond the values themselves (no files, no network).
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        self.listener_problems(&mut out);
        if !self.metrics.path.starts_with('/') {
            out.push(invalid("metrics.path", "must start with '/'"));
        }
        if let Some(message) = log_filter_problem(&self.log.level) {
            out.push(invalid("log.level", message));
        }
        if self.cache.resolved_path().is_none() {
            out.push(invalid(
                "cache.path",
                "not set, and none of STATE_DIRECTORY, XDG_STATE_HOME or HOME gives a default: set it (the package uses /var/lib/mta-stsd/cache)",
            ));
        }
        self.value_problems(&mut out);
        self.tlsrpt_problems(&mut out);
        out
    }

    /// With `[tlsrpt] enable`, reports must be able to say who sent them (RFC 8460
    /// §4.3: `organization-name`, `contact-info`) and mail must have a sender.
    fn tlsrpt_problems(&self, out: &mut Vec<Problem>) {
        let t = &self.tlsrpt;
        if !t.enable {
            return;
        }
        let printable =
            |v: &str| !v.trim().is_empty() && v.chars().all(|c| c == ' ' || c.is_ascii_graphic());
        if !printable(&t.organization_name) {
            out.push(invalid(
                "tlsrpt.organization_name",
                "must be set (printable ASCII): reports name who sent them",
            ));
        }
        if !printable(&t.contact_info) {
            out.push(invalid(
                "tlsrpt.contact_info",
                "must be set (printable ASCII): an address or URL receivers can write to",
            ));
        }
        if let Err(e) = check_address(&t.report_from) {
            out.push(invalid(
                "tlsrpt.report_from",
                format!("must be the From: address of mailed reports: {e}"),
            ));
        }
        if let Some(s) = &t.submitter
            && !is_host_name(s)
        {
            out.push(invalid(
                "tlsrpt.submitter",
                format!("{s:?} is not a domain name"),
            ));
        }
        // RFC 8460 §5.3: `TLS-Report-Submitter` and the file name's sender are the
        // domain of the reporting entity, the one `contact-info` names; receivers
        // check that they agree.
        if printable(&t.contact_info) {
            let submitter = t.submitter_domain();
            match t.contact_domain() {
                Some(d) if is_host_name(&d) => {
                    if d != submitter && !d.ends_with(&format!(".{submitter}")) {
                        out.push(invalid(
                            "tlsrpt.contact_info",
                            format!(
                                "is in {d}, not in the submitter's domain {submitter}: receivers \
                                 match TLS-Report-Submitter against contact-info (set \
                                 tlsrpt.submitter = \"{d}\", or a contact in {submitter})"
                            ),
                        ));
                    }
                }
                _ => out.push(invalid(
                    "tlsrpt.contact_info",
                    "must be an address (local@domain, or mailto:) or an https: URL",
                )),
            }
        }
        if !t.socket.is_absolute() {
            out.push(invalid("tlsrpt.socket", "must be an absolute path"));
        }
        if t.spread > Duration::from_secs(20 * 3600) {
            out.push(invalid(
                "tlsrpt.spread",
                "must be at most 20h (a day's reports go out on the next day)",
            ));
        }
        if t.retry_for < Duration::from_secs(3600) {
            out.push(invalid("tlsrpt.retry_for", "must be at least 1h"));
        }
        if self.cache.tlsrpt_path(t).is_none() {
            out.push(invalid(
                "tlsrpt.path",
                "not set, and the cache has no path to put it beside",
            ));
        }
    }

    /// Listen addresses that cannot all be bound: none at all, the same one twice, or
    /// the metrics listener on a socketmap address.
    fn listener_problems(&self, out: &mut Vec<Problem>) {
        if self.server.listen.is_empty() {
            out.push(invalid(
                "server.listen",
                "is empty: the daemon would answer nobody (the default is [\"127.0.0.1:8461\"])",
            ));
        }
        let addrs = &self.server.listen;
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].iter().any(|b| overlaps(a, b)) {
                out.push(invalid("server.listen", format!("{a} is listed twice")));
            }
        }
        if let Some(metrics) = self.metrics.addr() {
            let metrics = ListenAddr::Tcp(metrics);
            if let Some(clash) = addrs.iter().find(|a| overlaps(a, &metrics)) {
                out.push(invalid(
                    "metrics.listen",
                    format!(
                        "{metrics} is also a socketmap address ({clash}): give it a port of its own"
                    ),
                ));
            }
        }
    }

    /// `[cache.redis]`, when the cache is shared through Redis.
    fn redis_problems(&self, out: &mut Vec<Problem>) {
        // Checked here so that a typo stops the start (or the reload) with a clear
        // line, instead of surfacing as "Redis unreachable" forever.
        if let Err(e) = redis::Client::open(self.cache.redis.url.as_str()) {
            // Not the URL itself: it may hold a password.
            out.push(invalid("cache.redis.url", e.to_string()));
        }
        let r = &self.cache.redis;
        if r.sentinels.is_empty() != r.master_name.is_empty() {
            out.push(invalid(
                "cache.redis.master_name",
                "sentinels and master_name go together: the sentinels are asked for the master of that name",
            ));
        }
        if r.sentinels.is_empty()
            && !(r.sentinel_username.is_empty() && r.sentinel_password.is_empty())
        {
            out.push(invalid(
                "cache.redis.sentinel_password",
                "sentinel_username and sentinel_password are for sentinels, and none are configured",
            ));
        }
        for s in &r.sentinels {
            if let Err(e) = values::parse_host_port(s) {
                out.push(invalid("cache.redis.sentinels", format!("{s:?}: {e}")));
            }
        }
        let tls_files = [
            ("cache.redis.ca_file", r.ca_file.is_some()),
            ("cache.redis.client_cert", r.client_cert.is_some()),
            ("cache.redis.client_key", r.client_key.is_some()),
        ];
        for (setting, set) in tls_files {
            if set && !r.url.starts_with("rediss://") {
                out.push(invalid(
                    setting,
                    "is for TLS: the url must be rediss://... (a plain redis:// connection would ignore it)",
                ));
            }
        }
        if r.client_cert.is_some() != r.client_key.is_some() {
            out.push(invalid(
                "cache.redis.client_key",
                "client_cert and client_key go together: a client certificate is presented with its key",
            ));
        }
        let tcp_url = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !r.sentinels.is_empty() && !tcp_url {
            out.push(invalid(
                "cache.redis.url",
                "with sentinels, url must be redis://... or rediss://... (its scheme, and the data nodes' user, password and database, are used)",
            ));
        }
    }

    fn value_problems(&self, out: &mut Vec<Problem>) {
        if self.cache.backend == CacheBackend::Redis {
            self.redis_problems(out);
        }
        if self.server.max_request_size < 64 {
            out.push(invalid(
                "server.max_request_size",
                "must be at least 64 bytes",
            ));
        }
        for (setting, d) in [
            ("resolver.timeout", self.resolver.timeout),
            ("fetch.timeout", self.fetch.timeout),
            ("lookup.deadline", self.lookup.deadline),
            ("cache.negative_ttl", self.cache.negative_ttl),
            ("cache.refresh_after", self.cache.refresh_after),
            ("cache.refresh_interval", self.cache.refresh_interval),
            ("server.read_timeout", self.server.read_timeout),
            ("cache.redis.timeout", self.cache.redis.timeout),
            ("cache.redis.lock_ttl", self.cache.redis.lock_ttl),
        ] {
            if d.is_zero() {
                out.push(invalid(setting, "must be longer than 0s"));
            }
        }
        if self.server.idle_timeout <= Duration::from_secs(10) {
            out.push(invalid(
                "server.idle_timeout",
                "must be longer than 10s (Postfix keeps an idle socketmap connection for 10s)",
            ));
        }
        if self.lookup.deadline > Duration::from_secs(90) {
            out.push(invalid(
                "lookup.deadline",
                "must be at most 90s (Postfix gives up on a lookup after 100s)",
            ));
        }
        for (name, zone) in &self.zones {
            if let Some(d) = zone.deadline
                && (d.is_zero() || d > Duration::from_secs(90))
            {
                out.push(invalid(
                    "zones.NAME.deadline",
                    format!("[zones.{name}] deadline must be longer than 0s and at most 90s"),
                ));
            }
        }
        if self.cache.retry_after < Duration::from_secs(300) {
            out.push(invalid(
                "cache.retry_after",
                "must be at least 5m (RFC 8461 §3.3)",
            ));
        }
        if self.dane.validation == DaneValidation::Resolver {
            // An AD bit proves something only if nothing could alter it on the way.
            if self.resolver.nameservers.is_empty() {
                out.push(invalid(
                    "dane.validation",
                    "\"resolver\" needs resolver.nameservers to name the local validating resolver (e.g. [\"127.0.0.1:53\"])",
                ));
            }
            if let Some(far) = self
                .resolver
                .nameservers
                .iter()
                .find(|a| !a.ip().is_loopback())
            {
                out.push(invalid(
                    "dane.validation",
                    format!(
                        "\"resolver\" trusts the AD bit, which proves nothing from {far}: every resolver.nameservers entry must be on loopback"
                    ),
                ));
            }
        }
    }

    /// The section a socketmap name's options are read from (`zones.NAME`, or
    /// `zones.default` when there is no `[zones.NAME]` but a default), for messages
    /// that tell where to change a setting.
    pub fn zone_section(&self, name: &str) -> String {
        if !self.zones.contains_key(name) && self.zones.contains_key("default") {
            "zones.default".to_owned()
        } else {
            format!("zones.{name}")
        }
    }

    /// Options for a socketmap name: `[zones.NAME]`, else `[zones.default]`, else
    /// defaults; Sendmail's name (`sts`) with its own defaults where those leave a
    /// setting unset.
    pub fn zone(&self, name: &str) -> ZoneOptions {
        let zone = self
            .zones
            .get(name)
            .or_else(|| self.zones.get("default"))
            .cloned()
            .unwrap_or_default();
        match name {
            sections::SENDMAIL_ZONE => zone.with_sendmail_defaults(),
            sections::EXIM_ZONE => ZoneOptions {
                format: zone.format.or(Some(AnswerFormat::Exim)),
                ..zone
            },
            _ => zone,
        }
    }

    /// How long a request by a zone's name waits for a discovery: the zone's own
    /// deadline, else `lookup.deadline`.
    pub fn deadline(&self, zone: &ZoneOptions) -> std::time::Duration {
        zone.deadline.unwrap_or(self.lookup.deadline)
    }
}

/// A TOML error in one line, as people read it: `line L, column C: what is wrong`,
/// then the line itself (toml's own text spreads over lines with a caret that points
/// at nothing once folded), with serde's type names in plain words.
pub fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_owned();
    for (jargon, plain) in [
        ("a nonzero usize", "a whole number greater than 0"),
        ("nonzero usize", "whole number greater than 0"),
        ("usize", "whole number"),
        ("u64", "whole number"),
        ("u16", "whole number"),
        ("a sequence", "a list, like [\"a\", \"b\"]"),
        ("a boolean", "true or false"),
    ] {
        message = message.replace(jargon, plain);
    }
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let source = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line}, column {column}: {message} (in `{source}`)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn toml_errors_name_the_line_and_speak_plainly() {
        let e = Config::from_toml("[server]\nlisten = \"127.0.0.1:8461\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 10"), "{e}");
        assert!(e.contains("a list, like"), "{e}");
        assert!(e.contains("(in `listen = \"127.0.0.1:8461\"`)"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = Config::from_toml("[tlsrpt]\nkeep_days = 0\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater than 0") && !e.contains("usize"), "{e}");
    }

    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", "test").unwrap();
        assert_eq!(
            c.server.listen,
            vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
        );
        assert_eq!(c.server.socket_mode, SocketMode(0o666));
        assert_eq!(c.metrics.addr(), Some("127.0.0.1:9461".parse().unwrap()));
        assert_eq!(c.fetch.timeout, Duration::from_secs(15));
        assert!(!c.fetch.allow_private_addresses);
        assert_eq!(c.zone("postfix"), ZoneOptions::default());
    }

    #[test]
    fn sendmails_zone_answers_before_sendmail_gives_up_and_gets_no_dane() {
        let c = Config::from_toml("", "test").unwrap();
        assert_eq!(c.deadline(&c.zone("postfix")), Duration::from_secs(10));
        assert_eq!(c.deadline(&c.zone("sts")), SENDMAIL_DEADLINE);
        assert!(SENDMAIL_DEADLINE < Duration::from_secs(5));
        assert_eq!(c.zone("sts").dane, Some(DaneSwitch::Off));
        // Set explicitly, or through [zones.default], a setting is the administrator's.
        let own = Config::from_toml(
            "[zones.sts]\ndeadline = \"2s\"\ndane = \"on\"\n[zones.fast]\ndeadline = \"500ms\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(own.deadline(&own.zone("sts")), Duration::from_secs(2));
        assert_eq!(own.zone("sts").dane, Some(DaneSwitch::On));
        assert_eq!(own.deadline(&own.zone("fast")), Duration::from_millis(500));
        let bad = Config::from_toml("[zones.x]\ndeadline = \"0s\"\n", "test").unwrap_err();
        assert!(format!("{bad:?}").contains("[zones.x] deadline"), "{bad:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("[fetch]\ntimout = \"5s\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("timout"), "{e}");
        assert!(Config::from_toml("[zones.strict]\nstrict = true\n", "x").is_err());
        assert!(Config::from_toml("[nope]\n", "x").is_err());
    }

    #[test]
    fn durations_and_zones() {
        let c = Config::from_toml(
            "[resolver]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\ntimeout = \"500ms\"\n\
             [zones.default]\nrequire_sni = false\n[zones.strict]\nstrict_testing = true\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.resolver.timeout, Duration::from_millis(500));
        assert_eq!(c.resolver.nameservers.len(), 2);
        assert!(c.zone("strict").strict_testing);
        assert!(!c.zone("other").require_sni);
        assert!(c.zone("strict").require_sni);
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_name() {
        for (toml, setting) in [
            ("[server]\nlisten = [\"localhost\"]", "server.listen"),
            (
                "[server]\nlisten = [\"unix:relative.sock\"]",
                "server.listen",
            ),
            ("[server]\nsocket_mode = \"999\"", "socket_mode \"999\""),
            ("[tlsrpt]\nsocket_mode = \"rw\"", "socket_mode \"rw\""),
            ("[fetch]\ntimeout = \"0s\"", "fetch.timeout"),
            ("[lookup]\ndeadline = \"5m\"", "lookup.deadline"),
            ("[cache]\nretry_after = \"1m\"", "cache.retry_after"),
            ("[server]\nlisten = []", "server.listen"),
            (
                "[server]\nlisten = [\"127.0.0.1:8461\", \"127.0.0.1:8461\"]",
                "server.listen",
            ),
            (
                "[server]\nlisten = [\"0.0.0.0:8461\"]\n[metrics]\nlisten = \"127.0.0.1:8461\"",
                "metrics.listen",
            ),
            ("[log]\nlevel = \"warning\"", "log.level"),
            ("[log]\nlevel = \"inof\"", "log.level"),
            ("[log]\nlevel = \"mta_stsd=loud\"", "log.level"),
        ] {
            let e = Config::from_toml(toml, "x").unwrap_err().to_string();
            assert!(e.contains(setting), "{toml}: {e}");
        }
        assert!(Config::from_toml("[fetch]\ntimeout = \"soon\"", "x").is_err());
        // Counts are at least 1 by their type; a 0 is refused where it is read.
        for (toml, key) in [
            ("[cache]\nmemory_entries = 0", "memory_entries"),
            ("[resolver]\nattempts = 0", "attempts"),
            ("[server]\nmax_connections = 0", "max_connections"),
        ] {
            let e = Config::from_toml(toml, "x").unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("greater than 0"),
                "{toml}: {e}"
            );
        }
    }

    #[test]
    fn sentinels_come_with_a_master_name_and_a_tcp_url() {
        let redis = "[cache]\nbackend = \"redis\"\n[cache.redis]\n";
        let ok = format!(
            "{redis}sentinels = [\"10.0.0.1:26379\", \"sentinel.example:26379\", \"[::1]:26379\"]\nmaster_name = \"mta-stsd\"\nurl = \"rediss://fleet:secret@placeholder/1\"\n"
        );
        let c = Config::from_toml(&ok, "x").unwrap();
        assert_eq!(c.cache.redis.sentinels.len(), 3);
        for (toml, setting) in [
            (
                "sentinels = [\"10.0.0.1:26379\"]\n",
                "cache.redis.master_name",
            ),
            ("master_name = \"mta-stsd\"\n", "cache.redis.master_name"),
            (
                "sentinels = [\"10.0.0.1\"]\nmaster_name = \"m\"\n",
                "cache.redis.sentinels",
            ),
            (
                "sentinels = [\"a b:1\"]\nmaster_name = \"m\"\n",
                "cache.redis.sentinels",
            ),
            (
                "sentinels = [\"10.0.0.1:1\"]\nmaster_name = \"m\"\nurl = \"redis+unix:///run/redis.sock\"\n",
                "cache.redis.url",
            ),
            (
                "sentinel_password = \"pw\"\n",
                "cache.redis.sentinel_password",
            ),
        ] {
            let e = Config::from_toml(&format!("{redis}{toml}"), "x")
                .unwrap_err()
                .to_string();
            assert!(e.contains(setting), "{toml}: {e}");
        }
    }

    #[test]
    fn redis_certificates_are_for_rediss_and_come_as_a_pair() {
        let redis = "[cache]\nbackend = \"redis\"\n[cache.redis]\n";
        let ok = format!(
            "{redis}url = \"rediss://127.0.0.1:6380/0\"\nca_file = \"/etc/redis/ca.pem\"\nclient_cert = \"/etc/redis/c.pem\"\nclient_key = \"/etc/redis/c.key\"\n"
        );
        assert!(Config::from_toml(&ok, "x").is_ok());
        for (toml, setting) in [
            ("ca_file = \"/ca.pem\"\n", "cache.redis.ca_file"),
            (
                "url = \"rediss://h/0\"\nclient_cert = \"/c.pem\"\n",
                "cache.redis.client_key",
            ),
            (
                "url = \"rediss://h/0\"\nclient_key = \"/c.key\"\n",
                "cache.redis.client_key",
            ),
        ] {
            let e = Config::from_toml(&format!("{redis}{toml}"), "x")
                .unwrap_err()
                .to_string();
            assert!(e.contains(setting), "{toml}: {e}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_the_file_name() {
        let e = Config::from_toml(
            "[server]\nlisten = []\n[log]\nlevel = \"warning\"\n[cache]\nretry_after = \"1m\"\n",
            "/etc/mta-stsd/mta-stsd.toml",
        )
        .unwrap_err();
        assert_eq!(e.problems().len(), 3, "{e}");
        let text = e.to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
        for line in text.lines() {
            assert!(
                line.starts_with("/etc/mta-stsd/mta-stsd.toml: invalid setting "),
                "{line}"
            );
        }
        assert!(
            text.contains("use one of off, error, warn, info, debug, trace"),
            "{text}"
        );
    }

    #[test]
    fn real_levels_and_directives_are_accepted() {
        for level in [
            "info",
            "DEBUG",
            "warn,mta_stsd=debug",
            "mta_stsd::dane=trace",
            "off",
        ] {
            let toml = format!("[log]\nlevel = \"{level}\"");
            assert!(Config::from_toml(&toml, "x").is_ok(), "{level}");
        }
    }

    #[test]
    fn a_nameserver_without_a_port_means_port_53() {
        let c = Config::from_toml(
            "[resolver]\nnameservers = [\"8.8.8.8\", \"::1\", \"127.0.0.1:5353\"]",
            "x",
        )
        .unwrap();
        assert_eq!(
            c.resolver.nameservers,
            vec![
                "8.8.8.8:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        let e = Config::from_toml("[resolver]\nnameservers = [\"dns.google\"]", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an IP address or IP:PORT"), "{e}");
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/mta-stsd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = Config::from_toml(&text, path).unwrap();
        // The example documents the defaults: it must not change behaviour.
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.fetch.timeout, d.fetch.timeout);
        assert_eq!(c.lookup.deadline, d.lookup.deadline);
        assert_eq!(c.cache.negative_ttl, d.cache.negative_ttl);
        assert_eq!(c.zone("postfix"), d.zone("postfix"));
        assert_eq!(c.dane.mode, d.dane.mode);
        assert_eq!(c.dane.validation, d.dane.validation);
        assert_eq!(c.dane.cache_entries, d.dane.cache_entries);
        assert_eq!(c.tlsrpt, d.tlsrpt);
    }

    #[test]
    fn tlsrpt_needs_a_sender_when_enabled() {
        let e = Config::from_toml("[tlsrpt]\nenable = true\n", "t")
            .unwrap_err()
            .to_string();
        for setting in [
            "tlsrpt.organization_name",
            "tlsrpt.contact_info",
            "tlsrpt.report_from",
        ] {
            assert!(e.contains(setting), "{e}");
        }
        let e = Config::from_toml(
            "[tlsrpt]\nenable = true\norganization_name = \"X\"\ncontact_info = \"a@b.test\"\nreport_from = \"-oQ@b.test\"\nsubmitter = \"not a domain\"\nsocket = \"rel.sock\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for setting in ["tlsrpt.report_from", "tlsrpt.submitter", "tlsrpt.socket"] {
            assert!(e.contains(setting), "{e}");
        }
        let ok = Config::from_toml(
            "[tlsrpt]\nenable = true\norganization_name = \"Example\"\ncontact_info = \"postmaster@example.com\"\nreport_from = \"tlsrpt@Example.com\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.tlsrpt.submitter_domain(), "example.com");
    }

    #[test]
    fn a_zone_names_the_section_its_options_come_from() {
        let c = Config::from_toml("[zones.default]\ntlsrpt = true\n[zones.sts]\n", "t").unwrap();
        assert_eq!(c.zone_section("postfix"), "zones.default");
        assert_eq!(c.zone_section("sts"), "zones.sts");
        let bare = Config::from_toml("", "t").unwrap();
        assert_eq!(bare.zone_section("postfix"), "zones.postfix");
    }

    /// RFC 8460 §5.3: the submitter (`TLS-Report-Submitter`, the file name's sender)
    /// is the domain `contact-info` names; a configuration where they cannot agree is
    /// refused, and the submitter defaults to the contact's domain.
    #[test]
    fn tlsrpt_contact_info_and_submitter_agree() {
        let with = |contact: &str, submitter: Option<&str>| {
            let submitter = submitter.map_or(String::new(), |s| format!("submitter = \"{s}\"\n"));
            Config::from_toml(
                &format!(
                    "[tlsrpt]\nenable = true\norganization_name = \"X\"\ncontact_info = \"{contact}\"\nreport_from = \"tlsrpt@mail.example.com\"\n{submitter}"
                ),
                "t",
            )
        };
        for (contact, submitter, expect) in [
            ("tlsrpt@example.com", None, "example.com"),
            ("mailto:tlsrpt@Example.com", None, "example.com"),
            (
                "https://tlsrpt.example.com/contact",
                Some("example.com"),
                "example.com",
            ),
            ("https://example.com:8443/x", None, "example.com"),
            (
                "postmaster@mail.example.com",
                Some("example.com"),
                "example.com",
            ),
        ] {
            let c = with(contact, submitter).unwrap_or_else(|e| panic!("{contact}: {e}"));
            assert_eq!(c.tlsrpt.submitter_domain(), expect, "{contact}");
        }
        for (contact, submitter) in [
            ("postmaster@other.test", Some("example.com")),
            ("https://reports.other.test/", Some("example.com")),
            ("call us", None),
        ] {
            let e = with(contact, submitter).unwrap_err().to_string();
            assert!(e.contains("tlsrpt.contact_info"), "{contact}: {e}");
        }
    }
}
