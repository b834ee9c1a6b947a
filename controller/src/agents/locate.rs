//! The one way from a sandbox (or a host name) to the agent that runs it, with one
//! answer for each way that can fail: never placed or host gone (409), host not online
//! (503).

use fluid_client::types::HostState;

use super::AgentTarget;
use crate::store::{HostRecord, SandboxRecord, Store, StoreError};

/// Why the agent of a sandbox cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The sandbox has no host (409).
    #[error("sandbox {0} was never placed on a host")]
    NotPlaced(String),
    /// Its host is no longer registered (409).
    #[error("host {0} is gone")]
    HostGone(String),
    /// Its host is registered but not online (503).
    #[error("host {0} is not online")]
    Offline(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<&HostRecord> for AgentTarget {
    fn from(h: &HostRecord) -> Self {
        Self {
            name: h.name.clone(),
            address: h.address.clone(),
        }
    }
}

/// The registered host named `name`, online or not.
pub async fn host(store: &dyn Store, name: &str) -> Result<HostRecord, Unreachable> {
    store
        .get_host(name)
        .await?
        .ok_or_else(|| Unreachable::HostGone(name.to_owned()))
}

/// The host `sb` was placed on, online or not.
pub async fn host_of(store: &dyn Store, sb: &SandboxRecord) -> Result<HostRecord, Unreachable> {
    let name = sb
        .host_name
        .as_deref()
        .ok_or_else(|| Unreachable::NotPlaced(sb.id.clone()))?;
    host(store, name).await
}

/// The agent of host `name`, which must be online.
pub async fn online_agent(store: &dyn Store, name: &str) -> Result<AgentTarget, Unreachable> {
    online(host(store, name).await?)
}

/// The agent that runs `sb`, whose host must be online.
pub async fn agent_of(store: &dyn Store, sb: &SandboxRecord) -> Result<AgentTarget, Unreachable> {
    online(host_of(store, sb).await?)
}

fn online(h: HostRecord) -> Result<AgentTarget, Unreachable> {
    if h.state == HostState::Online {
        Ok(AgentTarget::from(&h))
    } else {
        Err(Unreachable::Offline(h.name))
    }
}
