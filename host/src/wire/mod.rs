//! Zero-copy, panic-free decoding of captured frames down to a TCP segment.
//!
//! # What this module owns
//!
//! Turning the bytes of one captured frame (as handed out by a capture source, possibly
//! truncated by the snapshot length) into a [`TcpSegment`]: a borrowed view with the
//! addresses, ports, sequence numbers, flags, parsed options and the payload slice of
//! the segment. Supported framings are listed in [`LinkType`]; under the link layer it
//! follows 802.1Q / 802.1ad VLAN tags and MPLS label stacks, then IPv4 (options skipped)
//! or IPv6 (extension headers skipped), then TCP. It also verifies checksums on request
//! ([`tcp_checksum_ok`], [`ipv4_header_checksum_ok`]); [`decode`] itself never does.
//!
//! # What it must not do
//!
//! - allocate, copy payload bytes, or use `unsafe`: every view borrows the frame;
//! - panic, whatever the input: every length is checked once, when a header view is
//!   built, after which the accessors only index fixed-size arrays (the private views in
//!   the submodules follow smoltcp's `wire` style: field offsets are named constants in a
//!   private `mod field`);
//! - know about flows, connections, time or reassembly: that is [`crate::flow`]'s job.
//!   IP fragments are reported as [`Decoded::Fragment`] and left alone.
//!
//! # Policies (the places where the wire format leaves a choice)
//!
//! - **Snaplen truncation**: when IP declares more bytes than were captured, the segment
//!   is still decoded if its TCP header is complete; [`TcpSegment::payload`] holds the
//!   captured part and [`TcpSegment::payload_len_on_wire`] the length IP declares. If the
//!   capture ends inside a header the result is [`DecodeError::Truncated`].
//! - **IPv4 total length 0** is taken as "the captured length": it is what TCP
//!   segmentation offload (Windows LSO, Linux TSO) leaves in captures taken on the
//!   sending host. Other total lengths below the header length are
//!   [`DecodeError::BadIpTotalLength`].
//! - **Link padding**: bytes after the IP-declared length (Ethernet minimum-frame padding,
//!   trailers) are ignored.
//! - **IPv4 fragments** (MF set or fragment offset ≠ 0) carrying TCP are
//!   [`Decoded::Fragment`]; fragments of other protocols are [`Decoded::NotTcp`]
//!   (the protocol is checked first).
//! - **IPv6 fragments**: a Fragment header with offset ≠ 0 or M set is
//!   [`Decoded::Fragment`] when the fragmented protocol is TCP or another extension header,
//!   [`Decoded::NotTcp`] otherwise. An *atomic* fragment (offset 0, M clear; RFC 6946) is
//!   not really fragmented: the chain is followed and the TCP segment decoded.
//! - **IPv6 jumbograms** (payload length 0 with a next header other than No Next Header)
//!   are not supported: [`DecodeError::Jumbogram`]. They only occur on links with huge
//!   MTUs or in captures of Linux "BIG TCP" offload, and the caller may want to count them.
//! - **IPv6 extension headers**: Hop-by-Hop, Routing, Destination Options, Mobility, HIP,
//!   Shim6 and the experimental 253/254 are skipped by their length, AH by its own length
//!   rule; ESP and No Next Header give [`Decoded::NotTcp`]. At most
//!   [`MAX_EXTENSION_HEADERS`] are followed.
//! - **TCP options**: EOL ends the list; NOP is skipped; MSS, window scale, SACK-permitted
//!   and timestamps are recorded when their length is the expected one (otherwise they are
//!   skipped by their length like unknown options). A malformed list (length byte 0 or 1,
//!   or an option running past the header) does not fail the packet: parsing stops and the
//!   options recorded so far are kept.
//! - **Non-IP traffic** (ARP, LLDP, 802.3/LLC frames, MPLS pseudowires, unknown
//!   loopback families, ...) is [`Decoded::NotTcp`], never an error.
//! - **RawIp** frames whose first nibble is neither 4 nor 6 are
//!   [`DecodeError::BadIpVersion`], as are IPv4/IPv6 ethertypes whose header disagrees.

use std::fmt;
use std::net::IpAddr;

mod checksum;
mod ipv4;
mod ipv6;
mod link;
mod tcp;

#[cfg(test)]
mod tests;

/// Maximum number of stacked VLAN tags (802.1Q / 802.1ad) followed before giving up
/// with [`DecodeError::TooManyVlanTags`].
pub const MAX_VLAN_TAGS: u8 = 8;

