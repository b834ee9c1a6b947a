//! The Tunnel RPC's message sequencing and byte bridge, apart from the service so it
//! can be tested with fake streams and a loopback socket.
//!
//! - [`first_open`]: the first input message must be `open` with a sandbox id and port
//!   22, within [`OPEN_WITHIN`]; anything else is INVALID_ARGUMENT.
//! - [`bridge`]: the rest of the input (`data`) is written to the TCP connection; when
//!   the input ends the connection's write side is shut down (the peer sees EOF). What
//!   the connection sends comes back as `data` messages; its EOF (or an error) ends the
//!   output. A later `open` or an empty message ends the call with INVALID_ARGUMENT.
//!   A client that goes away closes the connection.

use std::pin::Pin;
use std::time::Duration;

use fluid_proto::model::SandboxId;
use fluid_proto::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::sandboxes::tunnel::TUNNEL_PORT;

/// The stream a Tunnel returns.
pub type TunnelStream = Pin<Box<dyn Stream<Item = Result<pb::TunnelOutput, Status>> + Send>>;

/// How long a caller has to send `open`.
pub const OPEN_WITHIN: Duration = Duration::from_secs(30);
/// Bytes read from the connection per output message, at most.
const READ_CHUNK: usize = 64 * 1024;
/// Output messages queued before reading from the connection pauses.
const QUEUE_DEPTH: usize = 16;

/// A validated `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelOpen {
    pub sandbox_id: SandboxId,
    pub port: u32,
}

/// Reads the first message, which must be a valid `open` sent within [`OPEN_WITHIN`].
pub async fn first_open<S>(input: &mut S) -> Result<TunnelOpen, Status>
where
    S: Stream<Item = Result<pb::TunnelInput, Status>> + Unpin,
{
    let first = tokio::time::timeout(OPEN_WITHIN, input.next())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no open message within {} s",
                OPEN_WITHIN.as_secs()
            ))
        })?;
    match first {
        Some(Ok(pb::TunnelInput {
            kind: Some(pb::tunnel_input::Kind::Open(open)),
        })) => {
            let sandbox_id = SandboxId::parse("sandbox_id", &open.sandbox_id)?;
            if open.port != u32::from(TUNNEL_PORT) {
                return Err(Status::invalid_argument(format!(
                    "port: only {TUNNEL_PORT} can be tunnelled, not {}",
                    open.port
                )));
            }
            Ok(TunnelOpen {
                sandbox_id,
                port: open.port,
            })
        }
        Some(Err(status)) => Err(status),
        Some(Ok(_)) | None => Err(Status::invalid_argument("first message must be open")),
    }
}

/// Writes the client's data to the connection until the input ends (then shuts the
/// write side down), fails (the client went away) or breaks the protocol (the
/// refusal goes to `errors`, which ends the call).
async fn forward_input<S>(
    mut input: S,
    mut write: OwnedWriteHalf,
    errors: mpsc::Sender<Result<pb::TunnelOutput, Status>>,
) where
    S: Stream<Item = Result<pb::TunnelInput, Status>> + Unpin,
{
    use pb::tunnel_input::Kind;
    while let Some(m) = input.next().await {
        let refusal = match m {
            Ok(pb::TunnelInput {
                kind: Some(Kind::Data(bytes)),
            }) => {
                if let Err(e) = write.write_all(&bytes).await {
                    tracing::debug!("writing to a tunnel's connection: {e}");
                    return;
                }
                continue;
            }
            Ok(pb::TunnelInput {
                kind: Some(Kind::Open(_)),
            }) => "open may only be the first message of a tunnel",
            Ok(pb::TunnelInput { kind: None }) => "a TunnelInput must carry data",
            Err(status) => {
                tracing::debug!(code = ?status.code(), "a tunnel's input failed: {}", status.message());
                return;
            }
        };
        tracing::info!(op = "tunnel", "{refusal}");
        let _ = errors.send(Err(Status::invalid_argument(refusal))).await;
        return;
    }
    // The client closed its side: so does the connection's write side.
    if let Err(e) = write.shutdown().await {
        tracing::debug!("shutting down a tunnel's write side: {e}");
    }
}

