//! The safe side: write a [`Monitor`], export it with [`export_monitor!`](crate::export_monitor).
//!
//! Every callback runs inside `catch_unwind`: a panic is reported to the host (which disables
//! that instance on that core and counts it), never unwound across the boundary.
//!
//! Sides, hooks, states, reasons and details are the ABI's own types ([`crate::codes`]);
//! `EventKind` and `Errno` convert through its codes, so the SDK numbers nothing itself.

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RStr, RString};

use crate::abi::*;
use crate::codes::{BuiltinEvent, EventCode, MAX_USER_EVENTS};
pub use crate::codes::{Detail, EndReason, ErrorKind, Hook, Side, TcpState};

/// A flow, for the duration of its life (mOS: the monitoring socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow(pub u64);

/// An event id: built-in or user-defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // SPEC.md §2 describes each; so does `codes::BuiltinEvent`
pub enum EventKind {
    PktIn,
    ConnStart,
    NewData,
    Rexmit,
    TcpStateChange,
    Error,
    Timeout,
    ConnEnd,
    Orphan,
    User(u32),
}

impl From<BuiltinEvent> for EventKind {
    fn from(b: BuiltinEvent) -> EventKind {
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
}

impl EventKind {
    /// The ABI's event, built-in or user event `k`.
    pub fn abi(self) -> EventCode {
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
            EventKind::User(k) => return EventCode::User(k),
        })
    }
    /// The ABI's built-in event, or `None` for a user-defined one.
    pub fn builtin(self) -> Option<BuiltinEvent> {
        match self.abi() {
            EventCode::Builtin(b) => Some(b),
            EventCode::User(_) => None,
        }
    }
    /// The event's number on the wire.
    pub fn code(self) -> u32 {
        self.abi().code()
    }
    /// Parses an event number.
    pub fn from_code(code: u32) -> Option<EventKind> {
        Some(match EventCode::try_from(code).ok()? {
            EventCode::Builtin(b) => b.into(),
            EventCode::User(k) => EventKind::User(k),
        })
    }
    /// mOS's name (`PKT_IN`, ...); `USER` for user events.
    pub fn mos_name(self) -> &'static str {
        match self.abi() {
            EventCode::Builtin(b) => b.mos_name(),
            EventCode::User(_) => crate::codes::USER_EVENT_NAME,
        }
    }
    fn bit(self, hook: Hook) -> u64 {
        match self.abi() {
            EventCode::User(k) => crate::codes::user_mask_bit(k.min(MAX_USER_EVENTS - 1)),
            EventCode::Builtin(b) => b.mask_bit(hook),
        }
    }
}

// `from_code` is the SDK's older spelling of `TryFrom<u8>`, kept for existing plugins.
impl TcpState {
    /// From its number (`TryFrom<u8>` says why not).
    pub fn from_code(code: u8) -> Option<TcpState> {
        TcpState::try_from(code).ok()
    }
}

impl EndReason {
    /// From its number (`TryFrom<u8>` says why not).
    pub fn from_code(code: u8) -> Option<EndReason> {
        EndReason::try_from(code).ok()
    }
}

/// One event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// The flow (for `Orphan`, a handle usable only with `addresses` and `last_packet`).
    pub flow: Flow,
    /// The side it concerns; `None` for both.
    pub side: Option<Side>,
    /// The hook.
    pub hook: Hook,
    /// Extra information.
    pub detail: Detail,
}

impl Event {
    fn from_ffi(e: &FfiEvent) -> Event {
        Event {
            kind: EventKind::from_code(e.kind).unwrap_or(EventKind::User(e.kind)),
            flow: Flow(e.flow),
            // Lenient: a code this version cannot name reads as "both" / no hook / no detail.
            side: Side::try_from(e.side).ok(),
            hook: Hook::try_from(e.hook).unwrap_or(Hook::None),
            detail: Detail::from_abi(e.detail_kind, e.detail),
        }
    }
}

/// How much receive buffer a monitor wants for one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// None: the monitor reads no bytes of that side.
    Off,
    /// The host's configured capacity.
    Default,
    /// At least this many bytes.
    AtLeast(u32),
}

/// The (event, hook) pairs a monitor receives for every flow, its buffers, the events it
/// takes in batches and its default stream filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    base: FfiSubscriptions,
    batch: u64,
    filter: Option<&'static str>,
}

