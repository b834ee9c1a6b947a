//! Attacks: disk (filled in below).
