//! The symmetric flow key: both directions of a connection map to the same key and hash.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::wire::LinkType;

/// An IPv4 or IPv6 endpoint address packed into 16 bytes (IPv4 is v4-mapped), as two
/// words (high, low) so that a key needs 8-byte alignment only and fits a cache line with
/// the flow's other hot fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Addr(pub(crate) [u64; 2]);

impl Addr {
    #[inline]
    pub(crate) fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr([0, 0xffff_0000_0000 | u64::from(u32::from(v4))]),
            IpAddr::V6(v6) => {
                let x = u128::from(v6);
                Addr([(x >> 64) as u64, x as u64])
            }
        }
    }

    pub(crate) fn to_ip(self) -> IpAddr {
        let x = (u128::from(self.0[0]) << 64) | u128::from(self.0[1]);
        let v6 = Ipv6Addr::from(x);
        match v6.to_ipv4_mapped() {
            Some(v4) if x >> 32 == 0xffff => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }
}

/// A flow key with its endpoints in canonical order, so that `A→B` and `B→A` are equal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) lo: Addr,
    pub(crate) hi: Addr,
    pub(crate) lo_port: u16,
    pub(crate) hi_port: u16,
}

impl FlowKey {
    /// The key of a packet from `src` to `dst`, and whether `src` is the `lo` endpoint.
    #[inline]
    pub(crate) fn new(src: Addr, sport: u16, dst: Addr, dport: u16) -> (FlowKey, bool) {
        if (src, sport) <= (dst, dport) {
            (
                FlowKey {
                    lo: src,
                    hi: dst,
                    lo_port: sport,
                    hi_port: dport,
                },
                true,
            )
        } else {
            (
                FlowKey {
                    lo: dst,
                    hi: src,
                    lo_port: dport,
                    hi_port: sport,
                },
                false,
            )
        }
    }

    /// A well-mixed 64-bit hash of the canonical key: symmetric by construction.
    // Always inlined: computed up to three times per packet (the two lookahead prefetches
    // and the lookup), and LLVM called it out of line once it had that many callers.
    #[inline(always)]
    pub(crate) fn hash(&self) -> u64 {
        let words = [
            self.lo.0[1],
            self.lo.0[0],
            self.hi.0[1],
            self.hi.0[0],
            (u64::from(self.lo_port) << 16) | u64::from(self.hi_port),
        ];
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for w in words {
            h = (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 31;
        }
        h ^ (h >> 29)
    }

    pub(crate) fn endpoint(&self, lo: bool) -> SocketAddr {
        if lo {
            SocketAddr::new(self.lo.to_ip(), self.lo_port)
        } else {
            SocketAddr::new(self.hi.to_ip(), self.hi_port)
        }
    }
}

/// The symmetric hash of a packet's 4-tuple: equal for both directions of a connection.
///
/// Used to shard flows across cores so that both directions meet on one core.
pub fn symmetric_hash(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> u64 {
    FlowKey::new(Addr::from_ip(src), sport, Addr::from_ip(dst), dport)
        .0
        .hash()
}

/// The symmetric flow hash of a plain IPv4 TCP frame (Ethernet without VLAN tags, or raw
/// IP), read straight from fixed offsets; `None` for anything else. A hint only (lookahead
/// prefetching, sharding a frame before it is decoded): the frame is decoded properly when
/// it is processed. Equal to [`symmetric_hash`] of the frame's 4-tuple when `Some`.
// Always inlined: twice per packet on a big table (both lookahead steps), and a call
// costs as much as the hash (perf, `flowpeek-bench run` at 1M flows).
#[inline(always)]
pub fn quick_frame_hash(link: Option<LinkType>, frame: &[u8]) -> Option<u64> {
    let ip = match link? {
        LinkType::Ethernet => {
            if frame.get(12..14)? != [0x08, 0x00] {
                return None;
            }
            frame.get(14..)?
        }
        LinkType::RawIp => frame,
        _ => return None,
    };
    let vihl = *ip.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 {
        return None;
    }
    // A fragment (more fragments, or an offset): only the first has the ports, so none is
    // hashed by them; the decoder says what it is.
    if u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?) & 0x3fff != 0 {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(ip.get(at..at + 4)?.try_into().ok()?))
    };
    let (src, dst, ports) = (word(12)?, word(16)?, word(ihl)?);
    let v4 = |a: u32| Addr([0, 0xffff_0000_0000 | u64::from(a)]);
    let (key, _) = FlowKey::new(v4(src), (ports >> 16) as u16, v4(dst), ports as u16);
    Some(key.hash())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_hash_leaves_fragments_to_the_decoder() {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[0x04, 0xd2, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        ip.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        let whole = quick_frame_hash(Some(LinkType::RawIp), &ip);
        assert!(whole.is_some());
        for flags_offset in [0x2000u16, 0x0001, 0x2005] {
            let mut f = ip.clone();
            f[6..8].copy_from_slice(&flags_offset.to_be_bytes());
            assert_eq!(quick_frame_hash(Some(LinkType::RawIp), &f), None);
        }
        // Don't-fragment is no fragment.
        let mut df = ip.clone();
        df[6] = 0x40;
        assert_eq!(quick_frame_hash(Some(LinkType::RawIp), &df), whole);
    }

    #[test]
    fn both_directions_share_key_and_hash() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (k1, lo1) = FlowKey::new(Addr::from_ip(a), 1234, Addr::from_ip(b), 80);
        let (k2, lo2) = FlowKey::new(Addr::from_ip(b), 80, Addr::from_ip(a), 1234);
        assert_eq!(k1, k2);
        assert_ne!(lo1, lo2);
        assert_eq!(
            symmetric_hash(a, 1234, b, 80),
            symmetric_hash(b, 80, a, 1234)
        );
        assert_ne!(
            symmetric_hash(a, 1234, b, 80),
            symmetric_hash(a, 1235, b, 80)
        );
    }

