//! Delivering events to monitors (SPEC §2.1, §2.2, §2.4): the monitor order of a packet,
//! per-flow subscription masks, the user events derived from an event whose filters accept
//! it, events raised from callbacks, the `ConnEnd` owed to a monitor that stopped watching a
//! flow, and batches: the events a monitor takes in batches are held in
//! [`Dispatch`](super::dispatch::Dispatch) and handed over in one
//! [`Monitor::on_batch`](super::Monitor::on_batch) call.
//!
//! Owns: the delivery methods of the engine (`emit`, `dispatch`, `call`, `deliver_batch`,
//! `after_callback`). The state they keep between callbacks is `dispatch.rs`'s; the
//! context a callback gets is `api.rs`'s. Must not: change TCP state or buffers; it only
//! decides who is called, in which order, and what they are told.

use super::api::{descendant_mask, Cx, Filter};
use super::dispatch::{Deferred, Held, Order, FILTER, HELD_MAX};
use super::engine::Engine;
use super::monitor::Monitor;
use super::table::FlowIdx;
use super::types::*;

impl Engine {
    /// The monitors' numbers in `order`.
    pub(crate) fn order_of(&self, order: Order) -> impl Iterator<Item = usize> {
        let n = self.monitors.len();
        (0..n).map(move |i| match order {
            Order::Load => i,
            Order::Reverse => n - 1 - i,
        })
    }

