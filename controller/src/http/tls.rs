//! TLS on the API listeners (`[api_tls]`): rustls for REST, tonic's rustls for the
//! public gRPC API, both from one PEM certificate chain and key.
//!
//! REST: a [`TlsListener`] that axum serves like a `TcpListener`. Handshakes run in
//! their own tasks (at most [`MAX_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a client that opens a connection and says nothing
//! delays no one else. A plain-HTTP request to a TLS port fails its handshake and the
//! connection is closed without an answer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ApiTlsConfig;

/// Handshakes in progress at once on one listener; further connections are closed.
pub const MAX_HANDSHAKES: usize = 256;
/// A client has this long to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The loaded `[api_tls]` identity.
#[derive(Clone)]
pub struct ApiTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    rest: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls").finish_non_exhaustive()
    }
}

impl ApiTls {
    /// Reads and checks the certificate chain and key (a mismatch is refused here, at
    /// start, not at the first handshake).
    pub fn load(cfg: &ApiTlsConfig) -> anyhow::Result<Self> {
        let cert_pem = std::fs::read(&cfg.cert)
            .with_context(|| format!("api_tls.cert: reading {}", cfg.cert.display()))?;
        let key_pem = std::fs::read(&cfg.key)
            .with_context(|| format!("api_tls.key: reading {}", cfg.key.display()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("api_tls.cert: {} is not PEM", cfg.cert.display()))?;
        if certs.is_empty() {
            bail!("api_tls.cert: {} holds no certificate", cfg.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("api_tls.key: {} holds no private key", cfg.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut rest = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("api_tls: TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("api_tls: the key does not match the certificate")?;
        rest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            rest: Arc::new(rest),
        })
    }

    /// The public gRPC listener's configuration (tonic's rustls).
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// Wraps a bound REST listener.
    pub fn listener(&self, tcp: TcpListener) -> io::Result<TlsListener> {
        TlsListener::new(tcp, TlsAcceptor::from(self.rest.clone()))
    }
}

/// A TCP listener whose connections are TLS streams once their handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the listening socket with the listener (e.g. at a graceful shutdown).
        self.acceptor.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, as axum does.
                tracing::warn!(error = %e, "accepting a REST connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in progress: connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never stops while the listener lives; should it end,
            // accept nothing more (axum then only drains).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_identity(dir: &std::path::Path, name: &str) -> ApiTlsConfig {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let c = dir.join("api.pem");
        let k = dir.join("api.key");
        std::fs::write(&c, cert.pem()).expect("cert");
        std::fs::write(&k, key.serialize_pem()).expect("key");
        ApiTlsConfig { cert: c, key: k }
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = write_identity(dir.path(), "localhost");
        ApiTls::load(&cfg).expect("valid pair");

        let other = tempfile::tempdir().expect("tmp");
        let mismatched = ApiTlsConfig {
            cert: cfg.cert.clone(),
            key: write_identity(other.path(), "x").key,
        };
        let e = ApiTls::load(&mismatched).expect_err("mismatch").to_string();
        assert!(e.contains("does not match"), "{e}");

        let missing = ApiTlsConfig {
            cert: dir.path().join("nope.pem"),
            key: cfg.key.clone(),
        };
        let e = format!("{:#}", ApiTls::load(&missing).expect_err("missing"));
        assert!(e.contains("api_tls.cert"), "{e}");

        std::fs::write(dir.path().join("empty.pem"), "").expect("write");
        let empty = ApiTlsConfig {
            cert: dir.path().join("empty.pem"),
            key: cfg.key.clone(),
        };
        let e = ApiTls::load(&empty).expect_err("empty").to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
