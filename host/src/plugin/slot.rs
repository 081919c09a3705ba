//! One plugin on one core: its generations (one per load of its file), which flows each
//! generation owns, batches, draining and retiring old generations, and panics.
//!
//! A flow belongs to the generation that saw its first event until the flow ends; new
//! flows go to the newest generation. The generation is the engine's per-(monitor, flow)
//! host tag, so finding it costs one load, and each generation counts its flows instead of
//! keeping a set of them. An old generation retires when its last flow ends, or at its drain
//! deadline, when its remaining flows (found by a walk of the flow table, once) get
//! `ConnEnd` (reason `Reloaded`) and leave it.
//!
//! The engine owns the slot ([`SlotMonitor`]); the plugin host reaches it through the engine
//! and keeps only what it must read without one ([`SlotShared`]: the name, the record sink,
//! counters published at batch boundaries, the live generations). Nothing on the path of a
//! callback borrows a `RefCell` or hashes; counters are plain fields of this core's slot.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use flowpeek_plugin_api::abi::{
    status, FfiBatch, FfiEvent, FfiFilterSlot, FfiRecord, HostCx, MonitorObj, SetupCx,
};
use flowpeek_plugin_api::codes;

use super::budget::{CoreBeat, OverrunPolicy};
use super::ffi::{self, CallCtx, Sink, HOST_API};
use super::load::Library;
use crate::filter::{self, StreamFilter};
use crate::flow::{
    Cx, Detail, EndReason, Event, EventKind, EventSide, Filter, FlowHandle, Held, Hook, Monitor,
    Setup, Side, Subscriptions,
};

/// Counters of one plugin on one core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Callbacks delivered.
    pub events: u64,
    /// Records emitted.
    pub records: u64,
    /// Callbacks that panicked (each disables its instance).
    pub failures: u64,
    /// Callbacks that ran past the time budget (see [`super::budget`]).
    pub overruns: u64,
    /// Generations installed (loads of the file).
    pub generations: u64,
    /// Generations retired.
    pub retired: u64,
    /// Flows handed `ConnEnd(Reloaded)` at a drain deadline.
    pub drained_flows: u64,
    /// Records that could not be written to the log (dropped whole).
    pub records_lost: u64,
    /// Constructor calls (`new`, one per load and core) that ran past the time budget,
    /// returned or not.
    pub slow_constructors: u64,
    /// Calls into the plugin (a batch is one call for many events).
    pub calls: u64,
}

impl PluginStats {
    /// Adds another core's (or slot's) counters.
    pub fn add(&mut self, o: &PluginStats) {
        self.events += o.events;
        self.records += o.records;
        self.failures += o.failures;
        self.overruns += o.overruns;
        self.generations += o.generations;
        self.retired += o.retired;
        self.drained_flows += o.drained_flows;
        self.records_lost += o.records_lost;
        self.slow_constructors += o.slow_constructors;
        self.calls += o.calls;
    }
}

type OnBatch = unsafe extern "C" fn(*mut c_void, *mut HostCx, *mut FfiBatch) -> i32;

struct Generation {
    obj: Option<MonitorObj>,
    version: String,
    subs: Subscriptions,
    /// The library's batch entry point (API 2); `None`: one call per event.
    on_batch: Option<OnBatch>,
    /// Flows this generation owns.
    flows: u64,
    disabled: bool,
    drain_deadline: Option<u64>,
}

impl Generation {
    fn running(&self) -> bool {
        self.obj.is_some() && !self.disabled
    }
}

/// Tag layout in the engine's per-(monitor, flow) host tag: generation + 1 in the low bits,
/// the number of sides whose `ConnEnd` passed in bits 24–25.
const GEN_MASK: u32 = 0x00ff_ffff;
const DETACHED: u32 = GEN_MASK;
const ENDS_SHIFT: u32 = 24;
/// The core-timer tag the slot uses for drain deadlines (reserved: a plugin's own core
/// timer with this tag is not delivered).
pub const DRAIN_TIMER: u64 = u64::MAX;

