//! Test support for the flow modules' unit tests: segments of one connection and a
//! monitor that records what it is given. Test builds only.

use std::cell::RefCell;
use std::rc::Rc;

use super::api::Cx;
use super::monitor::Monitor;
use super::subscriptions::{BufferRequest, Subscriptions};
use super::types::{Event, FlowHandle};
use crate::wire::{TcpFlags, TcpOptions, TcpSegment};

/// The client's port; the server listens on 80.
pub(crate) const CLIENT_PORT: u16 = 40000;

/// A segment of the connection 10.0.0.1:40000 → 10.0.0.2:80 (`from_client`) or back.
pub(crate) fn seg(
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> TcpSegment<'_> {
    let (c, s) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let (src, dst, src_port, dst_port) = if from_client {
        (c, s, CLIENT_PORT, 80)
    } else {
        (s, c, 80, CLIENT_PORT)
    };
    TcpSegment {
        src,
        dst,
        src_port,
        dst_port,
        seq,
        ack,
        flags: TcpFlags(flags),
        window: 65535,
        urgent: 0,
        options: TcpOptions::default(),
        payload,
        payload_len_on_wire: payload.len() as u32,
        vlan_depth: 0,
        l3_offset: 0,
        l4_offset: 20,
    }
}

/// What a [`Recorder`] saw: (its name, the event).
pub(crate) type Log = Rc<RefCell<Vec<(&'static str, Event)>>>;

/// A monitor subscribed to every built-in event, with buffers, that logs each event.
pub(crate) struct Recorder {
    pub(crate) name: &'static str,
    pub(crate) log: Log,
    pub(crate) subs: Subscriptions,
    /// Runs inside each event, after logging it.
    #[allow(clippy::type_complexity)]
    pub(crate) then: Option<Box<dyn FnMut(&mut Cx<'_>, &Event)>>,
}

impl Recorder {
    pub(crate) fn new(name: &'static str, log: &Log) -> Recorder {
        Recorder {
            name,
            log: Rc::clone(log),
            subs: Subscriptions::all_builtin().with_buffers(BufferRequest::Default),
            then: None,
        }
    }
}

impl Monitor for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn subscriptions(&self) -> Subscriptions {
        self.subs
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, event: &Event) {
        self.log.borrow_mut().push((self.name, *event));
        if let Some(f) = self.then.as_mut() {
            f(cx, event);
        }
    }

    fn on_timer(&mut self, _cx: &mut Cx<'_>, _flow: Option<FlowHandle>, _tag: u64) {}
}
