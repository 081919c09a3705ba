//! `shm`: netmap-layout receive rings in a file under `/dev/shm`, filled by another process.
//!
//! The producer ([`ShmRegion::create`] → [`ShmProducer`]) plays the kernel of an RX ring: it
//! owns the slots from `tail` up to `head - 1`, writes a frame into the slot at `tail` and
//! publishes it by storing the next `tail` with release ordering. The consumer
//! ([`ShmRegion::open`] → [`ShmConsumer`]) walks the rings with the very code that walks real
//! netmap memory ([`super::ring`]): an acquire load of `tail`, the frames, a release store of
//! `cur` and `head`. What a benchmark measures on `shm` is therefore the netmap data path.
//!
//! There are N rings for N workers. The producer shards frames with the same symmetric hash
//! the engine uses ([`crate::flow::symmetric_hash`] of the TCP 4-tuple, modulo N; non-TCP and
//! undecodable frames go to ring 0), so both directions of a connection meet on one ring.
//! [`ShmConsumer::into_rings`] splits a consumer into one [`ShmRing`] per worker thread.
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
//! `ESRCH`), and the ring drained, is [`ShmError::ProducerExited`]. A producer that crashed
//! leaves its file behind; remove it by hand. (A crashed producer that is still a zombie of
//! its parent counts as alive until reaped; a recycled pid can hide a crash.)
//!
//! The producer reserves the file's blocks (`fallocate`) before mapping it, so a /dev/shm too
//! small for the region is [`ShmError::NoSpace`] at creation, not a `SIGBUS` when a page of
//! the sparse file is first touched.
//!
//! One consumer per ring: two consumers of one ring would both hand out its frames.
//! Truncating the file while it is mapped kills the mapping processes with `SIGBUS`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;

use super::ring::{self, HostRings, ImageLayout, NetmapMem, RingError, RxRing};
use crate::wire::{self, Decoded, LinkType};

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
    /// The producer has finished (or died) and the ring is drained.
    #[error("{}: producer (pid {pid}) {how}; ring {ring} is drained", .path.display())]
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

/// A mapped region file: the path, the mapping and the geometry from its header.
#[derive(Debug)]
pub struct ShmRegion {
    path: PathBuf,
    base: *mut u8,
    len: usize,
    layout: ImageLayout,
    pid: u32,
    created_ns: u64,
    // Kept last: the pointers above point into it.
    _map: MmapMut,
}

// SAFETY: the mapping is owned by the region and shared with other processes anyway; every
// access to shared fields after construction goes through atomics or through the ring
// protocol, so sharing the region between threads adds nothing new.
#[allow(unsafe_code)]
unsafe impl Send for ShmRegion {}
// SAFETY: as above; &ShmRegion only exposes atomic header reads.
#[allow(unsafe_code)]
unsafe impl Sync for ShmRegion {}

fn region_path(name: &str) -> Result<PathBuf, ShmError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('/') || name.contains('\0') {
        Some("it contains '/' or NUL")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ShmError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(Path::new(SHM_DIR).join(name)),
    }
}

/// `bytes` for a message: KiB below 1 MiB, then MiB, then GiB (one decimal).
fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// A `size=` for `mount -o remount` that fits the region: what is in use now plus the
/// region, rounded up to whole MiB (`2G` when the current use is unknown).
fn remount_size(needed: u64, free: Option<u64>, size: Option<u64>) -> String {
    match (free, size) {
        (Some(free), Some(size)) => {
            let want = size.saturating_sub(free).saturating_add(needed);
            format!("{}M", want.div_ceil(1 << 20).max(1))
        }
        _ => "2G".into(),
    }
}

/// Free bytes (for an unprivileged user) and total bytes of the filesystem holding `file`.
fn fs_space(file: &File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid `statvfs` (integers only).
    #[allow(unsafe_code)]
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call; `st` is valid and exclusive.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Sizes `file` to `len` bytes and reserves its blocks (`fallocate`), so that a full
/// /dev/shm is an error here instead of `SIGBUS` when a page is first touched. Where the
/// filesystem cannot reserve (`EOPNOTSUPP`), the file is sized sparsely as before.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let off =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: fallocate on an fd we own, mode 0 (allocate and extend); no memory is
        // passed.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // tmpfs gives up with EINTR when a signal is pending: try again.
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return file.set_len(len),
            _ => return Err(e),
        }
    }
}

