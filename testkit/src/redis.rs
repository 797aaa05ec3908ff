//! Debian's `redis-server`, started by a test on a unix socket or a loopback port,
//! with nothing saved to disk. It can be stopped and started again on the same
//! address, to test how daemons live through a Redis restart.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where a test Redis listens.
#[derive(Debug, Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

pub struct RedisServer {
    child: Option<Child>,
    addr: Addr,
    dir: PathBuf,
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
        };
        server.start();
        server
    }

    /// The URL the daemon is configured with.
    pub fn url(&self) -> String {
        match &self.addr {
            Addr::Unix(path) => format!("redis+unix://{}", path.display()),
            Addr::Tcp(port) => format!("redis://127.0.0.1:{port}/0"),
        }
    }

    /// Starts the server (again) and returns once it accepts connections: its log
    /// says "Ready to accept connections".
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
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
        let mut cmd = Command::new("redis-cli");
        match &self.addr {
            Addr::Unix(path) => cmd.arg("-s").arg(path),
            Addr::Tcp(port) => cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
        };
        let out = cmd.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
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
