//! The flow table of one engine: the slots, the hash index over them, the idle (LRU)
//! list and the TIME_WAIT list, and each slot's per-monitor state.
//!
//! Owns: creating and releasing flows, finding a flow by its key, which flow is least
//! recently active (idle expiry, eviction), the memory of slots and of freed receive
//! buffers ([`BufferPool`]). Slots are named by [`FlowIdx`]. Must not: run the TCP state
//! machine, store payload, emit events or read a clock (times are passed in); it updates
//! only the table's counters (flows created/live, buffer bytes).

use super::buffer::{BufferPool, OverlapPolicy, RecvBuffer};
use super::config::Config;
use super::holdback::Holdback;
use super::key::FlowKey;
use super::stats::Stats;
use super::tcp::SideState;
use super::types::{EndReason, FlowHandle, Side, TcpState};
use crate::sys::{huge_pages, prefetch};
use crate::wire::TcpFlags;

/// Flow slots from which [`super::Engine::prefetch_wanted`] says yes: 64k flows of state
/// are tens of MiB, past the caches; below, looking ahead would only cost time.
pub const PREFETCH_MIN_FLOWS: usize = 1 << 16;

/// Entries of the smallest flow index.
const MIN_INDEX: usize = 1024;

/// The number of a slot of the flow table. Zero cost: a `u32` with a name, so that a slot
/// is not mistaken for a generation, a monitor number or a count.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlowIdx(u32);

impl FlowIdx {
    /// No slot: the end of a list, or a core timer's slot.
    pub(crate) const NIL: FlowIdx = FlowIdx(u32::MAX);

    /// The slot a flow handle names (not checked: see the table's `resolve`).
    #[inline]
    pub(crate) const fn new(raw: u32) -> FlowIdx {
        FlowIdx(raw)
    }

    /// The slot number, as handles carry it.
    #[inline]
    pub(crate) const fn raw(self) -> u32 {
        self.0
    }

    /// The slot number as a vector index.
    #[inline]
    pub(crate) const fn get(self) -> usize {
        self.0 as usize
    }

