//! Harness for the end-to-end tests: real `fluid-controller` and `fluid-agent`
//! processes, real libvirt (TCG) and PostgreSQL.
//!
//! These tests need root, a libvirtd running inside a network namespace, and the
//! golden image; `scripts/test.sh` prepares all of that and runs them inside the
//! namespace. Run outside that setup they fail with a message saying what is missing
//! (they never skip silently).

pub mod api;
pub mod bench;
pub mod env;
pub mod fleet;
pub mod guest;
pub mod internet;
pub mod load;
pub mod pki;
pub mod process;
pub mod setup;
pub mod stack;
pub mod virsh;

pub use env::TestEnv;
pub use stack::{AgentOptions, Stack, StoreKind};
