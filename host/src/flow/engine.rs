//! The engine: one per core, the orchestration of its parts for each packet and batch.
//!
//! Its input is `(segment, frame, timestamp)`; its output is the callbacks of its
//! monitors. A segment goes: flow lookup or creation ([`super::table`]), the sender's
//! TCP state ([`super::tcp`]), its events, the receiver's stream ([`super::reassembly`])
//! and state, their events ([`super::dispatch`]), then the flow's end or TIME_WAIT. At the
//! end of a batch: timers and expiry ([`super::timers`]), then `NewData`.
//!
//! Owns: [`Engine`], its public driving API, and [`Core`], the parts that are not the
//! monitors. Must not: read a clock or do I/O (time is the packets'), allocate per packet,
//! or hold logic of its own beyond putting the parts in order.

use super::api::{define_user_event, Cx, Errno, Filter, UserEvent, UserFilter};
use super::config::Config;
use super::dispatch::{Dispatch, Order};
use super::key::{quick_frame_hash, Addr, FlowKey};
use super::marks::NewDataMarks;
use super::monitor::{Monitor, Setup};
use super::stats::Stats;
use super::subscriptions::{BufferRequest, Subscriptions};
use super::table::{FlowIdx, FlowTable, LastPacket, PREFETCH_MIN_FLOWS};
use super::tcp::{self, Transition};
use super::timers::{self, Timers};
use super::tombstone::{Tombstones, Verdict};
use super::types::*;
use crate::filter::StreamFilter;
use crate::ip::Defragmenter;
use crate::wire::{self, Decoded, LinkType, TcpFlags, TcpSegment};

/// Everything but the monitors, as distinct parts, so that a callback's [`Cx`] borrows
/// the ones it may read and change while the engine holds the monitors.
pub(crate) struct Core {
    pub(crate) cfg: Config,
    /// The engine's clock: the latest packet time (ns).
    pub(crate) now: u64,
    pub(crate) table: FlowTable,
    pub(crate) dispatch: Dispatch,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    pub(crate) marks: NewDataMarks,
    pub(crate) tombs: Tombstones,
    /// Flows whose RST lingers (`Ctl::RstLinger`), with the packet time at which it takes
    /// effect at the latest: (deadline, slot, generation), in deadline order (one allowance
    /// for all, from a clock that does not go back). Stale entries (the flow ended
    /// otherwise) are skipped.
    pub(crate) lingering: std::collections::VecDeque<(u64, FlowIdx, u32)>,
    /// The link type of the frame being processed: stream filters need it.
    pub(crate) link: Option<LinkType>,
}

impl Core {
    /// A context for monitor `monitor` (or a filter), lending it the parts.
    #[inline]
    pub(crate) fn cx<'a>(
        &'a mut self,
        monitor: usize,
        packet: Option<&'a [u8]>,
        user_events: &'a [UserEvent],
    ) -> Cx<'a> {
        Cx::new(
            &mut self.table,
            &mut self.dispatch,
            &mut self.timers,
            &mut self.stats,
            self.now,
            monitor,
            packet,
            user_events,
        )
    }
}

/// The per-core monitoring engine (SPEC.md): feed it packets and timestamps; it calls its
/// monitors.
pub struct Engine {
    pub(crate) core: Core,
    pub(crate) monitors: Vec<Box<dyn Monitor>>,
    pub(crate) user_events: Vec<UserEvent>,
    /// IP fragments wait here for their datagram (only fragments reach it).
    pub(crate) defrag: Defragmenter,
    /// The last reassembled datagram, copied out of `defrag` so that the engine can be
    /// borrowed whole while it is processed (reused).
    pub(crate) datagram: Vec<u8>,
    /// Live multi-core sources: which core a datagram reassembled here belongs to, and the
    /// way there (see [`Engine::set_handoff`]).
    pub(crate) handoff: Option<HandoffRoute>,
}