/// Maximum number of MPLS labels popped before giving up with
/// [`DecodeError::TooManyMplsLabels`].
pub const MAX_MPLS_LABELS: u8 = 8;

/// Maximum number of IPv6 extension headers skipped before giving up with
/// [`DecodeError::TooManyExtensionHeaders`].
pub const MAX_EXTENSION_HEADERS: u8 = 8;

/// Link-layer framing of a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II (DIX), possibly with VLAN tags and MPLS labels after the MAC addresses.
    Ethernet,
    /// Bare IPv4 or IPv6 packets; the version is read from the first nibble.
    RawIp,
    /// Linux "cooked" capture v1 (`LINKTYPE_LINUX_SLL`): 16-byte header, protocol
    /// (an ethertype) at bytes 14..16.
    LinuxSll,
    /// Linux "cooked" capture v2 (`LINKTYPE_LINUX_SLL2`): 20-byte header, protocol
    /// (an ethertype) at bytes 0..2.
    LinuxSll2,
    /// BSD loopback (`LINKTYPE_NULL` / `LINKTYPE_LOOP`): a 4-byte address family, in
    /// either byte order (2 = IPv4; 24, 28 or 30 = IPv6).
    Null,
}

impl LinkType {
    /// Maps a pcap LINKTYPE_ code to a supported framing.
    ///
    /// 1 is Ethernet; 101, 12 and 14 (the historical `DLT_RAW` values), 228 (IPv4) and
    /// 229 (IPv6) are raw IP; 113 is SLL, 276 SLL2; 0 (NULL) and 108 (LOOP) are loopback.
    pub fn from_pcap(code: u32) -> Option<LinkType> {
        match code {
            1 => Some(LinkType::Ethernet),
            101 | 12 | 14 | 228 | 229 => Some(LinkType::RawIp),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            0 | 108 => Some(LinkType::Null),
            _ => None,
        }
    }
}

/// TCP flag bits, as on the wire (byte 13 of the TCP header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo.
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced.
    pub const CWR: u8 = 0x80;

    /// Whether FIN is set.
    #[inline]
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// Whether SYN is set.
    #[inline]
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// Whether RST is set.
    #[inline]
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// Whether PSH is set.
    #[inline]
    pub fn psh(self) -> bool {
        self.0 & Self::PSH != 0
    }
    /// Whether ACK is set.
    #[inline]
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// Whether URG is set.
    #[inline]
    pub fn urg(self) -> bool {
        self.0 & Self::URG != 0
    }
}

/// The TCP options flowpeek cares about, parsed from the option list of one segment.
///
/// Options absent from the segment (or malformed, see the module doc) are `None`/`false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2, length 4).
    pub mss: Option<u16>,
    /// Window scale shift count (kind 3, length 3), as sent (not clamped to 14).
    pub window_scale: Option<u8>,
    /// SACK permitted (kind 4, length 2).
    pub sack_permitted: bool,
    /// Timestamps (kind 8, length 10): `(TSval, TSecr)`.
    pub timestamps: Option<(u32, u32)>,
}

/// One decoded TCP segment, borrowing its payload from the captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Source IP address.
    pub src: IpAddr,
    /// Destination IP address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when [`TcpFlags::ack`]).
    pub ack: u32,
    /// Flag bits.
    pub flags: TcpFlags,
    /// Window field, unscaled.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Parsed options.
    pub options: TcpOptions,
    /// TCP payload bytes that were captured: within the IP-declared length and the
    /// captured bytes (shorter than `payload_len_on_wire` when truncated by snaplen).
    pub payload: &'a [u8],
    /// TCP payload length as declared by the IP header.
    pub payload_len_on_wire: u32,
    /// Number of VLAN tags (802.1Q / 802.1ad) crossed to reach the IP header.
    pub vlan_depth: u8,
    /// Byte offset of the IP header within the frame.
    pub l3_offset: u16,
    /// Byte offset of the TCP header within the frame.
    pub l4_offset: u16,
}

impl TcpSegment<'_> {
    /// Whether the capture holds less payload than the IP header declares.
    #[inline]
    pub fn is_truncated(&self) -> bool {
        (self.payload.len() as u64) < u64::from(self.payload_len_on_wire)
    }

    /// Sequence space the segment occupies: payload length on the wire, plus one for SYN
    /// and one for FIN.
    #[inline]
    pub fn seq_len(&self) -> u32 {
        self.payload_len_on_wire
            .wrapping_add(u32::from(self.flags.syn()))
            .wrapping_add(u32::from(self.flags.fin()))
    }
}

