//! IPv4 and IPv6 fragment reassembly: bounded, policy-aware, sans-I/O.
//!
//! # What this module owns
//!
//! [`Defragmenter::push`] takes one captured frame with its packet time. A frame that is
//! not a fragment costs two header-byte tests and is handed back ([`Outcome::NotFragment`]);
//! a fragment is held until its datagram is whole, then the datagram comes back as one
//! contiguous frame ([`Datagram::frame`]) that [`crate::wire::decode`] parses with the same
//! link type: the link header of the first fragment, the IP header rewritten (IPv4: total
//! length, MF and offset cleared, header checksum recomputed; IPv6: payload length, the
//! Fragment header removed and its next header chained into the header before it), then
//! the payload.
//!
//! - **Keys**: IPv4 datagrams by (source, destination, protocol, identification), RFC 791;
//!   IPv6 by (source, destination, identification), RFC 8200 §4.5. Atomic IPv6 fragments
//!   (offset 0, M clear; RFC 6946) are not fragments: the decoder follows them.
//! - **Order**: fragments may come in any order, repeated, or overlapping. Overlapping
//!   bytes are resolved by the [`Policy`] (default [`Policy::First`]), counted, and a
//!   datagram whose overlapping bytes differed is marked ([`Datagram::overlap_differs`])
//!   so that the caller can raise it, since that is an evasion attempt (Ptacek & Newsham
//!   1998).
//! - **Dropped fragments**, each counted by [`DropReason`]: zero-length fragments, fragments
//!   ending past 65,535 bytes (RFC 791; RFC 8200 §4.5), non-last fragments not a multiple
//!   of 8 bytes (RFC 8200 §4.5), tiny TCP first fragments that do not hold the whole TCP
//!   header and IPv4 TCP fragments at offset 8 (RFC 1858 §3, RFC 3128; RFC 8200/7112 for
//!   IPv6's first fragment), truncated captures, and fragments that contradict the
//!   datagram's known end (the datagram is discarded with them, as Linux does).
//! - **Bounds**: a memory cap ([`Config::memory`]), fragments per datagram
//!   ([`Config::max_fragments`]) and datagrams in flight ([`Config::max_datagrams`]); past
//!   a bound the oldest datagram is evicted and counted. Datagrams time out in packet time,
//!   30 s (IPv4) and 60 s (IPv6) after their first fragment, as Linux's `ipfrag_time` and
//!   `ip6frag_time`. Growth is never unbounded and never fails: the cap is checked after
//!   every fragment.
//!
//! # What it must not do
//!
//! Read a clock, know about flows, TCP state or cores, or allocate for a frame that is not
//! a fragment. It keeps no frame after `push` returns: what it holds is copied.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::wire::{internet_checksum, network_offset, LinkType};

/// Nanoseconds per second: packet times are in ns.
const NANOS: u64 = 1_000_000_000;

/// IP protocol number of TCP.
const PROTO_TCP: u8 = 6;

/// The largest IP datagram (IPv4 total length, IPv6 payload length).
const MAX_DATAGRAM: usize = 0xffff;

/// IPv4 header fields.
mod v4 {
    pub(super) const MIN_LEN: usize = 20;
    pub(super) const TOTAL_LEN: usize = 2;
    pub(super) const ID: usize = 4;
    pub(super) const FLAGS_FRAG: usize = 6;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
    pub(super) const MF: u16 = 0x2000;
    pub(super) const OFFSET_MASK: u16 = 0x1fff;
}

/// IPv6 header fields and next-header values.
mod v6 {
    pub(super) const LEN: usize = 40;
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const SRC: usize = 8;
    pub(super) const DST: usize = 24;
    pub(super) const FRAG_LEN: usize = 8;
    pub(super) const FRAG_OFFSET_MASK: u16 = 0xfff8;
    pub(super) const FRAG_M: u16 = 0x0001;
    pub(super) const FRAGMENT: u8 = 44;
    pub(super) const AH: u8 = 51;
    /// Extension headers whose length is `(hdr_ext_len + 1) * 8`.
    pub(super) const GENERIC: [u8; 8] = [0, 43, 60, 135, 139, 140, 253, 254];
    /// Extension headers followed before giving up (as [`crate::wire::MAX_EXTENSION_HEADERS`]).
    pub(super) const MAX_HEADERS: usize = crate::wire::MAX_EXTENSION_HEADERS as usize;
}

