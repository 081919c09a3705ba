//! The sans-I/O monitoring engine: flow table, both-sided TCP state, receive buffers,
//! events and the `ppeek`/`peek` read API, with the semantics of shared/docs/SPEC.md.
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

mod api;
mod buffer;
mod engine;
mod key;
mod monitor;
mod types;

pub use api::{BufferInfo, Cx, Errno, FlowTimes, PeekError};
pub use buffer::{OverlapPolicy, MAX_FRAGMENTS};
pub use engine::{
    Config, Engine, Filter, ForeignFilter, LastPacket, Setup, Stats, UserFilter, PREFETCH_MIN_FLOWS,
};
pub use key::symmetric_hash;
pub use monitor::{BufferRequest, Monitor, Subscriptions};
pub use types::*;