/// What a well-formed frame turned out to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A TCP segment.
    Tcp(TcpSegment<'a>),
    /// Anything that is not TCP over IP: other IP protocols, non-IP link traffic, ESP.
    NotTcp,
    /// An IP fragment of a TCP packet (flowpeek does not reassemble IP fragments).
    Fragment,
}

/// Protocol layer at which a frame was found truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The link-layer header (Ethernet, SLL, SLL2, loopback family, raw IP first byte).
    Link,
    /// An 802.1Q / 802.1ad tag.
    Vlan,
    /// An MPLS label, or the byte after the bottom label.
    Mpls,
    /// The IPv4 header, options included.
    Ipv4,
    /// The IPv6 header or one of its extension headers.
    Ipv6,
    /// The TCP header, options included.
    Tcp,
}

impl Layer {
    /// Short lowercase name of the layer (`"link"`, `"vlan"`, `"mpls"`, `"ipv4"`,
    /// `"ipv6"`, `"tcp"`).
    pub fn name(self) -> &'static str {
        match self {
            Layer::Link => "link",
            Layer::Vlan => "vlan",
            Layer::Mpls => "mpls",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be decoded: a header is malformed, or the capture ends inside
/// a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// The captured bytes end inside a header of this layer.
    #[error("frame truncated inside the {layer} header")]
    Truncated {
        /// The layer whose header is incomplete.
        layer: Layer,
    },
    /// More than [`MAX_VLAN_TAGS`] stacked VLAN tags.
    #[error("more than {MAX_VLAN_TAGS} stacked VLAN tags")]
    TooManyVlanTags,
    /// More than [`MAX_MPLS_LABELS`] MPLS labels without bottom-of-stack.
    #[error("more than {MAX_MPLS_LABELS} MPLS labels")]
    TooManyMplsLabels,
    /// The IP version nibble disagrees with the link layer, or (raw IP) is neither 4 nor 6.
    #[error("bad IP version {found}")]
    BadIpVersion {
        /// The version nibble found.
        found: u8,
    },
    /// IPv4 IHL below 5 (a header shorter than 20 bytes).
    #[error("bad IPv4 header length: IHL {ihl} (< 5)")]
    BadIpHeaderLength {
        /// The IHL field (in 32-bit words).
        ihl: u8,
    },
    /// IPv4 total length smaller than its own header length (but not 0, which is taken
    /// as a TSO capture, see the module doc).
    #[error("bad IPv4 total length {total} (header is {header} bytes)")]
    BadIpTotalLength {
        /// The total length field.
        total: u16,
        /// The header length given by IHL, in bytes.
        header: u16,
    },
    /// IPv6 payload length 0 (jumbogram or BIG TCP capture): not supported.
    #[error("IPv6 payload length 0 (jumbogram): not supported")]
    Jumbogram,
    /// An IPv6 extension header runs past the IPv6 payload length.
    #[error("IPv6 extension header runs past the payload length")]
    BadExtensionHeaderLength,
    /// More than [`MAX_EXTENSION_HEADERS`] IPv6 extension headers.
    #[error("more than {MAX_EXTENSION_HEADERS} IPv6 extension headers")]
    TooManyExtensionHeaders,
    /// The IP-declared length left for TCP is shorter than a minimal TCP header.
    #[error("IP leaves {len} bytes for TCP, less than a 20-byte header")]
    ShortTcpSegment {
        /// Bytes IP declares for the TCP segment.
        len: u32,
    },
    /// TCP data offset below 5, or beyond the IP-declared segment length.
    #[error("bad TCP data offset {offset} (header {} bytes) for a {len}-byte segment", u32::from(*offset) * 4)]
    BadTcpDataOffset {
        /// The data offset field (in 32-bit words).
        offset: u8,
        /// Bytes IP declares for the TCP segment.
        len: u32,
    },
}

impl DecodeError {
    /// Every value [`DecodeError::kind_name`] can return, for callers that pre-register
    /// counters.
    pub const KIND_NAMES: &'static [&'static str] = &[
        "truncated_link",
        "truncated_vlan",
        "truncated_mpls",
        "truncated_ipv4",
        "truncated_ipv6",
        "truncated_tcp",
        "too_many_vlan_tags",
        "too_many_mpls_labels",
        "bad_ip_version",
        "bad_ip_header_length",
        "bad_ip_total_length",
        "jumbogram",
        "bad_extension_header_length",
        "too_many_extension_headers",
        "short_tcp_segment",
        "bad_tcp_data_offset",
    ];

