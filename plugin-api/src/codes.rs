//! The numbering of the ABI, written once: events, hooks, sides, TCP states, end reasons,
//! error kinds, detail kinds, errno values, log levels, overlap policies, and the special
//! values of [`FfiSubscriptions`](crate::abi::FfiSubscriptions) and the host calls.
//!
//! The host and the SDK both use these types (the host re-exports the enums as its own
//! vocabulary) and add no numbering of their own, so a code that changes here changes on
//! both sides at once, and a variant added here fails to compile where it is not handled.
//! Every value is a promise to plugins already built: the tests pin each one.
//!
//! Must not: hold anything but codes, their names and checked conversions.

use std::fmt;

/// A code that names nothing in this version of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownCode {
    /// What was being decoded (`"event"`, `"hook"`, ...).
    pub what: &'static str,
    /// The value received.
    pub code: i64,
}

impl fmt::Display for UnknownCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} code {}", self.what, self.code)
    }
}

impl std::error::Error for UnknownCode {}

/// Defines a fieldless enum from one table of (variant, code, name): the discriminants, `ALL`
/// in code order, `code()`, the name method, and `TryFrom<repr>` that refuses other values.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, $what:literal, $name_fn:ident {
            $( $(#[$vmeta:meta])* $var:ident = $val:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $var = $val, )+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: [$name; [$(stringify!($var)),+].len()] = [$($name::$var),+];

            /// The value on the wire.
            #[inline]
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The name printed in records and messages.
            #[inline]
            pub const fn $name_fn(self) -> &'static str {
                match self {
                    $( $name::$var => $text, )+
                }
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = UnknownCode;

            #[inline]
            fn try_from(code: $repr) -> Result<$name, UnknownCode> {
                match code {
                    $( $val => Ok($name::$var), )+
                    _ => Err(UnknownCode { what: $what, code: code as i64 }),
                }
            }
        }
    };
}

code_enum! {
    /// One endpoint of a flow, seen as an emulated TCP stack (mOS `MOS_SIDE_CLI`/`_SVR`).
    ///
    /// The receive buffer of a side holds the bytes that side *received*: the `Server` buffer
    /// holds the client's request bytes. "Both sides" (and "unknown sender") is
    /// [`SIDE_BOTH`] on the wire.
    pub enum Side: u8, "side", short_name {
        /// The host that sent the first SYN without ACK (or, mid-stream, the guessed client).
        Client = 0 => "cli",
        /// The other host.
        Server = 1 => "svr",
    }
}

/// The side code meaning both sides (events, `stop_monitoring`, `raise`), or an unknown
/// sender ([`FfiLastPacket::sender`](crate::abi::FfiLastPacket::sender)).
pub const SIDE_BOTH: u8 = 2;

impl Side {
    /// Both sides, client first.
    pub const BOTH: [Side; 2] = Side::ALL;

    /// The other endpoint.
    #[inline]
    pub const fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    /// 0 for the client, 1 for the server (mOS numbering), as an index.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The code of one side or of both (`None`).
    #[inline]
    pub const fn code_of(side: Option<Side>) -> u8 {
        match side {
            Some(s) => s.code(),
            None => SIDE_BOTH,
        }
    }

    /// Decodes a side code where "both" is allowed: `Ok(None)` for [`SIDE_BOTH`].
    #[inline]
    pub fn from_code_or_both(code: u8) -> Result<Option<Side>, UnknownCode> {
        if code == SIDE_BOTH {
            Ok(None)
        } else {
            Side::try_from(code).map(Some)
        }
    }
}

code_enum! {
    /// When a callback runs relative to the emulated stacks (SPEC §1).
    pub enum Hook: u8, "hook", short_name {
        /// After the sender's state was updated with the packet.
        Snd = 0 => "snd",
        /// After the receiver's state was updated with the packet.
        Rcv = 1 => "rcv",
        /// Not tied to one stack update (`NewData`, `Error`, `Timeout`, `Orphan`).
        None = 2 => "null",
    }
}

