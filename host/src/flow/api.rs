//! The read API a monitor uses from inside a callback (SPEC §4): `ppeek`, `peek`, buffer
//! and flow information, and the setters. Errors map one-to-one to mOS's errno values.
//!
//! Owns: [`Cx`], which borrows the engine's parts it needs (the flow table, the dispatch
//! state, the timers, the counters) for one callback, and checks every handle it is given.
//! Must not: deliver events or change TCP state; what a callback asks for (raised events,
//! stops, timers) is queued for the engine to do after it.

use std::fmt;
use std::net::SocketAddr;

use super::buffer::OverlapPolicy;
use super::dispatch::{Deferred, Dispatch, FILTER};
use super::stats::Stats;
use super::table::{FlowIdx, FlowTable, LastPacket};
use super::tcp::SideState;
use super::timers::Timers;
use super::types::*;

/// Why a read or setter failed: each maps to one errno value (SPEC §4); the ABI's type.
pub use flowpeek_plugin_api::codes::Errno;

/// Why `peek` returned no bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekError {
    /// One of the errors `ppeek` has.
    Errno(Errno),
    /// `n` bytes after the cursor were discarded (or never seen: a skipped gap) before it
    /// read them; the cursor moved to the oldest stored byte. A C caller sees `-n`/`ENODATA`.
    Lost(u64),
}

impl From<Errno> for PeekError {
    fn from(e: Errno) -> PeekError {
        PeekError::Errno(e)
    }
}

impl fmt::Display for PeekError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeekError::Errno(e) => e.fmt(f),
            PeekError::Lost(n) => write!(f, "{n} bytes lost before they were read"),
        }
    }
}

impl std::error::Error for PeekError {}

/// Positions in a side's stream (SPEC §4 buffer info), as 64-bit offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// Sequence number of offset 0 (ISN + 1 of the direction).
    pub seq_base: u32,
    /// The oldest offset still stored (the window's head).
    pub head: u64,
    /// The caller's `peek` cursor.
    pub cursor: u64,
    /// End of the contiguous data.
    pub contig_end: u64,
    /// End of the last stored fragment.
    pub last_end: u64,
    /// Buffer capacity (0: disabled).
    pub capacity: u32,
    /// Bytes skipped over gaps never filled.
    pub missing: u64,
    /// Bytes received more than once (retransmitted or overlapping).
    pub overlap: u64,
}

/// Timestamps of a flow (ns) and its place in creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimes {
    /// First packet.
    pub start: u64,
    /// Latest packet.
    pub last: u64,
    /// Creation order on this core (0 for the first flow).
    pub serial: u64,
}

