//! Attacks: commands (filled in below).
