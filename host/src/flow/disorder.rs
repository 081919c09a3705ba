//! Disorder on the tap: what a reordered or duplicated packet must not change (SPEC §3,
//! docs/SPEC.md §3.1). A SPAN port or a merge of per-queue captures moves packets by up
//! to a few dozen places; the receiving host saw them in sequence order.
//!
//! Owns, per side (the side that *receives* a stream, [`Holdback`]):
//! - the gap-skip rule: an ACK ahead of the contiguous end arms a skip that fires only
//!   after `gap_skip_after` more packets of the flow that find the stream where it was (or
//!   when the buffer needs the room, or at the flow's end), so that a segment the ACK
//!   overtook can still fill the gap;
//! - a guessed stream start (no SYN first): its bytes wait, for the same allowance, until a
//!   SYN, SYN/ACK or overtaken segment moves it, and a FIN at it waits too;
//! - a FIN or an in-window RST beyond the contiguous end, held until the stream reaches it
//!   (a RST at most for the same allowance; a FIN, like a receiving stack, until an ACK
//!   past the gap, or the flow's end, moves the stream to it);
//! - a FIN whose ACK came first: the FIN's sender moves on as if the ACK came after it;
//! - roles guessed wrong on a flow picked up mid-stream: the handshake that follows swaps
//!   the sides while nothing was delivered;
//! - a RST in sequence while the other direction is open: it lingers, for the allowance or
//!   `Config::rst_linger` (1 s) of packet time, so that bytes in flight toward its sender
//!   still reach the stream.
//!
//! Must not: cost anything on the in-order path (the engine calls [`Engine::settle`] only
//! for a flow with something held, or for a FIN), store payload or choose event order.

use std::net::{IpAddr, Ipv4Addr};

use super::dispatch::Order;
use super::engine::Engine;
use super::holdback::{Ctl, Holdback};
use super::table::FlowIdx;
use super::tcp;
use super::types::*;
use crate::wire::{TcpFlags, TcpOptions, TcpSegment};

/// A segment with no payload and no addresses, to replay a held control segment through
/// the state machine as the stream reaches it.
fn synthetic(flags: u8, seq: u32, ack: u32, window: u16) -> TcpSegment<'static> {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    TcpSegment {
        src: any,
        dst: any,
        src_port: 0,
        dst_port: 0,
        seq,
        ack,
        flags: TcpFlags(flags),
        window,
        urgent: 0,
        options: TcpOptions::default(),
        payload: &[],
        payload_len_on_wire: 0,
        vlan_depth: 0,
        l3_offset: 0,
        l4_offset: 0,
    }
}

/// Whether a side's handshake is over (a FIN it receives means something).
fn synchronized(st: TcpState) -> bool {
    !matches!(
        st,
        TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynRcvd
    )
}

fn order_of(sender: Side) -> Order {
    if sender == Side::Client {
        Order::Load
    } else {
        Order::Reverse
    }
}

