//! The engine: flow table, per-side TCP emulation, reassembly and event dispatch.
//!
//! One `Engine` per core. Its input is `(segment, frame, timestamp)`; its output is the
//! callbacks of its monitors. It never reads a clock and never does I/O. Memory is bounded:
//! the flow table has a fixed capacity (the least recently active flow is evicted to make
//! room), receive buffers come from a pool bounded by `buffer_memory`, fragment lists are
//! fixed arrays.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::api::{Cx, Errno};
use super::buffer::{OverlapPolicy, RecvBuffer};
use super::key::{Addr, FlowKey};

use super::monitor::{BufferRequest, Monitor, Subscriptions};
use super::types::*;
use crate::sys::{huge_pages, prefetch};
use crate::wire::{self, Decoded, LinkType, TcpFlags, TcpSegment};

const NIL: u32 = u32::MAX;

/// Flow slots from which [`Engine::prefetch_wanted`] says yes: 64k flows of state are
/// tens of MiB, past the caches; below, looking ahead would only cost time.
pub const PREFETCH_MIN_FLOWS: usize = 1 << 16;

/// The symmetric flow hash of a plain IPv4 TCP frame (Ethernet without VLAN tags, or raw
/// IP), read straight from fixed offsets; `None` for anything else. A hint only: the frame
/// is decoded properly when it is processed.
#[inline]
fn quick_hash(link: Option<LinkType>, frame: &[u8]) -> Option<u64> {
    let ip = match link? {
        LinkType::Ethernet => {
            if frame.get(12..14)? != [0x08, 0x00] {
                return None;
            }
            frame.get(14..)?
        }
        LinkType::RawIp => frame,
        _ => return None,
    };
    let vihl = *ip.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(ip.get(at..at + 4)?.try_into().ok()?))
    };
    let (src, dst, ports) = (word(12)?, word(16)?, word(ihl)?);
    let v4 = |a: u32| Addr([0, 0xffff_0000_0000 | u64::from(a)]);
    let (key, _) = FlowKey::new(v4(src), (ports >> 16) as u16, v4(dst), ports as u16);
    Some(key.hash())
}

/// Entries of the smallest flow index.
const MIN_INDEX: usize = 1024;
const NANOS: u64 = 1_000_000_000;

/// Engine settings. `Default` gives mOS's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// This engine's core number (stamped into flow handles).
    pub core: u8,
    /// Flow-table capacity; the least recently active flow is evicted beyond it.
    pub max_flows: u32,
    /// Receive-buffer capacity per side when a monitor asks for the default (bytes).
    pub buffer_capacity: u32,
    /// Upper bound on all receive-buffer bytes of this engine.
    pub buffer_memory: u64,
    /// Idle timeout (ns): a flow with no packet for this long expires (`Timeout`).
    pub tcp_timeout: u64,
    /// How long a flow stays in TIME_WAIT once both sides closed (ns); 0 destroys at once.
    pub tw_interval: u64,
    /// Default overlap policy of every side.
    pub overlap: OverlapPolicy,
    /// Drop packets whose TCP checksum is wrong (off for captures, which carry offloaded
    /// checksums).
    pub verify_checksums: bool,
    /// Track connections whose SYN was not seen (marked partial). Off: such packets are
    /// `Orphan`s, as in mOS.
    pub midstream: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            core: 0,
            max_flows: 100_000,
            buffer_capacity: 8192,
            buffer_memory: 1 << 30,
            tcp_timeout: 30 * NANOS,
            tw_interval: 0,
            overlap: OverlapPolicy::First,
            verify_checksums: false,
            midstream: true,
        }
    }
}

/// Counters of one engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the engine.
    pub packets: u64,
    /// Their captured bytes.
    pub bytes: u64,
    /// TCP segments processed.
    pub tcp_packets: u64,
    /// Frames that failed to decode.
    pub malformed: u64,
    /// Frames that are not TCP (ARP, UDP, ...).
    pub not_tcp: u64,
    /// IP fragments (recognised, not reassembled).
    pub ip_fragments: u64,
    /// Frames of a link type the decoder does not support.
    pub unsupported_link: u64,
    /// Segments with a wrong TCP checksum.
    pub bad_checksum: u64,
    /// Packets that matched no flow and could not start one.
    pub orphans: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Flows created mid-stream (no SYN seen).
    pub flows_partial: u64,
    /// Flows evicted because the table was full.
    pub flows_evicted: u64,
    /// Flows that expired idle.
    pub flows_timed_out: u64,
    /// RSTs ignored because their sequence number was outside the window.
    pub rst_ignored: u64,
    /// Payload bytes dropped because they lay beyond the receive window.
    pub bytes_beyond_window: u64,
    /// Segments dropped because a side's fragment list was full.
    pub fragment_limit_drops: u64,
    /// Sides that got no buffer because `buffer_memory` was exhausted.
    pub buffer_memory_refusals: u64,
    /// Bytes skipped over gaps that were never filled.
    pub bytes_missing: u64,
    /// Events delivered to monitors.
    pub events: u64,
    /// Flows currently tracked.
    pub flows_live: u64,
    /// Receive-buffer bytes currently allocated.
    pub buffer_bytes: u64,
}

impl Stats {
    /// Adds another engine's counters (the cores of one run).
    pub fn merge(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.tcp_packets += other.tcp_packets;
        self.malformed += other.malformed;
        self.not_tcp += other.not_tcp;
        self.ip_fragments += other.ip_fragments;
        self.unsupported_link += other.unsupported_link;
        self.bad_checksum += other.bad_checksum;
        self.orphans += other.orphans;
        self.flows_created += other.flows_created;
        self.flows_partial += other.flows_partial;
        self.flows_evicted += other.flows_evicted;
        self.flows_timed_out += other.flows_timed_out;
        self.rst_ignored += other.rst_ignored;
        self.bytes_beyond_window += other.bytes_beyond_window;
        self.fragment_limit_drops += other.fragment_limit_drops;
        self.buffer_memory_refusals += other.buffer_memory_refusals;
        self.bytes_missing += other.bytes_missing;
        self.events += other.events;
        self.flows_live += other.flows_live;
        self.buffer_bytes += other.buffer_bytes;
    }
}

/// Metadata of the last packet of a flow (SPEC §4 "last packet").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastPacket {
    /// Capture or arrival time, ns.
    pub ts: u64,
    /// The side that sent it.
    pub sender: Option<Side>,
    /// Sequence number (host order).
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags.
    pub flags: TcpFlags,
    /// Advertised window (unscaled).
    pub window: u16,
    /// Payload bytes captured.
    pub payload_len: u32,
    /// Stream offset of its first payload byte in the sender's direction.
    pub offset: u64,
}

/// State of one side: its emulated TCP endpoint and the stream it receives.
pub(crate) struct SideState {
    pub(crate) state: TcpState,
    /// The side received its first packet: its stream exists (else `ENOTCONN`).
    pub(crate) opened: bool,
    /// CLOSED after having been open, or TIME_WAIT.
    pub(crate) finished: bool,
    pub(crate) destroyed: bool,
    /// Sequence number of offset 0 of the stream this side *receives*.
    pub(crate) rx_base: u32,
    pub(crate) rx_base_known: bool,
    /// End of in-order data received (mirrors the buffer when there is one).
    pub(crate) rx_next: u64,
    /// The sequence number of the FIN this side *sent*, if any.
    pub(crate) tx_fin: Option<u32>,
    /// Highest sequence number this side sent, plus its length.
    pub(crate) tx_next: u32,
    pub(crate) tx_seen: bool,
    /// The last acknowledgement number this side sent (valid when `tx_ack_seen`).
    pub(crate) tx_ack: u32,
    pub(crate) tx_ack_seen: bool,
    pub(crate) syn_seen: bool,
    /// This side received the peer's FIN.
    pub(crate) rx_fin: bool,
    pub(crate) window: u32,
    pub(crate) wscale: u8,
    /// Receive buffer; created on the first payload byte.
    pub(crate) buf: Option<Box<RecvBuffer>>,
    /// Capacity to use (0: buffer disabled for this side).
    pub(crate) capacity: u32,
    pub(crate) overlap: OverlapPolicy,
    pub(crate) newdata_pending: bool,
    /// The contiguous end when `NewData` was last delivered.
    pub(crate) newdata_mark: u64,
    pub(crate) missing: u64,
    pub(crate) overlap_bytes: u64,
}

