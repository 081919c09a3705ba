//! Datagrams one core reassembled for a flow of another core.
//!
//! A live source shards by a hash the fragments of a datagram cannot all carry: only the
//! first fragment has the ports. The shm producer sends every fragment to ring 0, and the
//! AF_PACKET fanout program (and a NIC's RSS) hashes them by their addresses alone. So every
//! fragment of a datagram reaches one core, which reassembles it, but the datagram's flow may
//! live on another core. That core gets the datagram through its port (an [`Outbox`] per peer, one [`Inbox`]): one bounded
//! channel per pair of cores, whose buffers go back to the sender once processed, so the path
//! allocates only its first [`BUFFERS_PER_PAIR`] buffers per pair. A capture replay needs
//! none of this: every core reads every fragment (see
//! [`crate::flow::Config::replay_cores`]).
//!
//! Owns the channels and the buffer pool. Must not: block (a full channel drops the
//! datagram and counts it, as a full ring drops a frame), or run on the fast path: only
//! completed datagrams of fragmented packets take it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::Handed;
use crate::io::shard;
use crate::wire::LinkType;

/// Buffers (and channel slots) per ordered pair of cores: datagrams in flight from one core
/// to another, enough for a burst of fragmented traffic while the receiving core is busy
/// with a batch (the receiver takes them at every batch).
pub const BUFFERS_PER_PAIR: usize = 1024;

/// How long a sender waits for room in a full channel (the receiving core drains it at every
/// batch, and when idle at every poll) before it drops the datagram. Bounded, so two cores
/// sending to each other cannot wait on each other for longer.
pub const FULL_WAIT: Duration = Duration::from_millis(20);

/// How long an ending core keeps taking datagrams from cores still running.
pub const END_GRACE: Duration = Duration::from_secs(2);

/// One reassembled datagram on its way to its flow's core.
#[derive(Debug)]
pub struct Parcel {
    /// Its link type.
    pub link: LinkType,
    /// The timestamp of its last fragment.
    pub ts: u64,
    /// Its fragments overlapped with bytes that differ (an evasion attempt, raised on its
    /// flow).
    pub overlap_differs: bool,
    /// The datagram's frame (link header, rewritten IP header, payload).
    pub frame: Vec<u8>,
}

/// What one ordered pair of cores shares, seen from the sender.
struct Outgoing {
    parcels: SyncSender<Parcel>,
    /// The receiver's count of datagrams waiting for it.
    waiting: Arc<AtomicUsize>,
    empties: Receiver<Vec<u8>>,
    made: usize,
}

/// What one ordered pair of cores shares, seen from the receiver.
struct Incoming {
    parcels: Receiver<Parcel>,
    empties: SyncSender<Vec<u8>>,
}

/// How a source shards, so that a datagram goes where the source sends its flow's other
/// packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owner {
    /// The symmetric flow hash modulo the cores (the shm producer, [`shard::frame_shard`]).
    #[default]
    FlowHash,
    /// The AF_PACKET fanout program's hash modulo the sockets, which joined the group in
    /// core order ([`shard::fanout_hash`]).
    Fanout,
}

impl Owner {
    /// The core of a whole (reassembled) frame among `cores`.
    pub fn of(self, link: LinkType, frame: &[u8], cores: usize) -> usize {
        match self {
            Owner::FlowHash => shard::frame_shard(link, frame, cores),
            Owner::Fanout => {
                let (proto, net) = match link {
                    LinkType::Ethernet => {
                        let mut at = 12;
                        // A tag the capture kept: the fanout program sees past it.
                        while matches!(frame.get(at..at + 2), Some([0x81, 0x00] | [0x88, 0xa8])) {
                            at += 4;
                        }
                        match frame.get(at..at + 2) {
                            Some(&[a, b]) => (u16::from_be_bytes([a, b]), &frame[at + 2..]),
                            _ => return 0,
                        }
                    }
                    LinkType::RawIp => match frame.first().map(|b| b >> 4) {
                        Some(4) => (0x0800, frame),
                        Some(6) => (0x86dd, frame),
                        _ => return 0,
                    },
                    _ => return 0,
                };
                (shard::fanout_hash(proto, net) as usize) % cores.max(1)
            }
        }
    }
}

