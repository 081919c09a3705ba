//! `shm`: netmap-layout receive rings in a file under `/dev/shm`, filled by another process.
//!
//! The producer ([`ShmRegion::create`] → [`ShmProducer`]) plays the kernel of an RX ring: it
//! owns the slots from `tail` up to `head - 1`, writes a frame into the slot at `tail` and
//! publishes it by storing the next `tail` with release ordering. The consumer
//! ([`ShmRegion::open`] → [`ShmConsumer`]) walks the rings with the very code that walks real
//! netmap memory ([`super::netmap::RxRing`]): an acquire load of `tail`, the frames, a release store of
//! `cur` and `head`. What a benchmark measures on `shm` is therefore the netmap data path.
//!
//! There are N rings for N workers. The producer shards frames with the symmetric flow hash
//! ([`crate::io::shard::frame_shard`]: the TCP 4-tuple's hash modulo N; non-TCP and
//! undecodable frames go to ring 0), so both directions of a connection meet on one ring.
//! [`ShmConsumer::into_rings`] splits a consumer into one [`ShmRing`] per worker thread, and
//! each [`ShmRing`] is a [`crate::io::Source`].
//!
//! The files: [`region`] (the header, creating and opening a region), `fs` (the file's
//! name, its room in /dev/shm), [`producer`] and [`consumer`].
//!
//! Must not: trust the file (the other process writes it), or make a system call per batch
//! on the consumer's path (the producer's liveness is asked now and then, when idle).
//!
//! # File layout
//!
//! ```text
//! offset  size  field
//!      0    12  magic "FLOWPEEK-SHM"
//!     12     4  zero
//!     16     4  format version (SHM_VERSION)
//!     20     4  header length (HEADER_LEN)
//!     24     4  producer pid
//!     28     4  producer state: 1 running, 2 closed (the producer has finished)
//!     32     8  created at, ns since the Unix epoch
//!     40     4  rings          44  4  slots per ring      48  4  buffer size
//!     56     8  offset of the netmap_if      64  8  total file length
//!     72     8  frames refused because a ring was full (producer's count)
//!     80     4  rings a consumer polls (each consumer ring adds 1 when it starts)
//!    128  4×N  the consumer pid of each ring (0: none; claimed when a consumer opens it)
//!   4096        netmap_if, rings (128-byte aligned), buffers (page aligned): a netmap image
//! ```
//!
//! All fields are native-endian: producer and consumer run on one machine.
//!
//! # Lifecycle
//!
//! The producer builds the file under a private temporary name (`O_CREAT|O_EXCL`, mode 0600)
//! and publishes it with `link(2)`, which fails if the name exists: a consumer never sees a
//! half-built region and two producers cannot share a name. When the producer is dropped it
//! marks the region closed and removes the file (consumers keep their mapping). A consumer
//! whose ring is empty checks the producer: closed, or its pid gone (`kill(pid, 0)` fails with
//! `ESRCH`, asked every 16th empty poll: within about a second of a `kill -9` when idle), and
//! the ring drained, is [`ShmError::ProducerExited`]. A closed region ends the input; a
//! producer gone without closing it is an error of the run (its last frames may be lost). A producer that crashed
//! leaves its file behind; remove it by hand. (A crashed producer that is still a zombie of
//! its parent counts as alive until reaped; a recycled pid can hide a crash.)
//!
//! The producer reserves the file's blocks (`fallocate`) before mapping it, so a /dev/shm too
//! small for the region is [`ShmError::NoSpace`] at creation, not a `SIGBUS` when a page of
//! the sparse file is first touched.
//!
//! One consumer per ring: two consumers of one ring would each get a random share of its
//! frames. Opening a region claims every ring (its consumer pid field, compare-and-swap from
//! 0, or from a pid that no longer exists); a ring held by a live process is
//! [`ShmError::RingTaken`]. A ring gives its claim back when it is dropped.
//!
//! A corrupt slot (a `buf_idx` or `len` the producer could not have written) is skipped and
//! counted ([`ShmRing::corrupt_slots`]), with a warning on stderr at the first one of each
//! ring: the core goes on with the next slot, so the producer never blocks on it. A corrupt
//! `tail` is an error of the ring: the core stops.
//! Truncating the file while it is mapped kills the mapping processes with `SIGBUS`.

pub mod consumer;
mod fs;
pub mod producer;
pub mod region;

pub use consumer::{ShmConsumer, ShmRing};
pub use producer::{ring_for, ShmProducer};
pub use region::ShmRegion;

use std::path::PathBuf;

use super::netmap::RingError;
use fs::{human_size, remount_size};

/// Directory holding the region files.
pub const SHM_DIR: &str = "/dev/shm";
/// The file's first 12 bytes.
pub const MAGIC: &[u8; 12] = b"FLOWPEEK-SHM";
/// The layout version written and accepted.
pub const SHM_VERSION: u32 = 1;
/// Bytes before the netmap image.
pub const HEADER_LEN: usize = 4096;
/// Offset of the version field.
pub const VERSION_OFFSET: usize = 16;
/// Largest ring count.
pub const MAX_RINGS: u32 = 256;
/// Smallest and largest buffer size (a slot's `len` is 16 bits).
pub const BUF_SIZE_RANGE: std::ops::RangeInclusive<u32> = 64..=65535;

const OFF_HEADER_LEN: usize = 20;
const OFF_PID: usize = 24;
const OFF_STATE: usize = 28;
const OFF_CREATED: usize = 32;
const OFF_RINGS: usize = 40;
const OFF_SLOTS: usize = 44;
const OFF_BUF_SIZE: usize = 48;
const OFF_IF: usize = 56;
const OFF_TOTAL: usize = 64;
const OFF_FULL: usize = 72;
const OFF_ATTACHED: usize = 80;
const OFF_CONSUMERS: usize = 128;
const _: () = assert!(OFF_CONSUMERS + 4 * MAX_RINGS as usize <= HEADER_LEN);