impl SideState {
    fn new(state: TcpState, capacity: u32, overlap: OverlapPolicy) -> SideState {
        SideState {
            state,
            opened: false,
            finished: false,
            destroyed: false,
            rx_base: 0,
            rx_base_known: false,
            rx_next: 0,
            tx_fin: None,
            tx_next: 0,
            tx_seen: false,
            tx_ack: 0,
            tx_ack_seen: false,
            syn_seen: false,
            rx_fin: false,
            window: 0,
            wscale: 0,
            buf: None,
            capacity,
            overlap,
            newdata_pending: false,
            newdata_mark: 0,
            missing: 0,
            overlap_bytes: 0,
        }
    }

    /// End of the contiguous data this side received.
    #[inline]
    pub(crate) fn contig(&self) -> u64 {
        match &self.buf {
            Some(b) => b.contig_end(),
            None => self.rx_next,
        }
    }

    /// Maps a sequence number of the stream this side receives to a 64-bit offset, near
    /// the contiguous end (so offsets keep growing across the 2^32 wrap).
    #[inline]
    fn offset_of(&self, seq: u32) -> i64 {
        let reference = self.contig();
        let ref_seq = self.rx_base.wrapping_add(reference as u32);
        reference as i64 + i64::from(seq.wrapping_sub(ref_seq) as i32)
    }
}

/// One tracked connection.
///
/// `repr(C)` keeps what every packet touches (key, generation, idle-list links, last
/// activity) in the first cache line; the sides follow.
#[repr(C, align(64))]
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    pub(crate) gen: u32,
    prev: u32,
    next: u32,
    pub(crate) live: bool,
    pub(crate) client_is_lo: bool,
    pub(crate) partial: bool,
    in_tw: bool,
    pub(crate) last_ts: u64,
    /// When the flow was last put at the back of the idle list (see [`Core::touch`]).
    linked_ts: u64,
    pub(crate) start_ts: u64,
    tw_deadline: u64,
    pub(crate) seqno: u64,
    pub(crate) sides: [SideState; 2],
    pub(crate) last: LastPacket,
    pub(crate) end_reason: Option<EndReason>,
}

impl Flow {
    fn empty(overlap: OverlapPolicy) -> Flow {
        Flow {
            key: FlowKey::default(),
            gen: 0,
            live: false,
            client_is_lo: true,
            partial: false,
            in_tw: false,
            prev: NIL,
            next: NIL,
            start_ts: 0,
            last_ts: 0,
            linked_ts: 0,
            tw_deadline: 0,
            seqno: 0,
            sides: [
                SideState::new(TcpState::Closed, 0, overlap),
                SideState::new(TcpState::Listen, 0, overlap),
            ],
            last: LastPacket::default(),
            end_reason: None,
        }
    }
}

/// Per (monitor, flow) state: peek cursors, user value, subscriptions for this flow.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MonFlow {
    pub(crate) cursor: [u64; 2],
    pub(crate) user: u64,
    pub(crate) mask: u64,
    /// Bit per side the monitor stopped watching; both bits: the monitor is done.
    pub(crate) stopped: u8,
    pub(crate) ended: bool,
    /// Private to the code that hosts the monitor (the plugin host's generation tag).
    pub(crate) host: u32,
}

/// A filter implemented outside this crate (called with the context, the base event, `arg`).
pub type ForeignFilter = dyn Fn(&mut Cx<'_>, &Event, u64) -> bool;

/// The filter of a user-defined event.
pub enum Filter {
    /// A Rust function of this process.
    Native(UserFilter),
    /// A filter living elsewhere (a plugin); `key` identifies it so that defining the same
    /// (base, filter, arg) twice gives the same event.
    Foreign {
        /// Identity of the filter (e.g. its address in the plugin).
        key: usize,
        /// Calls it.
        call: Box<ForeignFilter>,
    },
}

impl Filter {
    fn key(&self) -> usize {
        match self {
            Filter::Native(f) => *f as usize,
            Filter::Foreign { key, .. } => *key,
        }
    }
}

/// A user-defined event: a base event and a filter (SPEC §2.2).
pub(crate) struct UserEvent {
    pub(crate) base: EventKind,
    pub(crate) filter: Option<Filter>,
    pub(crate) arg: u64,
}

/// A filter of a user-defined event: runs when the base event fires; `true` raises it.
pub type UserFilter = fn(&mut Cx<'_>, &Event, u64) -> bool;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub(crate) deadline: u64,
    pub(crate) seq: u64,
    pub(crate) monitor: u32,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) tag: u64,
}

