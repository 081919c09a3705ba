//! Fuzz `flowpeek::wire::decode`: the first byte picks the link type, the rest is the
//! frame. Decoded TCP segments also go through both checksum functions, and the
//! invariants the flow engine relies on are asserted.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/decode/.
#![cfg_attr(not(test), no_main)]

use flowpeek::wire::{decode, ipv4_header_checksum_ok, tcp_checksum_ok, Decoded, LinkType};

const LINKS: [LinkType; 5] = [
    LinkType::Ethernet,
    LinkType::RawIp,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
];

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(pick) % LINKS.len()];
    match decode(link, frame) {
        Ok(Decoded::Tcp(seg)) => {
            let l3 = usize::from(seg.l3_offset);
            let l4 = usize::from(seg.l4_offset);
            assert!(l3 < l4 && l4 + 20 <= frame.len());
            // The payload is a slice of the frame, after the TCP header.
            let start = seg.payload.as_ptr() as usize - frame.as_ptr() as usize;
            assert!(start >= l4 + 20 && start + seg.payload.len() <= frame.len());
            assert!(seg.payload.len() as u64 <= u64::from(seg.payload_len_on_wire));
            let tcp = tcp_checksum_ok(frame, &seg);
            // Unverifiable exactly when truncated (frames this short cannot hold a TSO
            // IPv4 packet over 64 KiB, the other unverifiable case).
            if frame.len() < 0xffff {
                assert_eq!(tcp.is_none(), seg.is_truncated());
            }
            let ip = ipv4_header_checksum_ok(frame, &seg);
            assert_eq!(ip.is_some(), seg.src.is_ipv4());
        }
        Ok(Decoded::NotTcp | Decoded::Fragment) => {}
        Err(e) => {
            let _ = e.kind_name();
            let _ = e.to_string();
        }
    }
}
