//! What a monitor is to the engine: its subscriptions and its callbacks.

use super::api::Cx;
use super::engine::Setup;
use super::types::{Event, EventKind, FlowHandle, Hook};

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

    /// Called for every subscribed event.
    fn on_event(&mut self, cx: &mut Cx<'_>, event: &Event);

    /// Called when a timer set with [`Cx::set_timer`] or [`Cx::set_core_timer`] is due.
    /// `flow` is `None` for core timers.
    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let _ = (cx, flow, tag);
    }
}
