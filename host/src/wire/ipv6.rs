//! IPv6 header (RFC 8200) and the walk over its extension headers down to TCP.

use std::net::{IpAddr, Ipv6Addr};

use super::{be16, prefix, DecodeError, IpOutcome, IpToTcp, Layer, MAX_EXTENSION_HEADERS};

/// Field offsets (multi-byte fields by their first byte, big-endian).
mod field {
    /// Version in the high nibble.
    pub(super) const VERSION: usize = 0;
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const SRC: usize = 8;
    pub(super) const DST: usize = 24;
    pub(super) const LEN: usize = 40;

    /// Generic extension header: next header, length.
    pub(super) const EXT_NEXT_HEADER: usize = 0;
    pub(super) const EXT_LEN: usize = 1;
    /// Bytes needed to read an extension header's length.
    pub(super) const EXT_MIN: usize = 2;

    /// Fragment header: next header, reserved, offset (13 bits) | res (2) | M (1), id.
    pub(super) const FRAG_OFFSET_FLAGS: usize = 2;
    pub(super) const FRAG_LEN: usize = 8;
    pub(super) const FRAG_M: u16 = 0x0001;
    pub(super) const FRAG_OFFSET_MASK: u16 = 0xfff8;
}

/// Next-header values.
mod nh {
    pub(super) const HOP_BY_HOP: u8 = 0;
    pub(super) const TCP: u8 = super::super::ipv4::PROTO_TCP;
    pub(super) const ROUTING: u8 = 43;
    pub(super) const FRAGMENT: u8 = 44;
    pub(super) const AH: u8 = 51;
    pub(super) const NO_NEXT: u8 = 59;
    pub(super) const DEST_OPTS: u8 = 60;
    pub(super) const MOBILITY: u8 = 135;
    pub(super) const HIP: u8 = 139;
    pub(super) const SHIM6: u8 = 140;
    pub(super) const EXPERIMENT_1: u8 = 253;
    pub(super) const EXPERIMENT_2: u8 = 254;
}

/// Extension headers whose length is `(hdr_ext_len + 1) * 8` (RFC 8200 format).
#[inline(always)]
fn is_generic_ext(next: u8) -> bool {
    matches!(
        next,
        nh::HOP_BY_HOP
            | nh::ROUTING
            | nh::DEST_OPTS
            | nh::MOBILITY
            | nh::HIP
            | nh::SHIM6
            | nh::EXPERIMENT_1
            | nh::EXPERIMENT_2
    )
}

/// The fixed header, length checked.
type Fixed = [u8; field::LEN];

#[inline(always)]
fn addr(hdr: &Fixed, at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    if let Some(src) = hdr.get(at..at + 16) {
        octets.copy_from_slice(src);
    }
    Ipv6Addr::from(octets)
}

/// The first `N` bytes of the extension header at `off`, checking it lies within the
/// declared payload (else the packet is malformed) and the captured bytes (else the
/// capture was cut inside it).
#[inline(always)]
fn ext_header<const N: usize>(
    buf: &[u8],
    off: usize,
    declared_end: usize,
) -> Result<&[u8; N], DecodeError> {
    if off + N > declared_end {
        return Err(DecodeError::BadExtensionHeaderLength);
    }
    buf.get(off..)
        .and_then(prefix)
        .ok_or(DecodeError::Truncated { layer: Layer::Ipv6 })
}

/// Decodes the IPv6 header at the start of `buf` (the rest of the captured frame) and
/// skips its extension headers.
#[inline]
pub(super) fn decode(buf: &[u8]) -> Result<IpOutcome, DecodeError> {
    let hdr: &Fixed = prefix(buf).ok_or(DecodeError::Truncated { layer: Layer::Ipv6 })?;
    let version = hdr[field::VERSION] >> 4;
    if version != 6 {
        return Err(DecodeError::BadIpVersion { found: version });
    }
    let payload_len = usize::from(be16(hdr, field::PAYLOAD_LEN));
    let mut next = hdr[field::NEXT_HEADER];
    if payload_len == 0 && next != nh::NO_NEXT {
        return Err(DecodeError::Jumbogram);
    }
    let declared_end = field::LEN + payload_len;
    let mut off = field::LEN;
    let mut count = 0u8;
    while next != nh::TCP {
        let len = if is_generic_ext(next) {
            let ext: &[u8; field::EXT_MIN] = ext_header(buf, off, declared_end)?;
            next = ext[field::EXT_NEXT_HEADER];
            (usize::from(ext[field::EXT_LEN]) + 1) * 8
        } else if next == nh::AH {
            let ext: &[u8; field::EXT_MIN] = ext_header(buf, off, declared_end)?;
            next = ext[field::EXT_NEXT_HEADER];
            (usize::from(ext[field::EXT_LEN]) + 2) * 4
        } else if next == nh::FRAGMENT {
            let ext: &[u8; field::FRAG_LEN] = ext_header(buf, off, declared_end)?;
            next = ext[field::EXT_NEXT_HEADER];
            let frag = be16(ext, field::FRAG_OFFSET_FLAGS);
            if frag & (field::FRAG_OFFSET_MASK | field::FRAG_M) != 0 {
                // A real fragment: is what it fragments TCP (or headers before TCP)?
                return Ok(
                    if next == nh::TCP || next == nh::AH || is_generic_ext(next) {
                        IpOutcome::Fragment
                    } else {
                        IpOutcome::NotTcp
                    },
                );
            }
            // Atomic fragment (RFC 6946): the whole packet is here, keep walking.
            field::FRAG_LEN
        } else {
            // No Next Header, ESP, UDP, ICMPv6, ...
            return Ok(IpOutcome::NotTcp);
        };
        count += 1;
        if count > MAX_EXTENSION_HEADERS {
            return Err(DecodeError::TooManyExtensionHeaders);
        }
        off += len;
        if off > declared_end {
            return Err(DecodeError::BadExtensionHeaderLength);
        }
        if off > buf.len() {
            return Err(DecodeError::Truncated { layer: Layer::Ipv6 });
        }
    }
    Ok(IpOutcome::Tcp(IpToTcp {
        src: IpAddr::V6(addr(hdr, field::SRC)),
        dst: IpAddr::V6(addr(hdr, field::DST)),
        l4_offset: off,
        // Longer frames carry link padding; shorter ones were cut by snaplen.
        captured_end: buf.len().min(declared_end),
        // `off <= declared_end` and `declared_end <= 40 + 65535`.
        tcp_len_on_wire: (declared_end - off) as u32,
    }))
}
