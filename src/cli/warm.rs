//! `mta-stsd warm`: discovers a list of domains through the running daemon's admin
//! API, so that the first mail after installing is already protected. Without it,
//! MTA-STS is trust-on-first-use per domain (RFC 8461 §10): the first message to a
//! domain whose policy is not cached yet goes out before the policy is known.
//!
//! Domains come from a file (one per line), standard input, or Postfix's mail log
//! (recipient domains of delivered mail, most frequent first).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use crate::admin::api::EntryView;
use crate::mtasts::domain::normalize_key;

/// Domains from a list: one per line; blank lines and `#` comments skipped; each
/// normalised like a socketmap key; duplicates and invalid names dropped (the
/// invalid ones are returned apart, to be reported).
pub fn domains_from_list(text: &str) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let (mut domains, mut invalid) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        match normalize_key(line) {
            Ok(d) => {
                if seen.insert(d.clone()) {
                    domains.push(d.into_string());
                }
            }
            Err(_) => invalid.push(line.to_owned()),
        }
    }
    (domains, invalid)
}

/// Recipient domains of mail Postfix delivered, from its log: lines of the `smtp`
/// delivery agent with `status=sent` and `to=<user@domain>`. Most frequent first
/// (ties by name); local deliveries and relays without a domain are left out.
pub fn domains_from_maillog(text: &str) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        if !line.contains("status=sent") || !line.contains("/smtp[") {
            continue;
        }
        let Some(rest) = line.split(" to=<").nth(1) else {
            continue;
        };
        let Some(addr) = rest.split('>').next() else {
            continue;
        };
        let Some((_, domain)) = addr.rsplit_once('@') else {
            continue;
        };
        if let Ok(d) = normalize_key(domain) {
            *counts.entry(d.into_string()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked
}

/// What one domain's discovery gave, for the summary.
#[derive(Debug, Default)]
pub struct Summary {
    /// By state: enforce, testing, none, no-policy.
    pub states: BTreeMap<String, usize>,
    /// Failed discoveries (no policy could be had) by failure class.
    pub failures: BTreeMap<String, usize>,
    /// The admin API call itself failed.
    pub unreachable: usize,
}

impl Summary {
    fn add(&mut self, result: &Result<EntryView, String>) {
        match result {
            Ok(v) if v.state == "no-policy" || v.state == "expired" => {
                match &v.last_error_class {
                    // A fetch that failed with nothing cached: counted as a failure.
                    Some(class) if v.id.is_none() => {
                        *self.failures.entry(class.clone()).or_default() += 1;
                    }
                    _ => *self.states.entry("no-policy".into()).or_default() += 1,
                }
            }
            Ok(v) => *self.states.entry(v.state.clone()).or_default() += 1,
            Err(_) => self.unreachable += 1,
        }
    }

    /// Whether every domain failed: the admin API, or discovery itself.
    pub fn none_succeeded(&self) -> bool {
        self.states.is_empty()
    }

    /// One line: `12 domains: 5 enforce, 1 testing, 4 no policy; 2 failed (tls 1, dns 1)`.
    pub fn line(&self, total: usize) -> String {
        let mut parts: Vec<String> = self
            .states
            .iter()
            .map(|(s, n)| format!("{n} {}", if s == "no-policy" { "no policy" } else { s }))
            .collect();
        if parts.is_empty() {
            parts.push("nothing discovered".into());
        }
        let mut out = format!("{total} domains: {}", parts.join(", "));
        let failed: usize = self.failures.values().sum();
        if failed > 0 {
            let classes: Vec<String> = self
                .failures
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            out.push_str(&format!("; {failed} failed ({})", classes.join(", ")));
        }
        if self.unreachable > 0 {
            out.push_str(&format!(
                "; {} not asked (admin API error)",
                self.unreachable
            ));
        }
        out
    }
}

/// `mta-stsd warm`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// File with one domain per line, or - for standard input.
    input: Option<PathBuf>,
    /// Take recipient domains of delivered mail from Postfix's log (most frequent
    /// first): a file such as /var/log/mail.log (rotated .gz ones too), or - for
    /// standard input (`journalctl -t postfix/smtp --since -30d | mta-stsd warm
    /// --from-maillog -`).
    #[arg(long, value_name = "PATH")]
    from_maillog: Option<PathBuf>,
    /// Only the first N domains (with --from-maillog: the N most frequent).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// Discoveries at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    admin: super::AdminArgs,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.admin.url()?;
    super::current_thread()?.block_on(command(&base, args))
}