/// Everything but the monitors: what a callback may read and change through its `Cx`.
pub(crate) struct Core {
    pub(crate) cfg: Config,
    pub(crate) flows: Vec<Flow>,
    /// `max_flows`: `flows` grows up to this, then slots are recycled.
    capacity: usize,
    index: Vec<u64>,
    index_mask: usize,
    free: Vec<u32>,
    lru_head: u32,
    lru_tail: u32,
    /// A flow touched less than this long after it was last moved to the back of the idle
    /// list stays where it is (`tcp_timeout / 1024`, see [`Core::touch`]).
    touch_granularity: u64,
    tw_head: u32,
    tw_tail: u32,
    pub(crate) now: u64,
    next_seqno: u64,
    pub(crate) stats: Stats,
    pub(crate) nmon: usize,
    pub(crate) mon_flows: Vec<MonFlow>,
    pub(crate) mon_subs: Vec<Subscriptions>,
    pub(crate) any_mask: u64,
    pending: Vec<(u32, u32, Side)>,
    /// Freed buffers, reused before allocating.
    spare_buffers: BufferPool,
    pub(crate) timers: BinaryHeap<Reverse<Timer>>,
    pub(crate) timer_seq: u64,
    /// Events raised from callbacks, delivered after the current one.
    pub(crate) raised: Vec<Event>,
    /// Monitors that stopped a flow inside a callback and are owed their `ConnEnd`.
    pub(crate) stopped: Vec<(u32, u32, u32)>,
    /// `after_callback` is delivering queued events (see there).
    delivering: bool,
    pub(crate) cur_orphan: LastPacket,
    pub(crate) cur_orphan_addrs: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// The per-core monitoring engine (SPEC.md): feed it packets and timestamps; it calls its
/// monitors.
pub struct Engine {
    pub(crate) core: Core,
    monitors: Vec<Box<dyn Monitor>>,
    pub(crate) user_events: Vec<UserEvent>,
}

/// Why an event is being dispatched: decides the monitor order (SPEC §2.1).
#[derive(Clone, Copy)]
enum Order {
    Load,
    Reverse,
}

impl Engine {
    /// An engine with `monitors`, visited in this (load) order.
    pub fn new(cfg: Config, monitors: Vec<Box<dyn Monitor>>) -> Engine {
        let cap = cfg.max_flows.max(1) as usize;
        // The index grows with the slots (at most half full), so a small working set keeps
        // a small, cache-resident index whatever `max_flows` allows.
        let index_len = (cap * 2).next_power_of_two().min(MIN_INDEX);
        let subs: Vec<Subscriptions> = monitors.iter().map(|m| m.subscriptions()).collect();
        let any_mask = subs.iter().fold(0, |a, s| a | s.mask);
        let nmon = monitors.len();
        // Slots are created on demand up to `max_flows` and then recycled, so a large
        // table costs nothing until it is used and nothing per packet after.
        let flows = Vec::new();
        let mut engine = Engine {
            core: Core {
                flows,
                index: vec![0; index_len],
                index_mask: index_len - 1,
                free: Vec::new(),
                capacity: cap,
                lru_head: NIL,
                lru_tail: NIL,
                touch_granularity: cfg.tcp_timeout / 1024,
                tw_head: NIL,
                tw_tail: NIL,
                now: 0,
                next_seqno: 0,
                stats: Stats::default(),
                nmon,
                mon_flows: Vec::new(),
                mon_subs: subs,
                any_mask,
                pending: Vec::with_capacity(1024),
                spare_buffers: BufferPool::default(),
                timers: BinaryHeap::new(),
                timer_seq: 0,
                raised: Vec::new(),
                stopped: Vec::new(),
                delivering: false,
                cur_orphan: LastPacket::default(),
                cur_orphan_addrs: None,
                cfg,
            },
            monitors,
            user_events: Vec::new(),
        };
        for m in 0..nmon {
            engine.setup_monitor(m);
        }
        engine
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// The engine's clock: the latest timestamp it was given (ns).
    pub fn now(&self) -> u64 {
        self.core.now
    }

    /// The monitors, in load order.
    pub fn monitors(&self) -> &[Box<dyn Monitor>] {
        &self.monitors
    }

    /// The monitors, in load order, mutably (e.g. to collect their output).
    pub fn monitors_mut(&mut self) -> &mut [Box<dyn Monitor>] {
        &mut self.monitors
    }

    /// Defines a user event on `base` with `filter` and `arg` (SPEC §2.2). Defining the same
    /// triple twice returns the same id. Without a filter, the event fires only when raised
    /// with [`Cx::raise`].
    pub fn define_event(
        &mut self,
        base: EventKind,
        filter: Option<UserFilter>,
        arg: u64,
    ) -> Result<EventKind, Errno> {
        define_user_event(&mut self.user_events, base, filter.map(Filter::Native), arg)
    }

    /// Adds a monitor after the engine was built (a plugin loaded while traffic flows): it
    /// sees flows that start from now on. Returns its index.
    pub fn add_monitor(&mut self, monitor: Box<dyn Monitor>) -> usize {
        let core = &mut self.core;
        let old = core.nmon;
        let new = old + 1;
        let mut mon_flows = vec![MonFlow::default(); core.flows.len() * new];
        for slot in 0..core.flows.len() {
            mon_flows[slot * new..slot * new + old]
                .copy_from_slice(&core.mon_flows[slot * old..slot * old + old]);
            // Flows already open do not get the new monitor.
            mon_flows[slot * new + old].ended = true;
        }
        core.mon_flows = mon_flows;
        core.nmon = new;
        core.mon_subs.push(monitor.subscriptions());
        core.any_mask |= core.mon_subs[old].mask;
        self.monitors.push(monitor);
        self.setup_monitor(old);
        old
    }

    /// Adds subscriptions (and buffer requests) of monitor `monitor` for future flows.
    pub fn extend_subscriptions(&mut self, monitor: usize, subs: Subscriptions) {
        let Some(s) = self.core.mon_subs.get_mut(monitor) else {
            return;
        };
        s.mask |= subs.mask;
        for (mine, theirs) in s.buffers.iter_mut().zip(subs.buffers) {
            let size = |b: BufferRequest, default: u32| match b {
                BufferRequest::Off => 0,
                BufferRequest::Default => default,
                BufferRequest::AtLeast(n) => n,
            };
            if size(theirs, self.core.cfg.buffer_capacity)
                > size(*mine, self.core.cfg.buffer_capacity)
            {
                *mine = theirs;
            }
        }
        self.core.any_mask |= subs.mask;
    }

    /// Runs `f` with a context of monitor `monitor`, outside any event (shutdown, reports).
    pub fn with_cx<R>(&mut self, monitor: usize, f: impl FnOnce(&mut Cx<'_>) -> R) -> R {
        let mut cx = Cx::new(&mut self.core, monitor, None, &self.user_events);
        f(&mut cx)
    }

    /// Runs a monitor's [`Monitor::setup`] (again): it may define user events and subscribe.
    pub fn setup_monitor(&mut self, monitor: usize) {
        let Some(m) = self.monitors.get_mut(monitor) else {
            return;
        };
        let mut setup = Setup {
            user_events: &mut self.user_events,
            subs: &mut self.core.mon_subs[monitor],
        };
        m.setup(&mut setup);
        self.core.any_mask |= self.core.mon_subs[monitor].mask;
    }

    /// Subscribes monitor `monitor` to `(event, hook)` for all future flows.
    pub fn subscribe(&mut self, monitor: usize, event: EventKind, hook: Hook) {
        if let Some(s) = self.core.mon_subs.get_mut(monitor) {
            s.mask |= event.bit(hook);
            self.core.any_mask |= event.bit(hook);
        }
    }

    /// Decodes one frame and processes it.
    #[inline]
    pub fn on_frame(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64) {
        let decoded = link.map(|l| wire::decode(l, frame));
        self.on_decoded(&decoded, frame, ts);
    }

    /// Whether looking ahead pays: the flow table is past the caches' reach (at least
    /// [`PREFETCH_MIN_FLOWS`] slots). Workers check it once per batch and then call
    /// [`Engine::prefetch_index`] and [`Engine::prefetch_flow`] for frames a few places ahead
    /// of the one they process, so that the cache misses of several packets overlap.
    #[inline]
    pub fn prefetch_wanted(&self) -> bool {
        self.core.flows.len() >= PREFETCH_MIN_FLOWS
    }

    /// Lookahead, far: starts loading the index entry of `frame`'s flow into the cache.
    /// Only plain IPv4 TCP frames (Ethernet without tags, or raw IP) are recognised; for
    /// anything else this does nothing. Changes nothing the engine does.
    #[inline]
    pub fn prefetch_index(&self, link: Option<LinkType>, frame: &[u8]) {
        if let Some(hash) = quick_hash(link, frame) {
            prefetch(&self.core.index[hash as usize & self.core.index_mask], 8);
        }
    }

    /// Lookahead, near (after [`Engine::prefetch_index`] for the same frame, a few frames
    /// earlier): finds the flow's slot by the index entry's tag alone (no key comparison,
    /// which would wait for the flow) and starts loading the flow's state and its
    /// per-monitor state.
    #[inline]
    pub fn prefetch_flow(&self, link: Option<LinkType>, frame: &[u8]) {
        let Some(slot) = quick_hash(link, frame).and_then(|h| self.core.slot_hint(h)) else {
            return;
        };
        let core = &self.core;
        if let Some(f) = core.flows.get(slot) {
            prefetch(f, std::mem::size_of::<Flow>());
        }
        let n = core.nmon;
        if let Some(m) = core.mon_flows.get(slot * n..slot * n + n) {
            prefetch(m, std::mem::size_of_val(m));
        }
    }

    /// Processes a frame already decoded (`None`: an unsupported link type), counting it.
    /// The decoded frame is borrowed: moving it by value cost 5 Mpps (the engine bench).
    #[inline]
    pub fn on_decoded(
        &mut self,
        decoded: &Option<Result<Decoded<'_>, wire::DecodeError>>,
        frame: &[u8],
        ts: u64,
    ) {
        self.core.stats.packets += 1;
        self.core.stats.bytes += frame.len() as u64;
        match decoded {
            None => self.core.stats.unsupported_link += 1,
            Some(Ok(Decoded::Tcp(seg))) => {
                if self.core.cfg.verify_checksums
                    && wire::tcp_checksum_ok(frame, seg) == Some(false)
                {
                    self.core.stats.bad_checksum += 1;
                    return;
                }
                self.on_segment(seg, frame, ts);
            }
            Some(Ok(Decoded::NotTcp)) => self.core.stats.not_tcp += 1,
            Some(Ok(Decoded::Fragment)) => self.core.stats.ip_fragments += 1,
            Some(Err(_)) => self.core.stats.malformed += 1,
        }
    }

    /// Moves the clock to `ts` without a packet of this engine (another core's packet, in
    /// a capture shared by several cores): timers and idle expiry follow the capture's time.
    #[inline]
    pub fn observe_time(&mut self, ts: u64) {
        self.core.now = self.core.now.max(ts);
    }

    /// Processes one decoded TCP segment captured at `ts` (ns).
    pub fn on_segment(&mut self, seg: &TcpSegment<'_>, frame: &[u8], ts: u64) {
        let core = &mut self.core;
        core.now = core.now.max(ts);
        core.stats.tcp_packets += 1;
        let src = Addr::from_ip(seg.src);
        let dst = Addr::from_ip(seg.dst);
        let (key, src_is_lo) = FlowKey::new(src, seg.src_port, dst, seg.dst_port);
        let hash = key.hash();
        let slot = match core.lookup(&key, hash) {
            Some(slot) => slot,
            None => {
                let flags = seg.flags;
                let starts = flags.syn() && !flags.ack() && !flags.rst();
                let midstream = core.cfg.midstream && !flags.rst();
                if !starts && !midstream {
                    self.orphan(seg, frame);
                    return;
                }
                if core.free.is_empty() && core.flows.len() >= core.capacity {
                    let victim = core.lru_victim();
                    let victim = if victim == NIL { core.tw_head } else { victim };
                    self.core.stats.flows_evicted += 1;
                    self.destroy(victim, EndReason::Evicted, None);
                }
                let client_is_lo = if starts {
                    src_is_lo
                } else if flags.syn() && flags.ack() {
                    !src_is_lo
                } else if seg.dst_port < 1024 && seg.src_port >= 1024 {
                    src_is_lo
                } else if seg.src_port < 1024 && seg.dst_port >= 1024 {
                    !src_is_lo
                } else {
                    src_is_lo
                };
                self.core.create(key, hash, client_is_lo, !starts)
            }
        };
        let core = &mut self.core;
        let sender = if src_is_lo == core.flows[slot as usize].client_is_lo {
            Side::Client
        } else {
            Side::Server
        };
        let receiver = sender.peer();
        let order = if sender == Side::Client {
            Order::Load
        } else {
            Order::Reverse
        };
        core.touch(slot, ts);
        let gen = core.flows[slot as usize].gen;
        let flags = seg.flags;
        let payload = seg.payload;
        let data_seq = seg.seq.wrapping_add(u32::from(flags.syn()));

        // --- 3. Sender side.
        let (snd_change, conn_start_snd) = {
            let flow = &mut core.flows[slot as usize];
            let partial = flow.partial;
            let s = &mut flow.sides[sender.index()];
            let old = s.state;
            let first_syn =
                flags.syn() && !flags.ack() && !s.syn_seen && sender == Side::Client && !partial;
            if flags.syn() {
                s.syn_seen = true;
            }
            let end = data_seq
                .wrapping_add(seg.payload_len_on_wire)
                .wrapping_add(u32::from(flags.fin()));
            if !s.tx_seen || (end.wrapping_sub(s.tx_next) as i32) > 0 {
                s.tx_next = end;
            }
            s.tx_seen = true;
            if flags.syn() {
                s.wscale = seg.options.window_scale.unwrap_or(0).min(14);
            }
            s.window = u32::from(seg.window) << if flags.syn() { 0 } else { s.wscale };
            if flags.fin() && s.tx_fin.is_none() {
                s.tx_fin = Some(data_seq.wrapping_add(seg.payload_len_on_wire));
            }
            let mut rst_valid = false;
            if flags.rst() {
                rst_valid = rst_in_window(&flow.sides[receiver.index()], seg.seq);
            } else if flags.ack() {
                s.tx_ack = seg.ack;
                s.tx_ack_seen = true;
            }
            let s = &mut flow.sides[sender.index()];
            if flags.rst() {
                if rst_valid {
                    s.state = TcpState::Closed;
                }
            } else {
                let mut st = s.state;
                if first_syn && st == TcpState::Closed {
                    st = TcpState::SynSent;
                }
                // A lost SYN/ACK or ACK must not stall tracking.
                if !flags.syn()
                    && flags.ack()
                    && matches!(st, TcpState::SynSent | TcpState::SynRcvd)
                {
                    st = TcpState::Established;
                }
                if flags.fin() {
                    st = match st {
                        TcpState::Established => TcpState::FinWait1,
                        TcpState::CloseWait => TcpState::LastAck,
                        other => other,
                    };
                }
                s.state = st;
            }
            if rst_valid {
                flow.end_reason = Some(EndReason::Rst);
            } else if flags.rst() {
                core.stats.rst_ignored += 1;
            }
            let flow = &mut core.flows[slot as usize];
            let s = &mut flow.sides[sender.index()];
            if s.state == TcpState::Closed && old != TcpState::Closed {
                s.finished = true;
            }
            ((s.state != old).then_some(s.state), first_syn)
        };
        core.flows[slot as usize].last = LastPacket {
            ts,
            sender: Some(sender),
            seq: seg.seq,
            ack: seg.ack,
            flags,
            window: seg.window,
            payload_len: payload.len() as u32,
            offset: 0,
        };
        // An ACK covering bytes this side never saw: they are lost to the capture.
        if flags.ack() && !flags.rst() {
            self.ack_skip(slot, sender, seg.ack);
        }
        let pkt = Some(frame);
        let one = |s: Side| EventSide::One(s);
        self.emit(
            slot,
            EventKind::PktIn,
            one(sender),
            Hook::Snd,
            Detail::None,
            order,
            pkt,
        );
        if conn_start_snd {
            self.emit(
                slot,
                EventKind::ConnStart,
                one(sender),
                Hook::Snd,
                Detail::None,
                order,
                pkt,
            );
        }
        if let Some(st) = snd_change {
            self.emit(
                slot,
                EventKind::TcpStateChange,
                one(sender),
                Hook::Snd,
                Detail::State(st),
                order,
                pkt,
            );
        }
        if !self.core.flow_is(slot, gen) {
            return;
        }

        // --- 4. Receiver side: the data first (Rexmit, Error before the merge).
        let core = &mut self.core;
        {
            let flow = &mut core.flows[slot as usize];
            let r = &mut flow.sides[receiver.index()];
            // A SYN defines the stream's start, unless bytes of it were already seen.
            let rebase = flags.syn() && r.buf.is_none() && r.rx_next == 0;
            if !r.rx_base_known || (rebase && !flags.rst()) {
                r.rx_base = data_seq;
                r.rx_base_known = true;
            }
            let off = r.offset_of(data_seq);
            flow.last.offset = off.max(0) as u64;
        }
        // Data on a RST is stored too: a monitor wants to see what the RST carried.
        if !payload.is_empty() && core.flows[slot as usize].sides[receiver.index()].rx_base_known {
            self.receive_data(slot, receiver, data_seq, payload, order, pkt);
            if !self.core.flow_is(slot, gen) {
                return;
            }
        }
        let core = &mut self.core;
        let (rcv_change, conn_start_rcv, ctl_rexmit) = {
            let flow = &mut core.flows[slot as usize];
            let partial = flow.partial;
            let rst_valid = flags.rst() && flow.end_reason == Some(EndReason::Rst);
            let r = &mut flow.sides[receiver.index()];
            let old = r.state;
            r.opened = true;
            let mut conn_start = false;
            let mut ctl_rexmit = false;
            if flags.rst() {
                if rst_valid {
                    r.state = TcpState::Closed;
                }
            } else {
                let mut st = old;
                if flags.syn() && !flags.ack() {
                    if receiver == Side::Server && st == TcpState::Listen && !partial {
                        st = TcpState::SynRcvd;
                        conn_start = true;
                    } else {
                        ctl_rexmit = true;
                    }
                } else if flags.syn() {
                    if st == TcpState::SynSent {
                        st = TcpState::Established;
                    } else {
                        ctl_rexmit = true;
                    }
                } else if flags.ack() && st == TcpState::SynRcvd {
                    // A client in SYN_SENT moves on when it sends its own ACK (sender side).
                    st = TcpState::Established;
                }
                let acked = flags.ack()
                    && r.tx_fin
                        .is_some_and(|f| (seg.ack.wrapping_sub(f.wrapping_add(1)) as i32) >= 0);
                if flags.fin() && r.rx_fin {
                    ctl_rexmit = true;
                } else if flags.fin()
                    && matches!(
                        st,
                        TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2
                    )
                {
                    r.rx_fin = true;
                    st = match st {
                        TcpState::Established => TcpState::CloseWait,
                        TcpState::FinWait1 if !acked => TcpState::Closing,
                        _ => TcpState::TimeWait,
                    };
                } else if acked {
                    st = match st {
                        TcpState::FinWait1 => TcpState::FinWait2,
                        TcpState::Closing => TcpState::TimeWait,
                        TcpState::LastAck => TcpState::Closed,
                        other => other,
                    };
                }
                r.state = st;
            }
            if (r.state == TcpState::Closed && old != TcpState::Closed)
                || r.state == TcpState::TimeWait
            {
                r.finished = true;
            }
            ((r.state != old).then_some(r.state), conn_start, ctl_rexmit)
        };
        self.emit(
            slot,
            EventKind::PktIn,
            one(receiver),
            Hook::Rcv,
            Detail::None,
            order,
            pkt,
        );
        if conn_start_rcv {
            self.emit(
                slot,
                EventKind::ConnStart,
                one(receiver),
                Hook::Rcv,
                Detail::None,
                order,
                pkt,
            );
        }
        if let Some(st) = rcv_change {
            self.emit(
                slot,
                EventKind::TcpStateChange,
                one(receiver),
                Hook::Rcv,
                Detail::State(st),
                order,
                pkt,
            );
        }
        if ctl_rexmit {
            self.emit(
                slot,
                EventKind::Rexmit,
                one(receiver),
                Hook::Rcv,
                Detail::None,
                order,
                pkt,
            );
        }
        if !self.core.flow_is(slot, gen) {
            return;
        }

        // --- 5. Both sides finished: destroy (receiver first), or enter TIME_WAIT.
        let flow = &self.core.flows[slot as usize];
        if flow.sides[0].finished && flow.sides[1].finished {
            let reason = flow.end_reason.unwrap_or(EndReason::Fin);
            let tw = self.core.cfg.tw_interval;
            let any_tw = flow.sides.iter().any(|s| s.state == TcpState::TimeWait);
            if reason == EndReason::Fin && tw > 0 && any_tw {
                self.core.enter_time_wait(slot, ts.saturating_add(tw));
            } else {
                self.destroy(slot, reason, Some(receiver));
            }
        }
    }

    /// Delivers everything due at the end of a batch: timers, idle and TIME_WAIT expiry,
    /// then one `NewData` per side whose contiguous data grew (SPEC §2.1).
    pub fn end_batch(&mut self) {
        self.run_timers();
        self.expire();
        self.flush_pending();
    }

    /// Advances the clock without a packet (an idle live port), then runs [`end_batch`].
    ///
    /// [`end_batch`]: Engine::end_batch
    pub fn advance(&mut self, now: u64) {
        self.core.now = self.core.now.max(now);
        self.end_batch();
    }

    /// Ends every live flow with `reason` (`Eof` at the end of a capture, `Shutdown` on
    /// Ctrl-C), delivering pending data first. Flows end in creation order.
    pub fn finish(&mut self, reason: EndReason) {
        self.end_batch();
        let mut live: Vec<(u64, u32)> = (0..self.core.flows.len() as u32)
            .filter(|&s| self.core.flows[s as usize].live)
            .map(|s| (self.core.flows[s as usize].seqno, s))
            .collect();
        live.sort_unstable();
        for (_, slot) in live {
            self.destroy(slot, reason, None);
        }
        self.flush_pending();
    }

    fn orphan(&mut self, seg: &TcpSegment<'_>, frame: &[u8]) {
        let core = &mut self.core;
        core.stats.orphans += 1;
        if core.any_mask & EventKind::Orphan.bit(Hook::None) == 0 {
            return;
        }
        core.cur_orphan = LastPacket {
            ts: core.now,
            sender: None,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            window: seg.window,
            payload_len: seg.payload.len() as u32,
            offset: 0,
        };
        core.cur_orphan_addrs = Some((
            std::net::SocketAddr::new(seg.src, seg.src_port),
            std::net::SocketAddr::new(seg.dst, seg.dst_port),
        ));
        let ev = Event {
            kind: EventKind::Orphan,
            side: EventSide::Both,
            hook: Hook::None,
            flow: FlowHandle::raw(core.cfg.core),
            detail: Detail::None,
        };
        for m in 0..self.monitors.len() {
            if self.core.mon_subs[m].mask & ev.kind.bit(Hook::None) != 0 {
                self.call(m, &ev, Some(frame));
            }
        }
        self.core.cur_orphan_addrs = None;
    }

    /// Stores a segment's payload in the receiver's buffer. Returns whether it overlapped.
    fn receive_data(
        &mut self,
        slot: u32,
        receiver: Side,
        seq: u32,
        payload: &[u8],
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        let one = EventSide::One(receiver);
        let core = &mut self.core;
        let side = &mut core.flows[slot as usize].sides[receiver.index()];
        let off = side.offset_of(seq);
        let contig = side.contig();
        let end = off + payload.len() as i64;
        if end <= 0 {
            side.overlap_bytes += payload.len() as u64;
            self.emit(
                slot,
                EventKind::Rexmit,
                one,
                Hook::Rcv,
                Detail::None,
                order,
                pkt,
            );
            return;
        }
        // Bytes before offset 0 (or before the window) are old: trim them.
        let (mut off, mut bytes) = if off < 0 {
            (0u64, &payload[(-off) as usize..])
        } else {
            (off as u64, payload)
        };
        if side.capacity == 0 {
            // No buffer: track offsets only.
            if off <= side.rx_next {
                let e = off + bytes.len() as u64;
                if e <= side.rx_next {
                    side.overlap_bytes += bytes.len() as u64;
                }
                side.rx_next = side.rx_next.max(e);
            }
            return;
        }
        if side.buf.is_none() {
            let cap = side.capacity;
            let head = contig.min(off);
            match core.alloc_buffer(cap, head) {
                Some(b) => core.flows[slot as usize].sides[receiver.index()].buf = Some(b),
                None => {
                    core.stats.buffer_memory_refusals += 1;
                    let side = &mut core.flows[slot as usize].sides[receiver.index()];
                    side.capacity = 0;
                    self.error(slot, receiver, ErrorKind::OutOfBufferMemory, order, pkt);
                    return;
                }
            }
        }
        let core = &mut self.core;
        let side = &mut core.flows[slot as usize].sides[receiver.index()];
        let buf = side.buf.as_ref().expect("created above");
        let (head, cap) = (buf.head(), buf.capacity());
        if off < head {
            let skip = (head - off).min(bytes.len() as u64);
            side.overlap_bytes += skip;
            bytes = &bytes[skip as usize..];
            off = head;
        }
        let seg_end = off + bytes.len() as u64;
        let overlapped = buf.stored_within(off, seg_end) > 0
            || seg_end <= contig
            || (payload.len() != bytes.len());
        if overlapped {
            self.emit(
                slot,
                EventKind::Rexmit,
                one,
                Hook::Rcv,
                Detail::None,
                order,
                pkt,
            );
        }
        if bytes.is_empty() {
            return;
        }
        // The window may advance up to the contiguous end; what lies beyond is dropped.
        let core = &mut self.core;
        let side = &mut core.flows[slot as usize].sides[receiver.index()];
        let contig = side.contig();
        let limit = contig + cap;
        if off >= limit {
            core.stats.bytes_beyond_window += bytes.len() as u64;
            self.error(slot, receiver, ErrorKind::BeyondWindow, order, pkt);
            return;
        }
        let mut clipped = false;
        if seg_end > limit {
            core.stats.bytes_beyond_window += seg_end - limit;
            bytes = &bytes[..(limit - off) as usize];
            clipped = true;
        }
        let seg_end = off + bytes.len() as u64;
        if seg_end > head + cap {
            self.discard_to(slot, receiver, seg_end - cap, order);
        }
        if clipped {
            self.error(slot, receiver, ErrorKind::BeyondWindow, order, pkt);
        }
        let core = &mut self.core;
        let side = &mut core.flows[slot as usize].sides[receiver.index()];
        let policy = side.overlap;
        let before = side.contig();
        let out = side
            .buf
            .as_mut()
            .expect("created above")
            .write(off, bytes, policy);
        side.overlap_bytes += out.overlap;
        if out.fragment_limit {
            core.stats.fragment_limit_drops += 1;
            self.error(slot, receiver, ErrorKind::FragmentLimit, order, pkt);
            return;
        }
        let core = &mut self.core;
        let side = &mut core.flows[slot as usize].sides[receiver.index()];
        let after = side.contig();
        side.rx_next = after;
        if after > before {
            core.mark_pending(slot, receiver);
        }
    }

    /// An `Error` event for the receiving side (SPEC §2: hook None).
    fn error(&mut self, slot: u32, side: Side, kind: ErrorKind, order: Order, pkt: Option<&[u8]>) {
        self.emit(
            slot,
            EventKind::Error,
            EventSide::One(side),
            Hook::None,
            Detail::Error(kind),
            order,
            pkt,
        );
    }

    /// Moves a side's window head to `new_head` (at most the contiguous end): delivers a
    /// pending `NewData` first, then `Error` to each monitor that would lose unread bytes.
    fn discard_to(&mut self, slot: u32, side: Side, new_head: u64, order: Order) {
        let gen = self.core.flows[slot as usize].gen;
        self.deliver_newdata(slot, side);
        if !self.core.flow_is(slot, gen) {
            return;
        }
        for m in self.order_of(order) {
            let mf = self.core.mon_flows[slot as usize * self.core.nmon + m];
            let watching = !mf.ended && mf.stopped & (1 << side.index()) == 0;
            if watching
                && mf.mask & EventKind::NewData.bit(Hook::None) != 0
                && mf.cursor[side.index()] < new_head
            {
                let ev = Event {
                    kind: EventKind::Error,
                    side: EventSide::One(side),
                    hook: Hook::None,
                    flow: FlowHandle::flow(self.core.cfg.core, slot, gen),
                    detail: Detail::Error(ErrorKind::Overrun),
                };
                if mf.mask & EventKind::Error.bit(Hook::None) != 0 {
                    self.call(m, &ev, None);
                }
            }
        }
        if let Some(b) = self.core.flows[slot as usize].sides[side.index()]
            .buf
            .as_mut()
        {
            b.advance_head(new_head);
        }
    }

    /// The receiver's ACK says the peer got bytes this side never saw: skip the gap.
    fn ack_skip(&mut self, slot: u32, side: Side, ack: u32) {
        let s = &self.core.flows[slot as usize].sides[side.index()];
        let Some(buf) = s.buf.as_ref() else { return };
        if !s.rx_base_known {
            return;
        }
        let mut ack_off = s.offset_of(ack);
        // The FIN's sequence number carries no byte.
        if let Some(fin) = self.core.flows[slot as usize].sides[side.peer().index()].tx_fin {
            ack_off = ack_off.min(s.offset_of(fin));
        }
        let contig = buf.contig_end() as i64;
        if ack_off <= contig || ack_off - contig > (1 << 30) {
            return;
        }
        // Every gap below the acknowledged offset is lost to the capture.
        loop {
            let s = &self.core.flows[slot as usize].sides[side.index()];
            let Some(buf) = s.buf.as_ref() else { return };
            let contig = buf.contig_end();
            if contig >= ack_off as u64 {
                return;
            }
            let target = match buf.first_gap_end() {
                Some(next) => next.min(ack_off as u64),
                None => ack_off as u64,
            };
            self.skip_gap(slot, side, target);
        }
    }

    /// Declares `[contig_end, to)` missing: the next fragment (if it starts at `to`) becomes
    /// contiguous. Pending data is delivered first.
    fn skip_gap(&mut self, slot: u32, side: Side, to: u64) {
        let core = &mut self.core;
        let s = &mut core.flows[slot as usize].sides[side.index()];
        let Some(buf) = s.buf.as_mut() else { return };
        let contig = buf.contig_end();
        if to <= contig {
            return;
        }
        buf.skip_to(to);
        s.missing += to - contig;
        core.stats.bytes_missing += to - contig;
        s.rx_next = s.contig();
        // Readers learn about the skipped bytes through `peek` (`Lost`); data after the gap
        // is new contiguous data.
        core.mark_pending(slot, side);
    }

    /// Delivers a side's pending `NewData` now (before a discard or the flow's end).
    fn deliver_newdata(&mut self, slot: u32, side: Side) {
        let s = &mut self.core.flows[slot as usize].sides[side.index()];
        if !s.newdata_pending {
            return;
        }
        s.newdata_pending = false;
        let contig = s.contig();
        if contig <= s.newdata_mark {
            return;
        }
        s.newdata_mark = contig;
        self.emit(
            slot,
            EventKind::NewData,
            EventSide::One(side),
            Hook::None,
            Detail::None,
            Order::Load,
            None,
        );
    }

    fn flush_pending(&mut self) {
        let mut i = 0;
        while i < self.core.pending.len() {
            let (slot, gen, side) = self.core.pending[i];
            i += 1;
            if self.core.flow_is(slot, gen) {
                self.deliver_newdata(slot, side);
            }
        }
        self.core.pending.clear();
    }

    fn run_timers(&mut self) {
        while let Some(Reverse(t)) = self.core.timers.peek().copied() {
            if t.deadline > self.core.now {
                break;
            }
            self.core.timers.pop();
            let m = t.monitor as usize;
            if m >= self.monitors.len() {
                continue;
            }
            let flow = if t.slot == NIL {
                None
            } else if self.core.flow_is(t.slot, t.gen) {
                let mf = &self.core.mon_flows[t.slot as usize * self.core.nmon + m];
                if mf.ended {
                    continue;
                }
                Some(FlowHandle::flow(self.core.cfg.core, t.slot, t.gen))
            } else {
                continue;
            };
            let mut cx = Cx::new(&mut self.core, m, None, &self.user_events);
            self.monitors[m].on_timer(&mut cx, flow, t.tag);
            self.after_callback();
        }
    }

    fn expire(&mut self) {
        let now = self.core.now;
        while self.core.tw_head != NIL {
            let slot = self.core.tw_head;
            if self.core.flows[slot as usize].tw_deadline > now {
                break;
            }
            self.destroy(slot, EndReason::Fin, None);
        }
        let timeout = self.core.cfg.tcp_timeout;
        while self.core.lru_head != NIL {
            let slot = self.core.lru_head;
            if self.core.flows[slot as usize]
                .last_ts
                .saturating_add(timeout)
                > now
            {
                break;
            }
            self.core.stats.flows_timed_out += 1;
            let gen = self.core.flows[slot as usize].gen;
            for side in Side::BOTH {
                if self.core.flow_is(slot, gen) {
                    self.emit(
                        slot,
                        EventKind::Timeout,
                        EventSide::One(side),
                        Hook::None,
                        Detail::None,
                        Order::Load,
                        None,
                    );
                }
            }
            if self.core.flow_is(slot, gen) {
                self.destroy(slot, EndReason::Timeout, None);
            }
        }
    }

    /// Destroys a flow: delivers its pending data, then per side (`first`, then the other;
    /// client first when `None`) `TcpStateChange(CLOSED)` and `ConnEnd`, at `Rcv` then `Snd`.
    fn destroy(&mut self, slot: u32, reason: EndReason, first: Option<Side>) {
        let gen = self.core.flows[slot as usize].gen;
        self.core.unlink(slot);
        // Out-of-order data still held is delivered, skipping the gaps before it.
        for side in Side::BOTH {
            loop {
                let s = &self.core.flows[slot as usize].sides[side.index()];
                let Some(next) = s.buf.as_ref().and_then(|b| b.first_gap_end()) else {
                    break;
                };
                self.skip_gap(slot, side, next);
            }
            self.deliver_newdata(slot, side);
        }
        let first = first.unwrap_or(Side::Client);
        for side in [first, first.peer()] {
            let s = &mut self.core.flows[slot as usize].sides[side.index()];
            s.state = TcpState::Closed;
            s.destroyed = true;
            self.core.flows[slot as usize]
                .end_reason
                .get_or_insert(reason);
            for hook in [Hook::Rcv, Hook::Snd] {
                let one = EventSide::One(side);
                self.emit(
                    slot,
                    EventKind::TcpStateChange,
                    one,
                    hook,
                    Detail::State(TcpState::Closed),
                    Order::Load,
                    None,
                );
                self.emit(
                    slot,
                    EventKind::ConnEnd,
                    one,
                    hook,
                    Detail::End(reason),
                    Order::Load,
                    None,
                );
            }
        }
        debug_assert_eq!(self.core.flows[slot as usize].gen, gen);
        self.core.release(slot);
    }

    fn order_of(&self, order: Order) -> impl Iterator<Item = usize> {
        let n = self.monitors.len();
        (0..n).map(move |i| match order {
            Order::Load => i,
            Order::Reverse => n - 1 - i,
        })
    }

    /// Dispatches one event of a flow to every monitor subscribed to it for this flow.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn emit(
        &mut self,
        slot: u32,
        kind: EventKind,
        side: EventSide,
        hook: Hook,
        detail: Detail,
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        let bit = kind.bit(hook);
        if self.core.any_mask & bit == 0 {
            return;
        }
        let flow = FlowHandle::flow(self.core.cfg.core, slot, self.core.flows[slot as usize].gen);
        let ev = Event {
            kind,
            side,
            hook,
            flow,
            detail,
        };
        self.dispatch(slot, &ev, order, pkt);
    }

    fn dispatch(&mut self, slot: u32, ev: &Event, order: Order, pkt: Option<&[u8]>) {
        let bit = ev.kind.bit(ev.hook);
        let side_bit = match ev.side {
            EventSide::One(s) => 1u8 << s.index(),
            EventSide::Both => 0,
        };
        let nmon = self.core.nmon;
        for m in self.order_of(order) {
            let mf = &mut self.core.mon_flows[slot as usize * nmon + m];
            if mf.ended || mf.stopped & side_bit != 0 || mf.mask & bit == 0 {
                continue;
            }
            self.call(m, ev, pkt);
        }
        // User-defined events derived from this one.
        if self.user_events.is_empty() {
            return;
        }
        for u in 0..self.user_events.len() {
            let ue = &self.user_events[u];
            if ue.base != ev.kind || ue.filter.is_none() {
                continue;
            }
            let uk = EventKind::User(UserEventId(u as u8));
            if self.core.any_mask & self.descendant_mask(uk) == 0 {
                continue;
            }
            let fired = {
                let ue = &self.user_events[u];
                let mut cx = Cx::new(&mut self.core, usize::MAX, pkt, &self.user_events);
                match &ue.filter {
                    Some(Filter::Native(f)) => f(&mut cx, ev, ue.arg),
                    Some(Filter::Foreign { call, .. }) => call(&mut cx, ev, ue.arg),
                    None => false,
                }
            };
            if fired {
                let child = Event { kind: uk, ..*ev };
                self.dispatch(slot, &child, order, pkt);
            }
        }
    }

    fn descendant_mask(&self, kind: EventKind) -> u64 {
        let mut mask = kind.bit(Hook::None);
        for (i, u) in self.user_events.iter().enumerate() {
            if u.base == kind {
                mask |= self.descendant_mask(EventKind::User(UserEventId(i as u8)));
            }
        }
        mask
    }

    fn call(&mut self, m: usize, ev: &Event, pkt: Option<&[u8]>) {
        self.core.stats.events += 1;
        let mut cx = Cx::new(&mut self.core, m, pkt, &self.user_events);
        self.monitors[m].on_event(&mut cx, ev);
        self.after_callback();
    }

    /// Delivers what a callback asked for: raised user events and stop-monitoring ends.
    fn after_callback(&mut self) {
        // Raised events are delivered by the outermost callback's loop, not by nesting: a
        // monitor that raises an event from every delivery of it cannot exhaust the stack.
        if self.core.delivering {
            return;
        }
        self.core.delivering = true;
        self.deliver_queued();
        self.core.delivering = false;
    }

    fn deliver_queued(&mut self) {
        while let Some(ev) = self.core.raised.pop() {
            let slot = ev.flow.slot();
            if self.core.flow_is(slot, ev.flow.gen()) {
                self.dispatch(slot, &ev, Order::Load, None);
            }
        }
        while let Some((m, slot, gen)) = self.core.stopped.pop() {
            if !self.core.flow_is(slot, gen) {
                continue;
            }
            let handle = FlowHandle::flow(self.core.cfg.core, slot, gen);
            let idx = slot as usize * self.core.nmon + m as usize;
            // The handle stays readable during its own ConnEnd.
            let mask = self.core.mon_flows[idx].mask;
            self.core.mon_flows[idx].stopped = 0;
            self.core.mon_flows[idx].ended = true;
            for side in Side::BOTH {
                for hook in [Hook::Rcv, Hook::Snd] {
                    if mask & EventKind::ConnEnd.bit(hook) == 0 {
                        continue;
                    }
                    let ev = Event {
                        kind: EventKind::ConnEnd,
                        side: EventSide::One(side),
                        hook,
                        flow: handle,
                        detail: Detail::End(EndReason::Stopped),
                    };
                    self.core.stats.events += 1;
                    self.core.mon_flows[idx].ended = false;
                    let mut cx = Cx::new(&mut self.core, m as usize, None, &self.user_events);
                    self.monitors[m as usize].on_event(&mut cx, &ev);
                    self.core.mon_flows[idx].ended = true;
                }
            }
            self.core.mon_flows[slot as usize * self.core.nmon + m as usize].ended = true;
        }
    }
}

fn define_user_event(
    events: &mut Vec<UserEvent>,
    base: EventKind,
    filter: Option<Filter>,
    arg: u64,
) -> Result<EventKind, Errno> {
    if let EventKind::User(parent) = base {
        if usize::from(parent.0) >= events.len() {
            return Err(Errno::Inval);
        }
    }
    let key = filter.as_ref().map(Filter::key);
    let same =
        |u: &UserEvent| u.base == base && u.arg == arg && u.filter.as_ref().map(Filter::key) == key;
    if let Some(i) = events.iter().position(same) {
        return Ok(EventKind::User(UserEventId(i as u8)));
    }
    if events.len() >= MAX_USER_EVENTS {
        return Err(Errno::NoSpc);
    }
    events.push(UserEvent { base, filter, arg });
    Ok(EventKind::User(UserEventId((events.len() - 1) as u8)))
}

/// What a monitor may do when it is installed, before its first event: define user events
/// and subscribe to them ([`Monitor::setup`]).
pub struct Setup<'a> {
    user_events: &'a mut Vec<UserEvent>,
    subs: &'a mut Subscriptions,
}

impl Setup<'_> {
    /// Defines a user event (see [`Engine::define_event`]).
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

/// Bytes of freed buffers kept for reuse, at most (and never beyond `buffer_memory`).
const POOL_BYTES: u64 = 64 << 20;

/// Freed receive buffers by capacity, reused before allocating. Buffers in use plus
/// buffers pooled never exceed `buffer_memory`.
#[derive(Default)]
pub(crate) struct BufferPool {
    // The boxes move between sides and this pool without copying the buffers.
    #[allow(clippy::vec_box)]
    by_cap: Vec<(u64, Vec<Box<RecvBuffer>>)>,
    bytes: u64,
}

impl BufferPool {
    /// Keeps `b` if the pool and the budget (`limit` minus what is in use) allow.
    fn recycle(&mut self, b: Box<RecvBuffer>, in_use: u64, limit: u64) {
        let cap = b.capacity();
        if self.bytes + cap > POOL_BYTES.min(limit.saturating_sub(in_use)) {
            return;
        }
        let i = match self.by_cap.iter().position(|(c, _)| *c == cap) {
            Some(i) => i,
            None => {
                self.by_cap.push((cap, Vec::new()));
                self.by_cap.len() - 1
            }
        };
        self.by_cap[i].1.push(b);
        self.bytes += cap;
    }

