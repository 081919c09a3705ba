//! The host side of the ABI: the [`HostApi`] functions a plugin calls, and conversions
//! between the engine's types and their `#[repr(C)]` forms.
//!
//! Every function takes the `ctx` pointer of the running callback ([`CallCtx`]), checks
//! its arguments, and answers with a negative errno instead of trusting the plugin.
//!
//! Every number crossing the boundary is decoded and encoded with the ABI's own types
//! ([`flowpeek_plugin_api::codes`]); nothing here is numbered on its own.

use std::ffi::c_void;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use flowpeek_plugin_api::abi::*;
use flowpeek_plugin_api::codes::{
    self, LogLevel, Overlap, BUFFER_DEFAULT, BUFFER_OFF, END_REASON_OPEN, FAMILY_V4, FAMILY_V6,
    SIDE_BOTH,
};

use crate::flow::{
    BufferRequest, Cx, Errno, Event, EventKind, EventSide, FlowHandle, Hook, OverlapPolicy,
    PeekError, Side, Subscriptions,
};

/// Where one plugin's records go.
///
/// Records are buffered whole and written a chunk at a time on a file opened for appending,
/// which the instances of one plugin on several cores share. The file never holds a partial
/// line: each chunk is written under an exclusive `flock` (one per chunk, never per record),
/// short writes are retried, and when a write fails (`ENOSPC`, `EDQUOT`, `EIO`) the file is
/// cut back to the end of the last whole record written and the records not written are
/// dropped whole and counted ([`Sink::records_lost`]). The first loss is reported on stderr
/// at once, naming the plugin, the file, the error and the records lost; once space returns,
/// later chunks start on a line of their own.
pub struct Sink {
    out: Option<std::fs::File>,
    path: std::path::PathBuf,
    buf: Vec<u8>,
    /// Records emitted (written or lost).
    pub records: u64,
    /// Records that could not be written (dropped whole).
    pub records_lost: u64,
    /// Failed chunk writes.
    pub write_errors: u64,
}

const SINK_CHUNK: usize = 1 << 16;

impl Sink {
    /// A sink appending to `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<Sink> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Sink {
            out: Some(f),
            path: path.to_owned(),
            buf: Vec::with_capacity(SINK_CHUNK * 2),
            records: 0,
            records_lost: 0,
            write_errors: 0,
        })
    }

    /// A sink that counts and discards.
    pub fn discard() -> Sink {
        Sink {
            out: None,
            path: std::path::PathBuf::new(),
            buf: Vec::new(),
            records: 0,
            records_lost: 0,
            write_errors: 0,
        }
    }

    fn write(&mut self, record: &[u8]) {
        self.records += 1;
        if self.out.is_none() {
            return;
        }
        self.buf.extend_from_slice(record);
        self.buf.push(b'\n');
        if self.buf.len() >= SINK_CHUNK {
            self.flush();
        }
    }

    /// Writes the buffered records (whole, or not at all: see [`Sink`]).
    pub fn flush(&mut self) {
        if let Some(out) = &self.out {
            if !self.buf.is_empty() {
                if let Err((e, lost)) = append_whole_lines(out, &self.buf) {
                    self.write_errors += 1;
                    if self.records_lost == 0 {
                        let name = self.path.file_stem().unwrap_or_default().to_string_lossy();
                        eprintln!(
                            "flowpeek: error: plugin {name}: writing its records to {} failed: {e}; {lost} records lost (dropped whole: the file holds no partial line); later losses are counted in --stats (records_lost) and the run exits non-zero",
                            self.path.display()
                        );
                    }
                    self.records_lost += lost;
                }
            }
        }
        self.buf.clear();
    }
}

