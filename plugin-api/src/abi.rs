//! The binary interface between the host and a plugin: `#[repr(C)]` types whose layout
//! abi_stable checks when the library is loaded.
//!
//! A plugin exports one root module ([`PluginMod`], a prefix type: later versions append
//! fields and old plugins keep loading). Its constructor returns a [`MonitorObj`]: an opaque
//! pointer and a table of the plugin's callbacks. Every callback receives a [`HostCx`]: an
//! opaque context and the table of the host's functions ([`HostApi`]), valid for the
//! duration of that callback only.
//!
//! API 2 adds entry points beside the root module, not in it: abi_stable lets a library's
//! root module have more fields than the host's, never fewer, so a root module that grew
//! would refuse every plugin built before. The root module stays as in API 1, and an API 2
//! library also exports [`EXT_SYMBOL`], returning a [`PluginExtHeader`]: the layout of its
//! [`PluginExt`] (checked by the host with abi_stable before any use) and the table itself:
//! [`PluginExt::subscriptions_v2`] (a batch mask and a default stream filter),
//! [`PluginExt::on_batch`] (many compact [`FfiRecord`]s in one call) and
//! [`PluginExt::bind`] (the host's API 2 functions, [`HostExt`]: the zero-copy consuming
//! read). A library without the symbol (API 1) keeps loading and is called one event at a
//! time.
//!
//! Every number these types carry (sides, hooks, events, states, reasons, errno values, ...)
//! is defined in [`crate::codes`], once; functions returning `i32`/`i64` return a negative
//! [`Errno`](crate::codes::Errno) on failure.

use std::ffi::c_void;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

/// The version of this interface. A plugin states the version it was built against; the host
/// loads versions from [`MIN_API_VERSION`] to [`API_VERSION`].
pub const API_VERSION: u32 = 2;
/// The oldest interface version this host still loads (API 1: no batches, no `read`).
pub const MIN_API_VERSION: u32 = 1;

pub use crate::codes::USER_EVENT_BASE;
use crate::codes::{BuiltinEvent, DetailKind};

/// The built-in events' mOS names, indexed by event number.
pub const EVENT_NAMES: [&str; BuiltinEvent::ALL.len()] = {
    let mut names = [""; BuiltinEvent::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[BuiltinEvent::ALL[i].code() as usize] = BuiltinEvent::ALL[i].mos_name();
        i += 1;
    }
    names
};

/// Detail kinds of [`FfiEvent::detail_kind`] (the values of [`DetailKind`]).
pub mod detail {
    use super::DetailKind;

    /// No detail.
    pub const NONE: u8 = DetailKind::None.code();
    /// `detail` is a [`TcpState`](crate::codes::TcpState).
    pub const STATE: u8 = DetailKind::State.code();
    /// `detail` is an [`EndReason`](crate::codes::EndReason).
    pub const END: u8 = DetailKind::End.code();
    /// `detail` is an [`ErrorKind`](crate::codes::ErrorKind).
    pub const ERROR: u8 = DetailKind::Error.code();
}

/// One event, as the plugin receives it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfiEvent {
    /// The event number ([`EventCode`](crate::codes::EventCode)).
    pub kind: u32,
    /// The flow handle (meaningless for `ORPHAN`, where only the packet is known).
    pub flow: u64,
    /// A [`Side`](crate::codes::Side), or [`SIDE_BOTH`](crate::codes::SIDE_BOTH).
    pub side: u8,
    /// A [`Hook`](crate::codes::Hook).
    pub hook: u8,
    /// What `detail` holds (see [`detail`]).
    pub detail_kind: u8,
    /// The detail value.
    pub detail: u8,
}

/// What a monitor wants for every flow.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfiSubscriptions {
    /// Built-in events: [`BuiltinEvent::mask_bit`]; user events:
    /// [`user_mask_bit`](crate::codes::user_mask_bit).
    pub mask: u64,
    /// Receive buffer per side (client, server): [`BUFFER_OFF`](crate::codes::BUFFER_OFF),
    /// [`BUFFER_DEFAULT`](crate::codes::BUFFER_DEFAULT) (the configured capacity), otherwise
    /// at least that many bytes.
    pub buffers: [u32; 2],
}

/// Positions in one side's stream.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // documented on the SDK's `BufferInfo`
pub struct FfiBufferInfo {
    pub seq_base: u32,
    pub capacity: u32,
    pub head: u64,
    pub cursor: u64,
    pub contig_end: u64,
    pub last_end: u64,
    pub missing: u64,
    pub overlap: u64,
}