    fn take(&mut self, cap: u64) -> Option<Box<RecvBuffer>> {
        let b = self
            .by_cap
            .iter_mut()
            .find(|(c, _)| *c == cap)
            .and_then(|(_, v)| v.pop())?;
        self.bytes -= cap;
        Some(b)
    }

    fn clear(&mut self) {
        self.by_cap.clear();
        self.bytes = 0;
    }
}

/// Whether a RST with `seq` is within the window of `receiver` (blind RSTs are ignored).
fn rst_in_window(receiver: &SideState, seq: u32) -> bool {
    // Exactly what the receiver asked for with its last ACK (RFC 5961 §3.2), even if that
    // was not what this observer expected (a stale connection answered with a RST).
    if !receiver.rx_base_known || (receiver.tx_ack_seen && receiver.tx_ack == seq) {
        return true;
    }
    let expected = receiver.rx_base.wrapping_add(receiver.contig() as u32);
    let window = receiver_window(receiver);
    let d = seq.wrapping_sub(expected) as i32;
    // Allow a little slack behind (RST after lost data in the capture) and the window ahead.
    (-(window as i64)..=window as i64).contains(&i64::from(d))
}

fn receiver_window(s: &SideState) -> u32 {
    s.window.max(65_535).max(s.capacity)
}

impl Core {
    #[inline]
    pub(crate) fn flow_is(&self, slot: u32, gen: u32) -> bool {
        let f = &self.flows[slot as usize];
        f.live && f.gen == gen
    }