/// Appends `buf` (whole lines) to `file` under an exclusive `flock`, retrying short writes.
/// On an error, cuts the file back to the end of the last whole line written and returns the
/// error with the number of lines not written.
#[allow(unsafe_code)]
fn append_whole_lines(file: &std::fs::File, buf: &[u8]) -> Result<(), (std::io::Error, u64)> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor this File owns; it only takes an advisory lock (released
    // below, or when the descriptor closes). Other cores' sinks open the same file, so the
    // lock makes the end offset read below the one this chunk is appended at.
    let locked = unsafe { libc::flock(fd, libc::LOCK_EX) } == 0;
    // SAFETY: lseek on an owned descriptor; moves nothing an O_APPEND write depends on.
    let start = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
    let mut done = 0usize;
    let mut result = Ok(());
    while done < buf.len() {
        // SAFETY: buf[done..] is valid for reading; fd is owned and open for writing.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let e = if n == 0 {
            std::io::Error::from(std::io::ErrorKind::WriteZero)
        } else {
            std::io::Error::last_os_error()
        };
        if e.kind() != std::io::ErrorKind::Interrupted {
            result = Err(e);
            break;
        }
    }
    if let Err(e) = result {
        let whole = buf[..done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if whole < done && locked && start >= 0 {
            // SAFETY: ftruncate on an owned descriptor, under the lock, to an offset inside
            // what this chunk wrote: only the torn line goes.
            unsafe { libc::ftruncate(fd, start + whole as libc::off_t) };
        }
        let lost = buf[whole..].iter().filter(|&&b| b == b'\n').count() as u64;
        if locked {
            // SAFETY: as above.
            unsafe { libc::flock(fd, libc::LOCK_UN) };
        }
        return Err((e, lost));
    }
    if locked {
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
    }
    Ok(())
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What `ctx` points to during a plugin callback.
pub struct CallCtx<'c, 'a> {
    /// The engine's context.
    pub cx: &'c mut Cx<'a>,
    /// The plugin's record sink (borrowed by `emit` only).
    pub sink: &'c std::cell::RefCell<Sink>,
    /// The plugin's name, for log lines.
    pub name: &'c str,
    /// The batch being delivered (null outside `PluginExt::on_batch`): a host function
    /// that cuts it (SPEC §2.4) sets its `cut`.
    pub batch: *mut FfiBatch,
}

thread_local! {
    /// The `ctx` of the plugin callback running on this thread (null outside callbacks).
    static CURRENT: std::cell::Cell<*mut c_void> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Marks `ctx` as the running callback's context on this thread until the guard drops.
pub fn enter(ctx: *mut c_void) -> CallGuard {
    CallGuard(CURRENT.with(|c| c.replace(ctx)))
}

/// Restores the previous context (callbacks nest when a filter runs inside a dispatch).
pub struct CallGuard(*mut c_void);

impl Drop for CallGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// The table handed to plugins.
pub static HOST_API: HostApi = HostApi {
    ppeek,
    peek,
    ppeek_slices,
    fragments,
    buffer_info,
    tcp_state,
    addresses,
    last_packet,
    flow_times,
    is_partial,
    end_reason,
    set_buffer_capacity,
    set_overlap_policy,
    stop_monitoring,
    user_value,
    set_user_value,
    set_timer,
    set_core_timer,
    subscribe,
    unsubscribe,
    raise,
    now,
    core_id,
    emit,
    log,
};

/// The host's API 2 functions, handed to every plugin of API 2 by `PluginExt::bind`.
pub static HOST_EXT: HostExt = HostExt {
    api_version: API_VERSION,
    read,
};

/// What a host function returns for a context that is not the running callback's
/// (SPEC §4: EACCES).
const NOT_OURS: i32 = codes::Errno::Acces.ret();
/// [`NOT_OURS`] for the functions returning `i64`.
const NOT_OURS_64: i64 = NOT_OURS as i64;
/// What a host function returns for an invalid argument it checks itself.
const INVAL: i32 = codes::Errno::Inval.ret();

fn errno(e: Errno) -> i64 {
    -i64::from(e.code())
}

/// Runs a host function for the plugin; a host bug must not unwind into the plugin.
fn with<R>(ctx: *mut c_void, fail: R, f: impl FnOnce(&mut CallCtx<'_, '_>) -> R) -> R {
    // Only the context of the callback running on this thread is valid: a pointer kept after
    // the callback returned, or used from another thread, is refused (EACCES) instead of
    // dereferenced.
    if ctx.is_null() || CURRENT.with(|c| c.get()) != ctx {
        return fail;
    }
    // SAFETY: the host only ever passes a `CallCtx` it built for the running callback as
    // `ctx`, and the plugin may use it only during that callback (the API contract).
    let c = unsafe { &mut *ctx.cast::<CallCtx<'_, '_>>() };
    let r = catch_unwind(AssertUnwindSafe(|| f(c))).unwrap_or(fail);
    if !c.batch.is_null() && c.cx.cut() {
        // SAFETY: a non-null `batch` is the live batch of the running `on_batch` call, owned
        // by the host's frame that made this context.
        unsafe { (*c.batch).cut = 1 };
    }
    r
}

/// The plugin's output buffer `len` bytes at `buf` (empty when `len` is 0).
fn out_buf<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [u8], Errno> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(Errno::Inval);
    }
    // SAFETY: the plugin passes `len` writable bytes at a non-null `buf`, valid for the call
    // (API contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(buf, len) })
}

