//! Trust on first use for sandbox host keys, and the russh client handler that
//! applies it.
//!
//! The first connection to a sandbox learns its host key (the agent keeps it in the
//! sandbox's record); every later connection must present the same key, or it is
//! refused: a different key means another machine answers at the sandbox's address.

use std::sync::{Arc, Mutex};

use russh::keys::{PublicKey, PublicKeyOrCertificate};

/// What a presented host key means against the remembered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing remembered yet: trust it and remember it.
    FirstUse,
    /// The remembered key.
    Known,
    /// Not the remembered key: refuse.
    Changed,
}

/// Compares key material only (algorithm and key; comments do not matter).
pub fn verdict(known: Option<&PublicKey>, presented: &PublicKey) -> Verdict {
    match known {
        None => Verdict::FirstUse,
        Some(k) if k.key_data() == presented.key_data() => Verdict::Known,
        Some(_) => Verdict::Changed,
    }
}

/// The host key inside what the server presented (a host certificate's key counts as
/// the host key; the agent does not trust host CAs).
pub fn presented_key(p: &PublicKeyOrCertificate) -> PublicKey {
    match p {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
        PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
    }
}

/// The russh client handler: checks the server's key with [`verdict`] and records
/// what was presented, so the caller can tell a changed key from other failures and
/// remember a first-use key.
#[derive(Debug)]
pub struct TofuHandler {
    known: Option<PublicKey>,
    presented: Arc<Mutex<Option<PublicKey>>>,
}

impl TofuHandler {
    /// The handler, and where it leaves the key the server presented.
    pub fn new(known: Option<PublicKey>) -> (Self, Arc<Mutex<Option<PublicKey>>>) {
        let presented = Arc::new(Mutex::new(None));
        (
            Self {
                known,
                presented: presented.clone(),
            },
            presented,
        )
    }
}

impl russh::client::Handler for TofuHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = presented_key(server_public_key);
        let v = verdict(self.known.as_ref(), &key);
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(v != Verdict::Changed)
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::{PrivateKey, PublicKey};

    use super::*;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    #[test]
    fn first_use_then_known_then_changed() {
        let a = key(1);
        let b = key(2);
        assert_eq!(verdict(None, &a), Verdict::FirstUse);
        assert_eq!(verdict(Some(&a), &a), Verdict::Known);
        assert_eq!(verdict(Some(&a), &b), Verdict::Changed);
        // A different comment is the same key.
        let mut a2 = a.clone();
        a2.set_comment("root@elsewhere");
        assert_eq!(verdict(Some(&a), &a2), Verdict::Known);
        // Through the OpenSSH line the record keeps.
        let line = a.to_openssh().expect("openssh");
        let back = PublicKey::from_openssh(&line).expect("parse");
        assert_eq!(verdict(Some(&back), &a), Verdict::Known);
    }

    #[tokio::test]
    async fn the_handler_refuses_a_changed_key_and_reports_what_it_saw() {
        use russh::client::Handler as _;
        let (mut h, seen) = TofuHandler::new(Some(key(1)));
        let presented = PublicKeyOrCertificate::PublicKey {
            key: key(2),
            hash_alg: None,
        };
        assert!(!h.check_server_key(&presented).await.expect("check"));
        assert_eq!(
            seen.lock()
                .expect("lock")
                .as_ref()
                .map(|k| k.key_data().clone()),
            Some(key(2).key_data().clone())
        );
        let (mut h, _) = TofuHandler::new(None);
        assert!(h.check_server_key(&presented).await.expect("check"));
    }
}