/// An endpoint address.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfiAddr {
    /// [`FAMILY_V4`](crate::codes::FAMILY_V4) or [`FAMILY_V6`](crate::codes::FAMILY_V6).
    pub family: u8,
    /// The address; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// The port.
    pub port: u16,
}

impl FfiAddr {
    /// The endpoint as a socket address (a family other than IPv6 reads as IPv4).
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let a = &self.addr;
        let ip = if self.family == crate::codes::FAMILY_V6 {
            IpAddr::V6(Ipv6Addr::from(*a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        std::net::SocketAddr::new(ip, self.port)
    }
}

/// Both endpoints of a flow (or an orphan packet's source and destination).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfiAddrs {
    /// The client (or the packet's source).
    pub client: FfiAddr,
    /// The server (or the packet's destination).
    pub server: FfiAddr,
}

/// Metadata of a flow's last packet.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // documented on the SDK's `LastPacket`
pub struct FfiLastPacket {
    pub ts: u64,
    pub seq: u32,
    pub ack: u32,
    pub offset: u64,
    pub payload_len: u32,
    pub window: u16,
    pub flags: u8,
    /// A [`Side`](crate::codes::Side), or [`SIDE_BOTH`](crate::codes::SIDE_BOTH) when
    /// unknown (orphan).
    pub sender: u8,
}

/// A flow's times and creation order.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct FfiFlowTimes {
    pub start: u64,
    pub last: u64,
    pub serial: u64,
}

/// Up to two slices of a receive buffer, lent for the duration of a callback.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct FfiSlices {
    pub a: *const u8,
    pub a_len: usize,
    pub b: *const u8,
    pub b_len: usize,
}

/// One stored fragment `[offset, offset + len)`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct FfiFragment {
    pub offset: u64,
    pub len: u64,
}

/// The host's functions. `cx` is [`HostCx::ctx`]; it is valid during one callback only.
#[repr(C)]
#[derive(StableAbi)]
#[allow(missing_docs)] // each is the SDK's `Cx` method of the same name
pub struct HostApi {
    pub ppeek: unsafe extern "C" fn(
        cx: *mut c_void,
        flow: u64,
        side: u8,
        buf: *mut u8,
        len: usize,
        off: u64,
    ) -> i64,
    /// `-ENODATA` with `*lost` set when bytes were lost before the cursor.
    pub peek: unsafe extern "C" fn(
        cx: *mut c_void,
        flow: u64,
        side: u8,
        buf: *mut u8,
        len: usize,
        lost: *mut u64,
    ) -> i64,
    pub ppeek_slices: unsafe extern "C" fn(
        cx: *mut c_void,
        flow: u64,
        side: u8,
        off: u64,
        len: usize,
        out: *mut FfiSlices,
    ) -> i32,
    /// Returns the number of fragments (which may exceed `cap`; only `cap` are written).
    pub fragments: unsafe extern "C" fn(
        cx: *mut c_void,
        flow: u64,
        side: u8,
        out: *mut FfiFragment,
        cap: usize,
    ) -> i64,
    pub buffer_info:
        unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8, out: *mut FfiBufferInfo) -> i32,
    /// A [`TcpState`](crate::codes::TcpState) code.
    pub tcp_state: unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8) -> i32,
    pub addresses: unsafe extern "C" fn(cx: *mut c_void, flow: u64, out: *mut FfiAddrs) -> i32,
    pub last_packet:
        unsafe extern "C" fn(cx: *mut c_void, flow: u64, out: *mut FfiLastPacket) -> i32,
    pub flow_times: unsafe extern "C" fn(cx: *mut c_void, flow: u64, out: *mut FfiFlowTimes) -> i32,
    /// 1 partial, 0 not.
    pub is_partial: unsafe extern "C" fn(cx: *mut c_void, flow: u64) -> i32,
    /// An [`EndReason`](crate::codes::EndReason) code, or
    /// [`END_REASON_OPEN`](crate::codes::END_REASON_OPEN) while the flow is open.
    pub end_reason: unsafe extern "C" fn(cx: *mut c_void, flow: u64) -> i32,
    pub set_buffer_capacity:
        unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8, capacity: u32) -> i32,
    /// `policy` is an [`Overlap`](crate::codes::Overlap) code.
    pub set_overlap_policy:
        unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8, policy: u8) -> i32,
    pub stop_monitoring: unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8) -> i32,
    pub user_value: unsafe extern "C" fn(cx: *mut c_void, flow: u64, out: *mut u64) -> i32,
    pub set_user_value: unsafe extern "C" fn(cx: *mut c_void, flow: u64, value: u64) -> i32,
    pub set_timer: unsafe extern "C" fn(cx: *mut c_void, flow: u64, after_ns: u64, tag: u64) -> i32,
    pub set_core_timer: unsafe extern "C" fn(cx: *mut c_void, after_ns: u64, tag: u64) -> i32,
    pub subscribe: unsafe extern "C" fn(cx: *mut c_void, flow: u64, event: u32, hook: u8) -> i32,
    pub unsubscribe: unsafe extern "C" fn(cx: *mut c_void, flow: u64, event: u32, hook: u8) -> i32,
    pub raise: unsafe extern "C" fn(cx: *mut c_void, flow: u64, side: u8, event: u32) -> i32,
    pub now: unsafe extern "C" fn(cx: *mut c_void) -> u64,
    pub core_id: unsafe extern "C" fn(cx: *mut c_void) -> u32,
    /// Appends one record (a line of JSON, by convention) to the plugin's log.
    pub emit: unsafe extern "C" fn(cx: *mut c_void, record: *const u8, len: usize) -> i32,
    /// `level` is a [`LogLevel`](crate::codes::LogLevel) code.
    pub log: unsafe extern "C" fn(cx: *mut c_void, level: u8, msg: *const u8, len: usize),
}

