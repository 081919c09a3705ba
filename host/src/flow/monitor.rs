//! What a monitor is to the engine: its subscriptions, its callbacks ([`Monitor`]) and
//! what it may do when it is installed ([`Setup`]).
//!
//! Owns: the [`Monitor`] trait, [`Subscriptions`], [`BufferRequest`] and [`Setup`]. Must
//! not: hold engine state; a monitor reaches the engine only through its `Cx` or `Setup`.

use super::api::{Cx, Errno};
use super::dispatch::{define_user_event, Filter, UserEvent};
use super::types::{Event, EventKind, FlowHandle, Hook};
use crate::filter::StreamFilter;

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

    /// Called when a timer set with [`Cx::set_timer`] or [`Cx::set_core_timer`] is due.
    /// `flow` is `None` for core timers.
    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let _ = (cx, flow, tag);
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
