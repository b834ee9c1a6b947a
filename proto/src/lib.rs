//! The wire between the fluid controller and its host-agents.
//!
//! - [`pb`]: the generated protobuf / gRPC types (`fluid.agent.v1`).
//! - [`model`]: validated domain types. Everything that arrives from the wire goes
//!   through a `TryFrom` here before any other code sees it ("expect junk from senders"),
//!   and everything sent is built from them with a `From`: both sides' services speak
//!   these types, `pb` stays at the gRPC edges.
//! - [`guest`]: what runs inside a guest, whichever side composes it: the exec wrapper,
//!   the files and access scripts, the interactive login and snapshot commands.
//! - [`api`]: the controller's public gRPC API (`fluid.v1`).
//! - [`tls`]: mTLS configuration shared by both ends (fleet CA, peer identity checks).

pub mod guest;
pub mod model;
pub mod tls;

/// Generated code for `fluid.agent.v1` (controller ↔ agent).
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("fluid.agent.v1");
}

/// Generated code for `fluid.v1` (the controller's public gRPC API for clients).
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod api {
    tonic::include_proto!("fluid.v1");
}

pub use model::ValidationError;