    /// A stable snake_case name for the cause, without the numbers, for counting errors
    /// by kind (one of [`DecodeError::KIND_NAMES`]).
    pub fn kind_name(&self) -> &'static str {
        match self {
            DecodeError::Truncated { layer } => match layer {
                Layer::Link => "truncated_link",
                Layer::Vlan => "truncated_vlan",
                Layer::Mpls => "truncated_mpls",
                Layer::Ipv4 => "truncated_ipv4",
                Layer::Ipv6 => "truncated_ipv6",
                Layer::Tcp => "truncated_tcp",
            },
            DecodeError::TooManyVlanTags => "too_many_vlan_tags",
            DecodeError::TooManyMplsLabels => "too_many_mpls_labels",
            DecodeError::BadIpVersion { .. } => "bad_ip_version",
            DecodeError::BadIpHeaderLength { .. } => "bad_ip_header_length",
            DecodeError::BadIpTotalLength { .. } => "bad_ip_total_length",
            DecodeError::Jumbogram => "jumbogram",
            DecodeError::BadExtensionHeaderLength => "bad_extension_header_length",
            DecodeError::TooManyExtensionHeaders => "too_many_extension_headers",
            DecodeError::ShortTcpSegment { .. } => "short_tcp_segment",
            DecodeError::BadTcpDataOffset { .. } => "bad_tcp_data_offset",
        }
    }
}

/// Where the network layer starts, as found by the link-layer walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    Ipv4,
    Ipv6,
}

/// Decodes one captured frame of the given framing down to its TCP segment.
///
/// Never panics and never allocates. Returns `Ok(Decoded::NotTcp)` for anything that is
/// well-formed but not TCP over IP, `Ok(Decoded::Fragment)` for IP fragments of TCP, and
/// an error for malformed or header-truncated frames; see the module doc for the policies.
/// Checksums are not verified (see [`tcp_checksum_ok`]).
/// Always inlined: out of line (LLVM's choice since the disorder rules grew it), the calls
/// of the per-packet path cost about 20% of the 64-byte engine bench (BENCHMARKS.md).
#[inline(always)]
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let Some(l3) = link::locate_network(link, frame)? else {
        return Ok(Decoded::NotTcp);
    };
    // Offsets fit in u16: the link walk is bounded by MAX_VLAN_TAGS / MAX_MPLS_LABELS
    // (l3 ≤ 20 + 4·8 + 4·8), and the IPv6 walk by MAX_EXTENSION_HEADERS (each ≤ 2 KiB).
    let rest = frame.get(l3.offset..).unwrap_or_default();
    let ip = match l3.network {
        Network::Ipv4 => ipv4::decode(rest)?,
        Network::Ipv6 => ipv6::decode(rest)?,
    };
    let ip = match ip {
        IpOutcome::Tcp(ip) => ip,
        IpOutcome::NotTcp => return Ok(Decoded::NotTcp),
        IpOutcome::Fragment => return Ok(Decoded::Fragment),
    };
    let seg_bytes = rest.get(ip.l4_offset..ip.captured_end).unwrap_or_default();
    let tcp = tcp::decode(seg_bytes, ip.tcp_len_on_wire)?;
    Ok(Decoded::Tcp(TcpSegment {
        src: ip.src,
        dst: ip.dst,
        src_port: tcp.src_port,
        dst_port: tcp.dst_port,
        seq: tcp.seq,
        ack: tcp.ack,
        flags: tcp.flags,
        window: tcp.window,
        urgent: tcp.urgent,
        options: tcp.options,
        payload: tcp.payload,
        payload_len_on_wire: tcp.payload_len_on_wire,
        vlan_depth: l3.vlan_depth,
        l3_offset: l3.offset as u16,
        l4_offset: (l3.offset + ip.l4_offset) as u16,
    }))
}

/// Byte offset of the IP header in `frame` (after the link header, VLAN tags and MPLS
/// labels), or `None` when the frame carries no IP or its link headers are malformed. For
/// callers that look at the IP layer themselves, such as the defragmenter ([`crate::ip`]).
#[inline]
pub fn network_offset(link: LinkType, frame: &[u8]) -> Option<usize> {
    link::locate_network(link, frame)
        .ok()
        .flatten()
        .map(|l3| l3.offset)
}

