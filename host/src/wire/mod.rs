//! Zero-copy decoding of captured frames down to a TCP segment.
//!
//! STUB: the real decoder is being written; the public types below are the contract.
#![allow(missing_docs)]

use std::net::IpAddr;

/// Link-layer framing of a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    RawIp,
    LinuxSll,
    LinuxSll2,
    Null,
}

impl LinkType {
    /// Maps a pcap LINKTYPE_ code to a supported framing.
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

/// TCP flag bits, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
    pub fn fin(self) -> bool { self.0 & Self::FIN != 0 }
    pub fn syn(self) -> bool { self.0 & Self::SYN != 0 }
    pub fn rst(self) -> bool { self.0 & Self::RST != 0 }
    pub fn ack(self) -> bool { self.0 & Self::ACK != 0 }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
    pub payload_len_on_wire: u32,
    pub vlan_depth: u8,
    pub l3_offset: u16,
    pub l4_offset: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Tcp(TcpSegment<'a>),
    NotTcp,
    Fragment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
}

pub fn decode(_link: LinkType, _frame: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    Err(DecodeError::Truncated)
}