impl Subscriptions {
    /// Nothing.
    pub fn none() -> Subscriptions {
        Subscriptions::default()
    }
    /// Adds `(event, hook)`, delivered as it happens (SPEC §2.1).
    #[must_use]
    pub fn with(mut self, event: EventKind, hook: Hook) -> Subscriptions {
        self.base.mask |= event.bit(hook);
        self
    }
    /// Adds `(event, hook)`, delivered in batches (SPEC §2.4): the host may hold the event
    /// until the end of its batch of packets and hand many to the plugin in one call; the
    /// callback is the same [`Monitor::on_event`]. What it reads through its [`Cx`] is the flow
    /// as it is when the callback runs, not as it was when the event happened:
    /// [`Cx::deferred`] tells what the host knew of the event's packet. Take in batches the
    /// events whose callbacks need no more than that (counting, per-packet tallies); a
    /// `ConnEnd`, `Orphan`, `Timeout` or user event is always delivered as it happens.
    #[must_use]
    pub fn batched(mut self, event: EventKind, hook: Hook) -> Subscriptions {
        let bit = event.bit(hook);
        self.base.mask |= bit;
        if event.builtin().is_some_and(BuiltinEvent::batchable) {
            self.batch |= bit;
        }
        self
    }
    /// Every built-in event at every hook it may be delivered at.
    #[must_use]
    pub fn all() -> Subscriptions {
        let mut s = Subscriptions::none();
        s.base.mask = BuiltinEvent::ALL_MASK;
        s
    }
    /// A buffer on both sides.
    #[must_use]
    pub fn buffers(mut self, b: Buffer) -> Subscriptions {
        let v = match b {
            Buffer::Off => crate::codes::BUFFER_OFF,
            Buffer::Default => crate::codes::BUFFER_DEFAULT,
            Buffer::AtLeast(n) => n.min(crate::codes::BUFFER_DEFAULT - 1),
        };
        self.base.buffers = [v, v];
        self
    }
    /// The plugin's stream filter in tcpdump syntax (`"tcp port 80"`): flows whose first
    /// packet it does not match never reach the plugin. `filter` in the plugin's
    /// `<name>.toml` replaces it; a bad expression makes the load fail with libpcap's message.
    #[must_use]
    pub fn filter(mut self, expr: &'static str) -> Subscriptions {
        self.filter = Some(expr);
        self
    }
    /// The ABI form, API 1 (no batches, no filter).
    pub fn to_ffi(&self) -> FfiSubscriptions {
        self.base
    }
    /// The ABI form, API 2.
    pub fn to_ffi_v2(&self) -> FfiSubscriptionsV2 {
        FfiSubscriptionsV2 {
            base: self.base,
            batch: self.batch & self.base.mask,
            filter: RStr::from_str(self.filter.unwrap_or("")),
        }
    }
}

/// Why a host call failed (the errno values of SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Errno {
    Acces,
    Badf,
    Inval,
    SocktNoSupport,
    NotConn,
    NoData,
    Perm,
    NoSpc,
    Other(i32),
}

impl From<crate::codes::Errno> for Errno {
    fn from(e: crate::codes::Errno) -> Errno {
        use crate::codes::Errno as E;
        match e {
            E::Acces => Errno::Acces,
            E::Badf => Errno::Badf,
            E::Inval => Errno::Inval,
            E::SocktNoSupport => Errno::SocktNoSupport,
            E::NotConn => Errno::NotConn,
            E::NoData => Errno::NoData,
            E::Perm => Errno::Perm,
            E::NoSpc => Errno::NoSpc,
        }
    }
}

impl Errno {
    fn from_ret(r: i64) -> Errno {
        let e = -r as i32;
        crate::codes::Errno::try_from(e).map_or(Errno::Other(e), Errno::from)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

/// Why `peek` returned no bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekError {
    /// A host error.
    Errno(Errno),
    /// `n` bytes after the cursor are gone (discarded, or a gap that was never filled); the
    /// cursor moved past them.
    Lost(u64),
}

/// Positions in one side's stream, as 64-bit offsets (0 = the byte after the SYN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// Sequence number of offset 0.
    pub seq_base: u32,
    /// Capacity in bytes (0: disabled).
    pub capacity: u32,
    /// The oldest offset still stored.
    pub head: u64,
    /// This monitor's `peek` cursor.
    pub cursor: u64,
    /// End of the in-order data.
    pub contig_end: u64,
    /// End of the last stored fragment.
    pub last_end: u64,
    /// Bytes skipped over gaps never filled.
    pub missing: u64,
    /// Bytes received more than once.
    pub overlap: u64,
}

/// Metadata of a flow's last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastPacket {
    /// Time (ns).
    pub ts: u64,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Stream offset of its first payload byte (sender's direction).
    pub offset: u64,
    /// Payload bytes.
    pub payload_len: u32,
    /// Advertised window.
    pub window: u16,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub flags: u8,
    /// The sender, if known.
    pub sender: Option<Side>,
}

/// The context of one callback: the host's read API and setters (SPEC §4).
pub struct Cx<'a> {
    raw: *mut HostCx,
    /// The record of the event being delivered from a batch (null otherwise).
    rec: *const FfiRecord,
    _life: PhantomData<&'a mut HostCx>,
}

/// What the host knew of a batched event's packet when the event happened
/// ([`Cx::deferred`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// When the event happened (ns, the host's clock then).
    pub ts: u64,
    /// The stream offset of the packet's first payload byte (sender's direction); for an
    /// event not driven by a packet (`NewData`), the contiguous end of its side then.
    pub offset: u64,
    /// The packet's payload length (0 when not driven by a packet).
    pub payload_len: u32,
    /// The packet's TCP flags (0 when not driven by a packet).
    pub flags: u8,
}