impl Engine {
    /// Before a FIN or RST from `sender` is applied: whether it lies beyond the receiver's
    /// contiguous end and must be held (then it is recorded, and the caller strips it).
    pub(crate) fn hold_ctl(&mut self, slot: FlowIdx, sender: Side, seg: &TcpSegment<'_>) -> bool {
        let k = self.core.cfg.gap_skip_after;
        let flags = seg.flags;
        if k == 0 || flags.syn() {
            return false;
        }
        let (f, held) = self.core.table.flow_held_mut(slot);
        let receiver = sender.peer();
        let r = &f.sides[receiver.index()];
        if r.capacity == 0 {
            return false;
        }
        if let Some((Ctl::Fin, _)) = held[receiver.index()].ctl {
            // A copy of the FIN already held waits with it (the first one's place counts).
            let fin = seg.seq.wrapping_add(seg.payload_len_on_wire);
            return flags.fin() && !flags.rst() && f.sides[sender.index()].tx_fin == Some(fin);
        }
        if let Some((Ctl::RstLinger, _)) = held[receiver.index()].ctl {
            // Another RST of the sender (the answer to each segment in flight) lingers
            // with the first.
            return flags.rst() && !flags.syn();
        }
        if held[receiver.index()].ctl.is_some() {
            return false;
        }
        if !r.rx_base_known {
            // The first segment of this stream: a FIN that overtook the handshake waits
            // for the receiver to be synchronized; on a flow picked up mid-stream, where
            // the start is a guess, it waits for the allowance too, so that the data it
            // overtook (or the SYN) can move the start back before it (`rebase_guess`).
            if flags.fin() && !flags.rst() && (!synchronized(r.state) || f.partial) {
                let fin = seg.seq.wrapping_add(seg.payload_len_on_wire);
                f.sides[sender.index()].tx_fin.get_or_insert(fin);
                let h = &mut held[receiver.index()];
                h.ctl = Some((Ctl::Fin, u64::from(seg.payload_len_on_wire)));
                h.ctl_left = k.saturating_add(1);
                f.disorder = true;
                return true;
            }
            return false;
        }
        let contig = r.contig() as i64;
        let start = r.offset_of(seg.seq);
        if flags.fin() && !flags.rst() && !r.rx_fin {
            // A FIN behind what the stream already holds, or before its start, is not this
            // stream's (a late copy of the connection before, on the same endpoints): no
            // stack would take it. A FIN at the SYN's own number (-1) is taken, as mOS does.
            let fin_off = r.offset_of(seg.seq.wrapping_add(seg.payload_len_on_wire));
            if (fin_off < -1 || (0..contig).contains(&fin_off)) && contig - fin_off <= (1 << 30) {
                return true;
            }
        }
        // A RST one past a FIN the receiver took is in sequence: the FIN holds a number.
        let after_fin = flags.rst() && r.rx_fin && start == contig + 1;
        let ahead = start > contig && start - contig <= (1 << 30) && !after_fin;
        if flags.rst() && !ahead {
            return self.linger_rst(slot, sender, Some(seg.seq));
        }
        let (f, held) = self.core.table.flow_held_mut(slot);
        let r = &f.sides[receiver.index()];
        let early_fin = flags.fin() && !flags.rst() && !synchronized(r.state);
        // At the guessed start of a stream (its first packet may have been sent after
        // the data, e.g. a pure ACK): the data before it may come yet.
        let h = &held[receiver.index()];
        let guessed_fin = flags.fin()
            && !flags.rst()
            && h.base_guess
            && h.guess_left > 0
            && start >= contig
            && start - contig <= (1 << 30);
        if !ahead && !early_fin && !guessed_fin {
            return false;
        }
        let ctl = if flags.rst() {
            if !ahead {
                return false;
            }
            // Sequence-checked as any RST: a blind one is not held, it is ignored.
            if !tcp::rst_in_window(r, seg.seq) {
                return false;
            }
            (Ctl::Rst, start as u64)
        } else if flags.fin() && !r.rx_fin {
            let fin = seg.seq.wrapping_add(seg.payload_len_on_wire);
            let s = &mut f.sides[sender.index()];
            // The FIN's number is known now: an ACK of it must not count as a lost byte.
            s.tx_fin.get_or_insert(fin);
            (
                Ctl::Fin,
                f.sides[receiver.index()].offset_of(fin).max(0) as u64,
            )
        } else {
            return false;
        };
        let h = &mut held[receiver.index()];
        h.ctl = Some(ctl);
        h.ctl_left = k.saturating_add(1);
        f.disorder = true;
        true
    }

