//! A small DNS forwarder for sandboxes.
//!
//! Egress policy lets a sandbox reach a domain only at the addresses that domain
//! resolves to. The firewall cannot know those addresses in advance (CDNs rotate them),
//! so every DNS query of a sandbox (UDP and TCP port 53) is DNAT-ed by nftables to this
//! proxy. The proxy forwards the query unchanged to the upstream resolver, reads the
//! answer, and reports its A/AAAA addresses to a [`ResolvedSink`] (which adds them to
//! the sandbox's nftables set if its policy allows the name) *before* it returns the
//! answer to the sandbox: the sandbox's immediate `connect` to the address is then
//! already allowed.
//!
//! Only names the sandbox may reach are asked upstream ([`policy`]): its allow-list's
//! domains and the host's `always_allow` ones (exact names, as the firewall matches
//! them), and only A, AAAA and CNAME queries of class IN. A query for any other name or
//! type, or from a client that is not a sandbox with a known address, is REFUSED by
//! the proxy without asking anyone: the proxy is no channel out of a sealed sandbox.
//! Each sandbox has its own caps on queries in flight and TCP connections.
//!
//! The answer bytes are passed through untouched (same id, same records, same EDNS), so
//! the proxy is invisible to the sandbox's resolver library. The proxy answers by
//! itself with REFUSED (names and types outside the policy; opcodes other than QUERY:
//! NOTIFY, UPDATE, ... have no business leaving a sandbox) and with SERVFAIL when the
//! upstream does not answer (so the client fails fast instead of waiting for its own
//! timeouts). Anything that is not a
//! well-formed query with exactly one question is dropped without an answer: there is
//! nothing sensible to answer, and answering garbage would make the proxy a reflector.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub mod policy;
#[cfg(test)]
mod tests;

use policy::PerClient;
pub use policy::SandboxCaps;

/// Receives the addresses a sandbox's name resolved to, before the sandbox sees them.
pub trait ResolvedSink: Send + Sync + 'static {
    /// Whether the sandbox at `client` may resolve `name` (lower case, no trailing
    /// dot): its policy or the host's names it. `false` for an unknown client. Only
    /// allowed names are asked upstream.
    fn may_resolve(&self, client: Ipv4Addr, name: &str) -> bool;

    /// `client`: the sandbox's IPv4 address (the query's source). `name`: the queried
    /// name (lower case, no trailing dot). `addrs`: every A/AAAA address in the
    /// answer section (following CNAMEs: all address records count for the queried
    /// name). `ttl`: the smallest TTL among them.
    fn allow_resolved(
        &self,
        client: Ipv4Addr,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// Serves UDP and TCP on `listen` until `shutdown`; forwards to `upstream`.
///
/// Fails only if the sockets cannot be bound; errors on single queries or connections
/// are logged and never end the service.
pub async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    sink: Arc<dyn ResolvedSink>,
    caps: SandboxCaps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = Limits {
        client_in_flight: caps.in_flight.max(1),
        client_tcp: caps.tcp_connections.max(1),
        ..Limits::default()
    };
    Proxy::bind(listen, upstream, sink, limits)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

/// The knobs of the proxy. The per-client caps come from the config; the rest only
/// tests change (to keep timeout tests short).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// How long one upstream attempt may take (connect + send + answer).
    upstream_timeout: Duration,
    /// Attempts per query: the first one plus one retry, as a lost UDP datagram is the
    /// usual cause of a missing answer and a second try is cheap.
    upstream_attempts: u32,
    /// A TCP connection that sends nothing (or reads nothing) for this long is closed.
    tcp_idle: Duration,
    /// UDP queries in flight at once. Beyond that, queries are dropped (the client
    /// retries): a sandbox flooding queries must not make the agent spawn without bound.
    udp_in_flight: usize,
    /// TCP connections open at once. Beyond that, new connections are closed at once.
    tcp_connections: usize,
    /// How long the sink may take. A stuck sink must not hang DNS: past this the
    /// answer is sent anyway (the firewall then just refuses the connection).
    sink_timeout: Duration,
    /// UDP queries of one client in flight at once ([`SandboxCaps::in_flight`]).
    client_in_flight: usize,
    /// TCP connections of one client ([`SandboxCaps::tcp_connections`]).
    client_tcp: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(5),
            upstream_attempts: 2,
            tcp_idle: Duration::from_secs(10),
            udp_in_flight: 256,
            tcp_connections: 64,
            sink_timeout: Duration::from_secs(5),
            client_in_flight: SandboxCaps::default().in_flight,
            client_tcp: SandboxCaps::default().tcp_connections,
        }
    }
}

/// The largest DNS message (UDP datagram or TCP frame).
const MAX_MESSAGE: usize = 65_535;

