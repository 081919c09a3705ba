//! Stream filters in tcpdump syntax, compiled and matched by libpcap itself
//! (`pcap_compile`, `pcap_offline_filter`): tcpdump syntax is what libpcap says it is.
//!
//! Owns: [`StreamFilter`] (an expression, checked when it is made, and its BPF programs,
//! compiled once per link type on first use) and the thin FFI to libpcap it needs. The
//! engine evaluates a filter once per flow, on the packet that would start it (SPEC §2.3).
//! Must not: be evaluated on packets of flows already tracked, or parse expressions itself.
//!
//! The frame is matched as captured: its length stands for the wire length too (the
//! engine is not told the original length), which only matters to `len`/`greater`/`less`.
#![allow(unsafe_code)] // The FFI edge to libpcap: every block below says why it is sound.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;

use crate::wire::LinkType;

/// libpcap's `struct bpf_program`.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut c_void,
}

/// libpcap's `struct pcap_pkthdr`.
#[repr(C)]
struct PktHdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut c_void;
    fn pcap_close(p: *mut c_void);
    fn pcap_geterr(p: *mut c_void) -> *mut c_char;
    fn pcap_compile(
        p: *mut c_void,
        fp: *mut BpfProgram,
        s: *const c_char,
        optimize: c_int,
        netmask: u32,
    ) -> c_int;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn pcap_offline_filter(fp: *const BpfProgram, h: *const PktHdr, pkt: *const u8) -> c_int;
}

/// `PCAP_NETMASK_UNKNOWN`: `ip broadcast` cannot be used, everything else can.
const NETMASK_UNKNOWN: u32 = 0xffff_ffff;
/// The snapshot length filters are compiled for (the largest libpcap accepts by default).
const SNAPLEN: c_int = 262_144;

/// An expression libpcap refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad filter expression {expr:?}: {message}")]
pub struct FilterError {
    /// The expression.
    pub expr: String,
    /// libpcap's message.
    pub message: String,
}

/// A compiled BPF program, owned (freed with `pcap_freecode`).
struct Program(BpfProgram);

// SAFETY: the program is plain memory owned by this value (the instructions libpcap
// allocated); nothing else refers to it, and matching only reads it.
unsafe impl Send for Program {}
// SAFETY: as above; `pcap_offline_filter` takes the program as `const` and keeps no state.
unsafe impl Sync for Program {}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `self.0` was filled by a successful `pcap_compile` and is freed once.
        unsafe { pcap_freecode(&mut self.0) }
    }
}

/// libpcap's DLT_ value for a framing the decoder supports.
fn dlt(link: LinkType) -> c_int {
    match link {
        LinkType::Ethernet => 1,
        // DLT_RAW: the IP version is read from the first nibble, as the decoder does.
        LinkType::RawIp => 12,
        LinkType::LinuxSll => 113,
        LinkType::LinuxSll2 => 276,
        LinkType::Null => 0,
    }
}

/// Compiles `expr` for `link`.
fn compile(expr: &CStr, link: LinkType) -> Result<Program, String> {
    // SAFETY: pcap_open_dead has no preconditions; a null return is handled.
    let p = unsafe { pcap_open_dead(dlt(link), SNAPLEN) };
    if p.is_null() {
        return Err("pcap_open_dead failed".into());
    }
    let mut prog = BpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: `p` is a live handle, `prog` a writable bpf_program, `expr` NUL-terminated.
    let rc = unsafe { pcap_compile(p, &mut prog, expr.as_ptr(), 1, NETMASK_UNKNOWN) };
    let out = if rc == 0 {
        Ok(Program(prog))
    } else {
        // SAFETY: after a failed compile, pcap_geterr gives the handle's NUL-terminated
        // message, valid until the handle is closed (it is copied before).
        Err(unsafe { CStr::from_ptr(pcap_geterr(p)) }
            .to_string_lossy()
            .into_owned())
    };
    // SAFETY: `p` came from pcap_open_dead and is closed once; the program does not refer
    // to the handle.
    unsafe { pcap_close(p) };
    out
}

/// A stream filter: a tcpdump expression, with its programs compiled per link type.
///
/// Cloning keeps the expression; the clone compiles its own programs when first used
/// (each core's engine owns its filters).
pub struct StreamFilter {
    expr: CString,
    /// One per link type met so far; `None`: the expression does not compile for it
    /// (e.g. `ether host` on raw IP), so nothing of that link type matches.
    programs: Vec<(LinkType, Option<Program>)>,
}

