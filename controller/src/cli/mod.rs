//! The controller's command-line tasks beside `serve`.

pub mod pki;
