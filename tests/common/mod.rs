//! Shared helpers for the end-to-end tests: library options pointed at a testkit world.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mta_stsd::protocol::codec::NetstringCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use mta_stsd::cache::policy_cache::PolicyService;
use mta_stsd::clock::Clock;
use mta_stsd::config::{Config, FetchConfig, ResolverConfig};
use mta_stsd::mtasts::discovery::{Discoverer, DiscoveryOptions};
use mta_stsd::server::daemon::{Daemon, Stopped};
use mta_stsd_testkit::World;

/// The listeners of a test daemon: the socketmap and the metrics/admin API on free
/// loopback ports. Prefix it to a test's own sections.
pub const LOOPBACK: &str =
    "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A test daemon's configuration: `toml` (which must parse), with the cache in `dir`.
pub fn config_in(dir: &std::path::Path, toml: &str) -> Config {
    let mut config = Config::from_toml(toml, "test").expect("test configuration");
    config.cache.path = Some(dir.join("cache"));
    config
}

/// Discovery options that use the world's DNS server, trust its CA (only), and fetch
/// from its HTTPS port on loopback.
pub fn options(world: &World) -> DiscoveryOptions {
    DiscoveryOptions {
        resolver: ResolverConfig {
            nameservers: vec![world.dns.addr()],
            timeout: Duration::from_millis(500),
            attempts: std::num::NonZeroUsize::MIN,
        },
        fetch: FetchConfig {
            timeout: Duration::from_secs(2),
            ca_file: None,
            allow_private_addresses: true,
        },
        system_roots: false,
        extra_roots: vec![world.ca.cert_der()],
        https_port: Some(world.https.addr().port()),
    }
}

pub fn discoverer(world: &World) -> Discoverer {
    Discoverer::new(options(world)).expect("discoverer")
}

pub const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";

/// A daemon running in this process against a testkit world.
pub struct InProcess {
    pub tcp: SocketAddr,
    /// `http://IP:PORT` of the metrics/admin listener, if configured.
    pub http: Option<String>,
    pub service: Arc<PolicyService>,
    pub dane: Arc<mta_stsd::dane::verdict_cache::DaneService>,
    pub state: Arc<mta_stsd::server::state::State>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Stopped>,
}

/// The one way tests build a daemon: a testkit world, a directory for its cache (and
/// unix socket), the listeners of [`LOOPBACK`] unless `toml` names its own, a clock.
pub struct Builder<'w> {
    world: &'w World,
    dir: std::path::PathBuf,
    toml: String,
    clock: Arc<dyn Clock>,
    options: DiscoveryOptions,
}

impl<'w> Builder<'w> {
    /// How long a policy fetch may take (2 s unless set).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.options.fetch.timeout = timeout;
        self
    }

    /// Configuration sections (a whole file's worth, or what follows [`LOOPBACK`]).
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    /// Answers over a unix socket too, at `DIR/mta-stsd.sock`. `[server]` comes
    /// last, so that the keys of a `toml` that follows without a header are its.
    pub fn unix(self) -> Self {
        let sock = self.dir.join("mta-stsd.sock");
        self.toml(&format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = [\"127.0.0.1:0\", \"unix:{}\"]",
            sock.display()
        ))
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration the daemon will run on: [`LOOPBACK`]'s listeners unless
    /// the sections given name a `[server]`, the cache in the directory.
    pub fn config(&self) -> Config {
        let text = if self.toml.contains("[server]") {
            self.toml.clone()
        } else {
            format!("{LOOPBACK}{}", self.toml)
        };
        config_in(&self.dir, &text)
    }

    pub async fn start(self) -> InProcess {
        InProcess::start_with(self.config(), self.options, self.clock).await
    }
}

impl InProcess {
    /// A daemon for `world` with its cache in `dir` (see [`Builder`]).
    pub fn builder<'w>(world: &'w World, dir: &std::path::Path) -> Builder<'w> {
        Builder {
            world,
            dir: dir.to_owned(),
            toml: String::new(),
            clock: Arc::new(mta_stsd::clock::SystemClock),
            options: options(world),
        }
    }

    /// Builds and starts a daemon with discovery pointed at `world`.
    pub async fn start(world: &World, config: Config, clock: Arc<dyn Clock>) -> InProcess {
        Self::start_with(config, options(world), clock).await
    }

    /// Builds and starts a daemon with these discovery options.
    pub async fn start_with(
        config: Config,
        options: DiscoveryOptions,
        clock: Arc<dyn Clock>,
    ) -> InProcess {
        let daemon = Daemon::build(config, options, clock).await.expect("daemon");
        let tcp = daemon.tcp_addrs()[0];
        let http = daemon.metrics_addr().map(|a| format!("http://{a}"));
        let service = daemon.state.service.clone();
        let dane = daemon.state.dane.clone();
        let state = daemon.state.clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(async {
            let _ = rx.await;
        }));
        InProcess {
            tcp,
            http,
            service,
            dane,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the daemon to finish.
    pub async fn shutdown(mut self) -> Stopped {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("daemon task")
    }
}

