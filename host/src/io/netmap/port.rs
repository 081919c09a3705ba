//! The real netmap port: `/dev/netmap`, `NIOCREGIF`, one mmap, and the ring walkers of
//! [`super::rx`] and [`super::tx`].
//!
//! [`NetmapPort::open`] (receive) and [`NetmapTxPort::open`] (transmit) take
//! `netmap:IF` (every hardware ring of IF: `NR_REG_ALL_NIC`), `netmap:IF-K` (hardware ring K
//! only: `NR_REG_ONE_NIC`, one port per worker), `netmap:NAME{K` / `netmap:NAME}K` (the
//! master / slave end of netmap pipe K), `valeB:P` (port P of the VALE switch B, created on
//! first use) or a bare interface name (same as `netmap:IF`). Both open `/dev/netmap`,
//! register the port with the legacy `struct nmreq` of the `netmap_sys` crate (API 11, still
//! accepted by current netmap), map `nr_memsize` bytes of the file descriptor with `memmap2`,
//! and validate the image at `nr_offset` with [`NetmapMem::from_raw`] (one shared helper).
//!
//! A [`NetmapPort`] is a [`Source`]: the worker loop waits in [`NetmapPort::poll`] (which
//! syncs the RX rings) and then walks each ring with [`NetmapMem::feed`], the walk the shm
//! source uses, lookahead included: frames are lent from the netmap buffers and the slots go
//! back at the end of each batch. A receive port sets `NETMAP_NO_TX_POLL`.
//!
//! The transmit loop is [`NetmapTxPort::push`] (copy a frame into the buffer of the next free
//! slot of a TX ring), [`NetmapTxPort::publish`] (hand the written slots to the kernel: `head`
//! moves up to `cur`) and [`NetmapTxPort::tx_sync`] (`NIOCTXSYNC`: transmit, and take back the
//! slots already sent), or [`NetmapTxPort::poll`] (`POLLOUT`, which also syncs) to wait for
//! room, as netmap's `pkt-gen -f tx` does.
//!
//! No machine this is developed on has the kernel module: this path is compiled and its
//! layout unit-tested everywhere (see [`super::layout`] and the in-memory image tests), and
//! only runs where `/dev/netmap` exists. `scripts/netmap-setup.sh` describes how to build and load netmap on a real host.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use memmap2::{MmapMut, MmapOptions};
use netmap_sys::netmap::{self as sys, nmreq};

use super::layout::HostRings;
use super::region::{NetmapMem, RingError};
use super::tx::TxRing;
use crate::io::source::{Batch, Idle, Sink, Source, SourceError};
use crate::wire::LinkType;

/// The netmap control device.
pub const NETMAP_DEVICE: &str = "/dev/netmap";
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = sys::IFNAMSIZ - 1;

/// What a netmap port spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The name registered (`nr_name`): an interface, a pipe's parent name, or `valeB:P`.
    pub ifname: String,
    /// One hardware ring, or `None` for all of them.
    pub ring: Option<u16>,
    /// One end of a netmap pipe of `ifname`, or `None`.
    pub pipe: Option<Pipe>,
}

/// An end of a netmap pipe: `NAME{K` is the master end of pipe K, `NAME}K` its slave end.
/// Frames sent on one end's TX ring arrive on the other end's RX ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    /// `{K`.
    Master(u16),
    /// `}K`.
    Slave(u16),
}

/// Whether `name` is a VALE port name (`valeB:P`).
fn is_vale(name: &str) -> bool {
    name.starts_with("vale") && name.contains(':')
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !is_vale(&self.ifname) {
            f.write_str("netmap:")?;
        }
        f.write_str(&self.ifname)?;
        match self.pipe {
            Some(Pipe::Master(k)) => write!(f, "{{{k}")?,
            Some(Pipe::Slave(k)) => write!(f, "}}{k}")?,
            None => {}
        }
        if let Some(k) = self.ring {
            write!(f, "-{k}")?;
        }
        Ok(())
    }
}