    #[inline]
    pub(crate) const fn is_nil(self) -> bool {
        self.0 == u32::MAX
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

/// One tracked connection.
///
/// `repr(C)` keeps what every packet touches (key, generation, idle-list links, last
/// activity) in the first cache line; the sides follow.
#[repr(C, align(64))]
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    pub(crate) gen: u32,
    prev: FlowIdx,
    next: FlowIdx,
    pub(crate) live: bool,
    pub(crate) client_is_lo: bool,
    pub(crate) partial: bool,
    in_tw: bool,
    /// Something is held for this flow ([`super::disorder`]): the engine settles it after
    /// each packet. In the first cache line so that the in-order path tests one byte.
    pub(crate) disorder: bool,
    pub(crate) last_ts: u64,
    /// When the flow was last put at the back of the idle list (see [`FlowTable::touch`]).
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
            disorder: false,
            prev: FlowIdx::NIL,
            next: FlowIdx::NIL,
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

    /// When this flow's TIME_WAIT ends (meaningful in the TIME_WAIT list).
    #[inline]
    pub(crate) fn tw_deadline(&self) -> u64 {
        self.tw_deadline
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

/// The slots, their index and lists, and each slot's per-monitor state.
pub(crate) struct FlowTable {
    /// The core number stamped into handles.
    core: u8,
    /// The overlap policy new sides start with.
    overlap: OverlapPolicy,
    flows: Vec<Flow>,
    /// Per slot, per side: what the disorder rules hold for the stream it receives. Apart
    /// from `flows` (cold): only a flow flagged `disorder` reads it, and a `Flow` stays
    /// five cache lines.
    held: Vec<[Holdback; 2]>,
    /// `max_flows`: `flows` grows up to this, then slots are recycled.
    capacity: usize,
    index: Vec<u64>,
    index_mask: usize,
    free: Vec<FlowIdx>,
    lru_head: FlowIdx,
    lru_tail: FlowIdx,
    /// A flow touched less than this long after it was last moved to the back of the idle
    /// list stays where it is (`tcp_timeout / 1024`, see [`FlowTable::touch`]).
    touch_granularity: u64,
    tw_head: FlowIdx,
    tw_tail: FlowIdx,
    next_seqno: u64,
    /// Monitors: `mon_flows` has `nmon` entries per slot.
    nmon: usize,
    mon_flows: Vec<MonFlow>,
    /// Freed receive buffers, reused before allocating.
    pub(crate) pool: BufferPool,
}

impl FlowTable {
    /// An empty table for `nmon` monitors.
    pub(crate) fn new(cfg: &Config, nmon: usize) -> FlowTable {
        let cap = cfg.max_flows.max(1) as usize;
        // The index grows with the slots (at most half full), so a small working set keeps
        // a small, cache-resident index whatever `max_flows` allows.
        let index_len = (cap * 2).next_power_of_two().min(MIN_INDEX);
        // Slots are created on demand up to `max_flows` and then recycled, so a large
        // table costs nothing until it is used and nothing per packet after.
        FlowTable {
            core: cfg.core,
            overlap: cfg.overlap,
            flows: Vec::new(),
            held: Vec::new(),
            capacity: cap,
            index: vec![0; index_len],
            index_mask: index_len - 1,
            free: Vec::new(),
            lru_head: FlowIdx::NIL,
            lru_tail: FlowIdx::NIL,
            touch_granularity: cfg.tcp_timeout / 1024,
            tw_head: FlowIdx::NIL,
            tw_tail: FlowIdx::NIL,
            next_seqno: 0,
            nmon,
            mon_flows: Vec::new(),
            pool: BufferPool::new(cfg.buffer_memory),
        }
    }

    /// The core number stamped into this table's handles.
    #[inline]
    pub(crate) fn core(&self) -> u8 {
        self.core
    }

    /// Slots created so far (live or free).
    #[inline]
    pub(crate) fn slots(&self) -> usize {
        self.flows.len()
    }

    /// Monitors per slot.
    #[inline]
    pub(crate) fn nmon(&self) -> usize {
        self.nmon
    }

    #[inline]
    pub(crate) fn flow(&self, i: FlowIdx) -> &Flow {
        &self.flows[i.get()]
    }

    #[inline]
    pub(crate) fn flow_mut(&mut self, i: FlowIdx) -> &mut Flow {
        &mut self.flows[i.get()]
    }

    /// Starts loading what the disorder rules hold for slot `i`.
    #[inline]
    pub(crate) fn prefetch_held(&self, i: FlowIdx) {
        if let Some(h) = self.held.get(i.get()) {
            prefetch(h, std::mem::size_of_val(h));
        }
    }

    /// What the disorder rules hold for slot `i`, per side.
    #[inline]
    pub(crate) fn held(&self, i: FlowIdx) -> &[Holdback; 2] {
        &self.held[i.get()]
    }

    /// What the disorder rules hold for slot `i`, per side, to change.
    #[inline]
    pub(crate) fn held_mut(&mut self, i: FlowIdx) -> &mut [Holdback; 2] {
        &mut self.held[i.get()]
    }

    /// The flow in slot `i` and what the disorder rules hold for it.
    #[inline]
    pub(crate) fn flow_held(&self, i: FlowIdx) -> (&Flow, &[Holdback; 2]) {
        (&self.flows[i.get()], &self.held[i.get()])
    }

    /// The flow in slot `i` and what the disorder rules hold for it, to change.
    #[inline]
    pub(crate) fn flow_held_mut(&mut self, i: FlowIdx) -> (&mut Flow, &mut [Holdback; 2]) {
        (&mut self.flows[i.get()], &mut self.held[i.get()])
    }

    /// The slot `i`, if it was ever created.
    #[inline]
    pub(crate) fn get(&self, i: FlowIdx) -> Option<&Flow> {
        self.flows.get(i.get())
    }

    /// Monitor `m`'s state for slot `i`.
    #[inline]
    pub(crate) fn mon(&self, i: FlowIdx, m: usize) -> &MonFlow {
        &self.mon_flows[i.get() * self.nmon + m]
    }

    #[inline]
    pub(crate) fn mon_mut(&mut self, i: FlowIdx, m: usize) -> &mut MonFlow {
        &mut self.mon_flows[i.get() * self.nmon + m]
    }

    /// The flow in slot `i` and monitor `m`'s state for it, the latter to change.
    #[inline]
    pub(crate) fn flow_and_mon(&mut self, i: FlowIdx, m: usize) -> (&Flow, &mut MonFlow) {
        (
            &self.flows[i.get()],
            &mut self.mon_flows[i.get() * self.nmon + m],
        )
    }

    /// Monitor `m`'s state for slot `i`, `None` if there is no such entry.
    #[inline]
    pub(crate) fn mon_get(&self, i: FlowIdx, m: usize) -> Option<&MonFlow> {
        self.mon_flows.get(i.get() * self.nmon + m)
    }

    /// Whether slot `i` holds the live flow of generation `gen`.
    #[inline]
    pub(crate) fn is_live(&self, i: FlowIdx, gen: u32) -> bool {
        let f = &self.flows[i.get()];
        f.live && f.gen == gen
    }

    /// The handle of the flow in slot `i` (its current generation).
    #[inline]
    pub(crate) fn handle(&self, i: FlowIdx) -> FlowHandle {
        FlowHandle::flow(self.core, i.raw(), self.flows[i.get()].gen)
    }

    /// Starts loading the index entry of the flow with `hash` into the cache.
    #[inline]
    pub(crate) fn prefetch_index(&self, hash: u64) {
        prefetch(&self.index[hash as usize & self.index_mask], 8);
    }

    /// Starts loading the state (and per-monitor state) of the flow the index entry of
    /// `hash` points to, guessed by its tag alone.
    #[inline]
    pub(crate) fn prefetch_flow(&self, hash: u64) {
        let Some(slot) = self.slot_hint(hash) else {
            return;
        };
        if let Some(f) = self.flows.get(slot) {
            prefetch(f, std::mem::size_of::<Flow>());
        }
        let n = self.nmon;
        if let Some(m) = self.mon_flows.get(slot * n..slot * n + n) {
            prefetch(m, std::mem::size_of_val(m));
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

    /// The live flow with `key` (whose hash is `hash`).
    #[inline]
    pub(crate) fn lookup(&self, key: &FlowKey, hash: u64) -> Option<FlowIdx> {
        let tag = hash >> 32;
        let mut i = hash as usize & self.index_mask;
        loop {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if e >> 32 == tag {
                let slot = FlowIdx((e as u32) - 1);
                if self.flows[slot.get()].key == *key {
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
                self.index_insert(hash, FlowIdx(slot));
            }
        }
    }

    fn index_insert(&mut self, hash: u64, slot: FlowIdx) {
        let mut i = hash as usize & self.index_mask;
        while self.index[i] != 0 {
            i = (i + 1) & self.index_mask;
        }
        self.index[i] = ((hash >> 32) << 32) | u64::from(slot.0 + 1);
    }

    /// Linear-probing delete with backward shift: no tombstones, lookups stay short.
    fn index_remove(&mut self, hash: u64, slot: FlowIdx) {
        let mask = self.index_mask;
        let mut i = hash as usize & mask;
        while self.index[i] as u32 != slot.0 + 1 {
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

    /// Every slot is taken: a new flow needs a victim first ([`FlowTable::victim`]).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.free.is_empty() && self.flows.len() >= self.capacity
    }

    /// The flow to evict when the table is full: the least recently active one, or the
    /// oldest in TIME_WAIT when every flow is there.
    pub(crate) fn victim(&self) -> FlowIdx {
        let v = self.lru_victim();
        if v.is_nil() {
            self.tw_head
        } else {
            v
        }
    }

    /// Creates a flow at time `now` with receive-buffer capacities `caps` (client side,
    /// server side) and the monitors' subscription masks `masks` (one per monitor).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &mut self,
        key: FlowKey,
        hash: u64,
        client_is_lo: bool,
        partial: bool,
        now: u64,
        caps: [u32; 2],
        masks: impl Iterator<Item = u64>,
        stats: &mut Stats,
    ) -> FlowIdx {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let (flows_cap, mon_cap) = (self.flows.capacity(), self.mon_flows.capacity());
                let held_cap = self.held.capacity();
                self.flows.push(Flow::empty(self.overlap));
                self.held.push([Holdback::default(); 2]);
                if self.held.capacity() != held_cap {
                    huge_pages(&self.held);
                }
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
                FlowIdx(self.flows.len() as u32 - 1)
            }
        };
        let seqno = self.next_seqno;
        self.next_seqno += 1;
        let overlap = self.overlap;
        let f = &mut self.flows[slot.get()];
        f.key = key;
        f.live = true;
        f.client_is_lo = client_is_lo;
        f.partial = partial;
        f.in_tw = false;
        f.disorder = false;
        self.held[slot.get()] = [Holdback::default(); 2];
        let f = &mut self.flows[slot.get()];
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
                self.pool.recycle(b, stats.buffer_bytes);
            }
        }
        if partial {
            let f = &mut self.flows[slot.get()];
            for s in &mut f.sides {
                s.opened = true;
            }
        }
        let nmon = self.nmon;
        let row = &mut self.mon_flows[slot.get() * nmon..slot.get() * nmon + nmon];
        for (mf, mask) in row.iter_mut().zip(masks) {
            *mf = MonFlow {
                mask,
                ..MonFlow::default()
            };
        }
        self.index_insert(hash, slot);
        self.lru_push(slot);
        stats.flows_created += 1;
        stats.flows_partial += u64::from(partial);
        stats.flows_live += 1;
        slot
    }

    /// Frees slot `i` (already unlinked from its list): its handles go stale, its
    /// buffers go back to the pool.
    pub(crate) fn release(&mut self, slot: FlowIdx, stats: &mut Stats) {
        let hash = self.flows[slot.get()].key.hash();
        self.index_remove(hash, slot);
        let f = &mut self.flows[slot.get()];
        f.live = false;
        f.gen = f.gen.wrapping_add(1) & 0x3f_ffff;
        for s in &mut f.sides {
            if let Some(b) = s.buf.take() {
                self.pool.free(b, &mut stats.buffer_bytes);
            }
        }
        self.free.push(slot);
        stats.flows_live -= 1;
    }

    /// A receive buffer of `cap` bytes from the pool, within `buffer_memory`.
    #[inline]
    pub(crate) fn alloc_buffer(
        &mut self,
        cap: u32,
        head: u64,
        stats: &mut Stats,
    ) -> Option<Box<RecvBuffer>> {
        self.pool.alloc(cap, head, &mut stats.buffer_bytes)
    }

    /// Gives monitor number `nmon` (the new last one) its entry in every slot; flows
    /// already open do not get it (marked ended).
    pub(crate) fn add_monitor(&mut self) {
        let old = self.nmon;
        let new = old + 1;
        let mut mon_flows = vec![MonFlow::default(); self.flows.len() * new];
        for slot in 0..self.flows.len() {
            mon_flows[slot * new..slot * new + old]
                .copy_from_slice(&self.mon_flows[slot * old..slot * old + old]);
            // Flows already open do not get the new monitor.
            mon_flows[slot * new + old].ended = true;
        }
        self.mon_flows = mon_flows;
        self.nmon = new;
    }

    /// The live flows, in creation order.
    pub(crate) fn live_in_creation_order(&self) -> Vec<FlowIdx> {
        let mut live: Vec<(u64, FlowIdx)> = (0..self.flows.len() as u32)
            .filter(|&s| self.flows[s as usize].live)
            .map(|s| (self.flows[s as usize].seqno, FlowIdx(s)))
            .collect();
        live.sort_unstable();
        live.into_iter().map(|(_, s)| s).collect()
    }

    /// The front of the idle list (NIL if empty): the flow idle expiry looks at.
    #[inline]
    pub(crate) fn lru_head(&self) -> FlowIdx {
        self.lru_head
    }

    /// The front of the TIME_WAIT list (NIL if empty): the earliest deadline.
    #[inline]
    pub(crate) fn tw_head(&self) -> FlowIdx {
        self.tw_head
    }

    /// The least recently active flow of the idle list (NIL if empty). The list is in
    /// order of `linked_ts` (see [`FlowTable::touch`]), so only flows linked within the
    /// granularity of the head can be less recently active than it: the first few of those
    /// are compared.
    fn lru_victim(&self) -> FlowIdx {
        const LOOK: usize = 8;
        let head = self.lru_head;
        if head.is_nil() {
            return FlowIdx::NIL;
        }
        let horizon = self.flows[head.get()]
            .linked_ts
            .saturating_add(self.touch_granularity);
        let (mut best, mut best_ts) = (head, self.flows[head.get()].last_ts);
        let mut at = self.flows[head.get()].next;
        for _ in 1..LOOK {
            if at.is_nil() || self.flows[at.get()].linked_ts >= horizon {
                break;
            }
            let f = &self.flows[at.get()];
            if f.last_ts < best_ts {
                (best, best_ts) = (at, f.last_ts);
            }
            at = f.next;
        }
        best
    }

    fn lru_push(&mut self, slot: FlowIdx) {
        let tail = self.lru_tail;
        let f = &mut self.flows[slot.get()];
        f.linked_ts = f.last_ts;
        f.prev = tail;
        f.next = FlowIdx::NIL;
        if tail.is_nil() {
            self.lru_head = slot;
        } else {
            self.flows[tail.get()].next = slot;
        }
        self.lru_tail = slot;
    }

    /// Takes slot `i` off its list (idle or TIME_WAIT).
    pub(crate) fn unlink(&mut self, slot: FlowIdx) {
        let (prev, next, tw) = {
            let f = &self.flows[slot.get()];
            (f.prev, f.next, f.in_tw)
        };
        let (head, tail) = if tw {
            (&mut self.tw_head, &mut self.tw_tail)
        } else {
            (&mut self.lru_head, &mut self.lru_tail)
        };
        if prev.is_nil() {
            *head = next;
        } else {
            self.flows[prev.get()].next = next;
        }
        if next.is_nil() {
            *tail = prev;
        } else {
            self.flows[next.get()].prev = prev;
        }
        let f = &mut self.flows[slot.get()];
        f.prev = FlowIdx::NIL;
        f.next = FlowIdx::NIL;
    }

    /// Marks activity: the flow moves to the back of the idle list, unless it was moved
    /// there less than `touch_granularity` ago. Moving it touches its two neighbours in the
    /// list, two cache misses per packet with a large table; skipping keeps the list in
    /// order of `linked_ts`, with every `last_ts` in `[linked_ts, linked_ts + granularity)`:
    /// an idle timeout may be seen up to `tcp_timeout / 1024` late (30 ms of 30 s), and
    /// eviction picks a flow at most that much more recent than the least recent one.
    #[inline]
    pub(crate) fn touch(&mut self, slot: FlowIdx, ts: u64) {
        let granularity = self.touch_granularity;
        let f = &mut self.flows[slot.get()];
        f.last_ts = f.last_ts.max(ts);
        if f.in_tw || self.lru_tail == slot || f.last_ts < f.linked_ts.saturating_add(granularity) {
            return;
        }
        self.unlink(slot);
        self.lru_push(slot);
    }

    /// Moves the flow from the idle list to the back of the TIME_WAIT list, to be
    /// destroyed at `deadline`.
    pub(crate) fn enter_time_wait(&mut self, slot: FlowIdx, deadline: u64) {
        if self.flows[slot.get()].in_tw {
            return;
        }
        self.unlink(slot);
        let tail = self.tw_tail;
        let f = &mut self.flows[slot.get()];
        f.in_tw = true;
        f.tw_deadline = deadline;
        f.prev = tail;
        f.next = FlowIdx::NIL;
        if tail.is_nil() {
            self.tw_head = slot;
        } else {
            self.flows[tail.get()].next = slot;
        }
        self.tw_tail = slot;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flow::key::Addr;
    use std::net::Ipv4Addr;

    /// The key of client `n`'s connection to a server.
    pub(crate) fn key(n: u32) -> (FlowKey, u64) {
        let c = Addr::from_ip(Ipv4Addr::from(0x0a00_0000 | n).into());
        let s = Addr::from_ip(Ipv4Addr::new(192, 168, 0, 1).into());
        let (k, _) = FlowKey::new(c, 1024 + (n % 60000) as u16, s, 80);
        (k, k.hash())
    }

    fn table(max_flows: u32, nmon: usize) -> (FlowTable, Stats) {
        let cfg = Config {
            max_flows,
            // Granularity 1 ns: every touch moves the flow.
            tcp_timeout: 1024,
            ..Config::default()
        };
        (FlowTable::new(&cfg, nmon), Stats::default())
    }

    fn add(t: &mut FlowTable, st: &mut Stats, n: u32, now: u64) -> FlowIdx {
        let (k, h) = key(n);
        let masks = std::iter::repeat(0b101).take(t.nmon());
        t.create(k, h, true, false, now, [0, 0], masks, st)
    }

    /// The idle list, front to back.
    fn lru(t: &FlowTable) -> Vec<FlowIdx> {
        let mut out = Vec::new();
        let mut at = t.lru_head;
        while !at.is_nil() {
            out.push(at);
            at = t.flow(at).next;
        }
        out
    }

    #[test]
    fn flow_idx_is_a_bare_u32() {
        assert_eq!(std::mem::size_of::<FlowIdx>(), 4);
        assert_eq!(std::mem::size_of::<Option<FlowIdx>>(), 8);
        assert!(FlowIdx::NIL.is_nil() && !FlowIdx::new(0).is_nil());
    }

    #[test]
    fn insert_lookup_release_reuse() {
        let (mut t, mut st) = table(100, 2);
        let a = add(&mut t, &mut st, 1, 10);
        let b = add(&mut t, &mut st, 2, 11);
        assert_ne!(a, b);
        let (ka, ha) = key(1);
        assert_eq!(t.lookup(&ka, ha), Some(a));
        assert_eq!(t.lookup(&key(2).0, key(2).1), Some(b));
        assert_eq!(t.lookup(&key(3).0, key(3).1), None);
        assert_eq!(t.mon(a, 1).mask, 0b101);
        assert_eq!((st.flows_created, st.flows_live), (2, 2));
        let gen = t.flow(a).gen;
        assert!(t.is_live(a, gen));
        t.unlink(a);
        t.release(a, &mut st);
        assert!(!t.is_live(a, gen), "the generation moved on");
        assert_eq!(t.lookup(&ka, ha), None);
        assert_eq!(st.flows_live, 1);
        // The freed slot is reused, with a new generation.
        let c = add(&mut t, &mut st, 3, 12);
        assert_eq!(c, a);
        assert_eq!(t.flow(c).gen, gen + 1);
        assert_eq!(t.flow(c).seqno, 2);
        assert_eq!(t.lookup(&key(3).0, key(3).1), Some(c));
    }

    #[test]
    fn index_grows_and_deletes_keep_every_other_flow_findable() {
        let (mut t, mut st) = table(5000, 1);
        let n = 3000;
        let slots: Vec<FlowIdx> = (0..n).map(|i| add(&mut t, &mut st, i, 0)).collect();
        assert!(t.index.len() >= 2 * n as usize);
        for i in (0..n).step_by(3) {
            t.unlink(slots[i as usize]);
            t.release(slots[i as usize], &mut st);
        }
        for i in 0..n {
            let (k, h) = key(i);
            let want = (i % 3 != 0).then_some(slots[i as usize]);
            assert_eq!(t.lookup(&k, h), want, "flow {i}");
        }
    }

    #[test]
    fn lru_order_follows_activity_and_picks_the_victim() {
        let (mut t, mut st) = table(3, 1);
        let a = add(&mut t, &mut st, 1, 0);
        let b = add(&mut t, &mut st, 2, 1);
        let c = add(&mut t, &mut st, 3, 2);
        assert_eq!(lru(&t), [a, b, c]);
        assert!(t.is_full());
        assert_eq!(t.victim(), a);
        t.touch(a, 10);
        assert_eq!(lru(&t), [b, c, a]);
        assert_eq!(t.victim(), b);
        t.touch(c, 11);
        assert_eq!(lru(&t), [b, a, c]);
        t.unlink(b);
        t.release(b, &mut st);
        assert!(!t.is_full());
        assert_eq!((t.lru_head(), t.victim()), (a, a));
    }

    #[test]
    fn touches_within_the_granularity_do_not_move_a_flow() {
        let cfg = Config {
            tcp_timeout: 1024 * 100,
            ..Config::default()
        };
        let (mut t, mut st) = (FlowTable::new(&cfg, 0), Stats::default());
        let a = add(&mut t, &mut st, 1, 0);
        let b = add(&mut t, &mut st, 2, 0);
        t.touch(a, 99);
        assert_eq!(lru(&t), [a, b], "99 ns < the 100 ns granularity");
        assert_eq!(t.flow(a).last_ts, 99);
        // The victim is still the least recently active flow of the head's granularity.
        assert_eq!(t.victim(), b);
        t.touch(a, 100);
        assert_eq!(lru(&t), [b, a]);
    }

    #[test]
    fn time_wait_list_is_apart_from_the_idle_list() {
        let (mut t, mut st) = table(2, 1);
        let a = add(&mut t, &mut st, 1, 0);
        let b = add(&mut t, &mut st, 2, 1);
        t.enter_time_wait(a, 500);
        assert_eq!(lru(&t), [b]);
        assert_eq!((t.tw_head(), t.flow(a).tw_deadline()), (a, 500));
        // Entering twice changes nothing; touching a TIME_WAIT flow does not revive it.
        t.enter_time_wait(a, 900);
        t.touch(a, 50);
        assert_eq!((lru(&t), t.flow(a).tw_deadline()), (vec![b], 500));
        t.enter_time_wait(b, 600);
        assert!(t.lru_head().is_nil());
        // Every flow in TIME_WAIT: the oldest one is the victim.
        assert_eq!(t.victim(), a);
        t.unlink(a);
        assert_eq!(t.tw_head(), b);
        t.unlink(b);
        assert!(t.tw_head().is_nil());
    }

    #[test]
    fn new_monitor_skips_open_flows() {
        let (mut t, mut st) = table(10, 1);
        let a = add(&mut t, &mut st, 1, 0);
        t.mon_mut(a, 0).user = 7;
        t.add_monitor();
        assert_eq!(t.nmon(), 2);
        assert_eq!(t.mon(a, 0).user, 7);
        assert!(t.mon(a, 1).ended);
        let b = add(&mut t, &mut st, 2, 0);
        assert!(!t.mon(b, 1).ended);
        assert_eq!(t.live_in_creation_order(), [a, b]);
    }
}

#[cfg(test)]
mod flow_size {
    /// A `Flow` is five cache lines: what the in-order path reads and prefetches per packet
    /// (the disorder state lives apart, in `FlowTable::held`).
    #[test]
    fn a_flow_is_five_cache_lines() {
        assert_eq!(std::mem::size_of::<super::Flow>(), 320);
    }
}