code_enum! {
    /// The built-in events (mOS names), numbered in the order of their subscription bits.
    /// User-defined event `k` is numbered [`USER_EVENT_BASE`]` + k`.
    pub enum BuiltinEvent: u32, "event", mos_name {
        /// Every packet of a tracked flow, at `Snd` (sender) and `Rcv` (receiver).
        PktIn = 0 => "PKT_IN",
        /// The client's first SYN.
        ConnStart = 1 => "CONN_START",
        /// The contiguous data of a side grew (coalesced per batch).
        NewData = 2 => "CONN_NEW_DATA",
        /// Retransmitted or overlapping data, SYN, SYN/ACK or FIN.
        Rexmit = 3 => "REXMIT",
        /// A side's emulated TCP state changed.
        TcpStateChange = 4 => "TCP_STATE_CHANGE",
        /// A segment was dropped or unread bytes were overwritten.
        Error = 5 => "ERROR",
        /// The flow was idle for `tcp_timeout`.
        Timeout = 6 => "TIMEOUT",
        /// A side's state was destroyed.
        ConnEnd = 7 => "CONN_END",
        /// A packet that belongs to no flow and cannot start one.
        Orphan = 8 => "ORPHAN",
    }
}

/// User-defined event `k` is numbered `USER_EVENT_BASE + k`.
pub const USER_EVENT_BASE: u32 = 0x100;
/// How many user-defined events the subscription mask has bits for.
pub const MAX_USER_EVENTS: u32 = 32;
/// The name records print for any user-defined event.
pub const USER_EVENT_NAME: &str = "USER";
/// The first subscription bit of user events: user event `k` is bit `USER_MASK_SHIFT + k`.
pub const USER_MASK_SHIFT: u32 = 32;

const _: () = assert!(USER_EVENT_BASE as usize > BuiltinEvent::ALL.len());
const _: () = assert!(BuiltinEvent::ALL.len() * Hook::ALL.len() <= USER_MASK_SHIFT as usize);
const _: () = assert!(USER_MASK_SHIFT + MAX_USER_EVENTS <= 64);

impl BuiltinEvent {
    /// The subscription bit of this event at `hook` (`3 * event + hook`).
    #[inline]
    pub const fn mask_bit(self, hook: Hook) -> u64 {
        1u64 << (self.code() * Hook::ALL.len() as u32 + hook.code() as u32)
    }

    /// The hooks the event is delivered at (SPEC §2): both stack updates for `PktIn`,
    /// `ConnStart`, `TcpStateChange` and `ConnEnd`, the receiver's for `Rexmit`, none for
    /// the others. mOS refuses any other pair (`EINVAL`).
    #[inline]
    pub const fn hooks(self) -> &'static [Hook] {
        match self {
            BuiltinEvent::PktIn
            | BuiltinEvent::ConnStart
            | BuiltinEvent::TcpStateChange
            | BuiltinEvent::ConnEnd => &[Hook::Snd, Hook::Rcv],
            BuiltinEvent::Rexmit => &[Hook::Rcv],
            BuiltinEvent::NewData
            | BuiltinEvent::Error
            | BuiltinEvent::Timeout
            | BuiltinEvent::Orphan => &[Hook::None],
        }
    }

    /// The subscription bits of every built-in event at every hook it is delivered at.
    pub const ALL_MASK: u64 = {
        let mut m = 0u64;
        let mut i = 0;
        while i < BuiltinEvent::ALL.len() {
            let e = BuiltinEvent::ALL[i];
            let hooks = e.hooks();
            let mut h = 0;
            while h < hooks.len() {
                m |= e.mask_bit(hooks[h]);
                h += 1;
            }
            i += 1;
        }
        m
    };

    /// Whether the event may be delivered in a batch (SPEC §2.4): not `Timeout`, `ConnEnd`
    /// or `Orphan`, whose handles or state do not outlive their dispatch.
    #[inline]
    pub const fn batchable(self) -> bool {
        !matches!(
            self,
            BuiltinEvent::Timeout | BuiltinEvent::ConnEnd | BuiltinEvent::Orphan
        )
    }

    /// The subscription bits of every batchable event at every hook.
    pub const BATCHABLE_MASK: u64 = {
        let mut m = 0u64;
        let mut i = 0;
        while i < BuiltinEvent::ALL.len() {
            let e = BuiltinEvent::ALL[i];
            if e.batchable() {
                let mut h = 0;
                while h < Hook::ALL.len() {
                    m |= e.mask_bit(Hook::ALL[h]);
                    h += 1;
                }
            }
            i += 1;
        }
        m
    };
}