/// The host's API 2 functions, once [`PluginMod::bind`] handed them over (null before, and
/// on a host of API 1).
static HOST_EXT: std::sync::atomic::AtomicPtr<HostExt> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

fn host_ext() -> Option<&'static HostExt> {
    let p = HOST_EXT.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: only `Glue::bind` stores into HOST_EXT, and only a `&'static HostExt`.
    unsafe { p.cast_const().as_ref() }
}

/// The errno of a call this host does not have (a host of API 1): `ENOSYS`.
const ENOSYS: i32 = 38;

fn side_code(side: Option<Side>) -> u8 {
    Side::code_of(side)
}

impl<'a> Cx<'a> {
    /// # Safety
    /// `raw` must be the valid `HostCx` of the running callback.
    unsafe fn new(raw: *mut HostCx) -> Cx<'a> {
        Cx {
            raw,
            rec: std::ptr::null(),
            _life: PhantomData,
        }
    }

    /// For an event delivered in a batch ([`Subscriptions::batched`]): what the host knew
    /// of its packet when it happened. `None` for an event delivered as it happens.
    pub fn deferred(&self) -> Option<Deferred> {
        // SAFETY: a non-null `rec` points into the batch of the running call.
        let r = unsafe { self.rec.as_ref() }?;
        Some(Deferred {
            ts: r.ts,
            offset: r.offset,
            payload_len: r.payload_len,
            flags: r.flags,
        })
    }

    /// The consuming read without a copy: lends up to `max` in-order bytes from this
    /// monitor's cursor as at most two slices (the buffer is a ring), valid until the callback
    /// returns, and moves the cursor past them (mOS `mtcp_peek` without the copy). `Ok` with
    /// two empty slices: nothing new. `Err(Lost(n))`: `n` bytes after the cursor are gone, the
    /// cursor moved past them, the next call reads what follows (as [`Cx::peek`]). On a host
    /// of API 1 it fails with `Errno::Other(38)` (ENOSYS): use [`Cx::peek`] there.
    pub fn read(
        &mut self,
        flow: Flow,
        side: Side,
        max: usize,
    ) -> Result<(&[u8], &[u8]), PeekError> {
        let Some(ext) = host_ext() else {
            return Err(PeekError::Errno(Errno::Other(ENOSYS)));
        };
        let (_, cx) = self.api();
        let mut s = FfiSlices {
            a: std::ptr::null(),
            a_len: 0,
            b: std::ptr::null(),
            b_len: 0,
        };
        let mut lost = 0u64;
        // SAFETY: `s` and `lost` are valid out-pointers; `cx` is this callback's.
        let r = unsafe { (ext.read)(cx, flow.0, side.code(), max, &mut s, &mut lost) };
        if r < 0 {
            return Err(if lost > 0 {
                PeekError::Lost(lost)
            } else {
                PeekError::Errno(Errno::from_ret(r))
            });
        }
        let part = |p: *const u8, n: usize| -> &[u8] {
            if n == 0 || p.is_null() {
                &[]
            } else {
                // SAFETY: the host lends `n` readable bytes at `p` until the callback
                // returns; the slices borrow `self`, which lives no longer than it.
                unsafe { std::slice::from_raw_parts(p, n) }
            }
        };
        Ok((part(s.a, s.a_len), part(s.b, s.b_len)))
    }

    fn api(&self) -> (&'static HostApi, *mut c_void) {
        // SAFETY: `raw` is the live HostCx of this callback (see `new`).
        let h = unsafe { &*self.raw };
        (h.api, h.ctx)
    }

    /// Copies stored bytes from offset `off` (mOS `mtcp_ppeek`); stops at a gap.
    pub fn ppeek(&self, flow: Flow, side: Side, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        let (api, cx) = self.api();
        // SAFETY: `buf` is valid for `buf.len()` writable bytes; `cx` is this callback's.
        let r = unsafe { (api.ppeek)(cx, flow.0, side.code(), buf.as_mut_ptr(), buf.len(), off) };
        if r < 0 {
            Err(Errno::from_ret(r))
        } else {
            Ok(r as usize)
        }
    }

    /// Reads in-order bytes from this monitor's cursor (mOS `mtcp_peek`) and advances it.
    pub fn peek(&mut self, flow: Flow, side: Side, buf: &mut [u8]) -> Result<usize, PeekError> {
        let (api, cx) = self.api();
        let mut lost = 0u64;
        // SAFETY: as in `ppeek`; `lost` is a valid out-pointer.
        let r = unsafe {
            (api.peek)(
                cx,
                flow.0,
                side.code(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut lost,
            )
        };
        if r >= 0 {
            Ok(r as usize)
        } else if lost > 0 {
            Err(PeekError::Lost(lost))
        } else {
            Err(PeekError::Errno(Errno::from_ret(r)))
        }
    }

    /// Lends stored bytes `[off, off + len)` (cut at the end of the fragment holding `off`)
    /// as at most two slices, without copying. They live until the callback returns.
    pub fn slices(
        &self,
        flow: Flow,
        side: Side,
        off: u64,
        len: usize,
    ) -> Result<(&[u8], &[u8]), Errno> {
        let (api, cx) = self.api();
        let mut s = FfiSlices {
            a: std::ptr::null(),
            a_len: 0,
            b: std::ptr::null(),
            b_len: 0,
        };
        // SAFETY: `s` is a valid out-pointer.
        let r = unsafe { (api.ppeek_slices)(cx, flow.0, side.code(), off, len, &mut s) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        let part = |p: *const u8, n: usize| -> &[u8] {
            if n == 0 || p.is_null() {
                &[]
            } else {
                // SAFETY: the host lends `n` readable bytes at `p` for this callback, and
                // the returned slices borrow `self`, which lives no longer than it.
                unsafe { std::slice::from_raw_parts(p, n) }
            }
        };
        Ok((part(s.a, s.a_len), part(s.b, s.b_len)))
    }

    /// The stored fragments of a side, `(offset, len)` in offset order, into `out`.
    pub fn fragments(
        &self,
        flow: Flow,
        side: Side,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), Errno> {
        let (api, cx) = self.api();
        let mut buf = [FfiFragment::default(); 64];
        // SAFETY: `buf` has room for `buf.len()` fragments.
        let r = unsafe { (api.fragments)(cx, flow.0, side.code(), buf.as_mut_ptr(), buf.len()) };
        if r < 0 {
            return Err(Errno::from_ret(r));
        }
        out.clear();
        out.extend(
            buf[..(r as usize).min(buf.len())]
                .iter()
                .map(|f| (f.offset, f.len)),
        );
        Ok(())
    }

    /// Positions in a side's stream.
    pub fn buffer_info(&self, flow: Flow, side: Side) -> Result<BufferInfo, Errno> {
        let (api, cx) = self.api();
        let mut i = FfiBufferInfo::default();
        // SAFETY: `i` is a valid out-pointer.
        let r = unsafe { (api.buffer_info)(cx, flow.0, side.code(), &mut i) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        Ok(BufferInfo {
            seq_base: i.seq_base,
            capacity: i.capacity,
            head: i.head,
            cursor: i.cursor,
            contig_end: i.contig_end,
            last_end: i.last_end,
            missing: i.missing,
            overlap: i.overlap,
        })
    }

    /// A side's emulated TCP state.
    pub fn tcp_state(&self, flow: Flow, side: Side) -> Result<TcpState, Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call with this callback's context.
        let r = unsafe { (api.tcp_state)(cx, flow.0, side.code()) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        TcpState::from_code(r as u8).ok_or(Errno::Other(r))
    }

    /// The client's and the server's addresses (an orphan's source and destination).
    pub fn addresses(&self, flow: Flow) -> Result<(SocketAddr, SocketAddr), Errno> {
        let (api, cx) = self.api();
        let mut a = FfiAddrs::default();
        // SAFETY: `a` is a valid out-pointer.
        let r = unsafe { (api.addresses)(cx, flow.0, &mut a) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        Ok((a.client.socket_addr(), a.server.socket_addr()))
    }

    /// The flow's last packet (an orphan's packet).
    pub fn last_packet(&self, flow: Flow) -> Result<LastPacket, Errno> {
        let (api, cx) = self.api();
        let mut p = FfiLastPacket::default();
        // SAFETY: `p` is a valid out-pointer.
        let r = unsafe { (api.last_packet)(cx, flow.0, &mut p) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        Ok(LastPacket {
            ts: p.ts,
            seq: p.seq,
            ack: p.ack,
            offset: p.offset,
            payload_len: p.payload_len,
            window: p.window,
            flags: p.flags,
            sender: Side::try_from(p.sender).ok(),
        })
    }

    /// First and latest packet time (ns) and creation order.
    pub fn flow_times(&self, flow: Flow) -> Result<(u64, u64, u64), Errno> {
        let (api, cx) = self.api();
        let mut t = FfiFlowTimes::default();
        // SAFETY: `t` is a valid out-pointer.
        let r = unsafe { (api.flow_times)(cx, flow.0, &mut t) };
        if r < 0 {
            return Err(Errno::from_ret(i64::from(r)));
        }
        Ok((t.start, t.last, t.serial))
    }

    /// Whether the flow was picked up mid-stream.
    pub fn is_partial(&self, flow: Flow) -> Result<bool, Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        let r = unsafe { (api.is_partial)(cx, flow.0) };
        if r < 0 {
            Err(Errno::from_ret(i64::from(r)))
        } else {
            Ok(r == 1)
        }
    }

    /// Why the flow ended (inside `ConnEnd`), `None` while open.
    pub fn end_reason(&self, flow: Flow) -> Option<EndReason> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        let r = unsafe { (api.end_reason)(cx, flow.0) };
        u8::try_from(r).ok().and_then(EndReason::from_code)
    }

    fn status(r: i32) -> Result<(), Errno> {
        if r < 0 {
            Err(Errno::from_ret(i64::from(r)))
        } else {
            Ok(())
        }
    }

    /// Sets a side's buffer capacity for this flow (0 disables it).
    pub fn set_buffer_capacity(
        &mut self,
        flow: Flow,
        side: Side,
        capacity: u32,
    ) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.set_buffer_capacity)(cx, flow.0, side.code(), capacity) })
    }

    /// Sets which copy wins on overlap: `last == false` keeps the first.
    pub fn set_overlap_last(&mut self, flow: Flow, side: Side, last: bool) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.set_overlap_policy)(cx, flow.0, side.code(), u8::from(last)) })
    }

    /// Stops watching one side, or both (`None`): then `ConnEnd` (Stopped) follows at once.
    pub fn stop_monitoring(&mut self, flow: Flow, side: Option<Side>) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.stop_monitoring)(cx, flow.0, side_code(side)) })
    }

    /// This monitor's value for the flow (0 until set).
    pub fn user_value(&self, flow: Flow) -> Result<u64, Errno> {
        let (api, cx) = self.api();
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        Self::status(unsafe { (api.user_value)(cx, flow.0, &mut v) }).map(|()| v)
    }

    /// Sets this monitor's value for the flow.
    pub fn set_user_value(&mut self, flow: Flow, value: u64) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.set_user_value)(cx, flow.0, value) })
    }

    /// A one-shot timer for the flow, `after_ns` from now.
    pub fn set_timer(&mut self, flow: Flow, after_ns: u64, tag: u64) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.set_timer)(cx, flow.0, after_ns, tag) })
    }

    /// A one-shot timer for this core, `after_ns` from now.
    pub fn set_core_timer(&mut self, after_ns: u64, tag: u64) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.set_core_timer)(cx, after_ns, tag) })
    }

    /// Subscribes to `(event, hook)` for this flow only.
    pub fn subscribe(&mut self, flow: Flow, event: EventKind, hook: Hook) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.subscribe)(cx, flow.0, event.code(), hook.code()) })
    }

    /// Unsubscribes from `(event, hook)` for this flow only.
    pub fn unsubscribe(&mut self, flow: Flow, event: EventKind, hook: Hook) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.unsubscribe)(cx, flow.0, event.code(), hook.code()) })
    }

    /// Raises a filterless user event for the flow, right after this callback.
    pub fn raise(&mut self, flow: Flow, side: Option<Side>, event: EventKind) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        Self::status(unsafe { (api.raise)(cx, flow.0, side_code(side), event.code()) })
    }

    /// The host's clock (ns): capture time offline, arrival time live.
    pub fn now(&self) -> u64 {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        unsafe { (api.now)(cx) }
    }

    /// This instance's core.
    pub fn core_id(&self) -> u32 {
        let (api, cx) = self.api();
        // SAFETY: plain call.
        unsafe { (api.core_id)(cx) }
    }

    /// Appends one record (by convention one line of JSON) to this plugin's log.
    pub fn emit(&mut self, record: &str) -> Result<(), Errno> {
        let (api, cx) = self.api();
        // SAFETY: `record` is valid for `len` bytes.
        Self::status(unsafe { (api.emit)(cx, record.as_ptr(), record.len()) })
    }

    /// Writes a message to the host's log; `level` is a [`LogLevel`](crate::codes::LogLevel) code (0 error,
    /// 1 warning, 2 info, 3 debug).
    pub fn log(&self, level: u8, msg: &str) {
        let (api, cx) = self.api();
        // SAFETY: `msg` is valid for `len` bytes.
        unsafe { (api.log)(cx, level, msg.as_ptr(), msg.len()) }
    }
}