fn io_err(path: &Path, op: &'static str, source: std::io::Error) -> ShmError {
    match source.kind() {
        std::io::ErrorKind::NotFound => ShmError::NotFound {
            path: path.to_owned(),
        },
        std::io::ErrorKind::AlreadyExists => ShmError::Exists {
            path: path.to_owned(),
        },
        _ => ShmError::Io {
            path: path.to_owned(),
            op,
            source,
        },
    }
}

impl ShmRegion {
    /// The file a region name lives in (`/dev/shm/NAME`).
    pub fn path_for(name: &str) -> Result<PathBuf, ShmError> {
        region_path(name)
    }

    /// Creates region `name` with `rings` rings of `slots_per_ring` slots of `buf_size`
    /// bytes, and returns its producer. Fails if the name exists.
    ///
    /// A ring holds at most `slots_per_ring - 1` frames (netmap keeps one slot free).
    pub fn create(
        name: &str,
        rings: u32,
        slots_per_ring: u32,
        buf_size: u32,
    ) -> Result<ShmProducer, ShmError> {
        let path = region_path(name)?;
        let geometry = |detail: String| ShmError::InvalidGeometry {
            path: path.clone(),
            detail,
        };
        if !(1..=MAX_RINGS).contains(&rings) {
            return Err(geometry(format!("{rings} rings; use 1..={MAX_RINGS}")));
        }
        if !(2..=ring::MAX_SLOTS).contains(&slots_per_ring) {
            return Err(geometry(format!(
                "{slots_per_ring} slots per ring; use 2..={}",
                ring::MAX_SLOTS
            )));
        }
        if !BUF_SIZE_RANGE.contains(&buf_size) {
            return Err(geometry(format!(
                "buffer size {buf_size}; use {}..={}",
                BUF_SIZE_RANGE.start(),
                BUF_SIZE_RANGE.end()
            )));
        }
        let layout = ImageLayout::new(HEADER_LEN, rings, slots_per_ring, buf_size)
            .filter(|l| l.total_len <= 1 << 40)
            .ok_or_else(|| geometry("the region would exceed 1 TiB".into()))?;

        let pid = std::process::id();
        let tmp = Path::new(SHM_DIR).join(format!(".{name}.{pid}.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, "creating the temporary file", e))?;
        let result = Self::init(&path, &tmp, &file, layout, pid);
        let _ = std::fs::remove_file(&tmp);
        let region = result?;
        Ok(ShmProducer::new(region))
    }

    fn init(
        path: &Path,
        tmp: &Path,
        file: &File,
        layout: ImageLayout,
        pid: u32,
    ) -> Result<Self, ShmError> {
        let needed = layout.total_len as u64;
        reserve(file, needed).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                let space = fs_space(file);
                ShmError::NoSpace {
                    path: path.to_owned(),
                    needed,
                    free: space.map(|s| s.0),
                    size: space.map(|s| s.1),
                }
            } else {
                io_err(tmp, "reserving room for the region file", e)
            }
        })?;
        // SAFETY: the file was just created by us with O_EXCL under a private name and mode
        // 0600; nobody else maps or truncates it before it is published.
        #[allow(unsafe_code)]
        let mut map = unsafe { MmapMut::map_mut(file) }
            .map_err(|e| io_err(tmp, "memory-mapping the region file", e))?;
        let created_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        {
            let mem: &mut [u8] = &mut map;
            ring::write_image(mem, &layout);
            let mut put = |off: usize, b: &[u8]| mem[off..off + b.len()].copy_from_slice(b);
            put(VERSION_OFFSET, &SHM_VERSION.to_ne_bytes());
            put(OFF_HEADER_LEN, &(HEADER_LEN as u32).to_ne_bytes());
            put(OFF_PID, &pid.to_ne_bytes());
            put(OFF_STATE, &STATE_RUNNING.to_ne_bytes());
            put(OFF_CREATED, &created_ns.to_ne_bytes());
            put(OFF_RINGS, &layout.rings.to_ne_bytes());
            put(OFF_SLOTS, &layout.slots.to_ne_bytes());
            put(OFF_BUF_SIZE, &layout.buf_size.to_ne_bytes());
            put(OFF_IF, &(layout.if_offset as u64).to_ne_bytes());
            put(OFF_TOTAL, &(layout.total_len as u64).to_ne_bytes());
            put(0, MAGIC);
        }
        // Publish: link(2) fails if the name exists (O_EXCL semantics for the final name).
        std::fs::hard_link(tmp, path).map_err(|e| io_err(path, "publishing the region file", e))?;
        let base = map.as_mut_ptr();
        let len = map.len();
        Ok(ShmRegion {
            path: path.to_owned(),
            base,
            len,
            layout,
            pid,
            created_ns,
            _map: map,
        })
    }

    /// Opens region `name` as its consumer: checks the header (magic, version, geometry
    /// against the file size) and validates every ring.
    pub fn open(name: &str) -> Result<ShmConsumer, ShmError> {
        Self::open_path(&region_path(name)?)
    }

    /// As [`open`](Self::open), for a region file at any path.
    pub fn open_path(path: &Path) -> Result<ShmConsumer, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, "opening the region file", e))?;
        let flen = file
            .metadata()
            .map_err(|e| io_err(path, "reading the region file's size", e))?
            .len();
        let corrupt = |detail: String| ShmError::CorruptHeader {
            path: path.to_owned(),
            detail,
        };
        if flen < HEADER_LEN as u64 {
            return Err(if flen < 12 {
                ShmError::NotShm {
                    path: path.to_owned(),
                    found: format!("{flen}-byte file"),
                }
            } else {
                corrupt(format!(
                    "file is {flen} bytes, shorter than the {HEADER_LEN}-byte header"
                ))
            });
        }
        // SAFETY: a shared mapping of a region file; the producer writes it concurrently only
        // through the ring protocol, and the header fields read below are copied out once.
        // Truncation by another process would raise SIGBUS (documented in the module doc).
        #[allow(unsafe_code)]
        let mut map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| io_err(path, "memory-mapping the region file", e))?;
        let len = map.len();
        let (pid, created_ns, layout, if_off) = {
            let h: &[u8] = &map[..HEADER_LEN];
            let u32_at = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap_or_default());
            let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().unwrap_or_default());
            if &h[..12] != MAGIC {
                return Err(ShmError::NotShm {
                    path: path.to_owned(),
                    found: String::from_utf8_lossy(&h[..12]).into_owned(),
                });
            }
            let version = u32_at(VERSION_OFFSET);
            if version != SHM_VERSION {
                return Err(ShmError::Version {
                    path: path.to_owned(),
                    found: version,
                    expected: SHM_VERSION,
                });
            }
            let header_len = u32_at(OFF_HEADER_LEN);
            if header_len as usize != HEADER_LEN {
                return Err(corrupt(format!(
                    "header length {header_len}, expected {HEADER_LEN}"
                )));
            }
            let (rings, slots, buf_size) =
                (u32_at(OFF_RINGS), u32_at(OFF_SLOTS), u32_at(OFF_BUF_SIZE));
            if !(1..=MAX_RINGS).contains(&rings)
                || !(2..=ring::MAX_SLOTS).contains(&slots)
                || !BUF_SIZE_RANGE.contains(&buf_size)
            {
                return Err(corrupt(format!(
                    "impossible geometry: {rings} rings × {slots} slots × {buf_size}-byte buffers"
                )));
            }
            let layout = ImageLayout::new(HEADER_LEN, rings, slots, buf_size)
                .ok_or_else(|| corrupt("geometry overflows".into()))?;
            let (if_off, total) = (u64_at(OFF_IF), u64_at(OFF_TOTAL));
            if total != layout.total_len as u64 || flen != total || len as u64 != total {
                return Err(corrupt(format!(
                    "{rings} rings × {slots} slots × {buf_size}-byte buffers need {} bytes, header says {total}, file has {flen}",
                    layout.total_len
                )));
            }
            if if_off != layout.if_offset as u64 {
                return Err(corrupt(format!(
                    "netmap_if offset {if_off}, expected {}",
                    layout.if_offset
                )));
            }
            (
                u32_at(OFF_PID),
                u64_at(OFF_CREATED),
                layout,
                if_off as usize,
            )
        };
        let base = map.as_mut_ptr();
        let region = ShmRegion {
            path: path.to_owned(),
            base,
            len,
            layout,
            pid,
            created_ns,
            _map: map,
        };
        // SAFETY: base..base+len is the mapping owned by `region`, which the consumer keeps
        // (in an Arc) for as long as any ring walker built here.
        #[allow(unsafe_code)]
        let mem = unsafe { NetmapMem::from_raw(base, len, if_off, HostRings::FromIf) }.map_err(
            |source| ShmError::Ring {
                path: path.to_owned(),
                source,
            },
        )?;
        let l = region.layout.clone();
        if mem.rx_rings() != l.rings as usize || mem.tx_rings() != 0 {
            return Err(corrupt(format!(
                "netmap_if lists {} RX and {} TX rings, header says {} RX and 0 TX",
                mem.rx_rings(),
                mem.tx_rings(),
                l.rings
            )));
        }
        let region = Arc::new(region);
        let mut rings = Vec::with_capacity(mem.rx_rings());
        for (i, r) in mem.into_rings().into_iter().enumerate() {
            let Some(r) = r else {
                return Err(corrupt(format!("ring {i} has ring_ofs 0")));
            };
            if r.num_slots() != l.slots || r.buf_size() != l.buf_size {
                return Err(corrupt(format!(
                    "ring {i} has {} slots of {} bytes, header says {} of {}",
                    r.num_slots(),
                    r.buf_size(),
                    l.slots,
                    l.buf_size
                )));
            }
            rings.push(ShmRing {
                region: Arc::clone(&region),
                ring: r,
                empty_polls: 0,
            });
        }
        Ok(ShmConsumer { region, rings })
    }

    /// The region's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The producer's pid.
    pub fn producer_pid(&self) -> u32 {
        self.pid
    }

    /// When the producer created the region, ns since the Unix epoch.
    pub fn created_at_nanos(&self) -> u64 {
        self.created_ns
    }

    /// Size of the region file in bytes.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Number of rings.
    pub fn rings(&self) -> usize {
        self.layout.rings as usize
    }

    /// Slots per ring.
    pub fn slots_per_ring(&self) -> u32 {
        self.layout.slots
    }

    /// Buffer size.
    pub fn buf_size(&self) -> u32 {
        self.layout.buf_size
    }

    /// Total frames the producer found no room for.
    pub fn full_count(&self) -> u64 {
        self.header_u64(OFF_FULL).load(Ordering::Relaxed)
    }

    /// Rings a consumer has started polling ([`ShmRing::attach`]).
    pub fn attached(&self) -> u32 {
        self.header_u32(OFF_ATTACHED).load(Ordering::Acquire)
    }

    #[allow(unsafe_code)]
    fn header_u32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= HEADER_LEN && off % 4 == 0);
        // SAFETY: off is a 4-aligned header field (< HEADER_LEN <= len), the mapping is page
        // aligned and lives as long as self.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    #[allow(unsafe_code)]
    fn header_u64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= HEADER_LEN && off % 8 == 0);
        // SAFETY: as header_u32, 8-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    /// Whether the producer is still there (one `kill(pid, 0)` when it has not closed).
    pub fn producer_status(&self) -> ProducerStatus {
        if self.header_u32(OFF_STATE).load(Ordering::Acquire) == STATE_CLOSED {
            return ProducerStatus::Closed;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return ProducerStatus::Gone;
        };
        if pid <= 0 {
            return ProducerStatus::Gone;
        }
        // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            ProducerStatus::Gone
        } else {
            ProducerStatus::Running
        }
    }
}

