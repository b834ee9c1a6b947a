//! Fixtures of the DNS proxy tests: a fake upstream on loopback, a recording sink,
//! message builders and small clients.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::super::*;

/// One call of the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Call {
    pub(super) client: Ipv4Addr,
    pub(super) name: String,
    pub(super) addrs: Vec<IpAddr>,
    pub(super) ttl: Duration,
}

/// A sink that records its calls; it can be made slow or failing.
#[derive(Default)]
pub(super) struct RecordingSink {
    pub(super) calls: Mutex<Vec<Call>>,
    pub(super) fail: bool,
    pub(super) delay: Duration,
    /// Set once a call has completed (to check the answer waits for the sink).
    pub(super) done: AtomicBool,
    /// The names `may_resolve` allows (any client); `None`: every name.
    pub(super) allowed: Option<Vec<String>>,
}

impl RecordingSink {
    pub(super) fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("sink lock").clone()
    }
}

impl ResolvedSink for RecordingSink {
    fn may_resolve(&self, _client: Ipv4Addr, name: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    fn allow_resolved(
        &self,
        client: Ipv4Addr,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        let call = Call {
            client,
            name: name.to_owned(),
            addrs: addrs.to_vec(),
            ttl,
        };
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.calls.lock().expect("sink lock").push(call);
            self.done.store(true, Ordering::SeqCst);
            anyhow::ensure!(!self.fail, "nftables is on strike");
            Ok(())
        })
    }
}

/// Builds the upstream's answer to a query; `None` = stay silent.
pub(super) type Responder = Arc<dyn Fn(&Message, Transport) -> Option<Message> + Send + Sync>;

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) answering with a [`Responder`].
pub(super) struct FakeUpstream {
    pub(super) addr: SocketAddr,
    /// Queries received (both transports).
    pub(super) queries: Arc<AtomicUsize>,
    /// Every answer sent, as bytes.
    pub(super) sent: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(super) stop: CancellationToken,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeUpstream {
    pub(super) async fn start(responder: Responder) -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = udp.local_addr().expect("udp addr");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("udp addr");
        let (queries, sent, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
            CancellationToken::new(),
        );
        let answer = {
            let (queries, sent) = (queries.clone(), sent.clone());
            move |bytes: &[u8], transport| -> Option<Vec<u8>> {
                queries.fetch_add(1, Ordering::SeqCst);
                let query = Message::from_vec(bytes).expect("proxy forwards valid queries");
                let answer = responder(&query, transport)?
                    .to_vec()
                    .expect("encode answer");
                sent.lock().expect("sent lock").push(answer.clone());
                Some(answer)
            }
        };
        let answer = Arc::new(answer);
        let udp_answer = answer.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = udp_answer(&buf[..len], Transport::Udp) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        }));
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    continue;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    while let Ok(Some(query)) = read_frame(&mut stream).await {
                        if let Some(reply) = answer(&query, Transport::Tcp) {
                            let _ = write_frame(&mut stream, &reply).await;
                        }
                    }
                });
            }
        }));
        Self {
            addr,
            queries,
            sent,
            stop,
        }
    }

    pub(super) fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().expect("sent lock").clone()
    }
}

/// A responder answering every query with `records` and `rcode`.
pub(super) fn answer_with(records: Vec<Record>, rcode: ResponseCode) -> Responder {
    Arc::new(move |query, _| {
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.metadata.response_code = rcode;
        answer.queries.clone_from(&query.queries);
        answer.answers.clone_from(&records);
        Some(answer)
    })
}

pub(super) fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

pub(super) fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

pub(super) fn aaaa(owner: &str, ttl: u32, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip)))
}

pub(super) fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

/// A standard recursive query for `qname`/`qtype` with `id`.
pub(super) fn query_bytes(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name(qname), qtype));
    query.to_vec().expect("encode query")
}

/// A running proxy in front of `upstream`.
pub(super) struct Running {
    pub(super) addr: SocketAddr,
    pub(super) stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(super) async fn start_proxy_on(
    listen: SocketAddr,
    upstream: SocketAddr,
    sink: Arc<RecordingSink>,
    limits: Limits,
) -> Running {
    let proxy = Proxy::bind(listen, upstream, sink, limits)
        .await
        .expect("bind proxy");
    let addr = proxy.local_addr().expect("proxy addr");
    let stop = CancellationToken::new();
    tokio::spawn(proxy.run(stop.clone()));
    Running { addr, stop }
}

pub(super) async fn start_proxy(upstream: SocketAddr, sink: Arc<RecordingSink>) -> Running {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    start_proxy_on(listen, upstream, sink, Limits::default()).await
}

/// Sends one UDP datagram to `server` and waits up to `wait` for the answer.
pub(super) async fn udp_ask(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let local = SocketAddr::new(
        if server.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        },
        0,
    );
    let socket = UdpSocket::bind(local).await.expect("bind client");
    socket.send_to(bytes, server).await.expect("send query");
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .expect("receive answer");
    Some(buf[..len].to_vec())
}

/// Sends one TCP frame and waits up to `wait` for one frame back.
pub(super) async fn tcp_ask(
    stream: &mut TcpStream,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    write_frame(stream, bytes).await.expect("send frame");
    tokio::time::timeout(wait, read_frame(stream))
        .await
        .ok()?
        .expect("read frame")
}

pub(super) fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("answer parses")
}

pub(super) const WAIT: Duration = Duration::from_secs(3);
pub(super) const SILENCE: Duration = Duration::from_millis(400);