/// Why a netmap port could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetmapError {
    /// The spec does not parse.
    #[error("bad netmap port {spec:?}: {reason}; write netmap:IF (all rings), netmap:IF-K (hardware ring K, e.g. netmap:eth0-3), netmap:NAME{{K or netmap:NAME}}K (the two ends of netmap pipe K) or valeB:P (port P of VALE switch B, e.g. vale0:a)")]
    BadSpec {
        /// The spec given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// There is no `/dev/netmap`.
    #[error("netmap is not available: /dev/netmap does not exist (the netmap kernel module is not loaded); see scripts/netmap-setup.sh to build and load it")]
    NotAvailable,
    /// `/dev/netmap` exists but cannot be opened.
    #[error(
        "cannot open /dev/netmap: {source}; run as root or give this user access to /dev/netmap"
    )]
    Device {
        /// The underlying error.
        source: std::io::Error,
    },
    /// `NIOCREGIF` failed.
    #[error("netmap could not register {spec}: {source}{hint}")]
    Register {
        /// The port.
        spec: PortSpec,
        /// The ioctl's error.
        source: std::io::Error,
        /// What it probably means.
        hint: &'static str,
    },
    /// Mapping the netmap memory failed.
    #[error("netmap: mapping {size} bytes of netmap memory for {spec} failed: {source}")]
    Map {
        /// The port.
        spec: PortSpec,
        /// `nr_memsize`.
        size: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kernel's image did not validate, or a ring broke protocol.
    #[error("netmap {spec}: {source}")]
    Ring {
        /// The port.
        spec: PortSpec,
        /// What the walker found.
        source: RingError,
    },
    /// `NIOCRXSYNC`, `NIOCTXSYNC` or `poll` failed.
    #[error("netmap {spec}: {op} failed: {source}")]
    Sync {
        /// The port.
        spec: PortSpec,
        /// "NIOCRXSYNC", "NIOCTXSYNC" or "poll".
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl PortSpec {
    /// Parses `netmap:IF`, `netmap:IF-K`, `netmap:NAME{K`, `netmap:NAME}K`, `valeB:P` (also
    /// with `-K`, `{K` or `}K`), or a bare interface name (all rings).
    ///
    /// As in netmap's own `nm_open`, a trailing `-` followed by digits is a ring number, so
    /// an interface whose name ends like that (`veth-1`) can only be named with a ring; a VALE
    /// port is named without the `netmap:` prefix. netmap's other suffixes (`*`, `^`, `@`,
    /// `/...`) are not supported.
    pub fn parse(spec: &str) -> Result<Self, NetmapError> {
        let bad = |reason: &str| NetmapError::BadSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let body = match spec.strip_prefix("netmap:") {
            Some(b) if is_vale(b) => {
                return Err(bad(&format!(
                    "a VALE port is named without the netmap: prefix (write {b}, as for pkt-gen -i)"
                )))
            }
            Some(b) => b,
            None if is_vale(spec) => spec,
            None if spec.contains(':') => {
                return Err(bad(
                    "only the netmap: prefix and VALE ports (valeB:P) are understood here",
                ))
            }
            None => spec,
        };
        let number = |k: &str, what: &str| {
            k.parse::<u16>()
                .ok()
                .filter(|&k| k <= sys::NETMAP_RING_MASK as u16)
                .ok_or_else(|| bad(&format!("{what} number is over 4095")))
        };
        let (ifname, ring, pipe) = if let Some(at) = body.find(['{', '}']) {
            let (name, rest) = body.split_at(at);
            let k = &rest[1..];
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "a pipe end is NAME{K (master) or NAME}K (slave), K a number",
                ));
            }
            let k = number(k, "pipe")?;
            let end = if rest.starts_with('{') {
                Pipe::Master(k)
            } else {
                Pipe::Slave(k)
            };
            (name, None, Some(end))
        } else {
            match body.rsplit_once('-') {
                Some((name, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
                    (name, Some(number(k, "ring")?), None)
                }
                _ => (body, None, None),
            }
        };
        if ifname.is_empty() {
            return Err(bad("the interface name is empty"));
        }
        // The kernel appends a pipe's suffix to the name (netmap API 14 and later).
        let room = match pipe {
            Some(Pipe::Master(k) | Pipe::Slave(k)) => 1 + k.to_string().len(),
            None => 0,
        };
        if ifname.len() + room > MAX_IFNAME {
            return Err(bad(&format!(
                "the interface name{} is longer than {MAX_IFNAME} bytes",
                if room > 0 {
                    " with its pipe suffix"
                } else {
                    ""
                }
            )));
        }
        if is_vale(ifname) {
            // A VALE port: valeB:P, B and P of letters, digits and `_` (netmap's rule).
            let (bridge, port) = ifname.split_once(':').unwrap_or_default();
            let bridge = bridge.strip_prefix("vale").unwrap_or(bridge);
            let id = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if port.is_empty() || !id(bridge) || !id(port) {
                return Err(bad(
                    "a VALE port is valeB:P, B and P made of letters, digits and _",
                ));
            }
        } else if let Some(c) = ifname
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || "/*^@{}:".contains(*c))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed (netmap suffixes other than -K, {{K and }}K are not supported)"
            )));
        }
        Ok(PortSpec {
            ifname: ifname.to_owned(),
            ring,
            pipe,
        })
    }
}