/// What a monitor may do when it is installed, before any event: define user events.
pub struct Setup<'a> {
    raw: *mut SetupCx,
    _life: PhantomData<&'a mut SetupCx>,
}

impl Setup<'_> {
    /// Defines a user event on `base` with an optional filter (write it with
    /// [`user_filter!`](crate::user_filter)). The same (base, filter, arg) gives the same id.
    pub fn define_event(
        &mut self,
        base: EventKind,
        filter: Option<FfiFilter>,
        arg: u64,
    ) -> Result<EventKind, Errno> {
        // SAFETY: `raw` is the live SetupCx of this call.
        let s = unsafe { &*self.raw };
        // SAFETY: plain call with the host's context.
        let r = unsafe { (s.define_event)(s.ctx, base.code(), FfiFilterSlot { filter }, arg) };
        if r < 0 {
            return Err(Errno::from_ret(r));
        }
        EventKind::from_code(r as u32).ok_or(Errno::Other(r as i32))
    }

    /// Subscribes to `(event, hook)` for all flows (for user events defined here).
    pub fn subscribe(&mut self, event: EventKind, hook: Hook) -> Result<(), Errno> {
        // SAFETY: as above.
        let s = unsafe { &*self.raw };
        // SAFETY: plain call.
        Cx::status(unsafe { (s.subscribe)(s.ctx, event.code(), hook.code()) })
    }
}