/// The Internet checksum (RFC 1071) of `data`, as written into a header's checksum field
/// (the ones' complement of the folded sum; the field itself must be zero in `data`).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum = checksum::Sum::new();
    sum.add_bytes(data);
    !sum.fold()
}

/// The first `N` bytes of `buf` as a fixed-size array, if there are that many. Header
/// views are built from this, after which field accesses index a fixed-size array.
#[inline(always)]
fn prefix<const N: usize>(buf: &[u8]) -> Option<&[u8; N]> {
    buf.first_chunk::<N>()
}

/// Big-endian u16 at byte `at` of a fixed-size header. Callers only pass `field`
/// constants that lie within `N`, so once inlined the bounds checks fold away and cannot
/// fail (every call site is exercised by the unit tests).
#[inline(always)]
fn be16<const N: usize>(hdr: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([hdr[at], hdr[at + 1]])
}

/// Big-endian u32 at byte `at` of a fixed-size header (see [`be16`]).
#[inline(always)]
fn be32<const N: usize>(hdr: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]])
}

/// Result of the link-layer walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct L3Start {
    network: Network,
    offset: usize,
    vlan_depth: u8,
}

/// What the IP layer found, offsets relative to the start of the IP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpOutcome {
    Tcp(IpToTcp),
    NotTcp,
    Fragment,
}

/// An IP packet carrying (the start of) a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpToTcp {
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the TCP header from the IP header.
    l4_offset: usize,
    /// End of the captured IP packet (min of captured bytes and declared length), from
    /// the IP header; `l4_offset <= captured_end` is not guaranteed (see `tcp::decode`).
    captured_end: usize,
    /// TCP segment length (header + payload) that IP declares.
    tcp_len_on_wire: u32,
}

/// Verifies the TCP checksum of a segment decoded from `frame`, over the IPv4 or IPv6
/// pseudo-header.
///
/// Returns `None` when the segment was truncated by snaplen (the checksum cannot be
/// verified), or when `seg` does not describe `frame` (offsets out of range, IP version
/// not matching the addresses).
pub fn tcp_checksum_ok(frame: &[u8], seg: &TcpSegment<'_>) -> Option<bool> {
    if seg.is_truncated() {
        return None;
    }
    let l3 = usize::from(seg.l3_offset);
    let l4 = usize::from(seg.l4_offset);
    let header_len = tcp::header_len_at(frame, l4)?;
    let tcp_len = header_len.checked_add(usize::try_from(seg.payload_len_on_wire).ok()?)?;
    let segment = frame.get(l4..l4.checked_add(tcp_len)?)?;
    if l4 < l3 {
        return None;
    }
    let tcp_len = u32::try_from(tcp_len).ok()?;
    let mut sum = checksum::Sum::new();
    match (seg.src, seg.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if ipv4::version_at(frame, l3)? != 4 {
                return None;
            }
            if tcp_len > 0xffff {
                // Only with a TSO "total length 0" packet: not verifiable.
                return None;
            }
            sum.add_bytes(&src.octets());
            sum.add_bytes(&dst.octets());
            // Zero, protocol, TCP length (16 bits for IPv4).
            sum.add_u32(u32::from(ipv4::PROTO_TCP));
            sum.add_u32(tcp_len);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if ipv4::version_at(frame, l3)? != 6 {
                return None;
            }
            sum.add_bytes(&src.octets());
            sum.add_bytes(&dst.octets());
            // Upper-layer length (32 bits), zero, next header.
            sum.add_u32(tcp_len);
            sum.add_u32(u32::from(ipv4::PROTO_TCP));
        }
        _ => return None,
    }
    sum.add_bytes(segment);
    Some(sum.is_valid())
}

/// Verifies the IPv4 header checksum of the packet `seg` was decoded from.
///
/// Returns `None` when the segment is IPv6 (which has no header checksum) or when `seg`
/// does not describe `frame`. IPv4 headers are never truncated in a decoded segment, so
/// the answer is always known otherwise.
pub fn ipv4_header_checksum_ok(frame: &[u8], seg: &TcpSegment<'_>) -> Option<bool> {
    if !seg.src.is_ipv4() {
        return None;
    }
    let l3 = usize::from(seg.l3_offset);
    ipv4::header_checksum_ok(frame.get(l3..)?)
}