/// What every plugin callback receives.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostCx {
    /// The host's context for this callback.
    pub ctx: *mut c_void,
    /// The host's functions.
    pub api: &'static HostApi,
}

/// A filter of a user-defined event: 1 raises the event, 0 does not.
pub type FfiFilter = unsafe extern "C" fn(cx: *mut HostCx, ev: *const FfiEvent, arg: u64) -> u8;

/// A user event's filter, or none (events raised explicitly with `raise`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct FfiFilterSlot {
    /// The filter.
    pub filter: Option<unsafe extern "C" fn(cx: *mut HostCx, ev: *const FfiEvent, arg: u64) -> u8>,
}

/// What a plugin may do while it is installed into an engine (before any event).
#[repr(C)]
#[derive(StableAbi)]
pub struct SetupCx {
    /// The host's context.
    pub ctx: *mut c_void,
    /// Defines a user event on `base` (an event number); returns its number or -errno.
    pub define_event:
        unsafe extern "C" fn(ctx: *mut c_void, base: u32, filter: FfiFilterSlot, arg: u64) -> i64,
    /// Subscribes this monitor to `(event, hook)` for all flows.
    pub subscribe: unsafe extern "C" fn(ctx: *mut c_void, event: u32, hook: u8) -> i32,
}

/// Status a plugin callback returns.
pub mod status {
    /// Done.
    pub const OK: i32 = 0;
    /// The callback panicked (the SDK caught it): the host disables the instance.
    pub const PANICKED: i32 = -1;
}

/// The plugin's callbacks; `this` is [`MonitorObj::this`].
#[repr(C)]
#[derive(StableAbi)]
#[allow(missing_docs)] // each is the SDK `Monitor` method of the same name
pub struct MonitorVTable {
    pub subscriptions: unsafe extern "C" fn(this: *mut c_void) -> FfiSubscriptions,
    pub setup: unsafe extern "C" fn(this: *mut c_void, setup: *mut SetupCx) -> i32,
    pub on_event:
        unsafe extern "C" fn(this: *mut c_void, cx: *mut HostCx, ev: *const FfiEvent) -> i32,
    /// `has_flow` 0: a core timer.
    pub on_timer: unsafe extern "C" fn(
        this: *mut c_void,
        cx: *mut HostCx,
        has_flow: u8,
        flow: u64,
        tag: u64,
    ) -> i32,
    pub shutdown: unsafe extern "C" fn(this: *mut c_void, cx: *mut HostCx) -> i32,
    /// Frees the instance (in the plugin, with the plugin's allocator).
    pub drop: unsafe extern "C" fn(this: *mut c_void),
}

/// One monitor instance living in the plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct MonitorObj {
    /// The instance, opaque to the host.
    pub this: *mut c_void,
    /// Its callbacks.
    pub vtable: &'static MonitorVTable,
}