/// Bridges the client's remaining `input` and `tcp` (see the module docs). `permit`
/// is held until the tunnel closes.
pub fn bridge<S>(input: S, tcp: TcpStream, permit: OwnedSemaphorePermit) -> TunnelStream
where
    S: Stream<Item = Result<pb::TunnelInput, Status>> + Unpin + Send + 'static,
{
    let (mut read, write) = tcp.into_split();
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let forwarder = tokio::spawn(forward_input(input, write, tx.clone()));
    tokio::spawn(async move {
        let _permit = permit;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut sent: u64 = 0;
        loop {
            let n = tokio::select! {
                n = read.read(&mut buf) => n,
                // The client went away, or the call ended with a refusal.
                () = tx.closed() => break,
            };
            let n = match n {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("reading from a tunnel's connection: {e}");
                    break;
                }
            };
            sent += u64::try_from(n).unwrap_or(0);
            let out = pb::TunnelOutput {
                data: buf[..n].to_vec(),
            };
            if tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
        // Done: stop reading input, which drops the forwarder's sender (so the output
        // ends here) and the connection's write side.
        forwarder.abort();
        tracing::info!(bytes_out = sent, "tunnel closed");
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pb::tunnel_input::Kind;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    use super::*;

    fn open(id: &str, port: u32) -> pb::TunnelInput {
        pb::TunnelInput {
            kind: Some(Kind::Open(pb::TunnelOpen {
                sandbox_id: id.into(),
                port,
            })),
        }
    }

    fn data(b: &[u8]) -> pb::TunnelInput {
        pb::TunnelInput {
            kind: Some(Kind::Data(b.to_vec())),
        }
    }

    #[tokio::test]
    async fn the_first_message_must_open_port_22_of_a_sandbox() {
        let mut s = tokio_stream::iter(vec![Ok(open("SBX-0123abcd", 22)), Ok(data(b"x"))]);
        let o = first_open(&mut s).await.expect("open");
        assert_eq!(o.sandbox_id.as_str(), "SBX-0123abcd");
        assert!(s.next().await.is_some(), "the rest is left for the bridge");

        for (first, needle) in [
            (vec![Ok(data(b"SSH-2.0"))], "first message must be open"),
            (
                vec![Ok(pb::TunnelInput { kind: None })],
                "first message must be open",
            ),
            (vec![], "first message must be open"),
            (vec![Ok(open("SBX-0123abcd", 80))], "only 22"),
            (vec![Ok(open("SBX-0123abcd", 0))], "only 22"),
            (vec![Ok(open("../etc", 22))], "sandbox_id"),
        ] {
            let e = first_open(&mut tokio_stream::iter(first))
                .await
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
        }
        let e = first_open(&mut tokio_stream::iter(vec![Err(Status::cancelled(
            "gone",
        ))]))
        .await
        .expect_err("failed stream");
        assert_eq!(e.code(), tonic::Code::Cancelled);
    }

    /// A loopback "sshd": the bridge's connection and the server's side of it.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    fn permit() -> (Arc<Semaphore>, OwnedSemaphorePermit) {
        let sem = Arc::new(Semaphore::new(1));
        let p = sem.clone().try_acquire_owned().expect("permit");
        (sem, p)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_closing_the_input_half_closes() {
        let (client, mut server) = pair().await;
        let (sem, p) = permit();
        let (in_tx, in_rx) = mpsc::channel(4);
        let mut out = bridge(ReceiverStream::new(in_rx), client, p);
        in_tx.send(Ok(data(b"hello "))).await.expect("send");
        in_tx.send(Ok(data(b"guest"))).await.expect("send");
        drop(in_tx);
        // The server reads everything, then EOF (the write side was shut down)...
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello guest");
        // ...and can still answer on its own side.
        server.write_all(b"SSH-2.0-test\r\n").await.expect("write");
        let o = out.next().await.expect("data").expect("ok");
        assert_eq!(o.data, b"SSH-2.0-test\r\n");
        drop(server);
        // The server's EOF ends the output, and the slot is given back.
        let end = tokio::time::timeout(Duration::from_secs(5), out.next()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        tokio::time::timeout(Duration::from_secs(5), async {
            while sem.available_permits() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the permit is returned");
    }

    #[tokio::test]
    async fn a_second_open_ends_the_call_and_the_connection() {
        let (client, mut server) = pair().await;
        let (_sem, p) = permit();
        let input = tokio_stream::iter(vec![Ok(data(b"a")), Ok(open("SBX-0123abcd", 22))])
            .chain(tokio_stream::pending());
        let mut out = bridge(input, client, p);
        let e = out.next().await.expect("an error").expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("first message"), "{}", e.message());
        drop(out);
        // The connection is closed: the server reads what came before, then EOF.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read");
        assert_eq!(got, b"a");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_closes_the_connection() {
        let (client, mut server) = pair().await;
        let (sem, p) = permit();
        let out = bridge(tokio_stream::pending(), client, p);
        drop(out);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read");
        assert!(got.is_empty());
        tokio::time::timeout(Duration::from_secs(5), async {
            while sem.available_permits() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the permit is returned");
    }
}