    /// A believed RST from `sender`, in sequence: held (`Ctl::RstLinger`) while the other
    /// direction (the receiver's bytes toward the RST's sender) is open, since bytes the
    /// receiver sent before the RST reached it may show on the tap after the RST. Whether
    /// any are in flight cannot be told from what the tap showed so far: the segment that
    /// made the sender's stack reset may itself come after the RST, and the ACKs before it
    /// may be late too. Held for `gap_skip_after` packets of the flow or `rst_linger` of
    /// packet time, or until the flow's end; otherwise (the other direction closed, or
    /// never opened) it takes effect now (false). `seq`: the RST's sequence number, to
    /// check against the window (None: it was checked when it was held ahead of the data).
    fn linger_rst(&mut self, slot: FlowIdx, sender: Side, seq: Option<u32>) -> bool {
        let k = self.core.cfg.gap_skip_after;
        let deadline = self.core.now.saturating_add(self.core.cfg.rst_linger);
        let (f, held) = self.core.table.flow_held_mut(slot);
        let receiver = sender.peer();
        let (s, r) = (&f.sides[sender.index()], &f.sides[receiver.index()]);
        let open = r.tx_seen && s.capacity > 0 && !s.rx_fin && synchronized(s.state);
        if !open || seq.is_some_and(|seq| !tcp::rst_in_window(r, seq)) {
            return false;
        }
        let h = &mut held[receiver.index()];
        h.ctl = Some((Ctl::RstLinger, deadline));
        h.ctl_left = k.saturating_add(1);
        f.disorder = true;
        let gen = f.gen;
        self.core.lingering.push_back((deadline, slot, gen));
        true
    }

    /// At the end of a batch: lingering RSTs whose deadline the clock passed take effect,
    /// and their flows end.
    pub(crate) fn release_lingering(&mut self) {
        let now = self.core.now;
        while let Some(&(deadline, slot, gen)) = self.core.lingering.front() {
            if deadline > now {
                break;
            }
            self.core.lingering.pop_front();
            if self.core.table.is_live(slot, gen) {
                self.rst_lingers_past(slot, now);
            }
        }
    }

    /// If a RST of the flow lingers with a deadline at or before `ts`, it takes effect now
    /// and the flow ends (true).
    pub(crate) fn rst_lingers_past(&mut self, slot: FlowIdx, ts: u64) -> bool {
        let gen = self.core.table.flow(slot).gen;
        for side in Side::BOTH {
            let held = self.core.table.held_mut(slot);
            let Some((Ctl::RstLinger, deadline)) = held[side.index()].ctl else {
                continue;
            };
            if deadline > ts {
                continue;
            }
            self.end_linger(slot, side, None);
            if self.core.table.is_live(slot, gen) {
                let reason = self.core.table.flow(slot).end_reason;
                self.destroy(slot, reason.unwrap_or(EndReason::Rst), Some(side));
            }
            return true;
        }
        false
    }

    /// The RST lingering in `receiver`'s holdback takes effect now (its transitions; the
    /// caller ends the flow).
    fn end_linger(&mut self, slot: FlowIdx, receiver: Side, pkt: Option<&[u8]>) {
        let (f, held) = self.core.table.flow_held_mut(slot);
        let h = &mut held[receiver.index()];
        h.ctl = None;
        h.ctl_left = 0;
        f.disorder = held.iter().any(Holdback::pending);
        self.apply_ctl(slot, receiver, Ctl::Rst, pkt);
    }

