//! C plugins: mOS 0.3's monitoring API (`plugin-api/c/include/mos_api.h`) on the engine.
//!
//! A C monitor exports `mos_plugin_init` (and optionally `mos_plugin_exit` and
//! `mos_plugin_version`); the header's inline wrappers call the table [`MOS_API`], which the
//! host stores in the library's `flowpeek_mos_host` after loading it. Each core's instance is
//! wrapped in a [`MonitorObj`] whose callbacks are the functions here, so a C plugin goes
//! through the same slot as a Rust one: generations, hot reload, draining, the time budget,
//! the statistics and the record sink are shared code.
//!
//! Owns: the mapping of mOS's sockets, event bits, hooks, callbacks, user events, timers and
//! socket options onto the engine's handles, events and [`HostApi`] calls (SPEC §2.3, §4).
//! Must not: hand the plugin anything that outlives its callback, or dereference an `mctx`
//! it did not check against the running callback's.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

use abi_stable::library::RawLibrary;
use flowpeek_plugin_api::abi::{
    FfiAddr, FfiAddrs, FfiBufferInfo, FfiEvent, FfiFilterSlot, FfiFlowTimes, FfiFragment,
    FfiLastPacket, FfiSubscriptions, HostApi, HostCx, MonitorObj, MonitorVTable, SetupCx,
};
use flowpeek_plugin_api::codes::{
    BuiltinEvent, Errno, Hook, BUFFER_DEFAULT, BUFFER_OFF, FAMILY_V6, SIDE_BOTH, USER_EVENT_BASE,
};
use flowpeek_plugin_api::records;

use super::load::LoadError;
use crate::filter::StreamFilter;

/// The version of the host table; the header's `FLOWPEEK_MOS_ABI`.
pub const MOS_ABI: u32 = 1;

/// The exported symbol that makes a library a C plugin.
pub const INIT_SYMBOL: &str = "mos_plugin_init";

// mOS's numbers (mos_api.h).
const MOS_NULL: c_int = 1 << 29;
const MOS_HK_RCV: c_int = 1 << 30;
const MOS_HK_SND: c_int = i32::MIN;
const MOS_SOCK_MONITOR_STREAM: c_int = 3;
const MOS_SOCK_MONITOR_RAW: c_int = 7;
const SOL_MONSOCKET: c_int = 0xfffe;
const MOS_FRAGINFO_CLIBUF: c_int = 0x01;
const MOS_FRAGINFO_SVRBUF: c_int = 0x02;
const MOS_INFO_CLIBUF: c_int = 0x03;
const MOS_INFO_SVRBUF: c_int = 0x04;
const MOS_TCP_STATE_CLI: c_int = 0x05;
const MOS_TCP_STATE_SVR: c_int = 0x06;
const MOS_TIMESTAMP: c_int = 0x07;
const MOS_CLIBUF: c_int = 0x09;
const MOS_SVRBUF: c_int = 0x0a;
const MOS_STOP_MON: c_int = 0x0c;
const MOS_CLIOVERLAP: c_int = 0x0f;
const MOS_SVROVERLAP: c_int = 0x10;
/// User-defined event `k` is bit `UDE_SHIFT + k` of `event_t`.
const UDE_SHIFT: u32 = 32;
const MAX_UDE: usize = 32;
/// How many freed flow sockets wait before their ids are reused.
const REUSE_AFTER: usize = 1024;

/// The built-in events: (mOS bit, engine event); the hooks mOS accepts for each are
/// `BuiltinEvent::hooks`.
const BUILTIN: [(u64, BuiltinEvent); 9] = [
    (1 << 0, BuiltinEvent::PktIn),
    (1 << 2, BuiltinEvent::ConnStart),
    (1 << 4, BuiltinEvent::NewData),
    (1 << 5, BuiltinEvent::Error),
    (1 << 6, BuiltinEvent::Timeout),
    (1 << 7, BuiltinEvent::TcpStateChange),
    (1 << 8, BuiltinEvent::Orphan),
    (1 << 9, BuiltinEvent::Rexmit),
    (1 << 10, BuiltinEvent::ConnEnd),
];

fn builtin_of_bit(bit: u64) -> Option<(BuiltinEvent, &'static [Hook])> {
    BUILTIN
        .iter()
        .find(|b| b.0 == bit)
        .map(|b| (b.1, b.1.hooks()))
}

fn bit_of_builtin(e: BuiltinEvent) -> u64 {
    BUILTIN.iter().find(|b| b.1 == e).map_or(0, |b| b.0)
}

fn hook_of(h: c_int) -> Option<Hook> {
    match h {
        MOS_HK_SND => Some(Hook::Snd),
        MOS_HK_RCV => Some(Hook::Rcv),
        MOS_NULL => Some(Hook::None),
        _ => None,
    }
}

type InitFn = unsafe extern "C" fn(*mut Ctx, *const c_char) -> c_int;
type ExitFn = unsafe extern "C" fn(*mut Ctx);
type Callback = unsafe extern "C" fn(*mut Ctx, c_int, c_int, u64, *mut FilterArg);
type FilterFn = unsafe extern "C" fn(*mut Ctx, c_int, c_int, u64, *mut FilterArg) -> bool;

/// mOS's `struct filter_arg` (only passed through).
#[repr(C)]
pub struct FilterArg {
    arg: *mut c_void,
    len: usize,
}

/// mOS's `struct mtcp_context` (`cpu`), followed by the host's instance pointer, which the
/// plugin never sees.
#[repr(C)]
pub struct Ctx {
    cpu: c_int,
    inst: *mut Instance,
}

/// A loaded C plugin: its entry points, name and version.
pub struct CLib {
    init: InitFn,
    exit: Option<ExitFn>,
    name: String,
    version: String,
}

impl CLib {
    /// The plugin's name: the file name without `lib` and `.so`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `mos_plugin_version`, or `"c"`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The plugin name of a C library file: its file name without a leading `lib` and `.so`.
pub fn name_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.strip_prefix("lib") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => stem,
    }
}

/// Opens the C plugin in `raw` (which exports [`INIT_SYMBOL`]): checks the header's ABI
/// version, stores the host table in it, and reads its entry points. `path` names the file
/// in messages.
pub(crate) fn open(path: &Path, raw: &'static RawLibrary) -> Result<CLib, LoadError> {
    let bad = |detail: String| LoadError::CPlugin {
        path: path.into(),
        detail,
    };
    // SAFETY: the symbol is the C function `int mos_plugin_init(mctx_t, const char *)` that
    // mos_api.h documents; its address is only taken here.
    let init = unsafe { raw.get::<InitFn>(b"mos_plugin_init\0") }
        .map_err(|_| bad("it exports no mos_plugin_init".into()))?;
    let init: InitFn = *init;
    // SAFETY: optional symbols of the documented types; absence is an error we handle.
    let exit = unsafe { raw.get::<ExitFn>(b"mos_plugin_exit\0") }
        .ok()
        .map(|s| *s);
    // SAFETY: data symbols that mos_api.h defines: a `uint32_t` and a pointer to the table.
    let abi = unsafe { raw.get::<*const u32>(b"flowpeek_mos_abi\0") }.map_err(|_| {
        bad(
            "it was not built with mos_api.h (no flowpeek_mos_abi symbol); #include <mos_api.h>"
                .into(),
        )
    })?;
    // SAFETY: as above.
    let table = unsafe { raw.get::<*mut *const MosApi>(b"flowpeek_mos_host\0") }.map_err(|_| {
        bad(
            "it was not built with mos_api.h (no flowpeek_mos_host symbol); #include <mos_api.h>"
                .into(),
        )
    })?;
    let abi_ptr: *const u32 = *abi;
    let table_ptr: *mut *const MosApi = *table;
    if abi_ptr.is_null() || table_ptr.is_null() {
        return Err(bad("its mos_api.h symbols are null".into()));
    }
    // SAFETY: `abi_ptr` points at the library's `const uint32_t flowpeek_mos_abi`.
    let found = unsafe { abi_ptr.read_unaligned() };
    if found != MOS_ABI {
        return Err(bad(format!(
            "it was built with a mos_api.h of table version {found}; this host has version {MOS_ABI}: rebuild it with this flowpeek's plugin-api/c/include"
        )));
    }
    // SAFETY: `table_ptr` is the library's writable `flowpeek_mos_host` pointer; nothing in
    // the library runs before this store (it exports no constructors the header asks for).
    unsafe { table_ptr.write(&MOS_API) };
    // SAFETY: an optional `const char mos_plugin_version[]`, NUL-terminated by the compiler.
    let version = unsafe { raw.get::<*const c_char>(b"mos_plugin_version\0") }
        .ok()
        .map(|s| *s)
        .filter(|p| !p.is_null())
        .map(|p| {
            // SAFETY: as above; read up to its NUL (at most 64 bytes are kept).
            let v = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            v.chars().take(64).collect::<String>()
        })
        .unwrap_or_else(|| "c".into());
    Ok(CLib {
        init,
        exit,
        name: name_of(path),
        version,
    })
}

