//! The sans-I/O monitoring engine: flow table, both-sided TCP state, receive buffers,
//! events and the `ppeek`/`peek` read API, with the semantics of docs/SPEC.md.
//!
//! Owns: the per-core flow table (fixed capacity, symmetric key, eviction of the least
//! recently active flow), each side's emulated TCP state machine and receive buffer,
//! dispatch of events to monitors in SPEC §2.1's order, `NewData` coalescing per batch,
//! user-defined events, per-flow subscriptions, timers, idle timeout and TIME_WAIT.
//!
//! Must not: do I/O, read a clock (time is the packets' timestamps, passed in), spawn
//! threads, or allocate per packet (buffers are pooled per side, the table is preallocated).
//!
//! Driving it: call [`Engine::on_frame`] (or [`Engine::on_segment`]) for each packet of a
//! batch, then [`Engine::end_batch`]; at the end, [`Engine::finish`].
//!
//! One file per concept, in the order a packet meets them:
//! - `key.rs`: the symmetric flow key and hash, and the quick hash of a raw frame.
//! - `engine.rs`: [`Engine`], the orchestration of the parts below per packet and batch.
//! - `table.rs`: flow slots (`FlowIdx`), the hash index, the idle (LRU) and TIME_WAIT lists.
//! - `tcp.rs`: each side's emulated TCP state machine, RST window checks.
//! - `reassembly.rs`: the receive path: offsets, overlaps, skipped gaps, `NewData` marks.
//! - `disorder.rs`: reordering on the tap: when a gap is skipped, FIN/RST held until the
//!   stream reaches them, a FIN whose ACK came first.
//! - `tombstone.rs`: closed connections, so that their late packets count as `late`.
//! - `buffer.rs`: one side's receive buffer, and the pool bounded by `buffer_memory`.
//! - `dispatch.rs`: event order, subscriptions, user-defined events and [`Filter`]s.
//! - `timers.rs`: monitors' timers, idle and TIME_WAIT expiry, the next deadline.
//! - `api.rs`: [`Cx`], the read API of a callback; `monitor.rs`: [`Monitor`], [`Setup`].
//! - `config.rs`: [`Config`]; `stats.rs`: [`Stats`]; `types.rs`: the event vocabulary.

mod api;
mod buffer;
mod config;
mod disorder;
mod dispatch;
mod engine;
mod key;
mod monitor;
mod reassembly;
mod stats;
mod table;
mod tcp;
#[cfg(test)]
mod testing;
mod timers;
mod tombstone;
mod types;

pub use api::{BufferInfo, Cx, Errno, FlowTimes, PeekError};
pub use buffer::{OverlapPolicy, MAX_FRAGMENTS};
pub use config::Config;
pub use dispatch::{Deferred, Filter, ForeignFilter, Held, UserFilter, HELD_MAX};
pub use engine::{Engine, Handed, HandoffRoute};
pub use key::{quick_frame_hash, symmetric_hash};
pub use monitor::{BufferRequest, Monitor, Setup, Subscriptions};
pub use stats::Stats;
pub use table::{LastPacket, PREFETCH_MIN_FLOWS};
pub use tombstone::TOMBSTONE_TTL;
pub use types::*;
