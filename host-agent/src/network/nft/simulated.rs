//! A kernel stand-in, for unit tests and simulated hosts (`[simulated]`): keeps the
//! tables the applied batches describe (tables, sets, chains, rules; elements are
//! recorded, not kept per set), so the firewall's drift check reads what it applied.
//! Never the backend of a real host.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use nftables::schema::Nftables;
use nftables::types::NfFamily;
use serde_json::{Value, json};

use super::{NftBackend, NftError, family_name};

/// Batches kept in [`NftState::batches`].
pub const BATCHES_KEPT: usize = 64;

#[derive(Debug, Default)]
pub struct NftState {
    /// The last batches applied (at most [`BATCHES_KEPT`]), as JSON.
    pub batches: Vec<Value>,
    /// (family, table) → listed objects.
    pub tables: BTreeMap<(String, String), Vec<Value>>,
    /// Batches applied since the start.
    pub applied: usize,
    /// The next applies fail.
    pub fail: bool,
}

#[derive(Debug, Default)]
pub struct SimulatedNft {
    state: Mutex<NftState>,
}

impl SimulatedNft {
    pub fn lock(&self) -> MutexGuard<'_, NftState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What someone running `nft delete table …` would leave.
    pub fn delete_tables(&self) {
        self.lock().tables.clear();
    }

    pub fn applied(&self) -> usize {
        self.lock().applied
    }

    /// The last batch, one command per line.
    pub fn last_batch(&self) -> String {
        self.lock()
            .batches
            .last()
            .and_then(|b| b["nftables"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn key(obj: &Value) -> (String, String) {
    let s = |k: &str| obj[k].as_str().unwrap_or_default().to_owned();
    let table = if obj.get("table").is_some_and(Value::is_string) {
        s("table")
    } else {
        s("name")
    };
    (s("family"), table)
}

#[async_trait]
impl NftBackend for SimulatedNft {
    async fn apply(&self, batch: &Nftables<'static>) -> Result<(), NftError> {
        let v = serde_json::to_value(batch).map_err(|e| NftError::Output(e.to_string()))?;
        let mut st = self.lock();
        if st.fail {
            return Err(NftError::Failed {
                program: "simulated nft".into(),
                what: "apply",
                detail: "refused".into(),
            });
        }
        if st.batches.len() >= BATCHES_KEPT {
            st.batches.remove(0);
        }
        st.batches.push(v.clone());
        st.applied += 1;
        for cmd in v["nftables"].as_array().cloned().unwrap_or_default() {
            for (verb, body) in cmd.as_object().cloned().unwrap_or_default() {
                for (kind, obj) in body.as_object().cloned().unwrap_or_default() {
                    let k = key(&obj);
                    match (verb.as_str(), kind.as_str()) {
                        ("add", "table") => {
                            st.tables.entry(k).or_default();
                        }
                        ("delete", "table") => {
                            st.tables.remove(&k);
                        }
                        ("add", "chain" | "set" | "rule") => {
                            st.tables.entry(k).or_default().push(json!({ kind: obj }));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    async fn list_table(&self, family: NfFamily, table: &str) -> Result<Option<Value>, NftError> {
        let k = (family_name(family).to_owned(), table.to_owned());
        Ok(self
            .lock()
            .tables
            .get(&k)
            .map(|objs| json!({ "nftables": objs })))
    }
}