/// Which copy of an overlapping byte a datagram keeps.
///
/// The target-based policies of Snort's frag3 and Suricata's defrag, after Novak,
/// "Target-Based Fragmentation Reassembly" (2005): each stack resolves overlaps its own
/// way, and an observer that resolves them differently from the receiver sees other bytes
/// than the receiver does. A byte held from an earlier ("original") fragment and covered
/// again by a later ("subsequent") one goes to the later one when:
///
/// | policy    | the subsequent fragment wins when                  | stacks (Snort/Suricata)   |
/// |-----------|----------------------------------------------------|---------------------------|
/// | `first`   | never                                              | Mac OS, HP-UX 11, old Solaris |
/// | `last`    | always                                             | Cisco IOS                 |
/// | `bsd`     | it starts before the original                      | BSD, AIX, HP-UX 10, IRIX  |
/// | `linux`   | it starts before the original or at the same offset| Linux (before 4.19)       |
/// | `windows` | it starts before and ends after the original        | Windows                   |
/// | `solaris` | it starts before and ends at or after the original  | Solaris                   |
///
/// "Original" is the fragment that holds the byte when the subsequent one arrives, by its
/// own offsets as sent. The unit tests replay Novak's 17-fragment scenario and check each
/// policy's result against the paper's. Stacks that follow RFC 5722 (IPv6, and Linux ≥ 4.19
/// for IPv4) discard a datagram with overlaps instead; none of these policies does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The byte first received is kept.
    #[default]
    First,
    /// The byte last received is kept.
    Last,
    /// The subsequent fragment wins when it starts before the original.
    Bsd,
    /// The subsequent fragment wins when it starts before or at the original's offset.
    Linux,
    /// The subsequent fragment wins when it starts before and ends after the original.
    Windows,
    /// The subsequent fragment wins when it starts before and ends at or after the original.
    Solaris,
}

impl Policy {
    /// Every policy, in the order of the table above.
    pub const ALL: [Policy; 6] = [
        Policy::First,
        Policy::Last,
        Policy::Bsd,
        Policy::Linux,
        Policy::Windows,
        Policy::Solaris,
    ];

    /// The policy's name as on the command line (`first`, `last`, `bsd`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Policy::First => "first",
            Policy::Last => "last",
            Policy::Bsd => "bsd",
            Policy::Linux => "linux",
            Policy::Windows => "windows",
            Policy::Solaris => "solaris",
        }
    }

    /// Whether a subsequent fragment covering `new` takes a byte held by the original
    /// fragment that covered `old` (both as `[start, end)` payload offsets).
    #[inline]
    fn subsequent_wins(self, new: (u32, u32), old: (u32, u32)) -> bool {
        match self {
            Policy::First => false,
            Policy::Last => true,
            Policy::Bsd => new.0 < old.0,
            Policy::Linux => new.0 <= old.0,
            Policy::Windows => new.0 < old.0 && new.1 > old.1,
            Policy::Solaris => new.0 < old.0 && new.1 >= old.1,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown defragmentation policy '{0}': one of first, last, bsd, linux, windows, solaris")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Bounds and policy of one defragmenter (one per core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes the held datagrams may take, bookkeeping included (default 8 MiB).
    pub memory: usize,
    /// Fragments one datagram may have (default 64: a 64 KiB datagram over a 1,280-byte
    /// IPv6 minimum MTU is 52).
    pub max_fragments: usize,
    /// Datagrams held at once (default 4,096).
    pub max_datagrams: usize,
    /// IPv4 datagram lifetime from its first fragment, ns of packet time (default 30 s).
    pub timeout_v4: u64,
    /// IPv6 datagram lifetime from its first fragment, ns of packet time (default 60 s).
    pub timeout_v6: u64,
    /// How overlapping bytes are resolved.
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            memory: 8 << 20,
            max_fragments: 64,
            max_datagrams: 4096,
            timeout_v4: 30 * NANOS,
            timeout_v6: 60 * NANOS,
            policy: Policy::First,
        }
    }
}

