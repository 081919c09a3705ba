//! What a monitor subscribes to: the (event, hook) pairs it receives for every flow, the
//! ones it takes in batches, and the receive buffers it needs.
//!
//! Owns: [`Subscriptions`] and [`BufferRequest`]. Must not: know monitors or the engine;
//! dispatch reads these masks, a monitor's `Cx` changes them per flow.

use super::types::{EventKind, Hook};
use flowpeek_plugin_api::codes::BuiltinEvent;

/// The subscription bits of the events that may be held for a batch.
const BATCHABLE_MASK: u64 = BuiltinEvent::BATCHABLE_MASK;

/// How much receive buffer a monitor wants for one side of every flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BufferRequest {
    /// No buffer: this monitor reads no bytes of that side.
    #[default]
    Off,
    /// The configured capacity (`buffer_capacity`, 8 KiB by default).
    Default,
    /// At least this many bytes.
    AtLeast(u32),
}

/// The (event, hook) pairs a monitor receives for every flow, and the buffers it needs.
///
/// A monitor can change its subscriptions for one flow from inside a callback
/// ([`Cx::subscribe`](super::Cx::subscribe), [`Cx::unsubscribe`](super::Cx::unsubscribe)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub(crate) mask: u64,
    /// The bits of `mask` delivered in batches ([`Monitor::on_batch`](super::Monitor::on_batch), SPEC §2.4).
    pub(crate) batch: u64,
    /// Buffer wanted for the `Client` side (server→client bytes) and the `Server` side.
    pub buffers: [BufferRequest; 2],
}

impl Subscriptions {
    /// Nothing.
    pub fn none() -> Subscriptions {
        Subscriptions::default()
    }

    /// Adds `(event, hook)`.
    #[must_use]
    pub fn with(mut self, event: EventKind, hook: Hook) -> Subscriptions {
        self.mask |= event.bit(hook);
        self
    }

    /// Adds every built-in event at every hook SPEC §2 allows for it.
    #[must_use]
    pub fn all_builtin() -> Subscriptions {
        Subscriptions {
            mask: BuiltinEvent::ALL_MASK,
            ..Subscriptions::none()
        }
    }

    /// Asks for a buffer on both sides.
    #[must_use]
    pub fn with_buffers(mut self, request: BufferRequest) -> Subscriptions {
        self.buffers = [request, request];
        self
    }

    /// Adds `(event, hook)`, delivered in batches (SPEC §2.4): the engine holds the event
    /// and hands it to [`Monitor::on_batch`](super::Monitor::on_batch) with the others of its batch, before the next
    /// event it delivers to this monitor as it happens, before any `ConnEnd`, and at the
    /// start and end of [`Engine::end_batch`](super::Engine::end_batch). `Timeout`, `ConnEnd`,
    /// `Orphan` and user events are never held (they are subscribed as with
    /// [`with`](Self::with)).
    #[must_use]
    pub fn with_batched(mut self, event: EventKind, hook: Hook) -> Subscriptions {
        self.mask |= event.bit(hook);
        self.batch |= event.bit(hook) & BATCHABLE_MASK;
        self
    }

    /// The bits of `mask` delivered in batches.
    pub fn batch_mask(&self) -> u64 {
        self.batch & self.mask
    }

    /// Sets which subscribed bits are delivered in batches (only batchable events count).
    pub fn set_batch_mask(&mut self, mask: u64) {
        self.batch = mask & BATCHABLE_MASK;
    }

    /// The raw subscription mask (the ABI's encoding).
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Whether `(event, hook)` is subscribed.
    pub fn contains(&self, event: EventKind, hook: Hook) -> bool {
        self.mask & event.bit(hook) != 0
    }
}