/// Offset of the 64-bit `ptr` field in a netmap slot (unused by receive rings: the shm
/// producer may store a timestamp there).
const SLOT_PTR: usize = std::mem::offset_of!(netmap_sys::netmap::netmap_slot, ptr);
const _: () = assert!(SLOT_PTR == 8);

/// CLOCK_MONOTONIC in ns: the clock of shm slot stamps (the same in every process).
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusive `ts`.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const STATE_RUNNING: u32 = 1;
const STATE_CLOSED: u32 = 2;

/// Why a region could not be created, opened or read.
///
/// Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// The region name cannot be a file name in /dev/shm.
    #[error("shm region name {name:?} is invalid: {reason}; use a plain name like \"flowpeek0\"")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Ring count, slot count or buffer size out of range.
    #[error("shm region {}: invalid geometry: {detail}", .path.display())]
    InvalidGeometry {
        /// The region's file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The name is taken.
    #[error("{}: already exists; another producer is using this name, or a crashed one left it behind (if no producer runs, remove it: rm {})", .path.display(), .path.display())]
    Exists {
        /// The region's file.
        path: PathBuf,
    },
    /// No region by that name.
    #[error("{}: no such shm region; start the producer first (or check the name)", .path.display())]
    NotFound {
        /// The region's file.
        path: PathBuf,
    },
    /// I/O failure creating, opening or mapping the file.
    #[error("{}: {op} failed: {source}; check /dev/shm is a writable tmpfs with enough room and the file belongs to this user", .path.display())]
    Io {
        /// The region's file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The filesystem behind /dev/shm cannot hold the region (`ENOSPC` while reserving it).
    #[error("{}: {SHM_DIR} has no room for this shm region: it needs {}, {} free (of {}); free space in {SHM_DIR} (a crashed producer leaves its region behind: ls -la {SHM_DIR}), make the region smaller (flowpeek-bench gen: fewer --rings or --slots), or make {SHM_DIR} bigger (as root: mount -o remount,size={} {SHM_DIR})",
        .path.display(), human_size(*.needed), .free.map_or_else(|| "unknown".into(), human_size),
        .size.map_or_else(|| "unknown size".into(), human_size), remount_size(*.needed, *.free, *.size))]
    NoSpace {
        /// The region's file.
        path: PathBuf,
        /// Bytes the region needs.
        needed: u64,
        /// Bytes free in /dev/shm for this user, if known.
        free: Option<u64>,
        /// Size of the /dev/shm filesystem, if known.
        size: Option<u64>,
    },
    /// The file is not a flowpeek shm region.
    #[error("{}: not a flowpeek shm region (magic {found:?}, expected \"FLOWPEEK-SHM\"); check the name", .path.display())]
    NotShm {
        /// The region's file.
        path: PathBuf,
        /// The first bytes found, lossily decoded.
        found: String,
    },
    /// The file was written by another layout version.
    #[error("{}: shm layout version {found}, this flowpeek reads version {expected}; run producer and consumer from the same flowpeek build", .path.display())]
    Version {
        /// The region's file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The header is inconsistent with itself or the file size.
    #[error("{}: corrupt shm header: {detail}; the producer is broken or the file was modified, recreate the region", .path.display())]
    CorruptHeader {
        /// The region's file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The netmap image (a ring, a slot) is corrupt.
    #[error("{}: {source}", .path.display())]
    Ring {
        /// The region's file.
        path: PathBuf,
        /// What the ring walker found.
        source: RingError,
    },
    /// Another live process already consumes this ring.
    #[error("{}: ring {ring} already has a consumer, pid {pid}; a ring has one consumer (two would each get a random share of its frames): stop the other one, or give each consumer its own region", .path.display())]
    RingTaken {
        /// The region's file.
        path: PathBuf,
        /// The ring.
        ring: usize,
        /// The consumer holding it.
        pid: u32,
    },
    /// The producer has finished (or died) and the ring is drained.
    #[error("{}: producer pid {pid} {how}; ring {ring} is drained", .path.display())]
    ProducerExited {
        /// The region's file.
        path: PathBuf,
        /// The producer's pid.
        pid: u32,
        /// "closed the region" or "exited without closing the region".
        how: &'static str,
        /// The ring that was being read.
        ring: usize,
    },
}

/// Why [`ShmProducer::push`] did not queue a frame.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// The ring has no free slot: the consumer is behind. Counted; retry later or drop.
    #[error("shm ring {ring} is full (the consumer is behind)")]
    Full {
        /// The ring.
        ring: usize,
    },
    /// The frame does not fit in a buffer.
    #[error("frame of {len} bytes does not fit in a {max}-byte shm buffer; create the region with a larger buffer size")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The buffer size.
        max: u32,
    },
    /// No such ring.
    #[error("no shm ring {ring}: the region has {rings}")]
    NoSuchRing {
        /// The ring asked for.
        ring: usize,
        /// How many there are.
        rings: usize,
    },
    /// The consumer wrote an impossible `head`.
    #[error(
        "shm ring {ring}: consumer wrote head = {head} (num_slots {slots}); the consumer is broken"
    )]
    Corrupt {
        /// The ring.
        ring: usize,
        /// The value found.
        head: u32,
        /// The ring size.
        slots: u32,
    },
}

/// Is the producer still there?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerStatus {
    /// Its pid exists and it has not closed the region.
    Running,
    /// It dropped its [`ShmProducer`].
    Closed,
    /// Its pid no longer exists (it crashed, or exited without dropping the producer).
    Gone,
}
