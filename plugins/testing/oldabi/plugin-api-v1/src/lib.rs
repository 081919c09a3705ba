//! The stable plugin ABI of flowpeek, and the SDK to write monitor plugins.
//!
//! A plugin is a `cdylib` that exports one root module with [`export_monitor!`]. The host
//! loads it with abi_stable, which checks the layout of every type crossing the boundary
//! and refuses a library built against an incompatible interface; [`abi::API_VERSION`] is
//! checked on top. Write the plugin against the safe [`sdk`]:
//!
//! ```ignore
//! use flowpeek_plugin_api::sdk::*;
//!
//! struct Count(u64);
//!
//! impl Monitor for Count {
//!     const NAME: &'static str = "count";
//!     fn new(_core: u32, _config: &str) -> Result<Self, String> { Ok(Count(0)) }
//!     fn subscriptions(&self) -> Subscriptions {
//!         Subscriptions::none().with(EventKind::ConnStart, Hook::Snd)
//!     }
//!     fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
//!         self.0 += 1;
//!         let _ = cx.emit(&format!("{{\"flows\":{}}}", self.0));
//!     }
//! }
//!
//! flowpeek_plugin_api::export_monitor!(Count);
//! ```
//!
//! What a plugin sees is SPEC.md §2–4: the events, `ppeek`/`peek` with its errno values, the
//! information calls and setters, user-defined events, timers, and a record sink (`emit`).
//!
//! `unsafe` policy: denied in the whole crate except [`sdk`], the one place that crosses the
//! FFI boundary (it calls the host's function pointers, turns the host's raw pointers back
//! into references for the duration of a callback, and exports the `extern "C"` glue).
//! [`abi`] only declares `#[repr(C)]` types and function-pointer types and needs none.
#![deny(unsafe_code)]

pub mod abi;
pub mod codes;
pub mod records;
// The FFI edge of a plugin: every block documents its `// SAFETY:` (clippy's
// undocumented_unsafe_blocks is denied for the workspace).
#[allow(unsafe_code)]
pub mod sdk;

#[doc(hidden)]
pub use sdk::__filter_args;
