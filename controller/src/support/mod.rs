//! Small shared helpers with one home each.

pub mod private_fs;
