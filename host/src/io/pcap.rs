//! Offline capture source: legacy pcap and pcapng files.
//!
//! [`CaptureFile::open`] maps the whole file read-only with `memmap2` and checks its first
//! bytes; [`CaptureFile::packets`] then walks it with `pcap-parser`'s slice parsers
//! (`parse_pcap_frame*` for legacy pcap, `parse_block_le`/`parse_block_be` for pcapng),
//! handing out [`CapturedPacket`]s whose `data` borrows straight from the map: nothing is
//! copied and nothing is allocated per packet (one caveat: `pcap-parser` collects the options
//! of an Enhanced Packet Block into a `Vec`, which allocates only when a block has options).
//!
//! # What is read
//!
//! - Legacy pcap, both byte orders, microsecond (`0xa1b2c3d4`) and nanosecond (`0xa1b23c4d`)
//!   magic, plus the little-endian "modified" (Kuznetzov) variant `0xa1b2cd34`. The link
//!   type is the low 16 bits of the header's link-type field (the upper bits carry FCS
//!   information). The header's `thiszone` is ignored, as libpcap and Wireshark do.
//! - pcapng: any number of sections (each with its own byte order) and interfaces, each
//!   interface with its own link type, snapshot length, `if_tsresol` (default 10^-6 s;
//!   powers of 10 and of 2) and `if_tsoffset`. Enhanced Packet Blocks, Simple Packet Blocks
//!   (they carry no timestamp: the previous packet's is reused, 0 before any) and obsolete
//!   Packet Blocks (type 2, decoded here since `pcap-parser` does not) yield packets; every
//!   other block is checked for consistent framing and skipped unparsed.
//!
//! # Timestamps
//!
//! Capture timestamps become the engine's clock: `u64` nanoseconds since the Unix epoch,
//! rounded down when the file's resolution is finer than a nanosecond or not a power of 10,
//! clamped to `0..=u64::MAX` when `if_tsoffset` would push them out of range.
//!
//! # Errors and robustness
//!
//! Nothing here panics on any input. The iterator yields every complete record in file
//! order; when it meets a record that runs past the end of the file it yields one
//! [`CaptureError::Truncated`], when it meets an inconsistent one (absurd captured length,
//! mismatched pcapng block lengths, a packet naming an undeclared interface, ...) one
//! [`CaptureError::Corrupt`]; both name the record's byte offset, and iteration ends after
//! them. Records before the bad one have already been handed out.
//!
//! A captured length larger than the packet's original length or than the snapshot length is
//! tolerated (the captured bytes are used) as long as the record fits in the file. A record
//! running past the end of the file counts as truncated unless its length is implausible
//! (over [`MAX_RECORD_LEN`], or for legacy pcap over both the file's snapshot length and
//! 262144), in which case it is reported as corrupt.
//!
//! # Memory map caveat
//!
//! The file is mapped, not read. If another process truncates the file while it is mapped,
//! touching the vanished pages raises `SIGBUS`; the mapping is registered with
//! `io::mapguard`, whose handler maps zero pages over the vanished range and raises a
//! flag. The iterator touches each packet's last byte and checks that flag before handing
//! the packet out, so it stops with [`CaptureError::Shrank`] ("the file shrank to N bytes
//! while being read") and never delivers bytes that were not in the file; every packet
//! before was handed out. The cost per packet is one load of a flag nobody writes.
//! Appending, as a live `tcpdump -w` does, is harmless: the map keeps the length it had at
//! open.

use std::fmt::Write as _;
use std::fs::File;
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::mapguard::MapGuard;
use pcap_parser::nom;
use pcap_parser::pcapng::{Block, OptionCode};
use pcap_parser::PcapError;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::wire::LinkType;

/// Largest record (legacy pcap captured length, or pcapng block length) accepted as
/// plausible: 128 MiB, libpcap's largest per-link-type snapshot length (D-Bus). A longer
/// record that runs past the end of the file is reported as corrupt, not truncated; a
/// legacy pcap record claiming more is corrupt even inside the file.
pub const MAX_RECORD_LEN: u32 = 128 * 1024 * 1024;

/// libpcap's default maximum snapshot length, used with the file's own snapshot length to
/// judge whether a legacy pcap record running past the end of the file is truncated or
/// corrupt.
const DEFAULT_MAX_SNAPLEN: u32 = 262_144;

const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const PCAP_MAGIC_MODIFIED: u32 = 0xa1b2_cd34;
const PCAP_HEADER_LEN: usize = 24;

