//! Who may do what, and the human in the loop: authentication and roles, approvals
//! and the webhook that announces them, the audit trail as the edges read and append it.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod quotas;
pub mod webhook;