/// The subscription bit of user event `k` (`k` < [`MAX_USER_EVENTS`]).
#[inline]
pub const fn user_mask_bit(k: u32) -> u64 {
    1u64 << (USER_MASK_SHIFT + k)
}

/// An event number decoded: built-in, or user-defined event `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventCode {
    /// A built-in event.
    Builtin(BuiltinEvent),
    /// User-defined event `k`.
    User(u32),
}

impl EventCode {
    /// The event number.
    #[inline]
    pub const fn code(self) -> u32 {
        match self {
            EventCode::Builtin(b) => b.code(),
            EventCode::User(k) => USER_EVENT_BASE + k,
        }
    }
}

impl TryFrom<u32> for EventCode {
    type Error = UnknownCode;

    /// Numbers between the built-in events and [`USER_EVENT_BASE`] name nothing.
    #[inline]
    fn try_from(code: u32) -> Result<EventCode, UnknownCode> {
        if code >= USER_EVENT_BASE {
            Ok(EventCode::User(code - USER_EVENT_BASE))
        } else {
            BuiltinEvent::try_from(code).map(EventCode::Builtin)
        }
    }
}

code_enum! {
    /// The emulated TCP state of one side (RFC 793 names and order, mOS `enum tcpstate`).
    pub enum TcpState: u8, "TCP state", name {
        /// CLOSED.
        Closed = 0 => "CLOSED",
        /// LISTEN.
        Listen = 1 => "LISTEN",
        /// SYN_SENT.
        SynSent = 2 => "SYN_SENT",
        /// SYN_RCVD.
        SynRcvd = 3 => "SYN_RCVD",
        /// ESTABLISHED.
        Established = 4 => "ESTABLISHED",
        /// FIN_WAIT_1.
        FinWait1 = 5 => "FIN_WAIT_1",
        /// FIN_WAIT_2.
        FinWait2 = 6 => "FIN_WAIT_2",
        /// CLOSE_WAIT.
        CloseWait = 7 => "CLOSE_WAIT",
        /// CLOSING.
        Closing = 8 => "CLOSING",
        /// LAST_ACK.
        LastAck = 9 => "LAST_ACK",
        /// TIME_WAIT.
        TimeWait = 10 => "TIME_WAIT",
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

code_enum! {
    /// Why a side's state was destroyed (available to `ConnEnd` callbacks).
    pub enum EndReason: u8, "end reason", name {
        /// Both sides closed with FIN (after TIME_WAIT, if one is configured).
        Fin = 0 => "fin",
        /// A valid RST from either side.
        Rst = 1 => "rst",
        /// Idle for `tcp_timeout`.
        Timeout = 2 => "timeout",
        /// The flow table was full and this was the least recently active flow.
        Evicted = 3 => "evicted",
        /// The monitor stopped tracking the flow (only that monitor sees this).
        Stopped = 4 => "stopped",
        /// The capture ended with the flow still open.
        Eof = 5 => "eof",
        /// The host is shutting down.
        Shutdown = 6 => "shutdown",
        /// The monitor's plugin generation was retired while the flow was open.
        Reloaded = 7 => "reloaded",
    }
}

/// What the host's `end_reason` returns while the flow is open.
pub const END_REASON_OPEN: i32 = -1;

code_enum! {
    /// What went wrong, for `Error` events.
    pub enum ErrorKind: u8, "error kind", name {
        /// A segment (or its tail) lay beyond the receive window and was dropped.
        BeyondWindow = 0 => "BeyondWindow",
        /// Storing a segment discarded bytes this monitor had not read with `peek` yet.
        Overrun = 1 => "Overrun",
        /// The side's fragment list was full; the segment was dropped.
        FragmentLimit = 2 => "FragmentLimit",
        /// Buffer memory was exhausted (`buffer_memory`); the side stores no bytes.
        OutOfBufferMemory = 3 => "OutOfBufferMemory",
        /// The segment came in IP fragments that overlapped with bytes that differ (an
        /// evasion attempt): it holds the bytes `--defrag-policy` chose.
        IpOverlap = 4 => "IpOverlap",
    }
}

code_enum! {
    /// What [`FfiEvent::detail`](crate::abi::FfiEvent::detail) holds.
    pub enum DetailKind: u8, "detail kind", name {
        /// No detail.
        None = 0 => "none",
        /// A [`TcpState`].
        State = 1 => "state",
        /// An [`EndReason`].
        End = 2 => "end",
        /// An [`ErrorKind`].
        Error = 3 => "error",
    }
}

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

impl Detail {
    /// The `(detail_kind, detail)` pair of an [`FfiEvent`](crate::abi::FfiEvent).
    #[inline]
    pub const fn to_abi(self) -> (u8, u8) {
        match self {
            Detail::None => (DetailKind::None.code(), 0),
            Detail::State(s) => (DetailKind::State.code(), s.code()),
            Detail::End(r) => (DetailKind::End.code(), r.code()),
            Detail::Error(e) => (DetailKind::Error.code(), e.code()),
        }
    }

    /// Decodes a `(detail_kind, detail)` pair; a kind or value this version does not know
    /// is no detail (a newer host may send more).
    #[inline]
    pub fn from_abi(kind: u8, value: u8) -> Detail {
        match DetailKind::try_from(kind) {
            Ok(DetailKind::State) => TcpState::try_from(value).map_or(Detail::None, Detail::State),
            Ok(DetailKind::End) => EndReason::try_from(value).map_or(Detail::None, Detail::End),
            Ok(DetailKind::Error) => ErrorKind::try_from(value).map_or(Detail::None, Detail::Error),
            Ok(DetailKind::None) | Err(_) => Detail::None,
        }
    }
}

code_enum! {
    /// Why a host call failed: the Linux errno values the host functions return, negated
    /// (SPEC §4).
    pub enum Errno: i32, "errno", name {
        /// `EACCES`: the context is not valid (another core's handle, or outside a callback).
        Acces = 13 => "EACCES",
        /// `EBADF`: the flow handle is not valid (never was, or its flow ended).
        Badf = 9 => "EBADF",
        /// `EINVAL`: buffer management is disabled for that side (or an argument is invalid).
        Inval = 22 => "EINVAL",
        /// `ESOCKTNOSUPPORT`: the handle is not a flow handle (e.g. an `Orphan`'s).
        SocktNoSupport = 94 => "ESOCKTNOSUPPORT",
        /// `ENOTCONN`: the side's stream does not exist yet.
        NotConn = 107 => "ENOTCONN",
        /// `ENODATA`: no stored byte at that offset.
        NoData = 61 => "ENODATA",
        /// `EPERM`: the caller may not read this flow (it stopped monitoring it).
        Perm = 1 => "EPERM",
        /// `ENOSPC`: a fixed-size table is full (user-defined events).
        NoSpc = 28 => "ENOSPC",
    }
}

impl Errno {
    /// What a host function returns for this error: the errno, negated.
    #[inline]
    pub const fn ret(self) -> i32 {
        -self.code()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for Errno {}

code_enum! {
    /// Levels of the host's `log`.
    pub enum LogLevel: u8, "log level", name {
        /// Something failed.
        Error = 0 => "error",
        /// Something is wrong but the plugin goes on.
        Warning = 1 => "warning",
        /// For the operator.
        Info = 2 => "info",
        /// For the plugin's author.
        Debug = 3 => "debug",
    }
}

code_enum! {
    /// Which copy of overlapping bytes a side's buffer keeps (`set_overlap_policy`).
    pub enum Overlap: u8, "overlap policy", name {
        /// The first copy received wins.
        First = 0 => "first",
        /// The last copy received wins.
        Last = 1 => "last",
    }
}

/// [`FfiSubscriptions::buffers`](crate::abi::FfiSubscriptions::buffers): no buffer.
pub const BUFFER_OFF: u32 = 0;
/// [`FfiSubscriptions::buffers`](crate::abi::FfiSubscriptions::buffers): the host's
/// configured capacity (any other value asks for at least that many bytes).
pub const BUFFER_DEFAULT: u32 = u32::MAX;

/// [`FfiAddr::family`](crate::abi::FfiAddr::family) of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// [`FfiAddr::family`](crate::abi::FfiAddr::family) of an IPv6 address.
pub const FAMILY_V6: u8 = 6;

#[cfg(test)]
mod tests;