const SHB_MAGIC: u32 = pcap_parser::pcapng::SHB_MAGIC;
const IDB_MAGIC: u32 = pcap_parser::pcapng::IDB_MAGIC;
const EPB_MAGIC: u32 = pcap_parser::pcapng::EPB_MAGIC;
const SPB_MAGIC: u32 = pcap_parser::pcapng::SPB_MAGIC;
const BOM_MAGIC: u32 = pcap_parser::pcapng::BOM_MAGIC;
/// Obsolete Packet Block (pcapng drafts before EPB); `pcap-parser` reports it as unknown.
const PB_MAGIC: u32 = 0x0000_0002;
/// Smallest pcapng block: type, length, trailing length.
const NG_MIN_BLOCK: usize = 12;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Container format of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaptureFormat {
    /// Legacy libpcap format (`.pcap`, `.cap`): one link type for the whole file.
    Pcap,
    /// pcapng: sections of blocks, with per-interface link types and time resolutions.
    PcapNg,
}

/// Why a capture could not be opened or read to the end.
///
/// Every message names the file, the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The path does not exist.
    #[error("{}: no such file; check the path (a .pcap or .pcapng capture is expected)", .path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("{}: is a directory, not a capture file; pass one .pcap or .pcapng file from it", .path.display())]
    IsDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not a regular file (pipe, socket, device), so it cannot be mapped.
    #[error("{}: not a regular file (a pipe, socket or device); save the capture to a file first and pass that", .path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The operating system refused access.
    #[error("{}: permission denied while {op}; make the file readable by this user (chmod/chown) or run as a user who can read it", .path.display())]
    PermissionDenied {
        /// The path given.
        path: PathBuf,
        /// What was being done: "opening it", ...
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other I/O failure while opening or mapping the file.
    #[error("{}: I/O error while {op}: {source}; check that the file is a readable capture on a local filesystem", .path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// What was being done: "opening it", "memory-mapping it", ...
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{}: file is empty (0 bytes), so it holds no capture; was the capture stopped before anything was written?", .path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
    },
    /// The file does not start with a pcap or pcapng magic number.
    #[error("{}: not a pcap or pcapng file (starts with {head}){hint}; pass a capture written by tcpdump, dumpcap or Wireshark", .path.display())]
    NotACapture {
        /// The path given.
        path: PathBuf,
        /// The first bytes, as hex and printable ASCII.
        head: String,
        /// A guess at what the file is instead, or empty.
        hint: &'static str,
    },
    /// A record (or the file header) runs past the end of the file. Every complete record
    /// before it has been yielded.
    #[error("{}: truncated at byte {offset}: the {what} there needs {needed} bytes but only {available} remain; all complete packets before it were read (the file was cut short or is still being written: re-copy it, or ignore its tail)", .path.display())]
    Truncated {
        /// The path given.
        path: PathBuf,
        /// Byte offset of the incomplete record in the file.
        offset: u64,
        /// What kind of record: "packet record", "pcapng block", ...
        what: &'static str,
        /// Bytes the record needs from `offset`.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// Another process truncated the file while it was being read. Every packet before
    /// `offset` has been yielded.
    #[error("{}: the file shrank to {size} bytes while being read (reading byte {offset}); packets before it were read (do not truncate or rewrite a capture in place while flowpeek reads it)", .path.display())]
    Shrank {
        /// The path given.
        path: PathBuf,
        /// The file's size when the shrink was noticed.
        size: u64,
        /// Byte offset of the record being read.
        offset: u64,
    },
    /// A record is inconsistent; nothing after it can be trusted. Every record before it has
    /// been yielded.
    #[error("{}: corrupt {what} at byte {offset}: {detail}; packets before it were read, nothing after it is (repair the file, e.g. with pcapfix, or cut it before that offset)", .path.display())]
    Corrupt {
        /// The path given.
        path: PathBuf,
        /// Byte offset of the bad record in the file.
        offset: u64,
        /// What kind of record: "packet record", "enhanced packet block", ...
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl CaptureError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CaptureError::NotFound { path }
            | CaptureError::IsDirectory { path }
            | CaptureError::NotAFile { path }
            | CaptureError::PermissionDenied { path, .. }
            | CaptureError::Io { path, .. }
            | CaptureError::Empty { path }
            | CaptureError::NotACapture { path, .. }
            | CaptureError::Truncated { path, .. }
            | CaptureError::Shrank { path, .. }
            | CaptureError::Corrupt { path, .. } => path,
        }
    }

    /// Byte offset in the file of the record the error is about, if it is about one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            CaptureError::Truncated { offset, .. }
            | CaptureError::Shrank { offset, .. }
            | CaptureError::Corrupt { offset, .. } => Some(*offset),
            _ => None,
        }
    }
}

