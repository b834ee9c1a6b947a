//! The agent's local state: one record per sandbox, in redb (`state_dir/agent.redb`).
//!
//! What we store, and why: the sandbox's intent as this host accepted it (id, name,
//! image, size), and the identity we gave it (domain uuid, MAC, overlay path, how it
//! boots), so the domain can be found, redefined after a loss, and cleaned up
//! completely. Everything observable (run state, IP) is read from libvirt; the last
//! seen IP is only a hint. A record is written *before* its domain is defined, so a
//! crash mid-create leaves something the reconciler can clean up.
//!
//! The network side is intent too: the egress allow-list, and the address the
//! firewall admits for the sandbox (its lease as learned), so a restarted agent
//! restores both before any sandbox traffic is re-evaluated.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fluid_proto::model::{EgressPolicy, Name, SandboxId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::hypervisor::Boot;
use crate::network::tap_name;

/// Sandbox id → JSON-encoded [`SandboxRecord`].
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub name: Name,
    pub image: Name,
    pub cpus: u32,
    pub memory_mb: u64,
    pub mac: String,
    pub domain_uuid: String,
    pub overlay_path: PathBuf,
    pub network: Name,
    pub boot: Boot,
    pub created_at_unix: i64,
    /// Set once the domain was started; a stopped domain that never ran is "created".
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
    /// Why the sandbox cannot run (e.g. its overlay was lost).
    #[serde(default)]
    pub error: Option<String>,
    /// OpenSSH public keys of the user CAs the guest's sshd trusts (given to the guest
    /// as SMBIOS OEM strings, so a redefine keeps them).
    #[serde(default)]
    pub ssh_user_ca_keys: Vec<String>,
    /// The guest's SSH host key (OpenSSH public line), learned on the first connection
    /// (trust on first use); a different key later is refused.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// What the sandbox may reach beyond the baseline (empty: sealed).
    #[serde(default, with = "stored_policy")]
    pub egress: EgressPolicy,
    /// The IPv4 address the firewall admits from the sandbox: its DHCP lease, learned by
    /// the agent; cleared when it stops. `None`: only DHCP gets out.
    #[serde(default)]
    pub known_ip: Option<Ipv4Addr>,
    /// The address the agent reserved for the sandbox: a static DHCP host entry
    /// (`<host mac=… ip=…/>`) in the libvirt network from create to destroy, so the
    /// guest's DHCP can get no other address and nobody else can get this one.
    /// `None`: a sandbox created before static leases (dynamic lease).
    #[serde(default)]
    pub static_ip: Option<Ipv4Addr>,
    /// The memory template (`crate::templates`, its folder's name) the overlay is
    /// backed by; `None`: backed by the image itself.
    #[serde(default)]
    pub template: Option<String>,
    /// How it first started: `boot` (cold), `restore` (from `template`); `None` before
    /// its first start (or for a sandbox of an older agent).
    #[serde(default)]
    pub start_path: Option<String>,
    /// An idle member of this host's warm pool (`crate::sandboxes::warm`): not the
    /// controller's yet, never listed, removed when the agent starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
    /// The domain's tap device, when it is not [`tap_name`] of `id` (a sandbox claimed
    /// from the warm pool keeps its pool member's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The sandbox's name, when it is not the domain's `name` (a sandbox claimed from
    /// the warm pool keeps its pool member's domain, and libvirt renames no running
    /// domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Name>,
}

impl SandboxRecord {
    /// The domain's tap device.
    pub fn tap(&self) -> String {
        self.tap.clone().unwrap_or_else(|| tap_name(&self.id))
    }

    /// The sandbox's name (its guest's hostname): what the controller asked for.
    pub fn sandbox_name(&self) -> &Name {
        self.hostname.as_ref().unwrap_or(&self.name)
    }
}

