//! A sandbox's way out: its egress allow-list, and the requests that extend it
//! through approvals.

pub mod egress;
pub mod requests;
