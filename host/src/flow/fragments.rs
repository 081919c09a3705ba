//! IP fragments on their way into the engine (SPEC §7): the defragmenter holds them; the
//! datagram its last fragment completes is decoded and goes through `on_segment` like a
//! packet of its own, or, on a live multi-core source, to the core that owns its flow
//! ([`Engine::set_handoff`]); fragments that overlapped with differing bytes raise
//! `Error(IpOverlap)` on the flow's receiving side.
//!
//! Owns: the fragment path of [`Engine`] (`on_fragment`, `on_datagram`, `on_handed`). Out
//! of line and cold: an unfragmented packet pays one check for it. Must not: decide what
//! the defragmenter keeps (`crate::ip::defrag` does) or track flows.

use super::dispatch::Order;
use super::engine::{Engine, Handed, HandoffRoute};
use super::key::{symmetric_hash, Addr, FlowKey};
use super::types::*;
use crate::io::shard::shard_of;
use crate::ip::{Defragmenter, Outcome};
use crate::wire::{self, Decoded, LinkType, TcpSegment};

impl Engine {
    /// An IP fragment: held by the defragmenter, or the last one of its datagram, which is
    /// then decoded and processed like a packet of its own. Out of line: the common
    /// unfragmented path pays nothing for it.
    #[cold]
    #[inline(never)]
    pub(crate) fn on_fragment(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64) {
        // In a replay every core sees every fragment (see `Config::replay_cores`): core 0
        // counts them, so that the cores' counters still add up to the capture's.
        let cores = self.core.cfg.replay_cores;
        let counts = cores <= 1 || self.core.cfg.core == 0;
        if counts {
            self.core.stats.ip_fragments += 1;
        } else {
            self.core.stats.packets -= 1;
            self.core.stats.bytes -= frame.len() as u64;
        }
        let Some(link) = link else {
            return;
        };
        let mut datagram = std::mem::take(&mut self.datagram);
        let complete = match self.defrag.push(link, frame, ts) {
            Outcome::Complete(dg) => {
                datagram.clear();
                datagram.extend_from_slice(dg.frame);
                Some(dg.overlap_differs)
            }
            _ => None,
        };
        if counts {
            self.core.stats.defrag = *self.defrag.stats();
        }
        if let Some(overlap_differs) = complete {
            self.on_datagram(link, &datagram, ts, overlap_differs, counts);
        }
        self.datagram = datagram;
    }

    /// A datagram the defragmenter completed: processed here if its flow is this core's,
    /// else left to the core that owns it (a replay, where every core reassembles every
    /// datagram) or handed to it (a live source, [`Engine::set_handoff`]).
    pub(crate) fn on_datagram(
        &mut self,
        link: LinkType,
        datagram: &[u8],
        ts: u64,
        overlap_differs: bool,
        counts: bool,
    ) {
        match wire::decode(link, datagram) {
            Ok(Decoded::Tcp(seg)) => {
                let here = match self.handoff.as_mut() {
                    Some(route) => match route(link, datagram, ts, overlap_differs) {
                        Handed::Here => true,
                        Handed::Sent => {
                            self.core.stats.handed_off += 1;
                            false
                        }
                        Handed::Dropped => {
                            self.core.stats.handoff_dropped += 1;
                            false
                        }
                    },
                    None => {
                        let cores = self.core.cfg.replay_cores;
                        cores <= 1
                            || shard_of(
                                symmetric_hash(seg.src, seg.src_port, seg.dst, seg.dst_port),
                                cores,
                            ) == usize::from(self.core.cfg.core)
                    }
                };
                if here {
                    self.datagram_segment(&seg, datagram, ts, overlap_differs);
                }
            }
            Ok(_) if counts => self.core.stats.not_tcp += 1,
            Err(_) if counts => self.core.stats.malformed += 1,
            Ok(_) | Err(_) => {}
        }
    }

    pub(crate) fn datagram_segment(
        &mut self,
        seg: &TcpSegment<'_>,
        datagram: &[u8],
        ts: u64,
        overlap_differs: bool,
    ) {
        if self.core.cfg.verify_checksums && wire::tcp_checksum_ok(datagram, seg) == Some(false) {
            self.core.stats.bad_checksum += 1;
        } else {
            self.on_segment(seg, datagram, ts);
            if overlap_differs {
                self.ip_overlap(seg, datagram);
            }
        }
    }

    /// Live multi-core sources: the fragments of a datagram all reach one core (only the
    /// first carries the ports the sharding hash needs), which reassembles it. `route` says
    /// whose flow it is, the source's way (`worker::handoff`), and sends it there if not
    /// this core's; that core processes it with [`Engine::on_handed`]. Counted as
    /// `handed_off` and `handoff_dropped`. Without a route, a datagram is processed here
    /// (or, in a replay, by the core of its flow: every core reassembles every datagram).
    pub fn set_handoff(&mut self, route: HandoffRoute) {
        self.handoff = Some(route);
    }

    /// A datagram another core reassembled for a flow of this core (see
    /// [`Engine::set_handoff`]). Its fragments were counted as packets where they arrived.
    pub fn on_handed(&mut self, link: LinkType, datagram: &[u8], ts: u64, overlap_differs: bool) {
        self.core.stats.handed_in += 1;
        self.core.now = self.core.now.max(ts);
        match wire::decode(link, datagram) {
            Ok(Decoded::Tcp(seg)) => self.datagram_segment(&seg, datagram, ts, overlap_differs),
            Ok(_) | Err(_) => self.core.stats.malformed += 1,
        }
    }

    /// A datagram whose fragments overlapped with bytes that differ was processed: an
    /// evasion attempt, raised to the monitors of its flow (if it has one).
    pub(crate) fn ip_overlap(&mut self, seg: &TcpSegment<'_>, datagram: &[u8]) {
        let src = Addr::from_ip(seg.src);
        let dst = Addr::from_ip(seg.dst);
        let (key, src_is_lo) = FlowKey::new(src, seg.src_port, dst, seg.dst_port);
        let Some(slot) = self.core.table.lookup(&key, key.hash()) else {
            return;
        };
        let sender = if src_is_lo == self.core.table.flow(slot).client_is_lo {
            Side::Client
        } else {
            Side::Server
        };
        let order = if sender == Side::Client {
            Order::Load
        } else {
            Order::Reverse
        };
        self.error(
            slot,
            sender.peer(),
            ErrorKind::IpOverlap,
            order,
            Some(datagram),
        );
    }

    /// The defragmenter's settings and state (counters are in [`Engine::stats`]).
    pub fn defragmenter(&self) -> &Defragmenter {
        &self.defrag
    }
}