    /// Dispatches one event of a flow to every monitor subscribed to it for this flow.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn emit(
        &mut self,
        slot: FlowIdx,
        kind: EventKind,
        side: EventSide,
        hook: Hook,
        detail: Detail,
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        let bit = kind.bit(hook);
        if !self.core.dispatch.wanted(bit) {
            return;
        }
        let ev = Event {
            kind,
            side,
            hook,
            flow: self.core.table.handle(slot),
            detail,
        };
        self.dispatch(slot, &ev, order, pkt);
    }

    /// Delivers `ev` to the monitors watching it on this flow, then the user events
    /// derived from it whose filters accept it.
    pub(crate) fn dispatch(&mut self, slot: FlowIdx, ev: &Event, order: Order, pkt: Option<&[u8]>) {
        let bit = ev.kind.bit(ev.hook);
        let side_bit = match ev.side {
            EventSide::One(s) => 1u8 << s.index(),
            EventSide::Both => 0,
        };
        // Whatever is held for any monitor goes before a flow ends (a handle lives until
        // its ConnEnd): held events never outlive their flow.
        if ev.kind == EventKind::ConnEnd && self.core.dispatch.held_any {
            self.deliver_batches();
        }
        for m in self.order_of(order) {
            let s = &self.core.dispatch.subs[m];
            if s.batch & s.mask & bit != 0 {
                // Held without reading the flow's state for this monitor now (a cache miss
                // per packet on a big table): it is prefetched, and checked when the batch is
                // delivered (`deliver_batch`). That is the same check: only this monitor's own
                // callbacks change that state, and they all run after what is held before them.
                crate::sys::prefetch(
                    self.core.table.mon(slot, m),
                    std::mem::size_of::<super::table::MonFlow>(),
                );
                self.hold(m, slot, ev, pkt.is_some());
                continue;
            }
            let mf = self.core.table.mon(slot, m);
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
            if !self
                .core
                .dispatch
                .wanted(descendant_mask(&self.user_events, uk))
            {
                continue;
            }
            let fired = {
                let ue = &self.user_events[u];
                let mut cx = self.core.cx(FILTER, pkt, &self.user_events);
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

    /// Holds `ev` for monitor `m`'s batch, with what is known of its packet now.
    #[inline]
    fn hold(&mut self, m: usize, slot: FlowIdx, ev: &Event, packet_driven: bool) {
        let f = self.core.table.flow(slot);
        let info = if packet_driven {
            Deferred {
                ts: f.last.ts,
                offset: f.last.offset,
                payload_len: f.last.payload_len,
                flags: f.last.flags.0,
            }
        } else {
            Deferred {
                ts: self.core.now,
                offset: match ev.side {
                    EventSide::One(s) => f.sides[s.index()].contig(),
                    EventSide::Both => 0,
                },
                payload_len: 0,
                flags: 0,
            }
        };
        let d = &mut self.core.dispatch;
        if d.held.len() <= m {
            d.held.resize_with(m + 1, Vec::new);
        }
        d.held[m].push(Held { ev: *ev, info });
        d.held_any = true;
        if d.held[m].len() >= HELD_MAX {
            self.deliver_batch(m);
        }
    }

    /// Hands monitor `m` the events held for it, in order; after a callback that cut the
    /// batch, delivers what that callback queued, drops the held events that no longer apply
    /// (flow gone, monitor stopped or unsubscribed, buffer off for `NewData`) and goes on.
    pub(crate) fn deliver_batch(&mut self, m: usize) {
        if !self
            .core
            .dispatch
            .held
            .get(m)
            .is_some_and(|h| !h.is_empty())
        {
            return;
        }
        let mut held = std::mem::take(&mut self.core.dispatch.held[m]);
        // The subscription check `dispatch` left for now.
        held.retain(|h| self.still_wanted(m, &h.ev));
        let mut i = 0;
        while i < held.len() {
            self.core.dispatch.cut = false;
            let n = {
                let mut cx = self.core.cx(m, None, &self.user_events);
                self.monitors[m].on_batch(&mut cx, &held[i..])
            };
            let cut = std::mem::replace(&mut self.core.dispatch.cut, false);
            let n = if cut {
                n.clamp(1, held.len() - i)
            } else {
                held.len() - i
            };
            self.core.stats.events += n as u64;
            self.after_callback();
            i += n;
            if cut {
                let mut w = i;
                for r in i..held.len() {
                    if self.still_wanted(m, &held[r].ev) {
                        held[w] = held[r];
                        w += 1;
                    }
                }
                held.truncate(w);
            }
        }
        held.clear();
        // Anything held for `m` meanwhile comes after (kept in order, capacity reused).
        let fresh = std::mem::replace(&mut self.core.dispatch.held[m], held);
        self.core.dispatch.held[m].extend(fresh);
    }

    /// Whether a held event applies to monitor `m` (when its batch is delivered, and again
    /// after a callback cut it).
    fn still_wanted(&self, m: usize, ev: &Event) -> bool {
        let slot = FlowIdx::new(ev.flow.slot());
        if !self.core.table.is_live(slot, ev.flow.gen()) {
            return false;
        }
        let mf = self.core.table.mon(slot, m);
        let side_bit = match ev.side {
            EventSide::One(s) => 1u8 << s.index(),
            EventSide::Both => 0,
        };
        if mf.ended || mf.stopped & side_bit != 0 || mf.mask & ev.kind.bit(ev.hook) == 0 {
            return false;
        }
        match (ev.kind, ev.side) {
            (EventKind::NewData, EventSide::One(s)) => {
                let side = &self.core.table.flow(slot).sides[s.index()];
                side.capacity != 0 || side.buf.is_some()
            }
            _ => true,
        }
    }

    /// Hands every monitor its held events.
    pub(crate) fn deliver_batches(&mut self) {
        if !self.core.dispatch.held_any {
            return;
        }
        self.core.dispatch.held_any = false;
        for m in 0..self.monitors.len() {
            self.deliver_batch(m);
        }
    }

    /// The batch boundary: held events are delivered, then every monitor's
    /// [`Monitor::batch_done`](Monitor::batch_done).
    pub(crate) fn batch_boundary(&mut self) {
        self.deliver_batches();
        for m in 0..self.monitors.len() {
            let mut cx = self.core.cx(m, None, &self.user_events);
            self.monitors[m].batch_done(&mut cx);
        }
    }

    /// Runs `f` with monitor `m` and a context of it, outside any event (the plugin host
    /// installs and retires through it); `None` if there is no monitor `m`.
    pub fn with_monitor_cx<R>(
        &mut self,
        m: usize,
        f: impl FnOnce(&mut dyn Monitor, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let mon = self.monitors.get_mut(m)?;
        let mut cx = self.core.cx(m, None, &self.user_events);
        Some(f(mon.as_mut(), &mut cx))
    }

    /// Sets which of monitor `m`'s subscribed events are delivered in batches, for every
    /// flow (what is already held is delivered first).
    pub fn set_monitor_batch(&mut self, m: usize, mask: u64) {
        self.deliver_batch(m);
        if let Some(s) = self.core.dispatch.subs.get_mut(m) {
            s.set_batch_mask(mask);
        }
    }

    /// Calls monitor `m` with `ev`, then delivers what the callback asked for.
    pub(crate) fn call(&mut self, m: usize, ev: &Event, pkt: Option<&[u8]>) {
        if self
            .core
            .dispatch
            .held
            .get(m)
            .is_some_and(|h| !h.is_empty())
        {
            self.deliver_batch(m);
        }
        self.core.stats.events += 1;
        let mut cx = self.core.cx(m, pkt, &self.user_events);
        self.monitors[m].on_event(&mut cx, ev);
        self.after_callback();
    }

    /// Delivers what a callback asked for: raised user events and stop-monitoring ends.
    pub(crate) fn after_callback(&mut self) {
        // Raised events are delivered by the outermost callback's loop, not by nesting: a
        // monitor that raises an event from every delivery of it cannot exhaust the stack.
        if self.core.dispatch.delivering {
            return;
        }
        self.core.dispatch.delivering = true;
        self.deliver_queued();
        self.core.dispatch.delivering = false;
    }

    fn deliver_queued(&mut self) {
        while let Some(ev) = self.core.dispatch.raised.pop() {
            let slot = FlowIdx::new(ev.flow.slot());
            if self.core.table.is_live(slot, ev.flow.gen()) {
                self.dispatch(slot, &ev, Order::Load, None);
            }
        }
        while let Some((m, slot, gen)) = self.core.dispatch.stopped.pop() {
            if !self.core.table.is_live(slot, gen) {
                continue;
            }
            let handle = FlowHandle::flow(self.core.table.core(), slot.raw(), gen);
            let m = m as usize;
            self.deliver_batch(m);
            // The handle stays readable during its own ConnEnd.
            let mf = self.core.table.mon_mut(slot, m);
            let mask = mf.mask;
            mf.stopped = 0;
            mf.ended = true;
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
                    self.core.table.mon_mut(slot, m).ended = false;
                    let mut cx = self.core.cx(m, None, &self.user_events);
                    self.monitors[m].on_event(&mut cx, &ev);
                    self.core.table.mon_mut(slot, m).ended = true;
                }
            }
            self.core.table.mon_mut(slot, m).ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::config::Config;
    use crate::flow::monitor::Monitor;
    use crate::flow::testing::{seg, Log, Recorder};
    use crate::wire::TcpFlags;

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;

    fn engine(names: &[&'static str], log: &Log) -> Engine {
        let mons: Vec<Box<dyn Monitor>> = names
            .iter()
            .map(|n| Box::new(Recorder::new(n, log)) as Box<dyn Monitor>)
            .collect();
        Engine::new(Config::default(), mons)
    }

    /// The monitors that got `kind` at `hook`, in call order.
    fn who(log: &Log, kind: EventKind, hook: Hook) -> Vec<&'static str> {
        let v: Vec<_> = log
            .borrow()
            .iter()
            .filter(|(_, e)| e.kind == kind && e.hook == hook)
            .map(|(n, _)| *n)
            .collect();
        log.borrow_mut().clear();
        v
    }

    #[test]
    fn client_packets_go_in_load_order_server_packets_in_reverse() {
        let log = Log::default();
        let mut e = engine(&["a", "b", "c"], &log);
        e.on_segment(&seg(true, SYN, 100, 0, &[]), &[], 1);
        assert_eq!(who(&log, EventKind::PktIn, Hook::Snd), ["a", "b", "c"]);
        e.on_segment(&seg(false, SYN | ACK, 500, 101, &[]), &[], 2);
        assert_eq!(who(&log, EventKind::PktIn, Hook::Snd), ["c", "b", "a"]);
        // Events not driven by a packet (the end of the flow) go in load order.
        e.finish(EndReason::Eof);
        assert_eq!(
            who(&log, EventKind::ConnEnd, Hook::Rcv),
            ["a", "b", "c", "a", "b", "c"]
        );
    }

    #[test]
    fn sender_hook_then_receiver_hook_per_packet() {
        let log = Log::default();
        let mut e = engine(&["a"], &log);
        e.on_segment(&seg(true, SYN, 100, 0, &[]), &[], 1);
        let seen: Vec<(EventKind, Hook)> = log
            .borrow()
            .iter()
            .map(|(_, ev)| (ev.kind, ev.hook))
            .collect();
        use EventKind::*;
        assert_eq!(
            seen,
            [
                (PktIn, Hook::Snd),
                (ConnStart, Hook::Snd),
                (TcpStateChange, Hook::Snd),
                (PktIn, Hook::Rcv),
                (ConnStart, Hook::Rcv),
                (TcpStateChange, Hook::Rcv),
            ]
        );
    }

    fn on_syn(_: &mut Cx<'_>, ev: &Event, _: u64) -> bool {
        ev.hook == Hook::Rcv
    }

    #[test]
    fn user_event_follows_its_base_event_when_the_filter_says_so() {
        let log = Log::default();
        let mut e = engine(&["a", "b"], &log);
        let ue = e
            .define_event(EventKind::ConnStart, Some(on_syn), 0)
            .unwrap();
        e.subscribe(1, ue, Hook::None);
        e.on_segment(&seg(true, SYN, 100, 0, &[]), &[], 1);
        let kinds: Vec<(&str, EventKind)> = log
            .borrow()
            .iter()
            .filter(|(_, ev)| matches!(ev.kind, EventKind::ConnStart | EventKind::User(_)))
            .map(|(n, ev)| (*n, ev.kind))
            .collect();
        // Snd: filter says no. Rcv: the base event to everyone, then the derived one.
        use EventKind::ConnStart as CS;
        assert_eq!(
            kinds,
            [("a", CS), ("b", CS), ("a", CS), ("b", CS), ("b", ue)]
        );
    }

    #[test]
    fn raised_event_comes_right_after_the_callback() {
        let log = Log::default();
        let mut e = engine(&["a", "b"], &log);
        let ue = e.define_event(EventKind::PktIn, None, 0).unwrap();
        e.subscribe(1, ue, Hook::None);
        let mut first = Recorder::new("a", &log);
        first.then = Some(Box::new(move |cx: &mut Cx<'_>, ev: &Event| {
            if ev.kind == EventKind::PktIn && ev.hook == Hook::Snd {
                cx.raise(ev.flow, EventSide::Both, ue).unwrap();
            }
        }));
        e.monitors_mut()[0] = Box::new(first);
        e.on_segment(&seg(true, SYN, 100, 0, &[]), &[], 1);
        let order: Vec<(&str, EventKind, Hook)> = log
            .borrow()
            .iter()
            .take(3)
            .map(|(n, ev)| (*n, ev.kind, ev.hook))
            .collect();
        assert_eq!(
            order,
            [
                ("a", EventKind::PktIn, Hook::Snd),
                ("b", ue, Hook::None),
                ("b", EventKind::PktIn, Hook::Snd),
            ]
        );
    }
}
