//! The audit trail as the edges use it: they append the event of a call (an API
//! request, a gRPC call) and read the trail back within the caller's scope. The
//! services write their own events in the transaction of what they change.

use std::sync::Arc;

use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use fluid_client::governance::AuditEvent;

use crate::store::{AuditFilter, NewAuditEvent, Store, StoreError};

pub struct AuditService {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

impl AuditService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Appends the event of a call an edge answered.
    pub async fn append(&self, event: &NewAuditEvent) -> Result<(), StoreError> {
        self.store.append_audit(event).await.map(|_| ())
    }

    /// A page of the trail. A scoped token reads the trail of one of its own
    /// sandboxes, nothing else; others need `ReadFleet`.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, ServiceError> {
        match (&filter.sandbox_id, caller.scope()) {
            (Some(id), Some(_)) => {
                let id = crate::error::parse_id(id)?;
                auth::authorized_sandbox(&*self.store, caller, &id, Permission::Read).await?;
            }
            _ => auth::check(caller, Permission::ReadFleet)?,
        }
        Ok(self.store.list_audit(filter).await?)
    }
}
