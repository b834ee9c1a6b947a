//! Tests of the DNS proxy against a fake upstream on loopback (no other traffic).

mod policy;
mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use rand::Rng as _;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use self::support::*;
use super::*;

// ---------------------------------------------------------------------------------
// Forwarding over UDP
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_answer_reports_to_sink_and_passes_bytes_through() {
    let upstream = FakeUpstream::start(answer_with(
        vec![
            a("www.example.com.", 300, [93, 184, 216, 34]),
            a("www.example.com.", 60, [93, 184, 216, 35]),
        ],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let answer = udp_ask(
        proxy.addr,
        &query_bytes(0x1234, "WWW.Example.COM.", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");

    assert_eq!(
        upstream.sent(),
        vec![answer.clone()],
        "bytes passed through"
    );
    assert_eq!(parse(&answer).metadata.id, 0x1234);
    assert_eq!(
        sink.calls(),
        vec![Call {
            client: Ipv4Addr::LOCALHOST,
            name: "www.example.com".into(),
            addrs: vec![
                IpAddr::from([93, 184, 216, 34]),
                IpAddr::from([93, 184, 216, 35])
            ],
            ttl: Duration::from_secs(60),
        }]
    );
}

#[tokio::test]
async fn cname_chain_attributes_addresses_to_the_queried_name() {
    let v6: Ipv6Addr = "2001:db8::7".parse().expect("v6");
    let upstream = FakeUpstream::start(answer_with(
        vec![
            cname("api.example.com.", 600, "edge.cdn.example.net."),
            cname("edge.cdn.example.net.", 120, "e1.cdn.example.net."),
            a("e1.cdn.example.net.", 45, [203, 0, 113, 9]),
            aaaa("e1.cdn.example.net.", 90, v6),
            // Duplicates count once.
            a("e1.cdn.example.net.", 45, [203, 0, 113, 9]),
        ],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let answer = udp_ask(
        proxy.addr,
        &query_bytes(7, "api.example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");

    assert_eq!(parse(&answer).answers.len(), 5);
    assert_eq!(
        sink.calls(),
        vec![Call {
            client: Ipv4Addr::LOCALHOST,
            name: "api.example.com".into(),
            addrs: vec![IpAddr::from([203, 0, 113, 9]), IpAddr::V6(v6)],
            ttl: Duration::from_secs(45),
        }]
    );
}

#[tokio::test]
async fn nxdomain_is_passed_through_without_sink_call() {
    let upstream = FakeUpstream::start(answer_with(vec![], ResponseCode::NXDomain)).await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let answer = udp_ask(
        proxy.addr,
        &query_bytes(99, "nope.example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");

    assert_eq!(upstream.sent(), vec![answer.clone()]);
    assert_eq!(
        parse(&answer).metadata.response_code,
        ResponseCode::NXDomain
    );
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn answers_without_addresses_or_with_an_error_rcode_are_not_reported() {
    let txt = Record::from_rdata(
        name("example.com."),
        300,
        RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
    );
    let upstream = FakeUpstream::start(answer_with(vec![txt], ResponseCode::NoError)).await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(1, "example.com", RecordType::A),
        WAIT,
    )
    .await;
    assert!(answer.is_some());

    // Addresses with SERVFAIL (a broken upstream) are not trusted either.
    let upstream = FakeUpstream::start(answer_with(
        vec![a("example.com.", 30, [192, 0, 2, 1])],
        ResponseCode::ServFail,
    ))
    .await;
    let proxy2 = start_proxy(upstream.addr, sink.clone()).await;
    let answer = udp_ask(
        proxy2.addr,
        &query_bytes(2, "example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");
    assert_eq!(
        parse(&answer).metadata.response_code,
        ResponseCode::ServFail
    );
    assert!(sink.calls().is_empty());
    drop(proxy);
}

#[tokio::test]
async fn sink_is_awaited_before_the_answer_is_sent() {
    let upstream = FakeUpstream::start(answer_with(
        vec![a("slow.example.com.", 30, [192, 0, 2, 7])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink {
        delay: Duration::from_millis(300),
        ..RecordingSink::default()
    });
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let started = Instant::now();
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(3, "slow.example.com", RecordType::A),
        WAIT,
    )
    .await;
    assert!(answer.is_some());
    assert!(sink.done.load(Ordering::SeqCst), "sink finished first");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn sink_error_does_not_break_dns() {
    let upstream = FakeUpstream::start(answer_with(
        vec![a("example.org.", 30, [192, 0, 2, 8])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink {
        fail: true,
        ..RecordingSink::default()
    });
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let answer = udp_ask(
        proxy.addr,
        &query_bytes(4, "example.org", RecordType::A),
        WAIT,
    )
    .await
    .expect("answered despite the sink error");
    assert_eq!(upstream.sent(), vec![answer]);
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn stuck_sink_times_out_and_the_answer_still_goes_out() {
    let upstream = FakeUpstream::start(answer_with(
        vec![a("example.org.", 30, [192, 0, 2, 8])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink {
        delay: Duration::from_secs(3600),
        ..RecordingSink::default()
    });
    let limits = Limits {
        sink_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(5, "example.org", RecordType::A),
        WAIT,
    )
    .await;
    assert!(answer.is_some());
}

#[tokio::test]
async fn truncated_answer_is_passed_through_and_tcp_gets_the_full_one() {
    let full = vec![a("big.example.com.", 30, [192, 0, 2, 10])];
    let upstream = FakeUpstream::start(Arc::new(move |query, transport| {
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.queries.clone_from(&query.queries);
        if transport == Transport::Udp {
            answer.metadata.truncation = true;
        } else {
            answer.answers.clone_from(&full);
        }
        Some(answer)
    }))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let query = query_bytes(6, "big.example.com", RecordType::A);
    let answer = udp_ask(proxy.addr, &query, WAIT).await.expect("udp answer");
    assert!(parse(&answer).metadata.truncation);
    assert_eq!(upstream.sent(), vec![answer]);
    assert!(
        sink.calls().is_empty(),
        "a truncated answer is not reported"
    );

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let answer = tcp_ask(&mut stream, &query, WAIT)
        .await
        .expect("tcp answer");
    assert!(!parse(&answer).metadata.truncation);
    assert_eq!(sink.calls().len(), 1);
}

// ---------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------

/// Chosen behaviour: when the upstream does not answer, the client gets SERVFAIL
/// (same id and question) rather than silence, so it fails fast.
#[tokio::test]
async fn upstream_down_gives_servfail() {
    // A port nobody listens on: the kernel refuses at once.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(dead, sink.clone()).await;

    let started = Instant::now();
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(0xbeef, "example.com", RecordType::A),
        Duration::from_secs(11),
    )
    .await
    .expect("SERVFAIL, not silence");
    assert!(started.elapsed() < Duration::from_secs(10));
    let answer = parse(&answer);
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.queries.len(), 1);
    assert!(sink.calls().is_empty());

    // TCP too.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let query = query_bytes(0xbeef, "example.com", RecordType::A);
    let answer = tcp_ask(&mut stream, &query, Duration::from_secs(11))
        .await
        .expect("SERVFAIL over TCP");
    assert_eq!(
        parse(&answer).metadata.response_code,
        ResponseCode::ServFail
    );
}

/// A silent upstream costs the timeout twice (one retry), then SERVFAIL. The real
/// limits are 2 x 5 s; shortened here to keep the test fast.
#[tokio::test]
async fn silent_upstream_is_retried_once_then_servfail() {
    let upstream = FakeUpstream::start(Arc::new(|_, _| None)).await;
    let limits = Limits {
        upstream_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;

    let started = Instant::now();
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(8, "example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("SERVFAIL");
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(
        parse(&answer).metadata.response_code,
        ResponseCode::ServFail
    );
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 2, "one retry");

    let defaults = Limits::default();
    assert_eq!(defaults.upstream_timeout, Duration::from_secs(5));
    assert_eq!(defaults.upstream_attempts, 2);
}

#[tokio::test]
async fn stray_upstream_answers_with_a_wrong_id_are_ignored() {
    let upstream = FakeUpstream::start(Arc::new(|query, _| {
        let mut answer = Message::response(query.metadata.id.wrapping_add(1), OpCode::Query);
        answer.queries.clone_from(&query.queries);
        answer.add_answer(a("example.com.", 30, [192, 0, 2, 66]));
        Some(answer)
    }))
    .await;
    let limits = Limits {
        upstream_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on(
        (Ipv4Addr::LOCALHOST, 0).into(),
        upstream.addr,
        sink.clone(),
        limits,
    )
    .await;
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(9, "example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("SERVFAIL");
    assert_eq!(
        parse(&answer).metadata.response_code,
        ResponseCode::ServFail
    );
    assert!(sink.calls().is_empty());
}

// ---------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_serves_several_queries_per_connection() {
    let upstream = FakeUpstream::start(Arc::new(|query, _| {
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.queries.clone_from(&query.queries);
        if query.queries.first().map(|q| q.name.to_ascii()) == Some("a.example.com.".into()) {
            answer.add_answer(a("a.example.com.", 20, [192, 0, 2, 20]));
        } else {
            answer.metadata.response_code = ResponseCode::NXDomain;
        }
        Some(answer)
    }))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");

    let answer = tcp_ask(
        &mut stream,
        &query_bytes(10, "a.example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("first answer");
    assert_eq!(parse(&answer).metadata.id, 10);
    assert_eq!(upstream.sent().first(), Some(&answer));

    // Garbage in between is dropped without an answer; the connection goes on.
    write_frame(&mut stream, b"not dns at all")
        .await
        .expect("send garbage");

    let answer = tcp_ask(
        &mut stream,
        &query_bytes(11, "b.example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("second answer");
    let answer = parse(&answer);
    assert_eq!(answer.metadata.id, 11);
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    assert_eq!(
        sink.calls(),
        vec![Call {
            client: Ipv4Addr::LOCALHOST,
            name: "a.example.com".into(),
            addrs: vec![IpAddr::from([192, 0, 2, 20])],
            ttl: Duration::from_secs(20),
        }]
    );
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let upstream = FakeUpstream::start(answer_with(vec![], ResponseCode::NoError)).await;
    let limits = Limits {
        tcp_idle: Duration::from_millis(200),
        ..Limits::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed before the test timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    assert_eq!(Limits::default().tcp_idle, Duration::from_secs(10));
}

#[tokio::test]
async fn tcp_connections_beyond_the_limit_are_closed() {
    let upstream = FakeUpstream::start(answer_with(vec![], ResponseCode::NoError)).await;
    let limits = Limits {
        tcp_connections: 1,
        ..Limits::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on((Ipv4Addr::LOCALHOST, 0).into(), upstream.addr, sink, limits).await;
    let query = query_bytes(12, "example.com", RecordType::A);

    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    assert!(tcp_ask(&mut first, &query, WAIT).await.is_some());
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    // The first connection still works.
    assert!(tcp_ask(&mut first, &query, WAIT).await.is_some());
}

// ---------------------------------------------------------------------------------
// Validation and malformed input
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_gets_no_answer_and_does_not_reach_upstream() {
    let upstream = FakeUpstream::start(answer_with(
        vec![a("example.com.", 30, [192, 0, 2, 1])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink.clone()).await;

    let mut two_questions = Message::new(13, MessageType::Query, OpCode::Query);
    two_questions.add_query(Query::query(name("a.example."), RecordType::A));
    two_questions.add_query(Query::query(name("b.example."), RecordType::A));
    let no_question = Message::new(14, MessageType::Query, OpCode::Query);
    let mut a_response = Message::response(15, OpCode::Query);
    a_response.add_query(Query::query(name("a.example."), RecordType::A));
    let mut header_only = query_bytes(16, "example.com", RecordType::A);
    header_only.truncate(12);

    let mut samples: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 11],
        header_only,
        two_questions.to_vec().expect("encode"),
        no_question.to_vec().expect("encode"),
        a_response.to_vec().expect("encode"),
    ];
    let mut rng = rand::rng();
    for _ in 0..50 {
        let mut junk = vec![0u8; rng.random_range(1..600)];
        rng.fill(&mut junk[..]);
        samples.push(junk);
    }

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for sample in &samples {
        socket.send_to(sample, proxy.addr).await.expect("send");
    }
    let mut buf = vec![0u8; 65_535];
    let got = tokio::time::timeout(SILENCE, socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "no answer to garbage");

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for sample in samples.iter().take(20) {
        write_frame(&mut stream, sample).await.expect("send frame");
    }
    let got = tokio::time::timeout(SILENCE, stream.read(&mut buf[..2])).await;
    assert!(got.is_err(), "no answer to garbage over TCP");

    assert_eq!(upstream.queries.load(Ordering::SeqCst), 0);
    assert!(sink.calls().is_empty());

    // Still serving.
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(17, "example.com", RecordType::A),
        WAIT,
    )
    .await;
    assert!(answer.is_some());
    let answer = tcp_ask(
        &mut stream,
        &query_bytes(18, "example.com", RecordType::A),
        WAIT,
    )
    .await;
    assert_eq!(answer.map(|a| parse(&a).metadata.id), Some(18));
}

#[tokio::test]
async fn other_opcodes_are_refused_without_asking_upstream() {
    let upstream = FakeUpstream::start(answer_with(vec![], ResponseCode::NoError)).await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy(upstream.addr, sink).await;

    for (id, op_code) in [
        (20, OpCode::Notify),
        (21, OpCode::Update),
        (22, OpCode::Status),
    ] {
        let mut message = Message::new(id, MessageType::Query, op_code);
        message.add_query(Query::query(name("example.com."), RecordType::SOA));
        let answer = udp_ask(proxy.addr, &message.to_vec().expect("encode"), WAIT)
            .await
            .expect("an answer");
        let answer = parse(&answer);
        assert_eq!(answer.metadata.id, id);
        assert_eq!(answer.metadata.op_code, op_code);
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    }
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 0);
}

/// Random and mutated inputs straight into the parsers: no panic, and nothing that is
/// not a one-question query is accepted.
#[test]
fn parsers_survive_random_and_mutated_input() {
    let mut rng = rand::rng();
    let query = query_bytes(0x4242, "www.example.com", RecordType::AAAA);
    let mut answer_msg = Message::response(0x4242, OpCode::Query);
    answer_msg.add_query(Query::query(name("www.example.com."), RecordType::AAAA));
    answer_msg.add_answer(cname("www.example.com.", 60, "x.example.net."));
    answer_msg.add_answer(aaaa("x.example.net.", 30, Ipv6Addr::LOCALHOST));
    answer_msg.add_answer(a("x.example.net.", 30, [192, 0, 2, 1]));
    let answer = answer_msg.to_vec().expect("encode");
    let parsed_query = Message::from_vec(&query).expect("query parses");
    assert!(answers_query(&parsed_query, &answer));

    for round in 0..20_000 {
        let input = match round % 3 {
            0 => {
                let mut junk = vec![0u8; rng.random_range(0..300)];
                rng.fill(&mut junk[..]);
                junk
            }
            1 => mutate(&mut rng, &query),
            _ => mutate(&mut rng, &answer),
        };
        if let Some(Parsed::Forward(message)) = parse_query(&input) {
            assert_eq!(message.queries.len(), 1);
            assert_eq!(message.metadata.message_type, MessageType::Query);
            assert_eq!(message.metadata.op_code, OpCode::Query);
        }
        let info = inspect_answer(&input);
        assert!(info.addrs.is_empty() || info.rcode.is_some());
        let _ = answers_query(&parsed_query, &input);
        if let Ok(message) = Message::from_vec(&input)
            && let Some(q) = message.queries.first()
        {
            let _ = sink_name(q);
            let _ = error_answer(&message, ResponseCode::ServFail);
        }
    }
}

/// Flips, truncates or extends a valid message at random.
fn mutate(rng: &mut impl rand::Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    match rng.random_range(0..3) {
        0 => {
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
        }
        1 => out.truncate(rng.random_range(0..out.len())),
        _ => out.extend((0..rng.random_range(1..40)).map(|_| rng.random::<u8>())),
    }
    out
}

#[test]
fn answer_inspection_collects_addresses_and_min_ttl() {
    let mut message = Message::response(1, OpCode::Query);
    message.add_query(Query::query(name("x.example."), RecordType::A));
    message.add_answer(cname("x.example.", 5, "y.example."));
    message.add_answer(a("y.example.", 40, [192, 0, 2, 1]));
    message.add_answer(aaaa("y.example.", 50, Ipv6Addr::LOCALHOST));
    let info = inspect_answer(&message.to_vec().expect("encode"));
    assert_eq!(
        info,
        AnswerInfo {
            rcode: Some(ResponseCode::NoError),
            truncated: false,
            addrs: vec![
                IpAddr::from([192, 0, 2, 1]),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ],
            // The CNAME's TTL does not count: only address records do.
            min_ttl: 40,
        }
    );
}

#[test]
fn sink_names_are_lower_case_without_trailing_dot() {
    let q = Query::query(name("WWW.Example.COM."), RecordType::A);
    assert_eq!(sink_name(&q), "www.example.com");
    let q = Query::query(name("relative.Name"), RecordType::A);
    assert_eq!(sink_name(&q), "relative.name");
}

#[test]
fn only_ipv4_clients_are_sandboxes() {
    let v4: SocketAddr = "10.0.0.5:5353".parse().expect("addr");
    let mapped: SocketAddr = "[::ffff:10.0.0.5]:5353".parse().expect("addr");
    let v6: SocketAddr = "[2001:db8::5]:5353".parse().expect("addr");
    assert_eq!(sandbox_ipv4(v4), Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert_eq!(sandbox_ipv4(mapped), Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert_eq!(sandbox_ipv4(v6), None);
}

#[tokio::test]
async fn ipv6_clients_are_not_sandboxes_and_are_refused() {
    let listen = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    let bound = UdpSocket::bind(listen).await.is_ok();
    if !fluid_prereq::available("ipv6", bound, "no IPv6 loopback on this machine") {
        return;
    }
    let upstream = FakeUpstream::start(answer_with(
        vec![a("example.com.", 30, [192, 0, 2, 1])],
        ResponseCode::NoError,
    ))
    .await;
    let sink = Arc::new(RecordingSink::default());
    let proxy = start_proxy_on(listen, upstream.addr, sink.clone(), Limits::default()).await;
    let answer = udp_ask(
        proxy.addr,
        &query_bytes(30, "example.com", RecordType::A),
        WAIT,
    )
    .await
    .expect("an answer");
    assert_eq!(parse(&answer).metadata.response_code, ResponseCode::Refused);
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 0);
    assert!(sink.calls().is_empty());
}

// ---------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn serve_returns_on_shutdown() {
    let stop = CancellationToken::new();
    let sink: Arc<dyn ResolvedSink> = Arc::new(RecordingSink::default());
    let task = tokio::spawn(serve(
        (Ipv4Addr::LOCALHOST, 0).into(),
        (Ipv4Addr::LOCALHOST, 9).into(),
        sink,
        SandboxCaps::default(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("serve returned")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn serve_fails_when_the_address_is_taken() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let sink: Arc<dyn ResolvedSink> = Arc::new(RecordingSink::default());
    let result = serve(
        taken.local_addr().expect("addr"),
        (Ipv4Addr::LOCALHOST, 9).into(),
        sink,
        SandboxCaps::default(),
        CancellationToken::new(),
    )
    .await;
    assert!(result.is_err());
}
