//! IPv4 header (RFC 791): version, header length, total length, fragmentation, protocol.

use std::net::{IpAddr, Ipv4Addr};

use super::{be16, checksum, prefix, DecodeError, IpOutcome, IpToTcp, Layer};

/// IP protocol number of TCP (also the IPv6 next-header value).
pub(super) const PROTO_TCP: u8 = 6;

/// Field offsets (multi-byte fields by their first byte, big-endian).
mod field {
    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOTAL_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub(super) const FLAGS_FRAG: usize = 6;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
    /// Length of a header without options.
    pub(super) const MIN_LEN: usize = 20;

    /// More Fragments flag in `FLAGS_FRAG`.
    pub(super) const MF: u16 = 0x2000;
    /// Fragment offset mask in `FLAGS_FRAG`.
    pub(super) const OFFSET_MASK: u16 = 0x1fff;
}

/// The fixed part of a header whose length has been checked.
type Fixed = [u8; field::MIN_LEN];

#[inline(always)]
fn addr(hdr: &Fixed, at: usize) -> Ipv4Addr {
    Ipv4Addr::new(hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3])
}

/// Decodes the IPv4 header at the start of `buf` (the rest of the captured frame).
#[inline]
pub(super) fn decode(buf: &[u8]) -> Result<IpOutcome, DecodeError> {
    let hdr: &Fixed = prefix(buf).ok_or(DecodeError::Truncated { layer: Layer::Ipv4 })?;
    let ver_ihl = hdr[field::VER_IHL];
    if ver_ihl >> 4 != 4 {
        return Err(DecodeError::BadIpVersion {
            found: ver_ihl >> 4,
        });
    }
    let ihl = ver_ihl & 0x0f;
    if usize::from(ihl) * 4 < field::MIN_LEN {
        return Err(DecodeError::BadIpHeaderLength { ihl });
    }
    let header_len = u16::from(ihl) * 4;
    let total = be16(hdr, field::TOTAL_LEN);
    if total < header_len && total != 0 {
        return Err(DecodeError::BadIpTotalLength {
            total,
            header: header_len,
        });
    }
    let header_len = usize::from(header_len);
    if buf.len() < header_len {
        // Options cut by the snapshot length.
        return Err(DecodeError::Truncated { layer: Layer::Ipv4 });
    }
    // Total length 0 is what TCP segmentation offload leaves in captures taken on the
    // sending host (the NIC fills it in): the packet is what was captured.
    let total = match total {
        0 => buf.len(),
        n => usize::from(n),
    };
    if hdr[field::PROTOCOL] != PROTO_TCP {
        return Ok(IpOutcome::NotTcp);
    }
    if be16(hdr, field::FLAGS_FRAG) & (field::MF | field::OFFSET_MASK) != 0 {
        return Ok(IpOutcome::Fragment);
    }
    Ok(IpOutcome::Tcp(IpToTcp {
        src: IpAddr::V4(addr(hdr, field::SRC)),
        dst: IpAddr::V4(addr(hdr, field::DST)),
        l4_offset: header_len,
        // Longer frames carry link padding; shorter ones were cut by snaplen.
        captured_end: buf.len().min(total),
        // `header_len <= total`; frames longer than 4 GiB do not exist.
        tcp_len_on_wire: u32::try_from(total - header_len).unwrap_or(u32::MAX),
    }))
}

/// IP version nibble of the header at `l3` in `frame`.
#[inline]
pub(super) fn version_at(frame: &[u8], l3: usize) -> Option<u8> {
    frame.get(l3).map(|b| b >> 4)
}

/// Whether the header checksum of the IPv4 header at the start of `buf` is valid;
/// `None` if `buf` does not start with a complete IPv4 header.
pub(super) fn header_checksum_ok(buf: &[u8]) -> Option<bool> {
    let hdr: &Fixed = prefix(buf)?;
    if hdr[field::VER_IHL] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(hdr[field::VER_IHL] & 0x0f) * 4;
    if header_len < field::MIN_LEN {
        return None;
    }
    let mut sum = checksum::Sum::new();
    sum.add_bytes(buf.get(..header_len)?);
    Some(sum.is_valid())
}