    /// A bare SYN on a flow picked up mid-stream from the side taken for the server, or a
    /// SYN/ACK (`synack`) from the side taken for the client: the roles were guessed wrong
    /// (the tap showed other packets of the connection before its handshake), and they swap
    /// if nothing of either stream was delivered or read yet. The `PktIn` events already
    /// delivered named the sides as guessed.
    pub(crate) fn name_client_by_syn(&mut self, slot: FlowIdx, src_is_lo: bool, synack: bool) {
        let f = self.core.table.flow(slot);
        let from_client = src_is_lo == f.client_is_lo;
        if !f.partial || from_client != synack {
            return;
        }
        let untouched = f
            .sides
            .iter()
            .all(|s| s.newdata_mark == 0 && !s.read.get() && !s.syn_seen);
        // Per-side settings (a monitor may buffer one side only) stay with the side: the
        // streams can move only between sides set up alike.
        let [a, b] = &f.sides;
        if !untouched || a.capacity != b.capacity || a.overlap != b.overlap {
            return;
        }
        let nmon = self.monitors.len();
        let gen = f.gen;
        // A `NewData` owed at the end of this batch follows its stream.
        self.core.marks.swap_sides(slot, gen);
        let (f, held) = self.core.table.flow_held_mut(slot);
        f.sides.swap(0, 1);
        held.swap(0, 1);
        f.client_is_lo = !f.client_is_lo;
        f.last.sender = f.last.sender.map(Side::peer);
        for m in 0..nmon {
            let mf = self.core.table.mon_mut(slot, m);
            mf.cursor.swap(0, 1);
            mf.stopped = ((mf.stopped & 1) << 1) | ((mf.stopped >> 1) & 1);
        }
    }

    /// A stream whose first segment was not its SYN (mid-stream, or the SYN was only
    /// overtaken): a segment before the guessed start of `receiver`'s stream, or its SYN, moves the
    /// start back, as long as nothing of the stream was delivered or read by a monitor. Rare: it copies the
    /// few bytes stored so far.
    pub(crate) fn rebase_guess(&mut self, slot: FlowIdx, receiver: Side, syn: bool, seq: u32) {
        let (f, held) = self.core.table.flow_held_mut(slot);
        let r = &f.sides[receiver.index()];
        let h = &mut held[receiver.index()];
        if !r.rx_base_known {
            h.base_guess = !syn;
            h.guess_left = if syn {
                0
            } else {
                self.core.cfg.gap_skip_after.min(u32::from(u16::MAX)) as u16
            };
            f.disorder |= !syn;
            return;
        }
        if !h.base_guess {
            return;
        }
        // Once delivered (NewData) or looked at by a monitor, the offsets are fixed.
        if r.newdata_mark > 0 || r.read.get() {
            h.base_guess = false;
            return;
        }
        // Positive: the start moves back. Negative, only for a SYN: the guess was a
        // stray segment before this connection's start (a late copy of the one before on
        // the same endpoints); what lies before the SYN is not this stream's and goes.
        let delta = i64::from(r.rx_base.wrapping_sub(seq) as i32);
        if syn {
            h.base_guess = false;
        }
        let limit = i64::from(r.capacity.max(1)) / 2;
        if delta == 0 || delta > limit || (delta < 0 && !syn) {
            return;
        }
        let mut stored = Vec::new();
        if let Some(b) = r.buf.as_ref() {
            if b.head() != 0 {
                return;
            }
            for (start, len) in b.fragments() {
                let mut bytes = vec![0u8; len as usize];
                b.read(start, &mut bytes);
                let at = start as i64 + delta;
                let cut = (-at).clamp(0, len as i64) as usize;
                if cut < bytes.len() {
                    stored.push(((at.max(0)) as u64, bytes.split_off(cut)));
                }
            }
        }
        let room = self.core.table.pool.room(self.core.stats.buffer_bytes);
        let (f, held) = self.core.table.flow_held_mut(slot);
        let r = &mut f.sides[receiver.index()];
        r.rx_base = seq;
        let policy = r.overlap;
        let mut grown = 0;
        if let Some(b) = r.buf.as_mut() {
            b.reset(0);
            // The bytes move up by `delta`: storage may grow, within the budget's room; a
            // byte that finds no room is counted missing like any refused byte.
            for (start, bytes) in &stored {
                let out = b.write(*start, bytes, policy, room.saturating_sub(grown));
                grown += out.grown;
                if out.refused {
                    r.refused = true;
                    r.missing += bytes.len() as u64;
                    self.core.stats.bytes_missing += bytes.len() as u64;
                    self.core.stats.bytes_refused += bytes.len() as u64;
                }
            }
        }
        r.rx_next = match r.buf.as_ref() {
            Some(b) => b.contig_end(),
            None => 0,
        };
        let h = &mut held[receiver.index()];
        for off in [&mut h.ack_max, &mut h.skip_to] {
            if *off > 0 {
                *off = off.saturating_add_signed(delta);
            }
        }
        if let Some((_, off)) = h.ctl.as_mut() {
            *off = off.saturating_add_signed(delta);
        }
        f.last.offset = f.last.offset.saturating_add_signed(delta);
        let Ok(delta) = u64::try_from(delta) else {
            let core = &mut self.core;
            core.table.pool.charge(grown, &mut core.stats.buffer_bytes);
            return;
        };
        if h.skip_left == 0 {
            // The bytes between the new start and what was stored may come yet, as they
            // would after an ACK ahead: the flow waits the allowance for them, even if its
            // FIN was already taken.
            h.skip_to = delta;
            h.skip_left = self.core.cfg.gap_skip_after.saturating_add(1);
        }
        let core = &mut self.core;
        core.table.pool.charge(grown, &mut core.stats.buffer_bytes);
    }

