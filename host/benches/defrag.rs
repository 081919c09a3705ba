//! Defragmenter throughput benchmarks (criterion), in datagrams per second.
//!
//! - `reassemble/{2,3}_fragments_v4`, `reassemble/2_fragments_v6`: a 1,400-byte TCP segment
//!   (IPv4) or 1,200-byte one (IPv6) cut into 2 or 3 raw-IP fragments, pushed last fragment
//!   first (out of order, the common case after a parallel path), a new identification per
//!   datagram so that each iteration reassembles a fresh one. Each datagram is decoded by
//!   `wire::decode` as the engine would, so the figure includes handing it on.
//! - `not_a_fragment`: the check an unfragmented frame pays (elements: frames).
//!
//! Time is a counter (1 µs per datagram): no clock is read.

use std::hint::black_box;

use criterion::{criterion_main, Criterion, Throughput};
use flowpeek::ip::{Config, Defragmenter, Outcome};
use flowpeek::wire::{decode, internet_checksum, LinkType};

/// A raw IPv4 fragment of TCP.
fn v4(id: u16, off: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (off / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(data);
    ip
}

/// A raw IPv6 fragment of TCP.
fn v6(id: u32, off: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, 44, 64];
    ip.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip.extend_from_slice(&[6, 0]);
    ip.extend_from_slice(&((off as u16 & 0xfff8) | u16::from(more)).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(data);
    let plen = (ip.len() - 40) as u16;
    ip[4..6].copy_from_slice(&plen.to_be_bytes());
    ip
}

/// A TCP segment (checksum not filled: the bench does not verify it) of `n` payload bytes.
fn segment(n: usize) -> Vec<u8> {
    let mut t = vec![
        4, 0xd2, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    t.extend((0..n).map(|i| i as u8));
    t
}

/// The fragments of one datagram, last one first; `set_id` rewrites their identification.
struct Datagram {
    frames: Vec<Vec<u8>>,
    set_id: fn(&mut [u8], u32),
}

fn cut(seg: &[u8], cuts: &[usize], frame: impl Fn(usize, bool, &[u8]) -> Vec<u8>) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(seg.len());
    let mut frames: Vec<Vec<u8>> = bounds
        .windows(2)
        .map(|w| frame(w[0], w[1] < seg.len(), &seg[w[0]..w[1]]))
        .collect();
    frames.reverse();
    frames
}

fn reassemble(c: &mut Criterion) {
    let seg4 = segment(1400);
    let seg6 = segment(1200);
    let cases = [
        (
            "2_fragments_v4",
            Datagram {
                frames: cut(&seg4, &[712], |o, m, d| v4(0, o, m, d)),
                set_id: |f, id| f[4..6].copy_from_slice(&(id as u16).to_be_bytes()),
            },
        ),
        (
            "3_fragments_v4",
            Datagram {
                frames: cut(&seg4, &[480, 960], |o, m, d| v4(0, o, m, d)),
                set_id: |f, id| f[4..6].copy_from_slice(&(id as u16).to_be_bytes()),
            },
        ),
        (
            "2_fragments_v6",
            Datagram {
                frames: cut(&seg6, &[608], |o, m, d| v6(0, o, m, d)),
                set_id: |f, id| f[44..48].copy_from_slice(&id.to_be_bytes()),
            },
        ),
    ];
    let mut g = c.benchmark_group("reassemble");
    g.throughput(Throughput::Elements(1));
    for (name, mut dg) in cases {
        let mut d = Defragmenter::new(Config::default());
        let mut id = 0u32;
        let mut now = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                id = id.wrapping_add(1);
                now += 1000;
                let mut got = 0;
                let last = dg.frames.len() - 1;
                for (i, f) in dg.frames.iter_mut().enumerate() {
                    (dg.set_id)(f, id);
                    match d.push(LinkType::RawIp, f, now) {
                        Outcome::Complete(out) => {
                            got += black_box(decode(LinkType::RawIp, out.frame)).is_ok() as u32
                        }
                        Outcome::Held if i < last => {}
                        other => panic!("{name}: fragment {i}: {other:?}"),
                    }
                }
                assert_eq!(got, 1);
            })
        });
        assert_eq!(d.stats().in_flight, 0);
    }
    g.finish();

    let plain = {
        let mut f = v4(1, 0, false, &segment(10));
        f[6] = 0x40; // DF
        f
    };
    let mut g = c.benchmark_group("not_a_fragment");
    g.throughput(Throughput::Elements(1));
    let mut d = Defragmenter::new(Config::default());
    g.bench_function("is_fragment", |b| {
        b.iter(|| black_box(Defragmenter::is_fragment(black_box(&plain))))
    });
    g.bench_function("push", |b| {
        b.iter(|| {
            matches!(
                d.push(LinkType::RawIp, black_box(&plain), 1),
                Outcome::NotFragment
            )
        })
    });
    g.finish();
}

#[allow(missing_docs, unreachable_pub)]
mod group {
    use super::reassemble;
    criterion::criterion_group!(benches, reassemble);
}
criterion_main!(group::benches);
