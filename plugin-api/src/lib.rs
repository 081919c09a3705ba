//! The stable plugin ABI of flowpeek and its SDK.
//!
//! Not implemented yet: this crate is reserved for the plugin host (abi_stable root module,
//! host vtable with the read API of SPEC §4, a safe `Monitor` trait and an export macro).
//! Until then monitors are Rust types implementing `flowpeek::flow::Monitor` in-process.
