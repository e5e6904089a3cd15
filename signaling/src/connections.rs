//! Who is connecting, and how much of the service one client may hold before it has proved
//! who it is.
//!
//! - [`ClientAddresses`]: the client's address. Behind an ingress every peer is the
//!   ingress, so a connection from a trusted proxy names its client in `X-Forwarded-For`
//!   (the rightmost entry that is not itself a trusted proxy: entries left of it were written
//!   by the client and prove nothing).
//! - [`Unjoined`]: WebSockets that have not joined yet, counted per client address. An
//!   unauthenticated socket costs memory and a file descriptor and proves nothing, so one
//!   address may hold only so many; joined sessions do not count (staff behind one hospital
//!   NAT are not limited). IPv6 addresses count per /64, the block one subscriber gets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;

/// An IP address or a CIDR prefix (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    pub fn parse(text: &str) -> Option<IpPrefix> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(IpPrefix { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may reach a dual-stack listener as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                prefix_bits(u32::from(p).into(), 32, self.len)
                    == prefix_bits(u32::from(a).into(), 32, self.len)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                prefix_bits(u128::from(p), 128, self.len)
                    == prefix_bits(u128::from(a), 128, self.len)
            }
            _ => false,
        }
    }
}

/// The top `len` of an address's `width` bits.
fn prefix_bits(addr: u128, width: u32, len: u8) -> u128 {
    match u32::from(len) {
        0 => 0,
        l => addr >> (width - l.min(width)),
    }
}

/// Finds the client's address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientAddresses {
    trusted: Vec<IpPrefix>,
}

impl ClientAddresses {
    /// `trusted`: the configured proxies (already validated; unparsable entries are skipped).
    pub fn new(trusted: &[String]) -> ClientAddresses {
        ClientAddresses {
            trusted: trusted.iter().filter_map(|p| IpPrefix::parse(p)).collect(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|p| p.contains(ip))
    }

    /// The client of a request that came from `peer`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        if !self.is_trusted(peer) {
            return peer;
        }
        // Several X-Forwarded-For headers are one list, in order.
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            hops.extend(text.split(',').map(str::trim));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            // Anything unreadable: the last proxy we trust is as far as we can tell.
            let Ok(ip) = hop.parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// The bucket an address is counted in: itself, or its /64 for IPv6.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// WebSockets that have not joined yet, per client address.
#[derive(Debug)]
pub struct Unjoined {
    cap: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One unjoined WebSocket's place in its address's count; given back when dropped (the
/// session joined or ended).
#[derive(Debug)]
pub struct UnjoinedSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    bucket: IpAddr,
}

impl Unjoined {
    pub fn new(cap: usize) -> Unjoined {
        Unjoined {
            cap,
            counts: Arc::default(),
        }
    }

    /// A place for one more unjoined WebSocket of `ip`, or `None` at the cap.
    pub fn take(&self, ip: IpAddr) -> Option<UnjoinedSlot> {
        let bucket = bucket(ip);
        // A std lock: held for one map operation, never across an await.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(bucket).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(UnjoinedSlot {
            counts: Arc::clone(&self.counts),
            bucket,
        })
    }

    /// Unjoined WebSockets of `ip`'s bucket now.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&bucket(ip)).copied().unwrap_or(0)
    }
}

impl Drop for UnjoinedSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.bucket) {
            *count -= 1;
            // Addresses that hold nothing take no memory: the map cannot be grown by
            // connecting from many addresses one after the other.
            if *count == 0 {
                counts.remove(&self.bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn prefixes_parse_and_match() {
        let p = IpPrefix::parse("10.0.0.0/8").unwrap();
        assert!(p.contains("10.200.3.4".parse().unwrap()));
        assert!(p.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpPrefix::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let one = IpPrefix::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = IpPrefix::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "ten",
            "10.0.0.0/x",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(IpPrefix::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let none = ClientAddresses::new(&[]);
        let spoofed = headers(&["203.0.113.9"]);
        assert_eq!(
            none.client(peer("198.51.100.1"), &spoofed),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );

        let ingress = ClientAddresses::new(&["10.0.0.0/8".into()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The ingress appends the client it saw; what the client wrote itself is left of it.
        let h = headers(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(ingress.client(peer("10.1.2.3"), &h), ip("203.0.113.9"));
        // Two proxies of ours in a row, in two headers.
        let h = headers(&["203.0.113.9", "10.9.9.9"]);
        assert_eq!(ingress.client(peer("10.1.2.3"), &h), ip("203.0.113.9"));
        // Not from the ingress: the header is the client's own word and ignored.
        assert_eq!(ingress.client(peer("198.51.100.1"), &h), ip("198.51.100.1"));
        // Missing or unreadable: the last trusted hop.
        assert_eq!(
            ingress.client(peer("10.1.2.3"), &headers(&[])),
            ip("10.1.2.3")
        );
        let h = headers(&["junk, 10.9.9.9"]);
        assert_eq!(ingress.client(peer("10.1.2.3"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn unjoined_sockets_are_capped_per_address_and_given_back() {
        let unjoined = Unjoined::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = unjoined.take(a).unwrap();
        let _second = unjoined.take(a).unwrap();
        assert!(unjoined.take(a).is_none(), "a third from the same address");
        assert!(
            unjoined.take(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(unjoined.count(a), 1);
        assert!(unjoined.take(a).is_some());
        // One IPv6 subscriber's /64 is one address.
        let v6 = Unjoined::new(1);
        let _held = v6.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(v6.take("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(v6.take("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn addresses_that_hold_nothing_are_forgotten() {
        let unjoined = Unjoined::new(5);
        for i in 0..1000u32 {
            drop(unjoined.take(IpAddr::from(i.to_be_bytes())));
        }
        assert!(unjoined.counts.lock().unwrap().is_empty());
    }
}
