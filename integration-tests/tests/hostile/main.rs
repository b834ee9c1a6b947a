//! The threat model, as tests. Each module performs one family of attacks that a hostile
//! `agent` token, a hostile `readonly` token or a hostile guest (root inside its VM) could
//! try, against real processes (fluid-controller, fluid-agent, libvirt under TCG,
//! nftables, ansible-core), and shows that it fails. ARCHITECTURE.md's threat model names
//! the test that proves each boundary.

mod ansible;
mod commands;
mod disk;
mod dns_dhcp;
mod egress;
mod guest_access;
mod platform;
