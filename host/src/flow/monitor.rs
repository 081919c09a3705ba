//! What a monitor is to the engine: its subscriptions, its callbacks ([`Monitor`]) and
//! what it may do when it is installed ([`Setup`]).
//!
//! Owns: the [`Monitor`] trait, [`Subscriptions`], [`BufferRequest`] and [`Setup`]. Must
//! not: hold engine state; a monitor reaches the engine only through its `Cx` or `Setup`.

use super::api::{Cx, Errno};
use super::dispatch::{define_user_event, Filter, Held, UserEvent};
use super::types::{Event, EventKind, FlowHandle, Hook};
use crate::filter::StreamFilter;
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
/// ([`Cx::subscribe`], [`Cx::unsubscribe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub(crate) mask: u64,
    /// The bits of `mask` delivered in batches ([`Monitor::on_batch`], SPEC §2.4).
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
        use EventKind::*;
        let mut s = Subscriptions::none();
        for e in [PktIn, ConnStart, TcpStateChange, ConnEnd] {
            s = s.with(e, Hook::Snd).with(e, Hook::Rcv);
        }
        s.with(Rexmit, Hook::Rcv)
            .with(NewData, Hook::None)
            .with(Error, Hook::None)
            .with(Timeout, Hook::None)
            .with(Orphan, Hook::None)
    }

    /// Asks for a buffer on both sides.
    #[must_use]
    pub fn with_buffers(mut self, request: BufferRequest) -> Subscriptions {
        self.buffers = [request, request];
        self
    }

    /// Adds `(event, hook)`, delivered in batches (SPEC §2.4): the engine holds the event
    /// and hands it to [`Monitor::on_batch`] with the others of its batch, before the next
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

/// A monitor: receives events and reads the flows' buffers through its [`Cx`].
///
/// Built-in monitors (like the one behind `flowpeek streams`) implement this directly;
/// plugins are adapted to it by the plugin host.
pub trait Monitor {
    /// A short name, for logs and statistics.
    fn name(&self) -> &str;

    /// What this monitor wants for every flow; read once when the engine is built.
    fn subscriptions(&self) -> Subscriptions;

    /// Called once when the monitor is installed into an engine, before its first event:
    /// define user events and subscribe to them here.
    fn setup(&mut self, setup: &mut Setup<'_>) {
        let _ = setup;
    }

    /// This monitor's stream filter (tcpdump syntax): flows whose first packet it does not
    /// match never reach this monitor. Read when the monitor is installed; change it later
    /// with [`Engine::set_monitor_filter`](super::Engine::set_monitor_filter).
    fn filter(&self) -> Option<StreamFilter> {
        None
    }

    /// Called for every subscribed event.
    fn on_event(&mut self, cx: &mut Cx<'_>, event: &Event);

    /// Called with the events held for this monitor's batch ([`Subscriptions::with_batched`]),
    /// in the order they happened; returns how many it delivered. During each one,
    /// [`Cx::deferred`] tells what the engine knew of its packet. A callback that changes what
    /// comes next (stops monitoring, changes a subscription or a buffer, raises an event) cuts
    /// the batch: return right after it (the default does, on [`Cx::cut`]); the engine then
    /// delivers what that callback queued and calls again with the rest, less what no longer
    /// applies.
    fn on_batch(&mut self, cx: &mut Cx<'_>, events: &[Held]) -> usize {
        let mut n = 0;
        for h in events {
            cx.set_deferred(Some(h.info));
            n += 1;
            self.on_event(cx, &h.ev);
            if cx.cut() {
                break;
            }
        }
        cx.set_deferred(None);
        n
    }

    /// Called when a timer set with [`Cx::set_timer`] or [`Cx::set_core_timer`] is due.
    /// `flow` is `None` for core timers.
    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let _ = (cx, flow, tag);
    }

    /// Called at batch boundaries (the start and end of
    /// [`Engine::end_batch`](super::Engine::end_batch) and the end of
    /// [`Engine::finish`](super::Engine::finish)) after the held events were delivered:
    /// publish counters here. Nothing may be delivered from it.
    fn batch_done(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }

    /// The monitor as `Any`, for the code that hosts it (the plugin host reaches its slots
    /// through the engine with it).
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// What a monitor may do when it is installed, before its first event: define user events
/// and subscribe to them ([`Monitor::setup`]).
pub struct Setup<'a> {
    user_events: &'a mut Vec<UserEvent>,
    subs: &'a mut Subscriptions,
}

impl<'a> Setup<'a> {
    pub(crate) fn new(user_events: &'a mut Vec<UserEvent>, subs: &'a mut Subscriptions) -> Self {
        Setup { user_events, subs }
    }

    /// Defines a user event (see [`Engine::define_event`](super::Engine::define_event)).
    pub fn define_event(
        &mut self,
        base: EventKind,
        filter: Option<Filter>,
        arg: u64,
    ) -> Result<EventKind, Errno> {
        define_user_event(self.user_events, base, filter, arg)
    }

    /// Subscribes this monitor to `(event, hook)` for all flows.
    pub fn subscribe(&mut self, event: EventKind, hook: Hook) {
        self.subs.mask |= event.bit(hook);
    }
}
