//! The IP layer between capture and TCP: reassembly of IPv4 and IPv6 fragments.
//!
//! Owns [`defrag`], a sans-I/O defragmenter: frames in (with their packet time), whole
//! datagrams out, as frames [`crate::wire::decode`] parses like any other. It must not know
//! about flows, TCP state or cores: the caller decides which frames reach it and where the
//! datagrams go. Time is an input; it never reads a clock.

pub mod defrag;

pub use defrag::{Config, Datagram, Defragmenter, DropReason, Outcome, Policy, Stats};
