//! The state of event delivery kept between callbacks (SPEC §2.1, §2.2, §2.4): who
//! subscribed to what, the events raised from callbacks and the monitors owed a `ConnEnd`,
//! the events held for each monitor's batch ([`Held`], with what the engine knew of their
//! packet, [`Deferred`]), the orphan packet being delivered, and the stream filters that
//! decide which monitors see a new flow.
//!
//! Owns: [`Dispatch`], the part of the engine a callback may change through its `Cx`, and
//! [`Order`]. The delivery itself (who is called, in which order) is `deliver.rs`'s. Must
//! not: call monitors, change TCP state or buffers.

use std::net::SocketAddr;

use super::subscriptions::{BufferRequest, Subscriptions};
use super::table::{FlowIdx, LastPacket};
use super::types::*;
use crate::filter::StreamFilter;
use crate::wire::LinkType;

/// What the engine knew of a held event's packet when the event happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deferred {
    /// When the event happened (ns).
    pub ts: u64,
    /// The stream offset of the packet's first payload byte (sender's direction); for an
    /// event not driven by a packet, the contiguous end of the event's side.
    pub offset: u64,
    /// The packet's payload length (0 when not driven by a packet).
    pub payload_len: u32,
    /// The packet's TCP flags (0 when not driven by a packet).
    pub flags: u8,
}

/// An event held for a monitor's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The event.
    pub ev: Event,
    /// Its packet, as it was.
    pub info: Deferred,
}

/// A monitor's batch is handed over when it holds this many events.
pub const HELD_MAX: usize = 256;

/// Why an event is being dispatched: decides the monitor order (SPEC §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Load order: client-sent packets, and events not driven by a packet.
    Load,
    /// Reverse load order: server-sent packets.
    Reverse,
}

/// The monitor number of a filter's context: it reads, but has no per-flow state.
pub(crate) const FILTER: usize = usize::MAX;

/// What dispatching keeps between callbacks, and what a callback may change.
pub(crate) struct Dispatch {
    /// Each monitor's subscriptions for future flows.
    pub(crate) subs: Vec<Subscriptions>,
    /// Every bit any monitor subscribed to, for any flow: events nobody wants are not built.
    pub(crate) any_mask: u64,
    /// Events raised from callbacks, delivered after the current one.
    pub(crate) raised: Vec<Event>,
    /// (monitor, slot, generation) that stopped a flow inside a callback and are owed
    /// their `ConnEnd`.
    pub(crate) stopped: Vec<(u32, FlowIdx, u32)>,
    /// `after_callback` is delivering queued events (see there).
    pub(crate) delivering: bool,
    /// The orphan packet being delivered (`last_packet` of an `Orphan` handle).
    pub(crate) orphan: LastPacket,
    pub(crate) orphan_addrs: Option<(SocketAddr, SocketAddr)>,
    /// The filter applied before any monitor (`Config::filter`).
    pub(crate) global: Option<StreamFilter>,
    /// Each monitor's own filter (`None`: every flow).
    pub(crate) filters: Vec<Option<StreamFilter>>,
    /// The masks a new flow starts with when some monitor has a filter (reused: no
    /// allocation per flow).
    flow_masks: Vec<u64>,
    /// Per monitor, the events held for its batch (grown on first use).
    pub(crate) held: Vec<Vec<Held>>,
    /// Some monitor holds events.
    pub(crate) held_any: bool,
    /// The running callback changed what comes next (stop, subscription, buffer, raise):
    /// its batch is cut after it.
    pub(crate) cut: bool,
}

impl Dispatch {
    /// The state for monitors subscribed to `subs`.
    pub(crate) fn new(subs: Vec<Subscriptions>) -> Dispatch {
        let any_mask = subs.iter().fold(0, |a, s| a | s.mask);
        Dispatch {
            subs,
            any_mask,
            raised: Vec::new(),
            stopped: Vec::new(),
            delivering: false,
            orphan: LastPacket::default(),
            orphan_addrs: None,
            global: None,
            filters: Vec::new(),
            flow_masks: Vec::new(),
            held: Vec::new(),
            held_any: false,
            cut: false,
        }
    }

    /// Whether the packet that would start a flow passes the global filter.
    #[inline]
    pub(crate) fn global_passes(&mut self, link: Option<LinkType>, frame: &[u8]) -> bool {
        match &mut self.global {
            None => true,
            Some(f) => f.matches(link, frame),
        }
    }

    /// Sets monitor `monitor`'s filter, for flows that start from now on.
    pub(crate) fn set_filter(&mut self, monitor: usize, filter: Option<StreamFilter>) {
        if self.filters.len() <= monitor {
            self.filters.resize_with(monitor + 1, || None);
        }
        self.filters[monitor] = filter;
    }

    /// Evaluates the monitors' filters on the first packet of a flow: `false` when some
    /// monitor has a filter and no monitor matches (the flow is not tracked). Otherwise
    /// [`masks`](Self::masks) and [`wanted_capacity`](Self::wanted_capacity) leave out the
    /// monitors whose filter did not match, until the next call.
    pub(crate) fn select(&mut self, link: Option<LinkType>, frame: &[u8]) -> bool {
        self.flow_masks.clear();
        if self.filters.iter().all(Option::is_none) {
            return true;
        }
        let mut any = false;
        for (i, s) in self.subs.iter().enumerate() {
            let pass = match self.filters.get_mut(i) {
                Some(Some(f)) => f.matches(link, frame),
                _ => true,
            };
            any |= pass;
            self.flow_masks.push(if pass { s.mask } else { 0 });
        }
        any
    }

    /// Whether any monitor subscribed to `bit` (for some flow).
    #[inline]
    pub(crate) fn wanted(&self, bit: u64) -> bool {
        self.any_mask & bit != 0
    }

    /// The receive-buffer capacity of each side of a new flow: the largest any monitor
    /// asked for (`default` for [`BufferRequest::Default`]).
    pub(crate) fn wanted_capacity(&self, default: u32) -> [u32; 2] {
        let mut caps = [0u32; 2];
        for (i, s) in self.subs.iter().enumerate() {
            // A monitor whose filter refused the flow asks for nothing.
            if self.flow_masks.get(i) == Some(&0) && s.mask != 0 {
                continue;
            }
            for (i, req) in s.buffers.iter().enumerate() {
                let c = match *req {
                    BufferRequest::Off => 0,
                    BufferRequest::Default => default,
                    BufferRequest::AtLeast(n) => n,
                };
                caps[i] = caps[i].max(c);
            }
        }
        caps
    }

    /// The subscription masks a new flow starts with, one per monitor.
    #[inline]
    pub(crate) fn masks(&self) -> impl Iterator<Item = u64> + '_ {
        let filtered = !self.flow_masks.is_empty();
        self.subs
            .iter()
            .enumerate()
            .map(move |(i, s)| if filtered { self.flow_masks[i] } else { s.mask })
    }
}
