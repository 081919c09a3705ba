//! The emulated TCP endpoint of one side ([`SideState`]) and its transitions: what a
//! segment does to its sender's state and to its receiver's state (SPEC §3), and which
//! RSTs are believed ([`rst_in_window`]).
//!
//! Owns: the per-side fields (state, sequence bookkeeping, window, FIN/RST tracking) and
//! the state machine. Must not: store payload (that is [`super::reassembly`]), emit events
//! (the transitions return what changed; the engine emits), or touch the flow table.

use std::cell::Cell;

use super::buffer::{OverlapPolicy, RecvBuffer};
use super::types::{EndReason, Side, TcpState};
use crate::wire::{TcpFlags, TcpSegment};

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
    /// End of in-order data received. With a buffer it mirrors the buffer's contiguous end:
    /// whatever changes that sets this too (checked by `contig` in debug builds).
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
    /// This side sent the RST that ended the connection (a tombstone keeps it).
    pub(crate) sent_rst: bool,
    /// The sequence number of the first SYN this side sent (valid when `syn_seen`).
    pub(crate) tx_isn: u32,
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
    /// The budget refused this side a buffer (or its growth): bytes it could not store
    /// count as missing.
    pub(crate) refused: bool,
    /// A monitor looked at this side's stored bytes or positions (ppeek, peek, fragments,
    /// buffer info): from then on the stream's offsets are fixed, and a guessed start is
    /// never moved (see [`super::disorder`]). A `Cell` because reads take `&self`.
    pub(crate) read: Cell<bool>,
}

impl SideState {
    pub(crate) fn new(state: TcpState, capacity: u32, overlap: OverlapPolicy) -> SideState {
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
            sent_rst: false,
            tx_isn: 0,
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
            refused: false,
            read: Cell::new(false),
        }
    }

    /// End of the contiguous data this side received: `rx_next`, which every change of the
    /// buffer's contiguous end mirrors, so that the ACK path of the other direction does not
    /// load this side's buffer (a cache miss per packet at 10k flows).
    #[inline]
    pub(crate) fn contig(&self) -> u64 {
        #[cfg(debug_assertions)]
        if let Some(b) = &self.buf {
            debug_assert_eq!(
                b.contig_end(),
                self.rx_next,
                "rx_next must mirror the buffer"
            );
        }
        self.rx_next
    }

    /// The buffer's own contiguous end (`rx_next` without a buffer): for the code that
    /// changes the buffer, before it sets `rx_next` again.
    #[inline]
    pub(crate) fn buf_contig(&self) -> u64 {
        self.buf.as_ref().map_or(self.rx_next, |b| b.contig_end())
    }

    /// Maps a sequence number of the stream this side receives to a 64-bit offset, near
    /// the contiguous end (so offsets keep growing across the 2^32 wrap).
    #[inline]
    pub(crate) fn offset_of(&self, seq: u32) -> i64 {
        let reference = self.contig();
        let ref_seq = self.rx_base.wrapping_add(reference as u32);
        reference as i64 + i64::from(seq.wrapping_sub(ref_seq) as i32)
    }
}

/// What a segment did to one side's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The side's new state, if it changed.
    pub(crate) change: Option<TcpState>,
    /// The connection starts at this side (the client's first SYN; the server's SYN_RCVD).
    pub(crate) conn_start: bool,
    /// A control segment (SYN, FIN) seen again: a retransmission (receiver side only).
    pub(crate) ctl_rexmit: bool,
}

/// Applies a segment to its sender's side (`sides[sender]`): sequence and window
/// bookkeeping, then the state machine. A RST is believed only within the receiver's
/// window; a believed one sets `end_reason`, another counts into `rst_ignored`. `data_seq`
/// is the sequence number of the first payload byte (after the SYN).
/// Always inlined: out of line (LLVM's choice since the disorder rules grew it), the calls
/// of the per-packet path cost about 20% of the 64-byte engine bench (BENCHMARKS.md).
#[inline(always)]
pub(crate) fn on_send(
    sides: &mut [SideState; 2],
    end_reason: &mut Option<EndReason>,
    partial: bool,
    sender: Side,
    seg: &TcpSegment<'_>,
    data_seq: u32,
    rst_ignored: &mut u64,
) -> Transition {
    let flags = seg.flags;
    let receiver = sender.peer();
    let s = &mut sides[sender.index()];
    let old = s.state;
    let first_syn =
        flags.syn() && !flags.ack() && !s.syn_seen && sender == Side::Client && !partial;
    if flags.syn() && !s.syn_seen {
        s.syn_seen = true;
        s.tx_isn = seg.seq;
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
        rst_valid = rst_in_window(&sides[receiver.index()], seg.seq);
    } else if flags.ack() {
        s.tx_ack = seg.ack;
        s.tx_ack_seen = true;
    }
    let s = &mut sides[sender.index()];
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
        if !flags.syn() && flags.ack() && matches!(st, TcpState::SynSent | TcpState::SynRcvd) {
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
        *end_reason = Some(EndReason::Rst);
        s.sent_rst = true;
    } else if flags.rst() {
        *rst_ignored += 1;
    }
    if s.state == TcpState::Closed && old != TcpState::Closed {
        s.finished = true;
    }
    Transition {
        change: (s.state != old).then_some(s.state),
        conn_start: first_syn,
        ctl_rexmit: false,
    }
}