/// Why a fragment was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The capture holds less of the fragment than its IP header declares (snaplen).
    Truncated,
    /// A header length that contradicts itself (IPv4 total length below the header, an
    /// IPv6 extension header past the payload).
    Malformed,
    /// No payload bytes (RFC 791 and 8200 give a fragment no meaning without data).
    ZeroLength,
    /// The fragment ends past the largest datagram, 65,535 bytes.
    TooLarge,
    /// A TCP first fragment without the whole TCP header, or an IPv4 TCP fragment at
    /// offset 8, which can only rewrite the header's flags (RFC 1858, RFC 3128).
    Tiny,
    /// A fragment other than the last whose length is not a multiple of 8 (RFC 8200 §4.5).
    Unaligned,
    /// The fragment contradicts the datagram's end (a second, different last fragment, or
    /// data past the last one): the datagram is discarded with it.
    Inconsistent,
    /// The datagram would have more than [`Config::max_fragments`]: it is discarded.
    TooManyFragments,
    /// The datagram alone would exceed [`Config::memory`]: it is discarded.
    Memory,
}

impl DropReason {
    /// Number of reasons (the length of [`Stats::dropped`]).
    pub const COUNT: usize = 9;

    /// Every reason, in the order of [`Stats::dropped`].
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::ZeroLength,
        DropReason::TooLarge,
        DropReason::Tiny,
        DropReason::Unaligned,
        DropReason::Inconsistent,
        DropReason::TooManyFragments,
        DropReason::Memory,
    ];

    /// A stable snake_case name, for counters.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::ZeroLength => "zero_length",
            DropReason::TooLarge => "too_large",
            DropReason::Tiny => "tiny",
            DropReason::Unaligned => "unaligned",
            DropReason::Inconsistent => "inconsistent",
            DropReason::TooManyFragments => "too_many_fragments",
            DropReason::Memory => "memory",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The defragmenter's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Fragments pushed (kept or not).
    pub fragments: u64,
    /// Datagrams reassembled and handed out.
    pub reassembled: u64,
    /// Fragments whose bytes were all held already, with the same values.
    pub duplicates: u64,
    /// Other fragments that covered bytes already held.
    pub overlaps: u64,
    /// Fragments (duplicates or overlaps) whose overlapping bytes differed from those held.
    pub overlaps_differing: u64,
    /// Datagrams dropped because their time ran out.
    pub timeouts: u64,
    /// Datagrams dropped, oldest first, to stay within the memory or datagram bound.
    pub evictions: u64,
    /// Fragments dropped, by [`DropReason`] (index: the order of [`DropReason::ALL`]).
    pub dropped: [u64; DropReason::COUNT],
    /// Datagrams held now.
    pub in_flight: u64,
    /// Bytes held now (the figure bounded by [`Config::memory`]).
    pub memory: u64,
    /// The most bytes held at once.
    pub peak_memory: u64,
}

impl Stats {
    /// Fragments dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Fragments dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds another core's counters (gauges add up too: the cores' memory is separate).
    pub fn add(&mut self, o: &Stats) {
        self.fragments += o.fragments;
        self.reassembled += o.reassembled;
        self.duplicates += o.duplicates;
        self.overlaps += o.overlaps;
        self.overlaps_differing += o.overlaps_differing;
        self.timeouts += o.timeouts;
        self.evictions += o.evictions;
        for (a, b) in self.dropped.iter_mut().zip(o.dropped) {
            *a += b;
        }
        self.in_flight += o.in_flight;
        self.memory += o.memory;
        self.peak_memory += o.peak_memory;
    }
}

/// A reassembled datagram, borrowed from the defragmenter until its next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The whole datagram as a frame of the link type it came in.
    pub frame: &'a [u8],
    /// Packet time of the fragment that completed it.
    pub ts: u64,
    /// Fragments it was built from (duplicates and overlaps included).
    pub fragments: u16,
    /// Whether some fragments overlapped with bytes that differ: the datagram holds the
    /// bytes the policy chose, and another stack may have seen others.
    pub overlap_differs: bool,
}

/// What [`Defragmenter::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Not an IP fragment (or not IP): the caller decodes the frame itself.
    NotFragment,
    /// A fragment, held until its datagram is complete.
    Held,
    /// A fragment that was dropped (and counted).
    Dropped(DropReason),
    /// The fragment completed its datagram.
    Complete(Datagram<'a>),
}

/// A datagram's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    /// IPv4's protocol; 0 for IPv6, whose key has none.
    proto: u8,
    v6: bool,
}

/// A fragment, parsed from a frame it borrows.
struct Fragment<'a> {
    key: Key,
    start: u32,
    more: bool,
    data: &'a [u8],
    /// The frame up to the fragmentable part: the link header and IP header (IPv6: with
    /// the unfragmentable extension headers, without the Fragment header).
    head: &'a [u8],
    /// Where the IP header starts in `head`.
    l3: usize,
    /// IPv6: the byte of `head` that names the Fragment header as the next header.
    next_at: usize,
    /// The protocol of the payload (IPv6: the Fragment header's next header).
    next: u8,
}