/// A socketmap client connection over TCP.
pub async fn connect_tcp(addr: SocketAddr) -> Framed<TcpStream, NetstringCodec> {
    Framed::new(
        TcpStream::connect(addr).await.expect("connect"),
        NetstringCodec::new(200_000),
    )
}

/// One request on an open connection; `None` if the daemon closed it.
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S, NetstringCodec>,
    map: &str,
    key: &str,
) -> Option<String> {
    conn.send(format!("{map} {key}").as_bytes()).await.ok()?;
    let reply = conn.next().await?.ok()?;
    Some(String::from_utf8(reply.to_vec()).expect("UTF-8 reply"))
}

/// One request on a fresh TCP connection, with a reply required within 20 s.
pub async fn ask_once(addr: SocketAddr, map: &str, key: &str) -> String {
    let exchange = async { ask(&mut connect_tcp(addr).await, map, key).await };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("a reply within 20s")
        .expect("a reply")
}

/// Receives sd_notify messages sent by the daemon.
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    pub path: std::path::PathBuf,
}

impl Notify {
    pub fn new(dir: &std::path::Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Notify { sock, path }
    }

    /// Blocks until a message containing `want` arrives.
    pub fn expect(&self, want: &str) {
        self.wait_for(want)
            .unwrap_or_else(|e| panic!("waiting for {want}: {e}"));
    }

    /// Like `expect`, but returns the receive error (a timeout) to the caller.
    pub fn wait_for(&self, want: &str) -> std::io::Result<()> {
        let mut buf = [0u8; 512];
        loop {
            let n = self.sock.recv(&mut buf)?;
            if String::from_utf8_lossy(&buf[..n]).contains(want) {
                return Ok(());
            }
        }
    }
}

/// The mta-stsd binary, as a command to add arguments to.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_mta-stsd"))
}

/// Runs the mta-stsd binary with `args`: exit status, standard output, standard error.
pub fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One datagram as Postfix 3.10.13 (libtlsrpt 0.5) sends it: no `dpv`.
pub fn datagram(domain: &str, record: &str, failed: bool) -> String {
    let details = if failed {
        format!(
            r#","failure-details":[{{"c":202,"s":"127.0.0.1","n":"mx.{domain}","h":"250-mx\r\n250 HELP","r":"127.0.0.3"}}],"t":1"#
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"d":"{domain}","pr":"{record}","policies":[{{"policy-type":2,"policy-domain":"{domain}","policy-string":["version: STSv1","mode: enforce","mx: mx.{domain}","max_age: 86400"],"mx-host":["mx.{domain}"]{details},"f":{}}}]}}"#,
        u8::from(failed)
    )
}

pub fn send(socket: &std::path::Path, datagrams: &[String]) {
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for d in datagrams {
        client.send_to(d.as_bytes(), socket).unwrap();
    }
}

/// The sessions a daemon's admin API shows for `domain` on `day` (fleet-wide in a
/// fleet), once they reach `want`.
pub async fn wait_sessions(
    client: &mta_stsd::admin::client::AdminClient,
    day: mta_stsd::tlsrpt::day::Day,
    domain: &str,
    want: u64,
) {
    let mut seen = 0;
    // Up to 30 s: Redis coming back is noticed after the shared cache's back-off.
    for _ in 0..1200 {
        if let Ok(view) = client
            .tlsrpt(mta_stsd::admin::api::TlsrptAction::Show, day, true)
            .await
        {
            seen = view
                .reports
                .iter()
                .filter(|r| r.domain == domain)
                .map(|r| r.sessions)
                .sum();
            if seen == want {
                return;
            }
            assert!(seen < want, "{domain}: {seen} sessions, more than {want}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{domain}: {seen} sessions, not {want}");
}

/// `mta-stsd doctor --config CONFIG --json`, with no Postfix or Sendmail
/// configuration and Exim's binary at `exim` (none: no Exim): each finding as
/// (check, level, message).
pub fn doctor_findings(
    config: &std::path::Path,
    exim: Option<&std::path::Path>,
) -> Vec<(String, String, String)> {
    let none = std::path::Path::new("/nonexistent");
    let out = bin()
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .args(
            ["--postfix-config", "--sendmail-cf"]
                .iter()
                .flat_map(|o| [o.as_ref(), none.as_os_str()]),
        )
        .arg("--exim")
        .arg(exim.unwrap_or(none))
        .arg("--json")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let text = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap().to_owned();
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| (text(c, "check"), text(c, "level"), text(c, "message")))
        .collect()
}