/// What a port is registered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// Receive only: `poll` does not sync the TX rings (`NETMAP_NO_TX_POLL`).
    Receive,
    /// Transmit: `poll` and `NIOCTXSYNC` sync the TX rings.
    Transmit,
}

/// A registered netmap file descriptor and its validated memory: what both ports share.
#[derive(Debug)]
struct Registered {
    // Drop order: the walker holds pointers into `_map`; the map goes before the fd.
    mem: NetmapMem,
    _map: MmapMut,
    file: File,
}

impl Registered {
    /// Opens `/dev/netmap`, registers `spec` (`NIOCREGIF`), maps its memory and validates it.
    fn open(spec: &PortSpec, usage: Use) -> Result<Self, NetmapError> {
        if !Path::new(NETMAP_DEVICE).exists() {
            return Err(NetmapError::NotAvailable);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(NETMAP_DEVICE)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => NetmapError::NotAvailable,
                _ => NetmapError::Device { source },
            })?;
        let mut req = request(spec, usage);
        // SAFETY: NIOCREGIF takes a pointer to a struct nmreq, which `req` is (netmap_sys's
        // #[repr(C)] mirror), valid and writable for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                sys::NIOCREGIF as _,
                &mut req as *mut nmreq,
            )
        };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::ENOENT) => {
                    "; no such interface, or its driver has no netmap support (check `ip link` and load a netmap-patched driver; on older netmap a pipe's NAME must be an existing netmap port)"
                }
                Some(libc::EINVAL) => "; the ring or pipe number is out of range or the netmap API version is not supported",
                Some(libc::EBUSY) => "; another process holds the interface, ring or pipe end in exclusive mode",
                Some(libc::EPERM) | Some(libc::EACCES) => "; run as root",
                Some(libc::ENOBUFS) => "; the interface name with its pipe suffix is too long",
                _ => "",
            };
            return Err(NetmapError::Register {
                spec: spec.clone(),
                source,
                hint,
            });
        }
        let size = u64::from(req.nr_memsize);
        let map_err = |source| NetmapError::Map {
            spec: spec.clone(),
            size,
            source,
        };
        // SAFETY: maps the netmap memory of the registered fd, which the kernel keeps alive
        // while the fd is open (and the fd outlives the map: field order). Its contents are
        // shared with the kernel and only accessed through the ring walker (raw pointers and
        // atomics).
        #[allow(unsafe_code)]
        let mut map = unsafe {
            MmapOptions::new()
                .len(req.nr_memsize as usize)
                .map_mut(&file)
        }
        .map_err(map_err)?;
        let base = map.as_mut_ptr();
        // SAFETY: base..base + len is `map`, which Registered owns for as long as `mem`.
        #[allow(unsafe_code)]
        let mem = unsafe {
            NetmapMem::from_raw(base, map.len(), req.nr_offset as usize, HostRings::Auto)
        }
        .map_err(|source| NetmapError::Ring {
            spec: spec.clone(),
            source,
        })?;
        Ok(Registered {
            mem,
            _map: map,
            file,
        })
    }

    /// `ioctl(NIOCRXSYNC)` or `ioctl(NIOCTXSYNC)`.
    fn sync(&self, spec: &PortSpec, op: &'static str, request: u32) -> Result<(), NetmapError> {
        // SAFETY: NIOCRXSYNC and NIOCTXSYNC take no argument; the fd is a registered netmap fd.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _) };
        if rc != 0 {
            return Err(NetmapError::Sync {
                spec: spec.clone(),
                op,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// `poll()` for `events`, up to `timeout`: whether one of them is ready; an interrupted
    /// poll returns `false`.
    fn poll(
        &self,
        spec: &PortSpec,
        events: libc::c_short,
        timeout: Duration,
    ) -> Result<bool, NetmapError> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, count 1.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(NetmapError::Sync {
                spec: spec.clone(),
                op: "poll",
                source,
            });
        }
        Ok(rc > 0 && pfd.revents & events != 0)
    }
}

/// The rings a port uses: ring K of `IF-K`, else every ring of `count` that `check` accepts
/// (registered by this file descriptor); ring K must pass `check` too.
fn chosen_rings(
    spec: &PortSpec,
    count: usize,
    check: impl Fn(usize) -> Result<(), RingError>,
) -> Result<Vec<usize>, NetmapError> {
    match spec.ring {
        Some(k) => {
            let k = usize::from(k);
            check(k).map_err(|source| NetmapError::Ring {
                spec: spec.clone(),
                source,
            })?;
            Ok(vec![k])
        }
        None => Ok((0..count).filter(|&i| check(i).is_ok()).collect()),
    }
}

/// An open netmap port: the registered file descriptor, its mapping and its RX rings.
#[derive(Debug)]
pub struct NetmapPort {
    spec: PortSpec,
    rings: Vec<usize>,
    port: Registered,
}

impl NetmapPort {
    /// Opens and registers a port: see the module doc and [`PortSpec::parse`].
    pub fn open(spec: &str) -> Result<Self, NetmapError> {
        Self::open_spec(PortSpec::parse(spec)?)
    }

    /// Opens and registers a parsed port for receiving.
    pub fn open_spec(spec: PortSpec) -> Result<Self, NetmapError> {
        let port = Registered::open(&spec, Use::Receive)?;
        let mem = &port.mem;
        let rings = chosen_rings(&spec, mem.rx_rings(), |i| mem.ring(i).map(drop))?;
        Ok(NetmapPort { spec, rings, port })
    }

    /// The port.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// The RX rings this port reads.
    pub fn rings(&self) -> &[usize] {
        &self.rings
    }

    /// `ioctl(NIOCRXSYNC)`: asks the kernel for new frames and takes back released slots.
    pub fn rx_sync(&mut self) -> Result<(), NetmapError> {
        self.port.sync(&self.spec, "NIOCRXSYNC", sys::NIOCRXSYNC)
    }

    /// `poll()` for input (which also syncs the RX rings), up to `timeout`. Returns whether
    /// frames may be waiting; an interrupted poll returns `false`.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, NetmapError> {
        self.port.poll(&self.spec, libc::POLLIN, timeout)
    }
}