/// Bytes `[start, end)` of a datagram's payload, taken from source fragment `src` (an
/// index into the datagram's `sources`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    start: u32,
    end: u32,
    src: u16,
}

/// A fragment kept for a datagram: its offsets as sent and the push it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Source {
    start: u32,
    end: u32,
    push: u64,
}

/// One datagram being reassembled.
#[derive(Debug)]
struct Tracker {
    /// Creation order (the age queues' key).
    seq: u64,
    deadline: u64,
    /// The first fragment's frame up to the fragmentable part; empty until it comes.
    head: Vec<u8>,
    l3: usize,
    next_at: usize,
    next: u8,
    /// The payload's length, once the last fragment is known.
    end: Option<u32>,
    /// Payload bytes by offset (those not in any piece are zero).
    buf: Vec<u8>,
    /// Disjoint, sorted, what each held byte came from.
    pieces: Vec<Piece>,
    sources: Vec<Source>,
    /// Bytes held (the pieces' total length).
    covered: u32,
    differs: bool,
    /// Bytes this tracker is charged against the memory cap.
    charge: usize,
}

/// What every held datagram costs besides its buffers: the tracker, its map entry and
/// its age-queue entry (estimated, on the safe side).
const TRACKER_OVERHEAD: usize =
    std::mem::size_of::<Tracker>() + 2 * std::mem::size_of::<Key>() + 64;

impl Tracker {
    fn measure(&self) -> usize {
        TRACKER_OVERHEAD
            + self.head.capacity()
            + self.buf.capacity()
            + self.pieces.capacity() * std::mem::size_of::<Piece>()
            + self.sources.capacity() * std::mem::size_of::<Source>()
    }
}

/// One source fragment's share of the datagram last handed out: payload bytes
/// `[start, end)` came from the fragment of push number `push` (see
/// [`Defragmenter::pushes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// First payload byte (offset in the datagram's payload).
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// The push number of the fragment the bytes came from.
    pub push: u64,
}

/// The defragmenter of one core: held datagrams, bounds, counters.
#[derive(Debug)]
pub struct Defragmenter {
    cfg: Config,
    trackers: HashMap<Key, Tracker>,
    /// Creation order per family (their timeouts differ): seq → key.
    age_v4: BTreeMap<u64, Key>,
    age_v6: BTreeMap<u64, Key>,
    next_seq: u64,
    now: u64,
    pushes: u64,
    stats: Stats,
    /// The datagram handed out last (reused).
    out: Vec<u8>,
    /// Scratch for the piece list being rebuilt (reused).
    scratch: Vec<Piece>,
    provenance: Vec<Provenance>,
}

