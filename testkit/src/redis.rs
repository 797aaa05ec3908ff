//! Debian's `redis-server` (or `valkey-server`), started by a test on a unix socket or
//! a loopback port, with nothing saved to disk. It can be stopped and started again on
//! the same address, to test how daemons live through a Redis restart; it can be a
//! replica of another; [`Sentinels`] starts `redis-sentinel` (or `valkey-sentinel`)
//! processes watching a master.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::TestCa;

/// Where a test Redis listens.
#[derive(Debug, Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

/// Which server: Debian's Redis or Valkey (the same protocol, the same options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Redis,
    Valkey,
}

impl Flavour {
    fn server(self) -> &'static str {
        match self {
            Flavour::Redis => "redis-server",
            Flavour::Valkey => "valkey-server",
        }
    }
    fn sentinel(self) -> &'static str {
        match self {
            Flavour::Redis => "redis-sentinel",
            Flavour::Valkey => "valkey-sentinel",
        }
    }
    fn cli(self) -> &'static str {
        match self {
            Flavour::Redis => "redis-cli",
            Flavour::Valkey => "valkey-cli",
        }
    }

    /// Whether this flavour's server and sentinel are installed.
    pub fn installed(self) -> bool {
        [self.server(), self.sentinel()].iter().all(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
    }
}

/// TLS for test nodes and sentinels: a CA of their own, one certificate for every
/// node and sentinel (for 127.0.0.1, presented as server and, when replicating or
/// monitoring, as client), and a client certificate for the daemon; PEM files in a
/// directory of their own.
pub struct RedisTls {
    dir: PathBuf,
    /// Whether the servers demand a client certificate (`tls-auth-clients yes`).
    pub require_client_certs: bool,
}

impl RedisTls {
    pub fn new(require_client_certs: bool) -> RedisTls {
        let ca = TestCa::new();
        let dir = RedisServer::new_dir("tls");
        let node = ca.issue_peer(&["127.0.0.1", "localhost"]);
        let client = ca.issue_peer(&["mta-stsd.test"]);
        for (file, text) in [
            ("ca.pem", ca.cert_pem()),
            ("node.pem", node.cert_pem),
            ("node.key", node.key_pem),
            ("client.pem", client.cert_pem),
            ("client.key", client.key_pem),
        ] {
            std::fs::write(dir.join(file), text).expect("tls file");
        }
        RedisTls {
            dir,
            require_client_certs,
        }
    }

    /// The CA certificate the nodes' certificates are from (`ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The daemon's client certificate and key (`client_cert`, `client_key`).
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    /// Configuration lines of a server or sentinel listening with TLS only.
    fn server_lines(&self, port: u16) -> Vec<(String, String)> {
        let file = |f: &str| self.dir.join(f).display().to_string();
        vec![
            ("port".into(), "0".into()),
            ("tls-port".into(), port.to_string()),
            ("tls-cert-file".into(), file("node.pem")),
            ("tls-key-file".into(), file("node.key")),
            ("tls-ca-cert-file".into(), file("ca.pem")),
            (
                "tls-auth-clients".into(),
                if self.require_client_certs {
                    "yes"
                } else {
                    "no"
                }
                .into(),
            ),
            ("tls-replication".into(), "yes".into()),
        ]
    }

    /// `redis-cli`'s options to reach such a server.
    fn cli_args(&self) -> Vec<String> {
        let file = |f: &str| self.dir.join(f).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            file("ca.pem"),
            "--cert".into(),
            file("client.pem"),
            "--key".into(),
            file("client.key"),
        ]
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How clients get in: a password (`requirepass`, given to the master too when
/// replicating and to the sentinels), TLS, both or neither. With `acl_user`, the
/// password is that ACL user's instead, and the default user is off.
#[derive(Clone, Copy, Default)]
pub struct Access<'a> {
    pub password: Option<&'a str>,
    pub tls: Option<&'a RedisTls>,
    /// An ACL user's name and its rules (`~keys &channels +commands`).
    pub acl_user: Option<(&'a str, &'a str)>,
}

pub struct RedisServer {
    child: Option<Child>,
    addr: Addr,
    dir: PathBuf,
    flavour: Flavour,
    /// Options added to the command line (e.g. `--replicaof`).
    extra: Vec<String>,
    /// `requirepass` (and `masterauth`), also used by [`RedisServer::cli`].
    password: Option<String>,
    /// The ACL user [`RedisServer::cli`] logs in as.
    user: Option<String>,
    /// With TLS: the port's configuration lines and redis-cli's options (both empty
    /// without).
    tls_lines: Vec<(String, String)>,
    cli_tls: Vec<String>,
}

impl RedisServer {
    /// Whether `redis-server` is installed.
    pub fn installed() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts a Redis on a unix socket in a new directory.
    pub fn start_unix() -> RedisServer {
        let dir = Self::new_dir("unix");
        let addr = Addr::Unix(dir.join("redis.sock"));
        Self::start_at(addr, dir)
    }