/// What the plugin host reads of a slot without the engine: set at installs, retirements and
/// batch boundaries, never per callback (except the sink, borrowed by `emit`).
pub struct SlotShared {
    name: String,
    /// The plugin's record sink.
    pub(crate) sink: RefCell<Sink>,
    stats: Cell<PluginStats>,
    live: RefCell<Vec<String>>,
}

impl SlotShared {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters as of the last batch boundary (or install, retirement, shutdown).
    pub fn stats(&self) -> PluginStats {
        let s = self.stats.take();
        self.stats.set(s.clone());
        s
    }

    /// Versions of the generations still running, oldest first.
    pub fn live_generations(&self) -> Vec<String> {
        self.live.borrow().clone()
    }

    /// Writes the buffered records.
    pub fn flush(&self) {
        if let Ok(mut s) = self.sink.try_borrow_mut() {
            s.flush();
            let mut st = self.stats.take();
            st.records = s.records;
            st.records_lost = s.records_lost;
            self.stats.set(st);
        }
    }
}

/// A plugin hosted as one engine monitor.
pub struct PluginSlot {
    shared: Rc<SlotShared>,
    core: u32,
    gens: Vec<Generation>,
    newest: Option<usize>,
    drain_timeout: u64,
    /// The earliest drain deadline of any generation (u64::MAX: none), checked per call.
    next_drain: u64,
    /// A generation stopped being the newest: retire it at the next callback if it owns no
    /// flow (installing has no engine context to retire with).
    retire_idle: bool,
    /// The core's heartbeat for the callback time budget, this plugin's id in it, and the
    /// policy for callbacks past the budget.
    beat: Arc<CoreBeat>,
    plugin_id: u32,
    policy: OverrunPolicy,
    /// The newest generation's stream filter (`filter` in `<name>.toml`, else the plugin's
    /// own).
    filter: Option<StreamFilter>,
    /// The batch mask the engine was last told (see [`PluginSlot::batch_mask`]).
    told_batch: u64,
    /// The records of the batch being delivered (reused).
    recs: Vec<FfiRecord>,
    /// Counters (plain fields of this core's slot; published at batch boundaries).
    pub stats: PluginStats,
}

impl PluginSlot {
    /// An empty slot for the plugin `name`, writing records to `sink`.
    pub fn new(name: &str, core: u32, sink: Sink, drain_timeout: u64) -> PluginSlot {
        PluginSlot {
            shared: Rc::new(SlotShared {
                name: name.to_string(),
                sink: RefCell::new(sink),
                stats: Cell::new(PluginStats::default()),
                live: RefCell::new(Vec::new()),
            }),
            core,
            gens: Vec::new(),
            newest: None,
            drain_timeout,
            next_drain: u64::MAX,
            retire_idle: false,
            beat: Arc::new(CoreBeat::default()),
            plugin_id: 0,
            policy: OverrunPolicy::Warn,
            filter: None,
            told_batch: 0,
            recs: Vec::new(),
            stats: PluginStats::default(),
        }
    }

    /// What the plugin host keeps of this slot.
    pub fn shared(&self) -> Rc<SlotShared> {
        Rc::clone(&self.shared)
    }