fn side(s: u8) -> Result<Side, Errno> {
    Side::try_from(s).map_err(|_| Errno::Inval)
}

/// One side, or both ([`SIDE_BOTH`]).
fn event_side(s: u8) -> Result<EventSide, Errno> {
    match Side::from_code_or_both(s) {
        Ok(Some(side)) => Ok(EventSide::One(side)),
        Ok(None) => Ok(EventSide::Both),
        Err(_) => Err(Errno::Inval),
    }
}

fn hook(h: u8) -> Result<Hook, Errno> {
    Hook::try_from(h).map_err(|_| Errno::Inval)
}

/// The engine's event for an event number.
pub fn event_kind(code: u32) -> Result<EventKind, Errno> {
    EventKind::from_code(code).ok_or(Errno::Inval)
}

/// The event number of an engine event.
#[inline]
pub fn event_code(kind: EventKind) -> u32 {
    kind.code()
}

/// The `#[repr(C)]` form of an event.
#[inline]
pub fn to_ffi(ev: &Event) -> FfiEvent {
    let (detail_kind, detail) = ev.detail.to_abi();
    FfiEvent {
        kind: ev.kind.code(),
        flow: ev.flow.0,
        side: match ev.side {
            EventSide::One(s) => s.code(),
            EventSide::Both => SIDE_BOTH,
        },
        hook: ev.hook.code(),
        detail_kind,
        detail,
    }
}

/// The ABI record of a held event.
#[inline]
pub fn to_record(h: &crate::flow::Held) -> FfiRecord {
    FfiRecord {
        ev: to_ffi(&h.ev),
        ts: h.info.ts,
        offset: h.info.offset,
        payload_len: h.info.payload_len,
        flags: h.info.flags,
        reserved: [0; 3],
    }
}

/// The engine's subscriptions for a plugin's of API 2, and its stream filter (`None`:
/// every flow).
pub fn subscriptions_v2(s: &FfiSubscriptionsV2) -> (Subscriptions, Option<String>) {
    let mut out = subscriptions(s.base);
    out.set_batch_mask(s.batch & s.base.mask);
    let filter = s.filter.as_str().trim();
    (out, (!filter.is_empty()).then(|| filter.to_string()))
}

/// The engine's subscriptions for a plugin's.
pub fn subscriptions(s: FfiSubscriptions) -> Subscriptions {
    let buffer = |v: u32| match v {
        BUFFER_OFF => BufferRequest::Off,
        BUFFER_DEFAULT => BufferRequest::Default,
        n => BufferRequest::AtLeast(n),
    };
    let mut out = Subscriptions::none();
    out.mask = s.mask;
    out.buffers = [buffer(s.buffers[0]), buffer(s.buffers[1])];
    out
}

