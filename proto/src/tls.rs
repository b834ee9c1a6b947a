//! mTLS between the controller and its agents.
//!
//! One fleet CA signs everything. The controller's client certificate names
//! [`CONTROLLER_NAME`]; each agent's server certificate names the host (DNS name and/or
//! IP address) the controller dials. The agent refuses a handshake without a certificate
//! from the fleet CA, and refuses every call whose certificate is not the controller's;
//! the controller refuses an agent whose certificate does not name the address it dialled.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The subject name (DNS SAN) of the controller's client certificate.
pub const CONTROLLER_NAME: &str = "fluid-controller";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// PEM files that make up one end's identity in the fleet.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct TlsFiles {
    /// The fleet CA certificate.
    pub ca_cert: PathBuf,
    /// This end's certificate (chain).
    pub cert: PathBuf,
    /// This end's private key.
    pub key: PathBuf,
}

/// Loaded PEM material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            ca_pem: read(&self.ca_cert)?,
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
        })
    }
}

impl TlsMaterial {
    /// The agent's server side: a client certificate from the fleet CA is required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// The controller's client side. The agent's certificate must chain to the fleet CA
    /// and name `host` (the host part of the address dialled).
    pub fn client_config(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
    }
}

/// True when `cert` is valid for `name` (a DNS name or an IP address in its SANs).
/// The chain itself was already verified during the handshake.
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// gRPC interceptor for the agent: the peer must present the controller's certificate.
#[allow(clippy::result_large_err)]
pub fn require_controller(req: Request<()>) -> Result<Request<()>, Status> {
    require_peer(&req, CONTROLLER_NAME)?;
    Ok(req)
}

/// Checks that the request's TLS peer certificate names `name`.
#[allow(clippy::result_large_err)]
pub fn require_peer<T>(req: &Request<T>, name: &str) -> Result<(), Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    if cert_names(leaf, name) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "client certificate is not {name}'s"
        )))
    }
}
