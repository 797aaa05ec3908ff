use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_proto::dnssec::crypto::Ed25519SigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, RRSIG};
use hickory_proto::dnssec::{DnssecSigner, SigningKey};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, MX, NS, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::net::{TcpListener, UdpSocket};

/// A failure the server simulates for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFault {
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer (the client times out).
    Drop,
}

/// A DNSSEC fault the signed server builds into one RRset's signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigFault {
    /// The RRSIG's signature bytes are corrupted.
    BadSignature,
    /// A correct signature whose validity period ended yesterday.
    Expired,
    /// No RRSIG at all.
    Missing,
}

#[derive(Default)]
struct Zone {
    /// (lower-case name without trailing dot, type) -> records
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Zones delegated from the signed root without a DS record (insecure).
    unsigned: Vec<String>,
    sig_faults: HashMap<(String, RecordType), SigFault>,
}

/// The root zone's key when the server signs (DNSSEC); its public key is the trust
/// anchor of whoever validates the answers.
struct Signing {
    pkcs8: Vec<u8>,
}

impl Signing {
    fn key(&self) -> Ed25519SigningKey {
        Ed25519SigningKey::from_pkcs8(&PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
            .expect("test key")
    }

    fn signer(&self, duration: Duration) -> DnssecSigner {
        let key = self.key();
        let dnskey = DNSKEY::from_key(&key.to_public_key().expect("public key"));
        DnssecSigner::new(dnskey, Box::new(key), Name::root(), duration)
    }
}

struct State {
    zone: Mutex<Zone>,
    signing: Option<Signing>,
    catalog: RwLock<Arc<Catalog>>,
    /// The root zone alone: DS records live in the parent, so DS queries for a
    /// delegated zone must be answered here, not by the child.
    root_catalog: RwLock<Arc<Catalog>>,
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

fn soa(serial: u32) -> RData {
    RData::SOA(SOA::new(
        Name::from_str("ns.test.").expect("name"),
        Name::from_str("hostmaster.test.").expect("name"),
        serial,
        3600,
        600,
        86400,
        0,
    ))
}

/// Whether `name` is `zone` or below it (both lower-case, no trailing dot).
fn within(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

impl State {
    fn rebuild(&self) {
        let zone = self.zone.lock().expect("zone lock");
        let mut serial = self.serial.lock().expect("serial lock");
        *serial += 1;
        let serial = *serial;
        let nx = self.signing.as_ref().map(|_| NxProofKind::Nsec);
        let mut root = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            Name::root(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            nx,
        );
        root.upsert_mut(Record::from_rdata(Name::root(), 0, soa(serial)), serial);
        let mut children = Vec::new();
        for child in &zone.unsigned {
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
                fqdn(child),
                ZoneType::Primary,
                AxfrPolicy::Deny,
                None,
            );
            handler.upsert_mut(Record::from_rdata(fqdn(child), 0, soa(serial)), serial);
            // The delegation: NS in the parent, no DS, so the child is insecure.
            let ns = RData::NS(NS(fqdn(&format!("ns.{child}"))));
            root.upsert_mut(Record::from_rdata(fqdn(child), 0, ns.clone()), serial);
            handler.upsert_mut(Record::from_rdata(fqdn(child), 0, ns), serial);
            children.push((child.clone(), handler));
        }
        for ((name, _), datas) in &zone.records {
            let target = children
                .iter_mut()
                .find(|(z, _)| within(name, z))
                .map(|(_, h)| h)
                .unwrap_or(&mut root);
            for data in datas {
                target.upsert_mut(Record::from_rdata(fqdn(name), 0, data.clone()), serial);
            }
        }
        if let Some(signing) = &self.signing {
            root.add_zone_signing_key_mut(signing.signer(Duration::from_secs(86_400)))
                .expect("add key");
            root.secure_zone_mut().expect("sign the root zone");
            apply_sig_faults(&mut root, &zone.sig_faults, signing);
        }
        let root = Arc::new(root);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(Name::root()), vec![root.clone()]);
        for (child, handler) in children {
            catalog.upsert(LowerName::from(fqdn(&child)), vec![Arc::new(handler)]);
        }
        let mut root_catalog = Catalog::new();
        root_catalog.upsert(LowerName::from(Name::root()), vec![root]);
        *self.catalog.write().expect("catalog lock") = Arc::new(catalog);
        *self.root_catalog.write().expect("catalog lock") = Arc::new(root_catalog);
    }
}

/// Rewrites the signatures of the RRsets named in `faults`.
fn apply_sig_faults(
    root: &mut InMemoryZoneHandler<TokioRuntimeProvider>,
    faults: &HashMap<(String, RecordType), SigFault>,
    signing: &Signing,
) {
    let day = Duration::from_secs(86_400);
    for ((name, rtype), fault) in faults {
        let rr_key = RrKey::new(LowerName::from(fqdn(name)), *rtype);
        let Some(set) = root.records_get_mut().get_mut(&rr_key) else {
            continue;
        };
        let set = Arc::make_mut(set);
        let resigned: Vec<Record> = match fault {
            SigFault::Missing => Vec::new(),
            SigFault::BadSignature => set
                .rrsigs()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::DNSSEC(DNSSECRData::RRSIG(sig)) => {
                        let mut bytes = sig.sig().to_vec();
                        if let Some(b) = bytes.first_mut() {
                            *b ^= 0xff;
                        }
                        let bad = RRSIG::from_sig(sig.input().clone(), bytes);
                        Some(Record::from_rdata(
                            r.name.clone(),
                            r.ttl,
                            RData::DNSSEC(DNSSECRData::RRSIG(bad)),
                        ))
                    }
                    _ => None,
                })
                .collect(),
            SigFault::Expired => {
                // Signed two days ago for one day: a valid signature, expired.
                let inception = time::OffsetDateTime::now_utc() - 2 * day;
                let signer = signing.signer(day);
                match RRSIG::from_rrset(set, DNSClass::IN, inception, &signer) {
                    Ok(sig) => vec![Record::from_rdata(
                        set.name().clone(),
                        set.ttl(),
                        RData::DNSSEC(DNSSECRData::RRSIG(sig)),
                    )],
                    Err(_) => Vec::new(),
                }
            }
        };
        set.set_rrsigs(resigned);
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
        let which = if query.as_ref().map(|q| q.1) == Some(RecordType::DS) {
            &self.0.root_catalog
        } else {
            &self.0.catalog
        };
        let catalog = which.read().expect("catalog lock").clone();
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