    /// The ACK `ack` sent by `side` acknowledges its stream up to here: beyond the
    /// contiguous end, a skip is armed (or, with `gap_skip_after` 0, done at once).
    #[inline]
    pub(crate) fn ack_note(&mut self, slot: FlowIdx, side: Side, ack: u32) {
        let k = self.core.cfg.gap_skip_after;
        let note = |h: &mut Holdback| {
            if h.ack_hi.map_or(true, |a| (ack.wrapping_sub(a) as i32) > 0) {
                h.ack_hi = Some(ack);
            }
        };
        let f = self.core.table.flow(slot);
        let s = &f.sides[side.index()];
        if !s.rx_base_known {
            note(&mut self.core.table.held_mut(slot)[side.index()]);
            return;
        }
        let ack_off = s.offset_of(ack);
        let contig = s.contig() as i64;
        let has_buf = s.buf.is_some();
        let clamped = match f.sides[side.peer().index()].tx_fin {
            Some(fin) => ack_off.min(s.offset_of(fin)),
            None => ack_off,
        };
        // A guessed start sets `disorder` (in the flow's first cache line), so the in-order
        // path does not load `held` (the table's cold array) for every ACK.
        debug_assert!(f.disorder || !self.core.table.held(slot).iter().any(|h| h.base_guess));
        if f.disorder {
            let h = &mut self.core.table.held_mut(slot)[side.index()];
            if h.base_guess {
                // The guessed start may move back before this ACK (a pure ACK sent after
                // the FIN can be the first packet seen): what it covers must still be known.
                note(h);
            }
        }
        if ack_off <= contig || ack_off - contig > (1 << 30) {
            return;
        }
        let (f, held) = self.core.table.flow_held_mut(slot);
        let h = &mut held[side.index()];
        note(h);
        h.ack_max = h.ack_max.max(ack_off as u64);
        if !has_buf || clamped <= contig {
            return;
        }
        if k == 0 {
            self.skip_acked(slot, side, clamped as u64);
        } else if h.skip_left == 0 {
            h.skip_to = clamped as u64;
            h.skip_left = k.saturating_add(1);
            h.skip_mark = contig as u32;
            f.disorder = true;
        }
    }

    /// The skip target of `side`, to the highest acknowledged offset, if one is armed.
    pub(crate) fn armed_skip(&self, slot: FlowIdx, side: Side) -> Option<u64> {
        let h = &self.core.table.held(slot)[side.index()];
        (h.skip_left > 0).then_some(h.ack_max)
    }

