//! The SSRF guard: which addresses a check may connect to. By default everything that is not a
//! public unicast address is refused — loopback, private, link-local (cloud metadata lives at
//! 169.254.169.254), CGNAT, unique-local, multicast, unspecified and reserved ranges. The guard judges
//! resolved addresses (a public name that resolves to 127.0.0.1 is refused too) and runs again on
//! every redirect hop. An allow-list of CIDRs opens ranges explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.trim_matches(['[', ']']);
        bare.parse::<IpNet>()
            .or_else(|_| bare.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| format!("{s:?} is not an IP network"))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The address policy of a worker.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    /// The default policy plus explicitly allowed networks.
    pub fn with_allowed(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// Whether a connection to `ip` is permitted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || is_public(canonical(ip))
    }
}

/// An IPv6 address that carries an IPv4 address is judged as that IPv4 address: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`, `64:ff9b:1::/48`), 6to4 (`2002:aabb:ccdd::`), Teredo (`2001::/32`, the
/// client address inverted in the last 32 bits) and ISATAP (`…:5efe:a.b.c.d`). A gateway on the path
/// may deliver such an address to the IPv4 host it names.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let low = |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    match s {
        // IPv4-compatible (deprecated): ::a.b.c.d, but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => low(hi, lo),
        // IPv4-translated (SIIT): ::ffff:0:a.b.c.d.
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => low(hi, lo),
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => low(hi, lo),
        // NAT64 local-use prefix 64:ff9b:1::/48: the IPv4 address sits in the last 32 bits.
        [0x64, 0xff9b, 1, _, _, _, hi, lo] => low(hi, lo),
        // 6to4 2002::/16: the IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => low(hi, lo),
        // Teredo 2001::/32: the client's IPv4 address is the last 32 bits, inverted.
        [0x2001, 0, _, _, _, _, hi, lo] => low(!hi, !lo),
        // ISATAP: any /64 whose interface id is [02]00:5efe:a.b.c.d.
        [_, _, _, _, 0 | 0x200, 0x5efe, hi, lo] => low(hi, lo),
        _ => ip,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || ip.is_multicast()
        || a >= 240 // reserved and broadcast
        || ip.is_documentation())
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // deprecated site local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010)) // ORCHID 2001:10::/28
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_internal_ranges() {
        let p = AddressPolicy::default();
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::7f00:1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            // Teredo with client 127.0.0.1 (inverted: 80ff:fffe) and 10.0.0.1 (f5ff:fffe).
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001::f5ff:fffe",
            "2606:4700::5efe:7f00:1",
            "2606:4700::200:5efe:a9fe:a9fe",
            "100::1",
            "2001:2::1",
            "2001:10::1",
        ] {
            assert!(!p.permits(ip(blocked)), "{blocked} must be blocked");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::101:101",
            "2002:101:101::",
            // Teredo with a public client (1.1.1.1 inverted).
            "2001::fefe:fefe",
        ] {
            assert!(p.permits(ip(public)), "{public} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_ranges() {
        let p = AddressPolicy::with_allowed(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(p.permits(ip("127.0.0.9")));
        assert!(p.permits(ip("::1")));
        assert!(!p.permits(ip("10.0.0.1")));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let one: Cidr = "[::1]".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert_eq!("127.0.0.1".parse::<Cidr>().unwrap().to_string(), "127.0.0.1/32");
    }
}