/// The producer side: plays the kernel of N RX rings. Dropping it closes the region and
/// removes its file (see [`keep_file`](Self::keep_file)).
#[derive(Debug)]
pub struct ShmProducer {
    region: ShmRegion,
    /// Per ring: our tail, the last head we saw, frames refused as full.
    tails: Vec<u32>,
    heads: Vec<u32>,
    full: Vec<u64>,
    /// Per ring: frames written but not yet published (see `set_publish_every`).
    unpublished: Vec<u32>,
    publish_every: u32,
    remove_on_drop: bool,
}

impl ShmProducer {
    fn new(region: ShmRegion) -> Self {
        let n = region.rings();
        ShmProducer {
            region,
            tails: vec![0; n],
            heads: vec![0; n],
            full: vec![0; n],
            unpublished: vec![0; n],
            publish_every: 1,
            remove_on_drop: true,
        }
    }

    /// Publishes the ring's `tail` once every `n` frames (at least 1; 1 is the default)
    /// instead of after each, as a NIC driver or netmap's txsync hands frames over in
    /// batches: a consumer that polls `tail` then takes the cache line from the producer
    /// once per batch, not once per frame (at 64 bytes that was the generator's limit:
    /// 8 → 25 Mpps). Frames still unpublished go out with [`flush`](Self::flush), when a
    /// ring is found full, and when the producer is dropped.
    pub fn set_publish_every(&mut self, n: u32) {
        self.publish_every = n.max(1);
        self.flush();
    }