/// A monitor plugin. One instance is made per core; every callback runs on that core.
pub trait Monitor: Sized + 'static {
    /// The plugin's name: its records go to `<name>.jsonl`.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str = "0";

    /// Makes the instance for `core` from the text of `<name>.toml` (empty if none). It runs
    /// on a host thread of its own, not on the core's (a slow one does not stop traffic; past
    /// the time budget it is reported); the instance then moves to its core.
    fn new(core: u32, config: &str) -> Result<Self, String>;

    /// What this monitor wants for every flow.
    fn subscriptions(&self) -> Subscriptions;

    /// Defines user events; runs once when the instance is installed.
    fn setup(&mut self, setup: &mut Setup<'_>) {
        let _ = setup;
    }

    /// Every subscribed event.
    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event);

    /// A timer set with `set_timer` (`flow` is `Some`) or `set_core_timer` is due.
    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<Flow>, tag: u64) {
        let _ = (cx, flow, tag);
    }

    /// The instance retires (reload, removal, or the host stops): emit final records here.
    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }
}

fn guard(f: impl FnOnce()) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => status::OK,
        Err(_) => status::PANICKED,
    }
}

/// The table of callbacks for `M` (used by [`export_monitor!`](crate::export_monitor)).
#[doc(hidden)]
pub struct Glue<M>(PhantomData<M>);

