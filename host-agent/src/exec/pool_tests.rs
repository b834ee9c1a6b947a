//! The pool against a real SSH server on loopback (russh's) that, like sshd with
//! `MaxSessions`, refuses session channels past a few per connection: concurrent
//! commands past that all succeed on more connections, and none in flight is disturbed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fluid_proto::model::{ExecEvent, ExecExit};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Certificate, PrivateKey};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::*;
use crate::exec::run::{self, Reopen};

/// Counts shared by every connection of the server.
#[derive(Clone, Default)]
struct Seen {
    connections: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Srv {
    max_sessions: usize,
    hold: Duration,
    seen: Seen,
}

struct Conn1 {
    max_sessions: usize,
    hold: Duration,
    seen: Seen,
    open: Arc<AtomicUsize>,
}

impl server::Server for Srv {
    type Handler = Conn1;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Conn1 {
        self.seen.connections.fetch_add(1, Ordering::SeqCst);
        Conn1 {
            max_sessions: self.max_sessions,
            hold: self.hold,
            seen: self.seen.clone(),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl server::Handler for Conn1 {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        _: &str,
        _: &Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.open.load(Ordering::SeqCst) >= self.max_sessions {
            self.seen.refused.fetch_add(1, Ordering::SeqCst);
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        } else {
            self.open.fetch_add(1, Ordering::SeqCst);
            reply.accept().await;
        }
        Ok(())
    }

    /// Every command "runs" for `hold`, then exits 0.
    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let handle = session.handle();
        let (hold, open) = (self.hold, self.open.clone());
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let _ = handle.exit_status_request(channel, 0).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }
}

fn cert_for(pool: &SshPool) -> String {
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    let ca = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
    let subject = pool.key().private().public_key().key_data().clone();
    let mut b = Builder::new([0u8; 16], subject, 0, u64::MAX / 2).expect("builder");
    b.cert_type(CertType::User).expect("type");
    b.valid_principal("root").expect("principal");
    b.key_id("test").expect("key id");
    b.sign(&ca).expect("sign").to_openssh().expect("openssh")
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<ExecEvent>) -> Option<ExecExit> {
    while let Some(e) = rx.recv().await {
        if let ExecEvent::Exit(x) = e {
            return Some(x);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_channels_go_to_other_connections_and_nothing_in_flight_fails() {
    let seen = Seen::default();
    let mut srv = Srv {
        max_sessions: 3,
        hold: Duration::from_millis(800),
        seen: seen.clone(),
    };
    let config = Arc::new(server::Config {
        keys: vec![PrivateKey::from(Ed25519Keypair::from_seed(&[3; 32]))],
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let _ = server::Server::run_on_socket(&mut srv, config, &listener).await;
    });

    // The pool would put 32 channels on one connection; the server takes 3.
    let mut pool = SshPool::new(AgentKey::generate("t").expect("key"), 32);
    pool.port = port;
    let pool = Arc::new(pool);
    let cert = cert_for(&pool);
    let id = SandboxId::parse("id", "SBX-0123abcd").expect("id");
    let commands = (0..10).map(|n| {
        let pool = pool.clone();
        let (cert, id) = (cert.clone(), id.clone());
        async move {
            let opened = pool
                .open_channel(&id, Ipv4Addr::LOCALHOST, None, &cert)
                .await?;
            let reopen = Reopen {
                pool: pool.clone(),
                id: id.clone(),
                ip: Ipv4Addr::LOCALHOST,
                known: None,
                certificate: cert.clone(),
            };
            let cmd = run::Command {
                command_id: format!("CMD-{n:08}"),
                script: "sleep".into(),
                stdin: Vec::new(),
                timeout: None,
                output_cap_bytes: 1024,
            };
            let rx = run::start(opened, cmd, reopen, ()).await?;
            Ok::<_, ExecError>(collect(rx).await)
        }
    });
    let results = futures::future::join_all(commands).await;
    for r in &results {
        let exit = r.as_ref().expect("started").as_ref().expect("an exit");
        assert_eq!((exit.exit_code, &exit.error), (0, &None), "{results:?}");
    }
    assert!(
        seen.refused.load(Ordering::SeqCst) > 0,
        "the server never refused a channel: the test proves nothing"
    );
    // 10 commands at 3 per connection: at least 4 connections, all still in the pool.
    let made = seen.connections.load(Ordering::SeqCst);
    assert!(made >= 4, "{made} connections");
    assert_eq!(pool.connections(&id), made);
    pool.forget(&id);
    server.abort();
}
