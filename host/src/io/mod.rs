//! Packet sources: where captured frames come from, and which core they go to.
//!
//! `io` owns getting frames, with their timestamp and link type, into the process, behind
//! one contract: [`Source`] (a batch of frames lent to a [`Sink`], then released; an idle
//! policy; a lookahead hook), which the one per-core loop of [`crate::worker`] is generic
//! over. The sources:
//!
//! - [`replay::PcapReplay`]: a pcap or pcapng file ([`pcap::CaptureFile`], read through a
//!   read-only memory map, zero-copy [`pcap::CapturedPacket`]s), one core's shard of it,
//!   paced and looped.
//! - [`shm::ShmRing`]: one netmap-layout ring in a `/dev/shm` file filled by another process
//!   (the benchmarks' generator).
//! - [`netmap::NetmapPort`]: a real netmap port; its rings are walked by the code that walks
//!   shm rings ([`netmap::RxRing::feed`]), so both get the same lookahead.
//! - [`afpacket::AfPacketSocket`]: a Linux interface through a `TPACKET_V3` ring, one socket
//!   per core in a symmetric fanout group.
//! - [`stream`]: captures read sequentially in bounded memory (files, stdin, pipes, gzip /
//!   zstd / xz), framed by [`pcap::Framer`] and fanned out in chunks to every core: the
//!   input of `streams` and `events` (not a [`Source`]: those commands drive their engines
//!   themselves).
//!
//! [`shard`] says which core a flow belongs to (one symmetric hash for every source that
//! shards in user space, and the statement of the kernel's fanout hash). Capture and ring
//! frames get their time from the capture or from the worker's wall clock, sampled once per
//! batch; either is the engine's clock (ns since the Unix epoch). Errors are
//! [`SourceError`], which nests each source's own.
//!
//! What `io` must not do: parse beyond what sharding and dispatch need. It reads the capture
//! container and the ring or block framing, and for sharding the 4-tuple; link, IP and TCP
//! headers belong to [`crate::wire`], and everything stateful to [`crate::flow`]. `unsafe`
//! lives here only at the OS edges (mappings, system calls, ring memory), each block with
//! its safety argument.

pub mod afpacket;
mod mapguard;
pub mod netmap;
pub mod pcap;
pub mod replay;
pub mod shard;
pub mod shm;
pub mod source;
pub mod stream;

pub use pcap::{CaptureError, CaptureFile, CaptureFormat, CapturedPacket, Packets};
pub use source::{Batch, Idle, Sink, Source, SourceError};
