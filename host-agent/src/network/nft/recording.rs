//! A kernel stand-in for unit tests: keeps the tables the applied batches describe
//! (tables, sets, chains, rules; elements are recorded, not kept per set) as JSON, and
//! the last batch, for the tests to read.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use nftables::schema::Nftables;
use nftables::types::NfFamily;
use serde_json::{Value, json};

use super::{NftBackend, NftError, family_name};

#[derive(Debug, Default)]
pub struct NftState {
    /// The last batch applied, as JSON.
    pub last: Option<Value>,
    /// (family, table) → listed objects.
    pub tables: BTreeMap<(String, String), Vec<Value>>,
    /// Batches applied since the start.
    pub applied: usize,
    /// The next applies fail.
    pub fail: bool,
}

#[derive(Debug, Default)]
pub struct RecordingNft {
    state: Mutex<NftState>,
}

impl RecordingNft {
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
        let st = self.lock();
        st.last
            .as_ref()
            .and_then(|b| b["nftables"].as_array())
            .map(|cmds| {
                cmds.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
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
impl NftBackend for RecordingNft {
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
        st.applied += 1;
        let cmds = v["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for cmd in cmds {
            let Some(cmd) = cmd.as_object() else { continue };
            for (verb, body) in cmd {
                let Some(body) = body.as_object() else {
                    continue;
                };
                for (kind, obj) in body {
                    let k = key(obj);
                    match (verb.as_str(), kind.as_str()) {
                        ("add", "table") => {
                            st.tables.entry(k).or_default();
                        }
                        ("delete", "table") => {
                            st.tables.remove(&k);
                        }
                        ("add", "chain" | "set" | "rule") => {
                            st.tables
                                .entry(k)
                                .or_default()
                                .push(json!({ kind.as_str(): obj }));
                        }
                        _ => {}
                    }
                }
            }
        }
        st.last = Some(v);
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
