//! Small shared helpers with one home each: ids, addresses, digests, private and
//! atomically written files.

pub mod addr;
pub mod atomic;
pub mod hash;
pub mod ids;
pub mod private_fs;