impl Defragmenter {
    /// An empty defragmenter.
    pub fn new(cfg: Config) -> Defragmenter {
        Defragmenter {
            cfg,
            trackers: HashMap::new(),
            age_v4: BTreeMap::new(),
            age_v6: BTreeMap::new(),
            next_seq: 0,
            now: 0,
            pushes: 0,
            stats: Stats::default(),
            out: Vec::new(),
            scratch: Vec::new(),
            provenance: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Frames pushed so far that were fragments; the number of the next such push is this
    /// value (see [`Provenance::push`]).
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    /// Which source fragment each byte of the datagram last handed out came from, in
    /// payload order: disjoint, covering the payload exactly.
    pub fn provenance(&self) -> &[Provenance] {
        &self.provenance
    }

    /// Whether the IP packet at `ip` (the frame from the IP header on) is a fragment: two
    /// header-byte tests for IPv4, the extension-header walk for IPv6 only when the next
    /// header is not TCP. Never allocates.
    #[inline]
    pub fn is_fragment(ip: &[u8]) -> bool {
        match ip.first().map(|b| b >> 4) {
            Some(4) => ip.get(v4::FLAGS_FRAG..v4::FLAGS_FRAG + 2).is_some_and(|f| {
                u16::from_be_bytes([f[0], f[1]]) & (v4::MF | v4::OFFSET_MASK) != 0
            }),
            Some(6) => match ip.get(v6::NEXT_HEADER) {
                Some(&PROTO_TCP) | None => false,
                Some(_) => matches!(parse_v6(ip, 0), Ok(Some(_))),
            },
            _ => false,
        }
    }

    /// Processes one frame of link type `link` captured at `ts` (ns).
    ///
    /// Non-fragments come back as [`Outcome::NotFragment`] without being touched further.
    /// A fragment is checked, then held, dropped, or completes its datagram, which is
    /// returned and valid until the next call.
    pub fn push(&mut self, link: LinkType, frame: &[u8], ts: u64) -> Outcome<'_> {
        let Some(l3) = network_offset(link, frame) else {
            return Outcome::NotFragment;
        };
        let parsed = match frame.get(l3..).and_then(|ip| ip.first()).map(|b| b >> 4) {
            Some(4) => parse_v4(frame, l3),
            Some(6) => parse_v6(frame, l3),
            _ => return Outcome::NotFragment,
        };
        let frag = match parsed {
            Ok(None) => return Outcome::NotFragment,
            Ok(Some(f)) => f,
            Err(reason) => {
                self.stats.fragments += 1;
                self.pushes += 1;
                return self.drop_fragment(reason);
            }
        };
        self.stats.fragments += 1;
        let push = self.pushes;
        self.pushes += 1;
        self.now = self.now.max(ts);
        self.expire(self.now);
        if let Err(reason) = check(&frag) {
            return self.drop_fragment(reason);
        }
        self.insert(frag, push, ts)
    }

    /// Drops the datagrams whose time ran out by `now` (ns of packet time). [`push`]
    /// does this itself; callers with idle periods may call it from their timer.
    ///
    /// [`push`]: Defragmenter::push
    pub fn expire(&mut self, now: u64) {
        self.now = self.now.max(now);
        for v6 in [false, true] {
            loop {
                let age = if v6 { &self.age_v6 } else { &self.age_v4 };
                let Some((&seq, &key)) = age.first_key_value() else {
                    break;
                };
                match self.trackers.get(&key) {
                    Some(t) if t.seq == seq && t.deadline > self.now => break,
                    Some(t) if t.seq == seq => {
                        self.remove(&key);
                        self.stats.timeouts += 1;
                    }
                    // Not kept in step with the map: cannot happen, but must not loop.
                    _ => {
                        if v6 {
                            self.age_v6.remove(&seq);
                        } else {
                            self.age_v4.remove(&seq);
                        }
                    }
                }
            }
        }
    }

    fn drop_fragment(&mut self, reason: DropReason) -> Outcome<'_> {
        self.stats.dropped[reason.index()] += 1;
        Outcome::Dropped(reason)
    }

    /// Removes a datagram, returning its memory.
    fn remove(&mut self, key: &Key) -> Option<Tracker> {
        let t = self.trackers.remove(key)?;
        if key.v6 {
            self.age_v6.remove(&t.seq);
        } else {
            self.age_v4.remove(&t.seq);
        }
        self.stats.memory -= t.charge as u64;
        self.stats.in_flight -= 1;
        Some(t)
    }

