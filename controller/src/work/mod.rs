//! Work inside a sandbox: commands, files, interactive attach, SSH access and the
//! certificates behind it, under the command policy.

pub mod access;
pub mod attach;
pub mod commands;
pub mod files;
pub mod policy;
pub mod retention;
pub mod ssh_ca;