/// Where a reassembled datagram went (see [`Engine::set_handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handed {
    /// Its flow is this core's: processed here.
    Here,
    /// Sent to its flow's core.
    Sent,
    /// Its flow's core could not take it: dropped (counted).
    Dropped,
}

/// See [`Engine::set_handoff`]: (link, frame, time, overlap differs) → where it went.
pub type HandoffRoute = Box<dyn FnMut(LinkType, &[u8], u64, bool) -> Handed + Send>;

impl Engine {
    /// An engine with `monitors`, visited in this (load) order.
    pub fn new(cfg: Config, monitors: Vec<Box<dyn Monitor>>) -> Engine {
        let subs: Vec<Subscriptions> = monitors.iter().map(|m| m.subscriptions()).collect();
        let nmon = monitors.len();
        let defrag = Defragmenter::new(cfg.defrag);
        let mut engine = Engine {
            core: Core {
                table: FlowTable::new(&cfg, nmon),
                dispatch: Dispatch::new(subs),
                timers: Timers::default(),
                stats: Stats::default(),
                marks: NewDataMarks::new(),
                tombs: Tombstones::new(cfg.tombstones),
                lingering: std::collections::VecDeque::new(),
                now: 0,
                link: None,
                cfg,
            },
            monitors,
            user_events: Vec::new(),
            defrag,
            datagram: Vec::new(),
            handoff: None,
        };
        engine.core.dispatch.global = engine.core.cfg.filter.clone();
        for m in 0..nmon {
            let filter = engine.monitors[m].filter();
            engine.core.dispatch.set_filter(m, filter);
            engine.setup_monitor(m);
        }
        engine
    }

    /// Sets monitor `monitor`'s stream filter (`None`: every flow) for flows that start
    /// from now on; flows already tracked keep the monitors they had.
    pub fn set_monitor_filter(&mut self, monitor: usize, filter: Option<StreamFilter>) {
        if monitor < self.monitors.len() {
            self.core.dispatch.set_filter(monitor, filter);
        }
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
        let old = self.core.table.nmon();
        self.core.table.add_monitor();
        let d = &mut self.core.dispatch;
        d.subs.push(monitor.subscriptions());
        d.any_mask |= d.subs[old].mask;
        d.set_filter(old, monitor.filter());
        self.monitors.push(monitor);
        self.setup_monitor(old);
        old
    }

