//! Line-rate traffic generator and benchmarks for flowpeek.
//!
//! Not implemented yet: this crate is reserved for the pkt-gen-style generator into netmap
//! and shared-memory rings. Today the engine's benchmark is `cargo bench -p flowpeek`.