    /// Puts the slot's callbacks under a watchdog's time budget: `beat` is the core's
    /// heartbeat, `plugin_id` the plugin's id in the watchdog's name table.
    pub fn set_budget(&mut self, beat: Arc<CoreBeat>, plugin_id: u32, policy: OverrunPolicy) {
        self.beat = beat;
        self.plugin_id = plugin_id;
        self.policy = policy;
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Versions of the generations still running, oldest first.
    pub fn live_generations(&self) -> Vec<String> {
        self.gens
            .iter()
            .filter(|g| g.obj.is_some())
            .map(|g| g.version.clone())
            .collect()
    }

    /// Publishes the counters and live generations to [`SlotShared`].
    fn publish(&mut self) {
        if let Ok(s) = self.shared.sink.try_borrow() {
            self.stats.records = s.records;
            self.stats.records_lost = s.records_lost;
        }
        self.shared.stats.set(self.stats.clone());
    }

    fn publish_live(&mut self) {
        *self.shared.live.borrow_mut() = self.live_generations();
        self.publish();
    }

    /// Makes this core's instance from `lib` and makes it the newest generation; older ones
    /// drain from the next `arm`. Returns the constructor's error, or libpcap's for a bad
    /// `filter` in `config`, leaving the slot as it was.
    ///
    /// This runs the constructor on the calling thread; the plugin host runs it on a
    /// constructor thread ([`super::construct`]) and installs with [`PluginSlot::install_built`].
    pub fn install(&mut self, lib: &Library, config: &str) -> Result<Subscriptions, String> {
        let inst = super::construct::Instance::make(lib, self.core, config)
            .map_err(|e| format!("{}: {e}", self.name()))?;
        self.install_built(lib, config, inst)
    }

    /// Makes `inst`, made by `lib`'s constructor for this core, the newest generation (as
    /// [`PluginSlot::install`]). On a bad `filter` in `config` the instance is dropped.
    pub fn install_built(
        &mut self,
        lib: &Library,
        config: &str,
        inst: super::construct::Instance,
    ) -> Result<Subscriptions, String> {
        let mut filter = match filter::toml_filter(config) {
            Some(expr) => match StreamFilter::new(&expr) {
                Ok(f) => Some(f),
                Err(e) => {
                    inst.destroy();
                    return Err(format!("{}: {e}", self.name()));
                }
            },
            None => None,
        };
        let (obj, subs, own_filter) = inst.into_parts();
        // The plugin's own filter (a C plugin's mtcp_bind_monitor_filter, a Rust plugin's
        // Subscriptions::filter), unless <name>.toml set one.
        if filter.is_none() {
            if let Some(expr) = own_filter {
                match StreamFilter::new(&expr) {
                    Ok(f) => filter = Some(f),
                    Err(e) => {
                        // SAFETY: the instance is dropped once, by its own library's code,
                        // never used again.
                        unsafe { (obj.vtable.drop)(obj.this) };
                        return Err(format!("{}: {e}", self.name()));
                    }
                }
            }
        }
        // Older generations stop taking new flows; `arm` starts their drain clocks.
        self.retire_idle = true;
        self.gens.push(Generation {
            obj: Some(obj),
            version: lib.version(),
            subs,
            on_batch: lib.ext().map(|e| e.on_batch),
            flows: 0,
            disabled: false,
            drain_deadline: None,
        });
        self.newest = Some(self.gens.len() - 1);
        self.filter = filter;
        self.stats.generations += 1;
        self.publish_live();
        Ok(subs)
    }

    /// The plugin file was removed: new flows no longer go to it; open ones drain.
    pub fn remove(&mut self) {
        self.newest = None;
        self.retire_idle = true;
    }

    /// Runs right after a change, with the engine's context: retires old generations that
    /// own no flow, starts the drain clocks and arms a core timer for the earliest deadline,
    /// so that draining happens on time even if the plugin gets no event meanwhile; tells
    /// the engine which events it may hold for this slot's batches.
    pub fn arm(&mut self, cx: &mut Cx<'_>) {
        self.drain_due(cx);
        if self.next_drain != u64::MAX {
            let _ = cx.set_core_timer(self.next_drain.saturating_sub(cx.now()), DRAIN_TIMER);
        }
        self.tell_batch(cx);
    }

    /// The events the engine may hold for this slot: those every running generation takes
    /// in batches (a generation of API 1 takes none).
    pub fn batch_mask(&self) -> u64 {
        let mut mask = u64::MAX;
        let mut any = false;
        for g in self.gens.iter().filter(|g| g.running()) {
            any = true;
            mask &= if g.on_batch.is_some() {
                g.subs.batch_mask()
            } else {
                0
            };
        }
        if any {
            mask
        } else {
            0
        }
    }

    fn tell_batch(&mut self, cx: &mut Cx<'_>) {
        let mask = self.batch_mask();
        if mask != self.told_batch {
            self.told_batch = mask;
            cx.set_batch_mask(mask);
        }
    }

    /// The newest generation's stream filter, for the flows that start from now on.
    pub fn filter(&self) -> Option<StreamFilter> {
        self.filter.clone()
    }

    /// The engine subscriptions for this slot: what the plugin asked for, plus `ConnEnd`
    /// at both hooks so that the slot knows when each flow ends, and the batch mask.
    pub fn engine_subscriptions(&self) -> Subscriptions {
        let mut s = self.newest.map(|g| self.gens[g].subs).unwrap_or_default();
        s = s
            .with(EventKind::ConnEnd, Hook::Snd)
            .with(EventKind::ConnEnd, Hook::Rcv);
        s.set_batch_mask(self.batch_mask());
        s
    }

    /// One call into generation `g`: the time budget, the running-context guard, counters,
    /// and what a panic or an overrun does. `batch` is the batch being delivered, if any.
    /// `None`: not called (the generation retired or is disabled).
    fn call(
        &mut self,
        g: usize,
        cx: &mut Cx<'_>,
        batch: *mut FfiBatch,
        f: impl FnOnce(&MonitorObj, *mut HostCx) -> i32,
    ) -> Option<i32> {
        let gen = &mut self.gens[g];
        let obj = gen.obj.as_ref()?;
        if gen.disabled {
            return None;
        }
        let mut call = CallCtx {
            cx,
            sink: &self.shared.sink,
            name: &self.shared.name,
            batch,
        };
        let mut host = HostCx {
            ctx: (&mut call as *mut CallCtx<'_, '_>).cast::<c_void>(),
            api: &HOST_API,
        };
        let token = self.beat.enter(self.plugin_id);
        let r = {
            let _running = ffi::enter(host.ctx);
            f(obj, &mut host)
        };
        let over = self.beat.exit(token);
        self.stats.calls += 1;
        if over {
            self.stats.overruns += 1;
            if self.policy == OverrunPolicy::Disable && !gen.disabled {
                gen.disabled = true;
                eprintln!(
                    "flowpeek: plugin {} ({}) ran past its time budget on core {}: disabled on this core (--on-overrun disable); the host and other plugins go on",
                    self.shared.name, gen.version, self.core
                );
            }
        }
        if r == status::PANICKED {
            self.stats.failures += 1;
            gen.disabled = true;
            eprintln!(
                "flowpeek: plugin {} ({}) panicked on core {}: disabled on this core; the host and other plugins go on",
                self.shared.name, gen.version, self.core
            );
        }
        Some(r)
    }

    fn deliver(&mut self, g: usize, cx: &mut Cx<'_>, ev: &Event) {
        let fev: FfiEvent = ffi::to_ffi(ev);
        // SAFETY: `obj` is a live instance of generation `g`; `host` and `fev` outlive the call.
        let called = self.call(g, cx, std::ptr::null_mut(), |obj, host| unsafe {
            (obj.vtable.on_event)(obj.this, host, &fev)
        });
        self.stats.events += u64::from(called.is_some());
    }

    /// Delivers `self.recs` (records of generation `g`) in one call, or one call per record
    /// for a generation without batches; returns how many were delivered before a cut.
    fn deliver_records(&mut self, g: usize, cx: &mut Cx<'_>) -> usize {
        let n = self.recs.len();
        let Some(on_batch) = self.gens[g].on_batch else {
            for i in 0..n {
                let fev = self.recs[i].ev;
                // SAFETY: as in `deliver`.
                let called = self.call(g, cx, std::ptr::null_mut(), |obj, host| unsafe {
                    (obj.vtable.on_event)(obj.this, host, &fev)
                });
                self.stats.events += u64::from(called.is_some());
                if cx.cut() {
                    return i + 1;
                }
            }
            return n;
        };
        let recs = std::mem::take(&mut self.recs);
        let mut batch = FfiBatch {
            records: recs.as_ptr(),
            len: n,
            cut: 0,
            done: n,
        };
        let b: *mut FfiBatch = &mut batch;
        // SAFETY: `obj` is a live instance of generation `g`; `batch` and the records it
        // points to outlive the call and are not touched by the host meanwhile, except
        // `cut`, written through `b` by the host functions.
        let r = self.call(g, cx, b, |obj, host| unsafe { on_batch(obj.this, host, b) });
        self.recs = recs;
        let done = match r {
            Some(status::OK) => batch.done.min(n),
            // Panicked (disabled now): the rest of the batch is dropped with the instance.
            Some(_) => batch.done.min(n),
            None => 0,
        };
        self.stats.events += done as u64;
        let done = if r == Some(status::OK) { done } else { n };
        if cx.cut() {
            done.max(1)
        } else {
            n
        }
    }

    /// The generation owning `h`, giving a flow seen for the first time to the newest one
    /// (`None`: the flow is detached from this plugin).
    #[inline]
    fn owner(&mut self, cx: &mut Cx<'_>, ev: &Event) -> Option<(usize, u32)> {
        let mut tag = cx.event_host_tag(ev);
        if tag & GEN_MASK == 0 {
            tag = match self.newest {
                Some(g) => {
                    self.gens[g].flows += 1;
                    g as u32 + 1
                }
                None => DETACHED,
            };
            let _ = cx.set_host_tag(ev.flow, tag);
        }
        if tag & GEN_MASK == DETACHED {
            return None;
        }
        Some(((tag & GEN_MASK) as usize - 1, tag))
    }

    /// Retires generation `g` when it is no longer the newest and owns no flow.
    fn maybe_retire(&mut self, g: usize, cx: &mut Cx<'_>) {
        if Some(g) == self.newest || self.gens[g].flows != 0 || self.gens[g].obj.is_none() {
            return;
        }
        self.retire(g, cx);
    }

    fn retire(&mut self, g: usize, cx: &mut Cx<'_>) {
        // SAFETY: as in `deliver`.
        self.call(g, cx, std::ptr::null_mut(), |obj, host| unsafe {
            (obj.vtable.shutdown)(obj.this, host)
        });
        if let Some(obj) = self.gens[g].obj.take() {
            // SAFETY: the instance is dropped once, by its own library's code.
            unsafe { (obj.vtable.drop)(obj.this) };
        }
        self.stats.retired += 1;
        self.publish_live();
        self.tell_batch(cx);
    }

    /// Per-call housekeeping: idle old generations retire, due drains run.
    #[inline]
    fn drain_due(&mut self, cx: &mut Cx<'_>) {
        if self.retire_idle {
            self.retire_idle = false;
            let deadline = cx.now().saturating_add(self.drain_timeout);
            for g in 0..self.gens.len() {
                let gen = &mut self.gens[g];
                if Some(g) != self.newest && gen.obj.is_some() && gen.drain_deadline.is_none() {
                    gen.drain_deadline = Some(deadline);
                    self.next_drain = self.next_drain.min(deadline);
                }
                self.maybe_retire(g, cx);
            }
        }
        if cx.now() >= self.next_drain {
            self.drain(cx);
        }
    }

    /// Ends the flows of generations whose drain deadline passed.
    fn drain(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        self.next_drain = u64::MAX;
        for g in 0..self.gens.len() {
            let due =
                self.gens[g].obj.is_some() && self.gens[g].drain_deadline.is_some_and(|d| now >= d);
            if !due {
                continue;
            }
            let mine = g as u32 + 1;
            for h in cx.flows_tagged(|t| t & GEN_MASK == mine) {
                for side in Side::BOTH {
                    let ev = Event {
                        kind: EventKind::ConnEnd,
                        side: EventSide::One(side),
                        hook: Hook::Snd,
                        flow: h,
                        detail: Detail::End(EndReason::Reloaded),
                    };
                    self.deliver(g, cx, &ev);
                }
                let _ = cx.set_host_tag(h, DETACHED);
                self.stats.drained_flows += 1;
            }
            self.gens[g].flows = 0;
            self.retire(g, cx);
        }
    }

    /// Gives every running generation its `shutdown` (the host stops).
    pub fn shutdown(&mut self, cx: &mut Cx<'_>) {
        for g in 0..self.gens.len() {
            if self.gens[g].obj.is_some() {
                self.retire(g, cx);
            }
        }
        self.newest = None;
        self.shared.flush();
        self.publish_live();
    }

    /// Flushes the record sink.
    pub fn flush(&mut self) {
        self.shared.flush();
        self.publish();
    }

    /// Installs the newest generation into the engine's setup (user events).
    fn setup_newest(&mut self, setup: &mut Setup<'_>) {
        let Some(g) = self.newest else { return };
        let Some(obj) = self.gens[g].obj.as_ref() else {
            return;
        };
        let mut ctx = SetupCtx { setup };
        let mut raw = SetupCx {
            ctx: (&mut ctx as *mut SetupCtx<'_, '_>).cast(),
            define_event: setup_define_event,
            subscribe: setup_subscribe,
        };
        // SAFETY: a live instance; `raw` outlives the call.
        let r = unsafe { (obj.vtable.setup)(obj.this, &mut raw) };
        if r == status::PANICKED {
            self.stats.failures += 1;
            self.gens[g].disabled = true;
        }
    }
}

struct SetupCtx<'s, 'a> {
    setup: &'s mut Setup<'a>,
}

unsafe extern "C" fn setup_define_event(
    ctx: *mut c_void,
    base: u32,
    filter: FfiFilterSlot,
    arg: u64,
) -> i64 {
    // SAFETY: `ctx` is the SetupCtx built in `setup_newest` for this call.
    let c = unsafe { &mut *ctx.cast::<SetupCtx<'_, '_>>() };
    let Ok(base) = ffi::event_kind(base) else {
        return i64::from(codes::Errno::Inval.ret());
    };
    let filter = filter.filter.map(|f| Filter::Foreign {
        key: f as usize,
        call: Box::new(move |cx: &mut Cx<'_>, ev: &Event, arg: u64| {
            let sink = RefCell::new(Sink::discard());
            let mut call = CallCtx {
                cx,
                sink: &sink,
                name: "filter",
                batch: std::ptr::null_mut(),
            };
            let mut host = HostCx {
                ctx: (&mut call as *mut CallCtx<'_, '_>).cast(),
                api: &HOST_API,
            };
            let fev = ffi::to_ffi(ev);
            let _running = ffi::enter(host.ctx);
            // SAFETY: the plugin's filter is called with live pointers for this call only.
            unsafe { f(&mut host, &fev, arg) == 1 }
        }),
    });
    match c.setup.define_event(base, filter, arg) {
        Ok(kind) => i64::from(ffi::event_code(kind)),
        Err(e) => -i64::from(e.code()),
    }
}

