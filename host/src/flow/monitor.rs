//! What a monitor is to the engine: its subscriptions, its callbacks ([`Monitor`]) and
//! what it may do when it is installed ([`Setup`]).
//!
//! Owns: the [`Monitor`] trait and [`Setup`] ([`Subscriptions`] are `subscriptions.rs`'s). Must
//! not: hold engine state; a monitor reaches the engine only through its `Cx` or `Setup`.

use super::api::{define_user_event, Cx, Errno, Filter, UserEvent};
use super::dispatch::Held;
use super::subscriptions::Subscriptions;
use super::types::{Event, EventKind, FlowHandle, Hook};
use crate::filter::StreamFilter;

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