    /// The live flow a handle names, checking core and generation.
    pub(crate) fn resolve(&self, h: FlowHandle) -> Result<u32, Errno> {
        if h.core() != self.cfg.core {
            return Err(Errno::Acces);
        }
        if !h.is_flow() {
            return Err(Errno::SocktNoSupport);
        }
        let slot = h.slot();
        match self.flows.get(slot as usize) {
            Some(f) if f.live && (f.gen & 0x3f_ffff) == h.gen() => Ok(slot),
            _ => Err(Errno::Badf),
        }
    }

    /// The slot of the first index entry whose tag matches `hash` (a guess for
    /// prefetching: the key is not compared).
    #[inline]
    fn slot_hint(&self, hash: u64) -> Option<usize> {
        let tag = hash >> 32;
        let mut i = hash as usize & self.index_mask;
        for _ in 0..4 {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if e >> 32 == tag {
                return Some((e as u32 - 1) as usize);
            }
            i = (i + 1) & self.index_mask;
        }
        None
    }

    #[inline]
    fn lookup(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let tag = hash >> 32;
        let mut i = hash as usize & self.index_mask;
        loop {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if e >> 32 == tag {
                let slot = (e as u32) - 1;
                if self.flows[slot as usize].key == *key {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.index_mask;
        }
    }

    /// Doubles the index and reinserts every live flow (only when a new slot is created).
    fn grow_index(&mut self) {
        let len = self.index.len() * 2;
        self.index = vec![0; len];
        huge_pages(&self.index);
        self.index_mask = len - 1;
        for slot in 0..self.flows.len() as u32 {
            if self.flows[slot as usize].live {
                let hash = self.flows[slot as usize].key.hash();
                self.index_insert(hash, slot);
            }
        }
    }

    fn index_insert(&mut self, hash: u64, slot: u32) {
        let mut i = hash as usize & self.index_mask;
        while self.index[i] != 0 {
            i = (i + 1) & self.index_mask;
        }
        self.index[i] = ((hash >> 32) << 32) | u64::from(slot + 1);
    }

    /// Linear-probing delete with backward shift: no tombstones, lookups stay short.
    fn index_remove(&mut self, hash: u64, slot: u32) {
        let mask = self.index_mask;
        let mut i = hash as usize & mask;
        while self.index[i] as u32 != slot + 1 {
            if self.index[i] == 0 {
                return;
            }
            i = (i + 1) & mask;
        }
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.index[j];
            if e == 0 {
                break;
            }
            let s = (e as u32) - 1;
            let home = self.flows[s as usize].key.hash() as usize & mask;
            // Move e into the hole if its home is not in (hole, j].
            let dist_home = j.wrapping_sub(home) & mask;
            let dist_hole = j.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                self.index[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.index[hole] = 0;
    }

    fn create(&mut self, key: FlowKey, hash: u64, client_is_lo: bool, partial: bool) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let (flows_cap, mon_cap) = (self.flows.capacity(), self.mon_flows.capacity());
                self.flows.push(Flow::empty(self.cfg.overlap));
                self.mon_flows
                    .resize(self.flows.len() * self.nmon, MonFlow::default());
                // A table that just grew (doubling: rare) asks for huge pages, so that a
                // big table is not a TLB miss per packet.
                if self.flows.capacity() != flows_cap {
                    huge_pages(&self.flows);
                }
                if self.mon_flows.capacity() != mon_cap {
                    huge_pages(&self.mon_flows);
                }
                if self.flows.len() * 2 > self.index.len() {
                    self.grow_index();
                }
                self.flows.len() as u32 - 1
            }
        };
        let now = self.now;
        let seqno = self.next_seqno;
        self.next_seqno += 1;
        let caps = self.wanted_capacity();
        let overlap = self.cfg.overlap;
        let f = &mut self.flows[slot as usize];
        f.key = key;
        f.live = true;
        f.client_is_lo = client_is_lo;
        f.partial = partial;
        f.in_tw = false;
        f.start_ts = now;
        f.last_ts = now;
        f.seqno = seqno;
        f.end_reason = None;
        f.last = LastPacket::default();
        let (cli, svr) = if partial {
            (TcpState::Established, TcpState::Established)
        } else {
            (TcpState::Closed, TcpState::Listen)
        };
        for (i, st) in [cli, svr].into_iter().enumerate() {
            let old = std::mem::replace(&mut f.sides[i], SideState::new(st, caps[i], overlap));
            if let Some(b) = old.buf {
                self.spare_buffers
                    .recycle(b, self.stats.buffer_bytes, self.cfg.buffer_memory);
            }
        }
        if partial {
            let f = &mut self.flows[slot as usize];
            for s in &mut f.sides {
                s.opened = true;
            }
        }
        let nmon = self.nmon;
        for m in 0..nmon {
            self.mon_flows[slot as usize * nmon + m] = MonFlow {
                mask: self.mon_subs[m].mask,
                ..MonFlow::default()
            };
        }
        self.index_insert(hash, slot);
        self.lru_push(slot);
        self.stats.flows_created += 1;
        self.stats.flows_partial += u64::from(partial);
        self.stats.flows_live += 1;
        slot
    }