fn ffi_addr(a: SocketAddr) -> FfiAddr {
    let mut addr = [0u8; 16];
    let family = match a.ip() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            FAMILY_V4
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            FAMILY_V6
        }
    };
    FfiAddr {
        family,
        addr,
        port: a.port(),
    }
}

unsafe extern "C" fn ppeek(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    buf: *mut u8,
    len: usize,
    off: u64,
) -> i64 {
    with(ctx, NOT_OURS_64, |c| {
        let (side, out) = match side(s).and_then(|side| Ok((side, out_buf(buf, len)?))) {
            Ok(v) => v,
            Err(e) => return errno(e),
        };
        c.cx.ppeek(FlowHandle(flow), side, out, off)
            .map_or_else(errno, |n| n as i64)
    })
}

unsafe extern "C" fn peek(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    buf: *mut u8,
    len: usize,
    lost: *mut u64,
) -> i64 {
    with(ctx, NOT_OURS_64, |c| {
        let (side, out) = match side(s).and_then(|side| Ok((side, out_buf(buf, len)?))) {
            Ok(v) => v,
            Err(e) => return errno(e),
        };
        match c.cx.peek(FlowHandle(flow), side, out) {
            Ok(n) => n as i64,
            Err(PeekError::Lost(n)) => {
                if !lost.is_null() {
                    // SAFETY: a non-null `lost` is a valid out-pointer (API contract).
                    unsafe { *lost = n };
                }
                errno(Errno::NoData)
            }
            Err(PeekError::Errno(e)) => errno(e),
        }
    })
}

unsafe extern "C" fn read(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    max: usize,
    out: *mut FfiSlices,
    lost: *mut u64,
) -> i64 {
    with(ctx, NOT_OURS_64, |c| {
        let side = match side(s) {
            Ok(v) => v,
            Err(e) => return errno(e),
        };
        if out.is_null() {
            return i64::from(INVAL);
        }
        match c.cx.read(FlowHandle(flow), side, max) {
            Ok((a, b)) => {
                // SAFETY: `out` is a valid out-pointer (checked non-null).
                unsafe {
                    *out = FfiSlices {
                        a: a.as_ptr(),
                        a_len: a.len(),
                        b: b.as_ptr(),
                        b_len: b.len(),
                    }
                };
                (a.len() + b.len()) as i64
            }
            Err(PeekError::Lost(n)) => {
                if !lost.is_null() {
                    // SAFETY: a non-null `lost` is a valid out-pointer (API contract).
                    unsafe { *lost = n };
                }
                errno(Errno::NoData)
            }
            Err(PeekError::Errno(e)) => errno(e),
        }
    })
}

unsafe extern "C" fn ppeek_slices(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    off: u64,
    len: usize,
    out: *mut FfiSlices,
) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let side = match side(s) {
            Ok(v) => v,
            Err(e) => return -e.code(),
        };
        if out.is_null() {
            return INVAL;
        }
        match c.cx.ppeek_slices(FlowHandle(flow), side, off, len) {
            Ok((a, b)) => {
                // SAFETY: `out` is a valid out-pointer (checked non-null).
                unsafe {
                    *out = FfiSlices {
                        a: a.as_ptr(),
                        a_len: a.len(),
                        b: b.as_ptr(),
                        b_len: b.len(),
                    }
                };
                0
            }
            Err(e) => -e.code(),
        }
    })
}

