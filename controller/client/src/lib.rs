//! Typed client for the fluid controller's REST API.
//!
//! [`types`] holds the JSON shapes of the API (a superset of fluid-remote v1; see
//! `shared/API.md`). The controller serialises exactly these types, so client and
//! server cannot drift apart. [`Client`] is a thin async wrapper over them.

pub mod client;
pub mod types;

pub use client::{Client, ClientError, attach_url};