    /// Declares every gap below `to` (at most the peer's FIN) missing.
    pub(crate) fn skip_acked(&mut self, slot: FlowIdx, side: Side, to: u64) {
        let f = self.core.table.flow(slot);
        let s = &f.sides[side.index()];
        let to = match f.sides[side.peer().index()].tx_fin {
            Some(fin) => to.min(s.offset_of(fin).max(0) as u64),
            None => to,
        };
        loop {
            let s = &self.core.table.flow(slot).sides[side.index()];
            let Some(buf) = s.buf.as_ref() else { return };
            let contig = buf.contig_end();
            if contig >= to {
                return;
            }
            let target = match buf.first_gap_end() {
                Some(next) => next.min(to),
                None => to,
            };
            self.skip_gap(slot, side, target);
        }
    }

    /// After a packet of a flow with something held (or a FIN): counts the packet against
    /// the armed skips and held segments, skips what is due, applies held FINs and RSTs the
    /// stream reached, and moves a FIN's sender on if its ACK came first. Returns whether
    /// the flow is still live.
    pub(crate) fn settle(&mut self, slot: FlowIdx, pkt: Option<&[u8]>) -> bool {
        let gen = self.core.table.flow(slot).gen;
        for side in Side::BOTH {
            let (f, held) = self.core.table.flow_held_mut(slot);
            let s = &f.sides[side.index()];
            let contig = s.contig();
            // An ACK of the FIN is one past the last byte (the FIN came after that ACK).
            let fin_off = f.sides[side.peer().index()]
                .tx_fin
                .map_or(u64::MAX, |fin| s.offset_of(fin).max(0) as u64);
            let fin_taken = s.rx_fin;
            let h = &mut held[side.index()];
            if h.skip_left == 0 {
                continue;
            }
            if contig >= h.skip_to.min(fin_off) {
                // Filled by the data the ACK overtook. A later ACK that went further gets
                // its own allowance for the gaps it covers, and so do the bytes before a
                // FIN the receiver already took.
                let more = if fin_taken {
                    fin_off
                } else {
                    h.ack_max.min(fin_off)
                };
                if more > contig && more > h.skip_to {
                    h.skip_to = more;
                    h.skip_left = self.core.cfg.gap_skip_after.saturating_add(1);
                } else {
                    h.skip_left = 0;
                }
                continue;
            }
            if contig as u32 != h.skip_mark {
                // The stream moved on: the data the ACK overtook is arriving (an ACK
                // covering a long run, e.g. after receive offload, overtakes all of it).
                h.skip_mark = contig as u32;
                h.skip_left = self.core.cfg.gap_skip_after.saturating_add(1);
                continue;
            }
            h.skip_left -= 1;
            if h.skip_left == 0 {
                let (to, more) = (h.skip_to, h.ack_max);
                self.skip_acked(slot, side, to);
                // A later ACK went further: its gaps get their own allowance.
                let (f, held) = self.core.table.flow_held_mut(slot);
                let s = &f.sides[side.index()];
                // An ACK of the FIN is one past the last byte.
                let more = match f.sides[side.peer().index()].tx_fin {
                    Some(fin) => more.min(s.offset_of(fin).max(0) as u64),
                    None => more,
                };
                if more > s.contig() && more > to {
                    let h = &mut held[side.index()];
                    h.skip_to = more;
                    h.skip_left = self.core.cfg.gap_skip_after;
                }
            }
        }
        for side in Side::BOTH {
            let (f, held) = self.core.table.flow_held_mut(slot);
            let contig = f.sides[side.index()].contig();
            let h = &mut held[side.index()];
            let Some((ctl, off)) = h.ctl else { continue };
            if ctl == Ctl::Fin && !synchronized(f.sides[side.index()].state) {
                continue;
            }
            if ctl == Ctl::RstLinger {
                // In sequence already: it waits for the bytes in flight toward its sender,
                // for `gap_skip_after` packets of the flow, or to its deadline
                // (`rst_lingers_past`).
                h.ctl_left = h.ctl_left.saturating_sub(1);
                if h.ctl_left > 0 {
                    continue;
                }
                self.end_linger(slot, side, pkt);
                if !self.core.table.is_live(slot, gen) {
                    return false;
                }
                continue;
            }
            if ctl == Ctl::Fin && h.base_guess && h.ctl_left > 0 {
                // The stream's start is still a guess: the bytes before the FIN may come.
                h.ctl_left -= 1;
                if h.ctl_left > 0 {
                    continue;
                }
            }
            if contig < off {
                // A FIN waits as a receiving stack's would, until the stream reaches it or
                // the receiver acknowledges the FIN itself: then the receiver took it, and
                // its state moves now, while the armed skip still lets the bytes the FIN
                // overtook fill the gap (engine.rs keeps the flow until the skip settles).
                // A RST waits only for the allowance.
                if ctl == Ctl::Fin {
                    let fin = f.sides[side.peer().index()].tx_fin;
                    let took = match (fin, h.ack_hi) {
                        (Some(fin), Some(a)) => (a.wrapping_sub(fin.wrapping_add(1)) as i32) >= 0,
                        _ => false,
                    };
                    if !took {
                        continue;
                    }
                    // The bytes before it may come yet (the flow waits for them).
                    if h.skip_left == 0 {
                        h.skip_to = off;
                        h.skip_left = self.core.cfg.gap_skip_after.saturating_add(1);
                    }
                    h.ctl = None;
                    self.apply_ctl(slot, side, ctl, pkt);
                    if !self.core.table.is_live(slot, gen) {
                        return false;
                    }
                    continue;
                }
                h.ctl_left = h.ctl_left.saturating_sub(1);
                if h.ctl_left > 0 {
                    continue;
                }
                // Reordering cannot explain it any more: the bytes before it are lost.
                self.skip_acked(slot, side, off);
            }
            self.core.table.held_mut(slot)[side.index()].ctl = None;
            // In sequence now: it lingers as any RST does while the other way is open.
            if ctl == Ctl::Rst && self.linger_rst(slot, side.peer(), None) {
                continue;
            }
            self.apply_ctl(slot, side, ctl, pkt);
            if !self.core.table.is_live(slot, gen) {
                return false;
            }
        }
        for side in Side::BOTH {
            self.fin_acked(slot, side, pkt);
            if !self.core.table.is_live(slot, gen) {
                return false;
            }
        }
        let core = &mut self.core;
        for side in Side::BOTH {
            let (f, held) = core.table.flow_held_mut(slot);
            let (h, s) = (&mut held[side.index()], &f.sides[side.index()]);
            if !h.base_guess {
                // Bytes held back while the start was a guess (a SYN just made it final).
                if s.contig() > s.newdata_mark && !s.newdata_pending {
                    core.marks.mark(&mut core.table, slot, side);
                }
                continue;
            }
            // Once data was delivered or read by a monitor, the start stays where it is;
            // and once the allowance is over, the guess is final and its bytes are
            // delivered.
            h.guess_left = h.guess_left.saturating_sub(1);
            h.base_guess = s.newdata_mark == 0 && !s.read.get() && h.guess_left > 0;
            if !h.base_guess && s.contig() > s.newdata_mark {
                core.marks.mark(&mut core.table, slot, side);
            }
        }
        let (f, held) = core.table.flow_held_mut(slot);
        f.disorder = held.iter().any(Holdback::pending);
        true
    }

