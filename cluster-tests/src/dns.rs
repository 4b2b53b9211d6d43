//! A small authoritative DNS server for tests: it answers from an in-memory zone over
//! UDP and TCP on 127.0.0.1, so authentication tests (SPF, DKIM, DMARC, ARC) never
//! touch the real network.
//!
//! It answers A, AAAA, MX, TXT, PTR and CNAME queries, tells NXDOMAIN (the name is not
//! in the zone) from NODATA (the name is there without records of that type), follows
//! CNAMEs inside the zone, truncates UDP answers that do not fit so that clients retry
//! over TCP, and can be told to delay, refuse (SERVFAIL) or ignore queries for some
//! names to test timeouts and temporary errors. It runs on its own thread with its own
//! runtime, keeps a bounded number of queries and connections in flight, and stops when
//! the [`DnsServer`] is dropped.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record as WireRecord, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, Mutex, Semaphore};

/// Time to live of every answer.
const TTL: u32 = 300;
/// Queries handled at once (UDP and TCP together); further UDP queries are dropped.
const MAX_IN_FLIGHT: usize = 256;
/// TCP connections open at once; further connections are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection without a query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// CNAMEs followed inside the zone before giving up.
const MAX_CNAME_CHAIN: usize = 8;
/// Plain DNS over UDP without EDNS (RFC 1035 §4.2.1).
const UDP_PLAIN_LIMIT: usize = 512;

/// One resource record of the test zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx {
        preference: u16,
        exchange: String,
    },
    /// The character-strings of one TXT record, each at most 255 bytes.
    Txt(Vec<Vec<u8>>),
    Ptr(String),
    Cname(String),
}

impl Record {
    /// A TXT record holding `text`, split into character-strings of 255 bytes.
    pub fn txt(text: &str) -> Record {
        let strings = text.as_bytes().chunks(255).map(<[u8]>::to_vec).collect();
        Record::Txt(strings)
    }

    /// The query type this record answers.
    pub fn kind(&self) -> Kind {
        match self {
            Record::A(_) => Kind::A,
            Record::Aaaa(_) => Kind::Aaaa,
            Record::Mx { .. } => Kind::Mx,
            Record::Txt(_) => Kind::Txt,
            Record::Ptr(_) => Kind::Ptr,
            Record::Cname(_) => Kind::Cname,
        }
    }

    fn to_rdata(&self) -> Option<RData> {
        Some(match self {
            Record::A(ip) => RData::A(A(*ip)),
            Record::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Record::Mx {
                preference,
                exchange,
            } => RData::MX(MX::new(*preference, wire_name(exchange)?)),
            Record::Txt(strings) => {
                RData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect()))
            }
            Record::Ptr(target) => RData::PTR(PTR(wire_name(target)?)),
            Record::Cname(target) => RData::CNAME(CNAME(wire_name(target)?)),
        })
    }
}

/// The query types the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    A,
    Aaaa,
    Mx,
    Txt,
    Ptr,
    Cname,
}

impl Kind {
    /// Every kind, for faults that apply to all types but some.
    pub const ALL: [Kind; 6] = [
        Kind::A,
        Kind::Aaaa,
        Kind::Mx,
        Kind::Txt,
        Kind::Ptr,
        Kind::Cname,
    ];

    fn from_wire(record_type: RecordType) -> Option<Kind> {
        Some(match record_type {
            RecordType::A => Kind::A,
            RecordType::AAAA => Kind::Aaaa,
            RecordType::MX => Kind::Mx,
            RecordType::TXT => Kind::Txt,
            RecordType::PTR => Kind::Ptr,
            RecordType::CNAME => Kind::Cname,
            _ => return None,
        })
    }
}

/// What the server does instead of answering normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Never answer: the client times out.
    Silent,
    /// Answer SERVFAIL at once.
    ServFail,
    /// Answer normally after this long.
    Delay(Duration),
}