/// A core's sending ends of the channels to every other core (held by its engine).
pub struct Outbox {
    out: Vec<Option<Outgoing>>,
    core: usize,
    owner: Owner,
}

/// A core's receiving ends of the channels from every other core (held by its worker loop).
pub struct Inbox {
    inc: Vec<Option<Incoming>>,
    /// Datagrams waiting, from every sender.
    waiting: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    cores: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

/// The outboxes and inboxes of `cores` cores, index = core.
pub fn ports(cores: usize) -> Vec<(Outbox, Inbox)> {
    let ended = Arc::new(AtomicUsize::new(0));
    let mut ports: Vec<(Outbox, Inbox)> = (0..cores)
        .map(|_| {
            (
                Outbox {
                    out: (0..cores).map(|_| None).collect(),
                    core: 0,
                    owner: Owner::FlowHash,
                },
                Inbox {
                    inc: (0..cores).map(|_| None).collect(),
                    waiting: Arc::new(AtomicUsize::new(0)),
                    ended: Arc::clone(&ended),
                    cores,
                },
            )
        })
        .collect();
    for (core, port) in ports.iter_mut().enumerate() {
        port.0.core = core;
    }
    for from in 0..cores {
        for to in 0..cores {
            if from == to {
                continue;
            }
            let (ptx, prx) = sync_channel(BUFFERS_PER_PAIR);
            let (etx, erx) = sync_channel(BUFFERS_PER_PAIR);
            let waiting = Arc::clone(&ports[to].1.waiting);
            ports[from].0.out[to] = Some(Outgoing {
                parcels: ptx,
                waiting,
                empties: erx,
                made: 0,
            });
            ports[to].1.inc[from] = Some(Incoming {
                parcels: prx,
                empties: etx,
            });
        }
    }
    ports
}

impl Outbox {
    /// Sets how the source shards (the default is [`Owner::FlowHash`]).
    pub fn set_owner(&mut self, owner: Owner) {
        self.owner = owner;
    }

    /// Routes a reassembled datagram: processed here if its flow is this core's, else sent
    /// to its flow's core (see [`Outbox::send`]).
    pub fn route(
        &mut self,
        link: LinkType,
        frame: &[u8],
        ts: u64,
        overlap_differs: bool,
    ) -> Handed {
        let to = self.owner.of(link, frame, self.out.len());
        if to == self.core {
            Handed::Here
        } else if self.send(to, link, frame, ts, overlap_differs) {
            Handed::Sent
        } else {
            Handed::Dropped
        }
    }

    /// Sends a copy of `frame` to core `to`; false (the datagram is dropped) when `to` is
    /// this core, unknown, gone, or still has [`BUFFERS_PER_PAIR`] datagrams not processed
    /// after [`FULL_WAIT`].
    pub fn send(
        &mut self,
        to: usize,
        link: LinkType,
        frame: &[u8],
        ts: u64,
        overlap_differs: bool,
    ) -> bool {
        let Some(Some(out)) = self.out.get_mut(to) else {
            return false;
        };
        // A buffer: one the receiver gave back, a new one while fewer than the bound
        // exist, or (all of them waiting at the receiver) one given back within FULL_WAIT.
        let mut since: Option<Instant> = None;
        let mut buf = loop {
            match out.empties.try_recv() {
                Ok(b) => break b,
                Err(_) if out.made < BUFFERS_PER_PAIR => {
                    out.made += 1;
                    break Vec::with_capacity(frame.len());
                }
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => {
                    let started = *since.get_or_insert_with(Instant::now);
                    if started.elapsed() >= FULL_WAIT {
                        return false;
                    }
                    std::thread::yield_now();
                }
            }
        };
        buf.clear();
        buf.extend_from_slice(frame);
        let parcel = Parcel {
            link,
            ts,
            overlap_differs,
            frame: buf,
        };
        // The channel holds as many parcels as there are buffers: it is never full here.
        match out.parcels.try_send(parcel) {
            Ok(()) => {
                out.waiting.fetch_add(1, Ordering::Release);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // Dropped, and its buffer with it (a new one is made later).
                out.made -= 1;
                false
            }
        }
    }
}

impl Inbox {
    /// Whether datagrams wait (one atomic load: the idle loop asks at every poll).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    /// Hands every datagram waiting from the other cores to `each`, then returns its buffer
    /// to its sender. Returns how many there were.
    pub fn drain(&mut self, mut each: impl FnMut(&Parcel)) -> usize {
        let mut n = 0;
        for inc in self.inc.iter_mut().flatten() {
            while let Ok(p) = inc.parcels.try_recv() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                each(&p);
                n += 1;
                // The sender may be gone (it ended): the buffer is then freed here.
                let _ = inc.empties.try_send(p.frame);
            }
        }
        n
    }