/// What every query task needs.
struct Ctx {
    upstream: SocketAddr,
    sink: Arc<dyn ResolvedSink>,
    limits: Limits,
}

/// How a query reached us; the upstream is asked the same way, because a client that
/// uses TCP usually does so after a truncated UDP answer and needs the full one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The bound sockets of a proxy, split from [`Proxy::run`] so tests can learn the port.
struct Proxy {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    ctx: Arc<Ctx>,
}

impl Proxy {
    /// Binds UDP and TCP on `listen`. With port 0, TCP is bound to the port the kernel
    /// chose for UDP (retrying a few times if that port is taken for TCP), so both
    /// transports share one address, as DNS clients expect.
    async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        sink: Arc<dyn ResolvedSink>,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let mut attempt = 0;
        let (udp, tcp) = loop {
            attempt += 1;
            let udp = UdpSocket::bind(listen)
                .await
                .with_context(|| format!("binding DNS proxy UDP socket on {listen}"))?;
            let port = udp.local_addr().context("DNS proxy UDP address")?.port();
            match TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if listen.port() == 0 && attempt < 8 => {
                    tracing::debug!(port, error = %e, "DNS proxy TCP port taken; trying another");
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("binding DNS proxy TCP socket on {listen}"));
                }
            }
        };
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            ctx: Arc::new(Ctx {
                upstream,
                sink,
                limits,
            }),
        })
    }

    /// The address both transports listen on.
    #[cfg(test)]
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `shutdown`. Query tasks watch the same token, so none outlives the
    /// proxy by more than a moment.
    async fn run(self, shutdown: CancellationToken) {
        let addr = self.udp.local_addr().ok();
        tracing::info!(listen = ?addr, upstream = %self.ctx.upstream, "DNS proxy serving");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = udp_loop(self.udp, self.ctx.clone(), shutdown.clone()) => {}
            () = tcp_loop(self.tcp, self.ctx, shutdown.clone()) => {}
        }
        tracing::info!(listen = ?addr, "DNS proxy stopped");
    }
}

/// Receives datagrams and answers each one in its own task.
async fn udp_loop(socket: Arc<UdpSocket>, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(ctx.limits.udp_in_flight));
    let per_client = Arc::new(PerClient::default());
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                // Transient (e.g. an ICMP error reported on the socket): keep serving,
                // but do not spin if the error repeats.
                tracing::debug!(error = %e, "DNS proxy UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(client_permit) = per_client.try_acquire(client.ip(), ctx.limits.client_in_flight)
        else {
            tracing::debug!(%client, "DNS client has too many queries in flight; dropping one");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%client, "DNS proxy busy; dropping UDP query");
            continue;
        };
        let query = buf.get(..len).unwrap_or_default().to_vec();
        let (socket, ctx, shutdown) = (socket.clone(), ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permits = (permit, client_permit);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = async {
                    if let Some(answer) = handle_query(&ctx, client, &query, Transport::Udp).await
                        && let Err(e) = socket.send_to(&answer, client).await
                    {
                        tracing::debug!(%client, error = %e, "DNS proxy UDP send failed");
                    }
                } => {}
            }
        });
    }
}

/// Accepts TCP connections, at most [`Limits::tcp_connections`] at once.
async fn tcp_loop(listener: TcpListener, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(ctx.limits.tcp_connections));
    let per_client = Arc::new(PerClient::default());
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "DNS proxy TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(client_permit) = per_client.try_acquire(client.ip(), ctx.limits.client_tcp) else {
            tracing::debug!(%client, "DNS client has too many TCP connections; closing");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%client, "DNS proxy has too many TCP connections; closing");
            continue;
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permits = (permit, client_permit);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tcp_connection(stream, client, &ctx) => {}
            }
        });
    }
}

/// Serves length-prefixed queries on one connection, in order, until the client closes
/// it, stays idle for [`Limits::tcp_idle`], or an I/O error occurs.
async fn tcp_connection(mut stream: TcpStream, client: SocketAddr, ctx: &Ctx) {
    let idle = ctx.limits.tcp_idle;
    loop {
        let query = match tokio::time::timeout(idle, read_frame(&mut stream)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "DNS proxy TCP read failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "DNS proxy TCP connection idle; closing");
                return;
            }
        };
        // Framing survives a bad message, so a dropped query does not end the connection.
        let Some(answer) = handle_query(ctx, client, &query, Transport::Tcp).await else {
            continue;
        };
        match tokio::time::timeout(idle, write_frame(&mut stream, &answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "DNS proxy TCP write failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "DNS proxy TCP client not reading; closing");
                return;
            }
        }
    }
}