thread_local! {
    /// The context whose callback (or `mos_plugin_exit`) runs on this thread.
    static ACTIVE: Cell<*mut Ctx> = const { Cell::new(std::ptr::null_mut()) };
    /// The context whose `mos_plugin_init` runs on this thread.
    static INIT: Cell<*mut Ctx> = const { Cell::new(std::ptr::null_mut()) };
}

/// Marks `ctx` as running a callback until dropped (callbacks nest: filters).
struct Active(*mut Ctx);

impl Active {
    fn enter(ctx: *mut Ctx) -> Active {
        Active(ACTIVE.with(|a| a.replace(ctx)))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// A leaked record that a user event's engine filter points to: the instance may go away
/// (a retired generation), the engine's event definition stays; then the filter says no.
struct UdeTarget {
    inst: AtomicPtr<Instance>,
    index: usize,
}

struct Ude {
    /// The base event's mOS bit.
    base: u64,
    filter: Option<FilterFn>,
    arg: *mut FilterArg,
    /// The engine's event number, once defined in `setup`.
    code: u32,
    target: &'static UdeTarget,
}

enum Sock {
    Free,
    Listen { raw: bool, uctx: *mut c_void },
    Flow(Box<FlowSock>),
}

struct FlowSock {
    flow: u64,
    uctx: *mut c_void,
    /// `ConnEnd` at `Snd` seen (one per side): at 2 the socket is freed.
    ends: u8,
    /// Per-flow registrations: (bit, hook, callback or none: unregistered).
    overrides: Vec<(u64, Hook, Option<Callback>)>,
}

struct Reg {
    raw: bool,
    bit: u64,
    hook: Hook,
    cb: Callback,
}

/// One core's instance of a C plugin.
pub struct Instance {
    ctx: Box<Ctx>,
    exit: Option<ExitFn>,
    exited: bool,
    socks: Vec<Sock>,
    free: VecDeque<usize>,
    flows: HashMap<u64, usize>,
    stream: Option<usize>,
    raw: Option<usize>,
    regs: Vec<Reg>,
    udes: Vec<Ude>,
    filter: Option<String>,
    buffers: [u32; 2],
    /// The engine mask handed over at install.
    installed: u64,
    timers: Vec<Option<(c_int, Callback)>>,
    pending_timers: Vec<(u64, u64)>,
    host: *mut HostCx,
    /// The flow and side of the running callback (for `mtcp_raise_event`).
    current: Option<(u64, u8)>,
}

/// Makes one core's instance: runs `mos_plugin_init` with the configuration text (or NULL
/// when it is empty). Returns the object for the slot and the filter the plugin bound.
pub(crate) fn instantiate(
    lib: &CLib,
    core: u32,
    config: &str,
) -> Result<(MonitorObj, Option<String>), String> {
    let config_c = if config.is_empty() {
        None
    } else {
        Some(CString::new(config).map_err(|_| "its configuration holds a NUL byte".to_string())?)
    };
    let mut inst = Box::new(Instance {
        ctx: Box::new(Ctx {
            cpu: c_int::try_from(core).unwrap_or(c_int::MAX),
            inst: std::ptr::null_mut(),
        }),
        exit: lib.exit,
        exited: false,
        socks: Vec::new(),
        free: VecDeque::new(),
        flows: HashMap::with_capacity(1024),
        stream: None,
        raw: None,
        regs: Vec::new(),
        udes: Vec::new(),
        filter: None,
        buffers: [BUFFER_DEFAULT, BUFFER_DEFAULT],
        installed: 0,
        timers: Vec::new(),
        pending_timers: Vec::new(),
        host: std::ptr::null_mut(),
        current: None,
    });
    let ip: *mut Instance = &mut *inst;
    inst.ctx.inst = ip;
    let ctx: *mut Ctx = &mut *inst.ctx;
    let prev = INIT.with(|i| i.replace(ctx));
    let cfg = config_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: the plugin's documented entry point, with a live context and a NUL-terminated
    // configuration (or NULL) valid for the call.
    let r = unsafe { (lib.init)(ctx, cfg) };
    INIT.with(|i| i.set(prev));
    let obj = MonitorObj {
        this: Box::into_raw(inst).cast(),
        vtable: &VTABLE,
    };
    if r != 0 {
        // A refused init gets no mos_plugin_exit.
        // SAFETY: made just above; dropped once.
        unsafe {
            (*obj.this.cast::<Instance>()).exited = true;
            (VTABLE.drop)(obj.this);
        }
        return Err(format!(
            "mos_plugin_init returned {r}: the plugin refused to load"
        ));
    }
    // SAFETY: `obj.this` is the instance made above.
    let filter = unsafe { &*obj.this.cast::<Instance>() }.filter.clone();
    Ok((obj, filter))
}

static VTABLE: MonitorVTable = MonitorVTable {
    subscriptions: vt_subscriptions,
    setup: vt_setup,
    on_event: vt_on_event,
    on_timer: vt_on_timer,
    shutdown: vt_shutdown,
    drop: vt_drop,
};

/// The instance behind `this`.
///
/// # Safety
/// `this` is an instance made by [`instantiate`] and not dropped.
unsafe fn inst<'a>(this: *mut c_void) -> &'a mut Instance {
    // SAFETY: the caller's contract.
    unsafe { &mut *this.cast::<Instance>() }
}

unsafe extern "C" fn vt_subscriptions(this: *mut c_void) -> FfiSubscriptions {
    // SAFETY: called by the slot on a live instance.
    let i = unsafe { inst(this) };
    let mut mask =
        BuiltinEvent::ConnEnd.mask_bit(Hook::Snd) | BuiltinEvent::ConnEnd.mask_bit(Hook::Rcv);
    for r in &i.regs {
        if r.raw {
            mask |= BuiltinEvent::PktIn.mask_bit(Hook::Snd);
        } else if let Some((e, _)) = builtin_of_bit(r.bit) {
            mask |= e.mask_bit(r.hook);
        }
    }
    i.installed = mask;
    let buffers = if i.stream.is_some() {
        i.buffers
    } else {
        [BUFFER_OFF, BUFFER_OFF]
    };
    FfiSubscriptions { mask, buffers }
}

unsafe extern "C" fn vt_setup(this: *mut c_void, setup: *mut SetupCx) -> i32 {
    // SAFETY: called by the slot on a live instance with a live SetupCx.
    let (i, s) = unsafe { (inst(this), &mut *setup) };
    for k in 0..i.udes.len() {
        let base = i.udes[k].base;
        let base_code = match builtin_of_bit(base) {
            Some((e, _)) => e.code(),
            None => match ude_index(base) {
                Some(j) if j < k && i.udes[j].code != 0 => i.udes[j].code,
                _ => continue,
            },
        };
        let slot = FfiFilterSlot {
            filter: i.udes[k].filter.map(|_| ude_filter as _),
        };
        let target = i.udes[k].target as *const UdeTarget as u64;
        // SAFETY: the slot's SetupCx function with its own context.
        let code = unsafe { (s.define_event)(s.ctx, base_code, slot, target) };
        i.udes[k].code = u32::try_from(code).unwrap_or(0);
    }
    for r in &i.regs {
        if let Some(k) = ude_index(r.bit) {
            if let Some(u) = i.udes.get(k).filter(|u| u.code != 0) {
                // SAFETY: as above.
                unsafe { (s.subscribe)(s.ctx, u.code, r.hook.code()) };
            }
        }
    }
    0
}

fn ude_index(bit: u64) -> Option<usize> {
    if bit.count_ones() != 1 || bit.trailing_zeros() < UDE_SHIFT {
        return None;
    }
    Some((bit.trailing_zeros() - UDE_SHIFT) as usize)
}

impl Instance {
    fn api(&self) -> Option<(&'static HostApi, *mut c_void)> {
        if self.host.is_null() {
            return None;
        }
        // SAFETY: `host` is the HostCx of the running callback (set by the vtable functions
        // for the duration of the call).
        let h = unsafe { &*self.host };
        Some((h.api, h.ctx))
    }

    /// The socket of `flow`, made on its first event.
    fn sock_of(&mut self, flow: u64) -> usize {
        if let Some(&s) = self.flows.get(&flow) {
            return s;
        }
        let fs = Box::new(FlowSock {
            flow,
            uctx: std::ptr::null_mut(),
            ends: 0,
            overrides: Vec::new(),
        });
        // Freed ids wait in line before reuse, so that a stale id gives EBADF for a while
        // instead of naming another flow.
        let reuse = if self.free.len() > REUSE_AFTER {
            self.free.pop_front()
        } else {
            None
        };
        let id = match reuse {
            Some(id) => {
                self.socks[id] = Sock::Flow(fs);
                id
            }
            None => {
                self.socks.push(Sock::Flow(fs));
                self.socks.len() - 1
            }
        };
        self.flows.insert(flow, id);
        // Listener registrations made after install reach new flows through per-flow
        // subscriptions.
        let extra: Vec<(BuiltinEvent, Hook)> = self
            .regs
            .iter()
            .filter(|r| !r.raw)
            .filter_map(|r| builtin_of_bit(r.bit).map(|(e, _)| (e, r.hook)))
            .filter(|(e, h)| self.installed & e.mask_bit(*h) == 0)
            .collect();
        if let Some((api, ctx)) = self.api() {
            for (e, h) in extra {
                // SAFETY: the running callback's context.
                unsafe { (api.subscribe)(ctx, flow, e.code(), h.code()) };
            }
        }
        id
    }

    fn release(&mut self, id: usize) {
        if let Some(Sock::Flow(f)) = self.socks.get(id) {
            self.flows.remove(&f.flow);
            self.socks[id] = Sock::Free;
            self.free.push_back(id);
        }
    }

    /// The callback for (`bit`, `hook`) on flow socket `id` (its own registration first).
    fn callback(&self, id: Option<usize>, bit: u64, hook: Hook) -> Option<Callback> {
        if let Some(Sock::Flow(f)) = id.and_then(|i| self.socks.get(i)) {
            if let Some(o) = f.overrides.iter().find(|o| o.0 == bit && o.1 == hook) {
                return o.2;
            }
        }
        self.regs
            .iter()
            .find(|r| !r.raw && r.bit & bit != 0 && r.hook == hook)
            .map(|r| r.cb)
    }

    fn arm_pending(&mut self) {
        if self.pending_timers.is_empty() {
            return;
        }
        let Some((api, ctx)) = self.api() else { return };
        for (after, tag) in std::mem::take(&mut self.pending_timers) {
            // SAFETY: the running callback's context.
            unsafe { (api.set_core_timer)(ctx, after, tag) };
        }
    }
}

/// Calls a plugin callback with `this`'s context marked running.
///
/// # Safety
/// `i` is a live instance; no reference into it is used across the call.
unsafe fn call_cb(
    i: *mut Instance,
    cb: Callback,
    sock: c_int,
    side: c_int,
    bit: u64,
    arg: *mut FilterArg,
) {
    // SAFETY: the caller's contract.
    let ctx: *mut Ctx = unsafe { &mut *(*i).ctx };
    let _active = Active::enter(ctx);
    // SAFETY: the plugin's callback with its live context, valid for the call.
    unsafe { cb(ctx, sock, side, bit, arg) };
}

unsafe extern "C" fn vt_on_event(this: *mut c_void, host: *mut HostCx, ev: *const FfiEvent) -> i32 {
    let ip = this.cast::<Instance>();
    // SAFETY: the slot calls with a live instance, HostCx and event.
    let ev = unsafe { *ev };
    let (bit, arg, id, cb, raw_cb, prev_host, prev_cur) = {
        // SAFETY: as above; the reference ends before any plugin code runs.
        let i = unsafe { &mut *ip };
        let prev_host = std::mem::replace(&mut i.host, host);
        let prev_cur = i.current.replace((ev.flow, ev.side));
        i.arm_pending();
        let hook = Hook::try_from(ev.hook).unwrap_or(Hook::None);
        let (bit, arg) = if ev.kind >= USER_EVENT_BASE {
            match i.udes.iter().position(|u| u.code == ev.kind) {
                Some(k) => (1u64 << (UDE_SHIFT + k as u32), i.udes[k].arg),
                None => (0, std::ptr::null_mut()),
            }
        } else {
            let b = BuiltinEvent::try_from(ev.kind).map_or(0, bit_of_builtin);
            (b, std::ptr::null_mut())
        };
        let (id, cb, raw_cb) = if ev.kind == BuiltinEvent::Orphan.code() {
            (i.stream, i.callback(None, bit, hook), None)
        } else {
            let id = i.sock_of(ev.flow);
            let raw_cb = if ev.kind == BuiltinEvent::PktIn.code() && hook == Hook::Snd {
                i.regs.iter().find(|r| r.raw).map(|r| r.cb)
            } else {
                None
            };
            (Some(id), i.callback(Some(id), bit, hook), raw_cb)
        };
        (bit, arg, id, cb, raw_cb, prev_host, prev_cur)
    };
    let side = c_int::from(ev.side);
    let sock = id.map_or(-1, |s| s as c_int);
    if let Some(cb) = cb {
        // SAFETY: no reference into the instance is held across the call.
        unsafe { call_cb(ip, cb, sock, side, bit, arg) };
    }
    if let Some(cb) = raw_cb {
        // SAFETY: as above.
        let raw = unsafe { (*ip).raw }.map_or(-1, |r| r as c_int);
        // SAFETY: as above.
        unsafe { call_cb(ip, cb, raw, side, bit, std::ptr::null_mut()) };
    }
    // SAFETY: the plugin's code has returned.
    let i = unsafe { &mut *ip };
    if ev.kind == BuiltinEvent::ConnEnd.code() && ev.hook == Hook::Snd.code() {
        if let Some(id) = id {
            let done = match i.socks.get_mut(id) {
                Some(Sock::Flow(f)) => {
                    f.ends += 1;
                    f.ends >= 2
                }
                _ => false,
            };
            if done {
                i.release(id);
            }
        }
    }
    i.host = prev_host;
    i.current = prev_cur;
    0
}

unsafe extern "C" fn vt_on_timer(
    this: *mut c_void,
    host: *mut HostCx,
    has_flow: u8,
    _flow: u64,
    tag: u64,
) -> i32 {
    let ip = this.cast::<Instance>();
    let (found, prev) = {
        // SAFETY: the slot calls with a live instance; the reference ends before plugin code.
        let i = unsafe { &mut *ip };
        let prev = std::mem::replace(&mut i.host, host);
        i.arm_pending();
        let found = if has_flow == 0 {
            usize::try_from(tag)
                .ok()
                .and_then(|t| i.timers.get_mut(t))
                .and_then(Option::take)
        } else {
            None
        };
        (found, prev)
    };
    if let Some((id, cb)) = found {
        // SAFETY: as in `vt_on_event`.
        unsafe { call_cb(ip, cb, id, 0, 0, std::ptr::null_mut()) };
    }
    // SAFETY: the plugin's code has returned.
    unsafe { (*ip).host = prev };
    0
}

unsafe extern "C" fn vt_shutdown(this: *mut c_void, host: *mut HostCx) -> i32 {
    let ip = this.cast::<Instance>();
    // SAFETY: a live instance; the references end before plugin code runs.
    let (exit, ctx, prev) = unsafe {
        let i = &mut *ip;
        let prev = std::mem::replace(&mut i.host, host);
        let exit = if i.exited { None } else { i.exit };
        i.exited = true;
        (exit, &mut *i.ctx as *mut Ctx, prev)
    };
    if let Some(exit) = exit {
        let _active = Active::enter(ctx);
        // SAFETY: the plugin's documented exit function with its live context.
        unsafe { exit(ctx) };
    }
    // SAFETY: the plugin's code has returned.
    unsafe { (*ip).host = prev };
    0
}

unsafe extern "C" fn vt_drop(this: *mut c_void) {
    // SAFETY: the slot drops each instance once; it was made by `Box::into_raw`.
    let mut b = unsafe { Box::from_raw(this.cast::<Instance>()) };
    if !b.exited {
        b.exited = true;
        if let Some(exit) = b.exit {
            // No callback runs: API calls from here fail with EACCES.
            // SAFETY: the plugin's exit function with its live context.
            unsafe { exit(&mut *b.ctx) };
        }
    }
    for u in &b.udes {
        u.target.inst.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// The engine filter of a C user event: runs the plugin's `filter_t`.
unsafe extern "C" fn ude_filter(host: *mut HostCx, ev: *const FfiEvent, arg: u64) -> u8 {
    // SAFETY: `arg` is the leaked UdeTarget given at definition.
    let target = unsafe { &*(arg as usize as *const UdeTarget) };
    let ip = target.inst.load(Ordering::Acquire);
    if ip.is_null() {
        return 0;
    }
    // SAFETY: the engine passes a live event; the instance is live (its drop clears `inst`).
    let ev = unsafe { *ev };
    let (f, farg, id, bit, prev, prev_cur) = {
        // SAFETY: as above; the reference ends before plugin code runs.
        let i = unsafe { &mut *ip };
        let Some(u) = i.udes.get(target.index) else {
            return 0;
        };
        let Some(f) = u.filter else { return 0 };
        let farg = u.arg;
        let bit = match ev.kind {
            k if k >= USER_EVENT_BASE => i
                .udes
                .iter()
                .position(|u| u.code == k)
                .map_or(0, |k| 1u64 << (UDE_SHIFT + k as u32)),
            k => BuiltinEvent::try_from(k).map_or(0, bit_of_builtin),
        };
        let prev = std::mem::replace(&mut i.host, host);
        let prev_cur = i.current.replace((ev.flow, ev.side));
        let id = if ev.kind == BuiltinEvent::Orphan.code() {
            i.stream.map_or(-1, |s| s as c_int)
        } else {
            i.sock_of(ev.flow) as c_int
        };
        (f, farg, id, bit, prev, prev_cur)
    };
    // SAFETY: as in `call_cb`.
    let ctx: *mut Ctx = unsafe { &mut *(*ip).ctx };
    let yes = {
        let _active = Active::enter(ctx);
        // SAFETY: the plugin's filter with its live context.
        unsafe { f(ctx, id, c_int::from(ev.side), bit, farg) }
    };
    // SAFETY: the plugin's code has returned.
    unsafe {
        (*ip).host = prev;
        (*ip).current = prev_cur;
    }
    u8::from(yes)
}

// ---------------------------------------------------------------------------------------
// The host table
// ---------------------------------------------------------------------------------------

/// The header's `struct flowpeek_mos_api`.
#[repr(C)]
pub struct MosApi {
    abi: u32,
    size: u32,
    socket: unsafe extern "C" fn(*mut Ctx, c_int, c_int, c_int) -> c_int,
    bind_monitor_filter: unsafe extern "C" fn(*mut Ctx, c_int, *const MonitorFilter) -> c_int,
    register_callback: unsafe extern "C" fn(*mut Ctx, c_int, u64, c_int, Option<Callback>) -> c_int,
    define_event: unsafe extern "C" fn(u64, Option<FilterFn>, *mut FilterArg, *mut c_int) -> u64,
    alloc_event: unsafe extern "C" fn(u64, *mut c_int) -> u64,
    raise_event: unsafe extern "C" fn(*mut Ctx, u64) -> c_int,
    peek: unsafe extern "C" fn(*mut Ctx, c_int, c_int, *mut c_char, usize, *mut u64) -> isize,
    ppeek: unsafe extern "C" fn(*mut Ctx, c_int, c_int, *mut c_char, usize, u64) -> isize,
    getsockopt: unsafe extern "C" fn(
        *mut Ctx,
        c_int,
        c_int,
        c_int,
        *mut c_void,
        *mut libc::socklen_t,
    ) -> c_int,
    setsockopt: unsafe extern "C" fn(
        *mut Ctx,
        c_int,
        c_int,
        c_int,
        *const c_void,
        libc::socklen_t,
    ) -> c_int,
    getpeername: unsafe extern "C" fn(
        *mut Ctx,
        c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
        c_int,
    ) -> c_int,
    getlastpkt: unsafe extern "C" fn(*mut Ctx, c_int, c_int, *mut PktInfo) -> c_int,
    get_uctx: unsafe extern "C" fn(*mut Ctx, c_int, *mut c_int) -> *mut c_void,
    set_uctx: unsafe extern "C" fn(*mut Ctx, c_int, *mut c_void) -> c_int,
    settimer:
        unsafe extern "C" fn(*mut Ctx, c_int, *const libc::timeval, Option<Callback>) -> c_int,
    now_ns: unsafe extern "C" fn(*mut Ctx, *mut c_int) -> u64,
    emit: unsafe extern "C" fn(*mut Ctx, *const c_char, usize) -> c_int,
    /// Appended (a plugin's header checks `size` before calling it).
    flow_info: unsafe extern "C" fn(*mut Ctx, c_int, *mut FlowInfo) -> c_int,
}

/// The header's `struct flowpeek_flow_info`.
#[repr(C)]
pub struct FlowInfo {
    uid: u64,
    start_ns: u64,
    last_ns: u64,
    serial: u64,
}

/// mOS's `union monitor_filter` (the stream form; the raw form is its first field).
#[repr(C)]
pub struct MonitorFilter {
    first: *const c_char,
    orphan: *const c_char,
}

/// The header's `struct pkt_info`.
#[repr(C)]
pub struct PktInfo {
    cur_ts: u32,
    in_ifidx: i8,
    eth_len: u16,
    ip_len: u16,
    offset: u64,
    payloadlen: u16,
    seq: u32,
    ack_seq: u32,
    window: u16,
    ethh: *mut c_void,
    iph: *mut c_void,
    tcph: *mut c_void,
    payload: *mut u8,
    ts_ns: u64,
    tcp_flags: u8,
    sender: i8,
}

/// The header's `struct tcp_buf_info`.
#[repr(C)]
struct TcpBufInfo {
    init_seq: u32,
    last_byte_read: u32,
    next_byte_expected: u32,
    last_byte_received: u32,
    head_off: u64,
    read_off: u64,
    contig_off: u64,
    last_off: u64,
    missing: u64,
    capacity: u32,
    reserved: u32,
}

/// The header's `struct tcp_ring_fragment`.
#[repr(C)]
struct RingFragment {
    offset: u64,
    len: u32,
}

/// The table every C plugin's `flowpeek_mos_host` points to.
pub static MOS_API: MosApi = MosApi {
    abi: MOS_ABI,
    size: std::mem::size_of::<MosApi>() as u32,
    socket: h_socket,
    bind_monitor_filter: h_bind_monitor_filter,
    register_callback: h_register_callback,
    define_event: h_define_event,
    alloc_event: h_alloc_event,
    raise_event: h_raise_event,
    peek: h_peek,
    ppeek: h_ppeek,
    getsockopt: h_getsockopt,
    setsockopt: h_setsockopt,
    getpeername: h_getpeername,
    getlastpkt: h_getlastpkt,
    get_uctx: h_get_uctx,
    set_uctx: h_set_uctx,
    settimer: h_settimer,
    now_ns: h_now_ns,
    emit: h_emit,
    flow_info: h_flow_info,
};

const fn neg(e: Errno) -> c_int {
    -e.code()
}
const EACCES: c_int = neg(Errno::Acces);
const EBADF: c_int = neg(Errno::Badf);
const EINVAL: c_int = neg(Errno::Inval);
const ESOCKTNOSUPPORT: c_int = neg(Errno::SocktNoSupport);
const ENOSPC: c_int = neg(Errno::NoSpc);
const EEXIST: c_int = -libc::EEXIST;
const ENOTSOCK: c_int = -libc::ENOTSOCK;
const ENOPROTOOPT: c_int = -libc::ENOPROTOOPT;

/// The instance of `mctx` while its callback runs on this thread, with the running
/// callback's host functions and context.
fn running<'a>(mctx: *mut Ctx) -> Result<(&'a mut Instance, &'static HostApi, *mut c_void), c_int> {
    if mctx.is_null() || ACTIVE.with(|a| a.get()) != mctx {
        return Err(EACCES);
    }
    // SAFETY: `mctx` is the context of the callback running on this thread (checked above),
    // so it and its instance are live; the plugin holds no other reference into them.
    let i = unsafe { &mut *(*mctx).inst };
    let (api, ctx) = i.api().ok_or(EACCES)?;
    Ok((i, api, ctx))
}

/// The instance of `mctx` while its `mos_plugin_init` runs on this thread.
fn initialising<'a>(mctx: *mut Ctx) -> Result<&'a mut Instance, c_int> {
    if mctx.is_null() || INIT.with(|a| a.get()) != mctx {
        return Err(EACCES);
    }
    // SAFETY: as in `running`, for the init call.
    Ok(unsafe { &mut *(*mctx).inst })
}

/// Either of the two.
fn any_phase<'a>(mctx: *mut Ctx) -> Result<&'a mut Instance, c_int> {
    match running(mctx) {
        Ok((i, _, _)) => Ok(i),
        Err(_) => initialising(mctx),
    }
}

fn status(r: Result<c_int, c_int>) -> c_int {
    r.unwrap_or_else(|e| e)
}

/// The flow handle of socket `sock`.
fn flow_of(i: &Instance, sock: c_int) -> Result<u64, c_int> {
    let Ok(id) = usize::try_from(sock) else {
        return Err(EBADF);
    };
    match i.socks.get(id) {
        Some(Sock::Flow(f)) => Ok(f.flow),
        Some(Sock::Listen { .. }) => Err(ESOCKTNOSUPPORT),
        _ => Err(EBADF),
    }
}

fn side_code(side: c_int) -> Result<u8, c_int> {
    match side {
        0 | 1 => Ok(side as u8),
        _ => Err(EINVAL),
    }
}

unsafe extern "C" fn h_socket(mctx: *mut Ctx, _domain: c_int, ty: c_int, _proto: c_int) -> c_int {
    status((|| {
        let i = initialising(mctx)?;
        let raw = match ty {
            MOS_SOCK_MONITOR_STREAM => false,
            MOS_SOCK_MONITOR_RAW => true,
            _ => return Err(EINVAL),
        };
        let slot = if raw { &mut i.raw } else { &mut i.stream };
        if slot.is_some() {
            return Err(EEXIST);
        }
        let id = i.socks.len();
        *slot = Some(id);
        i.socks.push(Sock::Listen {
            raw,
            uctx: std::ptr::null_mut(),
        });
        Ok(id as c_int)
    })())
}

/// A filter string from the plugin, checked with libpcap.
fn filter_text(p: *const c_char) -> Result<Option<String>, c_int> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the plugin passes a NUL-terminated string (mOS's contract).
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    if s.trim().is_empty() {
        return Ok(None);
    }
    match StreamFilter::new(&s) {
        Ok(_) => Ok(Some(s)),
        Err(e) => {
            eprintln!("flowpeek: C plugin: mtcp_bind_monitor_filter: {e}");
            Err(EINVAL)
        }
    }
}

unsafe extern "C" fn h_bind_monitor_filter(
    mctx: *mut Ctx,
    sock: c_int,
    ft: *const MonitorFilter,
) -> c_int {
    status((|| {
        let i = initialising(mctx)?;
        let id = usize::try_from(sock).map_err(|_| EBADF)?;
        let raw = match i.socks.get(id) {
            Some(Sock::Listen { raw, .. }) => *raw,
            Some(Sock::Flow(_)) => return Err(EINVAL),
            _ => return Err(EBADF),
        };
        if ft.is_null() {
            i.filter = None;
            return Ok(0);
        }
        // SAFETY: a non-null `ft` points at the plugin's union monitor_filter.
        let f = unsafe { &*ft };
        let first = filter_text(f.first)?;
        if !raw {
            // Checked, not applied: see mos_api.h.
            filter_text(f.orphan)?;
        }
        i.filter = first;
        Ok(0)
    })())
}

unsafe extern "C" fn h_register_callback(
    mctx: *mut Ctx,
    sock: c_int,
    events: u64,
    hook: c_int,
    cb: Option<Callback>,
) -> c_int {
    status((|| {
        let i = any_phase(mctx)?;
        let hook = hook_of(hook).ok_or(EINVAL)?;
        if events == 0 {
            return Err(EINVAL);
        }
        let id = usize::try_from(sock).map_err(|_| EBADF)?;
        let raw = match i.socks.get(id) {
            Some(Sock::Listen { raw, .. }) => Some(*raw),
            Some(Sock::Flow(_)) => None,
            _ => return Err(EBADF),
        };
        // Every bit must be an event that takes this hook.
        let mut bits = Vec::new();
        let mut rest = events;
        while rest != 0 {
            let bit = rest & rest.wrapping_neg();
            rest &= !bit;
            let ok = if raw == Some(true) {
                bit == bit_of_builtin(BuiltinEvent::PktIn) && hook == Hook::None
            } else if let Some((_, hooks)) = builtin_of_bit(bit) {
                hooks.contains(&hook)
            } else if let Some(k) = ude_index(bit) {
                i.udes
                    .get(k)
                    .is_some_and(|u| ude_hooks(i, u.base).contains(&hook))
            } else {
                false
            };
            if !ok {
                return Err(EINVAL);
            }
            bits.push(bit);
        }
        match raw {
            Some(raw) => {
                for bit in bits {
                    let at = i
                        .regs
                        .iter()
                        .position(|r| r.raw == raw && r.bit == bit && r.hook == hook);
                    match (at, cb) {
                        (Some(_), Some(_)) => return Err(EINVAL),
                        (None, Some(cb)) => i.regs.push(Reg { raw, bit, hook, cb }),
                        (Some(k), None) => {
                            i.regs.remove(k);
                        }
                        (None, None) => return Err(EINVAL),
                    }
                }
            }
            None => {
                // A flow's socket: that flow only, inside a callback.
                let (i, api, ctx) = running(mctx)?;
                let Some(Sock::Flow(f)) = i.socks.get(id) else {
                    return Err(EBADF);
                };
                let flow = f.flow;
                for bit in bits {
                    let global = i.callback(None, bit, hook);
                    let Some(Sock::Flow(f)) = i.socks.get_mut(id) else {
                        return Err(EBADF);
                    };
                    let current = match f.overrides.iter().find(|o| o.0 == bit && o.1 == hook) {
                        Some(o) => o.2,
                        None => global,
                    };
                    if current.is_some() && cb.is_some() {
                        return Err(EINVAL);
                    }
                    f.overrides.retain(|o| !(o.0 == bit && o.1 == hook));
                    f.overrides.push((bit, hook, cb));
                    if let (Some(_), Some((e, _))) = (cb, builtin_of_bit(bit)) {
                        // SAFETY: the running callback's context.
                        unsafe { (api.subscribe)(ctx, flow, e.code(), hook.code()) };
                    }
                }
            }
        }
        Ok(0)
    })())
}

/// The hooks a user event takes: its root built-in event's.
fn ude_hooks(i: &Instance, mut base: u64) -> &'static [Hook] {
    for _ in 0..=MAX_UDE {
        if let Some((_, hooks)) = builtin_of_bit(base) {
            return hooks;
        }
        match ude_index(base).and_then(|k| i.udes.get(k)) {
            Some(u) => base = u.base,
            None => return &[],
        }
    }
    &[]
}

fn define(event: u64, filter: Option<FilterFn>, arg: *mut FilterArg, err: *mut c_int) -> u64 {
    let r = (|| {
        let ctx = INIT.with(|a| a.get());
        let i = initialising(ctx)?;
        if event.count_ones() != 1 {
            return Err(EINVAL);
        }
        let known =
            builtin_of_bit(event).is_some() || ude_index(event).is_some_and(|k| k < i.udes.len());
        if !known {
            return Err(EINVAL);
        }
        if let Some(k) = i.udes.iter().position(|u| {
            u.base == event
                && u.filter.map(|f| f as usize) == filter.map(|f| f as usize)
                && u.arg == arg
                && filter.is_some()
        }) {
            return Ok(1u64 << (UDE_SHIFT + k as u32));
        }
        if i.udes.len() >= MAX_UDE {
            return Err(ENOSPC);
        }
        let index = i.udes.len();
        let target: &'static UdeTarget = Box::leak(Box::new(UdeTarget {
            inst: AtomicPtr::new(i as *mut Instance),
            index,
        }));
        i.udes.push(Ude {
            base: event,
            filter,
            arg,
            code: 0,
            target,
        });
        Ok(1u64 << (UDE_SHIFT + index as u32))
    })();
    match r {
        Ok(bit) => bit,
        Err(e) => {
            if !err.is_null() {
                // SAFETY: the header passes a valid out-pointer.
                unsafe { *err = -e };
            }
            0
        }
    }
}