impl<M: Monitor> Glue<M> {
    const VTABLE: MonitorVTable = MonitorVTable {
        subscriptions: Self::subscriptions,
        setup: Self::setup,
        on_event: Self::on_event,
        on_timer: Self::on_timer,
        shutdown: Self::shutdown,
        drop: Self::drop,
    };

    /// # Safety
    /// `this` must come from [`Glue::new`] for the same `M`.
    unsafe fn this<'a>(this: *mut c_void) -> &'a mut M {
        // SAFETY: `this` is the Box<M> leaked by `new`, used on one thread at a time.
        unsafe { &mut *this.cast::<M>() }
    }

    unsafe extern "C" fn subscriptions(this: *mut c_void) -> FfiSubscriptions {
        let mut out = FfiSubscriptions::default();
        // SAFETY: the host passes back the instance it got from `new`.
        let m = unsafe { Self::this(this) };
        let _ = guard(|| out = m.subscriptions().to_ffi());
        out
    }

    #[doc(hidden)]
    pub unsafe extern "C" fn subscriptions_v2(
        this: *mut c_void,
        out: *mut FfiSubscriptionsV2,
    ) -> i32 {
        // SAFETY: see `subscriptions`.
        let m = unsafe { Self::this(this) };
        let mut subs = FfiSubscriptionsV2::default();
        let r = guard(|| subs = m.subscriptions().to_ffi_v2());
        if !out.is_null() {
            // SAFETY: the host passes a valid out-pointer.
            unsafe { *out = subs };
        }
        r
    }