/// Reads one 2-byte-length-prefixed message; `None` on a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Writes one 2-byte-length-prefixed message in a single write (one segment, usually).
async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "DNS message too long")
    })?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

/// A query that passed validation.
#[derive(Debug)]
enum Parsed {
    /// A standard query with one question: forward it.
    Forward(Message),
    /// Another opcode: answer this (REFUSED) without asking upstream.
    Refuse(Vec<u8>),
}

/// Validates a client's message: a query (QR = 0) with exactly one question.
/// `None` means drop it without an answer.
fn parse_query(bytes: &[u8]) -> Option<Parsed> {
    let message = Message::from_vec(bytes).ok()?;
    if message.metadata.message_type != MessageType::Query || message.queries.len() != 1 {
        return None;
    }
    if message.metadata.op_code != OpCode::Query {
        return error_answer(&message, ResponseCode::Refused).map(Parsed::Refuse);
    }
    Some(Parsed::Forward(message))
}

/// An answer made by the proxy itself: the client's id, opcode, RD/CD flags and
/// question, with `rcode` and no records. `None` if it cannot be encoded.
fn error_answer(query: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut answer = Message::error_msg(query.metadata.id, query.metadata.op_code, rcode);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.checking_disabled = query.metadata.checking_disabled;
    answer.metadata.recursion_available = true;
    answer.queries.clone_from(&query.queries);
    answer.to_vec().ok()
}

/// What the proxy learnt from an upstream answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct AnswerInfo {
    /// `None` if the answer did not parse (it is still passed through).
    rcode: Option<ResponseCode>,
    truncated: bool,
    /// Distinct A/AAAA addresses of the answer section, in order.
    addrs: Vec<IpAddr>,
    /// The smallest TTL among those records (0 if there are none).
    min_ttl: u32,
}

/// Reads an upstream answer. Owner names are deliberately ignored: a CNAME chain ends
/// in address records owned by the last alias, and they all answer the queried name.
/// Only class IN records count.
fn inspect_answer(bytes: &[u8]) -> AnswerInfo {
    let Ok(message) = Message::from_vec(bytes) else {
        // Often a truncated answer whose records were cut mid-way. Still tell whether
        // TC is set (bit 0x02 of the third byte), for the log.
        let truncated = bytes.get(2).is_some_and(|flags| flags & 0x02 != 0);
        return AnswerInfo {
            truncated,
            ..AnswerInfo::default()
        };
    };
    let mut addrs = Vec::new();
    let mut min_ttl = u32::MAX;
    for record in &message.answers {
        if record.dns_class != DNSClass::IN {
            continue;
        }
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        min_ttl = min_ttl.min(record.ttl);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    AnswerInfo {
        rcode: Some(message.metadata.response_code),
        truncated: message.metadata.truncation,
        min_ttl: if addrs.is_empty() { 0 } else { min_ttl },
        addrs,
    }
}

/// Whether `bytes` (from the upstream) answers `query`: same id, QR set, and (when it
/// parses) the same question. Anything else is a stale or stray packet to ignore.
fn answers_query(query: &Message, bytes: &[u8]) -> bool {
    let (Some(id), Some(flags)) = (bytes.get(..2), bytes.get(2)) else {
        return false;
    };
    if id != query.metadata.id.to_be_bytes() || flags & 0x80 == 0 {
        return false;
    }
    match Message::from_vec(bytes) {
        Ok(answer) => answer.queries.is_empty() || answer.queries == query.queries,
        // A truncated answer may not parse; id and QR are all we can check.
        Err(_) => true,
    }
}

/// The sandbox address of a client, if it is one: an IPv4 address, or an IPv4-mapped
/// IPv6 one (what an IPv4 client looks like on a dual-stack socket). Other IPv6 clients
/// are not sandboxes, so the sink is not told about them.
fn sandbox_ipv4(client: SocketAddr) -> Option<Ipv4Addr> {
    match client.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// The queried name as the sink wants it: lower case, ASCII (IDNs in punycode), no
/// trailing dot.
fn sink_name(query: &Query) -> String {
    let name = query.name.to_lowercase().to_ascii();
    match name.strip_suffix('.') {
        Some(stripped) => stripped.to_owned(),
        None => name,
    }
}

/// Handles one client message: validate, forward, report addresses, answer.
/// Returns the bytes to send back, or `None` to send nothing.
async fn handle_query(
    ctx: &Ctx,
    client: SocketAddr,
    bytes: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let message = match parse_query(bytes)? {
        Parsed::Forward(message) => message,
        Parsed::Refuse(answer) => {
            tracing::debug!(%client, "DNS query with a non-QUERY opcode; REFUSED");
            return Some(answer);
        }
    };
    let query = message.queries.first()?;
    let name = sink_name(query);
    let qtype = query.query_type;
    // The policy, before anything leaves the host.
    let sandbox = sandbox_ipv4(client);
    let allowed = policy::allowed_type(qtype, query.query_class)
        && sandbox.is_some_and(|sandbox| ctx.sink.may_resolve(sandbox, &name));
    if !allowed {
        tracing::debug!(%client, name, %qtype, "DNS query outside the sandbox's policy; REFUSED");
        crate::metrics::metrics().dns_refused();
        return error_answer(&message, ResponseCode::Refused);
    }

    let answer = match forward(ctx, &message, bytes, transport).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(%client, name, %qtype, upstream = %ctx.upstream, error = %format!("{e:#}"),
                "DNS upstream did not answer; SERVFAIL");
            return error_answer(&message, ResponseCode::ServFail);
        }
    };

    let info = inspect_answer(&answer);
    tracing::debug!(%client, name, %qtype, rcode = ?info.rcode, truncated = info.truncated,
        addrs = info.addrs.len(), ?transport, "DNS query");
    // A truncated answer is passed through as is, without telling the sink: the client
    // retries over TCP and that full answer is the one reported.
    // IPv6 clients are not sandboxes: answered, but not reported.
    if info.rcode == Some(ResponseCode::NoError)
        && !info.truncated
        && !info.addrs.is_empty()
        && let Some(sandbox) = sandbox_ipv4(client)
    {
        report(ctx, sandbox, &name, &info).await;
    }
    Some(answer)
}