    fn wanted_capacity(&self) -> [u32; 2] {
        let mut caps = [0u32; 2];
        for s in &self.mon_subs {
            for (i, req) in s.buffers.iter().enumerate() {
                let c = match *req {
                    BufferRequest::Off => 0,
                    BufferRequest::Default => self.cfg.buffer_capacity,
                    BufferRequest::AtLeast(n) => n,
                };
                caps[i] = caps[i].max(c);
            }
        }
        caps
    }

    fn release(&mut self, slot: u32) {
        let hash = self.flows[slot as usize].key.hash();
        self.index_remove(hash, slot);
        let f = &mut self.flows[slot as usize];
        f.live = false;
        f.gen = f.gen.wrapping_add(1) & 0x3f_ffff;
        for s in &mut f.sides {
            if let Some(b) = s.buf.take() {
                self.stats.buffer_bytes -= b.capacity();
                self.spare_buffers
                    .recycle(b, self.stats.buffer_bytes, self.cfg.buffer_memory);
            }
        }
        self.free.push(slot);
        self.stats.flows_live -= 1;
    }

    pub(crate) fn alloc_buffer(&mut self, cap: u32, head: u64) -> Option<Box<RecvBuffer>> {
        let cap64 = u64::from(cap);
        if self.stats.buffer_bytes + cap64 > self.cfg.buffer_memory {
            return None;
        }
        self.stats.buffer_bytes += cap64;
        if let Some(mut b) = self.spare_buffers.take(cap64) {
            b.reset(head);
            return Some(b);
        }
        // A new buffer: pooled ones of other sizes make room first.
        if self.stats.buffer_bytes + self.spare_buffers.bytes > self.cfg.buffer_memory {
            self.spare_buffers.clear();
        }
        Some(Box::new(RecvBuffer::new(cap as usize, head)))
    }