/// The allow-list as stored: plain fields, checked again when read back.
mod stored_policy {
    use fluid_proto::model::{Destination, EgressPolicy, EgressRule, parse_protocol};
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct StoredRule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cidr: Option<IpNet>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    }

    pub fn serialize<S: Serializer>(p: &EgressPolicy, s: S) -> Result<S::Ok, S::Error> {
        p.allow
            .iter()
            .map(|r| {
                let (cidr, domain) = match &r.destination {
                    Destination::Cidr(n) => (Some(*n), None),
                    Destination::Domain(d) => (None, Some(d.clone())),
                };
                StoredRule {
                    cidr,
                    domain,
                    protocol: r.protocol.map(|p| p.as_str().to_owned()),
                    port: r.port,
                }
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EgressPolicy, D::Error> {
        use serde::de::Error as _;
        let stored = Vec::<StoredRule>::deserialize(d)?;
        let rules = stored
            .into_iter()
            .map(|r| {
                let destination = match (r.cidr, r.domain) {
                    (Some(n), None) => Destination::Cidr(n),
                    (None, Some(d)) => Destination::Domain(
                        fluid_proto::model::check_domain("domain", &d).map_err(D::Error::custom)?,
                    ),
                    _ => return Err(D::Error::custom("an egress rule needs cidr or domain")),
                };
                let protocol = parse_protocol("protocol", r.protocol.as_deref().unwrap_or(""))
                    .map_err(D::Error::custom)?;
                EgressRule::new(destination, protocol, r.port).map_err(D::Error::custom)
            })
            .collect::<Result<Vec<_>, _>>()?;
        EgressPolicy::new(rules).map_err(D::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(String);

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

/// The redb store. Calls run on the blocking pool, never on the async runtime.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateStore")
    }
}

impl StateStore {
    /// Opens (or creates) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StateError> {
        let path = path.to_owned();
        let db = tokio::task::spawn_blocking(move || {
            let db = Database::create(&path)
                .map_err(|e| StateError(format!("{}: {e}", path.display())))?;
            let tx = db.begin_write().map_err(err)?;
            tx.open_table(SANDBOXES).map_err(err)?;
            tx.commit().map_err(err)?;
            Ok::<_, StateError>(db)
        })
        .await
        .map_err(err)??;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(err)?
    }

    /// Inserts or replaces the record for `record.id`.
    pub async fn put(&self, record: &SandboxRecord) -> Result<(), StateError> {
        let key = record.id.to_string();
        let value = serde_json::to_vec(record).map_err(err)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            tx.open_table(SANDBOXES)
                .map_err(err)?
                .insert(key.as_str(), value.as_slice())
                .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    pub async fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StateError> {
        let key = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(err)?;
            let table = tx.open_table(SANDBOXES).map_err(err)?;
            match table.get(key.as_str()).map_err(err)? {
                Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(err),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every record, ordered by id. An unreadable record is logged and skipped.
    pub async fn list(&self) -> Result<Vec<SandboxRecord>, StateError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(err)?;
            let table = tx.open_table(SANDBOXES).map_err(err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                match serde_json::from_slice(v.value()) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::error!(key = k.value(), "unreadable sandbox record: {e}"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Replaces the record `old` with `record` (another id) in one transaction: a warm
    /// pool member becoming the sandbox that claimed it.
    pub async fn rekey(&self, old: &SandboxId, record: &SandboxRecord) -> Result<(), StateError> {
        let (old, key) = (old.to_string(), record.id.to_string());
        let value = serde_json::to_vec(record).map_err(err)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut table = tx.open_table(SANDBOXES).map_err(err)?;
                table.insert(key.as_str(), value.as_slice()).map_err(err)?;
                table.remove(old.as_str()).map_err(err)?;
            }
            tx.commit().map_err(err)
        })
        .await
    }

    /// Removes a record; true if it existed.
    pub async fn remove(&self, id: &SandboxId) -> Result<bool, StateError> {
        let key = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            let existed = tx
                .open_table(SANDBOXES)
                .map_err(err)?
                .remove(key.as_str())
                .map_err(err)?
                .is_some();
            tx.commit().map_err(err)?;
            Ok(existed)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) fn test_record(id: &str, name: &str) -> SandboxRecord {
    let n = |s: &str| Name::parse("n", s).expect("name");
    SandboxRecord {
        id: SandboxId::parse("id", id).expect("id"),
        name: n(name),
        image: n("debian-12"),
        cpus: 1,
        memory_mb: 512,
        mac: "52:54:00:00:00:01".into(),
        domain_uuid: uuid::Uuid::new_v4().to_string(),
        overlay_path: PathBuf::from(format!("/tmp/{id}.qcow2")),
        network: n("default"),
        boot: Boot::Disk,
        created_at_unix: 1,
        started: false,
        last_ip: None,
        error: None,
        ssh_user_ca_keys: Vec::new(),
        ssh_host_key: None,
        egress: EgressPolicy::default(),
        known_ip: None,
        static_ip: None,
        template: None,
        start_path: None,
        pooled: false,
        tap: None,
        hostname: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_remove_and_reopen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("agent.redb");
        let store = StateStore::open(&path).await.expect("open");
        let a = test_record("SBX-aaaaaaaa", "a");
        let mut b = test_record("SBX-bbbbbbbb", "b");
        store.put(&b).await.expect("put");
        store.put(&a).await.expect("put");
        b.last_ip = Some(Ipv4Addr::new(192, 168, 122, 7));
        store.put(&b).await.expect("replace");
        assert_eq!(store.get(&a.id).await.expect("get"), Some(a.clone()));
        let ids: Vec<_> = store
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![a.id.clone(), b.id.clone()]);
        assert!(store.remove(&a.id).await.expect("remove"));
        assert!(!store.remove(&a.id).await.expect("remove again"));
        drop(store);
        let store = StateStore::open(&path).await.expect("reopen");
        assert_eq!(store.get(&b.id).await.expect("get"), Some(b));
        assert_eq!(store.get(&a.id).await.expect("get"), None);
    }

    #[test]
    fn records_without_the_ssh_fields_still_read() {
        let mut old = serde_json::to_value(test_record("SBX-aaaaaaaa", "a")).expect("json");
        let obj = old.as_object_mut().expect("object");
        obj.remove("ssh_user_ca_keys");
        obj.remove("ssh_host_key");
        obj.remove("egress");
        obj.remove("known_ip");
        let r: SandboxRecord = serde_json::from_value(old).expect("old record");
        assert!(r.ssh_user_ca_keys.is_empty());
        assert_eq!(r.ssh_host_key, None);
        assert!(r.egress.allow.is_empty());
        assert_eq!(r.known_ip, None);
    }

    #[test]
    fn egress_policies_round_trip() {
        let mut r = test_record("SBX-aaaaaaaa", "a");
        r.egress = EgressPolicy::new(vec![
            crate::network::allow::parse_rule("10.0.0.0/8 tcp/443").expect("rule"),
            crate::network::allow::parse_rule("example.org udp").expect("rule"),
            crate::network::allow::parse_rule("2001:db8::/32").expect("rule"),
        ])
        .expect("policy");
        r.known_ip = Some(Ipv4Addr::new(192, 168, 122, 9));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(
            json["egress"],
            serde_json::json!([
                {"cidr": "10.0.0.0/8", "protocol": "tcp", "port": 443},
                {"cidr": "2001:db8::/32"},
                {"domain": "example.org", "protocol": "udp"},
            ])
        );
        let back: SandboxRecord = serde_json::from_value(json).expect("back");
        assert_eq!(back, r);
        let mut bad = serde_json::to_value(&r).expect("json");
        bad["egress"] = serde_json::json!([{"cidr": "10.0.0.0/8", "port": 80}]);
        assert!(serde_json::from_value::<SandboxRecord>(bad).is_err());
    }
}
