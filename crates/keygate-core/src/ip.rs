//! Client IP resolution and allowlists (CIDR, IPv4 and IPv6).

use std::net::IpAddr;

use ipnet::IpNet;

/// Most entries one allowlist may hold.
pub const MAX_ALLOWLIST_ENTRIES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowlistError {
    #[error("`{0}` is not an IP address or CIDR block (e.g. 203.0.113.0/24 or 2001:db8::/32)")]
    Invalid(String),
    #[error("at most 256 entries are allowed")]
    TooMany,
}

/// Networks a client IP must fall into. Empty means "any address".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpAllowlist(Vec<IpNet>);

impl IpAllowlist {
    /// Accepts CIDR blocks and bare addresses (a single host).
    pub fn parse(entries: &[String]) -> Result<Self, AllowlistError> {
        if entries.len() > MAX_ALLOWLIST_ENTRIES {
            return Err(AllowlistError::TooMany);
        }
        entries
            .iter()
            .map(|entry| parse_net(entry).ok_or_else(|| AllowlistError::Invalid(entry.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.is_empty() || self.0.iter().any(|net| net.contains(&ip))
    }

    /// An unknown address passes only an empty allowlist.
    pub fn allows_opt(&self, ip: Option<IpAddr>) -> bool {
        ip.map_or(self.0.is_empty(), |ip| self.allows(ip))
    }

    /// The entries in their canonical text form (`10.0.0.0/8`), for storage and JSON.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(IpNet::to_string).collect()
    }
}

fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .map(|net| net.trunc())
        .or_else(|| entry.parse::<IpAddr>().ok().map(|ip| IpNet::from(canonical(ip))))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) match IPv4 rules.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `peer` is one of the proxies whose forwarding headers are believed.
pub fn is_trusted_proxy(peer: IpAddr, trusted_proxies: &[IpNet]) -> bool {
    let peer = canonical(peer);
    trusted_proxies.iter().any(|net| net.contains(&peer))
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is walked from the right, skipping trusted
/// hops; the first untrusted hop is the client. Unparsable entries stop the walk,
/// so a client cannot inject an address past a hop that is not a proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted_proxies);
    let mut client = canonical(peer);
    if !is_trusted(&client) {
        return client;
    }
    let Some(header) = forwarded_for else {
        return client;
    };
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(v: &[&str]) -> IpAllowlist {
        IpAllowlist::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn allowlists_match_v4_v6_and_mapped() {
        let l = list(&["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]);
        assert!(l.allows(ip("203.0.113.9")));
        assert!(l.allows(ip("::ffff:203.0.113.9")));
        assert!(l.allows(ip("2001:db8::1")));
        assert!(l.allows(ip("198.51.100.7")));
        assert!(!l.allows(ip("198.51.100.8")));
        assert!(!l.allows(ip("2001:db9::1")));
        assert!(IpAllowlist::default().allows(ip("1.2.3.4")));
    }

    #[test]
    fn host_bits_are_normalised() {
        assert_eq!(list(&["10.1.2.3/8"]).to_strings(), vec!["10.0.0.0/8"]);
        assert_eq!(list(&["::1"]).to_strings(), vec!["::1/128"]);
    }

    #[test]
    fn invalid_entries_are_named() {
        let err = IpAllowlist::parse(&["10.0.0.0/33".to_string()]).unwrap_err();
        assert_eq!(err, AllowlistError::Invalid("10.0.0.0/33".into()));
        assert!(IpAllowlist::parse(&["not-an-ip".to_string()]).is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("9.9.9.9"), &trusted), ip("9.9.9.9"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("6.6.6.6, 9.9.9.9, 10.0.0.2"), &trusted),
            ip("9.9.9.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage, 10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    }
}