    /// Publishes every frame written so far.
    pub fn flush(&mut self) {
        for ring in 0..self.tails.len() {
            if self.unpublished[ring] > 0 {
                self.publish(ring);
            }
        }
    }

    #[inline]
    fn publish(&mut self, ring: usize) {
        let off = self.region.layout.ring_offsets[ring] + ring::RING_TAIL;
        // SAFETY: the ring's tail field lies inside the mapping (layout), 4-aligned.
        #[allow(unsafe_code)]
        let tail_field = unsafe { &*(self.region.base.add(off) as *const AtomicU32) };
        tail_field.store(self.tails[ring], Ordering::Release);
        self.unpublished[ring] = 0;
    }

    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// Leave the file in /dev/shm when dropped (it is still marked closed).
    pub fn keep_file(&mut self, keep: bool) {
        self.remove_on_drop = !keep;
    }

    /// Waits until a consumer polls every ring ([`ShmRing::attach`]), so that frames sent
    /// while it starts up are not counted as ring-full (benchmarks); false after `timeout`.
    pub fn wait_for_consumer(&self, timeout: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while (self.region.attached() as usize) < self.tails.len() {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }

    /// Frames refused because ring `ring` was full.
    pub fn full_count(&self, ring: usize) -> u64 {
        self.full.get(ring).copied().unwrap_or(0)
    }

    /// The ring a frame belongs to: the symmetric hash of its TCP 4-tuple (Ethernet framing)
    /// modulo the ring count; 0 for anything that is not a decodable TCP segment.
    pub fn ring_for(&self, frame: &[u8]) -> usize {
        ring_for(frame, self.tails.len())
    }

    /// Queues `frame` on the ring chosen by [`ring_for`](Self::ring_for).
    #[inline]
    pub fn push_hashed(&mut self, frame: &[u8]) -> Result<usize, PushError> {
        let ring = self.ring_for(frame);
        self.push(ring, frame).map(|()| ring)
    }

    /// Copies `frame` into the slot at `tail` of ring `ring` and publishes it (release store
    /// of `tail`). [`PushError::Full`] (counted) when the consumer has not freed a slot.
    #[inline]
    pub fn push(&mut self, ring: usize, frame: &[u8]) -> Result<(), PushError> {
        self.push_inner(ring, frame, None)
    }

    /// As [`push_hashed`](Self::push_hashed), also writing `stamp` into the slot's `ptr`
    /// field (the frame's bytes are unchanged). The benchmarks stamp [`monotonic_ns`] at push
    /// time; a consumer reads it back with [`ShmRing::rx_batch_stamped`].
    #[inline]
    pub fn push_hashed_stamped(&mut self, frame: &[u8], stamp: u64) -> Result<usize, PushError> {
        let ring = self.ring_for(frame);
        self.push_inner(ring, frame, Some(stamp)).map(|()| ring)
    }

    /// As [`push`](Self::push), also writing `stamp` into the slot's `ptr` field.
    #[inline]
    pub fn push_stamped(&mut self, ring: usize, frame: &[u8], stamp: u64) -> Result<(), PushError> {
        self.push_inner(ring, frame, Some(stamp))
    }

    #[allow(unsafe_code)]
    #[inline(always)]
    fn push_inner(
        &mut self,
        ring: usize,
        frame: &[u8],
        stamp: Option<u64>,
    ) -> Result<(), PushError> {
        let rings = self.tails.len();
        if ring >= rings {
            return Err(PushError::NoSuchRing { ring, rings });
        }
        let l = &self.region.layout;
        if frame.len() > l.buf_size as usize {
            return Err(PushError::TooLarge {
                len: frame.len(),
                max: l.buf_size,
            });
        }
        let slots = l.slots;
        let ring_off = l.ring_offsets[ring];
        // SAFETY (for the pointer arithmetic and accesses below): ring_off, the ring's head and
        // tail fields, slot `tail` (< slots) and buffer ring*slots + tail all lie inside the
        // mapping by construction of `layout`, which the mapping's length was sized from; the
        // u32 ring fields are 4-aligned. The slot and buffer at `tail` belong to the producer
        // (they are outside the consumer's [head, tail)).
        let base = self.region.base;
        let tail = self.tails[ring];
        let next = if tail + 1 == slots { 0 } else { tail + 1 };
        if next == self.heads[ring] {
            // SAFETY: see above.
            let head_field =
                unsafe { &*(base.add(ring_off + ring::RING_HEAD) as *const AtomicU32) };
            let head = head_field.load(Ordering::Acquire);
            if head >= slots {
                return Err(PushError::Corrupt { ring, head, slots });
            }
            self.heads[ring] = head;
            if next == head {
                // The consumer can only free slots it has been shown.
                if self.unpublished[ring] > 0 {
                    self.publish(ring);
                }
                self.full[ring] += 1;
                self.region
                    .header_u64(OFF_FULL)
                    .fetch_add(1, Ordering::Relaxed);
                return Err(PushError::Full { ring });
            }
        }
        let idx = ring * slots as usize + tail as usize;
        // SAFETY: see above.
        unsafe {
            let buf = base.add(l.buf_offset(idx));
            std::ptr::copy_nonoverlapping(frame.as_ptr(), buf, frame.len());
            let slot = base.add(l.slot_offset(ring, tail as usize));
            slot.add(ring::SLOT_BUF_IDX)
                .cast::<u32>()
                .write_volatile(idx as u32);
            slot.add(ring::SLOT_LEN_FIELD)
                .cast::<u16>()
                .write_volatile(frame.len() as u16);
            if let Some(stamp) = stamp {
                // The slot is 16 bytes, 8-aligned (rings are 128-byte aligned, the slot array
                // starts at an 8-aligned offset): `ptr` at offset 8 is aligned.
                slot.add(SLOT_PTR).cast::<u64>().write_volatile(stamp);
            }
        }
        self.tails[ring] = next;
        self.unpublished[ring] += 1;
        if self.unpublished[ring] >= self.publish_every {
            self.publish(ring);
        }
        Ok(())
    }
}

impl Drop for ShmProducer {
    fn drop(&mut self) {
        self.flush();
        self.region
            .header_u32(OFF_STATE)
            .store(STATE_CLOSED, Ordering::Release);
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.region.path);
        }
    }
}

