//! The proxy's policy against a fake upstream on loopback: names outside a sandbox's
//! allow-list and data-carrying types never reach the upstream, and one client cannot
//! take every slot of the proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::super::*;
use super::support::*;

const ALLOWED: &str = "allowed.example.com";

fn policy_sink() -> Arc<RecordingSink> {
    Arc::new(RecordingSink {
        allowed: Some(vec![ALLOWED.to_owned()]),
        ..RecordingSink::default()
    })
}

/// `len` random letters and digits.
fn label(rng: &mut impl rand::Rng, len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// A random name that is not [`ALLOWED`]: tunnel-like labels, look-alikes of the
/// allowed name (a prefix, a suffix, a sub-domain, a parent) and plain noise.
fn random_name(rng: &mut impl rand::Rng) -> String {
    let name = match rng.random_range(0..6) {
        0 => format!("{}.attacker.test", label(rng, 40)),
        1 => format!("{}.{}.attacker.test", label(rng, 63), label(rng, 30)),
        2 => format!("{}.{ALLOWED}", label(rng, 8)),
        3 => format!("{ALLOWED}.{}.test", label(rng, 6)),
        4 => format!("{}{ALLOWED}", label(rng, 3)),
        _ => match rng.random_range(0..4) {
            0 => "example.com".to_owned(),
            1 => "sbx-neighbour.example".to_owned(),
            2 => "localhost".to_owned(),
            _ => format!("{}.{}", label(rng, 12), label(rng, 3)),
        },
    };
    assert_ne!(name, ALLOWED);
    name
}

fn random_type(rng: &mut impl rand::Rng) -> RecordType {
    [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::ANY,
        RecordType::NULL,
        RecordType::CNAME,
        RecordType::SRV,
    ][rng.random_range(0..8)]
}

/// The acceptance test of the policy: 10,000 random names outside the allow-list
/// (9,000 over UDP, 1,000 over TCP), every one REFUSED, 0 forwarded upstream. Then the
/// allowed name is forwarded (so the count above could have been non-zero), and a TXT
/// query for the allowed name is refused.
#[tokio::test]
async fn ten_thousand_names_outside_the_allow_list_reach_no_upstream() {
    let upstream = FakeUpstream::start(answer_with(
        vec![a("allowed.example.com.", 30, [203, 0, 113, 7])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = policy_sink();
    let proxy = start_proxy(upstream.addr, sink.clone()).await;
    let mut rng = rand::rng();
    let started = Instant::now();

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let mut buf = vec![0u8; 65_535];
    let mut refused = 0usize;
    for i in 0..9_000u16 {
        let query = query_bytes(i, &random_name(&mut rng), random_type(&mut rng));
        socket.send_to(&query, proxy.addr).await.expect("send");
        let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .expect("receive");
        let answer = parse(&buf[..len]);
        assert_eq!(answer.metadata.id, i);
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
        assert!(answer.answers.is_empty());
        refused += 1;
    }
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for i in 0..1_000u16 {
        let query = query_bytes(i, &random_name(&mut rng), random_type(&mut rng));
        let answer = tcp_ask(&mut stream, &query, WAIT)
            .await
            .expect("a TCP answer");
        assert_eq!(parse(&answer).metadata.response_code, ResponseCode::Refused);
        refused += 1;
    }
    assert_eq!(refused, 10_000);
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        0,
        "names outside the allow-list were forwarded upstream"
    );
    assert!(sink.calls().is_empty());
    eprintln!(
        "10000 names outside the allow-list: 10000 REFUSED, 0 forwarded upstream ({} ms)",
        started.elapsed().as_millis()
    );

    // The allowed name goes through (A), and is reported.
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(1, "Allowed.Example.COM.", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");
    assert_eq!(parse(&answer).metadata.response_code, ResponseCode::NoError);
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 1);
    assert_eq!(sink.calls().len(), 1);
    // Not with a data-carrying type, nor another class.
    for qtype in [
        RecordType::TXT,
        RecordType::ANY,
        RecordType::NULL,
        RecordType::MX,
    ] {
        let answer = udp_ask(proxy.addr, &query_bytes(2, ALLOWED, qtype), WAIT)
            .await
            .expect("an answer");
        assert_eq!(
            parse(&answer).metadata.response_code,
            ResponseCode::Refused,
            "{qtype}"
        );
    }
    let mut chaos = Message::new(3, hickory_proto::op::MessageType::Query, OpCode::Query);
    let mut q = hickory_proto::op::Query::query(name("allowed.example.com."), RecordType::A);
    q.set_query_class(hickory_proto::rr::DNSClass::CH);
    chaos.add_query(q);
    let answer = udp_ask(proxy.addr, &chaos.to_vec().expect("encode"), WAIT)
        .await
        .expect("an answer");
    assert_eq!(parse(&answer).metadata.response_code, ResponseCode::Refused);
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 1);
}

/// Binds a UDP client socket on `ip` (another loopback address is another client).
async fn client_on(ip: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.expect("bind client")
}

async fn tcp_from(ip: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((ip, 0))).expect("bind client");
    socket.connect(server).await.expect("connect")
}

/// A sandbox whose queries hang upstream holds at most its cap of slots; another
/// sandbox is still answered at once.
#[tokio::test]
async fn one_client_cannot_take_every_query_slot() {
    // The upstream never answers "slow" names, and answers the others.
    let upstream = FakeUpstream::start(Arc::new(|query: &Message, _| {
        let slow = query
            .queries
            .first()
            .is_some_and(|q| q.name().to_ascii().starts_with("slow"));
        if slow {
            return None;
        }
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.queries.clone_from(&query.queries);
        answer.add_answer(a(&query.queries[0].name().to_ascii(), 30, [203, 0, 113, 8]));
        Some(answer)
    }))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let limits = Limits {
        client_in_flight: 4,
        upstream_timeout: Duration::from_secs(3),
        upstream_attempts: 1,
        ..Limits::default()
    };
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;

    let hog = client_on(Ipv4Addr::LOCALHOST).await;
    for i in 0..20u16 {
        let query = query_bytes(i, &format!("slow{i}.example.com"), RecordType::A);
        hog.send_to(&query, proxy.addr).await.expect("send");
    }
    // Wait until the hog's queries reached the upstream (poll with a deadline).
    let deadline = Instant::now() + WAIT;
    while upstream.queries.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "the hog's queries did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The hog is at its cap: its next query is dropped...
    let answer = {
        hog.send_to(
            &query_bytes(99, "fast.example.com", RecordType::A),
            proxy.addr,
        )
        .await
        .expect("send");
        let mut buf = vec![0u8; 65_535];
        tokio::time::timeout(SILENCE, hog.recv_from(&mut buf)).await
    };
    assert!(answer.is_err(), "the hog got past its cap");
    // ... and another sandbox is answered at once.
    let other = client_on(Ipv4Addr::new(127, 0, 0, 2)).await;
    other
        .send_to(
            &query_bytes(7, "fast.example.com", RecordType::A),
            proxy.addr,
        )
        .await
        .expect("send");
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
        .await
        .expect("the other client is answered")
        .expect("receive");
    assert_eq!(
        parse(&buf[..len]).metadata.response_code,
        ResponseCode::NoError
    );
    // Only the hog's capped share ever reached the upstream (4 slow + 1 fast).
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 5);
}

