//! Users and groups of a disk state, from its `/etc/passwd` and `/etc/group`.

use std::collections::BTreeMap;

use ext4_view::Ext4;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::files::read_fact;

/// Larger account databases are refused (`TooLarge`) rather than read.
const MAX_ACCOUNT_FILE: u64 = 16 * 1024 * 1024;

/// Names of uids and gids (the first line with an id wins, like `getpwuid`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    /// uid → user name.
    pub users: BTreeMap<u32, String>,
    /// gid → group name.
    pub groups: BTreeMap<u32, String>,
}

impl Accounts {
    /// Reads both files; a missing file gives no names.
    pub(crate) fn read(fs: &Ext4) -> Result<Self> {
        let users = read_fact(fs, "/etc/passwd", MAX_ACCOUNT_FILE)?;
        let groups = read_fact(fs, "/etc/group", MAX_ACCOUNT_FILE)?;
        Ok(Self {
            users: users.map(|b| parse_id_file(&b)).unwrap_or_default(),
            groups: groups.map(|b| parse_id_file(&b)).unwrap_or_default(),
        })
    }

    /// The user name of `uid`, or empty.
    pub fn user(&self, uid: u32) -> &str {
        self.users.get(&uid).map_or("", String::as_str)
    }

    /// The group name of `gid`, or empty.
    pub fn group(&self, gid: u32) -> &str {
        self.groups.get(&gid).map_or("", String::as_str)
    }
}

/// `name:x:id:…` lines (passwd and group share the first three fields). Lines that do not
/// parse (comments, NIS `+` entries, junk) are skipped.
pub(crate) fn parse_id_file(bytes: &[u8]) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(bytes).lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with(['#', '+', '-']) {
            continue;
        }
        if let Ok(id) = id.trim().parse::<u32>() {
            out.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    out
}