/// The symmetric-hash shard of a frame: see [`ShmProducer::ring_for`].
pub fn ring_for(frame: &[u8], rings: usize) -> usize {
    if rings <= 1 {
        return 0;
    }
    match wire::decode(LinkType::Ethernet, frame) {
        Ok(Decoded::Tcp(seg)) => {
            (crate::flow::symmetric_hash(seg.src, seg.src_port, seg.dst, seg.dst_port)
                % rings as u64) as usize
        }
        _ => 0,
    }
}

/// The consumer side of a region: one validated netmap RX ring walker per ring.
#[derive(Debug)]
pub struct ShmConsumer {
    region: Arc<ShmRegion>,
    rings: Vec<ShmRing>,
}

impl ShmConsumer {
    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// Number of rings.
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    /// Ring `ring`, e.g. to read [`ShmRing::available`].
    pub fn ring(&self, ring: usize) -> Option<&ShmRing> {
        self.rings.get(ring)
    }

    /// See [`ShmRing::rx_batch`].
    #[inline]
    pub fn rx_batch(&mut self, ring: usize, f: impl FnMut(&[u8])) -> Result<usize, ShmError> {
        let rings = self.rings.len();
        match self.rings.get_mut(ring) {
            Some(r) => r.rx_batch(f),
            None => Err(ShmError::Ring {
                path: self.region.path.clone(),
                source: RingError::NoSuchRing { ring, rings },
            }),
        }
    }