    /// A server whose root zone is signed (DNSSEC, NSEC) with a key made now; see
    /// [`TestDns::trust_anchor`].
    pub async fn start_signed() -> TestDns {
        Self::start_with(None, true).await
    }

    /// Serves on `addr` (UDP and TCP), or on a free loopback port when `None`.
    pub async fn start_on(addr: Option<SocketAddr>) -> TestDns {
        Self::start_with(addr, false).await
    }

    /// Serves on `addr` (or a free loopback port), signed or not.
    pub async fn start_with(addr: Option<SocketAddr>, signed: bool) -> TestDns {
        let signing = signed.then(|| Signing {
            pkcs8: Ed25519SigningKey::generate_pkcs8()
                .expect("generate key")
                .secret_pkcs8_der()
                .to_vec(),
        });
        let state = Arc::new(State {
            zone: Mutex::new(Zone::default()),
            signing,
            catalog: RwLock::new(Arc::new(Catalog::new())),
            root_catalog: RwLock::new(Arc::new(Catalog::new())),
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

    /// The root zone's DNSKEY as a trust-anchor file line (zone-file format), for a
    /// signed server.
    pub fn trust_anchor(&self) -> Option<String> {
        let signing = self.state.signing.as_ref()?;
        let key = signing.key().to_public_key().ok()?;
        let dnskey = DNSKEY::with_flags(257, key);
        Some(format!(". 3600 IN DNSKEY {dnskey}\n"))
    }

    /// The root zone's key as a DS record line (zone-file format, SHA-256 digest), as
    /// IANA publishes the real root's anchor: the digest of the DNSKEY this server
    /// serves.
    pub fn trust_anchor_ds(&self) -> Option<String> {
        let signing = self.state.signing.as_ref()?;
        let dnskey = DNSKEY::from_key(&signing.key().to_public_key().ok()?);
        let digest = dnskey
            .to_digest(&Name::root(), hickory_proto::dnssec::DigestType::SHA256)
            .ok()?;
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        let tag = dnskey.calculate_key_tag().ok()?;
        let algorithm = u8::from(hickory_proto::dnssec::Verifier::algorithm(&dnskey));
        Some(format!(". 3600 IN DS {tag} {algorithm} 2 {hex}\n"))
    }

    /// The root zone's public key, for validators configured in code.
    pub fn trust_anchor_key(&self) -> Option<hickory_proto::dnssec::PublicKeyBuf> {
        self.state.signing.as_ref()?.key().to_public_key().ok()
    }

    /// Replaces the TLSA records at `name` (`_25._tcp.HOST`): (usage, selector,
    /// matching type, data).
    pub fn set_tlsa(&self, name: &str, records: &[(u8, u8, u8, &[u8])]) {
        let data = records
            .iter()
            .map(|(u, s, m, d)| {
                RData::TLSA(TLSA::new((*u).into(), (*s).into(), (*m).into(), d.to_vec()))
            })
            .collect();
        self.set(name, RecordType::TLSA, data);
    }

    /// Delegates `zone` from the signed root without a DS record: everything at and
    /// below it is served unsigned, and validates as insecure.
    pub fn delegate_unsigned(&self, zone: &str) {
        self.state
            .zone
            .lock()
            .expect("zone lock")
            .unsigned
            .push(key(zone));
        self.state.rebuild();
    }

    /// Builds `fault` into the signatures of (`name`, `rtype`) (signed server only).
    pub fn set_sig_fault(&self, name: &str, rtype: RecordType, fault: Option<SigFault>) {
        {
            let mut zone = self.state.zone.lock().expect("zone lock");
            match fault {
                Some(f) => zone.sig_faults.insert((key(name), rtype), f),
                None => zone.sig_faults.remove(&(key(name), rtype)),
            };
        }
        self.state.rebuild();
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