    /// Delivers the records one by one to `on_event`; returns after a record whose callback
    /// the host marked as cutting the batch.
    #[doc(hidden)]
    pub unsafe extern "C" fn on_batch(
        this: *mut c_void,
        cx: *mut HostCx,
        batch: *mut FfiBatch,
    ) -> i32 {
        if batch.is_null() {
            return status::OK;
        }
        // SAFETY: see `subscriptions`.
        let m = unsafe { Self::this(this) };
        // SAFETY: the host passes a live batch whose `records` hold `len` records for this
        // call; the host writes `cut` (through its own pointer) only inside our callbacks, so
        // it is read through the raw pointer after each one.
        let (recs, len) = unsafe { ((*batch).records, (*batch).len) };
        let mut done = 0usize;
        let r = guard(|| {
            while done < len {
                // SAFETY: `done < len`.
                let rec = unsafe { &*recs.add(done) };
                let ev = Event::from_ffi(&rec.ev);
                let mut c = Cx {
                    raw: cx,
                    rec,
                    _life: PhantomData,
                };
                done += 1;
                m.on_event(&mut c, &ev);
                // SAFETY: see above.
                if unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*batch).cut)) } != 0 {
                    break;
                }
            }
        });
        // SAFETY: see above.
        unsafe { (*batch).done = done };
        r
    }

    const EXT: PluginExt = PluginExt {
        api_version: API_VERSION,
        subscriptions_v2: Self::subscriptions_v2,
        on_batch: Self::on_batch,
        bind: Self::bind,
    };

    /// What the library's [`EXT_SYMBOL`] function returns.
    #[doc(hidden)]
    pub fn ext_header() -> PluginExtHeader {
        PluginExtHeader {
            layout: (<PluginExt as abi_stable::StableAbi>::LAYOUT
                as *const abi_stable::type_layout::TypeLayout)
                .cast(),
            ext: &Self::EXT,
        }
    }

    #[doc(hidden)]
    pub extern "C" fn bind(ext: &'static HostExt) {
        HOST_EXT.store(
            (ext as *const HostExt).cast_mut(),
            std::sync::atomic::Ordering::Release,
        );
    }

    unsafe extern "C" fn setup(this: *mut c_void, setup: *mut SetupCx) -> i32 {
        // SAFETY: see `subscriptions`.
        let m = unsafe { Self::this(this) };
        guard(|| {
            m.setup(&mut Setup {
                raw: setup,
                _life: PhantomData,
            })
        })
    }

    unsafe extern "C" fn on_event(this: *mut c_void, cx: *mut HostCx, ev: *const FfiEvent) -> i32 {
        // SAFETY: see `subscriptions`; `ev` is valid for this call.
        let (m, ev) = unsafe { (Self::this(this), Event::from_ffi(&*ev)) };
        // SAFETY: `cx` is this callback's context.
        let mut cx = unsafe { Cx::new(cx) };
        guard(|| m.on_event(&mut cx, &ev))
    }

    unsafe extern "C" fn on_timer(
        this: *mut c_void,
        cx: *mut HostCx,
        has_flow: u8,
        flow: u64,
        tag: u64,
    ) -> i32 {
        // SAFETY: see `on_event`.
        let m = unsafe { Self::this(this) };
        // SAFETY: see `on_event`.
        let mut cx = unsafe { Cx::new(cx) };
        let flow = (has_flow != 0).then_some(Flow(flow));
        guard(|| m.on_timer(&mut cx, flow, tag))
    }

    unsafe extern "C" fn shutdown(this: *mut c_void, cx: *mut HostCx) -> i32 {
        // SAFETY: see `on_event`.
        let m = unsafe { Self::this(this) };
        // SAFETY: see `on_event`.
        let mut cx = unsafe { Cx::new(cx) };
        guard(|| m.shutdown(&mut cx))
    }

    unsafe extern "C" fn drop(this: *mut c_void) {
        // SAFETY: `this` is the Box<M> leaked by `new`; the host drops it once.
        let _ = guard(|| drop(unsafe { Box::from_raw(this.cast::<M>()) }));
    }

    #[doc(hidden)]
    pub extern "C" fn name() -> RStr<'static> {
        RStr::from_str(M::NAME)
    }

    #[doc(hidden)]
    pub extern "C" fn version() -> RStr<'static> {
        RStr::from_str(M::VERSION)
    }

    #[doc(hidden)]
    #[allow(clippy::new_ret_no_self)] // the constructor the root module exports
    pub extern "C" fn new(core: u32, config: RStr<'_>) -> RResult<MonitorObj, RString> {
        let made = catch_unwind(AssertUnwindSafe(|| M::new(core, config.as_str())));
        match made {
            Ok(Ok(m)) => RResult::ROk(MonitorObj {
                this: Box::into_raw(Box::new(m)).cast(),
                vtable: &Self::VTABLE,
            }),
            Ok(Err(e)) => RResult::RErr(RString::from(e)),
            Err(_) => RResult::RErr(RString::from("the constructor panicked")),
        }
    }
}

/// Writes an `extern "C"` filter for a user-defined event from a closure-like body:
/// `user_filter!(is_http, |cx, ev, arg| { ... bool })`.
#[macro_export]
macro_rules! user_filter {
    ($name:ident, |$cx:ident, $ev:ident, $arg:ident| $body:block) => {
        unsafe extern "C" fn $name(
            cx: *mut $crate::abi::HostCx,
            ev: *const $crate::abi::FfiEvent,
            arg: u64,
        ) -> u8 {
            let r = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
                // SAFETY: the host passes the context and event of the running dispatch.
                let ($cx, $ev) = unsafe { $crate::__filter_args(cx, ev) };
                let $cx = &$cx;
                let $arg = arg;
                $body
            }));
            u8::from(r.unwrap_or(false))
        }
    };
}

/// # Safety
/// `cx` and `ev` must be the host's live pointers for the running filter call.
#[doc(hidden)]
pub unsafe fn __filter_args<'a>(cx: *mut HostCx, ev: *const FfiEvent) -> (Cx<'a>, Event) {
    // SAFETY: per this function's contract.
    unsafe { (Cx::new(cx), Event::from_ffi(&*ev)) }
}