unsafe extern "C" fn setup_subscribe(ctx: *mut c_void, event: u32, hook: u8) -> i32 {
    // SAFETY: as in `setup_define_event`.
    let c = unsafe { &mut *ctx.cast::<SetupCtx<'_, '_>>() };
    let Ok(hook) = Hook::try_from(hook) else {
        return codes::Errno::Inval.ret();
    };
    match ffi::event_kind(event) {
        Ok(e) => {
            c.setup.subscribe(e, hook);
            0
        }
        Err(e) => -e.code(),
    }
}

/// The engine's view of a slot: the engine owns it; the plugin host reaches it through
/// [`Monitor::as_any_mut`].
pub struct SlotMonitor(pub PluginSlot);

impl Monitor for SlotMonitor {
    fn name(&self) -> &str {
        "plugin"
    }

    fn subscriptions(&self) -> Subscriptions {
        self.0.engine_subscriptions()
    }

    fn filter(&self) -> Option<StreamFilter> {
        self.0.filter()
    }

    fn setup(&mut self, setup: &mut Setup<'_>) {
        self.0.setup_newest(setup);
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let slot = &mut self.0;
        slot.drain_due(cx);
        if ev.kind == EventKind::Orphan {
            if let Some(g) = slot.newest {
                slot.deliver(g, cx, ev);
            }
            return;
        }
        let Some((g, tag)) = slot.owner(cx, ev) else {
            return;
        };
        let wanted = ev.kind != EventKind::ConnEnd
            || slot.gens[g].subs.contains(EventKind::ConnEnd, ev.hook);
        if wanted {
            slot.deliver(g, cx, ev);
        }
        if ev.kind == EventKind::ConnEnd && ev.hook == Hook::Snd {
            let ends = (tag >> ENDS_SHIFT) + 1;
            let _ = cx.set_host_tag(ev.flow, (tag & GEN_MASK) | (ends << ENDS_SHIFT));
            if ends >= 2 {
                slot.gens[g].flows = slot.gens[g].flows.saturating_sub(1);
                slot.maybe_retire(g, cx);
            }
        }
    }

