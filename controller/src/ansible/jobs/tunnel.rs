//! How ansible reaches a sandbox: the controller cannot route to VM networks, so a job
//! opens a loopback TCP listener for its lifetime and bridges every connection to the
//! sandbox's SSH port through its agent (`Tunnel`, over the mTLS channel: the agent
//! authenticates the controller, sshd authenticates the job's certificate).
//!
//! The listener binds `127.0.0.1:0` and lives as long as its [`TunnelListener`];
//! dropping it stops accepting and closes every bridged connection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::agents::{AgentError, TunnelInputStream, TunnelStream};

/// Opens one tunnel to the sandbox's port 22, `input` flowing into it.
pub type TunnelOpener = Arc<
    dyn Fn(TunnelInputStream) -> BoxFuture<'static, Result<TunnelStream, AgentError>> + Send + Sync,
>;

/// Bytes read from a local connection at once.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered towards the agent per connection.
const INPUT_BUFFER: usize = 16;

/// A loopback listener bridging connections to a sandbox's SSH port.
#[derive(Debug)]
pub struct TunnelListener {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelListener {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl TunnelListener {
    /// Binds `127.0.0.1:0` and bridges each accepted connection through `open`.
    pub async fn start(open: TunnelOpener, label: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((sock, _)) => {
                            conns.spawn(bridge(sock, open.clone(), label.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(tunnel = %label, error = %e, "accepting a tunnel connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { port, task })
    }

    /// The local port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A receiver as a stream.
struct Chunks(mpsc::Receiver<Vec<u8>>);

impl futures::Stream for Chunks {
    type Item = Vec<u8>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<u8>>> {
        self.0.poll_recv(cx)
    }
}

/// Copies one local connection to a tunnel and back until either side ends.
async fn bridge(sock: TcpStream, open: TunnelOpener, label: String) {
    let (mut rd, mut wr) = sock.into_split();
    let (tx, rx) = mpsc::channel(INPUT_BUFFER);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the tunnel's input: the agent closes its connection.
    });
    let mut out = match open(Chunks(rx).boxed()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(tunnel = %label, error = %e, "opening a tunnel to the sandbox's SSH port");
            reader.abort();
            return;
        }
    };
    while let Some(item) = out.next().await {
        match item {
            Ok(bytes) => {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(tunnel = %label, error = %e, "tunnel ended");
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
    reader.abort();
}

/// What the probe says first: an SSH client's identification string (sshd answers
/// with its own whoever speaks first).
pub const PROBE_IDENT: &[u8] = b"SSH-2.0-fluid-probe\r\n";

/// Whether the sandbox's sshd answers through a tunnel: an identification string
/// (`SSH-…`) comes back within `within`.
pub async fn ssh_answers(open: &TunnelOpener, within: Duration) -> bool {
    // The probe's identification, then an input that stays open while it waits.
    let input = futures::stream::iter([PROBE_IDENT.to_vec()]).chain(futures::stream::pending());
    let attempt = async {
        let mut out = open(input.boxed()).await.ok()?;
        let mut got = Vec::new();
        while got.len() < 4 {
            match out.next().await {
                Some(Ok(b)) => got.extend_from_slice(&b),
                _ => return None,
            }
        }
        Some(got.starts_with(b"SSH-"))
    };
    matches!(tokio::time::timeout(within, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel whose far end greets like sshd and then echoes its input upper-cased.
    fn echo_opener(opened: Arc<std::sync::atomic::AtomicUsize>) -> TunnelOpener {
        Arc::new(move |input: TunnelInputStream| {
            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let greeting = futures::stream::iter([Ok(b"SSH-2.0-fake\r\n".to_vec())]);
                let echo = input.map(|b| Ok(b.to_ascii_uppercase()));
                Ok(greeting.chain(echo).boxed())
            })
        })
    }

    #[tokio::test]
    async fn connections_are_bridged_both_ways() {
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = TunnelListener::start(echo_opener(opened.clone()), "t".into())
            .await
            .expect("listen");
        for _ in 0..2 {
            let mut c = TcpStream::connect(("127.0.0.1", l.port()))
                .await
                .expect("connect");
            let mut banner = [0u8; 14];
            c.read_exact(&mut banner).await.expect("banner");
            assert_eq!(&banner, b"SSH-2.0-fake\r\n");
            c.write_all(b"hello").await.expect("write");
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await.expect("echo");
            assert_eq!(&back, b"HELLO");
            // Closing our side ends the tunnel's input, which ends its output.
            c.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.expect("eof");
            assert!(rest.is_empty());
        }
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(ssh_answers(&echo_opener(opened), Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_dropped_listener_refuses_and_a_silent_sshd_is_not_ready() {
        let failing: TunnelOpener = Arc::new(|_| {
            Box::pin(async {
                Err(AgentError::Unavailable {
                    host: "h".into(),
                    message: "down".into(),
                })
            })
        });
        assert!(!ssh_answers(&failing, Duration::from_secs(1)).await);
        let silent: TunnelOpener =
            Arc::new(|_| Box::pin(async { Ok(futures::stream::pending().boxed()) }));
        assert!(!ssh_answers(&silent, Duration::from_millis(200)).await);

        let l = TunnelListener::start(failing, "t".into())
            .await
            .expect("listen");
        let port = l.port();
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut rest = Vec::new();
        // The tunnel cannot open: the connection is closed.
        c.read_to_end(&mut rest).await.expect("closed");
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    }
}