impl StreamFilter {
    /// Checks `expr` with libpcap (for Ethernet, the framing every expression applies to).
    pub fn new(expr: &str) -> Result<StreamFilter, FilterError> {
        let err = |message: String| FilterError {
            expr: expr.to_string(),
            message,
        };
        let c = CString::new(expr).map_err(|_| err("a NUL byte in the expression".into()))?;
        let eth = compile(&c, LinkType::Ethernet).map_err(err)?;
        Ok(StreamFilter {
            expr: c,
            programs: vec![(LinkType::Ethernet, Some(eth))],
        })
    }

    /// The expression.
    pub fn expr(&self) -> &str {
        self.expr.to_str().unwrap_or_default()
    }

    /// Whether the frame `frame` of link type `link` matches (`None`: the link type is not
    /// known, and nothing matches). The first frame of each link type compiles its program.
    pub fn matches(&mut self, link: Option<LinkType>, frame: &[u8]) -> bool {
        let Some(link) = link else { return false };
        let i = match self.programs.iter().position(|(l, _)| *l == link) {
            Some(i) => i,
            None => {
                self.programs.push((link, compile(&self.expr, link).ok()));
                self.programs.len() - 1
            }
        };
        let Some(prog) = &self.programs[i].1 else {
            return false;
        };
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let hdr = PktHdr {
            ts: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            caplen: len,
            len,
        };
        // SAFETY: `prog` is a compiled program, `hdr.caplen` is the length of `frame`, which
        // the matcher reads no further than; pcap_offline_filter keeps no pointer.
        unsafe { pcap_offline_filter(&prog.0, &hdr, frame.as_ptr()) != 0 }
    }
}

impl Clone for StreamFilter {
    fn clone(&self) -> StreamFilter {
        StreamFilter {
            expr: self.expr.clone(),
            programs: Vec::new(),
        }
    }
}

impl fmt::Debug for StreamFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StreamFilter").field(&self.expr()).finish()
    }
}

/// The value of a top-level `filter = "..."` line of a plugin's `<name>.toml`, if any (a
/// basic string; `\"` and `\\` escapes). Only this key is read by the host; the plugin
/// gets the whole text as before.
pub fn toml_filter(config: &str) -> Option<String> {
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            // A table starts: the keys after it are not top-level.
            return None;
        }
        let Some(rest) = line.strip_prefix("filter") else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start().strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame from 10.0.0.1:`sport` to 192.168.1.2:`dport` (SYN).
    fn frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08; // IPv4
        f[14] = 0x45;
        f[16] = 0;
        f[17] = 40;
        f[22] = 64;
        f[23] = 6; // TCP
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[192, 168, 1, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[46] = 0x50;
        f[47] = 0x02;
        f
    }

    #[test]
    fn libpcap_decides() {
        let eth = Some(LinkType::Ethernet);
        let mut f = StreamFilter::new("tcp port 80").unwrap();
        assert!(f.matches(eth, &frame(40000, 80)));
        assert!(!f.matches(eth, &frame(40000, 443)));
        let mut f = StreamFilter::new("src net 10.0.0.0/8 and dst portrange 1-1024").unwrap();
        assert!(f.matches(eth, &frame(40000, 80)));
        assert!(!f.matches(eth, &frame(40000, 8080)));
        assert!(!f.matches(None, &frame(40000, 80)));
        // A clone compiles again and decides the same.
        let mut c = f.clone();
        assert!(c.matches(eth, &frame(40000, 80)));
        assert_eq!(c.expr(), "src net 10.0.0.0/8 and dst portrange 1-1024");
    }

    #[test]
    fn bad_expression_has_libpcap_message() {
        let e = StreamFilter::new("tcp prot 80").unwrap_err();
        assert_eq!(e.expr, "tcp prot 80");
        assert!(!e.message.is_empty());
        assert!(e.to_string().contains("tcp prot 80"), "{e}");
        assert!(StreamFilter::new("port 99999").is_err());
    }

    #[test]
    fn toml_key() {
        assert_eq!(
            toml_filter("a = 1\nfilter = \"tcp port 80\"\n"),
            Some("tcp port 80".into())
        );
        assert_eq!(
            toml_filter("filter=\"host \\\"x\\\"\""),
            Some("host \"x\"".into())
        );
        assert_eq!(toml_filter("[t]\nfilter = \"port 1\""), None);
        assert_eq!(toml_filter("filters = 3\n"), None);
        assert_eq!(toml_filter(""), None);
    }
}
