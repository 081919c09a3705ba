//! Fuzz the IP defragmenter (`flowpeek::ip::Defragmenter`): sequences of IPv4 and IPv6
//! fragments of a few datagrams (any offsets, lengths, flags and fills, so duplicates,
//! overlaps and contradictions), interleaved with time jumps and raw fuzzer frames, under a
//! policy and small bounds picked by the input.
//!
//! Invariants, after every push: the memory held stays within the cap (give or take the
//! one fragment being pushed, which is checked against the cap before it returns), the
//! datagrams in flight within their bound; every datagram handed out decodes as IP, its
//! provenance covers its payload exactly, without overlap, and every byte is the byte the
//! named source fragment carried at that offset.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/defrag/.
#![cfg_attr(not(test), no_main)]

use std::collections::HashMap;

use flowpeek::ip::{Config, Defragmenter, Outcome, Policy};
use flowpeek::wire::LinkType;

const SEC: u64 = 1_000_000_000;

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }
}

fn internet_checksum(data: &[u8]) -> u16 {
    flowpeek::wire::internet_checksum(data)
}

/// A raw IPv4 fragment of datagram `id` (protocol 17 or TCP by `tcp`).
fn v4(id: u16, tcp: bool, off: u32, more: bool, data: &[u8]) -> Vec<u8> {
    let proto = if tcp { 6 } else { 17 };
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let total = (20 + data.len()).min(0xffff) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = ((off / 8) as u16 & 0x1fff) | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(data);
    ip
}

/// A raw IPv6 fragment of datagram `id`.
fn v6(id: u32, tcp: bool, off: u32, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, 44, 64];
    ip.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    let flags = (off as u16 & 0xfff8) | u16::from(more);
    ip.extend_from_slice(&[if tcp { 6 } else { 17 }, 0]);
    ip.extend_from_slice(&flags.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(data);
    let plen = (ip.len() - 40).min(0xffff) as u16;
    ip[4..6].copy_from_slice(&plen.to_be_bytes());
    ip
}

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let Some(setup) = input.byte() else {
        return;
    };
    let cfg = Config {
        policy: Policy::ALL[usize::from(setup) % Policy::ALL.len()],
        memory: [2048, 16 << 10, 256 << 10, 8 << 20][usize::from(setup >> 3) & 3],
        max_fragments: [3, 16, 64, 200][usize::from(setup >> 5) & 3],
        max_datagrams: [1, 4, 64][usize::from(setup >> 7) & 1],
        ..Config::default()
    };
    let mut d = Defragmenter::new(cfg);
    // What each fragment push carried: (payload offset, bytes), by push number.
    let mut sent: HashMap<u64, (u32, Vec<u8>)> = HashMap::new();
    let mut now = SEC;
    while let Some(op) = input.byte() {
        let push = d.pushes();
        let (frame, fragment) = match op >> 6 {
            0 | 1 => {
                let Some(b) = input.u16() else { break };
                let Some(len) = input.byte() else { break };
                let Some(fill) = input.byte() else { break };
                let v6_ = op & 1 != 0;
                let id = (op >> 1) & 3;
                let more = op & 0x08 != 0;
                let tcp = op & 0x10 != 0;
                // Offsets in 8-byte units (mostly small, sometimes near the end), lengths
                // mostly multiples of 8.
                let off = u32::from(b & 0x1fff) * 8;
                let len = if op & 0x20 != 0 {
                    usize::from(len) * 8
                } else {
                    usize::from(len)
                };
                let bytes: Vec<u8> = (0..len)
                    .map(|i| fill.wrapping_add((i as u8).wrapping_mul(31)))
                    .collect();
                let frame = if v6_ {
                    v6(u32::from(id), tcp, off, more, &bytes)
                } else {
                    v4(u16::from(id), tcp, off, more, &bytes)
                };
                (frame, Some((off, bytes)))
            }
            2 => {
                // Time passes: up to 127 s.
                now += u64::from(op & 0x3f) * 2 * SEC;
                d.expire(now);
                continue;
            }
            _ => {
                let Some(n) = input.byte() else { break };
                let n = usize::from(n).min(input.0.len());
                let (raw, rest) = input.0.split_at(n);
                input.0 = rest;
                (raw.to_vec(), None)
            }
        };
        let done = match d.push(LinkType::RawIp, &frame, now) {
            Outcome::Complete(dg) => Some(dg.frame.to_vec()),
            _ => None,
        };
        if d.pushes() > push {
            if let Some(f) = fragment {
                sent.insert(push, f);
            }
        }
        let st = *d.stats();
        assert!(
            st.memory <= cfg.memory as u64,
            "memory {} over {}",
            st.memory,
            cfg.memory
        );
        assert!(st.in_flight <= cfg.max_datagrams as u64);
        assert!(st.peak_memory <= cfg.memory as u64);
        let Some(dg) = done else {
            continue;
        };
        let header = match dg[0] >> 4 {
            4 => usize::from(dg[0] & 0x0f) * 4,
            6 => 40,
            v => panic!("datagram of IP version {v}"),
        };
        let body = &dg[header..];
        let mut at = 0u32;
        for p in d.provenance() {
            assert_eq!(p.start, at, "provenance has a gap or an overlap");
            assert!(p.end > p.start);
            if let Some((off, bytes)) = sent.get(&p.push) {
                assert!(*off <= p.start && p.end as usize <= *off as usize + bytes.len());
                let want = &bytes[(p.start - off) as usize..(p.end - off) as usize];
                assert_eq!(
                    &body[p.start as usize..p.end as usize],
                    want,
                    "byte from push {}",
                    p.push
                );
            }
            at = p.end;
        }
        assert_eq!(
            at as usize,
            body.len(),
            "provenance does not cover the payload"
        );
        // Raw frames are IP; the decoder takes every datagram without panicking.
        let _ = flowpeek::wire::decode(LinkType::RawIp, &dg);
    }
}
