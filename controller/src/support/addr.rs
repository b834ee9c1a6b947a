//! Host names and `host:port` addresses, as configuration and requests give them.

/// Checks an agent address: `host:port` (IPv6 in brackets). Returns the host part.
pub fn check_address(address: &str) -> Result<&str, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{address:?} has no valid port")),
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = if host.starts_with('[') {
        host.ends_with(']') && bare.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.contains(':') && is_host_name(host)
    };
    if !ok {
        return Err(format!("{host:?} is not a DNS name or IP address"));
    }
    Ok(host)
}

/// True for an IP address or a DNS name (labels of letters, digits and '-').
pub fn is_host_name(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
        || (s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

/// Parses a production target's `address[:port]` (port 22 when absent; IPv6 in
/// brackets): the address and the port.
pub fn parse_target_host(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 address in brackets needs its ]"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected :port after ]"))?,
            ),
        };
        (addr.to_owned(), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    if host.is_empty() || !(host.contains(':') || crate::support::addr::is_host_name(&host)) {
        return Err(format!(
            "{s:?} is not an address or DNS name, with an optional :port"
        ));
    }
    let port = match port {
        None => 22,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{s:?}: {p:?} is not a port")),
        },
    };
    Ok((host, port))
}
