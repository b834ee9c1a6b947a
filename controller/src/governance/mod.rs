//! Who may do what, and the human in the loop: authentication and roles, approvals
//! and the webhook that announces them.

pub mod approvals;
pub mod auth;
pub mod webhook;