    #[test]
    fn quick_frame_hash_matches_the_decoded_hash() {
        // Ethernet + IPv4 (IHL 5) + TCP 10.0.0.1:40000 -> 10.0.0.2:80.
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let want = symmetric_hash(a, 40000, b, 80);
        assert_eq!(quick_frame_hash(Some(LinkType::Ethernet), &f), Some(want));
        assert_eq!(
            quick_frame_hash(Some(LinkType::RawIp), &f[14..]),
            Some(want)
        );
        assert_eq!(quick_frame_hash(None, &f), None);
        // UDP, a VLAN tag, a truncated header: no hint.
        let mut udp = f.clone();
        udp[14 + 9] = 17;
        assert_eq!(quick_frame_hash(Some(LinkType::Ethernet), &udp), None);
        let mut vlan = f.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(quick_frame_hash(Some(LinkType::Ethernet), &vlan), None);
        assert_eq!(quick_frame_hash(Some(LinkType::Ethernet), &f[..37]), None);
    }

    #[test]
    fn addresses_round_trip() {
        for s in ["10.1.2.3", "::1", "2001:db8::7", "::ffff:0:1"] {
            let ip: IpAddr = s.parse().unwrap();
            let back = Addr::from_ip(ip).to_ip();
            // A v4-mapped IPv6 address is indistinguishable from IPv4 by design.
            if s.starts_with("::ffff") {
                continue;
            }
            assert_eq!(back, ip, "{s}");
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn avg_probe(keys: &[FlowKey], bits: u32) -> f64 {
        let mask = (1usize << bits) - 1;
        let mut table = vec![false; 1 << bits];
        let mut total = 0usize;
        for k in keys {
            let mut i = k.hash() as usize & mask;
            let mut n = 1;
            while table[i] {
                i = (i + 1) & mask;
                n += 1;
            }
            table[i] = true;
            total += n;
        }
        total as f64 / keys.len() as f64
    }

    #[test]
    fn generator_like_keys_probe_briefly() {
        let mut keys = Vec::new();
        for index in 0u32..10_000 {
            let c = Ipv4Addr::from(0x0a00_0000 | index);
            let s = Ipv4Addr::from(0xac10_0000 | (index % 64));
            let cport = 1024 + (index.wrapping_mul(7) % 64000) as u16;
            let (k, _) = FlowKey::new(
                Addr::from_ip(c.into()),
                cport,
                Addr::from_ip(s.into()),
                80 + (index % 4) as u16,
            );
            keys.push(k);
        }
        let avg = avg_probe(&keys, 15);
        assert!(avg < 2.0, "average probe length {avg}");
    }
}