    /// A held FIN or RST of the peer of `receiver` takes effect now: the state machine
    /// sees it as if it arrived in sequence, with its `TcpStateChange` events.
    fn apply_ctl(&mut self, slot: FlowIdx, receiver: Side, ctl: Ctl, pkt: Option<&[u8]>) {
        let sender = receiver.peer();
        let gen = self.core.table.flow(slot).gen;
        let core = &mut self.core;
        let f = core.table.flow_mut(slot);
        let s = &f.sides[sender.index()];
        let window = (s.window >> s.wscale).min(u32::from(u16::MAX)) as u16;
        let seg = match ctl {
            Ctl::Fin => {
                let fin = s.tx_fin.unwrap_or(s.tx_next);
                if s.tx_ack_seen {
                    synthetic(TcpFlags::FIN | TcpFlags::ACK, fin, s.tx_ack, window)
                } else {
                    synthetic(TcpFlags::FIN, fin, 0, window)
                }
            }
            Ctl::Rst | Ctl::RstLinger => {
                // Checked against the window when it was held; here it is in sequence.
                let r = &f.sides[receiver.index()];
                synthetic(
                    TcpFlags::RST,
                    r.rx_base.wrapping_add(r.contig() as u32),
                    0,
                    window,
                )
            }
        };
        let snd = tcp::on_send(
            &mut f.sides,
            &mut f.end_reason,
            f.partial,
            sender,
            &seg,
            seg.seq,
            &mut core.stats.rst_ignored,
        );
        let order = order_of(sender);
        self.emit_change(slot, sender, Hook::Snd, snd.change, order, pkt);
        if !self.core.table.is_live(slot, gen) {
            return;
        }
        let f = self.core.table.flow_mut(slot);
        let rcv = tcp::on_receive(
            &mut f.sides[receiver.index()],
            receiver,
            f.partial,
            f.end_reason,
            &seg,
        );
        self.emit_change(slot, receiver, Hook::Rcv, rcv.change, order, pkt);
    }

