//! One plugin on one core: its generations (one per load of its file), which flows each
//! generation owns, draining and retiring old generations, and panics.
//!
//! A flow belongs to the generation that saw its first event until the flow ends; new
//! flows go to the newest generation. An old generation retires when its last flow ends,
//! or at its drain deadline, when its remaining flows get `ConnEnd` (reason `Reloaded`)
//! and leave it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use flowpeek_plugin_api::abi::{status, FfiEvent, FfiFilterSlot, HostCx, MonitorObj, SetupCx};
use flowpeek_plugin_api::codes;

use super::budget::{CoreBeat, OverrunPolicy};
use super::ffi::{self, CallCtx, Sink, HOST_API};
use super::load::Library;
use crate::filter::{self, StreamFilter};
use crate::flow::{
    Cx, Detail, EndReason, Event, EventKind, EventSide, Filter, FlowHandle, Hook, Monitor, Setup,
    Side, Subscriptions,
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
    }
}

struct Generation {
    obj: Option<MonitorObj>,
    version: String,
    subs: Subscriptions,
    flows: HashSet<u64>,
    disabled: bool,
    drain_deadline: Option<u64>,
}

/// Tag layout in the engine's per-(monitor, flow) host tag: generation + 1 in the low bits,
/// the number of sides whose `ConnEnd` passed in bits 24–25.
const GEN_MASK: u32 = 0x00ff_ffff;
const DETACHED: u32 = GEN_MASK;
const ENDS_SHIFT: u32 = 24;
/// The core-timer tag the slot uses for drain deadlines (reserved: a plugin's own core
/// timer with this tag is not delivered).
pub const DRAIN_TIMER: u64 = u64::MAX;

/// A plugin hosted as one engine monitor.
pub struct PluginSlot {
    name: String,
    core: u32,
    gens: Vec<Generation>,
    newest: Option<usize>,
    sink: Sink,
    drain_timeout: u64,
    /// The earliest drain deadline of any generation (u64::MAX: none), checked per event.
    next_drain: u64,
    /// A generation stopped being the newest: retire it at the next callback if it owns no
    /// flow (installing has no engine context to retire with).
    retire_idle: bool,
    /// The core's heartbeat for the callback time budget, this plugin's id in it, and the
    /// policy for callbacks past the budget.
    beat: Arc<CoreBeat>,
    plugin_id: u32,
    policy: OverrunPolicy,
    /// The newest generation's stream filter (`filter` in `<name>.toml`).
    filter: Option<StreamFilter>,
    /// Counters.
    pub stats: PluginStats,
}

impl PluginSlot {
    /// An empty slot for the plugin `name`, writing records to `sink`.
    pub fn new(name: &str, core: u32, sink: Sink, drain_timeout: u64) -> PluginSlot {
        PluginSlot {
            name: name.to_string(),
            core,
            gens: Vec::new(),
            newest: None,
            sink,
            drain_timeout,
            next_drain: u64::MAX,
            retire_idle: false,
            beat: Arc::new(CoreBeat::default()),
            plugin_id: 0,
            policy: OverrunPolicy::Warn,
            filter: None,
            stats: PluginStats::default(),
        }
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
        &self.name
    }

    /// Versions of the generations still running, oldest first.
    pub fn live_generations(&self) -> Vec<String> {
        self.gens
            .iter()
            .filter(|g| g.obj.is_some())
            .map(|g| g.version.clone())
            .collect()
    }

