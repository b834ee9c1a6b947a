//! Attacks: guest_access (filled in below).
