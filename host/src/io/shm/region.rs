//! A region file: [`ShmRegion::create`] builds and publishes it (for the producer),
//! [`ShmRegion::open`] checks its header and rings (for the consumer); both map it, and the
//! region answers the header's questions (geometry, ring-full count, producer liveness).
//!
//! Must not: trust a header field before checking it against the file's size.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;

use super::fs::{fs_space, io_err, region_path, reserve};
use super::*;
use crate::io::netmap::image::{write_image, ImageLayout};
use crate::io::netmap::{layout as ring, HostRings, NetmapMem};

/// A mapped region file: the path, the mapping and the geometry from its header.
#[derive(Debug)]
pub struct ShmRegion {
    pub(super) path: PathBuf,
    pub(super) base: *mut u8,
    len: usize,
    pub(super) layout: ImageLayout,
    pub(super) pid: u32,
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
            write_image(mem, &layout);
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
                corrupt: 0,
                claimed: false,
            });
        }
        for r in &mut rings {
            r.claim()?;
        }
        Ok(ShmConsumer { region, rings })
    }

    /// The region's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset in the file of slot `slot` of ring `ring` (for tools and tests that
    /// inspect a ring); `ring` and `slot` must be within the geometry.
    pub fn slot_offset(&self, ring: usize, slot: usize) -> usize {
        self.layout.slot_offset(ring, slot)
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
    pub(super) fn header_u32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= HEADER_LEN && off % 4 == 0);
        // SAFETY: off is a 4-aligned header field (< HEADER_LEN <= len), the mapping is page
        // aligned and lives as long as self.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    #[allow(unsafe_code)]
    pub(super) fn header_u64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= HEADER_LEN && off % 8 == 0);
        // SAFETY: as header_u32, 8-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    /// Whether the producer is still there (one `kill(pid, 0)` when it has not closed).
    pub fn producer_status(&self) -> ProducerStatus {
        if self.header_u32(OFF_STATE).load(Ordering::Acquire) == STATE_CLOSED {
            return ProducerStatus::Closed;
        }
        if pid_alive(self.pid) {
            ProducerStatus::Running
        } else {
            ProducerStatus::Gone
        }
    }
}

/// Whether process `pid` exists (`kill(pid, 0)` does not fail with `ESRCH`; a zombie counts
/// as alive until reaped).
pub(super) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
