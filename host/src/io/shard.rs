//! Which core a frame belongs to: the symmetric shard, so that both directions of a
//! connection meet on one core.
//!
//! Owns the one reduction from a flow hash to a core ([`shard_of`]) and the frame-level
//! helpers every sharding source uses: the shm producer ([`frame_shard`], through
//! `shm::ring_for`), the pcap replay that every core reads ([`decoded_shard`]), and the
//! route the offline reader computes once per packet for `streams` and `events`
//! ([`Route`]). The hash is the engine's own ([`crate::flow::symmetric_hash`], the hash of
//! the canonical flow key), so a shard is a set of whole flows whatever the direction.
//!
//! AF_PACKET fanout is sharded by the kernel, which runs the classic BPF program of
//! [`crate::io::afpacket::bpf`] and takes its result modulo the sockets of the group (in the
//! order they joined, which is not the core order). cBPF has 32-bit arithmetic only and
//! cannot compute the 64-bit flow-key hash, so the program computes [`fanout_hash`], a
//! 32-bit hash symmetric by construction; this module states it in Rust, and the program's
//! unit tests check that it computes exactly this function.
//!
//! Must not: parse beyond the 4-tuple, or allocate.

use crate::flow::symmetric_hash;
use crate::wire::{self, DecodeError, Decoded, LinkType};

/// The core of a flow whose symmetric hash is `hash`, among `cores` (0 when there is one).
#[inline]
pub fn shard_of(hash: u64, cores: usize) -> usize {
    if cores <= 1 {
        0
    } else {
        (hash % cores as u64) as usize
    }
}

/// The core of a decoded frame: a TCP segment by the symmetric hash of its 4-tuple; anything
/// else (counted only, never a flow) core 0.
#[inline]
pub fn decoded_shard(decoded: &Option<Result<Decoded<'_>, DecodeError>>, cores: usize) -> usize {
    match decoded {
        Some(Ok(Decoded::Tcp(seg))) if cores > 1 => shard_of(
            symmetric_hash(seg.src, seg.src_port, seg.dst, seg.dst_port),
            cores,
        ),
        _ => 0,
    }
}

/// Where a frame of a capture that every core reads goes, decided once by the reader
/// thread ([`crate::io::stream::ChunkReader::with_routes`]) instead of by every core
/// decoding every frame: the core that processes it, or every core (an IP fragment: the
/// ports that pick a flow's core are in the first fragment only), and whether the others
/// move their clocks over it ([`crate::flow::moves_clock`]), so that every core's timers
/// follow the whole capture's TCP packets as with one core. One byte a packet.
///
/// The reader's decode is not handed on: the core that takes the frame decodes it again
/// (a `Decoded` borrows the chunk and is as large as the frame's headers), so a frame is
/// decoded twice in all, against once per core before. With more than [`Route::MAX_CORES`]
/// cores every route is [`Route::DECIDE`] and each core decodes every frame, as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(u8);

impl Route {
    const CLOCK: u8 = 0x80;
    const EVERY: u8 = 0x7e;
    const DECIDE_CODE: u8 = 0x7f;
    /// Cores a route can name (`0..MAX_CORES`).
    pub const MAX_CORES: usize = Self::EVERY as usize;
    /// No route was computed: each core decodes the frame and decides for itself.
    pub const DECIDE: Route = Route(Self::DECIDE_CODE);

    /// The route of a frame of link type `link` among `cores` cores (at most
    /// [`Route::MAX_CORES`]; more gives [`Route::DECIDE`]) whose engines run with `cfg`.
    pub fn of(
        link: Option<LinkType>,
        frame: &[u8],
        cores: usize,
        cfg: &crate::flow::Config,
    ) -> Route {
        if cores > Self::MAX_CORES {
            return Self::DECIDE;
        }
        let decoded = link.map(|l| wire::decode(l, frame));
        let clock = if crate::flow::moves_clock(cfg, &decoded, frame) {
            Self::CLOCK
        } else {
            0
        };
        let to = if matches!(decoded, Some(Ok(Decoded::Fragment))) {
            Self::EVERY
        } else {
            decoded_shard(&decoded, cores) as u8
        };
        Route(to | clock)
    }

    /// Whether `core` processes the frame.
    #[inline]
    pub fn takes(self, core: usize) -> bool {
        let to = self.0 & !Self::CLOCK;
        to == Self::EVERY || usize::from(to) == core
    }

