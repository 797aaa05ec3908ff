//! Debian's `unbound`, started as a validating resolver in front of a test DNS server
//! (every query is forwarded to it; its root zone is signed at test time and its
//! key is unbound's trust anchor). For the DANE tests that trust a real resolver's AD bit.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Unbound {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Unbound {
    /// Whether the `unbound` binary is installed.
    pub fn installed() -> bool {
        Command::new("unbound")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts unbound on a free loopback port, validating with `trust_anchor`
    /// (DNSKEY lines) and forwarding every query to `upstream`; returns once it
    /// answers queries.
    pub fn start(upstream: SocketAddr, trust_anchor: &str) -> Unbound {
        // unbound binds the port for UDP and TCP; a port free for UDP a moment ago may
        // be taken for TCP by the time it starts (other tests run alongside): try
        // another port then.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(upstream, trust_anchor) {
                Ok(u) => return u,
                Err(log) if log.contains("Address already in use") && attempt < 5 => {}
                Err(log) => panic!("unbound did not start: {log}"),
            }
        }
    }

    fn try_start(upstream: SocketAddr, trust_anchor: &str) -> Result<Unbound, String> {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("mta-stsd-unbound-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("unbound dir");
        std::fs::write(dir.join("root.key"), trust_anchor).expect("anchor");
        let conf = format!(
            r#"server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    interface-automatic: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    module-config: "validator iterator"
    trust-anchor-file: "{dir}/root.key"
    qname-minimisation: no
    harden-dnssec-stripped: yes
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    # unbound answers the special-use names (RFC 6761) itself; the tests live in .test.
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {upstream_ip}@{upstream_port}
"#,
            dir = dir.display(),
            upstream_ip = upstream.ip(),
            upstream_port = upstream.port(),
        );
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, conf).expect("unbound.conf");
        let log = std::fs::File::create(dir.join("unbound.log")).expect("log");
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start unbound");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut u = Unbound { child, addr, dir };
        u.wait_ready()?;
        Ok(u)
    }

    /// Waits until unbound answers a query (its readiness signal), for up to 10 s;
    /// otherwise its log.
    fn wait_ready(&mut self) -> Result<(), String> {
        // A minimal query for ". NS" (id 1, RD).
        let query: [u8; 17] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("unbound exited ({status}): {}", self.log()));
            }
            let _ = socket.send_to(&query, self.addr);
            let mut buf = [0u8; 512];
            if socket.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        Err(format!(
            "unbound did not answer within 10 s: {}",
            self.log()
        ))
    }

    /// The address for `resolver.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// unbound's log (its validation failures are explained there).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
