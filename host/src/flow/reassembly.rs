//! The receive path of one side: where a segment's payload lands in the receiver's stream
//! (offsets across the 2^32 wrap, trimming, the window), retransmissions and overlaps,
//! gaps the receiver acknowledged (lost to the capture) and the `NewData` marks that
//! coalesce new contiguous data into one event per side and batch.
//!
//! Owns: `receive_data`, `discard_to`, `skip_gap` and `NewData` delivery (`flush_pending`,
//! from the marks of [`super::marks`]). Must not: run the TCP state machine
//! ([`super::tcp`]), decide when an acknowledged gap is lost ([`super::disorder`]) or the
//! order of monitors ([`super::deliver`]); it tells delivery which events happened.

use super::dispatch::Order;
use super::engine::Engine;
use super::table::FlowIdx;
use super::types::*;

impl Engine {
    /// Stores a segment's payload in the receiver's buffer, with the `Rexmit` and `Error`
    /// events it causes; marks new contiguous data for `NewData`.
    pub(crate) fn receive_data(
        &mut self,
        slot: FlowIdx,
        receiver: Side,
        seq: u32,
        payload: &[u8],
        order: Order,
        pkt: Option<&[u8]>,
    ) {
        let one = EventSide::One(receiver);
        let core = &mut self.core;
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
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
            let e = off + bytes.len() as u64;
            if side.refused && e > side.rx_next {
                // Refused by the budget: what was never stored is missing to readers.
                let lost = e - side.rx_next.max(off);
                side.missing += lost;
                core.stats.bytes_missing += lost;
                core.stats.bytes_refused += lost;
                side.rx_next = e;
            }
            if off <= side.rx_next {
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
            match core.table.alloc_buffer(cap, head, &mut core.stats) {
                Some(b) => core.table.flow_mut(slot).sides[receiver.index()].buf = Some(b),
                None => {
                    core.stats.buffer_memory_refusals += 1;
                    let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
                    side.capacity = 0;
                    side.refused = true;
                    let lost = (off + bytes.len() as u64).saturating_sub(contig.max(off));
                    side.missing += lost;
                    side.rx_next = side.rx_next.max(off + bytes.len() as u64);
                    core.stats.bytes_missing += lost;
                    core.stats.bytes_refused += lost;
                    self.error(slot, receiver, ErrorKind::OutOfBufferMemory, order, pkt);
                    return;
                }
            }
        }
        let core = &mut self.core;
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
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
        let seg_end = off + bytes.len() as u64;
        if seg_end > self.core.table.flow(slot).sides[receiver.index()].contig() + cap {
            // The buffer needs the room: a gap the receiver acknowledged is lost now
            // rather than after the reordering allowance.
            if let Some(acked) = self.armed_skip(slot, receiver) {
                self.skip_acked(slot, receiver, acked);
            }
        }
        let core = &mut self.core;
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
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
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
        let policy = side.overlap;
        let before = side.buf_contig();
        let room = core.table.pool.room(core.stats.buffer_bytes);
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
        let out = side
            .buf
            .as_mut()
            .expect("created above")
            .write(off, bytes, policy, room);
        side.overlap_bytes += out.overlap;
        if out.refused {
            // The budget had no room to grow the storage: the segment is not stored.
            side.refused = true;
            let lost = bytes.len() as u64;
            side.missing += lost;
            core.stats.bytes_missing += lost;
            core.stats.bytes_refused += lost;
            core.stats.buffer_memory_refusals += 1;
            self.error(slot, receiver, ErrorKind::OutOfBufferMemory, order, pkt);
            return;
        }
        core.table
            .pool
            .charge(out.grown, &mut core.stats.buffer_bytes);
        if out.fragment_limit {
            core.stats.fragment_limit_drops += 1;
            self.error(slot, receiver, ErrorKind::FragmentLimit, order, pkt);
            return;
        }
        let core = &mut self.core;
        let side = &mut core.table.flow_mut(slot).sides[receiver.index()];
        let after = side.buf_contig();
        side.rx_next = after;
        if after > before {
            core.marks.mark(&mut core.table, slot, receiver);
        }
    }