/// The data the server answers from. Names are case-insensitive and written without
/// the trailing dot.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    names: HashMap<String, Vec<Record>>,
    /// Per name: the fault and the kinds it applies to (empty: every kind).
    faults: HashMap<String, (Fault, Vec<Kind>)>,
    every_query: Option<Fault>,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Self {
        Zone::default()
    }

    /// Adds a record at `name`.
    pub fn add(&mut self, name: &str, record: Record) -> &mut Self {
        self.names.entry(key(name)).or_default().push(record);
        self
    }

    /// Adds a TXT record at `name` (split into 255-byte strings as needed).
    pub fn txt(&mut self, name: &str, text: &str) -> &mut Self {
        self.add(name, Record::txt(text))
    }

    /// Makes `name` exist without records, so that queries for it are NODATA rather
    /// than NXDOMAIN.
    pub fn declare(&mut self, name: &str) -> &mut Self {
        self.names.entry(key(name)).or_default();
        self
    }

    /// Applies `fault` to queries for `name` of the given kinds (all kinds when
    /// `kinds` is empty). The name need not hold records.
    pub fn fault(&mut self, name: &str, fault: Fault, kinds: &[Kind]) -> &mut Self {
        self.faults.insert(key(name), (fault, kinds.to_vec()));
        self
    }

    /// Applies `fault` to every query, whatever its name.
    pub fn fault_everything(&mut self, fault: Fault) -> &mut Self {
        self.every_query = Some(fault);
        self
    }

    fn fault_for(&self, name: &str, kind: Option<Kind>) -> Option<Fault> {
        if let Some(fault) = self.every_query {
            return Some(fault);
        }
        let (fault, kinds) = self.faults.get(name)?;
        let applies = kinds.is_empty() || kind.is_some_and(|kind| kinds.contains(&kind));
        applies.then_some(*fault)
    }

    /// The answer to `request`, or `None` when the server stays silent. The delay, if
    /// any, is how long to wait before sending it.
    fn answer(&self, request: &Message) -> Option<(Option<Duration>, Message)> {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        let query = match request.queries.as_slice() {
            [query] if request.metadata.op_code == OpCode::Query => query.clone(),
            _ => {
                response.metadata.response_code = ResponseCode::FormErr;
                return Some((None, response));
            }
        };
        response.add_query(query.clone());
        let name = key(&label_text(&query.name));
        let kind = Kind::from_wire(query.query_type);
        let mut delay = None;
        match self.fault_for(&name, kind) {
            Some(Fault::Silent) => return None,
            Some(Fault::ServFail) => {
                response.metadata.response_code = ResponseCode::ServFail;
                return Some((None, response));
            }
            Some(Fault::Delay(wait)) => delay = Some(wait),
            None => {}
        }
        if !self.names.contains_key(&name) {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(negative_soa(&query.name));
            return Some((delay, response));
        }
        let mut owner = query.name.clone();
        let mut current = name;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(records) = self.names.get(&current) else {
                break;
            };
            let cname = records.iter().find_map(|record| match record {
                Record::Cname(target) if kind != Some(Kind::Cname) => Some(target.clone()),
                _ => None,
            });
            if let Some(target) = cname {
                if let Some(rdata) = Record::Cname(target.clone()).to_rdata() {
                    response.add_answer(WireRecord::from_rdata(owner.clone(), TTL, rdata));
                }
                let Some(next) = wire_name(&target) else {
                    break;
                };
                owner = next;
                current = key(&target);
                continue;
            }
            for record in records.iter().filter(|record| Some(record.kind()) == kind) {
                if let Some(rdata) = record.to_rdata() {
                    response.add_answer(WireRecord::from_rdata(owner.clone(), TTL, rdata));
                }
            }
            break;
        }
        if response.answers.is_empty() {
            response.add_authority(negative_soa(&query.name));
        }
        Some((delay, response))
    }
}

/// The SOA that lets resolvers cache a negative answer (RFC 2308 §3), owned by the
/// queried name's parent (the zone has no apex of its own).
fn negative_soa(name: &Name) -> WireRecord {
    let apex = if name.num_labels() > 1 {
        name.base_name()
    } else {
        name.clone()
    };
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap_or_default(),
        Name::from_ascii("hostmaster.test.").unwrap_or_default(),
        1,
        3600,
        600,
        86_400,
        TTL,
    );
    WireRecord::from_rdata(apex, TTL, RData::SOA(soa))
}