    /// One ring per worker (each keeps the mapping alive).
    pub fn into_rings(self) -> Vec<ShmRing> {
        self.rings
    }
}

/// One ring of a region, for one worker.
#[derive(Debug)]
pub struct ShmRing {
    region: Arc<ShmRegion>,
    ring: RxRing,
    /// Empty polls in a row (the producer's liveness is checked every 256th).
    empty_polls: u32,
}

impl ShmRing {
    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// This ring's index.
    pub fn index(&self) -> usize {
        self.ring.index()
    }

    /// Tells the producer this ring is being polled from now on (see
    /// [`ShmProducer::wait_for_consumer`]). Call once, when the consumer is ready.
    pub fn attach(&self) {
        self.region
            .header_u32(OFF_ATTACHED)
            .fetch_add(1, Ordering::Release);
    }

    /// Frames waiting.
    pub fn available(&self) -> Result<u32, ShmError> {
        self.ring.available().map_err(|source| ShmError::Ring {
            path: self.region.path.clone(),
            source,
        })
    }

    /// Hands every waiting frame to `f` and releases the slots ([`RxRing::rx_batch`]).
    /// When none is waiting, checks the producer: if it has closed the region or is gone and
    /// the ring is still empty after that, returns [`ShmError::ProducerExited`].
    #[inline]
    pub fn rx_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, ShmError> {
        self.rx_batch_indexed(|frame, _| f(frame))
    }