impl Source for NetmapPort {
    const IDLE: Idle = Idle::Blocks;
    const WALL_CLOCK: bool = true;
    // As shm: a batch per poll can be a handful of frames at moderate rates.
    const SAFE_POINT_EVERY: u64 = 64;

    #[inline]
    fn wait(&mut self, timeout: Duration) -> Result<(), SourceError> {
        self.poll(timeout)?;
        Ok(())
    }

    /// Every frame waiting on this port's rings; the kernel takes the slots back at the next
    /// sync or poll.
    #[inline]
    fn next_batch<K: Sink>(&mut self, now: u64, sink: &mut K) -> Result<Batch, SourceError> {
        match self
            .port
            .mem
            .feed(&self.rings, Some(LinkType::Ethernet), now, sink)
        {
            Ok(0) => Ok(Batch::Empty),
            Ok(n) => Ok(Batch::Frames(n)),
            Err(source) => Err(NetmapError::Ring {
                spec: self.spec.clone(),
                source,
            }
            .into()),
        }
    }
}

/// An open netmap port for transmitting: the registered file descriptor, its mapping and
/// its TX rings (every registered hardware TX ring of `netmap:IF`, ring K of `netmap:IF-K`,
/// the TX ring(s) of a pipe end or VALE port).
#[derive(Debug)]
pub struct NetmapTxPort {
    spec: PortSpec,
    rings: Vec<usize>,
    port: Registered,
}

