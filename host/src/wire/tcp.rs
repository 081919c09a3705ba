//! TCP header (RFC 9293) and the options flowpeek records.

use super::{be16, be32, prefix, DecodeError, Layer, TcpFlags, TcpOptions};

/// Field offsets (multi-byte fields by their first byte, big-endian).
mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const SEQ: usize = 4;
    pub(super) const ACK: usize = 8;
    /// Data offset in the high nibble (32-bit words).
    pub(super) const DATA_OFFSET: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: usize = 14;
    pub(super) const URGENT: usize = 18;
    /// Length of a header without options.
    pub(super) const MIN_LEN: usize = 20;
}

/// Option kinds and their expected lengths.
mod option {
    pub(super) const EOL: u8 = 0;
    pub(super) const NOP: u8 = 1;
    pub(super) const MSS: u8 = 2;
    pub(super) const MSS_LEN: usize = 4;
    pub(super) const WINDOW_SCALE: u8 = 3;
    pub(super) const WINDOW_SCALE_LEN: usize = 3;
    pub(super) const SACK_PERMITTED: u8 = 4;
    pub(super) const SACK_PERMITTED_LEN: usize = 2;
    pub(super) const TIMESTAMPS: u8 = 8;
    pub(super) const TIMESTAMPS_LEN: usize = 10;
}

/// The fixed header, length checked.
type Fixed = [u8; field::MIN_LEN];

/// A decoded TCP header, payload borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tcp<'a> {
    pub(super) src_port: u16,
    pub(super) dst_port: u16,
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: TcpFlags,
    pub(super) window: u16,
    pub(super) urgent: u16,
    pub(super) options: TcpOptions,
    pub(super) payload: &'a [u8],
    pub(super) payload_len_on_wire: u32,
}

/// Decodes the TCP segment in `seg` (captured bytes, already trimmed to the IP-declared
/// length) whose IP-declared length is `len_on_wire`.
#[inline]
pub(super) fn decode(seg: &[u8], len_on_wire: u32) -> Result<Tcp<'_>, DecodeError> {
    if len_on_wire < field::MIN_LEN as u32 {
        return Err(DecodeError::ShortTcpSegment { len: len_on_wire });
    }
    let hdr: &Fixed = prefix(seg).ok_or(DecodeError::Truncated { layer: Layer::Tcp })?;
    let offset = hdr[field::DATA_OFFSET] >> 4;
    let header_len = usize::from(offset) * 4;
    if header_len < field::MIN_LEN || header_len as u32 > len_on_wire {
        return Err(DecodeError::BadTcpDataOffset {
            offset,
            len: len_on_wire,
        });
    }
    let (Some(options), Some(payload)) =
        (seg.get(field::MIN_LEN..header_len), seg.get(header_len..))
    else {
        return Err(DecodeError::Truncated { layer: Layer::Tcp });
    };
    Ok(Tcp {
        src_port: be16(hdr, field::SRC_PORT),
        dst_port: be16(hdr, field::DST_PORT),
        seq: be32(hdr, field::SEQ),
        ack: be32(hdr, field::ACK),
        flags: TcpFlags(hdr[field::FLAGS]),
        window: be16(hdr, field::WINDOW),
        urgent: be16(hdr, field::URGENT),
        options: parse_options(options),
        payload,
        payload_len_on_wire: len_on_wire - header_len as u32,
    })
}

/// Parses an option list (the header bytes after the fixed 20).
///
/// Known options with an unexpected length are skipped by their length; a malformed
/// list (length below 2, or running past the header) stops the parse, keeping what was
/// recorded before.
#[inline]
pub(super) fn parse_options(mut opts: &[u8]) -> TcpOptions {
    let mut out = TcpOptions::default();
    // Fast path: the layout of nearly every segment of a connection using timestamps
    // (NOP, NOP, TS: RFC 7323 appendix A).
    if let &[option::NOP, option::NOP, option::TIMESTAMPS, 10, a, b, c, d, e, f, g, h] = opts {
        out.timestamps = Some((
            u32::from_be_bytes([a, b, c, d]),
            u32::from_be_bytes([e, f, g, h]),
        ));
        return out;
    }
    while let [kind, rest @ ..] = opts {
        match *kind {
            option::EOL => break,
            option::NOP => {
                opts = rest;
                continue;
            }
            _ => {}
        }
        let Some(&len) = rest.first() else { break };
        let len = usize::from(len);
        let Some(body) = opts.get(2..len) else {
            // len < 2 or past the end of the header: malformed.
            break;
        };
        match (*kind, body) {
            (option::MSS, &[a, b]) if len == option::MSS_LEN => {
                out.mss = Some(u16::from_be_bytes([a, b]));
            }
            (option::WINDOW_SCALE, &[s]) if len == option::WINDOW_SCALE_LEN => {
                out.window_scale = Some(s);
            }
            (option::SACK_PERMITTED, &[]) if len == option::SACK_PERMITTED_LEN => {
                out.sack_permitted = true;
            }
            (option::TIMESTAMPS, &[a, b, c, d, e, f, g, h]) if len == option::TIMESTAMPS_LEN => {
                out.timestamps = Some((
                    u32::from_be_bytes([a, b, c, d]),
                    u32::from_be_bytes([e, f, g, h]),
                ));
            }
            _ => {}
        }
        opts = opts.get(len..).unwrap_or_default();
    }
    out
}

/// Header length (from the data offset) of the TCP header at `l4` in `frame`.
#[inline]
pub(super) fn header_len_at(frame: &[u8], l4: usize) -> Option<usize> {
    let hdr: &Fixed = frame.get(l4..).and_then(prefix)?;
    let len = usize::from(hdr[field::DATA_OFFSET] >> 4) * 4;
    (len >= field::MIN_LEN).then_some(len)
}