    /// Starts a Redis on a free loopback TCP port.
    pub fn start_tcp() -> RedisServer {
        Self::start_on_port(free_port())
    }

    /// Starts a Redis on loopback `port`.
    pub fn start_on_port(port: u16) -> RedisServer {
        let dir = Self::new_dir(&port.to_string());
        Self::start_at(Addr::Tcp(port), dir)
    }

    /// Starts `flavour`'s server on a free loopback port; with `replica_of`, as a
    /// replica of the server on that port.
    pub fn start_node(flavour: Flavour, replica_of: Option<u16>) -> RedisServer {
        Self::start_node_with(flavour, replica_of, Access::default())
    }

    /// [`RedisServer::start_node`], behind `access`'s password and TLS.
    pub fn start_node_with(
        flavour: Flavour,
        replica_of: Option<u16>,
        access: Access,
    ) -> RedisServer {
        let password = access.password;
        let port = free_port();
        let mut extra = Vec::new();
        if let Some(p) = replica_of {
            extra.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        match (password, access.acl_user) {
            (Some(pw), Some((user, rules))) => {
                // One argument per word: redis-server quotes each as a whole.
                extra.extend(["--user", "default", "off", "--user", user, "on"].map(String::from));
                extra.push(format!(">{pw}"));
                extra.extend(rules.split_whitespace().map(String::from));
            }
            (Some(pw), None) => extra.extend([
                "--requirepass".into(),
                pw.to_owned(),
                "--masterauth".into(),
                pw.to_owned(),
            ]),
            (None, _) => {}
        }
        let mut server = RedisServer {
            child: None,
            addr: Addr::Tcp(port),
            dir: Self::new_dir(&port.to_string()),
            flavour,
            extra,
            password: password.map(str::to_owned),
            user: access.acl_user.map(|(user, _)| user.to_owned()),
            tls_lines: access.tls.map(|t| t.server_lines(port)).unwrap_or_default(),
            cli_tls: access.tls.map(RedisTls::cli_args).unwrap_or_default(),
        };
        server.start();
        server
    }

    /// The loopback port (0 for a unix socket).
    pub fn port(&self) -> u16 {
        match self.addr {
            Addr::Tcp(p) => p,
            Addr::Unix(_) => 0,
        }
    }

    fn new_dir(tag: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mta-stsd-redis-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        dir
    }

    fn start_at(addr: Addr, dir: PathBuf) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            addr,
            dir,
            flavour: Flavour::Redis,
            extra: Vec::new(),
            password: None,
            user: None,
            tls_lines: Vec::new(),
            cli_tls: Vec::new(),
        };
        server.start();
        server
    }

    /// The URL the daemon is configured with.
    pub fn url(&self) -> String {
        match &self.addr {
            Addr::Unix(path) => format!("redis+unix://{}", path.display()),
            Addr::Tcp(port) if !self.tls_lines.is_empty() => format!("rediss://127.0.0.1:{port}/0"),
            Addr::Tcp(port) => format!("redis://127.0.0.1:{port}/0"),
        }
    }

