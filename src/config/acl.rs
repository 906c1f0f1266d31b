//! Access lists: `allow` and `deny` CIDR lists on a listener or a route.
//!
//! The most specific block that holds the address decides (its prefix is
//! the longest): `allow = ["10.0.0.0/8"]` with `deny = ["10.9.0.0/16"]`
//! lets 10.1.2.3 in and keeps 10.9.1.1 out, whatever order the lists are
//! written in. That is what nginx's first-match rule gives when the
//! specific lines come first, as they must for it to be useful. An address
//! no block holds is denied when an `allow` list is written (nginx's
//! `allow ...; deny all;`) and allowed when only `deny` is.
//!
//! A lookup hashes the address masked to each prefix length the lists use,
//! longest first: at most 33 (IPv4) or 129 (IPv6) probes, in practice a
//! handful, whatever the number of blocks. IPv4-mapped IPv6 addresses
//! count as IPv4 (a dual-stack listener sees v4 clients that way).

use std::net::IpAddr;

use ahash::AHashMap;

use super::values::{parse_cidr, Cidr};

/// A compiled access list.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    v4: Family,
    v6: Family,
    /// Whether an address that no block holds is allowed.
    default_allow: bool,
}

/// The blocks of one address family.
#[derive(Debug, Clone, Default)]
struct Family {
    /// Prefix lengths in use, longest first.
    lengths: Vec<u8>,
    /// (masked address, prefix length) -> allowed.
    blocks: AHashMap<(u128, u8), bool>,
}

impl Family {
    fn insert(&mut self, net: u128, width: u8, prefix: u8, allow: bool) -> Result<(), String> {
        let key = (mask(net, width, prefix), prefix);
        match self.blocks.insert(key, allow) {
            Some(was) if was != allow => {
                return Err("is in both allow and deny".to_string());
            }
            _ => {}
        }
        if !self.lengths.contains(&prefix) {
            self.lengths.push(prefix);
            self.lengths.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(())
    }

    fn lookup(&self, x: u128, width: u8) -> Option<bool> {
        self.lengths
            .iter()
            .find_map(|&p| self.blocks.get(&(mask(x, width, p), p)).copied())
    }
}

/// `x` (an address `width` bits wide, in the low bits) with only its first
/// `prefix` bits kept.
fn mask(x: u128, width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width - prefix);
    if host_bits >= 128 {
        0
    } else {
        x >> host_bits << host_bits
    }
}

/// The address as (bits, width), IPv4-mapped IPv6 as IPv4.
fn bits(ip: IpAddr) -> (u128, u8, bool) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32, true),
        IpAddr::V6(v) => (u128::from(v), 128, false),
    }
}

impl Acl {
    /// Compile `allow` and `deny`; `None` when both are empty (no list).
    ///
    /// # Errors
    /// A block that does not parse, or one in both lists: the list's name
    /// (`allow` or `deny`) and what is wrong.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Option<Acl>, (&'static str, String)> {
        if allow.is_empty() && deny.is_empty() {
            return Ok(None);
        }
        let mut acl = Acl {
            default_allow: allow.is_empty(),
            ..Acl::default()
        };
        for (name, list, verdict) in [("allow", allow, true), ("deny", deny, false)] {
            for s in list {
                let c = parse_cidr(s).map_err(|m| (name, m))?;
                acl.insert(c, verdict)
                    .map_err(|why| (name, format!("{s:?} {why}")))?;
            }
        }
        Ok(Some(acl))
    }

    fn insert(&mut self, c: Cidr, allow: bool) -> Result<(), String> {
        let (x, width, v4) = bits(c.addr);
        // A v4-mapped block ("::ffff:10.0.0.0/104") is the v4 block.
        let prefix = if v4 && !c.addr.is_ipv4() {
            c.prefix.saturating_sub(96)
        } else {
            c.prefix
        };
        let fam = if v4 { &mut self.v4 } else { &mut self.v6 };
        fam.insert(x, width, prefix, allow)
    }

    /// Whether `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let (x, width, v4) = bits(ip);
        let fam = if v4 { &self.v4 } else { &self.v6 };
        fam.lookup(x, width).unwrap_or(self.default_allow)
    }
}

/// Whether a listener's or a route's `access` lets `ip` in: with no list
/// written, everyone may.
pub fn admits(access: &Option<std::sync::Arc<Acl>>, ip: IpAddr) -> bool {
    access.as_ref().map_or(true, |a| a.allows(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        Acl::new(&s(allow), &s(deny)).unwrap().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_block_decides() {
        let a = acl(&["10.0.0.0/8", "10.9.8.7"], &["10.9.0.0/16"]);
        assert!(a.allows(ip("10.1.2.3")));
        assert!(!a.allows(ip("10.9.1.1")));
        assert!(a.allows(ip("10.9.8.7")), "a /32 inside the denied /16");
        assert!(
            !a.allows(ip("192.168.1.1")),
            "allow list: the rest is denied"
        );
        let d = acl(&[], &["192.0.2.0/24"]);
        assert!(!d.allows(ip("192.0.2.9")));
        assert!(
            d.allows(ip("198.51.100.1")),
            "deny list only: the rest passes"
        );
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let a = acl(&["2001:db8::/32", "127.0.0.1"], &["2001:db8:bad::/48"]);
        assert!(a.allows(ip("2001:db8:1::1")));
        assert!(!a.allows(ip("2001:db8:bad::1")));
        assert!(!a.allows(ip("2001:db9::1")));
        assert!(a.allows(ip("::ffff:127.0.0.1")), "v4-mapped counts as v4");
        assert!(!a.allows(ip("::ffff:127.0.0.2")));
        let m = acl(&[], &["::ffff:10.0.0.0/104"]);
        assert!(
            !m.allows(ip("10.2.3.4")),
            "a v4-mapped block is the v4 block"
        );
        assert!(m.allows(ip("11.0.0.1")));
    }

    #[test]
    fn everything_and_nothing() {
        let all = acl(&["0.0.0.0/0", "::/0"], &["127.0.0.2"]);
        assert!(all.allows(ip("8.8.8.8")));
        assert!(all.allows(ip("::1")));
        assert!(!all.allows(ip("127.0.0.2")));
        let none = acl(&[], &["0.0.0.0/0"]);
        assert!(!none.allows(ip("1.2.3.4")));
        assert!(none.allows(ip("::1")), "a v4 block says nothing about v6");
    }

    #[test]
    fn bad_lists_are_errors() {
        assert!(Acl::new(&[], &[]).unwrap().is_none());
        let (list, e) = Acl::new(&s(&["10.0.0.0/8"]), &s(&["10.1.0.0/8"])).unwrap_err();
        assert_eq!(list, "deny");
        assert!(e.contains("both allow and deny"), "{e}");
        assert!(Acl::new(&s(&["10.0.0.0/33"]), &[]).is_err());
        assert_eq!(Acl::new(&[], &s(&["nope"])).unwrap_err().0, "deny");
        // Host bits in a block are ignored, as nginx does.
        let a = acl(&["10.1.2.3/8"], &[]);
        assert!(a.allows(ip("10.200.0.1")));
    }
}
