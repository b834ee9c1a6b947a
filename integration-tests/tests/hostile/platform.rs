//! Attacks: platform (filled in below).