unsafe extern "C" fn fragments(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    out: *mut FfiFragment,
    cap: usize,
) -> i64 {
    with(ctx, NOT_OURS_64, |c| {
        let side = match side(s) {
            Ok(v) => v,
            Err(e) => return errno(e),
        };
        match c.cx.fragments(FlowHandle(flow), side) {
            Ok(frags) => {
                let mut n = 0usize;
                for (offset, len) in frags {
                    if n < cap && !out.is_null() {
                        // SAFETY: `out` has room for `cap` fragments (API contract).
                        unsafe { *out.add(n) = FfiFragment { offset, len } };
                    }
                    n += 1;
                }
                n as i64
            }
            Err(e) => errno(e),
        }
    })
}

/// Writes `value` through a plugin's out-pointer, or fails with EINVAL when it is null.
fn put<T>(out: *mut T, value: T) -> i32 {
    if out.is_null() {
        return INVAL;
    }
    // SAFETY: non-null out-pointers from the plugin are valid for writes (API contract).
    unsafe { *out = value };
    0
}

unsafe extern "C" fn buffer_info(
    ctx: *mut c_void,
    flow: u64,
    s: u8,
    out: *mut FfiBufferInfo,
) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let side = match side(s) {
            Ok(v) => v,
            Err(e) => return -e.code(),
        };
        match c.cx.buffer_info(FlowHandle(flow), side) {
            Ok(i) => put(
                out,
                FfiBufferInfo {
                    seq_base: i.seq_base,
                    capacity: i.capacity,
                    head: i.head,
                    cursor: i.cursor,
                    contig_end: i.contig_end,
                    last_end: i.last_end,
                    missing: i.missing,
                    overlap: i.overlap,
                },
            ),
            Err(e) => -e.code(),
        }
    })
}

unsafe extern "C" fn tcp_state(ctx: *mut c_void, flow: u64, s: u8) -> i32 {
    with(ctx, NOT_OURS, |c| {
        match side(s).and_then(|side| c.cx.tcp_state(FlowHandle(flow), side)) {
            Ok(st) => i32::from(st.code()),
            Err(e) => -e.code(),
        }
    })
}

unsafe extern "C" fn addresses(ctx: *mut c_void, flow: u64, out: *mut FfiAddrs) -> i32 {
    with(ctx, NOT_OURS, |c| match c.cx.addresses(FlowHandle(flow)) {
        Ok((a, b)) => put(
            out,
            FfiAddrs {
                client: ffi_addr(a),
                server: ffi_addr(b),
            },
        ),
        Err(e) => -e.code(),
    })
}

unsafe extern "C" fn last_packet(ctx: *mut c_void, flow: u64, out: *mut FfiLastPacket) -> i32 {
    with(ctx, NOT_OURS, |c| {
        match c.cx.last_packet(FlowHandle(flow)) {
            Ok(p) => put(
                out,
                FfiLastPacket {
                    ts: p.ts,
                    seq: p.seq,
                    ack: p.ack,
                    offset: p.offset,
                    payload_len: p.payload_len,
                    window: p.window,
                    flags: p.flags.0,
                    sender: Side::code_of(p.sender),
                },
            ),
            Err(e) => -e.code(),
        }
    })
}

unsafe extern "C" fn flow_times(ctx: *mut c_void, flow: u64, out: *mut FfiFlowTimes) -> i32 {
    with(ctx, NOT_OURS, |c| match c.cx.flow_times(FlowHandle(flow)) {
        Ok(t) => put(
            out,
            FfiFlowTimes {
                start: t.start,
                last: t.last,
                serial: t.serial,
            },
        ),
        Err(e) => -e.code(),
    })
}

unsafe extern "C" fn is_partial(ctx: *mut c_void, flow: u64) -> i32 {
    with(ctx, NOT_OURS, |c| {
        c.cx.is_partial(FlowHandle(flow))
            .map_or_else(|e| -e.code(), i32::from)
    })
}

unsafe extern "C" fn end_reason(ctx: *mut c_void, flow: u64) -> i32 {
    with(ctx, NOT_OURS, |c| match c.cx.end_reason(FlowHandle(flow)) {
        Ok(Some(r)) => i32::from(r.code()),
        Ok(None) => END_REASON_OPEN,
        Err(e) => -e.code(),
    })
}

