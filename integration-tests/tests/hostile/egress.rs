//! Attacks: egress (filled in below).