unsafe extern "C" fn h_define_event(
    event: u64,
    filter: Option<FilterFn>,
    arg: *mut FilterArg,
    err: *mut c_int,
) -> u64 {
    if filter.is_none() {
        if !err.is_null() {
            // SAFETY: as in `define`.
            unsafe { *err = libc::EINVAL };
        }
        return 0;
    }
    define(event, filter, arg, err)
}

unsafe extern "C" fn h_alloc_event(event: u64, err: *mut c_int) -> u64 {
    define(event, None, std::ptr::null_mut(), err)
}

unsafe extern "C" fn h_raise_event(mctx: *mut Ctx, event: u64) -> c_int {
    status((|| {
        let (i, api, ctx) = running(mctx)?;
        let (flow, side) = i.current.ok_or(EINVAL)?;
        let k = ude_index(event).ok_or(EINVAL)?;
        let u = i.udes.get(k).ok_or(EINVAL)?;
        if u.filter.is_some() || u.code == 0 {
            return Err(EINVAL);
        }
        // SAFETY: the running callback's context.
        let r = unsafe { (api.raise)(ctx, flow, side, u.code) };
        if r < 0 {
            Err(r)
        } else {
            Ok(0)
        }
    })())
}

unsafe extern "C" fn h_peek(
    mctx: *mut Ctx,
    sock: c_int,
    side: c_int,
    buf: *mut c_char,
    len: usize,
    lost: *mut u64,
) -> isize {
    let r = (|| {
        let (i, api, ctx) = running(mctx)?;
        let flow = flow_of(i, sock)?;
        let side = side_code(side)?;
        // SAFETY: the running callback's context; `buf`/`len` and `lost` are the plugin's
        // (checked by the host function).
        let n = unsafe { (api.peek)(ctx, flow, side, buf.cast(), len, lost) };
        Ok(n as isize)
    })();
    r.unwrap_or_else(|e: c_int| e as isize)
}