/// Applies a segment to its receiver's side `r` (after its payload was stored): the state
/// machine, with `end_reason` telling whether the segment's RST was believed.
/// Always inlined: out of line (LLVM's choice since the disorder rules grew it), the calls
/// of the per-packet path cost about 20% of the 64-byte engine bench (BENCHMARKS.md).
#[inline(always)]
pub(crate) fn on_receive(
    r: &mut SideState,
    receiver: Side,
    partial: bool,
    end_reason: Option<EndReason>,
    seg: &TcpSegment<'_>,
) -> Transition {
    let flags = seg.flags;
    let rst_valid = flags.rst() && end_reason == Some(EndReason::Rst);
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
            } else if st == TcpState::SynSent {
                // Simultaneous open, or the server's half of a split handshake: the peer
                // answers a SYN with a SYN (RFC 793 §3.4), as mOS tracks it too.
                st = TcpState::SynRcvd;
            } else {
                ctl_rexmit = true;
            }
        } else if flags.syn() {
            // The segment acknowledges this side's own SYN (RFC 793's acceptable ACK in
            // SYN_RCVD): the last step of a simultaneous or split open. Tested here only,
            // not on every packet.
            let acks_my_syn = r.syn_seen && seg.ack == r.tx_isn.wrapping_add(1);
            if st == TcpState::SynSent || (st == TcpState::SynRcvd && acks_my_syn) {
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
    if (r.state == TcpState::Closed && old != TcpState::Closed) || r.state == TcpState::TimeWait {
        r.finished = true;
    }
    Transition {
        change: (r.state != old).then_some(r.state),
        conn_start,
        ctl_rexmit,
    }
}

/// Whether a RST with `seq` is within the window of `receiver` (blind RSTs are ignored).
pub(crate) fn rst_in_window(receiver: &SideState, seq: u32) -> bool {
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

pub(crate) fn receiver_window(s: &SideState) -> u32 {
    s.window.max(65_535).max(s.capacity)
}

/// Sets where the stream `r` receives starts (the first segment seen, or a SYN before
/// any byte of it) and returns the stream offset of `data_seq` (0 if before the start).
#[inline]
pub(crate) fn stream_offset(r: &mut SideState, flags: TcpFlags, data_seq: u32) -> u64 {
    // A SYN defines the stream's start, unless bytes of it were already seen.
    let rebase = flags.syn() && r.buf.is_none() && r.rx_next == 0;
    if !r.rx_base_known || (rebase && !flags.rst()) {
        r.rx_base = data_seq;
        r.rx_base_known = true;
    }
    r.offset_of(data_seq).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::testing;

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN;
    const RST: u8 = TcpFlags::RST;

    fn seg(flags: u8, seq: u32, ack: u32) -> TcpSegment<'static> {
        testing::seg(true, flags, seq, ack, &[])
    }

    /// A connection's two sides, as a new (not partial) flow starts them.
    struct Conn {
        sides: [SideState; 2],
        end: Option<EndReason>,
        rst_ignored: u64,
    }

    impl Conn {
        fn new() -> Conn {
            Conn {
                sides: [
                    SideState::new(TcpState::Closed, 0, OverlapPolicy::First),
                    SideState::new(TcpState::Listen, 0, OverlapPolicy::First),
                ],
                end: None,
                rst_ignored: 0,
            }
        }

        /// What the engine does per segment (no payload here): sender, then receiver.
        fn packet(&mut self, from: Side, s: TcpSegment<'_>) -> (Transition, Transition) {
            let data_seq = s.seq.wrapping_add(u32::from(s.flags.syn()));
            let snd = on_send(
                &mut self.sides,
                &mut self.end,
                false,
                from,
                &s,
                data_seq,
                &mut self.rst_ignored,
            );
            let r = &mut self.sides[from.peer().index()];
            if !r.rx_base_known {
                r.rx_base = data_seq;
                r.rx_base_known = true;
            }
            let rcv = on_receive(r, from.peer(), false, self.end, &s);
            (snd, rcv)
        }

        fn states(&self) -> (TcpState, TcpState) {
            (self.sides[0].state, self.sides[1].state)
        }
    }

    use Side::{Client, Server};
    use TcpState::*;

    #[test]
    fn handshake_then_fin_close() {
        let mut c = Conn::new();
        let (snd, rcv) = c.packet(Client, seg(SYN, 100, 0));
        assert!(snd.conn_start && rcv.conn_start);
        assert_eq!((snd.change, rcv.change), (Some(SynSent), Some(SynRcvd)));
        c.packet(Server, seg(SYN | ACK, 500, 101));
        assert_eq!(c.states(), (Established, SynRcvd));
        c.packet(Client, seg(ACK, 101, 501));
        assert_eq!(c.states(), (Established, Established));
        // Client closes; the server acknowledges, then closes too.
        c.packet(Client, seg(FIN | ACK, 101, 501));
        assert_eq!(c.states(), (FinWait1, CloseWait));
        c.packet(Server, seg(ACK, 501, 102));
        assert_eq!(c.states(), (FinWait2, CloseWait));
        c.packet(Server, seg(FIN | ACK, 501, 102));
        assert_eq!(c.states(), (TimeWait, LastAck));
        assert!(c.sides[0].finished && !c.sides[1].finished);
        let (_, rcv) = c.packet(Client, seg(ACK, 102, 502));
        assert_eq!(rcv.change, Some(Closed));
        assert!(c.sides[1].finished);
        assert_eq!(c.end, None, "a FIN close sets no end reason here");
    }

    #[test]
    fn simultaneous_close_goes_through_closing() {
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        c.packet(Server, seg(SYN | ACK, 500, 101));
        c.packet(Client, seg(ACK, 101, 501));
        c.packet(Client, seg(FIN | ACK, 101, 501));
        // The server's FIN crosses the client's: it does not acknowledge it.
        c.packet(Server, seg(FIN | ACK, 501, 101));
        assert_eq!(c.states(), (Closing, LastAck));
        c.packet(Server, seg(ACK, 502, 102));
        assert_eq!(c.sides[0].state, TimeWait);
    }

    #[test]
    fn repeated_syn_and_fin_are_control_retransmissions() {
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        let (_, rcv) = c.packet(Client, seg(SYN, 100, 0));
        assert!(rcv.ctl_rexmit && !rcv.conn_start && rcv.change.is_none());
        c.packet(Server, seg(SYN | ACK, 500, 101));
        c.packet(Client, seg(ACK, 101, 501));
        c.packet(Client, seg(FIN | ACK, 101, 501));
        let (_, rcv) = c.packet(Client, seg(FIN | ACK, 101, 501));
        assert!(rcv.ctl_rexmit);
    }

    #[test]
    fn simultaneous_open_goes_through_syn_rcvd_on_both_sides() {
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        // The server answers with a SYN of its own: the client moves as RFC 793 says.
        let (snd, rcv) = c.packet(Server, seg(SYN, 500, 0));
        assert_eq!((snd.change, rcv.change), (None, Some(SynRcvd)));
        assert!(!rcv.ctl_rexmit && !rcv.conn_start);
        // Each SYN/ACK acknowledges the other's SYN: ESTABLISHED at its receiver.
        c.packet(Client, seg(SYN | ACK, 100, 501));
        assert_eq!(c.states(), (SynRcvd, Established));
        let (_, rcv) = c.packet(Server, seg(SYN | ACK, 500, 101));
        assert_eq!((rcv.change, rcv.ctl_rexmit), (Some(Established), false));
        // A SYN/ACK seen again is a retransmission.
        let (_, rcv) = c.packet(Server, seg(SYN | ACK, 500, 101));
        assert!(rcv.ctl_rexmit && rcv.change.is_none());
    }

    #[test]
    fn split_handshakes_four_and_five_way() {
        // 4-way: SYN, SYN, SYN/ACK, ACK.
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        c.packet(Server, seg(SYN, 500, 0));
        c.packet(Client, seg(SYN | ACK, 100, 501));
        assert_eq!(c.states(), (SynRcvd, Established));
        let (_, rcv) = c.packet(Server, seg(ACK, 501, 101));
        assert_eq!(rcv.change, Some(Established));
        // 5-way: SYN, ACK, SYN, SYN/ACK, ACK. The bare ACK does not open the client.
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        let (snd, rcv) = c.packet(Server, seg(ACK, 400, 101));
        assert_eq!((snd.change, rcv.change), (Some(Established), None));
        c.packet(Server, seg(SYN, 500, 0));
        assert_eq!(c.states(), (SynRcvd, Established));
        let (_, rcv) = c.packet(Client, seg(SYN | ACK, 100, 501));
        assert!(
            rcv.ctl_rexmit,
            "the server is open already: the SYN/ACK is a repeat"
        );
        c.packet(Server, seg(ACK, 501, 101));
        assert_eq!(c.states(), (Established, Established));
    }

    #[test]
    fn a_synack_not_acking_this_sides_syn_is_a_retransmission() {
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        c.packet(Server, seg(SYN, 500, 0));
        // Acknowledges something else than the server's SYN: no handshake step.
        let (_, rcv) = c.packet(Client, seg(SYN | ACK, 100, 9999));
        assert_eq!((rcv.change, rcv.ctl_rexmit), (None, true));
        assert_eq!(c.states(), (SynRcvd, SynRcvd));
    }

    #[test]
    fn rst_is_believed_only_within_the_window() {
        let mut c = Conn::new();
        c.packet(Client, seg(SYN, 100, 0));
        c.packet(Server, seg(SYN | ACK, 500, 101));
        c.packet(Client, seg(ACK, 101, 501));
        // A blind RST far outside the server's window: ignored, nothing changes.
        let (snd, rcv) = c.packet(Client, seg(RST, 101 + (1 << 20), 0));
        assert_eq!((snd.change, rcv.change), (None, None));
        assert_eq!((c.rst_ignored, c.end), (1, None));
        assert_eq!(c.states(), (Established, Established));
        // At the expected sequence number: both sides close, the reason is Rst.
        let (snd, rcv) = c.packet(Client, seg(RST, 101, 0));
        assert_eq!((snd.change, rcv.change), (Some(Closed), Some(Closed)));
        assert_eq!(c.end, Some(EndReason::Rst));
        assert!(c.sides[0].finished && c.sides[1].finished);
    }

    #[test]
    fn rst_window_edges() {
        let mut r = SideState::new(TcpState::Established, 0, OverlapPolicy::First);
        // Nothing known about the receiver's stream: believed.
        assert!(rst_in_window(&r, 12345));
        r.rx_base = 1000;
        r.rx_base_known = true;
        r.window = 100;
        let w = receiver_window(&r);
        assert_eq!(w, 65_535, "at least the largest unscaled window");
        assert!(rst_in_window(&r, 1000));
        assert!(rst_in_window(&r, 1000 + w));
        assert!(!rst_in_window(&r, 1000 + w + 1));
        assert!(rst_in_window(&r, 1000u32.wrapping_sub(w)));
        assert!(!rst_in_window(&r, 1000u32.wrapping_sub(w + 1)));
        // Exactly what the receiver last acknowledged is believed, even far away.
        r.tx_ack = 1_000_000;
        r.tx_ack_seen = true;
        assert!(rst_in_window(&r, 1_000_000));
        // A larger capacity or scaled window widens it.
        r.capacity = 1 << 20;
        assert_eq!(receiver_window(&r), 1 << 20);
    }

    #[test]
    fn offsets_keep_growing_across_the_wrap() {
        let mut r = SideState::new(TcpState::Established, 0, OverlapPolicy::First);
        r.rx_base = u32::MAX - 10;
        r.rx_base_known = true;
        assert_eq!(r.offset_of(u32::MAX - 10), 0);
        assert_eq!(r.offset_of(5), 16);
        r.rx_next = 1 << 32;
        assert_eq!(r.offset_of(u32::MAX - 10 + 1), (1 << 32) + 1);
        assert_eq!(r.offset_of(u32::MAX - 20), (1 << 32) - 10);
    }

    #[test]
    fn stream_starts_at_the_syn_unless_bytes_came_first() {
        let mut r = SideState::new(TcpState::Listen, 0, Default::default());
        assert_eq!(stream_offset(&mut r, TcpFlags(TcpFlags::SYN), 1000), 0);
        assert_eq!((r.rx_base, r.rx_base_known), (1000, true));
        assert_eq!(stream_offset(&mut r, TcpFlags(TcpFlags::ACK), 1010), 10);
        assert_eq!(
            stream_offset(&mut r, TcpFlags(TcpFlags::ACK), 990),
            0,
            "before the start"
        );
        r.rx_next = 5;
        assert_eq!(stream_offset(&mut r, TcpFlags(TcpFlags::SYN), 2000), 1000);
        assert_eq!(
            r.rx_base, 1000,
            "a late SYN does not move a stream with bytes"
        );
    }
}
