//! The vocabulary of the engine: sides, hooks, TCP states, events and their details, flow
//! handles.
//!
//! The numbered part is the plugin ABI's ([`flowpeek_plugin_api::codes`]): sides, hooks,
//! TCP states, end reasons, error kinds and details are its types, re-exported; the engine's
//! `EventKind` converts to and from its event codes with exhaustive matches, so a change of
//! the ABI's events fails to compile here instead of mis-delivering. Nothing here is
//! numbered on its own.

use flowpeek_plugin_api::codes::{user_mask_bit, BuiltinEvent, EventCode, USER_EVENT_NAME};
pub use flowpeek_plugin_api::codes::{Detail, EndReason, ErrorKind, Hook, Side, TcpState};

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
    /// The built-in events, in code order.
    pub const BUILTIN: [EventKind; BuiltinEvent::ALL.len()] = {
        let mut out = [EventKind::PktIn; BuiltinEvent::ALL.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = EventKind::from_builtin(BuiltinEvent::ALL[i]);
            i += 1;
        }
        out
    };

    /// The engine's name for a built-in event of the ABI.
    #[inline]
    pub const fn from_builtin(b: BuiltinEvent) -> EventKind {
        match b {
            BuiltinEvent::PktIn => EventKind::PktIn,
            BuiltinEvent::ConnStart => EventKind::ConnStart,
            BuiltinEvent::NewData => EventKind::NewData,
            BuiltinEvent::Rexmit => EventKind::Rexmit,
            BuiltinEvent::TcpStateChange => EventKind::TcpStateChange,
            BuiltinEvent::Error => EventKind::Error,
            BuiltinEvent::Timeout => EventKind::Timeout,
            BuiltinEvent::ConnEnd => EventKind::ConnEnd,
            BuiltinEvent::Orphan => EventKind::Orphan,
        }
    }

    /// The ABI's event: built-in, or user event `k`.
    #[inline]
    pub const fn abi(self) -> EventCode {
        EventCode::Builtin(match self {
            EventKind::PktIn => BuiltinEvent::PktIn,
            EventKind::ConnStart => BuiltinEvent::ConnStart,
            EventKind::NewData => BuiltinEvent::NewData,
            EventKind::Rexmit => BuiltinEvent::Rexmit,
            EventKind::TcpStateChange => BuiltinEvent::TcpStateChange,
            EventKind::Error => BuiltinEvent::Error,
            EventKind::Timeout => BuiltinEvent::Timeout,
            EventKind::ConnEnd => BuiltinEvent::ConnEnd,
            EventKind::Orphan => BuiltinEvent::Orphan,
            EventKind::User(id) => return EventCode::User(id.0 as u32),
        })
    }

    /// The ABI's built-in event, or `None` for a user-defined one.
    #[inline]
    pub const fn builtin(self) -> Option<BuiltinEvent> {
        match self.abi() {
            EventCode::Builtin(b) => Some(b),
            EventCode::User(_) => None,
        }
    }

    /// The ABI's event number.
    #[inline]
    pub const fn code(self) -> u32 {
        self.abi().code()
    }

    /// The engine's event for an ABI event number; `None` for a number that names no event
    /// or a user event beyond the engine's ids.
    #[inline]
    pub fn from_code(code: u32) -> Option<EventKind> {
        match EventCode::try_from(code).ok()? {
            EventCode::Builtin(b) => Some(EventKind::from_builtin(b)),
            EventCode::User(k) => u8::try_from(k)
                .ok()
                .map(|k| EventKind::User(UserEventId(k))),
        }
    }

    /// mOS's name (`PKT_IN`, `CONN_START`, ...); user events are `USER`.
    pub fn mos_name(self) -> &'static str {
        self.builtin()
            .map_or(USER_EVENT_NAME, BuiltinEvent::mos_name)
    }

    /// The subscription bit of this event at `hook`.
    #[inline]
    pub(crate) fn bit(self, hook: Hook) -> u64 {
        match self.abi() {
            EventCode::Builtin(b) => b.mask_bit(hook),
            EventCode::User(k) => user_mask_bit(k),
        }
    }
}

/// The id of a user-defined event (at most [`MAX_USER_EVENTS`] per engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserEventId(pub u8);

/// How many user-defined events one engine holds (as many as the ABI's subscription mask
/// has bits for).
pub const MAX_USER_EVENTS: usize = flowpeek_plugin_api::codes::MAX_USER_EVENTS as usize;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's events are the ABI's, number for number, both ways.
    #[test]
    fn events_convert_through_the_abi_codes() {
        for (i, k) in EventKind::BUILTIN.into_iter().enumerate() {
            assert_eq!(k.code(), i as u32, "{k:?}");
            assert_eq!(EventKind::from_code(k.code()), Some(k));
            assert_eq!(k.builtin().map(BuiltinEvent::code), Some(i as u32));
            assert_eq!(k.mos_name(), BuiltinEvent::ALL[i].mos_name());
        }
        let user = EventKind::User(UserEventId(3));
        assert_eq!(user.code(), 0x103);
        assert_eq!(EventKind::from_code(0x103), Some(user));
        assert_eq!(user.mos_name(), "USER");
        assert_eq!(user.builtin(), None);
        assert_eq!(EventKind::from_code(9), None);
        assert_eq!(EventKind::from_code(0x100 + 256), None);
    }

    /// Subscription bits: `3 * event + hook` for built-in events, `32 + k` for user events.
    #[test]
    fn subscription_bits_are_the_abi_mask() {
        assert_eq!(EventKind::PktIn.bit(Hook::Rcv), 1 << 1);
        assert_eq!(EventKind::ConnEnd.bit(Hook::Snd), 1 << 21);
        assert_eq!(EventKind::Orphan.bit(Hook::None), 1 << 26);
        assert_eq!(EventKind::User(UserEventId(0)).bit(Hook::None), 1 << 32);
        let last = UserEventId(MAX_USER_EVENTS as u8 - 1);
        assert_eq!(EventKind::User(last).bit(Hook::Snd), 1 << 63);
    }
}
