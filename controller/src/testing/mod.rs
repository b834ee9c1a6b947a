//! Doubles for tests: [`fake_agents`], an in-memory [`AgentConnector`] with the agent's
//! observable behaviour (domains, state changes, exec, snapshots) and failure injection.
//! Built for the controller's own tests and, with the `testing` feature, for other
//! crates' tests and simulated hosts. Never on the product path.
//!
//! [`AgentConnector`]: crate::agents::AgentConnector

pub mod fake_agents;