unsafe extern "C" fn h_ppeek(
    mctx: *mut Ctx,
    sock: c_int,
    side: c_int,
    buf: *mut c_char,
    len: usize,
    off: u64,
) -> isize {
    let r = (|| {
        let (i, api, ctx) = running(mctx)?;
        let flow = flow_of(i, sock)?;
        let side = side_code(side)?;
        // SAFETY: as in `h_peek`.
        let n = unsafe { (api.ppeek)(ctx, flow, side, buf.cast(), len, off) };
        Ok(n as isize)
    })();
    r.unwrap_or_else(|e: c_int| e as isize)
}

/// A flow socket's handle for the socket options (ENOTSOCK otherwise, as mOS).
fn opt_flow(i: &Instance, sock: c_int) -> Result<u64, c_int> {
    match flow_of(i, sock) {
        Err(e) if e == ESOCKTNOSUPPORT => Err(ENOTSOCK),
        r => r,
    }
}

/// Writes `v` to `out` if `*len` holds it; sets `*len`.
///
/// # Safety
/// `out` and `len` are the plugin's non-null pointers, `out` valid for `*len` bytes.
unsafe fn put<T>(out: *mut c_void, len: *mut libc::socklen_t, v: T) -> Result<c_int, c_int> {
    let size = std::mem::size_of::<T>();
    // SAFETY: the caller's contract.
    unsafe {
        if (*len as usize) < size {
            return Err(EINVAL);
        }
        out.cast::<T>().write_unaligned(v);
        *len = size as libc::socklen_t;
    }
    Ok(0)
}

