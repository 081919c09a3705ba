//! The real netmap port: `/dev/netmap`, `NIOCREGIF`, one mmap, and the [`super::ring`] walker.
//!
//! [`NetmapPort::open`] takes `netmap:IF` (every hardware ring of IF: `NR_REG_ALL_NIC`),
//! `netmap:IF-K` (hardware ring K only: `NR_REG_ONE_NIC`, one port per worker) or a bare
//! interface name (same as `netmap:IF`). It opens `/dev/netmap`, registers the interface with
//! the legacy `struct nmreq` of the `netmap_sys` crate (API 11, still accepted by current
//! netmap), maps `nr_memsize` bytes of the file descriptor with `memmap2`, and validates the
//! image at `nr_offset` with [`NetmapMem::from_raw`]. The receive loop is
//! [`NetmapPort::poll`] (or [`NetmapPort::rx_sync`]) then [`NetmapPort::rx_batch`] per ring:
//! frames are lent from the netmap buffers and the slots go back at the end of each batch.
//!
//! No machine this is developed on has the kernel module: this path is compiled and its
//! layout unit-tested everywhere (see [`super::ring`]), and only runs where `/dev/netmap`
//! exists. `scripts/netmap-setup.sh` describes how to build and load netmap on a real host.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use memmap2::{MmapMut, MmapOptions};
use netmap_sys::netmap::{self as sys, nmreq};

use super::ring::{HostRings, NetmapMem, RingError};

/// The netmap control device.
pub const NETMAP_DEVICE: &str = "/dev/netmap";
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = sys::IFNAMSIZ - 1;

/// What a `netmap:` port spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The interface.
    pub ifname: String,
    /// One hardware ring, or `None` for all of them.
    pub ring: Option<u16>,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ring {
            Some(k) => write!(f, "netmap:{}-{k}", self.ifname),
            None => write!(f, "netmap:{}", self.ifname),
        }
    }
}

/// Why a netmap port could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetmapError {
    /// The spec does not parse.
    #[error("bad netmap port {spec:?}: {reason}; write netmap:IF (all rings) or netmap:IF-K (hardware ring K), e.g. netmap:eth0-3")]
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
    /// `NIOCRXSYNC` or `poll` failed.
    #[error("netmap {spec}: {op} failed: {source}")]
    Sync {
        /// The port.
        spec: PortSpec,
        /// "NIOCRXSYNC" or "poll".
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl PortSpec {
    /// Parses `netmap:IF`, `netmap:IF-K`, or a bare interface name (all rings).
    ///
    /// As in netmap's own `nm_open`, a trailing `-` followed by digits is a ring number, so
    /// an interface whose name ends like that (`veth-1`) can only be named with a ring.
    /// netmap's other suffixes (`*`, `^`, `@`, `{`, `}`, `/...`) are not supported.
    pub fn parse(spec: &str) -> Result<Self, NetmapError> {
        let bad = |reason: &str| NetmapError::BadSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let body = match spec.strip_prefix("netmap:") {
            Some(b) => b,
            None if spec.contains(':') => {
                return Err(bad("only the netmap: prefix is understood here"))
            }
            None => spec,
        };
        let (ifname, ring) = match body.rsplit_once('-') {
            Some((name, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
                let k: u16 = k
                    .parse()
                    .ok()
                    .filter(|&k| k <= sys::NETMAP_RING_MASK as u16)
                    .ok_or_else(|| bad("ring number is over 4095"))?;
                (name, Some(k))
            }
            _ => (body, None),
        };
        if ifname.is_empty() {
            return Err(bad("the interface name is empty"));
        }
        if ifname.len() > MAX_IFNAME {
            return Err(bad(&format!(
                "the interface name is longer than {MAX_IFNAME} bytes"
            )));
        }
        if let Some(c) = ifname
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || "/*^@{}:".contains(*c))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed (netmap suffixes other than -K are not supported)"
            )));
        }
        Ok(PortSpec {
            ifname: ifname.to_owned(),
            ring,
        })
    }
}

/// An open netmap port: the registered file descriptor, its mapping and its RX rings.
#[derive(Debug)]
pub struct NetmapPort {
    spec: PortSpec,
    mem: NetmapMem,
    rings: Vec<usize>,
    // Drop order: the walker above holds pointers into `_map`; the map goes before the fd.
    _map: MmapMut,
    file: File,
}

impl NetmapPort {
    /// Opens and registers a port: see the module doc and [`PortSpec::parse`].
    pub fn open(spec: &str) -> Result<Self, NetmapError> {
        Self::open_spec(PortSpec::parse(spec)?)
    }

