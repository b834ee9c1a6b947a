//! Typed client for the fluid controller's REST API.
//!
//! [`types`] holds the JSON shapes of the API (a superset of fluid-remote v1; see
//! `docs/API.md`); [`governance`] those of tokens, approvals, modes and the audit
//! trail, whose hash chain [`audit_chain`] computes and verifies; [`network`] those of
//! a sandbox's egress allow-list and the requests for more. The controller serialises
//! exactly these types, so client and server cannot drift apart. [`Client`] is a thin async wrapper over them.

pub mod ansible;
pub mod audit_chain;
pub mod client;
pub mod governance;
pub mod network;
pub mod percent;
pub mod snapshots;
pub mod types;

pub use client::{Client, ClientError, attach_url};
pub use percent::encode_component;
