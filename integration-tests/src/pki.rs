//! Certificates for a test fleet, made with `fluid-controller pki` (the same command
//! operators use).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use fluid_proto::tls::TlsFiles;

#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    controller_bin: PathBuf,
}

impl Pki {
    /// A new fleet CA and controller certificate in `dir`.
    pub fn init(controller_bin: &Path, dir: &Path) -> Result<Self> {
        run(
            controller_bin,
            &["pki", "init", "--dir", &dir.to_string_lossy()],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            controller_bin: controller_bin.to_owned(),
        })
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The controller's client identity.
    pub fn controller(&self) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert(),
            cert: self.dir.join("controller.pem"),
            key: self.dir.join("controller.key"),
        }
    }

    /// Issues a server certificate for agent `name` naming `sans`.
    pub fn agent(&self, name: &str, sans: &[&str]) -> Result<TlsFiles> {
        let dir = self.dir.to_string_lossy();
        let mut args = vec!["pki", "agent", "--dir", &dir, "--name", name];
        for s in sans {
            args.extend(["--san", s]);
        }
        run(&self.controller_bin, &args)?;
        Ok(TlsFiles {
            ca_cert: self.ca_cert(),
            cert: self.dir.join(format!("agent-{name}.pem")),
            key: self.dir.join(format!("agent-{name}.key")),
        })
    }
}

impl Pki {
    /// A client certificate signed by the fleet CA, but for another name than the
    /// controller's — made with openssl, outside the product.
    pub fn client_cert_for(&self, name: &str) -> Result<TlsFiles> {
        let key = self.dir.join(format!("client-{name}.key"));
        let csr = self.dir.join(format!("client-{name}.csr"));
        let cert = self.dir.join(format!("client-{name}.pem"));
        let ext = self.dir.join(format!("client-{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{name}\nextendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n"
            ),
        )?;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        run(
            Path::new("openssl"),
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        run(
            Path::new("openssl"),
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&self.ca_cert()),
                "-CAkey",
                &s(&self.dir.join("ca.key")),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ],
        )?;
        Ok(TlsFiles {
            ca_cert: self.ca_cert(),
            cert,
            key,
        })
    }
}

fn run(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