    /// Whether a core that does not process the frame moves its clock to its time.
    #[inline]
    pub fn moves_clock(self) -> bool {
        self.0 & Self::CLOCK != 0
    }

    /// Whether this is [`Route::DECIDE`].
    #[inline]
    pub fn is_decide(self) -> bool {
        self == Self::DECIDE
    }
}

/// The core of a raw frame of link type `link`: as [`decoded_shard`] of its decoding.
#[inline]
pub fn frame_shard(link: LinkType, frame: &[u8], cores: usize) -> usize {
    if cores <= 1 {
        return 0;
    }
    // Plain IPv4 TCP (the common case) hashes from fixed offsets, the same hash; anything
    // else is decoded.
    match crate::flow::quick_frame_hash(Some(link), frame) {
        Some(hash) => shard_of(hash, cores),
        None => decoded_shard(&Some(wire::decode(link, frame)), cores),
    }
}

/// Golden-ratio multiplier of [`fanout_hash`]'s final mix.
pub const FANOUT_MIX: u32 = 0x9e37_79b1;

/// What the AF_PACKET fanout program returns for a packet whose network header starts `net`
/// and whose ethertype is `proto`: the wrapping sum of the source and destination addresses
/// (IPv4, or the eight 32-bit words of both IPv6 addresses) and, for TCP, UDP and SCTP not
/// fragmented (and, on IPv6, without extension headers), the two ports; then mixed
/// (`h * FANOUT_MIX`, xor its top 16 bits into the bottom). Addition commutes, so both
/// directions agree. 0 for anything else, and for a packet too short for a field the
/// program loads (the kernel aborts a cBPF program with 0 there).
pub fn fanout_hash(proto: u16, net: &[u8]) -> u32 {
    let b8 = |at: usize| net.get(at).map(|&b| u32::from(b));
    let b16 = |at: usize| {
        Some(u32::from(u16::from_be_bytes(
            net.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let b32 = |at: usize| Some(u32::from_be_bytes(net.get(at..at + 4)?.try_into().ok()?));
    let ports = |p: u32| matches!(p, 6 | 17 | 132);
    let sum = || -> Option<u32> {
        match proto {
            0x0800 => {
                let addrs = b32(12)?.wrapping_add(b32(16)?);
                if b16(6)? & 0x3fff != 0 || !ports(b8(9)?) {
                    return Some(addrs);
                }
                let ihl = ((b8(0)? & 0x0f) << 2) as usize;
                let (sport, dport) = (b16(ihl)?, b16(ihl + 2)?);
                Some(dport.wrapping_add(sport).wrapping_add(addrs))
            }
            0x86dd => {
                let mut addrs = 0u32;
                for w in 0..8 {
                    addrs = addrs.wrapping_add(b32(8 + 4 * w)?);
                }
                if !ports(b8(6)?) {
                    return Some(addrs);
                }
                let (sport, dport) = (b16(40)?, b16(42)?);
                Some(dport.wrapping_add(sport).wrapping_add(addrs))
            }
            _ => None,
        }
    };
    match proto {
        0x0800 | 0x86dd => sum().map_or(0, |a| {
            let m = a.wrapping_mul(FANOUT_MIX);
            (m >> 16) ^ m
        }),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn tcp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        f.extend_from_slice(&tcp);
        f
    }

    /// A route names the core of the frame's decoded shard, every core for a fragment,
    /// core 0 (and no clock) for what is not TCP, and moves the other cores' clocks exactly
    /// when `moves_clock` says so: a TCP segment, unless `verify_checksums` rejects it.
    #[test]
    fn routes_follow_the_decoder() {
        let cfg = crate::flow::Config::default();
        for cores in [2usize, 3, 8] {
            for i in 0..200u16 {
                let f = tcp_frame([10, 0, (i % 5) as u8, 1], 1000 + i, [10, 9, 0, 2], 80);
                let r = Route::of(Some(LinkType::Ethernet), &f, cores, &cfg);
                let want = frame_shard(LinkType::Ethernet, &f, cores);
                assert!(r.takes(want) && r.moves_clock() && !r.is_decide(), "{r:?}");
                assert_eq!((0..cores).filter(|&c| r.takes(c)).count(), 1, "{r:?}");
            }
        }
        let arp = {
            let mut f = vec![0u8; 42];
            f[12..14].copy_from_slice(&[0x08, 0x06]);
            f
        };
        let r = Route::of(Some(LinkType::Ethernet), &arp, 4, &cfg);
        assert!(r.takes(0) && !r.takes(1) && !r.moves_clock());
        let r = Route::of(None, &arp, 4, &cfg);
        assert!(
            r.takes(0) && !r.moves_clock(),
            "an unsupported link is core 0's to count"
        );
        // A first fragment (more fragments set): every core.
        let mut frag = tcp_frame([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80);
        frag[14 + 6] = 0x20;
        let r = Route::of(Some(LinkType::Ethernet), &frag, 3, &cfg);
        assert!((0..3).all(|c| r.takes(c)), "{r:?}");
        // Checksums: the frame above has a zero TCP checksum, wrong for its bytes.
        let strict = crate::flow::Config {
            verify_checksums: true,
            ..crate::flow::Config::default()
        };
        let f = tcp_frame([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80);
        assert!(Route::of(Some(LinkType::Ethernet), &f, 2, &cfg).moves_clock());
        assert!(!Route::of(Some(LinkType::Ethernet), &f, 2, &strict).moves_clock());
        // Too many cores for a byte: every core decides for itself.
        let r = Route::of(Some(LinkType::Ethernet), &f, Route::MAX_CORES + 1, &cfg);
        assert!(r.is_decide() && !r.takes(0));
    }

    /// Both directions of every flow land on the same core, for any number of cores, and
    /// the flows spread over all of them.
    #[test]
    fn both_directions_meet_on_one_core() {
        let mut flows = Vec::new();
        for i in 0..500u32 {
            let a: IpAddr = format!("10.{}.{}.{}", i % 7, i % 11, i % 13)
                .parse()
                .unwrap();
            let b: IpAddr = format!("192.168.{}.{}", i % 5, i % 17).parse().unwrap();
            let (pa, pb) = (1024 + (i * 7919) as u16 % 50000, 80 + (i % 3) as u16);
            flows.push((a, pa, b, pb));
        }
        for cores in [1usize, 2, 4, 7] {
            let mut used = vec![0u32; cores];
            for &(a, pa, b, pb) in &flows {
                let one = shard_of(symmetric_hash(a, pa, b, pb), cores);
                let other = shard_of(symmetric_hash(b, pb, a, pa), cores);
                assert_eq!(one, other, "{a}:{pa} <-> {b}:{pb} on {cores} cores");
                used[one] += 1;
            }
            assert!(used.iter().all(|&n| n > 0), "{cores} cores: {used:?}");
        }
    }

    /// A raw frame, its decoding and its 4-tuple's hash give the same core.
    #[test]
    fn frame_decoded_and_hash_agree() {
        for i in 0..200u16 {
            let (a, b) = ([10, 0, (i >> 8) as u8, i as u8], [10, 1, 0, 1]);
            let f = tcp_frame(a, 40_000 + i, b, 443);
            let r = tcp_frame(b, 443, a, 40_000 + i);
            for cores in [1usize, 3, 4] {
                let want = shard_of(
                    symmetric_hash(IpAddr::from(a), 40_000 + i, IpAddr::from(b), 443),
                    cores,
                );
                assert_eq!(frame_shard(LinkType::Ethernet, &f, cores), want);
                assert_eq!(frame_shard(LinkType::Ethernet, &r, cores), want);
                let d = Some(wire::decode(LinkType::Ethernet, &f));
                assert_eq!(decoded_shard(&d, cores), want);
            }
        }
        // Not TCP, not decodable: core 0.
        let mut arp = tcp_frame([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(frame_shard(LinkType::Ethernet, &arp, 4), 0);
        assert_eq!(frame_shard(LinkType::Ethernet, &[0u8; 3], 4), 0);
        assert_eq!(decoded_shard(&None, 4), 0);
    }

    #[test]
    fn fanout_hash_is_symmetric_and_zero_when_short() {
        let f = tcp_frame([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80);
        let r = tcp_frame([10, 0, 0, 2], 80, [10, 0, 0, 1], 1234);
        assert_eq!(fanout_hash(0x0800, &f[14..]), fanout_hash(0x0800, &r[14..]));
        assert_ne!(fanout_hash(0x0800, &f[14..]), 0);
        assert_eq!(fanout_hash(0x0800, &f[14..30]), 0);
        assert_eq!(fanout_hash(0x0806, &f[14..]), 0);
    }
}