    /// The oldest datagram other than `keep`.
    fn oldest_except(&self, keep: &Key) -> Option<Key> {
        let first = |age: &BTreeMap<u64, Key>| {
            age.iter()
                .find(|(_, k)| *k != keep)
                .map(|(seq, k)| (*seq, *k))
        };
        match (first(&self.age_v4), first(&self.age_v6)) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a.1 } else { b.1 }),
            (a, b) => a.or(b).map(|x| x.1),
        }
    }

    /// Evicts the oldest datagrams other than `keep` until the memory cap holds; false if
    /// `keep` alone is over it.
    fn enforce_memory(&mut self, keep: &Key) -> bool {
        while self.stats.memory > self.cfg.memory as u64 {
            let Some(victim) = self.oldest_except(keep) else {
                return false;
            };
            self.remove(&victim);
            self.stats.evictions += 1;
        }
        true
    }

    fn discard(&mut self, key: &Key, reason: DropReason) -> Outcome<'_> {
        self.remove(key);
        self.drop_fragment(reason)
    }

    fn insert(&mut self, frag: Fragment<'_>, push: u64, ts: u64) -> Outcome<'_> {
        let key = frag.key;
        if !self.trackers.contains_key(&key) {
            while self.trackers.len() >= self.cfg.max_datagrams.max(1) {
                let Some(victim) = self.oldest_except(&key) else {
                    break;
                };
                self.remove(&victim);
                self.stats.evictions += 1;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let timeout = if key.v6 {
                self.cfg.timeout_v6
            } else {
                self.cfg.timeout_v4
            };
            let t = Tracker {
                seq,
                deadline: self.now.saturating_add(timeout),
                head: Vec::new(),
                l3: 0,
                next_at: 0,
                next: 0,
                end: None,
                buf: Vec::new(),
                pieces: Vec::new(),
                sources: Vec::new(),
                covered: 0,
                differs: false,
                charge: TRACKER_OVERHEAD,
            };
            self.trackers.insert(key, t);
            if key.v6 {
                self.age_v6.insert(seq, key);
            } else {
                self.age_v4.insert(seq, key);
            }
            self.stats.in_flight += 1;
            self.stats.memory += TRACKER_OVERHEAD as u64;
        }
        let policy = self.cfg.policy;
        let max_fragments = self.cfg.max_fragments;
        let Some(t) = self.trackers.get_mut(&key) else {
            return Outcome::Held;
        };
        let start = frag.start;
        let end = start + frag.data.len() as u32;
        if t.sources.len() >= max_fragments.min(usize::from(u16::MAX)) {
            return self.discard(&key, DropReason::TooManyFragments);
        }
        // The datagram's end: known from the last fragment, never contradicted after.
        let held_end = t.pieces.last().map_or(0, |p| p.end);
        let consistent = match (t.end, frag.more) {
            (Some(e), true) => end <= e,
            (Some(e), false) => end == e,
            (None, true) => true,
            (None, false) => held_end <= end,
        };
        if !consistent {
            return self.discard(&key, DropReason::Inconsistent);
        }
        if !frag.more {
            t.end = Some(end);
        }
        if start == 0 && t.head.is_empty() {
            t.head.reserve_exact(frag.head.len());
            t.head.extend_from_slice(frag.head);
            t.l3 = frag.l3;
            t.next_at = frag.next_at;
            t.next = frag.next;
        }
        if t.buf.len() < end as usize {
            t.buf.reserve_exact(end as usize - t.buf.len());
            t.buf.resize(end as usize, 0);
        }
        let src = t.sources.len() as u16;
        t.sources.push(Source { start, end, push });

        // Rebuild the piece list with the new fragment's bytes: gaps are its own, held
        // bytes go to whichever fragment the policy picks.
        let scratch = &mut self.scratch;
        scratch.clear();
        let mut cur = start;
        let mut overlapped = false;
        let mut differs = false;
        let mut gap = false;
        for &p in &t.pieces {
            if p.end <= cur || p.start >= end {
                if p.start >= end && cur < end {
                    scratch.push(Piece {
                        start: cur,
                        end,
                        src,
                    });
                    gap = true;
                    cur = end;
                }
                scratch.push(p);
                continue;
            }
            if p.start > cur {
                scratch.push(Piece {
                    start: cur,
                    end: p.start,
                    src,
                });
                gap = true;
            }
            let lo = p.start.max(cur);
            let hi = p.end.min(end);
            if p.start < lo {
                scratch.push(Piece {
                    start: p.start,
                    end: lo,
                    src: p.src,
                });
            }
            overlapped = true;
            let held = &t.buf[lo as usize..hi as usize];
            let new = &frag.data[(lo - start) as usize..(hi - start) as usize];
            differs |= held != new;
            let old = t.sources[usize::from(p.src)];
            let winner = if policy.subsequent_wins((start, end), (old.start, old.end)) {
                src
            } else {
                p.src
            };
            scratch.push(Piece {
                start: lo,
                end: hi,
                src: winner,
            });
            if p.end > hi {
                scratch.push(Piece {
                    start: hi,
                    end: p.end,
                    src: p.src,
                });
            }
            cur = hi;
        }
        if cur < end {
            scratch.push(Piece {
                start: cur,
                end,
                src,
            });
            gap = true;
        }
        // Write the new fragment's winning bytes and merge neighbours of one source.
        t.pieces.clear();
        let mut covered = 0u32;
        for &p in scratch.iter() {
            if p.src == src {
                let (a, b) = ((p.start - start) as usize, (p.end - start) as usize);
                t.buf[p.start as usize..p.end as usize].copy_from_slice(&frag.data[a..b]);
            }
            covered += p.end - p.start;
            match t.pieces.last_mut() {
                Some(last) if last.src == p.src && last.end == p.start => last.end = p.end,
                _ => t.pieces.push(p),
            }
        }
        t.covered = covered;
        if overlapped {
            if gap {
                self.stats.overlaps += 1;
            } else {
                self.stats.duplicates += 1;
            }
            if differs {
                self.stats.overlaps_differing += 1;
                t.differs = true;
            }
        }

        let charge = t.measure();
        let old_charge = std::mem::replace(&mut t.charge, charge);
        let complete = t.end.is_some_and(|e| e == t.covered) && !t.head.is_empty();
        self.stats.memory = self.stats.memory - old_charge as u64 + charge as u64;
        // The cap holds at every instant, the moment a datagram completes too: a datagram
        // that alone is over it is discarded, complete or not.
        if !self.enforce_memory(&key) {
            return self.discard(&key, DropReason::Memory);
        }
        self.stats.peak_memory = self.stats.peak_memory.max(self.stats.memory);
        if !complete {
            return Outcome::Held;
        }
        let Some(t) = self.remove(&key) else {
            return Outcome::Held;
        };
        self.complete(t, ts)
    }

    /// Builds the datagram's frame from a complete tracker.
    fn complete(&mut self, t: Tracker, ts: u64) -> Outcome<'_> {
        let end = t.end.unwrap_or(0) as usize;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(&t.head);
        out.extend_from_slice(&t.buf[..end]);
        let ok = match out.get(t.l3).map(|b| b >> 4) {
            Some(4) => rewrite_v4(&mut out[t.l3..], end),
            Some(6) => rewrite_v6(out, t.l3, t.next_at, t.next, end),
            _ => false,
        };
        if !ok {
            return self.drop_fragment(DropReason::TooLarge);
        }
        self.provenance.clear();
        self.provenance.extend(t.pieces.iter().map(|p| Provenance {
            start: p.start,
            end: p.end,
            push: t.sources[usize::from(p.src)].push,
        }));
        self.stats.reassembled += 1;
        Outcome::Complete(Datagram {
            frame: &self.out,
            ts,
            fragments: t.sources.len() as u16,
            overlap_differs: t.differs,
        })
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Copies a 4- or 16-byte address into a key field.
fn addr(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..b.len()].copy_from_slice(b);
    a
}

/// An IPv4 fragment at `frame[l3..]`; `Ok(None)` when it is no fragment (or no header the
/// decoder would not reject first).
fn parse_v4(frame: &[u8], l3: usize) -> Result<Option<Fragment<'_>>, DropReason> {
    let Some(ip) = frame.get(l3..).filter(|ip| ip.len() >= v4::MIN_LEN) else {
        return Ok(None);
    };
    let flags = be16(ip, v4::FLAGS_FRAG);
    if flags & (v4::MF | v4::OFFSET_MASK) == 0 {
        return Ok(None);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < v4::MIN_LEN {
        return Ok(None);
    }
    if ip.len() < ihl {
        return Err(DropReason::Truncated);
    }
    let total = match usize::from(be16(ip, v4::TOTAL_LEN)) {
        0 => ip.len(),
        n => n,
    };
    if total < ihl {
        return Err(DropReason::Malformed);
    }
    let data = ip.get(ihl..total).ok_or(DropReason::Truncated)?;
    Ok(Some(Fragment {
        key: Key {
            src: addr(&ip[v4::SRC..v4::SRC + 4]),
            dst: addr(&ip[v4::DST..v4::DST + 4]),
            id: u32::from(be16(ip, v4::ID)),
            proto: ip[v4::PROTOCOL],
            v6: false,
        },
        start: u32::from(flags & v4::OFFSET_MASK) * 8,
        more: flags & v4::MF != 0,
        data,
        head: &frame[..l3 + ihl],
        l3,
        next_at: 0,
        next: ip[v4::PROTOCOL],
    }))
}

/// An IPv6 fragment at `frame[l3..]`: the extension headers are walked to the Fragment
/// header; `Ok(None)` when there is none, or an atomic one.
fn parse_v6(frame: &[u8], l3: usize) -> Result<Option<Fragment<'_>>, DropReason> {
    let Some(ip) = frame.get(l3..).filter(|ip| ip.len() >= v6::LEN) else {
        return Ok(None);
    };
    let payload = usize::from(be16(ip, v6::PAYLOAD_LEN));
    if payload == 0 {
        // A jumbogram: the decoder reports it.
        return Ok(None);
    }
    let declared_end = v6::LEN + payload;
    let mut next = ip[v6::NEXT_HEADER];
    let mut next_at = v6::NEXT_HEADER;
    let mut off = v6::LEN;
    for _ in 0..=v6::MAX_HEADERS {
        let len = if next == v6::FRAGMENT {
            if off + v6::FRAG_LEN > declared_end {
                return Err(DropReason::Malformed);
            }
            let fh = ip
                .get(off..off + v6::FRAG_LEN)
                .ok_or(DropReason::Truncated)?;
            let flags = be16(fh, 2);
            if flags & (v6::FRAG_OFFSET_MASK | v6::FRAG_M) == 0 {
                // Atomic: the decoder walks on.
                return Ok(None);
            }
            let data = ip
                .get(off + v6::FRAG_LEN..declared_end)
                .ok_or(DropReason::Truncated)?;
            return Ok(Some(Fragment {
                key: Key {
                    src: addr(&ip[v6::SRC..v6::SRC + 16]),
                    dst: addr(&ip[v6::DST..v6::DST + 16]),
                    id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
                    proto: 0,
                    v6: true,
                },
                start: u32::from(flags & v6::FRAG_OFFSET_MASK),
                more: flags & v6::FRAG_M != 0,
                data,
                head: &frame[..l3 + off],
                l3,
                next_at: l3 + next_at,
                next: fh[0],
            }));
        } else if v6::GENERIC.contains(&next) || next == v6::AH {
            if off + 2 > declared_end {
                return Err(DropReason::Malformed);
            }
            let ext = ip.get(off..off + 2).ok_or(DropReason::Truncated)?;
            next_at = off;
            let len = if next == v6::AH {
                (usize::from(ext[1]) + 2) * 4
            } else {
                (usize::from(ext[1]) + 1) * 8
            };
            next = ext[0];
            len
        } else {
            return Ok(None);
        };
        off += len;
    }
    Ok(None)
}