/// What a monitor wants for every flow, API 2: [`FfiSubscriptions`], the events it takes in
/// batches, and its default stream filter.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct FfiSubscriptionsV2 {
    /// As in API 1.
    pub base: FfiSubscriptions,
    /// The subscribed (event, hook) bits (same encoding as `mask`) the plugin takes in
    /// batches ([`PluginExt::on_batch`]): delivered after the packet that caused them, up to
    /// the end of the engine's batch (SPEC §2.4). Bits not in `mask` mean nothing.
    pub batch: u64,
    /// A stream filter in tcpdump syntax for the flows this plugin sees (empty: every flow).
    /// `filter` in the plugin's `<name>.toml` replaces it.
    pub filter: RStr<'static>,
}

impl Default for FfiSubscriptionsV2 {
    fn default() -> Self {
        FfiSubscriptionsV2 {
            base: FfiSubscriptions::default(),
            batch: 0,
            filter: RStr::from_str(""),
        }
    }
}

/// One event of a batch: the event and what the host knew of its packet when it happened.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfiRecord {
    /// The event.
    pub ev: FfiEvent,
    /// When it happened (ns, the engine's clock).
    pub ts: u64,
    /// The stream offset of the packet's first payload byte (sender's direction); for events
    /// not driven by a packet, the contiguous end of the event's side.
    pub offset: u64,
    /// The packet's payload length (0 for events not driven by a packet).
    pub payload_len: u32,
    /// The packet's TCP flags (0 for events not driven by a packet).
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// A batch of events for [`PluginExt::on_batch`].
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiBatch {
    /// The records, in delivery order.
    pub records: *const FfiRecord,
    /// How many.
    pub len: usize,
    /// Set non-zero by the host while a callback runs when that callback changed what comes
    /// next (stopped monitoring, changed a subscription or a buffer, raised an event): the
    /// plugin must return right after that record.
    pub cut: u32,
    /// Written by the plugin: how many records it delivered (the one that cut included).
    pub done: usize,
}

/// The host's functions of API 2 (handed to the plugin once by [`PluginExt::bind`]).
#[repr(C)]
#[derive(StableAbi)]
pub struct HostExt {
    /// The API version the host speaks.
    pub api_version: u32,
    /// The zero-copy consuming read: lends up to `max` in-order bytes from this monitor's
    /// cursor as at most two slices (valid until the callback returns), moves the cursor past
    /// them and returns how many. `-ENODATA` with `*lost` set when bytes were lost before the
    /// cursor (the cursor moved past them, as with `peek`).
    pub read: unsafe extern "C" fn(
        cx: *mut c_void,
        flow: u64,
        side: u8,
        max: usize,
        out: *mut FfiSlices,
        lost: *mut u64,
    ) -> i64,
}

/// The symbol of an API 2 library's [`PluginExtHeader`] function (NUL-terminated).
pub const EXT_SYMBOL: &[u8] = b"flowpeek_plugin_api2\0";

/// What [`EXT_SYMBOL`] returns. Frozen: two pointers, whatever later versions add.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PluginExtHeader {
    /// `<PluginExt as StableAbi>::LAYOUT` as the library was built (an
    /// `abi_stable::type_layout::TypeLayout`); the host checks it against its own.
    pub layout: *const c_void,
    /// The library's table.
    pub ext: *const PluginExt,
}

/// The function at [`EXT_SYMBOL`].
pub type PluginExtFn = extern "C" fn() -> PluginExtHeader;

/// The API 2 entry points of a library (see the module doc). `this` is a
/// [`MonitorObj::this`] of this library.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginExt {
    /// The API version the library was built against (2).
    pub api_version: u32,
    /// The instance's subscriptions with batches and filter (replaces
    /// [`MonitorVTable::subscriptions`]).
    pub subscriptions_v2:
        unsafe extern "C" fn(this: *mut c_void, out: *mut FfiSubscriptionsV2) -> i32,
    /// Delivers a batch of events; returns a [`status`] and writes [`FfiBatch::done`].
    pub on_batch:
        unsafe extern "C" fn(this: *mut c_void, cx: *mut HostCx, batch: *mut FfiBatch) -> i32,
    /// The host's API 2 functions, handed over once when the library is loaded.
    pub bind: extern "C" fn(ext: &'static HostExt),
}

/// The root module a plugin exports (a prefix type: fields may only be appended). Unchanged
/// since API 1: see the module doc for where API 2's entry points are.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The [`API_VERSION`] the plugin was built against.
    pub api_version: u32,
    /// The plugin's name (its records go to `<name>.jsonl`).
    pub name: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Creates the instance for one core from its configuration (the text of `<name>.toml`,
    /// or empty).
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(core: u32, config: RStr<'_>) -> RResult<MonitorObj, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "flowpeek_plugin";
    const NAME: &'static str = "flowpeek_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