impl NetmapTxPort {
    /// Opens and registers a port for transmitting: see the module doc and
    /// [`PortSpec::parse`].
    pub fn open(spec: &str) -> Result<Self, NetmapError> {
        Self::open_spec(PortSpec::parse(spec)?)
    }

    /// Opens and registers a parsed port for transmitting (`NETMAP_NO_TX_POLL` left off, so
    /// that `poll` syncs the TX rings).
    pub fn open_spec(spec: PortSpec) -> Result<Self, NetmapError> {
        let port = Registered::open(&spec, Use::Transmit)?;
        let mem = &port.mem;
        let ring_err = |source| NetmapError::Ring {
            spec: spec.clone(),
            source,
        };
        let rings = chosen_rings(&spec, mem.tx_rings() as usize, |i| mem.tx_ring(i).map(drop))?;
        if rings.is_empty() {
            return Err(ring_err(RingError::NoSuchTxRing {
                ring: 0,
                rings: mem.tx_rings() as usize,
            }));
        }
        Ok(NetmapTxPort { spec, rings, port })
    }

    /// The port.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// The TX rings this port fills (netmap's ring indices).
    pub fn rings(&self) -> &[usize] {
        &self.rings
    }

    fn ring_err(&self, source: RingError) -> NetmapError {
        NetmapError::Ring {
            spec: self.spec.clone(),
            source,
        }
    }

    /// TX ring `ring`, e.g. for [`TxRing::push_batch`] or [`TxRing::space`].
    pub fn ring_mut(&mut self, ring: usize) -> Result<&mut TxRing, NetmapError> {
        match self.port.mem.tx_ring_mut(ring) {
            Ok(r) => Ok(r),
            Err(source) => Err(NetmapError::Ring {
                spec: self.spec.clone(),
                source,
            }),
        }
    }

    /// Copies `frame` into the next free slot of TX ring `ring` (see [`TxRing::push`]);
    /// `Ok(false)` when the ring is full. It leaves with the next [`publish`](Self::publish)
    /// and sync.
    #[inline]
    pub fn push(&mut self, ring: usize, frame: &[u8]) -> Result<bool, NetmapError> {
        match self.port.mem.tx_ring_mut(ring).and_then(|r| r.push(frame)) {
            Ok(ok) => Ok(ok),
            Err(source) => Err(self.ring_err(source)),
        }
    }

    /// Free slots of TX ring `ring` (as the kernel left them at the last sync).
    pub fn space(&mut self, ring: usize) -> Result<u32, NetmapError> {
        match self.port.mem.tx_ring_mut(ring).and_then(|r| r.space()) {
            Ok(n) => Ok(n),
            Err(source) => Err(self.ring_err(source)),
        }
    }

    /// Hands the frames written on every ring of this port to the kernel (`head = cur`, no
    /// system call); returns how many.
    pub fn publish(&mut self) -> u32 {
        let mut n = 0;
        for &r in &self.rings {
            if let Ok(ring) = self.port.mem.tx_ring_mut(r) {
                n += ring.publish();
            }
        }
        n
    }

    /// `ioctl(NIOCTXSYNC)`: transmits the published frames of every TX ring of this port and
    /// takes back the slots already sent (`tail` moves on).
    pub fn tx_sync(&mut self) -> Result<(), NetmapError> {
        self.port.sync(&self.spec, "NIOCTXSYNC", sys::NIOCTXSYNC)
    }

    /// `poll()` for output (which also syncs the TX rings), up to `timeout`: whether a TX ring
    /// has room; an interrupted poll returns `false`.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, NetmapError> {
        self.port.poll(&self.spec, libc::POLLOUT, timeout)
    }

    /// Frames published on this port's rings and not sent yet (as of the last sync).
    pub fn in_flight(&mut self) -> Result<u32, NetmapError> {
        let mut n = 0;
        for &r in &self.rings {
            match self
                .port
                .mem
                .tx_ring_mut(r)
                .and_then(|ring| ring.in_flight())
            {
                Ok(k) => n += k,
                Err(source) => {
                    return Err(NetmapError::Ring {
                        spec: self.spec.clone(),
                        source,
                    })
                }
            }
        }
        Ok(n)
    }
}