/// A filter implemented outside this crate (called with the context, the base event, `arg`).
pub type ForeignFilter = dyn Fn(&mut Cx<'_>, &Event, u64) -> bool;

/// A filter of a user-defined event: runs when the base event fires; `true` raises it.
pub type UserFilter = fn(&mut Cx<'_>, &Event, u64) -> bool;

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

/// Defines (or finds: same base, filter and arg) a user event in `events`.
pub(crate) fn define_user_event(
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

/// The subscription bits of `kind` and of every user event derived from it, transitively.
pub(crate) fn descendant_mask(events: &[UserEvent], kind: EventKind) -> u64 {
    let mut mask = kind.bit(Hook::None);
    for (i, u) in events.iter().enumerate() {
        if u.base == kind {
            mask |= descendant_mask(events, EventKind::User(UserEventId(i as u8)));
        }
    }
    mask
}

/// A monitor's view of the engine during one callback.
pub struct Cx<'a> {
    table: &'a mut FlowTable,
    dispatch: &'a mut Dispatch,
    timers: &'a mut Timers,
    stats: &'a mut Stats,
    now: u64,
    monitor: usize,
    packet: Option<&'a [u8]>,
    user_events: &'a [UserEvent],
    /// The held event being delivered from a batch, if any.
    deferred: Option<Deferred>,
}

impl<'a> Cx<'a> {
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn new(
        table: &'a mut FlowTable,
        dispatch: &'a mut Dispatch,
        timers: &'a mut Timers,
        stats: &'a mut Stats,
        now: u64,
        monitor: usize,
        packet: Option<&'a [u8]>,
        user_events: &'a [UserEvent],
    ) -> Cx<'a> {
        Cx {
            table,
            dispatch,
            timers,
            stats,
            now,
            monitor,
            packet,
            user_events,
            deferred: None,
        }
    }

    /// For an event delivered from a batch (SPEC §2.4): what the engine knew of its packet
    /// when it happened. `None` for an event delivered as it happens.
    pub fn deferred(&self) -> Option<Deferred> {
        self.deferred
    }

    /// Marks the event being delivered from a batch (the engine and the plugin host).
    pub fn set_deferred(&mut self, d: Option<Deferred>) {
        self.deferred = d;
    }

    /// Whether this callback changed what comes next (stopped monitoring, changed a
    /// subscription or a buffer, raised an event): a batch is cut after it (SPEC §2.4).
    pub fn cut(&self) -> bool {
        self.dispatch.cut
    }

    /// Sets which of this monitor's subscribed events are delivered in batches from now on
    /// (the plugin host, when its generations change).
    pub(crate) fn set_batch_mask(&mut self, mask: u64) {
        if let Some(s) = self.dispatch.subs.get_mut(self.monitor) {
            s.set_batch_mask(mask);
        }
    }

    /// The live flows whose host tag for this monitor satisfies `f` (the plugin host's drain:
    /// rare, so a walk of the table).
    pub(crate) fn flows_tagged(&self, f: impl Fn(u32) -> bool) -> Vec<FlowHandle> {
        self.table
            .live_in_creation_order()
            .into_iter()
            .filter(|&slot| {
                self.table
                    .mon_get(slot, self.monitor)
                    .is_some_and(|m| f(m.host))
            })
            .map(|slot| self.table.handle(slot))
            .collect()
    }

    /// The engine's clock (ns): capture time offline, arrival time live.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// This engine's core number.
    pub fn core_id(&self) -> u8 {
        self.table.core()
    }

    /// The live flow a handle names, checking core and generation.
    fn resolve(&self, h: FlowHandle) -> Result<FlowIdx, Errno> {
        if h.core() != self.table.core() {
            return Err(Errno::Acces);
        }
        if !h.is_flow() {
            return Err(Errno::SocktNoSupport);
        }
        let slot = FlowIdx::new(h.slot());
        match self.table.get(slot) {
            Some(f) if f.live && (f.gen & 0x3f_ffff) == h.gen() => Ok(slot),
            _ => Err(Errno::Badf),
        }
    }

    /// The flow a handle names, if this monitor may read it.
    fn flow(&self, h: FlowHandle) -> Result<FlowIdx, Errno> {
        let slot = self.resolve(h)?;
        if self.monitor != FILTER {
            let mf = self.table.mon(slot, self.monitor);
            if mf.ended || mf.stopped == 0b11 {
                return Err(Errno::Perm);
            }
        }
        Ok(slot)
    }

    fn side_state(&self, h: FlowHandle, side: Side) -> Result<(FlowIdx, &SideState), Errno> {
        let slot = self.flow(h)?;
        Ok((slot, &self.table.flow(slot).sides[side.index()]))
    }

    /// Copies stored bytes of `side` from offset `off` into `buf` (mOS `mtcp_ppeek`): up to
    /// the end of the fragment holding `off`, so fewer at a gap. Moves no cursor.
    pub fn ppeek(
        &self,
        h: FlowHandle,
        side: Side,
        buf: &mut [u8],
        off: u64,
    ) -> Result<usize, Errno> {
        let (_, s) = self.side_state(h, side)?;
        if s.capacity == 0 && s.buf.is_none() {
            return Err(Errno::Inval);
        }
        if !s.opened {
            return Err(Errno::NotConn);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        s.read.set(true);
        s.buf
            .as_ref()
            .and_then(|b| b.read(off, buf))
            .ok_or(Errno::NoData)
    }

    /// Lends the stored bytes `[off, off + len)` of `side` as at most two slices, without
    /// copying; the range is cut at the end of the fragment holding `off`.
    pub fn ppeek_slices(
        &self,
        h: FlowHandle,
        side: Side,
        off: u64,
        len: usize,
    ) -> Result<(&[u8], &[u8]), Errno> {
        let (_, s) = self.side_state(h, side)?;
        if s.capacity == 0 && s.buf.is_none() {
            return Err(Errno::Inval);
        }
        if !s.opened {
            return Err(Errno::NotConn);
        }
        s.read.set(true);
        let b = s.buf.as_ref().ok_or(Errno::NoData)?;
        let (start, flen) = b
            .fragments()
            .find(|&(st, l)| st <= off && off < st + l)
            .ok_or(Errno::NoData)?;
        let n = ((start + flen - off) as usize).min(len);
        Ok(b.slices(off, n))
    }

    /// Reads in-order bytes of `side` from this monitor's cursor (mOS `mtcp_peek`) and
    /// advances it. `Ok(0)`: nothing new. `Err(Lost(n))`: `n` bytes went before they were
    /// read; the cursor moved on and the next call reads what follows.
    pub fn peek(&mut self, h: FlowHandle, side: Side, buf: &mut [u8]) -> Result<usize, PeekError> {
        let (x, y) = self.read(h, side, buf.len())?;
        let n = x.len() + y.len();
        buf[..x.len()].copy_from_slice(x);
        buf[x.len()..n].copy_from_slice(y);
        Ok(n)
    }

    /// The consuming read without a copy: lends up to `max` in-order bytes of `side` from
    /// this monitor's cursor as at most two slices (the buffer is a ring), valid for the rest
    /// of the callback, and moves the cursor past them. Two empty slices: nothing new.
    /// `Err(Lost(n))`: as [`peek`](Self::peek).
    pub fn read(
        &mut self,
        h: FlowHandle,
        side: Side,
        max: usize,
    ) -> Result<(&[u8], &[u8]), PeekError> {
        if self.monitor == FILTER {
            return Err(Errno::Acces.into());
        }
        let slot = self.flow(h)?;
        let (f, mf) = self.table.flow_and_mon(slot, self.monitor);
        let s = &f.sides[side.index()];
        if s.capacity == 0 && s.buf.is_none() {
            return Err(Errno::Inval.into());
        }
        if !s.opened {
            return Err(Errno::NotConn.into());
        }
        s.read.set(true);
        let cursor_slot = &mut mf.cursor[side.index()];
        let cursor = *cursor_slot;
        let Some(b) = s.buf.as_ref() else {
            return Ok((&[], &[]));
        };
        if cursor < b.head() {
            *cursor_slot = b.head();
            return Err(PeekError::Lost(b.head() - cursor));
        }
        let n = match b.readable_at(cursor) {
            Err(gap) => {
                *cursor_slot = cursor + gap;
                return Err(PeekError::Lost(gap));
            }
            Ok(avail) => usize::try_from(avail).unwrap_or(usize::MAX).min(max),
        };
        if n == 0 {
            return Ok((&[], &[]));
        }
        *cursor_slot = cursor + n as u64;
        let b = self.table.flow(slot).sides[side.index()]
            .buf
            .as_ref()
            .ok_or(Errno::NoData)?;
        Ok(b.slices(cursor, n))
    }

    /// The stored fragments of `side` as `(offset, len)`, in offset order.
    pub fn fragments(
        &self,
        h: FlowHandle,
        side: Side,
    ) -> Result<impl Iterator<Item = (u64, u64)> + '_, Errno> {
        let (_, s) = self.side_state(h, side)?;
        if s.capacity == 0 && s.buf.is_none() {
            return Err(Errno::Inval);
        }
        s.read.set(true);
        Ok(s.buf.iter().flat_map(|b| b.fragments()))
    }

    /// Positions in `side`'s stream.
    pub fn buffer_info(&self, h: FlowHandle, side: Side) -> Result<BufferInfo, Errno> {
        let (slot, s) = self.side_state(h, side)?;
        s.read.set(true);
        let cursor = if self.monitor == FILTER {
            0
        } else {
            self.table.mon(slot, self.monitor).cursor[side.index()]
        };
        let (head, last_end) = match &s.buf {
            Some(b) => (b.head(), b.last_end()),
            None => (s.rx_next, s.rx_next),
        };
        Ok(BufferInfo {
            seq_base: s.rx_base,
            head,
            cursor,
            contig_end: s.contig(),
            last_end,
            capacity: s.capacity,
            missing: s.missing,
            overlap: s.overlap_bytes,
        })
    }

    /// The emulated TCP state of `side`.
    pub fn tcp_state(&self, h: FlowHandle, side: Side) -> Result<TcpState, Errno> {
        Ok(self.side_state(h, side)?.1.state)
    }

    /// The client's and the server's addresses. For an `Orphan`, the packet's source and
    /// destination.
    pub fn addresses(&self, h: FlowHandle) -> Result<(SocketAddr, SocketAddr), Errno> {
        if !h.is_flow() && h.core() == self.table.core() {
            return self.dispatch.orphan_addrs.ok_or(Errno::Badf);
        }
        let f = self.table.flow(self.flow(h)?);
        Ok((
            f.key.endpoint(f.client_is_lo),
            f.key.endpoint(!f.client_is_lo),
        ))
    }

    /// Whether the flow was picked up mid-stream (its SYN was not seen).
    pub fn is_partial(&self, h: FlowHandle) -> Result<bool, Errno> {
        Ok(self.table.flow(self.flow(h)?).partial)
    }

    /// The flow's first and latest packet times.
    pub fn flow_times(&self, h: FlowHandle) -> Result<FlowTimes, Errno> {
        let f = self.table.flow(self.flow(h)?);
        Ok(FlowTimes {
            start: f.start_ts,
            last: f.last_ts,
            serial: f.seqno,
        })
    }

    /// Why the flow ended (inside `ConnEnd` callbacks), or `None` while it is open.
    pub fn end_reason(&self, h: FlowHandle) -> Result<Option<EndReason>, Errno> {
        let f = self.table.flow(self.flow(h)?);
        Ok(if f.sides.iter().any(|s| s.destroyed) {
            f.end_reason
        } else {
            None
        })
    }

    /// Metadata of the flow's last packet (for an `Orphan` handle: the orphan packet).
    pub fn last_packet(&self, h: FlowHandle) -> Result<LastPacket, Errno> {
        if !h.is_flow() && h.core() == self.table.core() {
            return Ok(self.dispatch.orphan);
        }
        let f = self.table.flow(self.flow(h)?);
        if f.last.sender.is_none() {
            return Err(Errno::NoData);
        }
        Ok(f.last)
    }

    /// The raw frame of the packet being processed, during packet-driven callbacks.
    pub fn packet_frame(&self) -> Option<&[u8]> {
        self.packet
    }

    /// Sets the receive-buffer capacity of `side` for this flow. 0 disables it: bytes are
    /// freed at once, `NewData` and data `Rexmit` stop; state tracking goes on. Stored
    /// bytes that still fit are kept when resizing.
    pub fn set_buffer_capacity(
        &mut self,
        h: FlowHandle,
        side: Side,
        capacity: u32,
    ) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        self.dispatch.cut = true;
        let s = &mut self.table.flow_mut(slot).sides[side.index()];
        s.capacity = capacity;
        let Some(old) = s.buf.take() else {
            return Ok(());
        };
        self.stats.buffer_bytes -= old.storage() as u64;
        if capacity == 0 {
            s.rx_next = old.contig_end();
            return Ok(());
        }
        let contig = old.contig_end();
        let head = old
            .head()
            .max(old.last_end().saturating_sub(u64::from(capacity)))
            .min(contig);
        let Some(mut new) = self.table.alloc_buffer(capacity, head, self.stats) else {
            let s = &mut self.table.flow_mut(slot).sides[side.index()];
            s.capacity = 0;
            s.rx_next = contig;
            return Err(Errno::NoSpc);
        };
        let mut tmp = [0u8; 4096];
        for (start, len) in old.fragments() {
            let mut off = start.max(head);
            let end = (start + len).min(head + u64::from(capacity));
            while off < end {
                let n = ((end - off) as usize).min(tmp.len());
                let got = old.read(off, &mut tmp[..n]).unwrap_or(0);
                if got == 0 {
                    break;
                }
                let room = self.table.pool.room(self.stats.buffer_bytes);
                let out = new.write(off, &tmp[..got], OverlapPolicy::First, room);
                self.table
                    .pool
                    .charge(out.grown, &mut self.stats.buffer_bytes);
                off += got as u64;
            }
        }
        self.table.flow_mut(slot).sides[side.index()].buf = Some(new);
        Ok(())
    }

    /// Sets which copy wins when segments of `side` overlap.
    pub fn set_overlap_policy(
        &mut self,
        h: FlowHandle,
        side: Side,
        policy: OverlapPolicy,
    ) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        self.table.flow_mut(slot).sides[side.index()].overlap = policy;
        Ok(())
    }

    /// Stops this monitor watching one side (its events stop), or both: the monitor then
    /// gets its `ConnEnd` (reason `Stopped`) right after this callback and nothing more.
    pub fn stop_monitoring(&mut self, h: FlowHandle, side: EventSide) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        self.dispatch.cut = true;
        let mf = self.table.mon_mut(slot, self.monitor);
        mf.stopped |= match side {
            EventSide::One(s) => 1 << s.index(),
            EventSide::Both => 0b11,
        };
        if mf.stopped == 0b11 {
            self.dispatch
                .stopped
                .push((self.monitor as u32, slot, h.gen()));
        }
        Ok(())
    }

    /// The plugin host's private tag for (this monitor, flow).
    pub(crate) fn host_tag(&self, h: FlowHandle) -> Result<u32, Errno> {
        let slot = self.resolve(h)?;
        Ok(self.table.mon(slot, self.monitor).host)
    }

    /// The host tag of the flow an event of this engine names (no handle checks: the
    /// engine made the handle and the flow is live during its events).
    #[inline]
    pub(crate) fn event_host_tag(&self, ev: &Event) -> u32 {
        let slot = FlowIdx::new(ev.flow.slot());
        self.table.mon_get(slot, self.monitor).map_or(0, |m| m.host)
    }

    pub(crate) fn set_host_tag(&mut self, h: FlowHandle, tag: u32) -> Result<(), Errno> {
        let slot = self.resolve(h)?;
        self.table.mon_mut(slot, self.monitor).host = tag;
        Ok(())
    }

    /// This monitor's value for the flow (0 until set).
    pub fn user_value(&self, h: FlowHandle) -> Result<u64, Errno> {
        let slot = self.flow(h)?;
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        Ok(self.table.mon(slot, self.monitor).user)
    }

    /// Sets this monitor's value for the flow.
    pub fn set_user_value(&mut self, h: FlowHandle, value: u64) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        self.table.mon_mut(slot, self.monitor).user = value;
        Ok(())
    }

    /// Subscribes this monitor to `(event, hook)` for this flow only.
    pub fn subscribe(&mut self, h: FlowHandle, event: EventKind, hook: Hook) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        self.table.mon_mut(slot, self.monitor).mask |= event.bit(hook);
        self.dispatch.any_mask |= event.bit(hook);
        self.dispatch.cut = true;
        Ok(())
    }

    /// Unsubscribes this monitor from `(event, hook)` for this flow only.
    pub fn unsubscribe(
        &mut self,
        h: FlowHandle,
        event: EventKind,
        hook: Hook,
    ) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        self.table.mon_mut(slot, self.monitor).mask &= !event.bit(hook);
        self.dispatch.cut = true;
        Ok(())
    }

    /// A one-shot timer for this flow: `on_timer(flow, tag)` runs `after` ns from now (at
    /// the end of the batch it falls due in), unless the flow ended first.
    pub fn set_timer(&mut self, h: FlowHandle, after: u64, tag: u64) -> Result<(), Errno> {
        let slot = self.flow(h)?;
        self.push_timer(slot, h.gen(), after, tag)
    }

    /// A one-shot timer for this core: `on_timer(None, tag)` runs `after` ns from now.
    pub fn set_core_timer(&mut self, after: u64, tag: u64) -> Result<(), Errno> {
        self.push_timer(FlowIdx::NIL, 0, after, tag)
    }

    fn push_timer(&mut self, slot: FlowIdx, gen: u32, after: u64, tag: u64) -> Result<(), Errno> {
        if self.monitor == FILTER {
            return Err(Errno::Acces);
        }
        let deadline = self.now.saturating_add(after);
        self.timers
            .push(deadline, self.monitor as u32, slot, gen, tag);
        Ok(())
    }

    /// Raises the filterless user event `event` for the flow; it is delivered right after
    /// the current callback.
    pub fn raise(&mut self, h: FlowHandle, side: EventSide, event: EventKind) -> Result<(), Errno> {
        self.flow(h)?;
        let EventKind::User(id) = event else {
            return Err(Errno::Inval);
        };
        match self.user_events.get(usize::from(id.0)) {
            Some(u) if u.filter.is_none() => {}
            _ => return Err(Errno::Inval),
        }
        self.dispatch.cut = true;
        self.dispatch.raised.push(Event {
            kind: event,
            side,
            hook: Hook::None,
            flow: h,
            detail: Detail::None,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_syn(_: &mut Cx<'_>, ev: &Event, _: u64) -> bool {
        ev.hook == Hook::Rcv
    }

    #[test]
    fn user_events_are_deduplicated_and_bounded() {
        let mut events = Vec::new();
        let a = define_user_event(
            &mut events,
            EventKind::NewData,
            Some(Filter::Native(on_syn)),
            1,
        );
        let b = define_user_event(
            &mut events,
            EventKind::NewData,
            Some(Filter::Native(on_syn)),
            1,
        );
        assert_eq!(a, b);
        let c = define_user_event(
            &mut events,
            EventKind::NewData,
            Some(Filter::Native(on_syn)),
            2,
        );
        assert_ne!(a, c);
        assert_eq!(
            define_user_event(&mut events, EventKind::User(UserEventId(9)), None, 0),
            Err(Errno::Inval),
            "a parent that does not exist"
        );
        let child = define_user_event(&mut events, a.unwrap(), None, 0).unwrap();
        let mask = descendant_mask(&events, EventKind::NewData);
        assert_ne!(mask & child.bit(Hook::None), 0, "grandchildren count");
        assert_eq!(mask & EventKind::Timeout.bit(Hook::None), 0);
        while events.len() < MAX_USER_EVENTS {
            let n = events.len() as u64;
            define_user_event(&mut events, EventKind::Timeout, None, n).unwrap();
        }
        assert_eq!(
            define_user_event(&mut events, EventKind::Timeout, None, 999),
            Err(Errno::NoSpc)
        );
    }
}
