//! CIDR arithmetic and name syntax shared by validation and the SAN/DNS derivations.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = s.trim().split_once('/')?;
        let addr: IpAddr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn bits(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// log2 of the number of addresses.
    pub fn host_bits(&self) -> u8 {
        self.bits() - self.prefix
    }

    /// Whether the two ranges share an address (never across IP families).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        let network = |c: &Cidr| {
            Cidr {
                addr: c.addr,
                prefix: shorter,
            }
            .nth(0)
        };
        network(self) == network(other)
    }

    /// The `n`th address after the network address (n = 1 ⇒ the first usable address).
    pub fn nth(&self, n: u128) -> IpAddr {
        let host_bits = u32::from(self.host_bits());
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if host_bits >= 32 {
                    0
                } else {
                    u32::MAX << host_bits
                };
                IpAddr::from((u32::from(a) & mask).wrapping_add(n as u32).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = if host_bits >= 128 {
                    0
                } else {
                    u128::MAX << host_bits
                };
                IpAddr::from((u128::from(a) & mask).wrapping_add(n).to_be_bytes())
            }
        }
    }
}

/// Comma-separated CIDRs as kubeadm accepts them (one, or two of different families).
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    let cidrs: Vec<Cidr> = s
        .split(',')
        .map(|c| Cidr::parse(c).ok_or_else(|| format!("{c:?} is not a valid CIDR")))
        .collect::<Result<_, _>>()?;
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if a.addr.is_ipv4() != b.addr.is_ipv4() => Ok(cidrs),
        [_, _] => Err("a dual-stack list needs one IPv4 and one IPv6 CIDR".into()),
        _ => Err("at most two CIDRs (one per IP family) are allowed".into()),
    }
}

/// RFC 1123 subdomain, as Kubernetes validates names.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `*.example.com`
pub fn is_wildcard_dns1123_subdomain(s: &str) -> bool {
    s.strip_prefix("*.").is_some_and(is_dns1123_subdomain)
}

/// `0.0.0.0` or `::`: listening on every address, which no client can connect to.
pub fn is_unspecified(addr: &str) -> bool {
    addr == "0.0.0.0" || addr == "::"
}

/// An address as the host part of a URL: IPv6 in brackets.
pub fn url_host(addr: &str) -> String {
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// Where to connect to reach something listening on `addr`: `fallback` when none is set, the
/// loopback of the family when it is unspecified; as a URL host.
pub fn connect_host(addr: &str, fallback: &str) -> String {
    url_host(match addr {
        "" => fallback,
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        a => a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_vip_and_dns_ip() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.nth(1).to_string(), "10.96.0.1");
        assert_eq!(c.nth(10).to_string(), "10.96.0.10");
        let c = Cidr::parse("fd00:10:96::/112").unwrap();
        assert_eq!(c.nth(1).to_string(), "fd00:10:96::1");
        assert_eq!(c.nth(10).to_string(), "fd00:10:96::a");
        assert_eq!(
            Cidr::parse("10.100.5.7/16").unwrap().nth(1).to_string(),
            "10.100.0.1"
        );
        let overlap = |a: &str, b: &str| Cidr::parse(a).unwrap().overlaps(&Cidr::parse(b).unwrap());
        assert!(overlap("10.96.0.0/12", "10.100.0.0/16"));
        assert!(overlap("10.100.0.0/16", "10.96.0.0/12"));
        assert!(overlap("0.0.0.0/0", "192.168.0.0/16"));
        assert!(!overlap("10.96.0.0/12", "10.244.0.0/16"));
        assert!(!overlap("10.96.0.0/12", "fd00::/64"));
        assert!(overlap("fd00:10::/56", "fd00:10:0:5::/64"));
        assert!(parse_cidrs("10.96.0.0/12,fd00::/112").is_ok());
        assert!(parse_cidrs("10.96.0.0/12,10.0.0.0/16").is_err());
        assert!(parse_cidrs("10.96.0.0/33").is_err());
        assert!(is_dns1123_subdomain("cp1.example.com"));
        assert!(!is_dns1123_subdomain("CP1"));
        assert!(is_wildcard_dns1123_subdomain("*.example.com"));
    }
}