unsafe extern "C" fn h_getsockopt(
    mctx: *mut Ctx,
    sock: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut libc::socklen_t,
) -> c_int {
    status((|| {
        let (i, api, ctx) = running(mctx)?;
        if level != SOL_MONSOCKET || val.is_null() || len.is_null() {
            return Err(EINVAL);
        }
        let flow = opt_flow(i, sock)?;
        let check = |r: i32| if r < 0 { Err(r) } else { Ok(r) };
        match name {
            MOS_FRAGINFO_CLIBUF | MOS_FRAGINFO_SVRBUF => {
                let side = u8::from(name == MOS_FRAGINFO_SVRBUF);
                // SAFETY: the plugin's in/out length.
                let cap = unsafe { *len } as usize;
                // A side holds at most MAX_FRAGMENTS fragments: no allocation.
                let mut all = [FfiFragment::default(); crate::flow::MAX_FRAGMENTS];
                // SAFETY: the running callback's context; `all` has room for its length.
                let n = unsafe { (api.fragments)(ctx, flow, side, all.as_mut_ptr(), all.len()) };
                if n < 0 {
                    return Err(n as c_int);
                }
                let n = (n as usize).min(all.len());
                let out = val.cast::<RingFragment>();
                for (k, f) in all[..n].iter().take(cap).enumerate() {
                    // SAFETY: the plugin's array holds `cap` elements (mOS's contract).
                    unsafe {
                        out.add(k).write_unaligned(RingFragment {
                            offset: f.offset,
                            len: u32::try_from(f.len).unwrap_or(u32::MAX),
                        })
                    };
                }
                // SAFETY: as above.
                unsafe { *len = n as libc::socklen_t };
                Ok(0)
            }
            MOS_INFO_CLIBUF | MOS_INFO_SVRBUF => {
                let side = u8::from(name == MOS_INFO_SVRBUF);
                let mut b = FfiBufferInfo::default();
                // SAFETY: the running callback's context and a local out-value.
                check(unsafe { (api.buffer_info)(ctx, flow, side, &mut b) })?;
                let seq = |off: u64| b.seq_base.wrapping_add(off as u32);
                let full = TcpBufInfo {
                    init_seq: b.seq_base,
                    last_byte_read: seq(b.cursor),
                    next_byte_expected: seq(b.contig_end),
                    last_byte_received: seq(b.last_end),
                    head_off: b.head,
                    read_off: b.cursor,
                    contig_off: b.contig_end,
                    last_off: b.last_end,
                    missing: b.missing,
                    capacity: b.capacity,
                    reserved: 0,
                };
                // SAFETY: the plugin's pointers (checked non-null).
                let have = unsafe { *len } as usize;
                if have >= std::mem::size_of::<TcpBufInfo>() {
                    // SAFETY: as above.
                    unsafe { put(val, len, full) }
                } else {
                    // SAFETY: as above.
                    unsafe {
                        put(
                            val,
                            len,
                            [
                                full.init_seq,
                                full.last_byte_read,
                                full.next_byte_expected,
                                full.last_byte_received,
                            ],
                        )
                    }
                }
            }
            MOS_TCP_STATE_CLI | MOS_TCP_STATE_SVR => {
                let side = u8::from(name == MOS_TCP_STATE_SVR);
                // SAFETY: the running callback's context.
                let st = check(unsafe { (api.tcp_state)(ctx, flow, side) })?;
                // SAFETY: the plugin's pointers.
                unsafe { put(val, len, st as c_int) }
            }
            MOS_TIMESTAMP => {
                let mut t = flowpeek_plugin_api::abi::FfiFlowTimes::default();
                // SAFETY: the running callback's context.
                check(unsafe { (api.flow_times)(ctx, flow, &mut t) })?;
                let us = t.last / 1000;
                // SAFETY: the plugin's pointers.
                if unsafe { *len } as usize >= 8 {
                    // SAFETY: as above.
                    unsafe { put(val, len, us) }
                } else {
                    // SAFETY: as above.
                    unsafe { put(val, len, us as u32) }
                }
            }
            _ => Err(ENOPROTOOPT),
        }
    })())
}

