//! The fleet of KVM hosts: registry and heartbeat, placement, reconciliation of
//! what the agents report, and the replica locks of background loops.

pub mod background;
pub mod hosts;
pub mod reconciler;
