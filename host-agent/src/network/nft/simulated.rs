//! The nftables of a simulated host (`[simulated]`, control-plane scale tests): each
//! table's chains, sets and rules counted from the typed batches, without serialising
//! them, so the firewall's drift check reads back what it applied. Never the backend of
//! a real host (unit tests use the recording stand-in, which keeps what was applied).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;
use serde_json::{Value, json};

use super::{NftBackend, NftError, family_name};

/// What a table holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    chains: usize,
    sets: usize,
    rules: usize,
}

#[derive(Debug, Default)]
pub struct SimulatedNft {
    /// (family, table) → what it holds.
    tables: Mutex<HashMap<(&'static str, String), Held>>,
}

#[async_trait]
impl NftBackend for SimulatedNft {
    async fn apply(&self, batch: &Nftables<'static>) -> Result<(), NftError> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        for obj in batch.objects.iter() {
            let NfObject::CmdObject(cmd) = obj else {
                continue;
            };
            match cmd {
                NfCmd::Add(o) => {
                    let (key, bump): ((&'static str, String), fn(&mut Held)) = match o {
                        NfListObject::Table(t) => {
                            ((family_name(t.family), t.name.to_string()), |_| {})
                        }
                        NfListObject::Chain(c) => {
                            ((family_name(c.family), c.table.to_string()), |h| {
                                h.chains += 1
                            })
                        }
                        NfListObject::Set(s) => {
                            ((family_name(s.family), s.table.to_string()), |h| {
                                h.sets += 1
                            })
                        }
                        NfListObject::Rule(r) => {
                            ((family_name(r.family), r.table.to_string()), |h| {
                                h.rules += 1
                            })
                        }
                        _ => continue,
                    };
                    bump(tables.entry(key).or_default());
                }
                NfCmd::Delete(NfListObject::Table(t)) => {
                    tables.remove(&(family_name(t.family), t.name.to_string()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A listing with as many chains, sets and rules as the table holds (their
    /// contents are not kept).
    async fn list_table(&self, family: NfFamily, table: &str) -> Result<Option<Value>, NftError> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tables
            .get(&(family_name(family), table.to_owned()))
            .map(|h| {
                let items: Vec<Value> = std::iter::repeat_n(json!({"chain": {}}), h.chains)
                    .chain(std::iter::repeat_n(json!({"set": {}}), h.sets))
                    .chain(std::iter::repeat_n(json!({"rule": {}}), h.rules))
                    .collect();
                json!({ "nftables": items })
            }))
    }
}