unsafe extern "C" fn h_setsockopt(
    mctx: *mut Ctx,
    sock: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: libc::socklen_t,
) -> c_int {
    status((|| {
        if level != SOL_MONSOCKET || val.is_null() || (len as usize) < std::mem::size_of::<c_int>()
        {
            return Err(EINVAL);
        }
        // SAFETY: the plugin passes an int (checked length).
        let v = unsafe { val.cast::<c_int>().read_unaligned() };
        if let Ok(i) = initialising(mctx) {
            // In mos_plugin_init: the monitoring socket's defaults for every flow.
            let id = usize::try_from(sock).map_err(|_| EBADF)?;
            if !matches!(i.socks.get(id), Some(Sock::Listen { raw: false, .. })) {
                return Err(EBADF);
            }
            return match name {
                MOS_CLIBUF | MOS_SVRBUF => {
                    let n = u32::try_from(v).map_err(|_| EINVAL)?;
                    i.buffers[usize::from(name == MOS_SVRBUF)] = if n == 0 {
                        BUFFER_OFF
                    } else {
                        n.min(BUFFER_DEFAULT - 1)
                    };
                    Ok(0)
                }
                _ => Err(ENOPROTOOPT),
            };
        }
        let (i, api, ctx) = running(mctx)?;
        let flow = opt_flow(i, sock)?;
        let r = match name {
            MOS_CLIBUF | MOS_SVRBUF => {
                let n = u32::try_from(v).map_err(|_| EINVAL)?;
                // SAFETY: the running callback's context.
                unsafe { (api.set_buffer_capacity)(ctx, flow, u8::from(name == MOS_SVRBUF), n) }
            }
            MOS_CLIOVERLAP | MOS_SVROVERLAP => {
                let p = u8::try_from(v).map_err(|_| EINVAL)?;
                // SAFETY: as above.
                unsafe { (api.set_overlap_policy)(ctx, flow, u8::from(name == MOS_SVROVERLAP), p) }
            }
            MOS_STOP_MON => {
                let s = u8::try_from(v)
                    .ok()
                    .filter(|s| *s <= SIDE_BOTH)
                    .ok_or(EINVAL)?;
                // SAFETY: as above.
                unsafe { (api.stop_monitoring)(ctx, flow, s) }
            }
            _ => return Err(ENOPROTOOPT),
        };
        if r < 0 {
            Err(r)
        } else {
            Ok(0)
        }
    })())
}