    /// As [`rx_batch`](Self::rx_batch), with lookahead ([`RxRing::rx_batch_lookahead`]).
    #[inline]
    pub fn rx_batch_lookahead(
        &mut self,
        mut f: impl FnMut(ring::Step<'_>),
    ) -> Result<usize, ShmError> {
        let n = self
            .ring
            .rx_batch_lookahead(&mut f)
            .map_err(|source| self.ring_err(source))?;
        if n > 0 {
            self.empty_polls = 0;
            return Ok(n);
        }
        // Empty: the plain path checks the producer now and then, and drains what came.
        self.rx_batch_indexed(|frame, i| f(ring::Step::Frame(frame, i)))
    }

    /// As [`rx_batch`](Self::rx_batch), also passing each slot's `ptr` field: the stamp of
    /// [`ShmProducer::push_stamped`] (0 from a producer that does not stamp).
    #[inline]
    pub fn rx_batch_stamped(&mut self, mut f: impl FnMut(&[u8], u64)) -> Result<usize, ShmError> {
        let base = self.region.base;
        let ring = self.ring.index();
        let slot0 = self.region.layout.slot_offset(ring, 0);
        self.rx_batch_indexed(move |frame, i| {
            // SAFETY: i < num_slots (the walker validated it), so the slot lies inside the
            // mapping (the layout was checked against the file size); between head and tail
            // the slot belongs to the consumer; `ptr` is 8-aligned (see push_inner).
            #[allow(unsafe_code)]
            let stamp = unsafe {
                base.add(slot0 + i as usize * ring::SLOT_LEN + SLOT_PTR)
                    .cast::<u64>()
                    .read_volatile()
            };
            f(frame, stamp)
        })
    }

    #[inline(always)]
    fn rx_batch_indexed(&mut self, mut f: impl FnMut(&[u8], u32)) -> Result<usize, ShmError> {
        let n = self
            .ring
            .rx_batch_indexed(&mut f)
            .map_err(|source| self.ring_err(source))?;
        if n > 0 {
            self.empty_polls = 0;
            return Ok(n);
        }
        // Is the producer still there? Whether it closed the region is one load; whether
        // it died is a `kill(pid, 0)` syscall, asked every 256th empty poll only (not each
        // time a burst has been drained: that was one syscall per burst).
        self.empty_polls = self.empty_polls.wrapping_add(1);
        let closed = self.region.header_u32(OFF_STATE).load(Ordering::Acquire) == STATE_CLOSED;
        if !closed && self.empty_polls % 256 != 0 {
            return Ok(0);
        }
        let how = match self.region.producer_status() {
            ProducerStatus::Running => return Ok(0),
            ProducerStatus::Closed => "closed the region",
            ProducerStatus::Gone => "exited without closing the region",
        };
        // The state was loaded with acquire after the producer's last tail store: re-check.
        let n = self
            .ring
            .rx_batch_indexed(&mut f)
            .map_err(|source| self.ring_err(source))?;
        if n > 0 {
            return Ok(n);
        }
        Err(ShmError::ProducerExited {
            path: self.region.path.clone(),
            pid: self.region.pid,
            how,
            ring: self.ring.index(),
        })
    }

    #[cold]
    fn ring_err(&self, source: RingError) -> ShmError {
        ShmError::Ring {
            path: self.region.path.clone(),
            source,
        }
    }
}