/// A running test DNS server; dropping it stops the server.
pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server for `zone` on 127.0.0.1 at a free port, UDP and TCP.
    pub fn start(zone: Zone) -> io::Result<DnsServer> {
        Self::serve_on(zone, bind_pair()?)
    }

    /// Starts a server for `zone` on `addr`, UDP and TCP (the Compose suites' name
    /// server, in a container of its own).
    pub fn start_on(addr: SocketAddr, zone: Zone) -> io::Result<DnsServer> {
        let udp = std::net::UdpSocket::bind(addr)?;
        let tcp = std::net::TcpListener::bind(addr)?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Self::serve_on(zone, (udp, tcp))
    }

    fn serve_on(
        zone: Zone,
        (udp, tcp): (std::net::UdpSocket, std::net::TcpListener),
    ) -> io::Result<DnsServer> {
        let addr = udp.local_addr()?;
        let queries = Arc::new(AtomicUsize::new(0));
        let (shutdown, stop) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let counter = Arc::clone(&queries);
        let thread = std::thread::Builder::new()
            .name(format!("test-dns-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(zone, udp, tcp, counter, stop)))?;
        Ok(DnsServer {
            addr,
            queries,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address to give resolvers (UDP and TCP share it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries the server has received so far, answered or not.
    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds UDP at a free loopback port and TCP at the same port, retrying when another
/// process holds that TCP port.
fn bind_pair() -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}

async fn serve(
    zone: Zone,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    queries: Arc<AtomicUsize>,
    mut stop: oneshot::Receiver<()>,
) {
    let (Ok(udp), Ok(tcp)) = (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) else {
        return;
    };
    let udp = Arc::new(udp);
    let zone = Arc::new(zone);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut buffer = vec![0u8; 65_535];
    loop {
        tokio::select! {
            _ = &mut stop => return,
            received = udp.recv_from(&mut buffer) => {
                let Ok((len, peer)) = received else { continue };
                queries.fetch_add(1, Ordering::Relaxed);
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else { continue };
                let (zone, udp, request) = (Arc::clone(&zone), Arc::clone(&udp), buffer[..len].to_vec());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(bytes) = reply(&zone, &request, true).await {
                        let _ = udp.send_to(&bytes, peer).await;
                    }
                });
            }
            accepted = tcp.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else { continue };
                let (zone, queries, in_flight) = (Arc::clone(&zone), Arc::clone(&queries), Arc::clone(&in_flight));
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_tcp(stream, zone, queries, in_flight).await;
                });
            }
        }
    }
}

/// Serves the length-prefixed queries of one TCP connection (RFC 1035 §4.2.2),
/// answering each as soon as it is ready, so a delayed answer does not hold up the
/// others.
async fn serve_tcp(
    stream: TcpStream,
    zone: Arc<Zone>,
    queries: Arc<AtomicUsize>,
    in_flight: Arc<Semaphore>,
) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(Mutex::new(writer));
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if reader.read_exact(&mut request).await.is_err() {
            return;
        }
        queries.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let (zone, writer) = (Arc::clone(&zone), Arc::clone(&writer));
        tokio::spawn(async move {
            let _permit = permit;
            let Some(bytes) = reply(&zone, &request, false).await else {
                return;
            };
            let Ok(len) = u16::try_from(bytes.len()) else {
                return;
            };
            let mut writer = writer.lock().await;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = writer.write_all(&framed).await;
        });
    }
}

/// The encoded answer to one query, after any configured delay; `None` to stay
/// silent (including for undecodable queries and responses).
async fn reply(zone: &Zone, request: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let (delay, response) = zone.answer(&request)?;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let bytes = response.to_vec().ok()?;
    let limit = if request.edns.is_some() {
        usize::from(request.max_payload()).max(UDP_PLAIN_LIMIT)
    } else {
        UDP_PLAIN_LIMIT
    };
    if udp && bytes.len() > limit {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// A queried name as the zone writes it: its labels' bytes as they are, not escaped
/// (SPF macros can put spaces and `%` into a name).
fn label_text(name: &Name) -> String {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).into_owned())
        .collect();
    labels.join(".")
}

/// The zone key of a name: lowercase, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name as it goes on the wire, its labels' bytes as written (SPF's test names hold
/// `:` and `/`), or `None` if it cannot be encoded (a label over 63 octets, for
/// instance).
fn wire_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Some(Name::root());
    }
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}