/// Tells the sink, bounded by [`Limits::sink_timeout`]. Failures are only logged: the
/// answer goes out anyway, and the firewall then just refuses the connection.
async fn report(ctx: &Ctx, sandbox: Ipv4Addr, name: &str, info: &AnswerInfo) {
    let ttl = Duration::from_secs(u64::from(info.min_ttl));
    let call = ctx.sink.allow_resolved(sandbox, name, &info.addrs, ttl);
    match tokio::time::timeout(ctx.limits.sink_timeout, call).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(client = %sandbox, name, error = %format!("{e:#}"),
                "could not allow resolved addresses; answering anyway");
        }
        Err(_) => {
            tracing::warn!(client = %sandbox, name, "allowing resolved addresses timed out; answering anyway");
        }
    }
}

/// Sends the client's bytes unchanged to the upstream and returns its answer, trying
/// [`Limits::upstream_attempts`] times with [`Limits::upstream_timeout`] each.
async fn forward(
    ctx: &Ctx,
    query: &Message,
    bytes: &[u8],
    transport: Transport,
) -> anyhow::Result<Vec<u8>> {
    let mut last_error = anyhow::anyhow!("no attempt made");
    for attempt in 1..=ctx.limits.upstream_attempts.max(1) {
        let exchange = async {
            match transport {
                Transport::Udp => exchange_udp(ctx.upstream, query, bytes).await,
                Transport::Tcp => exchange_tcp(ctx.upstream, query, bytes).await,
            }
        };
        match tokio::time::timeout(ctx.limits.upstream_timeout, exchange).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last_error = e.context(format!("attempt {attempt}")),
            Err(_) => {
                last_error = anyhow::anyhow!(
                    "attempt {attempt} timed out after {:?}",
                    ctx.limits.upstream_timeout
                );
            }
        }
    }
    Err(last_error)
}

/// One UDP exchange from a fresh socket (a new random source port per attempt, which
/// is what makes spoofed answers hard). The socket is connected, so only the upstream's
/// datagrams arrive; stray ones that do not answer this query are skipped.
async fn exchange_udp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .context("binding upstream UDP socket")?;
    socket
        .connect(upstream)
        .await
        .context("connecting upstream UDP socket")?;
    socket.send(bytes).await.context("sending to upstream")?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .context("receiving from upstream")?;
        let answer = buf.get(..len).unwrap_or_default();
        if answers_query(query, answer) {
            return Ok(answer.to_vec());
        }
        tracing::debug!(%upstream, "ignoring a UDP datagram that does not answer the query");
    }
}

/// One TCP exchange on a fresh connection (queries over TCP are rare: truncated
/// answers and zone-sized records, so no connection pooling).
async fn exchange_tcp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream)
        .await
        .context("connecting to upstream over TCP")?;
    write_frame(&mut stream, bytes)
        .await
        .context("sending to upstream over TCP")?;
    let answer = read_frame(&mut stream)
        .await
        .context("receiving from upstream over TCP")?
        .context("upstream closed the TCP connection without answering")?;
    anyhow::ensure!(
        answers_query(query, &answer),
        "upstream TCP answer does not match the query"
    );
    Ok(answer)
}