    /// Opens and registers a parsed port.
    pub fn open_spec(spec: PortSpec) -> Result<Self, NetmapError> {
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
        let mut req = request(&spec);
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
                    "; no such interface, or its driver has no netmap support (check `ip link` and load a netmap-patched driver)"
                }
                Some(libc::EINVAL) => "; the ring number is out of range or the netmap API version is not supported",
                Some(libc::EBUSY) => "; another process holds the interface or ring in exclusive mode",
                Some(libc::EPERM) | Some(libc::EACCES) => "; run as root",
                _ => "",
            };
            return Err(NetmapError::Register { spec, source, hint });
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
        // SAFETY: base..base + len is `map`, which the port owns for as long as `mem`.
        #[allow(unsafe_code)]
        let mem = unsafe {
            NetmapMem::from_raw(base, map.len(), req.nr_offset as usize, HostRings::Auto)
        }
        .map_err(|source| NetmapError::Ring {
            spec: spec.clone(),
            source,
        })?;
        let rings = match spec.ring {
            Some(k) => vec![usize::from(k)],
            None => (0..mem.rx_rings())
                .filter(|&i| mem.ring(i).is_ok())
                .collect(),
        };
        for &r in &rings {
            mem.ring(r).map_err(|source| NetmapError::Ring {
                spec: spec.clone(),
                source,
            })?;
        }
        Ok(NetmapPort {
            spec,
            mem,
            rings,
            _map: map,
            file,
        })
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
        // SAFETY: NIOCRXSYNC takes no argument; the fd is a registered netmap fd.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), sys::NIOCRXSYNC as _) };
        if rc != 0 {
            return Err(NetmapError::Sync {
                spec: self.spec.clone(),
                op: "NIOCRXSYNC",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// `poll()` for input (which also syncs the RX rings), up to `timeout`. Returns whether
    /// frames may be waiting; an interrupted poll returns `false`.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, NetmapError> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
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
                spec: self.spec.clone(),
                op: "poll",
                source,
            });
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Hands every frame waiting on RX ring `ring` to `f` and releases the slots (the kernel
    /// takes them back at the next sync or poll).
    #[inline]
    pub fn rx_batch(&mut self, ring: usize, f: impl FnMut(&[u8])) -> Result<usize, NetmapError> {
        match self.mem.rx_batch(ring, f) {
            Ok(n) => Ok(n),
            Err(source) => Err(NetmapError::Ring {
                spec: self.spec.clone(),
                source,
            }),
        }
    }
}

/// The `NIOCREGIF` request for a spec.
fn request(spec: &PortSpec) -> nmreq {
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
    match spec.ring {
        Some(k) => {
            req.nr_flags = sys::NR_REG_ONE_NIC;
            req.nr_ringid = k & sys::NETMAP_RING_MASK as u16;
        }
        None => req.nr_flags = sys::NR_REG_ALL_NIC,
    }
    // This port only receives: do not sync TX rings on poll.
    req.nr_ringid |= sys::NETMAP_NO_TX_POLL as u16;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<PortSpec, String> {
        PortSpec::parse(s).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_port_specs() {
        assert_eq!(
            spec("netmap:eth0"),
            Ok(PortSpec {
                ifname: "eth0".into(),
                ring: None
            })
        );
        assert_eq!(
            spec("netmap:eth0-3"),
            Ok(PortSpec {
                ifname: "eth0".into(),
                ring: Some(3)
            })
        );
        assert_eq!(
            spec("eth0"),
            Ok(PortSpec {
                ifname: "eth0".into(),
                ring: None
            })
        );
        assert_eq!(
            spec("netmap:br-lan"),
            Ok(PortSpec {
                ifname: "br-lan".into(),
                ring: None
            })
        );
        assert_eq!(
            spec("netmap:br-lan-12"),
            Ok(PortSpec {
                ifname: "br-lan".into(),
                ring: Some(12)
            })
        );
        assert_eq!(
            spec("netmap:enp1s0f0-0").unwrap().to_string(),
            "netmap:enp1s0f0-0"
        );
        for bad in [
            "netmap:",
            "netmap:-1",
            "netmap:eth0-99999",
            "pcap:eth0",
            "netmap:eth0*",
            "netmap:eth0^",
            "netmap:vale0:1",
            "netmap:a{1",
            "netmap:abcdefghijklmnop",
            "netmap:e th0",
            "netmap:eth0/R",
        ] {
            let e = spec(bad).unwrap_err();
            assert!(e.contains("netmap:IF-K"), "{bad}: {e}");
        }
    }

    #[test]
    fn request_encodes_the_spec() {
        let r = request(&PortSpec {
            ifname: "eth1".into(),
            ring: Some(5),
        });
        assert_eq!(
            &r.nr_name[..5],
            &[b'e' as libc::c_char, b't' as _, b'h' as _, b'1' as _, 0]
        );
        assert_eq!(r.nr_flags, sys::NR_REG_ONE_NIC);
        assert_eq!(r.nr_ringid, 5 | sys::NETMAP_NO_TX_POLL as u16);
        assert_eq!(r.nr_version, 11);
        let r = request(&PortSpec {
            ifname: "eth1".into(),
            ring: None,
        });
        assert_eq!(r.nr_flags, sys::NR_REG_ALL_NIC);
        // Legacy struct nmreq is 60 bytes (IFNAMSIZ + 11 × 4); NIOCREGIF encodes that size.
        assert_eq!(std::mem::size_of::<nmreq>(), 60);
        assert_eq!((sys::NIOCREGIF >> 16) & 0x3fff, 60);
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
    }
}
