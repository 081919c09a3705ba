//! Link layer: Ethernet II, Linux cooked captures (SLL, SLL2), BSD loopback and raw IP,
//! then any stack of VLAN tags and MPLS labels, down to the start of the IP header.

use super::{
    be16, prefix, DecodeError, L3Start, Layer, LinkType, Network, MAX_MPLS_LABELS, MAX_VLAN_TAGS,
};

/// Ethertypes this module acts on.
pub(super) mod ethertype {
    pub(crate) const IPV4: u16 = 0x0800;
    pub(crate) const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag.
    pub(crate) const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ).
    pub(crate) const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ tag used by some vendors.
    pub(crate) const QINQ_OLD: u16 = 0x9100;
    pub(crate) const MPLS_UNICAST: u16 = 0x8847;
    pub(crate) const MPLS_MULTICAST: u16 = 0x8848;
}

/// Field offsets and header lengths.
/// (Multi-byte fields are named by their first byte; all are big-endian u16.)
mod field {
    /// Ethernet II: destination, source, ethertype.
    pub(super) const ETH_TYPE: usize = 12;
    pub(super) const ETH_LEN: usize = 14;

    /// Linux cooked capture v1: protocol at the end of the 16-byte header.
    pub(super) const SLL_PROTOCOL: usize = 14;
    pub(super) const SLL_LEN: usize = 16;

    /// Linux cooked capture v2: protocol first in the 20-byte header.
    pub(super) const SLL2_PROTOCOL: usize = 0;
    pub(super) const SLL2_LEN: usize = 20;

    /// BSD loopback: 4-byte address family.
    pub(super) const NULL_LEN: usize = 4;

    /// VLAN tag: TCI then the inner ethertype.
    pub(super) const VLAN_INNER_TYPE: usize = 2;
    pub(super) const VLAN_LEN: usize = 4;

    /// MPLS label stack entry: label(20) TC(3) S(1) TTL(8).
    pub(super) const MPLS_BOS_BYTE: usize = 2;
    pub(super) const MPLS_BOS_BIT: u8 = 0x01;
    pub(super) const MPLS_LEN: usize = 4;
}

/// BSD address families meaning IPv4 / IPv6 in a loopback header.
const AF_INET: u32 = 2;
/// IPv6 on NetBSD/OpenBSD (24), FreeBSD/DragonFly (28) and Darwin (30).
const AF_INET6: [u32; 3] = [24, 28, 30];

/// Finds where the IP header starts in `frame`; `Ok(None)` when the frame carries
/// something other than IP.
#[inline]
pub(super) fn locate_network(link: LinkType, frame: &[u8]) -> Result<Option<L3Start>, DecodeError> {
    const TRUNC: DecodeError = DecodeError::Truncated { layer: Layer::Link };
    let (ethertype, offset) = match link {
        LinkType::Ethernet => {
            let hdr: &[u8; field::ETH_LEN] = prefix(frame).ok_or(TRUNC)?;
            (be16(hdr, field::ETH_TYPE), field::ETH_LEN)
        }
        LinkType::LinuxSll => {
            let hdr: &[u8; field::SLL_LEN] = prefix(frame).ok_or(TRUNC)?;
            (be16(hdr, field::SLL_PROTOCOL), field::SLL_LEN)
        }
        LinkType::LinuxSll2 => {
            let hdr: &[u8; field::SLL2_LEN] = prefix(frame).ok_or(TRUNC)?;
            (be16(hdr, field::SLL2_PROTOCOL), field::SLL2_LEN)
        }
        LinkType::Null => {
            let hdr: &[u8; field::NULL_LEN] = prefix(frame).ok_or(TRUNC)?;
            // Host byte order of the capturing machine: accept both.
            let le = u32::from_le_bytes(*hdr);
            let be = u32::from_be_bytes(*hdr);
            let network = if le == AF_INET || be == AF_INET {
                Network::Ipv4
            } else if AF_INET6.contains(&le) || AF_INET6.contains(&be) {
                Network::Ipv6
            } else {
                return Ok(None);
            };
            return Ok(Some(L3Start {
                network,
                offset: field::NULL_LEN,
                vlan_depth: 0,
            }));
        }
        LinkType::RawIp => {
            let first = *frame.first().ok_or(TRUNC)?;
            let network = match first >> 4 {
                4 => Network::Ipv4,
                6 => Network::Ipv6,
                found => return Err(DecodeError::BadIpVersion { found }),
            };
            return Ok(Some(L3Start {
                network,
                offset: 0,
                vlan_depth: 0,
            }));
        }
    };
    follow_ethertype(frame, ethertype, offset)
}

/// Follows VLAN tags and MPLS labels from `ethertype`, whose payload starts at `offset`.
#[inline]
fn follow_ethertype(
    frame: &[u8],
    mut ethertype: u16,
    mut offset: usize,
) -> Result<Option<L3Start>, DecodeError> {
    let mut vlan_depth = 0u8;
    loop {
        match ethertype {
            ethertype::IPV4 => {
                return Ok(Some(L3Start {
                    network: Network::Ipv4,
                    offset,
                    vlan_depth,
                }))
            }
            ethertype::IPV6 => {
                return Ok(Some(L3Start {
                    network: Network::Ipv6,
                    offset,
                    vlan_depth,
                }))
            }
            ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD => {
                if vlan_depth >= MAX_VLAN_TAGS {
                    return Err(DecodeError::TooManyVlanTags);
                }
                let tag: &[u8; field::VLAN_LEN] = frame
                    .get(offset..)
                    .and_then(prefix)
                    .ok_or(DecodeError::Truncated { layer: Layer::Vlan })?;
                ethertype = be16(tag, field::VLAN_INNER_TYPE);
                offset += field::VLAN_LEN;
                vlan_depth += 1;
            }
            ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => {
                return pop_mpls(frame, offset, vlan_depth);
            }
            // ARP, LLDP, 802.3 length fields, everything else.
            _ => return Ok(None),
        }
    }
}

/// Pops MPLS labels until bottom-of-stack, then guesses IPv4/IPv6 from the first nibble.
#[inline]
fn pop_mpls(
    frame: &[u8],
    mut offset: usize,
    vlan_depth: u8,
) -> Result<Option<L3Start>, DecodeError> {
    const TRUNC: DecodeError = DecodeError::Truncated { layer: Layer::Mpls };
    let mut labels = 0u8;
    loop {
        if labels >= MAX_MPLS_LABELS {
            return Err(DecodeError::TooManyMplsLabels);
        }
        let entry: &[u8; field::MPLS_LEN] = frame.get(offset..).and_then(prefix).ok_or(TRUNC)?;
        offset += field::MPLS_LEN;
        labels += 1;
        if entry[field::MPLS_BOS_BYTE] & field::MPLS_BOS_BIT != 0 {
            break;
        }
    }
    let first = *frame.get(offset).ok_or(TRUNC)?;
    let network = match first >> 4 {
        4 => Network::Ipv4,
        6 => Network::Ipv6,
        // Pseudowire control word, Ethernet over MPLS, ...: not followed.
        _ => return Ok(None),
    };
    Ok(Some(L3Start {
        network,
        offset,
        vlan_depth,
    }))
}
