//! Traffic generation and benchmarks for flowpeek, in the style of netmap's pkt-gen.
//!
//! - [`gen`]: TCP connections built from one frame template, only the changing fields
//!   rewritten per packet, payloads reproducible from each connection's seed.
//! - [`out`]: where frames go: flowpeek's shared-memory rings (netmap layout), a real netmap
//!   port's TX rings, or a pcap file.
//! - [`null`]: the null consumer (releases slots only): the ring's ceiling.
//! - [`harness`]: `flowpeek-bench run`: generator and consumer as pinned processes, measured.
//! - [`mangle`]: `flowpeek-bench mangle`: disorderly captures (reordering, duplicates, ACKs
//!   and FINs ahead of data, late packets) made from clean ones.
//! - [`fragment`]: `flowpeek-bench fragment`: IP-fragmented captures (2..=N fragments per
//!   packet, any order, repeats, overlaps of equal bytes) made from clean ones.
//! - [`sweep`]: `flowpeek-bench sweep`: a grid of runs to CSV, JSON and SVG.
//!
//! `unsafe` policy: denied, except in [`harness`], which makes the libc calls the process
//! harness needs (CPU affinity of the children, `wait4` for their resource usage, `kill`).
//! Rings and captures go through flowpeek's own safe interfaces.
#![deny(unsafe_code)]

pub mod fragment;
pub mod gen;
pub mod harness;
pub mod mangle;
pub mod null;
pub mod out;
pub mod sweep;
