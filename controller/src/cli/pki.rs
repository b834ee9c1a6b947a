//! The fleet's PKI, for `fluid-controller pki …`: one CA; a client certificate for the
//! controller (DNS SAN `fluid-controller`, EKU clientAuth); a server certificate per
//! agent naming the DNS names / IP addresses the controller dials (EKU serverAuth);
//! a server certificate for the API listeners (`[api_tls]`, EKU serverAuth).
//! Private keys are written mode 0600, certificates 0644. A directory these commands
//! create is 0700; an existing one keeps its owner and group (a package may have made
//! it `root:<service group>`) but loses every permission for others and write
//! permission for its group.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

use crate::support::private_fs::private_dir;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::{Datelike as _, Utc};
use fluid_proto::model::Name;
use fluid_proto::tls::CONTROLLER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CONTROLLER_CERT: &str = "controller.pem";
pub const CONTROLLER_KEY: &str = "controller.key";

/// Years a certificate is valid.
const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 2;

/// Files written by one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `pki agent` output names for agent `name`.
pub fn agent_file_names(name: &str) -> (String, String) {
    (format!("agent-{name}.pem"), format!("agent-{name}.key"))
}

fn validity(params: &mut CertificateParams, years: i32) {
    let now = Utc::now();
    let yesterday = now - chrono::Duration::days(1);
    // `month()` is 1-12 and `day()` 1-31, so the casts cannot truncate.
    params.not_before = date_time_ymd(
        yesterday.year(),
        yesterday.month() as u8,
        yesterday.day() as u8,
    );
    params.not_after = date_time_ymd(
        now.year() + years,
        now.month() as u8,
        now.day().min(28) as u8,
    );
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    // Whatever the umask: exactly 0600.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// Creates the fleet CA and the controller's client certificate in `dir`. Refuses to
/// overwrite an existing CA key (that would orphan every issued certificate).
pub fn init(dir: &Path) -> anyhow::Result<(Written, Written)> {
    private_dir(dir)?;
    let ca_key_path = dir.join(CA_KEY);
    if ca_key_path.exists() {
        bail!(
            "{} exists: the fleet CA is already initialised",
            ca_key_path.display()
        );
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "fluid fleet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_YEARS);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![CONTROLLER_NAME.to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, CONTROLLER_NAME);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut leaf, LEAF_YEARS);
    let cert = leaf.signed_by(&key, &issuer)?;

    let ca_files = Written {
        cert: dir.join(CA_CERT),
        key: ca_key_path,
    };
    let controller_files = Written {
        cert: dir.join(CONTROLLER_CERT),
        key: dir.join(CONTROLLER_KEY),
    };
    write_private(&ca_files.key, &issuer.key().serialize_pem())?;
    write_public(&ca_files.cert, &ca_cert.pem())?;
    write_private(&controller_files.key, &key.serialize_pem())?;
    write_public(&controller_files.cert, &cert.pem())?;
    Ok((ca_files, controller_files))
}

/// Issues a server certificate for agent `name` naming `sans` (DNS names or IP
/// addresses), signed by the CA in `dir`; writes `agent-NAME.pem` / `agent-NAME.key`.
pub fn issue_agent(dir: &Path, name: &str, sans: &[String]) -> anyhow::Result<Written> {
    let name = Name::parse("name", name)?;
    if sans.is_empty() {
        bail!("at least one SAN (the DNS name or IP address the controller dials) is required");
    }
    let (cert_name, key_name) = agent_file_names(name.as_str());
    issue_server(dir, name.as_str(), sans, &cert_name, &key_name)
}

/// `pki api` output names.
pub const API_CERT: &str = "api.pem";
pub const API_KEY: &str = "api.key";

/// Issues the API listeners' server certificate (`[api_tls]`) naming `sans` (the DNS
/// names / IP addresses clients dial), signed by the CA in `dir`; writes `api.pem` /
/// `api.key`. Clients trust it with the fleet's `ca.pem` (`fluidctl --ca-cert`).
pub fn issue_api(dir: &Path, sans: &[String]) -> anyhow::Result<Written> {
    issue_server(dir, "fluid-api", sans, API_CERT, API_KEY)
}

fn issue_server(
    dir: &Path,
    common_name: &str,
    sans: &[String],
    cert_name: &str,
    key_name: &str,
) -> anyhow::Result<Written> {
    if sans.is_empty() {
        bail!("at least one SAN (the DNS name or IP address clients dial) is required");
    }
    if let Some(bad) = sans.iter().find(|s| !crate::support::addr::is_host_name(s)) {
        bail!("SAN {bad:?} is neither a DNS name nor an IP address");
    }
    private_dir(dir)?;
    let ca_pem = fs::read_to_string(dir.join(CA_CERT))
        .with_context(|| format!("reading {}", dir.join(CA_CERT).display()))?;
    let ca_key_pem = fs::read_to_string(dir.join(CA_KEY))
        .with_context(|| format!("reading {}", dir.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("parsing the CA certificate")?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(sans.to_vec())
        .with_context(|| format!("SANs {sans:?}: each must be a DNS name or an IP address"))?;
    leaf.distinguished_name
        .push(DnType::CommonName, common_name);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut leaf, LEAF_YEARS);
    let cert = leaf.signed_by(&key, &issuer)?;

    let out = Written {
        cert: dir.join(cert_name),
        key: dir.join(key_name),
    };
    write_private(&out.key, &key.serialize_pem())?;
    write_public(&out.cert, &cert.pem())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use fluid_proto::tls::cert_names;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::*;

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).expect("pem")
    }

    fn verifies(
        ca: &CertificateDer<'_>,
        leaf: &CertificateDer<'_>,
        usage: webpki::KeyUsage,
    ) -> bool {
        let anchor = webpki::anchor_from_trusted_cert(ca).expect("anchor");
        let ee = webpki::EndEntityCert::try_from(leaf).expect("ee");
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .is_ok()
    }

    #[test]
    fn issued_certs_chain_to_the_ca_and_carry_their_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, ctl) = init(dir.path()).expect("init");
        let agent = issue_agent(
            dir.path(),
            "kvm-1",
            &["kvm-1.lab".to_owned(), "10.0.0.5".to_owned()],
        )
        .expect("agent");
        assert_eq!(agent.cert, dir.path().join("agent-kvm-1.pem"));

        let ca_der = der(&ca.cert);
        let ctl_der = der(&ctl.cert);
        let agent_der = der(&agent.cert);
        assert!(verifies(&ca_der, &ctl_der, webpki::KeyUsage::client_auth()));
        assert!(verifies(
            &ca_der,
            &agent_der,
            webpki::KeyUsage::server_auth()
        ));
        // EKUs are distinct: the agent's cert is no client cert and vice versa.
        assert!(!verifies(
            &ca_der,
            &agent_der,
            webpki::KeyUsage::client_auth()
        ));
        assert!(!verifies(
            &ca_der,
            &ctl_der,
            webpki::KeyUsage::server_auth()
        ));

        assert!(cert_names(&ctl_der, CONTROLLER_NAME));
        assert!(cert_names(&agent_der, "kvm-1.lab"));
        assert!(cert_names(&agent_der, "10.0.0.5"));
        assert!(!cert_names(&agent_der, "kvm-2.lab"));

        let api = issue_api(
            dir.path(),
            &["api.example".to_owned(), "127.0.0.1".to_owned()],
        )
        .expect("api");
        let api_der = der(&api.cert);
        assert!(verifies(&ca_der, &api_der, webpki::KeyUsage::server_auth()));
        assert!(cert_names(&api_der, "api.example"));
        assert!(cert_names(&api_der, "127.0.0.1"));

        for key in [&ca.key, &ctl.key, &agent.key, &api.key] {
            let mode = fs::metadata(key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        for cert in [&ca.cert, &ctl.cert, &agent.cert, &api.cert] {
            let mode = fs::metadata(cert).expect("cert").permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", cert.display());
        }
    }

    #[test]
    fn the_directory_is_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fresh = tmp.path().join("a/pki");
        init(&fresh).expect("init");
        let mode = |p: &Path| fs::metadata(p).expect("dir").permissions().mode() & 0o7777;
        assert_eq!(mode(&fresh), 0o700);
        // An existing directory (a package's root:root 0711 or root:<group> 0750, or a
        // careless 0777) keeps its group's read access and others' traversal; nobody
        // else lists or writes it.
        for (before, after) in [
            (0o711, 0o711),
            (0o750, 0o750),
            (0o777, 0o751),
            (0o755, 0o751),
            (0o700, 0o700),
        ] {
            let d = tmp.path().join(format!("d{before:o}"));
            fs::create_dir(&d).expect("mkdir");
            fs::set_permissions(&d, fs::Permissions::from_mode(before)).expect("chmod");
            init(&d).expect("init");
            assert_eq!(mode(&d), after, "{before:o}");
        }
        // `pki agent` tightens it too, and keeps the packages' 0711.
        fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).expect("chmod");
        issue_agent(&fresh, "kvm-1", &["10.0.0.5".to_owned()]).expect("agent");
        assert_eq!(mode(&fresh), 0o751);
        fs::set_permissions(&fresh, fs::Permissions::from_mode(0o711)).expect("chmod");
        issue_agent(&fresh, "kvm-2", &["10.0.0.6".to_owned()]).expect("agent");
        assert_eq!(mode(&fresh), 0o711);
    }

    #[test]
    fn a_second_init_is_refused_and_bad_input_too() {
        let dir = tempfile::tempdir().expect("tmp");
        init(dir.path()).expect("init");
        assert!(init(dir.path()).is_err());
        assert!(issue_agent(dir.path(), "../x", &["a".into()]).is_err());
        assert!(issue_agent(dir.path(), "a", &[]).is_err());
        assert!(issue_agent(dir.path(), "a", &["not a name!".into()]).is_err());
        let empty = tempfile::tempdir().expect("tmp");
        assert!(issue_agent(empty.path(), "a", &["a".into()]).is_err());
    }
}