fn status(r: Result<(), Errno>) -> i32 {
    r.map_or_else(|e| -e.code(), |()| 0)
}

unsafe extern "C" fn set_buffer_capacity(ctx: *mut c_void, flow: u64, s: u8, capacity: u32) -> i32 {
    with(ctx, NOT_OURS, |c| {
        status(side(s).and_then(|side| c.cx.set_buffer_capacity(FlowHandle(flow), side, capacity)))
    })
}

unsafe extern "C" fn set_overlap_policy(ctx: *mut c_void, flow: u64, s: u8, policy: u8) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let policy = match Overlap::try_from(policy) {
            Ok(Overlap::First) => OverlapPolicy::First,
            Ok(Overlap::Last) => OverlapPolicy::Last,
            Err(_) => return INVAL,
        };
        status(side(s).and_then(|side| c.cx.set_overlap_policy(FlowHandle(flow), side, policy)))
    })
}

unsafe extern "C" fn stop_monitoring(ctx: *mut c_void, flow: u64, s: u8) -> i32 {
    with(ctx, NOT_OURS, |c| {
        status(event_side(s).and_then(|w| c.cx.stop_monitoring(FlowHandle(flow), w)))
    })
}

unsafe extern "C" fn user_value(ctx: *mut c_void, flow: u64, out: *mut u64) -> i32 {
    with(ctx, NOT_OURS, |c| match c.cx.user_value(FlowHandle(flow)) {
        Ok(v) => put(out, v),
        Err(e) => -e.code(),
    })
}

unsafe extern "C" fn set_user_value(ctx: *mut c_void, flow: u64, value: u64) -> i32 {
    with(ctx, NOT_OURS, |c| {
        status(c.cx.set_user_value(FlowHandle(flow), value))
    })
}

unsafe extern "C" fn set_timer(ctx: *mut c_void, flow: u64, after: u64, tag: u64) -> i32 {
    with(ctx, NOT_OURS, |c| {
        status(c.cx.set_timer(FlowHandle(flow), after, tag))
    })
}

unsafe extern "C" fn set_core_timer(ctx: *mut c_void, after: u64, tag: u64) -> i32 {
    with(ctx, NOT_OURS, |c| status(c.cx.set_core_timer(after, tag)))
}

unsafe extern "C" fn subscribe(ctx: *mut c_void, flow: u64, event: u32, h: u8) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let r = event_kind(event)
            .and_then(|e| hook(h).and_then(|h| c.cx.subscribe(FlowHandle(flow), e, h)));
        status(r)
    })
}

unsafe extern "C" fn unsubscribe(ctx: *mut c_void, flow: u64, event: u32, h: u8) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let r = event_kind(event)
            .and_then(|e| hook(h).and_then(|h| c.cx.unsubscribe(FlowHandle(flow), e, h)));
        status(r)
    })
}

unsafe extern "C" fn raise(ctx: *mut c_void, flow: u64, s: u8, event: u32) -> i32 {
    with(ctx, NOT_OURS, |c| {
        let r = event_side(s)
            .and_then(|w| event_kind(event).and_then(|e| c.cx.raise(FlowHandle(flow), w, e)));
        status(r)
    })
}

unsafe extern "C" fn now(ctx: *mut c_void) -> u64 {
    with(ctx, 0, |c| c.cx.now())
}

unsafe extern "C" fn core_id(ctx: *mut c_void) -> u32 {
    with(ctx, 0, |c| u32::from(c.cx.core_id()))
}

/// Records longer than this are refused (a plugin that loops on `emit` cannot exhaust the
/// disk one giant line at a time).
const MAX_RECORD: usize = 1 << 20;