    pub(crate) fn mark_pending(&mut self, slot: u32, side: Side) {
        let f = &mut self.flows[slot as usize];
        let s = &mut f.sides[side.index()];
        if !s.newdata_pending {
            s.newdata_pending = true;
            self.pending.push((slot, f.gen, side));
        }
    }

    /// The least recently active flow of the idle list (NIL if empty). The list is in
    /// order of `linked_ts` (see [`Core::touch`]), so only flows linked within the
    /// granularity of the head can be less recently active than it: the first few of those
    /// are compared.
    fn lru_victim(&self) -> u32 {
        const LOOK: usize = 8;
        let head = self.lru_head;
        if head == NIL {
            return NIL;
        }
        let horizon = self.flows[head as usize]
            .linked_ts
            .saturating_add(self.touch_granularity);
        let (mut best, mut best_ts) = (head, self.flows[head as usize].last_ts);
        let mut at = self.flows[head as usize].next;
        for _ in 1..LOOK {
            if at == NIL || self.flows[at as usize].linked_ts >= horizon {
                break;
            }
            let f = &self.flows[at as usize];
            if f.last_ts < best_ts {
                (best, best_ts) = (at, f.last_ts);
            }
            at = f.next;
        }
        best
    }

    fn lru_push(&mut self, slot: u32) {
        let tail = self.lru_tail;
        let f = &mut self.flows[slot as usize];
        f.linked_ts = f.last_ts;
        f.prev = tail;
        f.next = NIL;
        if tail == NIL {
            self.lru_head = slot;
        } else {
            self.flows[tail as usize].next = slot;
        }
        self.lru_tail = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next, tw) = {
            let f = &self.flows[slot as usize];
            (f.prev, f.next, f.in_tw)
        };
        let (head, tail) = if tw {
            (&mut self.tw_head, &mut self.tw_tail)
        } else {
            (&mut self.lru_head, &mut self.lru_tail)
        };
        if prev == NIL {
            *head = next;
        } else {
            self.flows[prev as usize].next = next;
        }
        if next == NIL {
            *tail = prev;
        } else {
            self.flows[next as usize].prev = prev;
        }
        let f = &mut self.flows[slot as usize];
        f.prev = NIL;
        f.next = NIL;
    }

