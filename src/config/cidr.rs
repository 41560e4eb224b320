//! CIDR blocks for `proxy_trusted`: which peers may send a PROXY header.
//!
//! Hand-written rather than the `ipnet` crate: parsing and one containment check are all that is
//! needed, and the strict form below (no host bits) catches the typo `10.0.0.1/8`, which would
//! otherwise trust a whole /8 the operator may not have meant.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network: `"10.0.0.0/8"`, `"::1/128"`. A bare address is a single host
/// (`/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Does the network hold `ip`? An IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`, what a
    /// dual-stack `[::]` listener reports for an IPv4 client) is matched as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// The first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// Why a string is not a CIDR block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("prefix {0:?} is not a number from 0 to {1}")]
    Prefix(String, u8),
    #[error("host bits are set; the network is {0}")]
    HostBits(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(CidrError::Prefix(p.to_owned(), max)),
            },
        };
        let masked = mask(network, prefix);
        if masked != network {
            return Err(CidrError::HostBits(format!("{masked}/{prefix}")));
        }
        Ok(Cidr { network, prefix })
    }
}

/// `ip` with every bit after `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_table() {
        for (input, shown) in [
            ("127.0.0.1/32", "127.0.0.1/32"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("192.168.1.128/25", "192.168.1.128/25"),
        ] {
            assert_eq!(input.parse::<Cidr>().unwrap().to_string(), shown, "{input}");
        }
        for (input, want) in [
            ("10.0.0.1/8", CidrError::HostBits("10.0.0.0/8".into())),
            ("10.0.0.0/33", CidrError::Prefix("33".into(), 32)),
            ("::/129", CidrError::Prefix("129".into(), 128)),
            ("10.0.0.0/", CidrError::Prefix(String::new(), 32)),
            ("10.0.0.0/+8", CidrError::Prefix("+8".into(), 32)),
            ("10.0.0.0/8/8", CidrError::Prefix("8/8".into(), 32)),
            ("localhost/32", CidrError::Address("localhost".into())),
            ("", CidrError::Address(String::new())),
            (
                "2001:db8::1/32",
                CidrError::HostBits("2001:db8::/32".into()),
            ),
        ] {
            assert_eq!(input.parse::<Cidr>(), Err(want), "{input}");
        }
    }

    #[test]
    fn contains_table() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(c("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(c("127.0.0.0/8").contains(ip("127.255.0.9")));
        assert!(c("192.168.1.128/25").contains(ip("192.168.1.200")));
        assert!(!c("192.168.1.128/25").contains(ip("192.168.1.127")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!c("0.0.0.0/0").contains(ip("::2")));
        assert!(c("::1/128").contains(ip("::1")));
        assert!(!c("::1/128").contains(ip("127.0.0.1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("2001:db8::/31").contains(ip("2001:db9::1")));
        assert!(c("::/0").contains(ip("2001:db9::1")));
        // A v4 client on a dual-stack listener.
        assert!(c("127.0.0.1/32").contains(ip("::ffff:127.0.0.1")));
        assert!(!c("::/0").contains(ip("::ffff:127.0.0.1")));
    }
}