/// Writes one address as a sockaddr_in or sockaddr_in6 at `out`; returns its size.
///
/// # Safety
/// `out` is valid for `room` bytes.
unsafe fn write_addr(a: &FfiAddr, out: *mut u8, room: usize) -> Result<usize, c_int> {
    if a.family == FAMILY_V6 {
        let size = std::mem::size_of::<libc::sockaddr_in6>();
        if room < size {
            return Err(EINVAL);
        }
        // SAFETY: an all-zero sockaddr_in6 is valid.
        let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        s.sin6_port = a.port.to_be();
        s.sin6_addr.s6_addr = a.addr;
        // SAFETY: the caller's contract (room checked).
        unsafe { out.cast::<libc::sockaddr_in6>().write_unaligned(s) };
        Ok(size)
    } else {
        let size = std::mem::size_of::<libc::sockaddr_in>();
        if room < size {
            return Err(EINVAL);
        }
        // SAFETY: an all-zero sockaddr_in is valid.
        let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        s.sin_family = libc::AF_INET as libc::sa_family_t;
        s.sin_port = a.port.to_be();
        s.sin_addr.s_addr = u32::from_ne_bytes([a.addr[0], a.addr[1], a.addr[2], a.addr[3]]);
        // SAFETY: as above.
        unsafe { out.cast::<libc::sockaddr_in>().write_unaligned(s) };
        Ok(size)
    }
}

unsafe extern "C" fn h_getpeername(
    mctx: *mut Ctx,
    sock: c_int,
    out: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    side: c_int,
) -> c_int {
    status((|| {
        let (i, api, ctx) = running(mctx)?;
        if out.is_null() || len.is_null() {
            return Err(EINVAL);
        }
        let flow = opt_flow(i, sock)?;
        let mut a = FfiAddrs::default();
        // SAFETY: the running callback's context and a local out-value.
        let r = unsafe { (api.addresses)(ctx, flow, &mut a) };
        if r < 0 {
            return Err(r);
        }
        // SAFETY: the plugin's pointers (checked non-null).
        let room = unsafe { *len } as usize;
        let out = out.cast::<u8>();
        let n = match side {
            // SAFETY: `out` holds `room` bytes (the plugin's *addrlen).
            0 => unsafe { write_addr(&a.client, out, room)? },
            // SAFETY: as above.
            1 => unsafe { write_addr(&a.server, out, room)? },
            2 => {
                // SAFETY: `out` holds `room` bytes; the second address follows the first.
                let n = unsafe { write_addr(&a.client, out, room / 2)? };
                // SAFETY: as above.
                n + unsafe { write_addr(&a.server, out.add(n), room - n)? }
            }
            _ => return Err(EINVAL),
        };
        // SAFETY: as above.
        unsafe { *len = n as libc::socklen_t };
        Ok(0)
    })())
}

