//! How flows end: the monitors' timers that are due, idle and TIME_WAIT expiry, and the
//! destruction of a flow with its `ConnEnd` events, after which a tombstone remembers it
//! (so that its late packets count as late, not as a new connection).
//!
//! Owns: `run_timers`, `expire`, `destroy`, `bury` of [`Engine`]. Must not: choose when a
//! flow is idle (`Config::tcp_timeout`) or what a tombstone matches (`tombstone.rs`).

use super::dispatch::Order;
use super::engine::Engine;
use super::table::FlowIdx;
use super::timers;
use super::tombstone::Space;
use super::types::*;

impl Engine {
    pub(crate) fn run_timers(&mut self) {
        // Timers set by the callbacks of this pass fire on the next pass at the earliest.
        let mark = self.core.timers.mark();
        while let Some(t) = self.core.timers.pop_due(self.core.now, mark) {
            let m = t.monitor as usize;
            if m >= self.monitors.len() {
                continue;
            }
            let flow = if t.slot.is_nil() {
                None
            } else if self.core.table.is_live(t.slot, t.gen) {
                if self.core.table.mon(t.slot, m).ended {
                    continue;
                }
                Some(FlowHandle::flow(
                    self.core.table.core(),
                    t.slot.raw(),
                    t.gen,
                ))
            } else {
                continue;
            };
            let mut cx = self.core.cx(m, None, &self.user_events);
            self.monitors[m].on_timer(&mut cx, flow, t.tag);
            self.after_callback();
        }
    }

    pub(crate) fn expire(&mut self) {
        let now = self.core.now;
        while let Some(slot) = timers::due_time_wait(&self.core.table, now) {
            self.destroy(slot, EndReason::Fin, None);
        }
        let timeout = self.core.cfg.tcp_timeout;
        while let Some(slot) = timers::due_idle(&self.core.table, now, timeout) {
            self.core.stats.flows_timed_out += 1;
            let gen = self.core.table.flow(slot).gen;
            for side in Side::BOTH {
                if self.core.table.is_live(slot, gen) {
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
            if self.core.table.is_live(slot, gen) {
                self.destroy(slot, EndReason::Timeout, None);
            }
        }
    }

    /// Destroys a flow: delivers its pending data, then per side (`first`, then the other;
    /// client first when `None`) `TcpStateChange(CLOSED)` and `ConnEnd`, at `Rcv` then `Snd`.
    pub(crate) fn destroy(&mut self, slot: FlowIdx, reason: EndReason, first: Option<Side>) {
        let gen = self.core.table.flow(slot).gen;
        self.core.table.unlink(slot);
        // A FIN or RST still held takes effect, after the gaps before it.
        let reason = match (self.flush_held(slot), reason) {
            (Some(r), EndReason::Eof | EndReason::Shutdown | EndReason::Timeout) => r,
            _ => reason,
        };
        // Out-of-order data still held is delivered, skipping the gaps before it.
        for side in Side::BOTH {
            loop {
                let s = &self.core.table.flow(slot).sides[side.index()];
                let Some(next) = s.buf.as_ref().and_then(|b| b.first_gap_end()) else {
                    break;
                };
                self.skip_gap(slot, side, next);
            }
            self.deliver_newdata(slot, side);
        }
        let first = first.unwrap_or(Side::Client);
        for side in [first, first.peer()] {
            let f = self.core.table.flow_mut(slot);
            let s = &mut f.sides[side.index()];
            s.state = TcpState::Closed;
            s.destroyed = true;
            f.end_reason.get_or_insert(reason);
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
        debug_assert_eq!(self.core.table.flow(slot).gen, gen);
        if matches!(reason, EndReason::Fin | EndReason::Rst) {
            self.bury(slot);
        }
        let core = &mut self.core;
        core.table.release(slot, &mut core.stats);
    }

    /// Leaves a tombstone of a connection that closed, for its late packets.
    pub(crate) fn bury(&mut self, slot: FlowIdx) {
        let f = self.core.table.flow(slot);
        let space = |sender: Side| {
            let (s, r) = (&f.sides[sender.index()], &f.sides[sender.peer().index()]);
            Space {
                known: s.tx_seen && r.rx_base_known,
                // The stream starts one after the SYN: the SYN's number is in the space.
                first: r.rx_base.wrapping_sub(1),
                end: s.tx_next,
                syn: s.syn_seen,
            }
        };
        let spaces = [space(Side::Client), space(Side::Server)];
        let reset_by = Side::BOTH
            .into_iter()
            .find(|&side| f.sides[side.index()].sent_rst);
        let (key, lo) = (f.key, f.client_is_lo);
        let now = self.core.now;
        self.core
            .tombs
            .bury(key, key.hash(), lo, spaces, reset_by, now);
    }
}