    /// This core's source ended: keeps draining while other cores still run (they may send
    /// datagrams of this core's flows until they end too), for at most `grace`.
    pub fn finish(&mut self, grace: Duration, mut each: impl FnMut(&Parcel)) {
        self.ended.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + grace;
        loop {
            let all_ended = self.ended.load(Ordering::Acquire) >= self.cores;
            self.drain(&mut each);
            if all_ended || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // What was sent before the last sender ended.
        self.drain(&mut each);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_their_core_and_buffers_come_back() {
        let mut ports = ports(3);
        let frame = vec![7u8; 1500];
        for i in 0..10u64 {
            assert!(ports[0].0.send(2, LinkType::RawIp, &frame, i, i == 3));
        }
        assert!(
            !ports[0].0.send(0, LinkType::RawIp, &frame, 0, false),
            "self"
        );
        assert!(
            !ports[0].0.send(9, LinkType::RawIp, &frame, 0, false),
            "unknown"
        );
        let mut got = Vec::new();
        assert_eq!(ports[1].1.drain(|_| panic!("nothing for core 1")), 0);
        assert_eq!(
            ports[2]
                .1
                .drain(|p| got.push((p.ts, p.overlap_differs, p.frame.len()))),
            10
        );
        assert_eq!(got.len(), 10);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, g)| g.0 == i as u64 && g.1 == (i == 3) && g.2 == 1500));
        // The buffers went back: sending more makes no new ones.
        for _ in 0..BUFFERS_PER_PAIR {
            assert!(ports[0].0.send(2, LinkType::RawIp, &frame, 0, false));
        }
        assert!(ports[0].0.out[2].as_ref().unwrap().made <= BUFFERS_PER_PAIR);
    }

    #[test]
    fn a_core_that_does_not_drain_loses_datagrams_past_the_bound_only() {
        let mut ports = ports(2);
        let frame = [1u8; 100];
        let sent = (0..BUFFERS_PER_PAIR + 3)
            .filter(|_| ports[1].0.send(0, LinkType::Ethernet, &frame, 0, false))
            .count();
        assert_eq!(sent, BUFFERS_PER_PAIR);
        assert_eq!(ports[0].1.drain(|_| {}), BUFFERS_PER_PAIR);
        assert!(ports[1].0.send(0, LinkType::Ethernet, &frame, 0, false));
    }

    #[test]
    fn finish_waits_for_the_other_cores_then_takes_what_they_sent() {
        let mut ports = ports(2);
        let (mut o1, mut i1) = ports.pop().unwrap();
        let (_o0, mut p0) = ports.pop().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert!(o1.send(0, LinkType::RawIp, &[1, 2, 3], 5, false));
            i1.finish(Duration::from_secs(5), |_| {});
        });
        let mut n = 0;
        p0.finish(Duration::from_secs(5), |p| {
            assert_eq!(p.frame, [1, 2, 3]);
            n += 1;
        });
        t.join().unwrap();
        assert_eq!(n, 1);
    }
}