/// The RFC checks a fragment must pass before it is held.
fn check(f: &Fragment<'_>) -> Result<(), DropReason> {
    let len = f.data.len();
    if len == 0 {
        return Err(DropReason::ZeroLength);
    }
    if f.more && len % 8 != 0 {
        return Err(DropReason::Unaligned);
    }
    // What the datagram's length field will have to hold: the IPv4 header, or IPv6's
    // unfragmentable extension headers, plus the payload up to this fragment's end.
    let fixed = if f.key.v6 {
        f.head.len() - f.l3 - v6::LEN
    } else {
        f.head.len() - f.l3
    };
    if fixed + f.start as usize + len > MAX_DATAGRAM {
        return Err(DropReason::TooLarge);
    }
    if f.next == PROTO_TCP {
        if f.start == 0 {
            // The whole TCP header, options included, must be in the first fragment.
            let header = f
                .data
                .get(12)
                .map_or(20, |b| usize::from(b >> 4) * 4)
                .max(20);
            if len < header {
                return Err(DropReason::Tiny);
            }
        } else if f.start == 8 && !f.key.v6 {
            return Err(DropReason::Tiny);
        }
    }
    Ok(())
}

/// Rewrites the IPv4 header at the start of `ip` for a whole datagram of `payload` bytes.
fn rewrite_v4(ip: &mut [u8], payload: usize) -> bool {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let Ok(total) = u16::try_from(ihl + payload) else {
        return false;
    };
    ip[v4::TOTAL_LEN..v4::TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
    let flags = be16(ip, v4::FLAGS_FRAG) & !(v4::MF | v4::OFFSET_MASK);
    ip[v4::FLAGS_FRAG..v4::FLAGS_FRAG + 2].copy_from_slice(&flags.to_be_bytes());
    ip[v4::CHECKSUM..v4::CHECKSUM + 2].copy_from_slice(&[0, 0]);
    let sum = internet_checksum(&ip[..ihl]);
    ip[v4::CHECKSUM..v4::CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Rewrites the IPv6 header at `out[l3..]` for a whole datagram of `payload` bytes after
/// the unfragmentable headers: payload length, and the next header that named the
/// (removed) Fragment header.
fn rewrite_v6(out: &mut [u8], l3: usize, next_at: usize, next: u8, payload: usize) -> bool {
    let head = out.len() - payload;
    let Ok(len) = u16::try_from(head - l3 - v6::LEN + payload) else {
        return false;
    };
    out[l3 + v6::PAYLOAD_LEN..l3 + v6::PAYLOAD_LEN + 2].copy_from_slice(&len.to_be_bytes());
    out[next_at] = next;
    true
}

#[cfg(test)]
mod tests;