/// The `NIOCREGIF` request for a spec.
fn request(spec: &PortSpec, usage: Use) -> nmreq {
    // SAFETY: nmreq is a plain C struct of integers and a char array: all-zero is valid.
    #[allow(unsafe_code)]
    let mut req: nmreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req
        .nr_name
        .iter_mut()
        .zip(spec.ifname.as_bytes().iter().take(MAX_IFNAME))
    {
        *dst = b as libc::c_char;
    }
    req.nr_version = sys::NETMAP_API as u32;
    let mask = sys::NETMAP_RING_MASK as u16;
    // As netmap's legacy nm_open: a pipe end is its parent's name, the pipe mode and the
    // pipe number in nr_ringid (newer kernels turn that into the NAME{K name themselves).
    match (spec.pipe, spec.ring) {
        (Some(Pipe::Master(k)), _) => {
            req.nr_flags = sys::NR_REG_PIPE_MASTER;
            req.nr_ringid = k & mask;
        }
        (Some(Pipe::Slave(k)), _) => {
            req.nr_flags = sys::NR_REG_PIPE_SLAVE;
            req.nr_ringid = k & mask;
        }
        (None, Some(k)) => {
            req.nr_flags = sys::NR_REG_ONE_NIC;
            req.nr_ringid = k & mask;
        }
        (None, None) => req.nr_flags = sys::NR_REG_ALL_NIC,
    }
    if usage == Use::Receive {
        // This port only receives: do not sync TX rings on poll.
        req.nr_ringid |= sys::NETMAP_NO_TX_POLL as u16;
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<PortSpec, String> {
        PortSpec::parse(s).map_err(|e| e.to_string())
    }

    fn port(ifname: &str, ring: Option<u16>, pipe: Option<Pipe>) -> PortSpec {
        PortSpec {
            ifname: ifname.into(),
            ring,
            pipe,
        }
    }

    #[test]
    fn parses_port_specs() {
        assert_eq!(spec("netmap:eth0"), Ok(port("eth0", None, None)));
        assert_eq!(spec("netmap:eth0-3"), Ok(port("eth0", Some(3), None)));
        assert_eq!(spec("eth0"), Ok(port("eth0", None, None)));
        assert_eq!(spec("netmap:br-lan"), Ok(port("br-lan", None, None)));
        assert_eq!(spec("netmap:br-lan-12"), Ok(port("br-lan", Some(12), None)));
        assert_eq!(
            spec("netmap:pipe{1"),
            Ok(port("pipe", None, Some(Pipe::Master(1))))
        );
        assert_eq!(
            spec("netmap:a}4095"),
            Ok(port("a", None, Some(Pipe::Slave(4095))))
        );
        assert_eq!(spec("vale0:a"), Ok(port("vale0:a", None, None)));
        assert_eq!(spec("vale:1-0"), Ok(port("vale:1", Some(0), None)));
        assert_eq!(
            spec("vale_x:p_2{3"),
            Ok(port("vale_x:p_2", None, Some(Pipe::Master(3))))
        );
        for s in [
            "netmap:enp1s0f0-0",
            "netmap:eth0",
            "netmap:pipe{1",
            "netmap:pipe}1",
            "vale0:a",
            "vale0:a-1",
        ] {
            assert_eq!(spec(s).unwrap().to_string(), s);
        }
        for bad in [
            "netmap:",
            "netmap:-1",
            "netmap:eth0-99999",
            "pcap:eth0",
            "netmap:eth0*",
            "netmap:eth0^",
            "netmap:vale0:1",
            "netmap:a{",
            "netmap:a{x",
            "netmap:{1",
            "netmap:a{1-2",
            "netmap:a{4096",
            "netmap:abcdefghijklmn{1",
            "netmap:abcdefghijklmnop",
            "netmap:e th0",
            "netmap:eth0/R",
            "netmap:foo:bar",
            "vale0:",
            "vale0:a.b",
            "vale-0:a",
        ] {
            let e = spec(bad).unwrap_err();
            assert!(e.contains("netmap:IF-K"), "{bad}: {e}");
        }
        assert!(spec("netmap:vale0:1")
            .unwrap_err()
            .contains("without the netmap: prefix"));
        // 13 bytes + "{1" fits IFNAMSIZ - 1.
        assert!(spec("netmap:abcdefghijklm{1").is_ok());
    }

    #[test]
    fn request_encodes_the_spec() {
        let r = request(&port("eth1", Some(5), None), Use::Receive);
        assert_eq!(
            &r.nr_name[..5],
            &[b'e' as libc::c_char, b't' as _, b'h' as _, b'1' as _, 0]
        );
        assert_eq!(r.nr_flags, sys::NR_REG_ONE_NIC);
        assert_eq!(r.nr_ringid, 5 | sys::NETMAP_NO_TX_POLL as u16);
        assert_eq!(r.nr_version, 11);
        let r = request(&port("eth1", None, None), Use::Receive);
        assert_eq!(r.nr_flags, sys::NR_REG_ALL_NIC);
        // Legacy struct nmreq is 60 bytes (IFNAMSIZ + 11 × 4); NIOCREGIF encodes that size.
        assert_eq!(std::mem::size_of::<nmreq>(), 60);
        assert_eq!((sys::NIOCREGIF >> 16) & 0x3fff, 60);
    }

    #[test]
    fn transmit_request_syncs_tx_on_poll() {
        // A sender must not set NETMAP_NO_TX_POLL: its poll() is what transmits.
        let r = request(&port("eth1", Some(5), None), Use::Transmit);
        assert_eq!(r.nr_flags, sys::NR_REG_ONE_NIC);
        assert_eq!(r.nr_ringid, 5);
        let r = request(&port("eth1", None, None), Use::Transmit);
        assert_eq!((r.nr_flags, r.nr_ringid), (sys::NR_REG_ALL_NIC, 0));
        // Pipes as legacy nm_open encodes them: parent name, pipe mode, number in nr_ringid.
        let r = request(&PortSpec::parse("netmap:pipe{7").unwrap(), Use::Transmit);
        assert_eq!((r.nr_flags, r.nr_ringid), (sys::NR_REG_PIPE_MASTER, 7));
        assert_eq!(r.nr_name[4], 0);
        let r = request(&PortSpec::parse("netmap:pipe}7").unwrap(), Use::Receive);
        assert_eq!(r.nr_flags, sys::NR_REG_PIPE_SLAVE);
        assert_eq!(r.nr_ringid, 7 | sys::NETMAP_NO_TX_POLL as u16);
        // A VALE port is registered under its full name, all rings.
        let r = request(&PortSpec::parse("vale0:a").unwrap(), Use::Transmit);
        let name: Vec<u8> = r.nr_name[..8].iter().map(|&c| c as u8).collect();
        assert_eq!(&name, b"vale0:a\0");
        assert_eq!((r.nr_flags, r.nr_ringid), (sys::NR_REG_ALL_NIC, 0));
        // NIOCTXSYNC is _IO('i', 148) on Linux.
        #[cfg(target_os = "linux")]
        assert_eq!(sys::NIOCTXSYNC, (u32::from(b'i') << 8) | 148);
    }

    #[test]
    fn missing_module_is_a_clear_error() {
        if Path::new(NETMAP_DEVICE).exists() {
            eprintln!("/dev/netmap exists here: skipping the not-available check");
            return;
        }
        let e = NetmapPort::open("eth0").unwrap_err();
        assert!(matches!(e, NetmapError::NotAvailable));
        assert_eq!(
            e.to_string(),
            "netmap is not available: /dev/netmap does not exist (the netmap kernel module is not loaded); see scripts/netmap-setup.sh to build and load it"
        );
        assert!(matches!(
            NetmapPort::open("netmap:eth0-1"),
            Err(NetmapError::NotAvailable)
        ));
        assert!(matches!(
            NetmapPort::open("netmap:"),
            Err(NetmapError::BadSpec { .. })
        ));
        for s in ["netmap:eth0", "netmap:eth0-1", "netmap:pipe{1", "vale0:a"] {
            assert!(
                matches!(NetmapTxPort::open(s), Err(NetmapError::NotAvailable)),
                "{s}"
            );
        }
        assert!(matches!(
            NetmapTxPort::open("netmap:eth0*"),
            Err(NetmapError::BadSpec { .. })
        ));
    }
}
