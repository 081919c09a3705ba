//! flowpeek: watch TCP traffic at line rate, with the monitoring model of mOS.
//!
//! The crate is organised one folder per concept; each module's doc says what it owns and
//! what it must not do:
//!
//! - [`wire`]: zero-copy, panic-free views of link, IP and TCP headers.
//! - [`flow`]: the sans-I/O engine: flow table, both-sided TCP state, receive buffers,
//!   events and the `ppeek`/`peek` read API. Time is an input; it never reads a clock.
//! - [`filter`]: stream filters in tcpdump syntax, compiled and matched by libpcap (FFI,
//!   like `io` and `plugin`).
//! - [`ip`]: IP fragment reassembly, bounded and policy-aware, before the decoder.
//! - [`io`]: packet sources behind one trait, `io::Source`: capture files, shm and netmap
//!   rings (one ring walker), AF_PACKET; and the symmetric shard of a frame.
//! - [`plugin`]: monitor plugins: loading, generations, hot reload, the host side of the ABI.
//! - [`run`]: `flowpeek run`: a source, the engine and the plugins, with stats.
//! - [`worker`]: one thread per core, pinned, sharded by the symmetric flow hash.
//! - [`streams`]: the `flowpeek streams` report built on the engine's read API.
//! - [`sys`]: thread affinity, huge pages and prefetch hints: the only `unsafe` outside
//!   `io`, `plugin` and `filter`.
//! - [`trace`]: the `flowpeek events` trace, one line per callback in mOS's vocabulary.
#![deny(unsafe_code)]

pub mod filter;
pub mod flow;
pub mod follow;
pub mod io;
pub mod ip;
pub mod plugin;
pub mod run;
pub mod stream_files;
pub mod streams;
pub mod sys;
/// Test support (the corpus location), public only for the test crates.
#[doc(hidden)]
pub mod testing;
pub mod trace;
pub mod wire;
pub mod worker;
