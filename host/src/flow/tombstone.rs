//! Tombstones of closed connections: what a packet that arrives after its connection
//! closed (a late copy from a tap, a FIN retransmission, the last ACK) is checked against,
//! so that it is counted as `late` instead of opening a new, partial flow.
//!
//! Owns: [`Tombstones`], a fixed set-associative array (8 ways per set, the oldest entry
//! of a set is replaced) of the key, both directions' sequence spaces and the close time
//! (packet time) of flows that ended with FIN or RST. Bounded in count (`Config::
//! tombstones`) and in memory (allocated once), and forgotten after [`TOMBSTONE_TTL`].
//!
//! Must not: be consulted for a packet of a live flow (only on a flow-table miss, so a
//! live flow's packets cost nothing more), or keep anything that grows with traffic.

use super::key::FlowKey;
use super::types::Side;
use crate::wire::TcpSegment;

/// How long a tombstone answers for its connection (packet time, ns): twice a common
/// maximum segment lifetime (Linux keeps TIME_WAIT 60 s).
pub const TOMBSTONE_TTL: u64 = 120 * super::config::NANOS;

const WAYS: usize = 8;

/// The sequence space one direction of a closed connection used.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Space {
    pub(crate) known: bool,
    /// The first sequence number (the SYN's, when it was seen).
    pub(crate) first: u32,
    /// One past the last (the FIN counts).
    pub(crate) end: u32,
    /// This direction's SYN was seen (`first` is then its number).
    pub(crate) syn: bool,
}

impl Space {
    fn contains(&self, seq: u32) -> bool {
        self.known && seq.wrapping_sub(self.first) <= self.end.wrapping_sub(self.first)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Tomb {
    used: bool,
    client_is_lo: bool,
    key: FlowKey,
    closed: u64,
    /// Indexed by the sending side.
    spaces: [Space; 2],
    /// The side whose RST closed the connection.
    reset_by: Option<Side>,
    late: u32,
}

impl Tomb {
    /// Whether `seg` (from the `lo` endpoint when `src_is_lo`) belongs to this connection.
    fn is_late(&self, src_is_lo: bool, seg: &TcpSegment<'_>) -> bool {
        let sender = if src_is_lo == self.client_is_lo {
            Side::Client
        } else {
            Side::Server
        };
        let own = self.spaces[sender.index()];
        let other = self.spaces[sender.peer().index()];
        let flags = seg.flags;
        if flags.syn() {
            // Only the old SYN itself again: any other ISN is a new connection, even one
            // inside the old space (generated traffic, or an ISN clock that wrapped). The
            // stream's start names it, whether the flow saw the SYN or the tap delivered
            // it after the connection's other packets.
            if !(own.known && seg.seq == own.first) {
                return false;
            }
            // Except a bare SYN whose sender itself reset a connection its peer never
            // answered with a SYN: the sender took the peer's reply for a stale one (an
            // ACK of an older connection), reset it, and now retransmits the SYN, a new
            // attempt. A peer that refused the SYN (its RST) is not tried again with the
            // same ISN, so there a copy of the SYN is a late one.
            let retried = !flags.ack() && !other.syn && self.reset_by == Some(sender);
            !retried
        } else if own.known {
            // All of it in the old space: a segment that carries bytes past the old end
            // is new data (the connection went on, or a new one picked up mid-stream).
            let end = seg
                .seq
                .wrapping_add(seg.payload_len_on_wire)
                .wrapping_add(u32::from(flags.fin()));
            own.contains(seg.seq) && own.contains(end)
        } else {
            // A direction that sent nothing: its ACKs still name the other's space.
            flags.ack() && other.contains(seg.ack.wrapping_sub(1))
        }
    }
}

/// What a tombstone says about a packet of no live flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It belongs to the closed connection: count it, open nothing.
    Late,
    /// No tombstone, or a new connection on the same endpoints (a fresh ISN).
    New,
}

/// The tombstones of one engine.
pub(crate) struct Tombstones {
    sets: Vec<[Tomb; WAYS]>,
    mask: usize,
    /// Tombstones ever written (0: nothing to look up).
    written: u64,
}

impl Tombstones {
    /// Room for about `count` tombstones (0: none are kept).
    pub(crate) fn new(count: u32) -> Tombstones {
        let sets = if count == 0 {
            0
        } else {
            (count as usize).div_ceil(WAYS).next_power_of_two()
        };
        Tombstones {
            sets: vec![[Tomb::default(); WAYS]; sets],
            mask: sets.saturating_sub(1),
            written: 0,
        }
    }

