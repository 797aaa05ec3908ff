use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// A failure the server simulates for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFault {
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer (the client times out).
    Drop,
}

#[derive(Default)]
struct Zone {
    /// (lower-case name without trailing dot, type) -> records
    records: HashMap<(String, RecordType), Vec<RData>>,
}

struct State {
    zone: Mutex<Zone>,
    catalog: RwLock<Arc<Catalog>>,
    faults: Mutex<HashMap<String, DnsFault>>,
    queries: Mutex<HashMap<(String, RecordType), usize>>,
    serial: Mutex<u32>,
    batching: std::sync::atomic::AtomicBool,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_str(&format!("{}.", key(name))).expect("valid test name")
}

impl State {
    fn rebuild(&self) {
        let zone = self.zone.lock().expect("zone lock");
        let mut serial = self.serial.lock().expect("serial lock");
        *serial += 1;
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            Name::root(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_str("ns.test.").expect("name"),
            Name::from_str("hostmaster.test.").expect("name"),
            *serial,
            3600,
            600,
            86400,
            0,
        );
        handler.upsert_mut(
            Record::from_rdata(Name::root(), 0, RData::SOA(soa)),
            *serial,
        );
        for ((name, _), datas) in &zone.records {
            for data in datas {
                handler.upsert_mut(Record::from_rdata(fqdn(name), 0, data.clone()), *serial);
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(handler)]);
        *self.catalog.write().expect("catalog lock") = Arc::new(catalog);
    }
}

#[derive(Clone)]
struct Handler(Arc<State>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let query = request
            .queries
            .queries()
            .first()
            .map(|q| (key(&q.name().to_string()), q.query_type()));
        if let Some(q) = &query {
            *self
                .0
                .queries
                .lock()
                .expect("queries lock")
                .entry(q.clone())
                .or_default() += 1;
            let fault = self
                .0
                .faults
                .lock()
                .expect("faults lock")
                .get(&q.0)
                .copied();
            match fault {
                Some(DnsFault::Drop) => {
                    // Hold the request until the client gives up.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Some(DnsFault::ServFail) => {
                    let response = MessageResponseBuilder::new(&request.queries, None)
                        .error_msg(&request.metadata, ResponseCode::ServFail);
                    if let Ok(info) = response_handle.send_response(response).await {
                        return info;
                    }
                }
                None => {}
            }
        }
        let catalog = self.0.catalog.read().expect("catalog lock").clone();
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// An authoritative DNS server for the root zone on 127.0.0.1 (UDP and TCP, one port).
pub struct TestDns {
    addr: SocketAddr,
    state: Arc<State>,
    _server: Server<Handler>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        Self::start_on(None).await
    }

    /// Serves on `addr` (UDP and TCP), or on a free loopback port when `None`.
    pub async fn start_on(addr: Option<SocketAddr>) -> TestDns {
        let state = Arc::new(State {
            zone: Mutex::new(Zone::default()),
            catalog: RwLock::new(Arc::new(Catalog::new())),
            faults: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
            serial: Mutex::new(0),
            batching: std::sync::atomic::AtomicBool::new(false),
        });
        state.rebuild();
        let mut server = Server::new(Handler(state.clone()));
        // Bind UDP on a free port, then TCP on the same port (retry if it is taken).
        let (udp, tcp) = if let Some(addr) = addr {
            (
                UdpSocket::bind(addr).await.expect("bind udp"),
                TcpListener::bind(addr).await.expect("bind tcp"),
            )
        } else {
            loop {
                let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .expect("bind udp");
                let port = udp.local_addr().expect("udp addr").port();
                if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                    break (udp, tcp);
                }
            }
        };
        let addr = udp.local_addr().expect("addr");
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65535);
        TestDns {
            addr,
            state,
            _server: server,
        }
    }

    /// The address for `nameservers = ["IP:PORT"]`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn set(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        self.put(name, rtype, data);
        if !self
            .state
            .batching
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.state.rebuild();
        }
    }

    fn put(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        let mut zone = self.state.zone.lock().expect("zone lock");
        if data.is_empty() {
            zone.records.remove(&(key(name), rtype));
        } else {
            zone.records.insert((key(name), rtype), data);
        }
    }

    /// Runs `f` with zone rebuilds deferred to its end (for thousands of records).
    pub fn batch(&self, f: impl FnOnce(&TestDns)) {
        self.state
            .batching
            .store(true, std::sync::atomic::Ordering::SeqCst);
        f(self);
        self.state
            .batching
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.rebuild();
    }

    /// Replaces the TXT records of `name`; each record is one string (split into
    /// 255-byte character-strings as needed).
    pub fn set_txt(&self, name: &str, records: &[&str]) {
        let data = records
            .iter()
            .map(|r| {
                let chunks: Vec<String> = r
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                RData::TXT(TXT::new(chunks))
            })
            .collect();
        self.set(name, RecordType::TXT, data);
    }

    /// Replaces the TXT records of `name` with one record made of several strings.
    pub fn set_txt_strings(&self, name: &str, strings: &[&str]) {
        let txt = TXT::new(strings.iter().map(|s| (*s).to_owned()).collect());
        self.set(name, RecordType::TXT, vec![RData::TXT(txt)]);
    }

    pub fn set_a(&self, name: &str, ip: Ipv4Addr) {
        self.set(name, RecordType::A, vec![RData::A(A(ip))]);
    }

    pub fn set_cname(&self, name: &str, target: &str) {
        self.set(
            name,
            RecordType::CNAME,
            vec![RData::CNAME(CNAME(fqdn(target)))],
        );
    }

    pub fn set_mx(&self, name: &str, exchanges: &[(u16, &str)]) {
        let data = exchanges
            .iter()
            .map(|(pref, host)| RData::MX(MX::new(*pref, fqdn(host))))
            .collect();
        self.set(name, RecordType::MX, data);
    }

    /// Removes every record of `rtype` at `name`.
    pub fn remove(&self, name: &str, rtype: RecordType) {
        self.set(name, rtype, Vec::new());
    }

    pub fn set_fault(&self, name: &str, fault: Option<DnsFault>) {
        let mut faults = self.state.faults.lock().expect("faults lock");
        match fault {
            Some(f) => faults.insert(key(name), f),
            None => faults.remove(&key(name)),
        };
    }

    /// How many queries for (`name`, `rtype`) reached the server.
    pub fn query_count(&self, name: &str, rtype: RecordType) -> usize {
        self.state
            .queries
            .lock()
            .expect("queries lock")
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Total queries received.
    pub fn total_queries(&self) -> usize {
        self.state
            .queries
            .lock()
            .expect("queries lock")
            .values()
            .sum()
    }
}
