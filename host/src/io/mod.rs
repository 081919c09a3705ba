//! Packet sources: where captured frames come from.
//!
//! `io` owns getting frames, with their capture timestamp and link type, into the process.
//! [`pcap::CaptureFile`] reads legacy pcap and pcapng files through a read-only memory map
//! and hands out zero-copy [`pcap::CapturedPacket`]s; [`afpacket::AfPacketSocket`] captures
//! live from a Linux interface through a `TPACKET_V3` ring, with symmetric fanout groups.
//! Capture timestamps become the engine's clock (nanoseconds since the Unix epoch).
//!
//! What `io` must not do: parse beyond what dispatch needs. It reads the capture
//! container (file headers, record and block framing, per-interface link type and timestamp
//! resolution) and stops there; link, IP and TCP headers belong to [`crate::wire`], and
//! everything stateful to [`crate::flow`].

pub mod afpacket;
pub mod netmap;
pub mod pcap;
pub mod ring;
pub mod shm;

pub use pcap::{CaptureError, CaptureFile, CaptureFormat, CapturedPacket, Packets};