    /// Records a connection closed at `now`; `spaces` are indexed by the sending side,
    /// `reset_by` is the side whose RST closed it.
    pub(crate) fn bury(
        &mut self,
        key: FlowKey,
        hash: u64,
        client_is_lo: bool,
        spaces: [Space; 2],
        reset_by: Option<Side>,
        now: u64,
    ) {
        if self.sets.is_empty() {
            return;
        }
        let set = &mut self.sets[hash as usize & self.mask];
        // Not over an older tombstone of the same endpoints: with port reuse, late copies
        // of the connection before may still come.
        let way = set
            .iter()
            .position(|t| !t.used)
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| set[w].closed).expect("WAYS > 0"));
        set[way] = Tomb {
            used: true,
            client_is_lo,
            key,
            closed: now,
            spaces,
            reset_by,
            late: 0,
        };
        self.written += 1;
    }

    /// Whether `seg` (from the `lo` endpoint when `src_is_lo`), which found no live flow,
    /// belongs to a connection that closed less than [`TOMBSTONE_TTL`] ago: a segment in
    /// the sequence space its sender used (or, for a side that sent nothing, an ACK of the
    /// other's), or that connection's SYN again (but for a SYN its sender retries after it
    /// reset a connection never answered with a SYN). Any other SYN starts a new connection;
    /// the tombstone stays for late copies of the old one (8 ways per set).
    #[inline]
    pub(crate) fn check(
        &mut self,
        key: &FlowKey,
        hash: u64,
        src_is_lo: bool,
        seg: &TcpSegment<'_>,
        now: u64,
    ) -> Verdict {
        if self.written == 0 {
            return Verdict::New;
        }
        let set = &mut self.sets[hash as usize & self.mask];
        for t in set.iter_mut().filter(|t| t.used && t.key == *key) {
            if now.saturating_sub(t.closed) > TOMBSTONE_TTL {
                t.used = false;
                continue;
            }
            if t.is_late(src_is_lo, seg) {
                t.late = t.late.saturating_add(1);
                return Verdict::Late;
            }
        }
        Verdict::New
    }

    /// Late packets counted against the tombstone of `key`, if it is still kept.
    #[cfg(test)]
    pub(crate) fn late_of(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        self.sets
            .get(hash as usize & self.mask)?
            .iter()
            .find(|t| t.used && t.key == *key)
            .map(|t| t.late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::testing::seg;
    use crate::wire::TcpFlags;

    fn key() -> (FlowKey, u64, bool) {
        let s = seg(true, 0, 0, 0, &[]);
        let (k, lo) = FlowKey::new(
            super::super::key::Addr::from_ip(s.src),
            s.src_port,
            super::super::key::Addr::from_ip(s.dst),
            s.dst_port,
        );
        (k, k.hash(), lo)
    }

    fn spaces() -> [Space; 2] {
        [
            Space {
                known: true,
                first: 100,
                end: 200,
                syn: true,
            },
            Space {
                known: true,
                first: 5000,
                end: 5100,
                syn: true,
            },
        ]
    }

    #[test]
    fn late_segments_of_either_side_are_late_until_the_ttl() {
        let (k, h, lo) = key();
        let mut t = Tombstones::new(16);
        let ack = TcpFlags::ACK;
        assert_eq!(
            t.check(&k, h, lo, &seg(true, ack, 150, 5100, &[]), 1),
            Verdict::New,
            "nothing buried yet"
        );
        t.bury(k, h, lo, spaces(), None, 10);
        assert_eq!(
            t.check(&k, h, lo, &seg(true, ack, 150, 5100, b"x"), 20),
            Verdict::Late
        );
        assert_eq!(
            t.check(
                &k,
                h,
                !lo,
                &seg(false, ack | TcpFlags::FIN, 5099, 200, &[]),
                20
            ),
            Verdict::Late,
            "the server's FIN again"
        );
        assert_eq!(t.late_of(&k, h), Some(2));
        assert_eq!(
            t.check(
                &k,
                h,
                lo,
                &seg(true, ack, 150, 5100, &[]),
                11 + TOMBSTONE_TTL
            ),
            Verdict::New,
            "forgotten after the TTL"
        );
        assert_eq!(t.late_of(&k, h), None);
    }

    #[test]
    fn a_syn_with_a_fresh_isn_is_a_new_connection() {
        let (k, h, lo) = key();
        let mut t = Tombstones::new(16);
        t.bury(k, h, lo, spaces(), None, 10);
        assert_eq!(
            t.check(&k, h, lo, &seg(true, TcpFlags::SYN, 100, 0, &[]), 20),
            Verdict::Late,
            "the old SYN again"
        );
        assert_eq!(
            t.check(&k, h, lo, &seg(true, TcpFlags::SYN, 150, 0, &[]), 20),
            Verdict::New,
            "a fresh ISN, even inside the old space"
        );
        // Kept: with port reuse, late copies of the old connection still come after the
        // new one started, and its own tombstone goes beside this one.
        assert_eq!(t.late_of(&k, h), Some(1));
        t.bury(k, h, lo, spaces(), None, 30);
        assert_eq!(
            t.check(&k, h, lo, &seg(true, TcpFlags::ACK, 120, 0, &[]), 40),
            Verdict::Late,
            "the older connection's ACK, after the newer one closed"
        );
    }

    #[test]
    fn a_tombstone_takes_80_bytes() {
        // docs/SPEC.md §3.1 states the memory: 65536 of them by default, per core.
        assert_eq!(std::mem::size_of::<Tomb>(), 80);
    }

    #[test]
    fn bounded_the_oldest_of_a_set_goes_first() {
        let mut t = Tombstones::new(WAYS as u32);
        assert_eq!(t.sets.len(), 1);
        let (k, _, lo) = key();
        let n = WAYS as u16 + 2;
        for i in 0..n {
            let kk = FlowKey {
                lo_port: k.lo_port.wrapping_add(i),
                ..k
            };
            t.bury(kk, 0, lo, spaces(), None, u64::from(i));
        }
        assert!(t.late_of(&k, 0).is_none(), "the first two were replaced");
        let second = FlowKey {
            lo_port: k.lo_port.wrapping_add(1),
            ..k
        };
        assert!(t.late_of(&second, 0).is_none());
        let last = FlowKey {
            lo_port: k.lo_port.wrapping_add(n - 1),
            ..k
        };
        assert_eq!(t.late_of(&last, 0), Some(0));
        assert_eq!(Tombstones::new(0).sets.len(), 0);
    }
}