    /// Marks activity: the flow moves to the back of the idle list, unless it was moved
    /// there less than `touch_granularity` ago. Moving it touches its two neighbours in the
    /// list, two cache misses per packet with a large table; skipping keeps the list in
    /// order of `linked_ts`, with every `last_ts` in `[linked_ts, linked_ts + granularity)`:
    /// an idle timeout may be seen up to `tcp_timeout / 1024` late (30 ms of 30 s), and
    /// eviction picks a flow at most that much more recent than the least recent one.
    #[inline]
    fn touch(&mut self, slot: u32, ts: u64) {
        let granularity = self.touch_granularity;
        let f = &mut self.flows[slot as usize];
        f.last_ts = f.last_ts.max(ts);
        if f.in_tw || self.lru_tail == slot || f.last_ts < f.linked_ts.saturating_add(granularity) {
            return;
        }
        self.unlink(slot);
        self.lru_push(slot);
    }

    fn enter_time_wait(&mut self, slot: u32, deadline: u64) {
        if self.flows[slot as usize].in_tw {
            return;
        }
        self.unlink(slot);
        let tail = self.tw_tail;
        let f = &mut self.flows[slot as usize];
        f.in_tw = true;
        f.tw_deadline = deadline;
        f.prev = tail;
        f.next = NIL;
        if tail == NIL {
            self.tw_head = slot;
        } else {
            self.flows[tail as usize].next = slot;
        }
        self.tw_tail = slot;
    }
}