    /// Starts the server (again) and returns once it accepts connections: its log
    /// says "Ready to accept connections".
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(self.flavour.server());
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args([
                "--logfile",
                "",
                "--loglevel",
                "notice",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir);
        match &self.addr {
            Addr::Unix(path) => {
                cmd.args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                    .arg(path);
            }
            Addr::Tcp(port) => {
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
            }
        }
        // Later options win: with TLS, `port 0` and the TLS port replace the above.
        for (option, value) in &self.tls_lines {
            cmd.arg(format!("--{option}")).arg(value);
        }
        cmd.args(&self.extra);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let (ready, wait) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line
                    .to_ascii_lowercase()
                    .contains("ready to accept connections")
                {
                    let _ = ready.send(());
                }
            }
        });
        wait.recv_timeout(Duration::from_secs(20))
            .expect("redis-server ready within 20 s");
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL: no goodbye to clients, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Addr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(self.flavour.cli());
        match &self.addr {
            Addr::Unix(path) => cmd.arg("-s").arg(path),
            Addr::Tcp(port) => cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
        };
        if let Some(user) = &self.user {
            cmd.args(["--user", user]);
        }
        cli_output(cmd, self.password.as_deref(), &self.cli_tls, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three sentinels (quorum 2) watching the master on `master_port` by `name`, quick
/// to act: a master that does not answer for a second is down.
pub struct Sentinels {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
    flavour: Flavour,
    name: String,
    password: Option<String>,
    /// redis-cli's options for TLS.
    cli_tls: Vec<String>,
}

impl Sentinels {
    pub fn start(flavour: Flavour, name: &str, master_port: u16) -> Sentinels {
        Self::start_with(flavour, name, master_port, Access::default(), None)
    }

    /// [`Sentinels::start`], the nodes they watch behind `nodes`' password and TLS
    /// (the sentinels speak TLS alike), the sentinels behind `own_password`.
    pub fn start_with(
        flavour: Flavour,
        name: &str,
        master_port: u16,
        nodes: Access,
        own_password: Option<&str>,
    ) -> Sentinels {
        let dir = RedisServer::new_dir("sentinels");
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\nlogfile \"\"\n\
                 dir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 3000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display(),
            );
            if let Some(pw) = own_password {
                text += &format!("requirepass {pw}\n");
            }
            if let Some(pw) = nodes.password {
                text += &format!("sentinel auth-pass {name} {pw}\n");
            }
            for (option, value) in nodes.tls.map(|t| t.server_lines(port)).unwrap_or_default() {
                text += &format!("{option} {value}\n");
            }
            std::fs::write(&conf, text).expect("sentinel config");
            let child = Command::new(flavour.sentinel())
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the sentinel starts (is it installed?)");
            children.push(child);
            ports.push(port);
        }
        let sentinels = Sentinels {
            children,
            ports,
            dir,
            flavour,
            name: name.to_owned(),
            password: own_password.map(str::to_owned),
            cli_tls: nodes.tls.map(RedisTls::cli_args).unwrap_or_default(),
        };
        // Each sentinel knows the master, and the others (they find each other
        // through the master's hello channel).
        for port in &sentinels.ports {
            let mut ready = false;
            for _ in 0..200 {
                let known = sentinels.cli_at(*port, &["SENTINEL", "sentinels", name]);
                if known.lines().filter(|l| *l == "ip").count() >= 2 {
                    ready = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                ready,
                "sentinel on {port} did not meet the other two within 10 s"
            );
        }
        sentinels
    }

    /// `host:port` of each sentinel, as configured in the daemon.
    pub fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|p| {
            let out = self.cli_at(*p, &["SENTINEL", "get-master-addr-by-name", &self.name]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// `SENTINEL FAILOVER NAME` on the first sentinel.
    pub fn failover(&self) -> String {
        self.cli_at(self.ports[0], &["SENTINEL", "failover", &self.name])
    }

    fn cli_at(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new(self.flavour.cli());
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        cli_output(cmd, self.password.as_deref(), &self.cli_tls, args)
    }
}

/// Runs `cmd` (redis-cli with its address) with `password`, the TLS options `tls`
/// and `args`; what it printed, trimmed.
fn cli_output(mut cmd: Command, password: Option<&str>, tls: &[String], args: &[&str]) -> String {
    if let Some(pw) = password {
        cmd.args(["--no-auth-warning", "-a", pw]);
    }
    cmd.args(tls);
    let out = cmd.args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback TCP port nothing listens on (right now).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