unsafe extern "C" fn h_getlastpkt(
    mctx: *mut Ctx,
    sock: c_int,
    side: c_int,
    p: *mut PktInfo,
) -> c_int {
    status((|| {
        let (i, api, ctx) = running(mctx)?;
        if p.is_null() {
            return Err(EINVAL);
        }
        let flow = flow_of(i, sock)?;
        side_code(side)?;
        let mut l = FfiLastPacket::default();
        // SAFETY: the running callback's context and a local out-value.
        let r = unsafe { (api.last_packet)(ctx, flow, &mut l) };
        if r < 0 {
            return Err(r);
        }
        let info = PktInfo {
            cur_ts: (l.ts / 1000) as u32,
            in_ifidx: -1,
            eth_len: 0,
            ip_len: 0,
            offset: l.offset,
            payloadlen: u16::try_from(l.payload_len).unwrap_or(u16::MAX),
            seq: l.seq,
            ack_seq: l.ack,
            window: l.window,
            ethh: std::ptr::null_mut(),
            iph: std::ptr::null_mut(),
            tcph: std::ptr::null_mut(),
            payload: std::ptr::null_mut(),
            ts_ns: l.ts,
            tcp_flags: l.flags,
            sender: if l.sender == SIDE_BOTH {
                -1
            } else {
                l.sender as i8
            },
        };
        // SAFETY: the plugin's out-pointer (checked non-null).
        unsafe { p.write_unaligned(info) };
        Ok(0)
    })())
}

unsafe extern "C" fn h_get_uctx(mctx: *mut Ctx, sock: c_int, err: *mut c_int) -> *mut c_void {
    let r = (|| {
        let i = any_phase(mctx)?;
        let id = usize::try_from(sock).map_err(|_| EBADF)?;
        match i.socks.get(id) {
            Some(Sock::Flow(f)) => Ok(f.uctx),
            Some(Sock::Listen { uctx, .. }) => Ok(*uctx),
            _ => Err(EBADF),
        }
    })();
    match r {
        Ok(p) => p,
        Err(e) => {
            if !err.is_null() {
                // SAFETY: the header passes a valid out-pointer.
                unsafe { *err = -e };
            }
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn h_set_uctx(mctx: *mut Ctx, sock: c_int, v: *mut c_void) -> c_int {
    status((|| {
        let i = any_phase(mctx)?;
        let id = usize::try_from(sock).map_err(|_| EBADF)?;
        match i.socks.get_mut(id) {
            Some(Sock::Flow(f)) => f.uctx = v,
            Some(Sock::Listen { uctx, .. }) => *uctx = v,
            _ => return Err(EBADF),
        }
        Ok(0)
    })())
}

unsafe extern "C" fn h_settimer(
    mctx: *mut Ctx,
    id: c_int,
    tv: *const libc::timeval,
    cb: Option<Callback>,
) -> c_int {
    status((|| {
        let Some(cb) = cb else { return Err(EINVAL) };
        if tv.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the plugin's timeval (checked non-null).
        let tv = unsafe { tv.read_unaligned() };
        if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
            return Err(EINVAL);
        }
        let after = (tv.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(tv.tv_usec as u64 * 1000);
        let running = running(mctx).ok();
        let i = match &running {
            Some(_) => None,
            None => Some(initialising(mctx)?),
        };
        let (inst, api) = match running {
            Some((i, api, ctx)) => (i, Some((api, ctx))),
            None => (i.ok_or(EACCES)?, None),
        };
        let tag = match inst.timers.iter().position(Option::is_none) {
            Some(t) => {
                inst.timers[t] = Some((id, cb));
                t
            }
            None => {
                inst.timers.push(Some((id, cb)));
                inst.timers.len() - 1
            }
        } as u64;
        match api {
            Some((api, ctx)) => {
                // SAFETY: the running callback's context.
                let r = unsafe { (api.set_core_timer)(ctx, after, tag) };
                if r < 0 {
                    inst.timers[tag as usize] = None;
                    return Err(r);
                }
            }
            None => inst.pending_timers.push((after, tag)),
        }
        Ok(0)
    })())
}

unsafe extern "C" fn h_now_ns(mctx: *mut Ctx, err: *mut c_int) -> u64 {
    match running(mctx) {
        // SAFETY: the running callback's context.
        Ok((_, api, ctx)) => unsafe { (api.now)(ctx) },
        Err(e) => {
            if !err.is_null() {
                // SAFETY: the header passes a valid out-pointer.
                unsafe { *err = -e };
            }
            0
        }
    }
}

unsafe extern "C" fn h_emit(mctx: *mut Ctx, rec: *const c_char, len: usize) -> c_int {
    status((|| {
        let (_, api, ctx) = running(mctx)?;
        // SAFETY: the running callback's context; the host function checks the record.
        let r = unsafe { (api.emit)(ctx, rec.cast(), len) };
        if r < 0 {
            Err(r)
        } else {
            Ok(0)
        }
    })())
}

unsafe extern "C" fn h_flow_info(mctx: *mut Ctx, sock: c_int, out: *mut FlowInfo) -> c_int {
    status((|| {
        let (i, api, ctx) = running(mctx)?;
        if out.is_null() {
            return Err(EINVAL);
        }
        let flow = opt_flow(i, sock)?;
        let mut a = FfiAddrs::default();
        let mut t = FfiFlowTimes::default();
        // SAFETY: the running callback's context and local out-values.
        let r = unsafe { (api.addresses)(ctx, flow, &mut a) };
        if r < 0 {
            return Err(r);
        }
        // SAFETY: as above.
        let r = unsafe { (api.flow_times)(ctx, flow, &mut t) };
        if r < 0 {
            return Err(r);
        }
        let uid = records::flow_uid(a.client.socket_addr(), a.server.socket_addr(), t.start);
        // SAFETY: the plugin's pointer (checked non-null) to its `struct flowpeek_flow_info`.
        unsafe {
            out.write(FlowInfo {
                uid,
                start_ns: t.start,
                last_ns: t.last,
                serial: t.serial,
            })
        };
        Ok(0)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_lib_and_so() {
        assert_eq!(name_of(Path::new("/x/libmonitor.so")), "monitor");
        assert_eq!(name_of(Path::new("stats.so")), "stats");
        assert_eq!(name_of(Path::new("lib.so")), "lib");
    }

    #[test]
    fn event_bits_are_mos_s() {
        assert_eq!(bit_of_builtin(BuiltinEvent::ConnEnd), 1 << 10);
        assert_eq!(
            builtin_of_bit(1 << 4).map(|b| b.0),
            Some(BuiltinEvent::NewData)
        );
        assert!(builtin_of_bit(1 << 1).is_none(), "PKT_OUT is deprecated");
        assert_eq!(ude_index(1 << 33), Some(1));
        assert_eq!(ude_index(1 << 9), None);
        assert_eq!(hook_of(i32::MIN), Some(Hook::Snd));
    }

    /// The Rust mirrors of the header's structs have its sizes (x86-64 / aarch64 LP64).
    #[test]
    fn structs_match_the_header() {
        assert_eq!(std::mem::size_of::<TcpBufInfo>(), 64);
        assert_eq!(std::mem::size_of::<RingFragment>(), 16);
        assert_eq!(std::mem::size_of::<PktInfo>(), 88);
    }
}
