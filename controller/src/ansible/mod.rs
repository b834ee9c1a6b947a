//! Ansible: stored playbooks, generation from a diff, jobs against a sandbox or
//! production, and verification on a fresh sandbox.

pub mod generate;
pub mod jobs;
pub mod playbooks;
pub mod verify;