    fn on_batch(&mut self, cx: &mut Cx<'_>, events: &[Held]) -> usize {
        let slot = &mut self.0;
        slot.drain_due(cx);
        // One call per run of consecutive records of one generation (nearly always: the
        // whole batch). `start` is the index of the run's first record; a record of a
        // detached flow ends the run and is passed over.
        let mut run: Option<(usize, usize)> = None;
        slot.recs.clear();
        for (i, h) in events.iter().enumerate() {
            let owner = slot.owner(cx, &h.ev).map(|(g, _)| g);
            if let Some((g, start)) = run {
                if owner != Some(g) {
                    let done = if slot.gens[g].running() {
                        slot.deliver_records(g, cx)
                    } else {
                        slot.recs.len()
                    };
                    if cx.cut() {
                        return start + done;
                    }
                    slot.recs.clear();
                    run = None;
                }
            }
            let Some(o) = owner else { continue };
            if run.is_none() {
                run = Some((o, i));
            }
            slot.recs.push(ffi::to_record(h));
        }
        if let Some((g, start)) = run {
            if slot.gens[g].running() {
                let done = slot.deliver_records(g, cx);
                if cx.cut() {
                    return start + done;
                }
            }
        }
        events.len()
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let slot = &mut self.0;
        slot.drain_due(cx);
        if flow.is_none() && tag == DRAIN_TIMER {
            return;
        }
        let g = match flow {
            Some(h) => match cx.host_tag(h) {
                Ok(t) if t & GEN_MASK != 0 && t & GEN_MASK != DETACHED => {
                    (t & GEN_MASK) as usize - 1
                }
                _ => return,
            },
            // Core timers go to the newest generation.
            None => match slot.newest {
                Some(g) => g,
                None => return,
            },
        };
        let (has, f) = flow.map_or((0, 0), |h| (1, h.0));
        // SAFETY: as in `deliver`.
        let called = slot.call(g, cx, std::ptr::null_mut(), |obj, host| unsafe {
            (obj.vtable.on_timer)(obj.this, host, has, f, tag)
        });
        slot.stats.events += u64::from(called.is_some());
    }

    fn batch_done(&mut self, cx: &mut Cx<'_>) {
        self.0.tell_batch(cx);
        self.0.publish();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}
