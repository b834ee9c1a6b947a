//! Attacks: dns_dhcp (filled in below).