    /// Makes this core's instance from `lib` and makes it the newest generation; older ones
    /// drain from the next `arm`. Returns the constructor's error, or libpcap's for a bad
    /// `filter` in `config`, leaving the slot as it was.
    ///
    /// This runs the constructor on the calling thread; the plugin host runs it on a
    /// constructor thread ([`super::construct`]) and installs with [`PluginSlot::install_built`].
    pub fn install(&mut self, lib: &Library, config: &str) -> Result<Subscriptions, String> {
        let inst = super::construct::Instance::make(lib, self.core, config)
            .map_err(|e| format!("{}: {e}", self.name))?;
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
                    return Err(format!("{}: {e}", self.name));
                }
            },
            None => None,
        };
        let (obj, subs, own_filter) = inst.into_parts();
        // A C plugin's mtcp_bind_monitor_filter, unless <name>.toml overrides it (libpcap
        // checked it when it was bound).
        if filter.is_none() {
            filter = own_filter.and_then(|e| StreamFilter::new(&e).ok());
        }
        // Older generations stop taking new flows; `arm` starts their drain clocks.
        self.retire_idle = true;
        self.gens.push(Generation {
            obj: Some(obj),
            version: lib.version(),
            subs,
            flows: HashSet::new(),
            disabled: false,
            drain_deadline: None,
        });
        self.newest = Some(self.gens.len() - 1);
        self.filter = filter;
        self.stats.generations += 1;
        Ok(subs)
    }

    /// The plugin file was removed: new flows no longer go to it; open ones drain.
    pub fn remove(&mut self) {
        self.newest = None;
        self.retire_idle = true;
    }

    /// Runs right after a change, with the engine's context: retires old generations that
    /// own no flow, starts the drain clocks and arms a core timer for the earliest deadline,
    /// so that draining happens on time even if the plugin gets no event meanwhile.
    pub fn arm(&mut self, cx: &mut Cx<'_>) {
        self.drain_due(cx);
        if self.next_drain != u64::MAX {
            let _ = cx.set_core_timer(self.next_drain.saturating_sub(cx.now()), DRAIN_TIMER);
        }
    }

    /// The newest generation's stream filter, for the flows that start from now on.
    pub fn filter(&self) -> Option<StreamFilter> {
        self.filter.clone()
    }

    /// The engine subscriptions for this slot: what the plugin asked for, plus `ConnEnd`
    /// at both hooks so that the slot knows when each flow ends.
    pub fn engine_subscriptions(&self) -> Subscriptions {
        let mut s = self.newest.map(|g| self.gens[g].subs).unwrap_or_default();
        s = s
            .with(EventKind::ConnEnd, Hook::Snd)
            .with(EventKind::ConnEnd, Hook::Rcv);
        s
    }

    fn call(&mut self, g: usize, cx: &mut Cx<'_>, f: impl FnOnce(&MonitorObj, *mut HostCx) -> i32) {
        let gen = &mut self.gens[g];
        let Some(obj) = gen.obj.as_ref() else { return };
        if gen.disabled {
            return;
        }
        let before = self.sink.records;
        let mut call = CallCtx {
            cx,
            sink: &mut self.sink,
            name: &self.name,
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
        self.stats.events += 1;
        self.stats.records += self.sink.records - before;
        self.stats.records_lost = self.sink.records_lost;
        if over {
            self.stats.overruns += 1;
            if self.policy == OverrunPolicy::Disable && !gen.disabled {
                gen.disabled = true;
                eprintln!(
                    "flowpeek: plugin {} ({}) ran past its time budget on core {}: disabled on this core (--on-overrun disable); the host and other plugins go on",
                    self.name, gen.version, self.core
                );
            }
        }
        if r == status::PANICKED {
            self.stats.failures += 1;
            gen.disabled = true;
            eprintln!(
                "flowpeek: plugin {} ({}) panicked on core {}: disabled on this core; the host and other plugins go on",
                self.name, gen.version, self.core
            );
        }
    }

    fn deliver(&mut self, g: usize, cx: &mut Cx<'_>, ev: &Event) {
        let fev: FfiEvent = ffi::to_ffi(ev);
        // SAFETY: `obj` is a live instance of generation `g`; `host` and `fev` outlive the call.
        self.call(g, cx, |obj, host| unsafe {
            (obj.vtable.on_event)(obj.this, host, &fev)
        });
    }

    /// Retires generation `g` when it is no longer the newest and owns no flow.
    fn maybe_retire(&mut self, g: usize, cx: &mut Cx<'_>) {
        if Some(g) == self.newest || !self.gens[g].flows.is_empty() || self.gens[g].obj.is_none() {
            return;
        }
        self.retire(g, cx);
    }

    fn retire(&mut self, g: usize, cx: &mut Cx<'_>) {
        // SAFETY: as in `deliver`.
        self.call(g, cx, |obj, host| unsafe {
            (obj.vtable.shutdown)(obj.this, host)
        });
        if let Some(obj) = self.gens[g].obj.take() {
            // SAFETY: the instance is dropped once, by its own library's code.
            unsafe { (obj.vtable.drop)(obj.this) };
        }
        self.stats.retired += 1;
    }

    /// Ends the flows of generations whose drain deadline passed.
    /// Per-callback housekeeping: idle old generations retire, due drains run.
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

    fn drain(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        self.next_drain = u64::MAX;
        for g in 0..self.gens.len() {
            let due =
                self.gens[g].obj.is_some() && self.gens[g].drain_deadline.is_some_and(|d| now >= d);
            if !due {
                continue;
            }
            let flows: Vec<u64> = self.gens[g].flows.drain().collect();
            for f in flows {
                let h = FlowHandle(f);
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
        self.sink.flush();
        self.stats.records_lost = self.sink.records_lost;
    }

    /// Flushes the record sink.
    pub fn flush(&mut self) {
        self.sink.flush();
        self.stats.records_lost = self.sink.records_lost;
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
            let mut sink = Sink::discard();
            let mut call = CallCtx {
                cx,
                sink: &mut sink,
                name: "filter",
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

/// The engine's view of a slot (shared with the runner, which installs generations).
pub struct SlotMonitor(pub Rc<RefCell<PluginSlot>>);

impl Monitor for SlotMonitor {
    fn name(&self) -> &str {
        "plugin"
    }

    fn subscriptions(&self) -> Subscriptions {
        self.0.borrow().engine_subscriptions()
    }

    fn filter(&self) -> Option<StreamFilter> {
        self.0.borrow().filter()
    }

    fn setup(&mut self, setup: &mut Setup<'_>) {
        self.0.borrow_mut().setup_newest(setup);
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let mut slot = self.0.borrow_mut();
        slot.drain_due(cx);
        if ev.kind == EventKind::Orphan {
            if let Some(g) = slot.newest {
                slot.deliver(g, cx, ev);
            }
            return;
        }
        let h = ev.flow;
        let mut tag = cx.event_host_tag(ev);
        if tag & GEN_MASK == 0 {
            tag = match slot.newest {
                Some(g) => {
                    slot.gens[g].flows.insert(h.0);
                    g as u32 + 1
                }
                None => DETACHED,
            };
            let _ = cx.set_host_tag(h, tag);
        }
        if tag & GEN_MASK == DETACHED {
            return;
        }
        let g = (tag & GEN_MASK) as usize - 1;
        let wanted = ev.kind != EventKind::ConnEnd
            || slot.gens[g].subs.contains(EventKind::ConnEnd, ev.hook);
        if wanted {
            slot.deliver(g, cx, ev);
        }
        if ev.kind == EventKind::ConnEnd && ev.hook == Hook::Snd {
            let ends = (tag >> ENDS_SHIFT) + 1;
            let _ = cx.set_host_tag(h, (tag & GEN_MASK) | (ends << ENDS_SHIFT));
            if ends >= 2 {
                slot.gens[g].flows.remove(&h.0);
                slot.maybe_retire(g, cx);
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let mut slot = self.0.borrow_mut();
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
        slot.call(g, cx, |obj, host| unsafe {
            (obj.vtable.on_timer)(obj.this, host, has, f, tag)
        });
    }
}