unsafe extern "C" fn emit(ctx: *mut c_void, record: *const u8, len: usize) -> i32 {
    with(ctx, NOT_OURS, |c| {
        if record.is_null() || len > MAX_RECORD {
            return INVAL;
        }
        // SAFETY: the plugin passes `len` readable bytes at `record` (API contract).
        let bytes = unsafe { std::slice::from_raw_parts(record, len) };
        if bytes.contains(&b'\n') {
            return INVAL;
        }
        match c.sink.try_borrow_mut() {
            Ok(mut sink) => {
                sink.write(bytes);
                0
            }
            // Only a filter (whose sink discards) could nest a callback into another.
            Err(_) => INVAL,
        }
    })
}

unsafe extern "C" fn log(ctx: *mut c_void, level: u8, msg: *const u8, len: usize) {
    with(ctx, (), |c| {
        if msg.is_null() {
            return;
        }
        // SAFETY: as in `emit`.
        let bytes = unsafe { std::slice::from_raw_parts(msg, len.min(4096)) };
        let level = LogLevel::try_from(level).map_or(LogLevel::Debug.name(), LogLevel::name);
        eprintln!(
            "flowpeek: plugin {}: {level}: {}",
            c.name,
            String::from_utf8_lossy(bytes)
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine event becomes the ABI's numbers.
    #[test]
    fn events_cross_with_the_abi_numbers() {
        let ev = Event {
            kind: EventKind::TcpStateChange,
            side: EventSide::One(Side::Server),
            hook: Hook::Rcv,
            flow: FlowHandle(42),
            detail: crate::flow::Detail::State(crate::flow::TcpState::Established),
        };
        let f = to_ffi(&ev);
        assert_eq!(
            (f.kind, f.flow, f.side, f.hook, f.detail_kind, f.detail),
            (4, 42, 1, 1, detail::STATE, 4)
        );
        let orphan = Event {
            kind: EventKind::Orphan,
            side: EventSide::Both,
            hook: Hook::None,
            detail: crate::flow::Detail::None,
            ..ev
        };
        let f = to_ffi(&orphan);
        assert_eq!((f.kind, f.side, f.hook, f.detail_kind), (8, 2, 2, 0));
        assert_eq!(
            event_kind(0x101),
            Ok(EventKind::User(crate::flow::UserEventId(1)))
        );
        assert_eq!(event_kind(9), Err(Errno::Inval));
        assert_eq!(event_side(2), Ok(EventSide::Both));
        assert_eq!(event_side(3), Err(Errno::Inval));
        assert_eq!((NOT_OURS, NOT_OURS_64, INVAL), (-13, -13, -22));
    }

    /// A context pointer kept after its callback, or used from another thread, is refused
    /// with EACCES and never dereferenced (the pointers here point at nothing).
    #[test]
    fn stale_or_foreign_context_is_refused() {
        let stale = 0x10 as *mut c_void;
        let mut buf = [0u8; 4];
        // SAFETY: the host functions check the context before using any pointer.
        let r = unsafe { (HOST_API.ppeek)(stale, 0, 0, buf.as_mut_ptr(), buf.len(), 0) };
        assert_eq!(r, -13);
        // The same pointer is the running callback's on this thread, not on another one.
        let ctx = 0x20 as *mut c_void;
        let _running = enter(ctx);
        let addr = ctx as usize;
        let from_other = std::thread::spawn(move || {
            let mut b = [0u8; 4];
            // SAFETY: as above.
            unsafe { (HOST_API.ppeek)(addr as *mut c_void, 0, 0, b.as_mut_ptr(), b.len(), 0) }
        })
        .join()
        .unwrap();
        assert_eq!(from_other, -13);
        // SAFETY: as above.
        assert_eq!(unsafe { (HOST_API.set_user_value)(stale, 0, 1) }, -13);
        // SAFETY: as above.
        assert_eq!(unsafe { (HOST_API.emit)(stale, b"x".as_ptr(), 1) }, -13);
    }
}