/// Exports a [`Monitor`] type as this library's plugin root module. The crate must be a
/// `cdylib` and depend on `abi_stable` (its attribute macro generates the export).
#[macro_export]
macro_rules! export_monitor {
    ($ty:ty) => {
        #[doc(hidden)]
        #[allow(missing_docs)]
        pub mod __flowpeek_export {
            #[allow(unused_imports)]
            use super::*;

            #[::abi_stable::export_root_module]
            pub fn flowpeek_plugin_root() -> $crate::abi::PluginModRef {
                use ::abi_stable::prefix_type::PrefixTypeTrait;
                $crate::abi::PluginMod {
                    api_version: $crate::abi::API_VERSION,
                    name: $crate::sdk::Glue::<$ty>::name,
                    version: $crate::sdk::Glue::<$ty>::version,
                    new: $crate::sdk::Glue::<$ty>::new,
                }
                .leak_into_prefix()
            }

            /// The API 2 entry points ([`EXT_SYMBOL`]($crate::abi::EXT_SYMBOL)).
            #[export_name = "flowpeek_plugin_api2"]
            pub extern "C" fn flowpeek_plugin_api2() -> $crate::abi::PluginExtHeader {
                $crate::sdk::Glue::<$ty>::ext_header()
            }
        }
    };
}

/// Reads `key = <integer>` from a plugin's configuration text (`<name>.toml`): `#` comments,
/// `_` digit separators and blank lines are allowed; other keys are ignored.
pub fn config_u64(text: &str, key: &str) -> Result<Option<u64>, String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != key {
            continue;
        }
        let v: String = v.trim().chars().filter(|&c| c != '_').collect();
        return v
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}: expected an integer, found {v:?}"));
    }
    Ok(None)
}

/// Reads `key = <string>` (quoted or bare) from a plugin's configuration text, like
/// [`config_u64`].
pub fn config_str<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Checks that a plugin's configuration text sets only `known` keys, and that every
/// non-blank, non-comment line is `key = value`: the error names the line and the keys the
/// plugin knows (a misspelt key must not be ignored silently).
pub fn config_keys(text: &str, known: &[&str]) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            return Err(format!("line {}: {line:?} is not `key = value`", n + 1));
        };
        let k = k.trim();
        if !known.contains(&k) {
            return Err(format!(
                "line {}: unknown key {k:?}; this plugin knows {}",
                n + 1,
                if known.is_empty() {
                    "no key".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    Ok(())
}

/// Per-flow state of a monitor, found through the flow's user value (no hashing): the low
/// 48 bits hold the slot index + 1; the high 16 bits are left to the monitor
/// ([`FlowSlab::flags`], [`FlowSlab::set_flags`]). Freed slots are reused.
pub struct FlowSlab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

const SLAB_INDEX: u64 = (1 << 48) - 1;

impl<T> Default for FlowSlab<T> {
    fn default() -> Self {
        FlowSlab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> FlowSlab<T> {
    /// The flow's slot index, making its state with `make` on the flow's first use.
    pub fn entry(
        &mut self,
        cx: &mut Cx<'_>,
        flow: Flow,
        make: impl FnOnce(&Cx<'_>) -> T,
    ) -> Option<usize> {
        let v = cx.user_value(flow).ok()?;
        if v & SLAB_INDEX != 0 {
            return usize::try_from((v & SLAB_INDEX) - 1).ok();
        }
        let state = make(cx);
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(state);
                i
            }
            None => {
                self.slots.push(Some(state));
                self.slots.len() - 1
            }
        };
        if cx
            .set_user_value(flow, (v & !SLAB_INDEX) | (idx as u64 + 1))
            .is_err()
        {
            self.release(idx);
            return None;
        }
        Some(idx)
    }

    /// Flows with state.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no flow has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state in slot `idx`.
    pub fn get_mut(&mut self, idx: usize) -> Option<&mut T> {
        self.slots.get_mut(idx).and_then(Option::as_mut)
    }

    /// Takes the state out of slot `idx` and frees the slot.
    pub fn release(&mut self, idx: usize) -> Option<T> {
        let t = self.slots.get_mut(idx)?.take();
        if t.is_some() {
            self.free.push(idx);
        }
        t
    }

    /// The monitor's 16 flag bits of the flow's user value.
    pub fn flags(&self, cx: &Cx<'_>, flow: Flow) -> u16 {
        cx.user_value(flow).map_or(0, |v| (v >> 48) as u16)
    }

    /// Sets the monitor's 16 flag bits of the flow's user value.
    pub fn set_flags(&self, cx: &mut Cx<'_>, flow: Flow, flags: u16) {
        if let Ok(v) = cx.user_value(flow) {
            let _ = cx.set_user_value(flow, (v & SLAB_INDEX) | (u64::from(flags) << 48));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_integers_and_says_what_is_wrong() {
        let text = "# comment\nbuffer = 65_536 # bytes\nother=x\n\nmax_rows=7";
        assert_eq!(config_u64(text, "buffer"), Ok(Some(65536)));
        assert_eq!(config_u64(text, "max_rows"), Ok(Some(7)));
        assert_eq!(config_u64(text, "missing"), Ok(None));
        let err = config_u64(text, "other").unwrap_err();
        assert!(err.contains("other") && err.contains("integer"), "{err}");
    }
}