/// The domains to warm, in order: the mail log's (most frequent first), then the
/// list's; at most `--top`.
fn wanted(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut domains = Vec::new();
    if let Some(path) = &args.from_maillog {
        let text = read_input(path)?;
        let found = domains_from_maillog(&text);
        if found.is_empty() {
            eprintln!(
                "mta-stsd: {}: no mail delivered by Postfix's smtp client in it (no \"postfix/smtp[...]: ... to=<...>, ... status=sent\" lines)",
                shown(path)
            );
        }
        domains.extend(found.into_iter().map(|(d, _)| d));
    }
    if let Some(path) = &args.input {
        let text = read_input(path)?;
        let (list, invalid) = domains_from_list(&text);
        for bad in &invalid {
            eprintln!("mta-stsd: skipping {bad:?}: not a domain");
        }
        for d in list {
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
    }
    if let Some(top) = args.top {
        domains.truncate(top);
    }
    if domains.is_empty() {
        if args.input.is_none() && args.from_maillog.is_none() {
            anyhow::bail!(
                "no domains to warm (give a FILE, - for standard input, or --from-maillog)"
            );
        }
        anyhow::bail!("no domains to warm");
    }
    Ok(domains)
}

async fn command(base: &str, args: Args) -> anyhow::Result<ExitCode> {
    let domains = wanted(&args)?;
    let client = super::admin_client(base)?;
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(domains.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let total = domains.len();
    let mut results = futures::stream::iter(domains)
        .map(|domain| {
            let client = client.clone();
            async move {
                let result = client.refresh(&domain).await.map_err(|e| e.to_string());
                (domain, result)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut summary = Summary::default();
    while let Some((domain, result)) = results.next().await {
        summary.add(&result);
        let line = match &result {
            Ok(v) => match &v.last_error {
                Some(e) if v.id.is_none() => format!("{domain}: {} ({e})", v.state),
                _ => format!("{domain}: {}", v.state),
            },
            Err(e) => format!("{domain}: {e}"),
        };
        match &bar {
            Some(bar) => {
                bar.set_message(domain);
                bar.inc(1);
            }
            None => outln!("{line}"),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outln!("{}", summary.line(total));
    Ok(if summary.unreachable > 0 || summary.none_succeeded() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// How a path given on the command line is named in messages.
fn shown(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    }
}

/// The text of a file, or of standard input for `-`; gzip-compressed input (a rotated
/// `mail.log.2.gz`, or one piped in) is recognised by its magic bytes and unpacked.
/// Invalid UTF-8 is replaced rather than refused: log lines carry arbitrary bytes.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    let raw = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: not a valid gzip file", shown(path)))?;
        out
    } else {
        raw
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maillog_gives_delivered_recipient_domains_most_frequent_first() {
        let log = "\
Nov 23 10:00:01 mx postfix/smtp[123]: 4F1: to=<a@Example.COM>, relay=mx.example.com[192.0.2.1]:25, delay=1, status=sent (250 ok)
Nov 23 10:00:02 mx postfix/smtp[124]: 4F2: to=<b@example.com>, relay=mx.example.com[192.0.2.1]:25, status=sent (250 ok)
Nov 23 10:00:03 mx postfix/smtp[125]: 4F3: to=<c@other.example>, orig_to=<x@y>, relay=mx.other.example[192.0.2.2]:25, status=sent (250 ok)
Nov 23 10:00:04 mx postfix/smtp[126]: 4F4: to=<d@deferred.example>, relay=none, status=deferred (connect timeout)
Nov 23 10:00:05 mx postfix/local[127]: 4F5: to=<root@mx.local>, relay=local, status=sent (delivered to mailbox)
Nov 23 10:00:06 mx postfix/smtp[128]: 4F6: to=<e@[192.0.2.9]>, relay=192.0.2.9[192.0.2.9]:25, status=sent (250 ok)
Nov 23 10:00:07 mx postfix/qmgr[9]: 4F7: from=<f@example.com>, size=1, nrcpt=1 (queue active)
";
        assert_eq!(
            domains_from_maillog(log),
            vec![
                ("example.com".to_owned(), 2),
                ("other.example".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn lists_skip_comments_duplicates_and_non_domains() {
        let (domains, invalid) = domains_from_list(
            "example.com\n# a comment\n\nEXAMPLE.com.\nb.example # inline\n[192.0.2.1]\n",
        );
        assert_eq!(domains, vec!["example.com", "b.example"]);
        assert_eq!(invalid, vec!["[192.0.2.1]"]);
    }

    #[test]
    fn summary_counts_states_and_failure_classes() {
        let view = |state: &str, id: Option<&str>, class: Option<&str>| EntryView {
            domain: "x".into(),
            state: state.into(),
            id: id.map(str::to_owned),
            mx: vec![],
            max_age: None,
            fetched: None,
            expires: None,
            last_check: None,
            no_policy_until: None,
            last_error: class.map(|c| format!("{c}: boom")),
            last_error_class: class.map(str::to_owned),
            last_error_at: None,
            policy_lines: vec![],
            dane: None,
        };
        let mut s = Summary::default();
        s.add(&Ok(view("enforce", Some("1"), None)));
        s.add(&Ok(view("enforce", Some("2"), Some("tls"))));
        s.add(&Ok(view("no-policy", None, None)));
        s.add(&Ok(view("no-policy", None, Some("tls"))));
        s.add(&Err("down".into()));
        assert_eq!(
            s.line(5),
            "5 domains: 2 enforce, 1 no policy; 1 failed (tls 1); 1 not asked (admin API error)"
        );
    }
}