    /// Adds subscriptions (and buffer requests) of monitor `monitor` for future flows.
    pub fn extend_subscriptions(&mut self, monitor: usize, subs: Subscriptions) {
        let Some(s) = self.core.dispatch.subs.get_mut(monitor) else {
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
        self.core.dispatch.any_mask |= subs.mask;
    }

    /// Runs `f` with a context of monitor `monitor`, outside any event (shutdown, reports).
    pub fn with_cx<R>(&mut self, monitor: usize, f: impl FnOnce(&mut Cx<'_>) -> R) -> R {
        let mut cx = self.core.cx(monitor, None, &self.user_events);
        f(&mut cx)
    }

    /// Runs a monitor's [`Monitor::setup`] (again): it may define user events and subscribe.
    pub fn setup_monitor(&mut self, monitor: usize) {
        let Some(m) = self.monitors.get_mut(monitor) else {
            return;
        };
        let mut setup = Setup::new(&mut self.user_events, &mut self.core.dispatch.subs[monitor]);
        m.setup(&mut setup);
        self.core.dispatch.any_mask |= self.core.dispatch.subs[monitor].mask;
    }

    /// Subscribes monitor `monitor` to `(event, hook)` for all future flows.
    pub fn subscribe(&mut self, monitor: usize, event: EventKind, hook: Hook) {
        if let Some(s) = self.core.dispatch.subs.get_mut(monitor) {
            s.mask |= event.bit(hook);
            self.core.dispatch.any_mask |= event.bit(hook);
        }
    }

    /// Decodes one frame and processes it.
    #[inline]
    pub fn on_frame(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64) {
        let decoded = link.map(|l| wire::decode(l, frame));
        self.on_decoded(link, &decoded, frame, ts);
    }

    /// Whether looking ahead pays: the flow table is past the caches' reach (at least
    /// [`PREFETCH_MIN_FLOWS`] slots). Workers check it once per batch and then call
    /// [`Engine::prefetch_index`] and [`Engine::prefetch_flow`] for frames a few places ahead
    /// of the one they process, so that the cache misses of several packets overlap.
    #[inline]
    pub fn prefetch_wanted(&self) -> bool {
        self.core.table.slots() >= PREFETCH_MIN_FLOWS
    }

    /// Lookahead, far: starts loading the index entry of `frame`'s flow into the cache.
    /// Only plain IPv4 TCP frames (Ethernet without tags, or raw IP) are recognised; for
    /// anything else this does nothing. Changes nothing the engine does.
    #[inline]
    pub fn prefetch_index(&self, link: Option<LinkType>, frame: &[u8]) {
        if let Some(hash) = quick_frame_hash(link, frame) {
            self.core.table.prefetch_index(hash);
        }
    }

    /// Lookahead, near (after [`Engine::prefetch_index`] for the same frame, a few frames
    /// earlier): finds the flow's slot by the index entry's tag alone (no key comparison,
    /// which would wait for the flow) and starts loading the flow's state and its
    /// per-monitor state.
    #[inline]
    pub fn prefetch_flow(&self, link: Option<LinkType>, frame: &[u8]) {
        if let Some(hash) = quick_frame_hash(link, frame) {
            self.core.table.prefetch_flow(hash);
        }
    }

    /// Processes a frame of link type `link` already decoded (`None`: an unsupported link
    /// type), counting it. The decoded frame is borrowed: moving it by value cost 5 Mpps
    /// (the engine bench). IP fragments go to the defragmenter, and a datagram they
    /// complete is processed as one packet with the last fragment's time.
    // Always inlined: see `tcp::on_send`.
    #[inline(always)]
    pub fn on_decoded(
        &mut self,
        link: Option<LinkType>,
        decoded: &Option<Result<Decoded<'_>, wire::DecodeError>>,
        frame: &[u8],
        ts: u64,
    ) {
        self.core.stats.packets += 1;
        self.core.stats.bytes += frame.len() as u64;
        self.core.link = link;
        match decoded {
            None => self.core.stats.unsupported_link += 1,
            Some(Ok(Decoded::Tcp(seg))) => {
                if self.core.cfg.verify_checksums
                    && (wire::tcp_checksum_ok(frame, seg) == Some(false)
                        || wire::ipv4_header_checksum_ok(frame, seg) == Some(false))
                {
                    self.core.stats.bad_checksum += 1;
                    return;
                }
                if self.core.cfg.drop_truncated && seg.is_truncated() {
                    self.core.stats.truncated_dropped += 1;
                    return;
                }
                self.on_segment(seg, frame, ts);
            }
            Some(Ok(Decoded::NotTcp)) => self.core.stats.not_tcp += 1,
            Some(Ok(Decoded::Fragment)) => self.on_fragment(link, frame, ts),
            Some(Err(_)) => self.core.stats.malformed += 1,
        }
    }

    /// Moves the clock to `ts` without a packet of this engine (another core's packet, in
    /// a capture shared by several cores): timers and idle expiry follow the capture's time.
    #[inline]
    pub fn observe_time(&mut self, ts: u64) {
        self.core.now = self.core.now.max(ts);
    }

    /// A frame of another core's shard (a capture every core reads whole): moves the clock
    /// exactly as processing it here would have (a TCP segment that passes the checks of
    /// [`Engine::on_decoded`]; other frames do not move it), and does nothing else. With
    /// it, every core's clock, and so its timers, follow the whole capture's TCP packets
    /// whatever the number of cores.
    #[inline]
    pub fn observe_decoded(
        &mut self,
        decoded: &Option<Result<Decoded<'_>, wire::DecodeError>>,
        frame: &[u8],
        ts: u64,
    ) {
        if moves_clock(&self.core.cfg, decoded, frame) {
            self.core.now = self.core.now.max(ts);
        }
    }

    /// A frame of a capture every core reads, routed once by the reader
    /// ([`crate::io::shard::Route`]): processed here if this `core` takes it, else it only
    /// moves the clock when the route says processing it would have (as
    /// [`Engine::observe_decoded`], without decoding it again). A [`Route::DECIDE`] frame is
    /// decoded and sharded here.
    ///
    /// [`Route::DECIDE`]: crate::io::shard::Route::DECIDE
    #[inline]
    pub fn on_routed(
        &mut self,
        route: crate::io::shard::Route,
        core: usize,
        cores: usize,
        link: Option<LinkType>,
        frame: &[u8],
        ts: u64,
    ) {
        if route.is_decide() {
            let decoded = link.map(|l| wire::decode(l, frame));
            // IP fragments go to every core: the ports that pick the flow's core are in the
            // first fragment only (see `Config::replay_cores`).
            if crate::io::shard::decoded_shard(&decoded, cores) == core
                || matches!(decoded, Some(Ok(Decoded::Fragment)))
            {
                self.on_decoded(link, &decoded, frame, ts);
            } else {
                self.observe_decoded(&decoded, frame, ts);
            }
        } else if route.takes(core) {
            self.on_frame(link, frame, ts);
        } else if route.moves_clock() {
            self.core.now = self.core.now.max(ts);
        }
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
        let mut found = core.table.lookup(&key, hash);
        if let Some(slot) = found {
            let f = core.table.flow(slot);
            if f.disorder {
                // Read by the disorder rules of this packet, after the TCP transitions:
                // start loading it now.
                core.table.prefetch_held(slot);
            }
            if f.disorder
                && seg.flags.syn()
                && f.sides.iter().all(|s| s.finished)
                && !f.sides.iter().any(|s| {
                    // Its own SYN, overtaken: not a new connection; nor its SYN/ACK, which
                    // acknowledges the start of the client's stream.
                    s.rx_base_known
                        && (s.rx_base == seg.seq.wrapping_add(1)
                            || (seg.flags.ack() && s.rx_base == seg.ack))
                })
            {
                // Closed, kept only for bytes its FIN may have overtaken (disorder.rs):
                // a SYN on the same endpoints is the next connection (or a late copy of
                // this one's, which its tombstone counts).
                self.destroy(slot, EndReason::Fin, None);
                found = None;
            } else if f.disorder && self.rst_lingers_past(slot, ts) {
                // Its RST took effect before this packet, as it does at the end of a batch
                // whose clock passed the deadline (the same for any number of cores).
                found = None;
            }
        }
        let slot = match found {
            Some(slot) => slot,
            None => match self.start_flow(seg, frame, key, hash, src_is_lo) {
                Some(slot) => slot,
                None => return,
            },
        };
        if seg.flags.syn() && !seg.flags.rst() {
            self.name_client_by_syn(slot, src_is_lo, seg.flags.ack());
        }
        let core = &mut self.core;
        let sender = if src_is_lo == core.table.flow(slot).client_is_lo {
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
        core.table.touch(slot, ts);
        let gen = core.table.flow(slot).gen;
        if seg.flags.syn() && seg.flags.ack() && !seg.flags.rst() {
            // A SYN/ACK ahead of every other packet of the stream it acknowledges (the SYN
            // came behind it): that stream starts at its ACK number, the client's ISN + 1,
            // so that a FIN or data that overtook the rest is placed where it belongs.
            let s = &mut core.table.flow_mut(slot).sides[sender.index()];
            if !s.rx_base_known {
                s.rx_base = seg.ack;
                s.rx_base_known = true;
            }
        }
        // A FIN or RST beyond the receiver's contiguous end waits for the data before it
        // (disorder.rs): the packet goes on without it.
        let stripped;
        let wire_flags = seg.flags;
        let seg = if seg.flags.0 & (TcpFlags::FIN | TcpFlags::RST) != 0
            && self.hold_ctl(slot, sender, seg)
        {
            let keep = if seg.flags.rst() {
                TcpFlags::PSH | TcpFlags::URG
            } else {
                !TcpFlags::FIN
            };
            stripped = TcpSegment {
                flags: TcpFlags(seg.flags.0 & keep),
                ..*seg
            };
            &stripped
        } else {
            seg
        };
        let core = &mut self.core;
        let flags = seg.flags;
        let payload = seg.payload;
        let data_seq = seg.seq.wrapping_add(u32::from(flags.syn()));

        // --- 3. Sender side.
        let flow = core.table.flow_mut(slot);
        let snd = tcp::on_send(
            &mut flow.sides,
            &mut flow.end_reason,
            flow.partial,
            sender,
            seg,
            data_seq,
            &mut core.stats.rst_ignored,
        );
        flow.last = LastPacket {
            ts,
            sender: Some(sender),
            seq: seg.seq,
            ack: seg.ack,
            // What the packet carried, held or not: monitors see the packet as it is.
            flags: wire_flags,
            window: seg.window,
            payload_len: payload.len() as u32,
            offset: 0,
        };
        // An ACK covering bytes this side never saw: lost to the capture, or overtaken.
        if flags.ack() && !flags.rst() {
            self.ack_note(slot, sender, seg.ack);
        }
        let pkt = Some(frame);
        self.emit_transition(slot, sender, Hook::Snd, snd, order, pkt);
        if !self.core.table.is_live(slot, gen) {
            return;
        }

        // --- 4. Receiver side: the data first (Rexmit, Error before the merge).
        let flow = self.core.table.flow(slot);
        let known = flow.sides[receiver.index()].rx_base_known;
        // A pure ACK does not place the start of a stream not seen yet (below), nor does
        // a RST start a guess that would keep the flow it ends.
        let places =
            known || !payload.is_empty() || wire_flags.0 & (TcpFlags::SYN | TcpFlags::FIN) != 0;
        if (flow.disorder || (!known && !flags.syn())) && places {
            self.rebase_guess(slot, receiver, flags.syn(), data_seq);
            // A SYN/ACK names where the stream it acknowledges starts.
            let (flow, held) = self.core.table.flow_held(slot);
            if flags.syn()
                && flags.ack()
                && flow.sides[sender.index()].rx_base_known
                && held[sender.index()].base_guess
            {
                self.rebase_guess(slot, sender, true, seg.ack);
            }
        }
        let flow = self.core.table.flow_mut(slot);
        let r = &mut flow.sides[receiver.index()];
        flow.last.offset = if !r.rx_base_known
            && payload.is_empty()
            && wire_flags.0 & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) == 0
        {
            // A pure ACK does not place the start of a stream not seen yet: it may have
            // been sent after all of it (a sender's last ACK, overtaking its data).
            0
        } else {
            tcp::stream_offset(r, flags, data_seq)
        };
        // Data on a RST is stored too: a monitor wants to see what the RST carried.
        if !payload.is_empty() && flow.sides[receiver.index()].rx_base_known {
            self.receive_data(slot, receiver, data_seq, payload, order, pkt);
            if !self.core.table.is_live(slot, gen) {
                return;
            }
        }
        let flow = self.core.table.flow_mut(slot);
        let rcv = tcp::on_receive(
            &mut flow.sides[receiver.index()],
            receiver,
            flow.partial,
            flow.end_reason,
            seg,
        );
        self.emit_transition(slot, receiver, Hook::Rcv, rcv, order, pkt);
        if !self.core.table.is_live(slot, gen) {
            return;
        }
        if (flags.fin() || self.core.table.flow(slot).disorder) && !self.settle(slot, pkt) {
            return;
        }

        // --- 5. Both sides finished: destroy (receiver first), or enter TIME_WAIT.
        let flow = self.core.table.flow(slot);
        // A gap still within its reordering allowance (disorder.rs) keeps the flow: the
        // bytes a FIN overtook may come yet; so does a guessed start: the handshake and
        // the first bytes may come yet.
        if flow.sides[0].finished
            && flow.sides[1].finished
            && !(flow.disorder
                && self
                    .core
                    .table
                    .held(slot)
                    .iter()
                    .any(|h| h.skip_left > 0 || (h.base_guess && h.guess_left > 0)))
        {
            let reason = flow.end_reason.unwrap_or(EndReason::Fin);
            let tw = self.core.cfg.tw_interval;
            let any_tw = flow.sides.iter().any(|s| s.state == TcpState::TimeWait);
            if reason == EndReason::Fin && tw > 0 && any_tw {
                self.core.table.enter_time_wait(slot, ts.saturating_add(tw));
            } else {
                self.destroy(slot, reason, Some(receiver));
            }
        }
    }

    /// A packet of no known flow: a new flow (evicting the least recently active one if
    /// the table is full), or an `Orphan` (`None`).
    #[inline]
    fn start_flow(
        &mut self,
        seg: &TcpSegment<'_>,
        frame: &[u8],
        key: FlowKey,
        hash: u64,
        src_is_lo: bool,
    ) -> Option<FlowIdx> {
        let flags = seg.flags;
        let core = &mut self.core;
        if core.tombs.check(&key, hash, src_is_lo, seg, core.now) == Verdict::Late {
            core.stats.late += 1;
            return None;
        }
        let starts = flags.syn() && !flags.ack() && !flags.rst();
        let midstream = self.core.cfg.midstream && !flags.rst();
        let link = self.core.link;
        // Filters are applied before any monitor sees the packet: orphans included.
        if !self.core.dispatch.global_passes(link, frame) {
            self.core.stats.filtered += 1;
            return None;
        }
        if !starts && !midstream {
            self.orphan(seg, frame);
            return None;
        }
        if !self.core.dispatch.select(link, frame) {
            self.core.stats.filtered += 1;
            return None;
        }
        if self.core.table.is_full() {
            let victim = self.core.table.victim();
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
        } else if seg.src_port != seg.dst_port {
            // Neither or both well-known: the lower port is the service's (ephemeral ports
            // are handed out from the top of the range), whichever side spoke first: a tap
            // may show the server's packets before the SYN.
            (seg.src_port > seg.dst_port) == src_is_lo
        } else {
            src_is_lo
        };
        let core = &mut self.core;
        let caps = core.dispatch.wanted_capacity(core.cfg.buffer_capacity);
        Some(core.table.create(
            key,
            hash,
            client_is_lo,
            !starts,
            core.now,
            caps,
            core.dispatch.masks(),
            &mut core.stats,
        ))
    }

    /// The events of one side's [`Transition`] at `hook`: `PktIn`, then `ConnStart`,
    /// `TcpStateChange` and `Rexmit` (a control retransmission) as they apply.
    // Always inlined: see `tcp::on_send`.
    #[inline(always)]
    fn emit_transition(
        &mut self,
        slot: FlowIdx,
        side: Side,
        hook: Hook,
        t: Transition,
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        let one = EventSide::One(side);
        self.emit(slot, EventKind::PktIn, one, hook, Detail::None, order, pkt);
        if t.conn_start {
            self.emit(
                slot,
                EventKind::ConnStart,
                one,
                hook,
                Detail::None,
                order,
                pkt,
            );
        }
        if let Some(st) = t.change {
            let detail = Detail::State(st);
            self.emit(
                slot,
                EventKind::TcpStateChange,
                one,
                hook,
                detail,
                order,
                pkt,
            );
        }
        if t.ctl_rexmit {
            self.emit(slot, EventKind::Rexmit, one, hook, Detail::None, order, pkt);
        }
    }

    /// Delivers everything due at the end of a batch: the events held for batches, timers,
    /// idle and TIME_WAIT expiry, then one `NewData` per side whose contiguous data grew
    /// (SPEC §2.1), and what was held meanwhile (SPEC §2.4).
    pub fn end_batch(&mut self) {
        self.deliver_batches();
        self.run_timers();
        self.expire();
        self.release_lingering();
        self.flush_pending();
        self.batch_boundary();
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
        for slot in self.core.table.live_in_creation_order() {
            self.destroy(slot, reason, None);
        }
        self.flush_pending();
        self.batch_boundary();
    }

    /// When [`Engine::end_batch`] next has time-driven work: a timer, the end of a
    /// TIME_WAIT, a lingering RST or an idle timeout (`None`: nothing pending). A live source that sees no
    /// packet may sleep until then and [`Engine::advance`].
    pub fn next_deadline(&self) -> Option<u64> {
        let due = timers::next_deadline(
            &self.core.timers,
            &self.core.table,
            self.core.cfg.tcp_timeout,
        );
        // A lingering RST (disorder.rs); a stale entry only wakes the loop once.
        let linger = self.core.lingering.front().map(|e| e.0);
        match (due, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn orphan(&mut self, seg: &TcpSegment<'_>, frame: &[u8]) {
        let core = &mut self.core;
        core.stats.orphans += 1;
        if !core.dispatch.wanted(EventKind::Orphan.bit(Hook::None)) {
            return;
        }
        core.dispatch.orphan = LastPacket {
            ts: core.now,
            sender: None,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            window: seg.window,
            payload_len: seg.payload.len() as u32,
            offset: 0,
        };
        core.dispatch.orphan_addrs = Some((
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
            if self.core.dispatch.subs[m].mask & ev.kind.bit(Hook::None) != 0 {
                self.call(m, &ev, Some(frame));
            }
        }
        self.core.dispatch.orphan_addrs = None;
    }
}

/// Whether a frame moves the clock of an engine with `cfg` that does not process it (a
/// frame of another core's shard, [`Engine::observe_decoded`]): a TCP segment that passes
/// the checks [`Engine::on_decoded`] makes (checksums under `verify_checksums`, whole
/// segments under `drop_truncated`). Other frames do not move it.
pub fn moves_clock(
    cfg: &Config,
    decoded: &Option<Result<Decoded<'_>, wire::DecodeError>>,
    frame: &[u8],
) -> bool {
    let Some(Ok(Decoded::Tcp(seg))) = decoded else {
        return false;
    };
    if cfg.verify_checksums
        && (wire::tcp_checksum_ok(frame, seg) == Some(false)
            || wire::ipv4_header_checksum_ok(frame, seg) == Some(false))
    {
        return false;
    }
    !(cfg.drop_truncated && seg.is_truncated())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::testing::seg;

    /// The in-order fast path: a connection whose segments come in order, each carrying
    /// data and the ACK of the peer's, never has anything held (`disorder` stays false, so
    /// no packet pays for the disorder rules).
    #[test]
    fn in_order_traffic_holds_nothing() {
        let mut e = Engine::new(Config::default(), Vec::new());
        let (c, s) = (1000u32, 5000u32);
        let mut t = 1;
        let mut feed =
            |e: &mut Engine, from_client: bool, flags: u8, seq: u32, ack: u32, p: &[u8]| {
                t += 1;
                e.on_segment(&seg(from_client, flags, seq, ack, p), &[], t);
            };
        feed(&mut e, true, 0x02, c, 0, b"");
        feed(&mut e, false, 0x12, s, c + 1, b"");
        feed(&mut e, true, 0x10, c + 1, s + 1, b"");
        let slot = e.core.table.live_in_creation_order()[0];
        let payload = [7u8; 10];
        for i in 0..200u32 {
            let (cs, ss) = (c + 1 + i * 10, s + 1 + i * 10);
            feed(&mut e, true, 0x18, cs, ss, &payload);
            assert!(!e.core.table.flow(slot).disorder, "client segment {i}");
            feed(&mut e, false, 0x18, ss, cs + 10, &payload);
            assert!(!e.core.table.flow(slot).disorder, "server segment {i}");
        }
        let f = e.core.table.flow(slot);
        assert_eq!((f.sides[0].contig(), f.sides[1].contig()), (2000, 2000));
    }
}