    /// `side` sent a FIN that the peer had already acknowledged (the ACK overtook it):
    /// the ACK's transition happens now, at `Rcv`, as it would have after the FIN.
    fn fin_acked(&mut self, slot: FlowIdx, side: Side, pkt: Option<&[u8]>) {
        let (f, held) = self.core.table.flow_held_mut(slot);
        let s = &f.sides[side.index()];
        let Some(fin) = s.tx_fin else { return };
        if !matches!(
            s.state,
            TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
        ) {
            return;
        }
        let peer = side.peer();
        let covered = held[peer.index()]
            .ack_hi
            .is_some_and(|a| (a.wrapping_sub(fin.wrapping_add(1)) as i32) >= 0);
        if !covered {
            return;
        }
        let seg = synthetic(TcpFlags::ACK, s.tx_next, fin.wrapping_add(1), 0);
        let t = tcp::on_receive(
            &mut f.sides[side.index()],
            side,
            f.partial,
            f.end_reason,
            &seg,
        );
        self.emit_change(slot, side, Hook::Rcv, t.change, order_of(peer), pkt);
    }

    /// At the flow's end: a held FIN or RST takes effect after the gaps before it are
    /// declared missing. Returns the end reason it implies (RST, or FIN when both sides
    /// are now closed).
    pub(crate) fn flush_held(&mut self, slot: FlowIdx) -> Option<EndReason> {
        let mut implied = None;
        for side in Side::BOTH {
            let held = self.core.table.held_mut(slot);
            let Some((ctl, off)) = held[side.index()].ctl.take() else {
                continue;
            };
            held[side.index()].ctl_left = 0;
            if ctl != Ctl::RstLinger {
                self.skip_acked(slot, side, off);
            }
            self.apply_ctl(slot, side, ctl, None);
            if ctl != Ctl::Fin {
                implied = Some(EndReason::Rst);
            }
        }
        for side in Side::BOTH {
            self.fin_acked(slot, side, None);
        }
        let f = self.core.table.flow_mut(slot);
        f.disorder = false;
        if implied.is_none() && f.sides.iter().all(|s| s.finished) {
            implied = Some(EndReason::Fin);
        }
        implied
    }

    /// One `TcpStateChange`, if the state changed.
    fn emit_change(
        &mut self,
        slot: FlowIdx,
        side: Side,
        hook: Hook,
        change: Option<TcpState>,
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        if let Some(st) = change {
            self.emit(
                slot,
                EventKind::TcpStateChange,
                EventSide::One(side),
                hook,
                Detail::State(st),
                order,
                pkt,
            );
        }
    }
}
