//! The vocabulary of the engine: sides, hooks, TCP states, events and their details.

use std::fmt;

/// One endpoint of a flow, seen as an emulated TCP stack (mOS `MOS_SIDE_CLI`/`_SVR`).
///
/// The receive buffer of a side holds the bytes that side *received*: the `Server` buffer
/// holds the client's request bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The host that sent the first SYN without ACK (or, mid-stream, the guessed client).
    Client = 0,
    /// The other host.
    Server = 1,
}

impl Side {
    /// Both sides, client first.
    pub const BOTH: [Side; 2] = [Side::Client, Side::Server];

    /// The other endpoint.
    #[inline]
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    /// 0 for the client, 1 for the server (mOS numbering).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// mOS's short name: `cli` or `svr`.
    pub fn short_name(self) -> &'static str {
        match self {
            Side::Client => "cli",
            Side::Server => "svr",
        }
    }
}

/// The side an event concerns: one side, or both (mOS `MOS_SIDE_BOTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventSide {
    /// One side.
    One(Side),
    /// Both sides (`Orphan`, and events not tied to one stack).
    Both,
}

impl EventSide {
    /// mOS's short name: `cli`, `svr` or `both`.
    pub fn short_name(self) -> &'static str {
        match self {
            EventSide::One(s) => s.short_name(),
            EventSide::Both => "both",
        }
    }
}

/// When a callback runs relative to the emulated stacks (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// After the sender's state was updated with the packet.
    Snd = 0,
    /// After the receiver's state was updated with the packet.
    Rcv = 1,
    /// Not tied to one stack update (`NewData`, `Error`, `Timeout`, `Orphan`).
    None = 2,
}

impl Hook {
    /// All hooks.
    pub const ALL: [Hook; 3] = [Hook::Snd, Hook::Rcv, Hook::None];

    /// mOS's short name: `snd`, `rcv` or `null`.
    pub fn short_name(self) -> &'static str {
        match self {
            Hook::Snd => "snd",
            Hook::Rcv => "rcv",
            Hook::None => "null",
        }
    }
}

/// The emulated TCP state of one side (RFC 793 names, mOS `enum tcpstate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the RFC 793 names speak for themselves
pub enum TcpState {
    Closed = 0,
    Listen,
    SynSent,
    SynRcvd,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl TcpState {
    /// The name mOS prints, e.g. `ESTABLISHED`.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Closed => "CLOSED",
            TcpState::Listen => "LISTEN",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRcvd => "SYN_RCVD",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait1 => "FIN_WAIT_1",
            TcpState::FinWait2 => "FIN_WAIT_2",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a side's state was destroyed (available to `ConnEnd` callbacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Both sides closed with FIN (after TIME_WAIT, if one is configured).
    Fin,
    /// A valid RST from either side.
    Rst,
    /// Idle for `tcp_timeout`.
    Timeout,
    /// The flow table was full and this was the least recently active flow.
    Evicted,
    /// The monitor stopped tracking the flow (only that monitor sees this).
    Stopped,
    /// The capture ended with the flow still open.
    Eof,
    /// The host is shutting down.
    Shutdown,
    /// The monitor's plugin generation was retired while the flow was open.
    Reloaded,
}

impl EndReason {
    /// Lower-case name, as printed in records (`fin`, `rst`, `timeout`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Timeout => "timeout",
            EndReason::Evicted => "evicted",
            EndReason::Stopped => "stopped",
            EndReason::Eof => "eof",
            EndReason::Shutdown => "shutdown",
            EndReason::Reloaded => "reloaded",
        }
    }
}

/// What went wrong, for `Error` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A segment (or its tail) lay beyond the receive window and was dropped.
    BeyondWindow,
    /// Storing a segment discarded bytes this monitor had not read with `peek` yet.
    Overrun,
    /// The side's fragment list was full; the segment was dropped.
    FragmentLimit,
    /// Buffer memory was exhausted (`buffer_memory`); the side stores no bytes.
    OutOfBufferMemory,
}

/// The id of an event: one of the built-in events or a user-defined one (SPEC §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Every packet of a tracked flow, at `Snd` (sender) and `Rcv` (receiver).
    PktIn,
    /// The client's first SYN.
    ConnStart,
    /// The contiguous data of a side grew (coalesced per batch).
    NewData,
    /// Retransmitted or overlapping data, SYN, SYN/ACK or FIN.
    Rexmit,
    /// A side's emulated TCP state changed.
    TcpStateChange,
    /// A segment was dropped or unread bytes were overwritten.
    Error,
    /// The flow was idle for `tcp_timeout`.
    Timeout,
    /// A side's state was destroyed.
    ConnEnd,
    /// A packet that belongs to no flow and cannot start one.
    Orphan,
    /// A user-defined event.
    User(UserEventId),
}