/// One captured frame, borrowed from the capture file's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedPacket<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// Link-layer framing, or `None` when flowpeek does not support `link_code` (the caller
    /// counts such packets).
    pub link: Option<LinkType>,
    /// The raw `LINKTYPE_` value of the packet's interface.
    pub link_code: u32,
    /// The captured bytes (possibly fewer than were on the wire).
    pub data: &'a [u8],
    /// Length of the frame on the wire.
    pub orig_len: u32,
    /// Byte offset in the file of the record holding this packet.
    pub offset: u64,
}

/// Legacy pcap file header fields needed to walk the records.
#[derive(Clone, Copy, Debug)]
struct PcapInfo {
    big_endian: bool,
    nanos: bool,
    modified: bool,
    link_code: u32,
    link: Option<LinkType>,
    snaplen: u32,
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    Pcap(PcapInfo),
    PcapNg,
}

/// A capture file (pcap or pcapng), mapped read-only into memory.
#[derive(Debug)]
pub struct CaptureFile {
    /// Declared before `map`: unregistered before the mapping goes away.
    guard: MapGuard,
    map: Mmap,
    /// Kept open to tell the size the file shrank to.
    file: File,
    path: PathBuf,
    layout: Layout,
}

impl CaptureFile {
    /// Opens and maps `path`, and checks that it starts like a pcap or pcapng file.
    ///
    /// Errors: [`CaptureError::NotFound`], [`CaptureError::IsDirectory`],
    /// [`CaptureError::NotAFile`], [`CaptureError::PermissionDenied`], [`CaptureError::Io`],
    /// [`CaptureError::Empty`], [`CaptureError::NotACapture`], and
    /// [`CaptureError::Truncated`] when the file is shorter than its own file header.
    pub fn open(path: &Path) -> Result<CaptureFile, CaptureError> {
        let meta =
            std::fs::metadata(path).map_err(|e| io_error(path, "reading its metadata", e))?;
        if meta.is_dir() {
            return Err(CaptureError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        if !meta.is_file() {
            return Err(CaptureError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(|e| io_error(path, "opening it", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(path, "reading its metadata", e))?
            .len();
        if len == 0 {
            // A zero-length mapping is an error on most systems: never try it.
            return Err(CaptureError::Empty {
                path: path.to_path_buf(),
            });
        }
        let map = map_read_only(&file).map_err(|e| io_error(path, "memory-mapping it", e))?;
        if map.is_empty() {
            // Shrunk to nothing between the length check and the map.
            return Err(CaptureError::Empty {
                path: path.to_path_buf(),
            });
        }
        let guard = MapGuard::register(map.as_ptr(), map.len());
        let layout = detect(&map, path)?;
        Ok(CaptureFile {
            guard,
            map,
            file,
            path: path.to_path_buf(),
            layout,
        })
    }

    /// Iterates over the packets in file order. Each call starts from the beginning.
    ///
    /// After an `Err` item the iterator ends; see the module docs.
    pub fn packets(&self) -> Packets<'_> {
        let pos = match self.layout {
            Layout::Pcap(_) => PCAP_HEADER_LEN,
            Layout::PcapNg => 0,
        };
        Packets {
            bytes: &self.map,
            shrank: self.guard.flag(),
            file: Some(&self.file),
            path: &self.path,
            layout: self.layout,
            pos,
            done: false,
            ng: NgState::default(),
        }
    }

    /// Size of the file in bytes (as mapped at open), for progress reporting against
    /// [`CapturedPacket::offset`].
    pub fn len_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Container format of the file.
    pub fn format(&self) -> CaptureFormat {
        match self.layout {
            Layout::Pcap(_) => CaptureFormat::Pcap,
            Layout::PcapNg => CaptureFormat::PcapNg,
        }
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: `Mmap::map` is unsafe because the mapped bytes may change, or the file may
    // shrink, under us while the map is alive. We map read-only and never write through the
    // map. Content changes by another process can at worst make us parse different bytes,
    // which every parser here tolerates (bounds-checked, no panics). If another process
    // truncates the file while it is mapped, reading the vanished pages raises SIGBUS,
    // which the guard registered by `open` turns into zero pages and a flag (module docs).
    unsafe { Mmap::map(file) }
}

fn io_error(path: &Path, op: &'static str, source: std::io::Error) -> CaptureError {
    let path = path.to_path_buf();
    match source.kind() {
        std::io::ErrorKind::NotFound => CaptureError::NotFound { path },
        std::io::ErrorKind::PermissionDenied => CaptureError::PermissionDenied { path, op, source },
        _ => CaptureError::Io { path, op, source },
    }
}

/// Recognises the format from the first bytes, reading the legacy pcap header if any.
fn detect(bytes: &[u8], path: &Path) -> Result<Layout, CaptureError> {
    let not_a_capture = |hint: &'static str| CaptureError::NotACapture {
        path: path.to_path_buf(),
        head: describe_head(bytes),
        hint,
    };
    let Some(magic) = read_u32(bytes, 0, false) else {
        return Err(not_a_capture(" (too short to hold any capture header)"));
    };
    match magic {
        SHB_MAGIC => {
            let Some(bom) = read_u32(bytes, 8, false) else {
                return Err(truncated(
                    path,
                    0,
                    "pcapng section header block",
                    28,
                    bytes.len(),
                ));
            };
            if bom == BOM_MAGIC || bom == BOM_MAGIC.swap_bytes() {
                Ok(Layout::PcapNg)
            } else {
                Err(not_a_capture(
                    " (it starts like pcapng but has no byte-order magic at byte 8)",
                ))
            }
        }
        PCAP_MAGIC_MICROS | PCAP_MAGIC_NANOS | PCAP_MAGIC_MODIFIED => pcap_header(bytes, path),
        m if m == PCAP_MAGIC_MICROS.swap_bytes() || m == PCAP_MAGIC_NANOS.swap_bytes() => {
            pcap_header(bytes, path)
        }
        m if m == PCAP_MAGIC_MODIFIED.swap_bytes() => Err(not_a_capture(
            " (a big-endian \"modified\" pcap, which is not supported; convert it with editcap)",
        )),
        _ => Err(not_a_capture(guess_kind(bytes))),
    }
}

fn pcap_header(bytes: &[u8], path: &Path) -> Result<Layout, CaptureError> {
    match pcap_parser::parse_pcap_header(bytes) {
        Ok((_, h)) => {
            // Low 16 bits: LINKTYPE_ value; the upper bits carry FCS length information.
            let link_code = (h.network.0 as u32) & 0xffff;
            Ok(Layout::Pcap(PcapInfo {
                big_endian: h.is_bigendian(),
                nanos: h.is_nanosecond_precision(),
                modified: h.is_modified_format(),
                link_code,
                link: LinkType::from_pcap(link_code),
                snaplen: h.snaplen,
            }))
        }
        Err(nom::Err::Incomplete(_)) => Err(truncated(
            path,
            0,
            "pcap file header",
            PCAP_HEADER_LEN as u64,
            bytes.len(),
        )),
        Err(_) => Err(CaptureError::NotACapture {
            path: path.to_path_buf(),
            head: describe_head(bytes),
            hint: "",
        }),
    }
}

/// `0x0123456789abcdef ("printable")` for the first (up to) 8 bytes.
fn describe_head(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let mut s = String::from("0x");
    for b in head {
        let _ = write!(s, "{b:02x}");
    }
    s.push_str(" \"");
    for &b in head {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(char::from(b));
        } else {
            s.push('.');
        }
    }
    s.push('"');
    s
}

fn guess_kind(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        " (looks gzip-compressed: decompress it first, e.g. with gunzip)"
    } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        " (looks xz-compressed: decompress it first, e.g. with unxz)"
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        " (looks zstd-compressed: decompress it first, e.g. with unzstd)"
    } else if bytes.starts_with(b"BZh") {
        " (looks bzip2-compressed: decompress it first, e.g. with bunzip2)"
    } else if bytes.starts_with(b"PK\x03\x04") {
        " (looks like a zip archive: extract the capture first)"
    } else {
        ""
    }
}

fn read_u32(bytes: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

fn read_u16(bytes: &[u8], at: usize, big_endian: bool) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(if big_endian {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

fn truncated(
    path: &Path,
    offset: u64,
    what: &'static str,
    needed: u64,
    available: usize,
) -> CaptureError {
    CaptureError::Truncated {
        path: path.to_path_buf(),
        offset,
        what,
        needed,
        available: available as u64,
    }
}

fn corrupt(path: &Path, offset: u64, what: &'static str, detail: String) -> CaptureError {
    CaptureError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
        detail,
    }
}

fn describe_parse_error(e: &nom::Err<PcapError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "a field runs past the end of the record".to_string(),
        nom::Err::Error(pe) | nom::Err::Failure(pe) => match pe {
            PcapError::NomError(_, kind) => format!("fields are inconsistent ({kind:?})"),
            other => format!("parse error ({})", other.to_owned_vec()),
        },
    }
}

/// One pcapng interface, as declared by an Interface Description Block.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link_code: u32,
    link: Option<LinkType>,
    snaplen: u32,
    /// Timestamp units per second (`if_tsresol`).
    units_per_sec: u128,
    /// `if_tsoffset`, seconds.
    offset_secs: i64,
}

/// pcapng walking state (unused for legacy pcap).
#[derive(Debug, Default)]
struct NgState {
    /// Byte order of the current section.
    big_endian: bool,
    /// Interfaces of the current section, by interface id.
    interfaces: Vec<Interface>,
    /// Timestamp of the previous packet, for Simple Packet Blocks.
    last_ts: u64,
}

/// Iterator over the packets of a [`CaptureFile`]; see [`CaptureFile::packets`].
///
/// Yields `Ok` for every complete record, then possibly one `Err`
/// ([`CaptureError::Truncated`] or [`CaptureError::Corrupt`]), then ends.
#[derive(Debug)]
pub struct Packets<'a> {
    bytes: &'a [u8],
    /// Raised by the `SIGBUS` guard when the file shrank under the map ([`NEVER`] for a
    /// window read into memory).
    shrank: &'static AtomicBool,
    /// The mapped file (`None` for a window read into memory).
    file: Option<&'a File>,
    path: &'a Path,
    layout: Layout,
    /// Offset of the next record; always `<= bytes.len()`.
    pos: usize,
    done: bool,
    ng: NgState,
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<CapturedPacket<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.pos as u64;
        let step = match self.layout {
            Layout::Pcap(info) => self.next_pcap(&info),
            Layout::PcapNg => self.next_ng(),
        };
        // Fault in the packet's last page (the file shrinks from its end) before checking
        // whether any byte read so far came from past the file's new end.
        if let Ok(Some(p)) = &step {
            std::hint::black_box(p.data.last().copied());
        }
        if self.shrank.load(Ordering::Acquire) {
            self.done = true;
            let size = self
                .file
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
            return Some(Err(CaptureError::Shrank {
                path: self.path.to_path_buf(),
                size,
                offset: at,
            }));
        }
        match step {
            Ok(Some(packet)) => Some(Ok(packet)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The flag of a window read into memory: nothing can shrink under it.
static NEVER: AtomicBool = AtomicBool::new(false);

/// Frames the records of a capture read sequentially (a pipe, stdin, a decompressor, a
/// file read with `read`), one window of bytes at a time: [`crate::io::stream`] reads the
/// stream into a buffer, hands the buffer to [`Framer::frame`], and carries the bytes of a
/// record cut by the end of the buffer over to the next one. The framing state (the
/// legacy pcap header, pcapng's sections and interfaces) lives here between windows, so a
/// window yields exactly the packets [`CaptureFile::packets`] yields for the same bytes.
#[derive(Debug)]
pub struct Framer {
    layout: Layout,
    ng: NgState,
    path: PathBuf,
}

impl Framer {
    /// Recognises the capture from its first bytes (`head`, at least the file header
    /// unless the stream is shorter). Returns the framer and where the first record starts.
    pub fn detect(head: &[u8], path: &Path) -> Result<(Framer, usize), CaptureError> {
        if head.is_empty() {
            return Err(CaptureError::Empty {
                path: path.to_path_buf(),
            });
        }
        let layout = detect(head, path)?;
        let first = match layout {
            Layout::Pcap(_) => PCAP_HEADER_LEN,
            Layout::PcapNg => 0,
        };
        Ok((
            Framer {
                layout,
                ng: NgState::default(),
                path: path.to_path_buf(),
            },
            first,
        ))
    }

    /// Container format of the stream.
    pub fn format(&self) -> CaptureFormat {
        match self.layout {
            Layout::Pcap(_) => CaptureFormat::Pcap,
            Layout::PcapNg => CaptureFormat::PcapNg,
        }
    }

    /// Hands every complete record of `bytes` (which starts at a record boundary, at byte
    /// `base` of the stream) to `f`, with offsets counted from the start of the stream.
    /// Returns where the first record not handed out starts (`bytes.len()` when all were)
    /// and the error met there, if any: a record cut by the end of `bytes` is reported as
    /// the file would report it, and the caller decides whether more bytes are coming.
    pub fn frame(
        &mut self,
        bytes: &[u8],
        base: u64,
        mut f: impl FnMut(CapturedPacket<'_>),
    ) -> (usize, Option<CaptureError>) {
        let mut packets = Packets {
            bytes,
            shrank: &NEVER,
            file: None,
            path: &self.path,
            layout: self.layout,
            pos: 0,
            done: false,
            ng: std::mem::take(&mut self.ng),
        };
        let mut error = None;
        for p in packets.by_ref() {
            match p {
                Ok(mut p) => {
                    p.offset += base;
                    f(p);
                }
                Err(e) => error = Some(e.shifted(base)),
            }
        }
        let pos = packets.pos;
        self.ng = packets.ng;
        (pos, error)
    }
}

impl CaptureError {
    /// The same error with its record offset moved by `base` bytes.
    fn shifted(mut self, base: u64) -> CaptureError {
        match &mut self {
            CaptureError::Truncated { offset, .. }
            | CaptureError::Shrank { offset, .. }
            | CaptureError::Corrupt { offset, .. } => *offset += base,
            _ => {}
        }
        self
    }
}

impl FusedIterator for Packets<'_> {}

impl<'a> Packets<'a> {
    fn next_pcap(&mut self, info: &PcapInfo) -> Result<Option<CapturedPacket<'a>>, CaptureError> {
        let bytes = self.bytes;
        let Some(rest) = bytes.get(self.pos..) else {
            return Ok(None);
        };
        if rest.is_empty() {
            return Ok(None);
        }
        let offset = self.pos as u64;
        let hdr_len = if info.modified { 24 } else { 16 };
        if rest.len() < hdr_len {
            return Err(truncated(
                self.path,
                offset,
                "packet record header",
                hdr_len as u64,
                rest.len(),
            ));
        }
        // Fields are at the same place in all three record layouts; only the order differs.
        let be = info.big_endian;
        let caplen = read_u32(rest, 8, be).unwrap_or(0);
        let orig_len = read_u32(rest, 12, be).unwrap_or(0);
        if caplen > MAX_RECORD_LEN {
            return Err(corrupt(
                self.path,
                offset,
                "packet record",
                format!("captured length {caplen} exceeds the {MAX_RECORD_LEN}-byte maximum (original length {orig_len})"),
            ));
        }
        let parsed = if info.modified {
            pcap_parser::parse_pcap_frame_modified(rest)
        } else if be {
            pcap_parser::parse_pcap_frame_be(rest)
        } else {
            pcap_parser::parse_pcap_frame(rest)
        };
        match parsed {
            Ok((remaining, frame)) => {
                self.pos += rest.len() - remaining.len();
                let frac_nanos = if info.nanos {
                    u64::from(frame.ts_usec)
                } else {
                    u64::from(frame.ts_usec) * 1_000
                };
                Ok(Some(CapturedPacket {
                    ts_nanos: u64::from(frame.ts_sec) * NANOS_PER_SEC + frac_nanos,
                    link: info.link,
                    link_code: info.link_code,
                    data: frame.data,
                    orig_len: frame.origlen,
                    offset,
                }))
            }
            Err(nom::Err::Incomplete(_)) => {
                let needed = hdr_len as u64 + u64::from(caplen);
                let limit = info.snaplen.max(DEFAULT_MAX_SNAPLEN);
                if caplen > limit {
                    Err(corrupt(
                        self.path,
                        offset,
                        "packet record",
                        format!(
                            "captured length {caplen} is over the snapshot length {} and runs past the end of the file ({} bytes left)",
                            info.snaplen,
                            rest.len()
                        ),
                    ))
                } else {
                    Err(truncated(
                        self.path,
                        offset,
                        "packet record",
                        needed,
                        rest.len(),
                    ))
                }
            }
            Err(e) => Err(corrupt(
                self.path,
                offset,
                "packet record",
                describe_parse_error(&e),
            )),
        }
    }

    fn next_ng(&mut self) -> Result<Option<CapturedPacket<'a>>, CaptureError> {
        let bytes = self.bytes;
        loop {
            let Some(rest) = bytes.get(self.pos..) else {
                return Ok(None);
            };
            if rest.is_empty() {
                return Ok(None);
            }
            let offset = self.pos as u64;
            if rest.len() < NG_MIN_BLOCK {
                return Err(truncated(
                    self.path,
                    offset,
                    "pcapng block header",
                    NG_MIN_BLOCK as u64,
                    rest.len(),
                ));
            }
            let raw_type = read_u32(rest, 0, false).unwrap_or(0);
            if raw_type == SHB_MAGIC {
                // A new section: its own byte order, read from the byte-order magic.
                let bom = read_u32(rest, 8, false).unwrap_or(0);
                self.ng.big_endian = if bom == BOM_MAGIC {
                    false
                } else if bom == BOM_MAGIC.swap_bytes() {
                    true
                } else {
                    return Err(corrupt(
                        self.path,
                        offset,
                        "pcapng section header block",
                        format!("byte-order magic is 0x{bom:08x}, expected 0x{BOM_MAGIC:08x} in either byte order"),
                    ));
                };
            }
            let be = self.ng.big_endian;
            let block_type = if be { raw_type.swap_bytes() } else { raw_type };
            let what = block_name(block_type);
            let len1 = read_u32(rest, 4, be).unwrap_or(0);
            if (len1 as usize) < NG_MIN_BLOCK || len1 % 4 != 0 {
                return Err(corrupt(
                    self.path,
                    offset,
                    what,
                    format!("block length {len1} is not a multiple of 4 of at least 12 (wrong byte order, or garbage)"),
                ));
            }
            if len1 as usize > rest.len() {
                return Err(if len1 > MAX_RECORD_LEN {
                    corrupt(
                        self.path,
                        offset,
                        what,
                        format!("block length {len1} is implausible and runs past the end of the file ({} bytes left)", rest.len()),
                    )
                } else {
                    truncated(self.path, offset, what, u64::from(len1), rest.len())
                });
            }
            let block = &rest[..len1 as usize];
            let len2 = read_u32(block, block.len() - 4, be).unwrap_or(0);
            if len2 != len1 {
                return Err(corrupt(
                    self.path,
                    offset,
                    what,
                    format!("trailing block length {len2} differs from the leading {len1}"),
                ));
            }
            // The framing is sound: whatever happens below, the next block starts after it.
            self.pos += block.len();
            match block_type {
                SHB_MAGIC | IDB_MAGIC | EPB_MAGIC | SPB_MAGIC => {}
                PB_MAGIC => return self.obsolete_packet(block, offset).map(Some),
                // Other blocks (statistics, name resolution, secrets, custom, ...) are
                // not needed for dispatch: skip them unparsed.
                _ => continue,
            }
            let parsed = if be {
                pcap_parser::pcapng::parse_block_be(block)
            } else {
                pcap_parser::pcapng::parse_block_le(block)
            };
            let parsed = match parsed {
                Ok((_, b)) => b,
                Err(e) => {
                    return Err(corrupt(self.path, offset, what, describe_parse_error(&e)));
                }
            };
            match parsed {
                Block::SectionHeader(shb) => {
                    if shb.major_version != 1 {
                        return Err(corrupt(
                            self.path,
                            offset,
                            what,
                            format!(
                                "pcapng version {}.{} is not supported (only 1.x is)",
                                shb.major_version, shb.minor_version
                            ),
                        ));
                    }
                    self.ng.interfaces.clear();
                }
                Block::InterfaceDescription(idb) => {
                    let Some(units_per_sec) = units_per_sec(idb.if_tsresol) else {
                        return Err(corrupt(
                            self.path,
                            offset,
                            what,
                            format!("if_tsresol 0x{:02x} is out of range", idb.if_tsresol),
                        ));
                    };
                    // pcap-parser reads if_tsoffset as little-endian whatever the section's
                    // byte order: read it ourselves.
                    let offset_secs = idb
                        .options
                        .iter()
                        .find(|o| o.code == OptionCode::IfTsoffset && o.len == 8)
                        .and_then(|o| {
                            let b: [u8; 8] = o.value().get(..8)?.try_into().ok()?;
                            Some(if be {
                                i64::from_be_bytes(b)
                            } else {
                                i64::from_le_bytes(b)
                            })
                        })
                        .unwrap_or(0);
                    let link_code = u32::from(idb.linktype.0 as u16);
                    self.ng.interfaces.push(Interface {
                        link_code,
                        link: LinkType::from_pcap(link_code),
                        snaplen: idb.snaplen,
                        units_per_sec,
                        offset_secs,
                    });
                }
                Block::EnhancedPacket(epb) => {
                    let iface = self.interface(epb.if_id, offset, what)?;
                    let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                    let ts_nanos = to_nanos(ts, iface.units_per_sec, iface.offset_secs);
                    self.ng.last_ts = ts_nanos;
                    return Ok(Some(CapturedPacket {
                        ts_nanos,
                        link: iface.link,
                        link_code: iface.link_code,
                        // `epb.data` borrows from the map; it is padded to 32 bits.
                        data: epb.data.get(..epb.caplen as usize).unwrap_or(epb.data),
                        orig_len: epb.origlen,
                        offset,
                    }));
                }
                Block::SimplePacket(spb) => {
                    let iface = self.interface(0, offset, what)?;
                    // Captured length: the original length, capped by the snapshot length
                    // (0: none) and by what the block holds (the rest is padding).
                    let mut caplen = spb.origlen as usize;
                    if iface.snaplen != 0 {
                        caplen = caplen.min(iface.snaplen as usize);
                    }
                    let data = &spb.data[..caplen.min(spb.data.len())];
                    return Ok(Some(CapturedPacket {
                        ts_nanos: self.ng.last_ts,
                        link: iface.link,
                        link_code: iface.link_code,
                        data,
                        orig_len: spb.origlen,
                        offset,
                    }));
                }
                _ => {}
            }
        }
    }

    /// The current section's interface `id`, or a corrupt-block error.
    fn interface(
        &self,
        id: u32,
        offset: u64,
        what: &'static str,
    ) -> Result<Interface, CaptureError> {
        self.ng.interfaces.get(id as usize).copied().ok_or_else(|| {
            corrupt(
                self.path,
                offset,
                what,
                format!(
                    "packet refers to interface {id} but the section describes {} interface(s) before it",
                    self.ng.interfaces.len()
                ),
            )
        })
    }

    /// Decodes an obsolete Packet Block (`block` is the whole, framing-checked block).
    fn obsolete_packet(
        &mut self,
        block: &'a [u8],
        offset: u64,
    ) -> Result<CapturedPacket<'a>, CaptureError> {
        let what = "packet block (obsolete)";
        let be = self.ng.big_endian;
        // type(4) len(4) if_id(2) drops(2) ts_high(4) ts_low(4) caplen(4) origlen(4) data.. len(4)
        let body_end = block.len() - 4;
        let (Some(if_id), Some(ts_high), Some(ts_low), Some(caplen), Some(orig_len)) = (
            read_u16(block, 8, be),
            read_u32(block, 12, be),
            read_u32(block, 16, be),
            read_u32(block, 20, be),
            read_u32(block, 24, be),
        ) else {
            return Err(corrupt(
                self.path,
                offset,
                what,
                format!("block of {} bytes is too short for its header", block.len()),
            ));
        };
        let data_end = 28usize.saturating_add(caplen as usize);
        if 28 > body_end || data_end > body_end {
            return Err(corrupt(
                self.path,
                offset,
                what,
                format!(
                    "captured length {caplen} does not fit in a block of {} bytes",
                    block.len()
                ),
            ));
        }
        let iface = self.interface(u32::from(if_id), offset, what)?;
        let ts = (u64::from(ts_high) << 32) | u64::from(ts_low);
        let ts_nanos = to_nanos(ts, iface.units_per_sec, iface.offset_secs);
        self.ng.last_ts = ts_nanos;
        Ok(CapturedPacket {
            ts_nanos,
            link: iface.link,
            link_code: iface.link_code,
            data: &block[28..data_end],
            orig_len,
            offset,
        })
    }
}

fn block_name(block_type: u32) -> &'static str {
    match block_type {
        SHB_MAGIC => "pcapng section header block",
        IDB_MAGIC => "interface description block",
        EPB_MAGIC => "enhanced packet block",
        SPB_MAGIC => "simple packet block",
        PB_MAGIC => "packet block (obsolete)",
        _ => "pcapng block",
    }
}

/// Timestamp units per second for an `if_tsresol` value: bit 7 clear, 10^n; set, 2^n.
fn units_per_sec(tsresol: u8) -> Option<u128> {
    let exp = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        10u128.checked_pow(exp)
    } else {
        1u128.checked_shl(exp)
    }
}

/// `ts` units of `1/units_per_sec` s plus `offset_secs`, as nanoseconds since the epoch,
/// rounded down and clamped to the `u64` range.
fn to_nanos(ts: u64, units_per_sec: u128, offset_secs: i64) -> u64 {
    // ts < 2^64 and 10^9 < 2^30: the product fits in a u128, and the quotient in an i128.
    let nanos = u128::from(ts) * u128::from(NANOS_PER_SEC) / units_per_sec.max(1);
    let nanos = nanos as i128 + i128::from(offset_secs) * i128::from(NANOS_PER_SEC);
    nanos.clamp(0, i128::from(u64::MAX)) as u64
}

#[cfg(test)]
#[path = "pcap_tests.rs"]
mod tests;
