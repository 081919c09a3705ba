//! Traffic generation and benchmarks for flowpeek, in the style of netmap's pkt-gen.
//!
//! - [`gen`]: TCP connections built from one frame template, only the changing fields
//!   rewritten per packet, payloads reproducible from each connection's seed.
//! - [`out`]: where frames go: flowpeek's shared-memory rings (netmap layout) or a pcap file.

pub mod gen;
pub mod out;