/// TCP: a client beyond its connection cap is closed; another client still connects.
#[tokio::test]
async fn one_client_cannot_take_every_tcp_connection() {
    let upstream = FakeUpstream::start(answer_with(vec![], ResponseCode::NoError)).await;
    let limits = Limits {
        client_tcp: 2,
        ..Limits::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;
    let query = query_bytes(12, "example.com", RecordType::A);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tcp_from(Ipv4Addr::LOCALHOST, proxy.addr).await;
        assert!(tcp_ask(&mut s, &query, WAIT).await.is_some());
        held.push(s);
    }
    let mut third = tcp_from(Ipv4Addr::LOCALHOST, proxy.addr).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    let mut other = tcp_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr).await;
    assert!(
        tcp_ask(&mut other, &query, WAIT).await.is_some(),
        "another client is served"
    );
    // A connection given back is a slot again.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = tcp_from(Ipv4Addr::LOCALHOST, proxy.addr).await;
        if tcp_ask_or_closed(&mut again, &query).await {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when the connection answers `query`; false when the proxy closed it.
async fn tcp_ask_or_closed(stream: &mut TcpStream, query: &[u8]) -> bool {
    if write_frame(stream, query).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(WAIT, read_frame(stream)).await,
        Ok(Ok(Some(_)))
    )
}