impl EventKind {
    /// The built-in events, in bit order.
    pub const BUILTIN: [EventKind; 9] = [
        EventKind::PktIn,
        EventKind::ConnStart,
        EventKind::NewData,
        EventKind::Rexmit,
        EventKind::TcpStateChange,
        EventKind::Error,
        EventKind::Timeout,
        EventKind::ConnEnd,
        EventKind::Orphan,
    ];

    /// mOS's name (`PKT_IN`, `CONN_START`, ...); user events are `USER`.
    pub fn mos_name(self) -> &'static str {
        match self {
            EventKind::PktIn => "PKT_IN",
            EventKind::ConnStart => "CONN_START",
            EventKind::NewData => "CONN_NEW_DATA",
            EventKind::Rexmit => "REXMIT",
            EventKind::TcpStateChange => "TCP_STATE_CHANGE",
            EventKind::Error => "ERROR",
            EventKind::Timeout => "TIMEOUT",
            EventKind::ConnEnd => "CONN_END",
            EventKind::Orphan => "ORPHAN",
            EventKind::User(_) => "USER",
        }
    }

    /// The subscription bit of this event at `hook`.
    #[inline]
    pub(crate) fn bit(self, hook: Hook) -> u64 {
        match self {
            EventKind::User(id) => 1u64 << (32 + u32::from(id.0)),
            builtin => {
                let n = match builtin {
                    EventKind::PktIn => 0,
                    EventKind::ConnStart => 1,
                    EventKind::NewData => 2,
                    EventKind::Rexmit => 3,
                    EventKind::TcpStateChange => 4,
                    EventKind::Error => 5,
                    EventKind::Timeout => 6,
                    EventKind::ConnEnd => 7,
                    EventKind::Orphan => 8,
                    EventKind::User(_) => unreachable!("handled above"),
                };
                1u64 << (n * 3 + hook as u32)
            }
        }
    }
}

/// The id of a user-defined event (at most [`MAX_USER_EVENTS`] per engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserEventId(pub u8);

/// How many user-defined events one engine holds.
pub const MAX_USER_EVENTS: usize = 32;

/// Extra information carried by some events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Nothing more.
    None,
    /// `TcpStateChange`: the side's new state.
    State(TcpState),
    /// `ConnEnd`: why the side ended.
    End(EndReason),
    /// `Error`: what went wrong.
    Error(ErrorKind),
}

/// A handle naming a flow for the duration of its life (mOS: the active socket id).
///
/// Handles are per core and may be reused after the flow ends; the generation bits make a
/// stale handle fail with `EBADF` instead of reading another flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowHandle(pub u64);

impl FlowHandle {
    const KIND_FLOW: u64 = 0;
    const KIND_RAW: u64 = 1;

    pub(crate) fn flow(core: u8, slot: u32, gen: u32) -> FlowHandle {
        FlowHandle(
            (Self::KIND_FLOW << 62)
                | (u64::from(core) << 54)
                | (u64::from(gen & 0x3f_ffff) << 32)
                | u64::from(slot),
        )
    }

    /// The handle passed with events that are not about a flow (`Orphan`).
    pub(crate) fn raw(core: u8) -> FlowHandle {
        FlowHandle((Self::KIND_RAW << 62) | (u64::from(core) << 54))
    }

    pub(crate) fn is_flow(self) -> bool {
        self.0 >> 62 == Self::KIND_FLOW
    }
    pub(crate) fn core(self) -> u8 {
        ((self.0 >> 54) & 0xff) as u8
    }
    pub(crate) fn slot(self) -> u32 {
        self.0 as u32
    }
    pub(crate) fn gen(self) -> u32 {
        ((self.0 >> 32) & 0x3f_ffff) as u32
    }
}

/// One event delivered to a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// The side it concerns.
    pub side: EventSide,
    /// The hook it runs at.
    pub hook: Hook,
    /// The flow (or a raw handle for `Orphan`).
    pub flow: FlowHandle,
    /// Extra information.
    pub detail: Detail,
}