    /// An `Error` event for the receiving side (SPEC §2: hook None).
    pub(super) fn error(
        &mut self,
        slot: FlowIdx,
        side: Side,
        kind: ErrorKind,
        order: Order,
        pkt: Option<&[u8]>,
    ) {
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
    fn discard_to(&mut self, slot: FlowIdx, side: Side, new_head: u64, order: Order) {
        let gen = self.core.table.flow(slot).gen;
        self.deliver_newdata(slot, side);
        if !self.core.table.is_live(slot, gen) {
            return;
        }
        for m in self.order_of(order) {
            let mf = *self.core.table.mon(slot, m);
            let watching = !mf.ended && mf.stopped & (1 << side.index()) == 0;
            if watching
                && mf.mask & EventKind::NewData.bit(Hook::None) != 0
                && mf.cursor[side.index()] < new_head
            {
                let ev = Event {
                    kind: EventKind::Error,
                    side: EventSide::One(side),
                    hook: Hook::None,
                    flow: FlowHandle::flow(self.core.table.core(), slot.raw(), gen),
                    detail: Detail::Error(ErrorKind::Overrun),
                };
                if mf.mask & EventKind::Error.bit(Hook::None) != 0 {
                    self.call(m, &ev, None);
                }
            }
        }
        if let Some(b) = self.core.table.flow_mut(slot).sides[side.index()]
            .buf
            .as_mut()
        {
            b.advance_head(new_head);
        }
    }

    /// Declares `[contig_end, to)` missing: the next fragment (if it starts at `to`) becomes
    /// contiguous. Pending data is delivered first.
    pub(crate) fn skip_gap(&mut self, slot: FlowIdx, side: Side, to: u64) {
        let core = &mut self.core;
        let s = &mut core.table.flow_mut(slot).sides[side.index()];
        let Some(buf) = s.buf.as_mut() else { return };
        let contig = buf.contig_end();
        if to <= contig {
            return;
        }
        buf.skip_to(to);
        let after = buf.contig_end();
        s.missing += to - contig;
        core.stats.bytes_missing += to - contig;
        s.rx_next = after;
        // Readers learn about the skipped bytes through `peek` (`Lost`); data after the gap
        // is new contiguous data.
        core.marks.mark(&mut core.table, slot, side);
    }

    /// Delivers a side's pending `NewData` now (before a discard or the flow's end).
    pub(crate) fn deliver_newdata(&mut self, slot: FlowIdx, side: Side) {
        let s = &mut self.core.table.flow_mut(slot).sides[side.index()];
        // Not only what is marked: bytes held back while a start was a guess too.
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

    /// Delivers the `NewData` of every side marked in this batch (marks made while
    /// delivering are delivered too).
    pub(crate) fn flush_pending(&mut self) {
        let mut i = 0;
        while i < self.core.marks.len() {
            let (slot, gen, side) = self.core.marks.get(i);
            i += 1;
            if self.core.table.is_live(slot, gen) {
                let (f, held) = self.core.table.flow_held_mut(slot);
                // `disorder` first: a guessed start sets it, and `held` lives apart (cold).
                let h = &held[side.index()];
                if f.disorder && h.base_guess && h.guess_left > 0 {
                    // A guessed start may move yet (disorder.rs): delivered once it is final.
                    f.sides[side.index()].newdata_pending = false;
                    continue;
                }
                self.deliver_newdata(slot, side);
            }
        }
        self.core.marks.clear();
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

    /// An engine with one recording monitor and an open connection: client ISN 100,
    /// server ISN 500, so the client's byte `n` has sequence number `101 + n`.
    fn open(cfg: Config) -> (Engine, Log) {
        let log = Log::default();
        let mons: Vec<Box<dyn Monitor>> = vec![Box::new(Recorder::new("m", &log))];
        let mut e = Engine::new(cfg, mons);
        e.on_segment(&seg(true, SYN, 100, 0, &[]), &[], 1);
        e.on_segment(&seg(false, SYN | ACK, 500, 101, &[]), &[], 2);
        e.on_segment(&seg(true, ACK, 101, 501, &[]), &[], 3);
        e.end_batch();
        log.borrow_mut().clear();
        (e, log)
    }

    fn client_data(e: &mut Engine, at: u32, bytes: &[u8]) {
        e.on_segment(&seg(true, ACK, 101 + at, 501, bytes), &[], 4);
    }

    fn count(log: &Log, kind: EventKind) -> usize {
        log.borrow()
            .iter()
            .filter(|(_, ev)| ev.kind == kind)
            .count()
    }

    /// The server side's (client→server bytes) positions and stored bytes.
    fn server_stream(e: &mut Engine) -> (crate::flow::BufferInfo, Vec<u8>) {
        e.with_cx(0, |cx| {
            let h = FlowHandle::flow(0, 0, 0);
            let info = cx.buffer_info(h, Side::Server).unwrap();
            let mut out = vec![0u8; 64];
            let n = cx.ppeek(h, Side::Server, &mut out, info.head).unwrap_or(0);
            out.truncate(n);
            (info, out)
        })
    }

    #[test]
    fn out_of_order_data_merges_and_newdata_is_coalesced() {
        let (mut e, log) = open(Config::default());
        client_data(&mut e, 5, b"world");
        let (info, _) = server_stream(&mut e);
        assert_eq!((info.contig_end, info.last_end), (0, 10));
        client_data(&mut e, 0, b"hello");
        client_data(&mut e, 10, b"!");
        assert_eq!(
            count(&log, EventKind::NewData),
            0,
            "not before the batch ends"
        );
        e.end_batch();
        assert_eq!(count(&log, EventKind::NewData), 1, "one per side and batch");
        let (info, bytes) = server_stream(&mut e);
        assert_eq!(info.contig_end, 11);
        assert_eq!(bytes, b"helloworld!");
    }

    #[test]
    fn retransmission_and_overlap_are_rexmit_and_first_copy_wins() {
        let (mut e, log) = open(Config::default());
        client_data(&mut e, 0, b"abcdef");
        assert_eq!(count(&log, EventKind::Rexmit), 0);
        client_data(&mut e, 0, b"abc");
        assert_eq!(count(&log, EventKind::Rexmit), 1, "a full retransmission");
        client_data(&mut e, 4, b"XXyy");
        assert_eq!(count(&log, EventKind::Rexmit), 2, "a partial overlap");
        let (info, bytes) = server_stream(&mut e);
        assert_eq!(bytes, b"abcdefyy");
        assert_eq!(info.overlap, 3 + 2);
    }

    #[test]
    fn acknowledged_gap_is_skipped_and_counted_missing() {
        // At once (no reordering allowance): disorder.rs tests the allowance.
        let (mut e, log) = open(Config {
            gap_skip_after: 0,
            ..Config::default()
        });
        client_data(&mut e, 0, b"abc");
        client_data(&mut e, 8, b"xyz");
        e.end_batch();
        log.borrow_mut().clear();
        // The server acknowledges everything: bytes 3..8 were lost to the capture.
        e.on_segment(&seg(false, ACK, 501, 101 + 11, &[]), &[], 5);
        let (info, _) = server_stream(&mut e);
        assert_eq!((info.contig_end, info.missing), (11, 5));
        assert_eq!(e.stats().bytes_missing, 5);
        e.end_batch();
        assert_eq!(count(&log, EventKind::NewData), 1);
        // An ACK past everything stored: the bytes up to it were lost too.
        e.on_segment(&seg(false, ACK, 501, 101 + 20, &[]), &[], 6);
        let (info, _) = server_stream(&mut e);
        assert_eq!((info.contig_end, info.missing), (20, 5 + 9));
        // One that acknowledges nothing new skips nothing.
        e.on_segment(&seg(false, ACK, 501, 101 + 20, &[]), &[], 7);
        assert_eq!(e.stats().bytes_missing, 14);
    }

    #[test]
    fn acknowledged_gap_waits_for_the_reordering_allowance() {
        let (mut e, _log) = open(Config {
            gap_skip_after: 3,
            ..Config::default()
        });
        client_data(&mut e, 0, b"abc");
        client_data(&mut e, 8, b"xyz");
        e.on_segment(&seg(false, ACK, 501, 101 + 11, &[]), &[], 5);
        let (info, _) = server_stream(&mut e);
        assert_eq!(
            (info.contig_end, info.missing),
            (3, 0),
            "held: maybe overtaken"
        );
        for _ in 0..2 {
            e.on_segment(&seg(false, ACK, 501, 101 + 11, &[]), &[], 6);
        }
        assert_eq!(server_stream(&mut e).0.missing, 0);
        e.on_segment(&seg(false, ACK, 501, 101 + 11, &[]), &[], 7);
        let (info, _) = server_stream(&mut e);
        assert_eq!(
            (info.contig_end, info.missing),
            (11, 5),
            "3 packets later: lost"
        );
        // Filled within the allowance: nothing is missing.
        client_data(&mut e, 20, b"late");
        e.on_segment(&seg(false, ACK, 501, 101 + 24, &[]), &[], 8);
        client_data(&mut e, 11, b"012345678");
        let (info, _) = server_stream(&mut e);
        assert_eq!((info.contig_end, info.missing), (24, 5));
    }

    #[test]
    fn data_beyond_the_window_is_dropped_with_an_error() {
        let cfg = Config {
            buffer_capacity: 16,
            ..Config::default()
        };
        let (mut e, log) = open(cfg);
        client_data(&mut e, 20, b"far");
        assert_eq!(count(&log, EventKind::Error), 1);
        assert_eq!(e.stats().bytes_beyond_window, 3);
        client_data(&mut e, 10, b"0123456789");
        assert_eq!(
            count(&log, EventKind::Error),
            2,
            "clipped at the window's end"
        );
        assert_eq!(e.stats().bytes_beyond_window, 3 + 4);
    }
}
