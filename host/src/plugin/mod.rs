//! Monitor plugins: loading them from a directory, one instance per core, hot reload.
//!
//! Owns: the checks and private copies before `dlopen`, abi_stable's layout check, the API
//! version and name checks ([`load`], [`elf`], the test load in a child process: [`probe`]),
//! one file per plugin name ([`PluginHost`]), the host side of the ABI ([`ffi`]), C plugins
//! written against mOS 0.3's API (`plugin-api/c/include/mos_api.h`, hosted by [`cabi`] as
//! instances of the same ABI, so everything below applies to them), generations and draining
//! ([`slot`]), and the directory watcher that turns file changes into new generations as soon
//! as a write is complete (closed after writing, renamed into place), else once the file has
//! been still for [`SETTLE`], applied by the worker at its safe point between batches
//! ([`PluginHost::poll`]).
//!
//! Every load, reload (old generation → new, with the file's CRC-32 and modification time)
//! and failed load gives one stderr line, printed by core 0's host; failures reach core 0's
//! report (`load_failures` in `--stats`) whichever core met them.
//!
//! Must not: touch packets, or block the data path (libraries are opened on the watcher's
//! thread, instances made on a constructor thread per load and core, [`construct`]; the
//! worker only swaps in what is ready).
//!
//! What a plugin can and cannot do to the host: a panic in any callback is caught by the SDK
//! and disables that instance on that core (counted); bad handles and arguments get errno
//! values; a callback that runs past the time budget is reported and counted, and disabled
//! with `--on-overrun disable` ([`budget`]). A plugin runs in-process: one that segfaults, aborts or corrupts memory takes the
//! host down with it; there is no isolation beyond the ABI checks.
#![allow(unsafe_code)] // dlopen and the FFI boundary; each block says why it is sound

pub mod budget;
pub mod cabi;
pub mod construct;
pub mod elf;
pub mod ffi;
pub mod load;
pub mod probe;
pub mod slot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::ModifyKind;
use notify::{EventKind as FsEvent, RecursiveMode, Watcher};

use crate::flow::{Engine, Monitor};
pub use budget::{CallBudget, OverrunPolicy};
use budget::{CoreBeat, Names, Registrar, Watchdog};
use construct::Built;
pub use load::{Library, LoadError};
pub use slot::{PluginSlot, PluginStats, SlotMonitor, SlotShared};

/// A change of the plugin directory, ready to apply.
pub enum Update {
    /// A file was loaded (off the data path).
    Loaded {
        /// The file.
        file: PathBuf,
        /// The library.
        lib: Library,
        /// The text of `<stem>.toml` next to it, or empty.
        config: String,
    },
    /// A file could not be loaded; the running generation (if any) stays.
    Failed {
        /// The file.
        file: PathBuf,
        /// Why.
        error: LoadError,
    },
    /// A file was removed or renamed away.
    Removed {
        /// The file.
        file: PathBuf,
    },
}

impl Update {
    /// The file it is about.
    pub fn file(&self) -> &Path {
        match self {
            Update::Loaded { file, .. }
            | Update::Failed { file, .. }
            | Update::Removed { file } => file,
        }
    }
}

/// Why the plugin directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Missing or unreadable directory.
    #[error("plugin directory {dir}: {source}; {}", dir_fix(.source))]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The log directory cannot be written.
    #[error("log directory {dir}: {source}; choose a writable --log-dir")]
    LogDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The directory cannot be watched.
    #[error("cannot watch {dir} for changes: {detail}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        detail: String,
    },
}

/// What to do about a plugin directory that cannot be listed.
fn dir_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "the user running flowpeek cannot list it: give that user read and search permission on it and its parents (chmod u+rx, or chown it to that user)"
        }
        _ => "create it or point --plugins at an existing directory",
    }
}

/// Whether `path` looks like a plugin library.
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The plugin's configuration: `<name>.toml` beside the library (`name` as the plugin
/// declares it), else `<file stem>.toml`, else empty.
fn config_for(file: &Path, name: &str) -> String {
    let by_name = file.with_file_name(format!("{name}.toml"));
    std::fs::read_to_string(by_name)
        .or_else(|_| std::fs::read_to_string(file.with_extension("toml")))
        .unwrap_or_default()
}

/// How long a plugin file must see no directory event before it is loaded when no event said
/// its write is complete: a `cp`, `cat >`, `install` or `rsync` in progress writes far more
/// often than this. A close after writing or a rename into place loads at once.
pub const SETTLE: Duration = Duration::from_millis(250);

fn load_update(file: PathBuf) -> Update {
    match load::load(&file) {
        Ok(lib) => Update::Loaded {
            config: config_for(&file, &lib.name()),
            file,
            lib,
        },
        Err(error) => Update::Failed { file, error },
    }
}

struct Entry {
    file: PathBuf,
    /// What the host reads of the slot without the engine (the engine owns the slot).
    slot: Rc<SlotShared>,
    monitor: usize,
    /// The file was removed: its generations drain, and its name is free for another file.
    removed: bool,
}

/// The plugins of one core and the watcher of their directory.
pub struct PluginHost {
    log_dir: PathBuf,
    core: u32,
    drain_timeout: u64,
    entries: Vec<Entry>,
    rx: Receiver<(Update, Instant)>,
    /// This core's heartbeat, the plugin-name table and the overrun policy (time budget).
    beat: Arc<CoreBeat>,
    names: Arc<Names>,
    policy: OverrunPolicy,
    /// Constructor threads ([`construct`]): their beats, and what they send back.
    registrar: Registrar,
    built_tx: Sender<Built>,
    built_rx: Receiver<Built>,
    /// Loads started (each load's number), the newest load or removal of each file (an
    /// older load that returns later is dropped), and when each reload's event was seen.
    loads: u64,
    latest: BTreeMap<PathBuf, u64>,
    seen: BTreeMap<u64, Instant>,
    /// Keeps the watcher alive for a host opened on its own ([`PluginHost::open`]).
    _set: Option<Box<PluginSet>>,
    /// Messages about files that failed to load, in order.
    pub failures: Vec<String>,
    /// For each reload applied at the safe point: the time from the directory event to the
    /// new generation taking traffic.
    pub reload_latencies: Vec<Duration>,
}

/// Each core's channel, with its core number (failures go to core 0, whose report
/// `--stats` reads).
type Subscribers = Arc<Mutex<Vec<(u32, Sender<(Update, Instant)>)>>>;

/// The plugins of a directory, opened once and shared by the hosts of every core: each core
/// makes its own instances from the same libraries, and every reload reaches every core.
pub struct PluginSet {
    log_dir: PathBuf,
    drain_timeout: u64,
    initial: Vec<(PathBuf, Option<Library>, String)>,
    failures: Vec<String>,
    subscribers: Subscribers,
    watchdog: Watchdog,
    watching: Option<Watching>,
}

impl Drop for PluginSet {
    /// Stops watching, then waits (boundedly) for a load the loader thread is in: a load
    /// cut short by the process's exit would leave its private directory behind.
    fn drop(&mut self) {
        if let Some(w) = self.watching.take() {
            drop(w.watcher);
            if let Ok(done) = w.loader_done.into_inner() {
                let _ = done.recv_timeout(LOADER_END_WAIT);
            }
        }
    }
}

impl PluginSet {
    /// Loads every plugin in `dir` (file name order) and, with `watch`, watches it.
    pub fn open(
        dir: &Path,
        log_dir: &Path,
        drain_timeout: u64,
        watch: bool,
    ) -> Result<PluginSet, HostError> {
        // Absolute, as the watcher names the files its events touch: a file loaded at start
        // and the same file reloaded must have one name (symlinks are kept as given).
        let absolute = std::path::absolute(dir).map_err(|source| HostError::Dir {
            dir: dir.into(),
            source,
        })?;
        let dir = absolute.as_path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| HostError::Dir {
                dir: dir.into(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        files.sort();
        std::fs::create_dir_all(log_dir).map_err(|source| HostError::LogDir {
            dir: log_dir.into(),
            source,
        })?;
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        let watcher = if watch {
            Some(start_watcher(dir, Arc::clone(&subscribers), files.clone())?)
        } else {
            None
        };
        let mut initial = Vec::new();
        let mut failures = Vec::new();
        for file in files {
            let mut update = load_update(file);
            // A file being written as the run starts: give it a few chances to become still.
            for _ in 0..4 {
                match update {
                    Update::Failed { file, error } if error.is_changing() => {
                        std::thread::sleep(SETTLE);
                        update = load_update(file);
                    }
                    other => {
                        update = other;
                        break;
                    }
                }
            }
            match update {
                Update::Loaded { file, lib, config } => initial.push((file, Some(lib), config)),
                Update::Failed { file, error } => {
                    eprintln!("flowpeek: plugin not loaded: {error}");
                    failures.push(error.to_string());
                    initial.push((file, None, String::new()));
                }
                Update::Removed { .. } => {}
            }
        }
        Ok(PluginSet {
            log_dir: log_dir.into(),
            drain_timeout,
            initial,
            failures,
            subscribers,
            watchdog: Watchdog::start(CallBudget::OFF),
            watching: watcher,
        })
    }

    /// Puts every callback under `budget`, kept by a watchdog thread (call before
    /// [`PluginSet::host`]).
    pub fn with_budget(mut self, budget: CallBudget) -> PluginSet {
        self.watchdog = Watchdog::start(budget);
        self
    }

    /// The host of one core and the monitors to build its engine with, in load order.
    pub fn host(&self, core: u32) -> Result<(PluginHost, Vec<Box<dyn Monitor>>), HostError> {
        let (tx, rx) = channel();
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push((core, tx));
            subs.sort_by_key(|s| s.0);
        }
        let (built_tx, built_rx) = channel();
        let mut host = PluginHost {
            log_dir: self.log_dir.clone(),
            core,
            drain_timeout: self.drain_timeout,
            entries: Vec::new(),
            rx,
            beat: self.watchdog.beat(core),
            names: Arc::clone(self.watchdog.names()),
            policy: self.watchdog.budget().policy,
            registrar: self.watchdog.registrar(),
            built_tx,
            built_rx,
            loads: 0,
            latest: BTreeMap::new(),
            seen: BTreeMap::new(),
            _set: None,
            failures: if core == 0 {
                self.failures.clone()
            } else {
                Vec::new()
            },
            reload_latencies: Vec::new(),
        };
        // Every constructor runs on its own thread; the core waits for them before its
        // first packet, but not for one past the budget (it joins later, as a reload).
        let before = host.registrar.slow_constructors();
        let mut waiting: BTreeMap<u64, String> = BTreeMap::new();
        for (file, lib, config) in &self.initial {
            let Some(lib) = lib else { continue };
            if let Some(load) = host.begin(file.clone(), *lib, config.clone()) {
                waiting.insert(load, lib.name());
            }
        }
        let mut built = Vec::new();
        while !waiting.is_empty() {
            match host.built_rx.recv_timeout(Duration::from_millis(2)) {
                Ok(b) => {
                    waiting.remove(&b.load);
                    built.push(b);
                }
                Err(_) => {
                    let slow = host.registrar.slow_constructors();
                    let over = |name: &String| slow.get(name) > before.get(name);
                    if waiting.values().all(over) {
                        break;
                    }
                }
            }
        }
        built.sort_by_key(|b| b.load);
        let mut monitors: Vec<Box<dyn Monitor>> = Vec::new();
        for b in built {
            if let Some(slot) = host.install(b, None)? {
                monitors.push(Box::new(slot));
            }
        }
        Ok((host, monitors))
    }
}

impl PluginHost {
    /// Loads every plugin in `dir` and (with `watch`) starts watching it, for one core.
    /// Returns the host and the monitors to build the engine with, in load order (file name
    /// order).
    pub fn open(
        dir: &Path,
        log_dir: &Path,
        core: u32,
        drain_timeout: u64,
        watch: bool,
    ) -> Result<(PluginHost, Vec<Box<dyn Monitor>>), HostError> {
        let set = PluginSet::open(dir, log_dir, drain_timeout, watch)?;
        let (mut host, monitors) = set.host(core)?;
        host._set = Some(Box::new(set));
        Ok((host, monitors))
    }

    /// Starts a load of `file`: its constructor for this core runs on a thread of its own
    /// ([`construct`]). Returns the load's number (`None`: the thread did not start).
    fn begin(&mut self, file: PathBuf, lib: Library, config: String) -> Option<u64> {
        self.loads += 1;
        let load = self.loads;
        self.latest.insert(file.clone(), load);
        let id = self.names.id(&lib.name());
        let job = construct::Job {
            file: file.clone(),
            lib,
            config,
            core: self.core,
            load,
            plugin_id: id,
        };
        let started = construct::spawn(job, self.registrar.clone(), self.built_tx.clone());
        match started {
            Ok(()) => Some(load),
            Err(e) => {
                self.fail(format!(
                    "{}: cannot start a thread for its constructor: {e}",
                    file.display()
                ));
                None
            }
        }
    }

    /// Installs what a constructor made, unless a newer load or a removal of its file came
    /// meanwhile. A file with no slot yet gets one, returned (the caller adds the monitor);
    /// one with a slot gets a new generation (`engine` is needed then).
    fn install(
        &mut self,
        b: Built,
        engine: Option<&mut Engine>,
    ) -> Result<Option<SlotMonitor>, HostError> {
        let Built {
            file,
            lib,
            config,
            load,
            result,
            slow,
        } = b;
        let name = lib.name();
        if self.latest.get(&file) != Some(&load) {
            if let Ok(inst) = result {
                inst.destroy();
            }
            return Ok(None);
        }
        if slow && self.core == 0 {
            eprintln!(
                "flowpeek: plugin {name}: its constructor returned past the budget; the new load takes traffic now"
            );
        }
        let inst = match result {
            Ok(inst) => inst,
            Err(e) => {
                self.fail(format!("{}: {name}: {e}", file.display()));
                return Ok(None);
            }
        };
        if let Some(i) = self.entries.iter().position(|e| e.file == file) {
            let Some(engine) = engine else {
                inst.destroy();
                return Ok(None);
            };
            let idx = self.entries[i].monitor;
            let mut inst = Some(inst);
            let installed = with_slot(engine, idx, |slot, _| {
                let before = (slot.live_generations(), slot.stats.generations);
                let inst = inst.take()?;
                Some(slot.install_built(&lib, &config, inst).map(|_| before))
            })
            .flatten();
            if let Some(inst) = inst {
                // The engine has no slot at that index (cannot happen): free the instance.
                inst.destroy();
            }
            match installed {
                Some(Ok((old, n))) => {
                    if self.core == 0 {
                        let old = if old.is_empty() {
                            "none running".to_string()
                        } else {
                            old.join(", ")
                        };
                        eprintln!(
                            "flowpeek: plugin {name} reloaded from {}: generation {n} ({old}) -> {} ({name} {}, {}); open flows stay with the old one",
                            file.display(),
                            n + 1,
                            lib.version(),
                            lib.stamp
                        );
                    }
                    self.entries[i].removed = false;
                    let (subs, filter) = with_slot(engine, idx, |slot, _| {
                        (slot.engine_subscriptions(), slot.filter())
                    })
                    .unwrap_or_default();
                    engine.extend_subscriptions(idx, subs);
                    engine.set_monitor_filter(idx, filter);
                    engine.setup_monitor(idx);
                    with_slot(engine, idx, |slot, cx| slot.arm(cx));
                }
                Some(Err(e)) => self.fail(format!("{}: {e}", file.display())),
                None => {}
            }
            return Ok(None);
        }
        // One file per name: both would write <name>.jsonl. A file whose constructor
        // failed has no entry and holds no name.
        if let Some(other) = self
            .entries
            .iter()
            .find(|e| !e.removed && e.file != file && e.slot.name() == name)
        {
            let error = LoadError::DuplicateName {
                path: file,
                name,
                other: other.file.clone(),
            };
            inst.destroy();
            // Every core decides the same; the first one reports it.
            if self.core == 0 {
                self.fail(error.to_string());
            }
            return Ok(None);
        }
        let path = self.log_dir.join(format!("{name}.jsonl"));
        let sink = match ffi::Sink::open(&path) {
            Ok(sink) => sink,
            Err(source) => {
                inst.destroy();
                return Err(HostError::LogDir { dir: path, source });
            }
        };
        let mut slot = PluginSlot::new(&name, self.core, sink, self.drain_timeout);
        slot.set_budget(Arc::clone(&self.beat), self.names.id(&name), self.policy);
        if let Err(e) = slot.install_built(&lib, &config, inst) {
            self.fail(format!("{}: {e}", file.display()));
            return Ok(None);
        }
        if self.core == 0 {
            eprintln!(
                "flowpeek: plugin {name} {} loaded from {} ({}, {})",
                lib.version(),
                file.display(),
                lib.stamp,
                match lib.api() {
                    0 => "C, mos_api.h".to_string(),
                    n => format!("plugin-api {n}"),
                }
            );
        }
        self.entries.push(Entry {
            file,
            slot: slot.shared(),
            monitor: self.entries.len(),
            removed: false,
        });
        Ok(Some(SlotMonitor(slot)))
    }

    /// Installs a finished load now, with the engine: a new file becomes a new monitor.
    fn take_built(&mut self, b: Built, engine: &mut Engine) {
        match self.install(b, Some(engine)) {
            Ok(Some(slot)) => {
                let idx = engine.add_monitor(Box::new(slot));
                if let Some(e) = self.entries.last_mut() {
                    e.monitor = idx;
                }
            }
            Ok(None) => {}
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// A failed load: counted on every core that met it, printed once (by core 0: every
    /// core meets the same failures).
    fn fail(&mut self, msg: String) {
        if self.core == 0 {
            eprintln!("flowpeek: plugin not loaded: {msg}");
        }
        self.failures.push(msg);
    }

    /// The reload safe point: applies what the watcher prepared and installs what
    /// constructor threads finished. Never waits for a constructor. Call between batches.
    pub fn poll(&mut self, engine: &mut Engine) {
        while let Ok((update, seen)) = self.rx.try_recv() {
            match update {
                Update::Loaded { file, lib, config } => {
                    if let Some(load) = self.begin(file, lib, config) {
                        self.seen.insert(load, seen);
                    }
                }
                other => self.apply(other, engine),
            }
        }
        while let Ok(b) = self.built_rx.try_recv() {
            if let Some(seen) = self.seen.remove(&b.load) {
                self.reload_latencies.push(seen.elapsed());
            }
            self.take_built(b, engine);
        }
    }

    /// Applies one update now; a load waits for its constructor (which runs on its own
    /// thread, as at [`PluginHost::poll`]). Tests drive reloads with this directly.
    pub fn apply(&mut self, update: Update, engine: &mut Engine) {
        let file = update.file().to_path_buf();
        let existing = self.entries.iter().position(|e| e.file == file);
        match (update, existing) {
            (Update::Loaded { file, lib, config }, _) => {
                let Some(load) = self.begin(file, lib, config) else {
                    return;
                };
                while let Ok(b) = self.built_rx.recv() {
                    let done = b.load == load;
                    self.seen.remove(&b.load);
                    self.take_built(b, engine);
                    if done {
                        break;
                    }
                }
            }
            (Update::Removed { .. }, Some(i)) => {
                // A load still being made for this file is dropped when it returns.
                self.loads += 1;
                self.latest.insert(file.clone(), self.loads);
                self.entries[i].removed = true;
                with_slot(engine, self.entries[i].monitor, |slot, cx| {
                    slot.remove();
                    slot.arm(cx);
                });
            }
            (Update::Failed { error, .. }, _) => self.fail(error.to_string()),
            (Update::Removed { .. }, None) => {
                self.loads += 1;
                self.latest.insert(file, self.loads);
            }
        }
    }

    /// Gives every instance its `shutdown` and flushes the logs. Call after `Engine::finish`.
    pub fn shutdown(&mut self, engine: &mut Engine) {
        for e in &self.entries {
            with_slot(engine, e.monitor, |slot, cx| slot.shutdown(cx));
        }
    }

    /// Flushes every plugin's records.
    pub fn flush(&mut self) {
        for e in &self.entries {
            e.slot.flush();
        }
    }

    /// Counters per plugin name (summed over the slots of that name), as of the last batch
    /// boundary.
    pub fn stats(&self) -> BTreeMap<String, PluginStats> {
        let mut out: BTreeMap<String, PluginStats> = BTreeMap::new();
        for e in &self.entries {
            out.entry(e.slot.name().to_string())
                .or_default()
                .add(&e.slot.stats());
        }
        // Constructors past the budget, of every core (counted once: by core 0), even of a
        // plugin whose constructor never returned and which has no slot.
        if self.core == 0 {
            for (name, n) in self.registrar.slow_constructors() {
                out.entry(name).or_default().slow_constructors += n;
            }
        }
        out
    }

    /// The versions of each plugin's generations still running.
    pub fn live_generations(&self) -> BTreeMap<String, Vec<String>> {
        self.entries
            .iter()
            .map(|e| (e.slot.name().to_string(), e.slot.live_generations()))
            .collect()
    }
}

/// Runs `f` on engine monitor `idx` as a plugin slot, with its context (`None` if that
/// monitor is not a slot).
fn with_slot<R>(
    engine: &mut Engine,
    idx: usize,
    f: impl FnOnce(&mut PluginSlot, &mut crate::flow::Cx<'_>) -> R,
) -> Option<R> {
    engine.with_monitor_cx(idx, |m, cx| {
        let slot = m.as_any_mut()?.downcast_mut::<SlotMonitor>()?;
        Some(f(&mut slot.0, cx))
    })?
}

/// Sends an update to every core; a failure is reported by the lowest-numbered core only
/// (core 0, whose report carries `load_failures`).
fn broadcast(subscribers: &Subscribers, update: Update, seen: Instant) {
    let Ok(subs) = subscribers.lock() else { return };
    for (_, tx) in subs.iter().skip(1) {
        let copy = match &update {
            Update::Loaded { file, lib, config } => Update::Loaded {
                file: file.clone(),
                lib: *lib,
                config: config.clone(),
            },
            Update::Removed { file } => Update::Removed { file: file.clone() },
            Update::Failed { .. } => continue,
        };
        let _ = tx.send((copy, seen));
    }
    if let Some((_, tx)) = subs.first() {
        let _ = tx.send((update, seen));
    }
}

/// How long the end of a run waits for a load the loader thread is in (the copy in its
/// private directory, the child's test load) before the process goes on to exit.
const LOADER_END_WAIT: Duration = Duration::from_secs(10);

/// The directory watcher and the loader thread's end: the thread drops the sender when
/// it returns, which it does once the watcher is gone and any load it was in is over.
struct Watching {
    watcher: notify::RecommendedWatcher,
    /// In a mutex only for `PluginSet` to be `Sync`: only its drop takes it.
    loader_done: Mutex<Receiver<()>>,
}

/// Watches `dir`; a loader thread opens changed files off the data path and sends updates.
fn start_watcher(
    dir: &Path,
    subscribers: Subscribers,
    initial: Vec<PathBuf>,
) -> Result<Watching, HostError> {
    let (fs_tx, fs_rx) = channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(fs_tx).map_err(|e| HostError::Watch {
        dir: dir.into(),
        detail: e.to_string(),
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| HostError::Watch {
            dir: dir.into(),
            detail: e.to_string(),
        })?;
    let watched = dir.to_path_buf();
    let (done_tx, loader_done) = channel::<()>();
    std::thread::Builder::new()
        .name("flowpeek-plugin-loader".into())
        .spawn(move || {
            watch_loop(&watched, &fs_rx, &subscribers, initial);
            drop(done_tx);
        })
        .map_err(|e| HostError::Watch {
            dir: dir.into(),
            detail: e.to_string(),
        })?;
    Ok(Watching {
        watcher,
        loader_done: Mutex::new(loader_done),
    })
}

/// A plugin file with recent events.
#[derive(Clone, Copy)]
struct Waiting {
    /// Its last event (or the last look at it): reload latency counts from here.
    seen: Instant,
    /// When it is acted on: [`SETTLE`] after an event that leaves the file in the middle of
    /// a write (created, truncated, written, removed), at once after one that marks a write
    /// complete (closed after writing, renamed into place, renamed away).
    due: Instant,
    /// It was already found missing once (or was renamed away): if still missing when
    /// due, it is removed.
    missing_before: bool,
}

impl Waiting {
    /// Seen at `at`, acted on once still for [`SETTLE`].
    fn settling(at: Instant, missing_before: bool) -> Waiting {
        Waiting {
            seen: at,
            due: at + SETTLE,
            missing_before,
        }
    }

    /// Seen at `at`, acted on at once.
    fn due_now(at: Instant, missing_before: bool) -> Waiting {
        Waiting {
            seen: at,
            due: at,
            missing_before,
        }
    }
}

/// Files with recent events. A missing file is removed only if it is still missing, with no
/// event, one [`SETTLE`] later (the event of an `rm` about to be followed by a `cp` may still
/// be on its way), unless it was renamed away, which is final.
type Pending = BTreeMap<PathBuf, Waiting>;

/// How an event leaves a file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Touch {
    /// Not a change (opening, reading: our own loads included).
    Ignore,
    /// Metadata only: prolongs the wait of a file already waiting.
    Prolong,
    /// In the middle of a change: act once the file has been still for [`SETTLE`].
    Changing,
    /// A change just completed (the writer closed it, or a rename put it in place or took
    /// it away): act now. `load` still checks that the file does not change while read.
    Complete,
}

fn touch(kind: &FsEvent) -> Touch {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        FsEvent::Access(AccessKind::Close(AccessMode::Write))
        | FsEvent::Modify(ModifyKind::Name(_)) => Touch::Complete,
        FsEvent::Create(_)
        | FsEvent::Remove(_)
        | FsEvent::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Touch::Changing,
        FsEvent::Modify(ModifyKind::Metadata(_)) => Touch::Prolong,
        _ => Touch::Ignore,
    }
}

/// Notes the plugin files an event touched, at `now`.
fn note(
    pending: &mut Pending,
    ev: notify::Event,
    dir: &Path,
    known: &BTreeSet<PathBuf>,
    now: Instant,
) {
    if ev.need_rescan() {
        // Events were lost: look at every plugin file there is, and every one seen before.
        let listed = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()));
        for p in listed
            .chain(known.iter().cloned())
            .filter(|p| is_plugin_file(p))
        {
            pending.insert(p, Waiting::settling(now, false));
        }
        return;
    }
    let how = touch(&ev.kind);
    for p in ev.paths.into_iter().filter(|p| is_plugin_file(p)) {
        match how {
            Touch::Ignore => {}
            Touch::Prolong => {
                // A file whose write completed stays due (`install` and `cp -p` set modes and
                // times after closing it); one still settling waits longer.
                if let Some(w) = pending.get_mut(&p).filter(|w| w.due > w.seen) {
                    *w = Waiting::settling(now, w.missing_before);
                }
            }
            Touch::Changing => {
                pending.insert(p, Waiting::settling(now, false));
            }
            Touch::Complete => {
                // A rename names both ends: the one that is gone was renamed away.
                let gone = std::fs::symlink_metadata(&p).is_err();
                let renamed_away = gone && matches!(ev.kind, FsEvent::Modify(ModifyKind::Name(_)));
                pending.insert(p, Waiting::due_now(now, renamed_away));
            }
        }
    }
}

/// The metadata of one state of a plugin file: the link itself and the file it resolves to
/// (device, inode, size, mode, modification and change times). One write can give several
/// events (a rename is reported at each end and then as a pair). File times come from a
/// coarse clock (a jiffy), so equal metadata only says the file may be unchanged:
/// [`Loaded::unchanged`] then compares the contents' CRC-32 too.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
struct FileState([u64; 8]);

impl FileState {
    fn of(path: &Path) -> Option<FileState> {
        use std::os::unix::fs::MetadataExt;
        let link = std::fs::symlink_metadata(path).ok()?;
        let file = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| {
            (s as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(n as u64)
        };
        Some(FileState([
            link.ino(),
            ns(link.ctime(), link.ctime_nsec()),
            file.dev(),
            file.ino(),
            file.size(),
            ns(file.mtime(), file.mtime_nsec()),
            ns(file.ctime(), file.ctime_nsec()),
            u64::from(file.mode()),
        ]))
    }
}

/// What the loader last loaded from each file: its metadata before the read, and the CRC-32
/// of the image it loaded.
#[derive(Default)]
struct Loaded(BTreeMap<PathBuf, (FileState, u32)>);

impl Loaded {
    /// `path` is in the state of its last load: same metadata, same contents. The contents
    /// are read only when the metadata match (another event of a write already loaded).
    fn unchanged(&self, path: &Path, state: Option<FileState>) -> bool {
        match (self.0.get(path), state) {
            (Some(&(was, crc)), Some(now)) if was == now => {
                std::fs::read(path).is_ok_and(|bytes| crc32fast::hash(&bytes) == crc)
            }
            _ => false,
        }
    }

    /// Notes what a load of `path`, whose metadata read `state` before it, came to.
    fn note(&mut self, update: &Update, state: Option<FileState>) {
        match (update, state) {
            (Update::Loaded { file, lib, .. }, Some(state)) => {
                self.0.insert(file.clone(), (state, lib.stamp.crc32));
            }
            _ => self.forget(update.file()),
        }
    }

    /// `path` is gone: its next appearance is a new file, whatever its metadata.
    fn forget(&mut self, path: &Path) {
        self.0.remove(path);
    }
}

/// The loader thread: waits for files to be still, then loads or removes them.
fn watch_loop(
    dir: &Path,
    fs_rx: &Receiver<notify::Result<notify::Event>>,
    subscribers: &Subscribers,
    initial: Vec<PathBuf>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut pending = Pending::new();
    // Empty at first: the initial loads ran on another thread, maybe before the last write.
    let mut last = Loaded::default();
    let mut known: BTreeSet<PathBuf> = initial.into_iter().collect();
    loop {
        let next = pending.values().map(|w| w.due).min();
        let got = match next {
            None => fs_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => fs_rx.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        match got {
            Ok(Ok(ev)) => note(&mut pending, ev, dir, &known, Instant::now()),
            Ok(Err(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Everything already delivered counts before deciding that a file is still.
        while let Ok(got) = fs_rx.try_recv() {
            if let Ok(ev) = got {
                note(&mut pending, ev, dir, &known, Instant::now());
            }
        }
        let now = Instant::now();
        let due: Vec<(PathBuf, Waiting)> = pending
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(p, w)| (p.clone(), *w))
            .collect();
        known.extend(due.iter().map(|d| d.0.clone()));
        // Removals first: `mv a.so b.so` frees a's plugin name before b loads.
        let (gone, present): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|d| std::fs::symlink_metadata(&d.0).is_err());
        for (p, w) in gone {
            if w.missing_before {
                pending.remove(&p);
                last.forget(&p);
                broadcast(subscribers, Update::Removed { file: p }, w.seen);
            } else {
                pending.insert(p, Waiting::settling(now, true));
            }
        }
        for (p, w) in present {
            pending.remove(&p);
            let seen = w.seen;
            let before = FileState::of(&p);
            if last.unchanged(&p, before) {
                continue; // another event of a write already loaded
            }
            match load_update(p) {
                // Written again while being read: wait for it to be still once more.
                Update::Failed { file, error } if error.is_changing() => {
                    pending.insert(file, Waiting::settling(Instant::now(), false));
                }
                update => {
                    // The metadata read before the load: a write since then loads again.
                    last.note(&update, before);
                    broadcast(subscribers, update, seen);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind};
    use notify::event::{ModifyKind, RenameMode};

    fn ev(kind: FsEvent, paths: &[&Path]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(p.to_path_buf());
        }
        e
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowpeek-note-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_write_in_progress_settles_a_completed_one_is_due_at_once() {
        let dir = scratch("write");
        let f = dir.join("p.so");
        std::fs::write(&f, b"x").unwrap();
        let known = BTreeSet::new();
        let mut pending = Pending::new();
        let t0 = Instant::now();
        note(
            &mut pending,
            ev(FsEvent::Create(CreateKind::File), &[&f]),
            &dir,
            &known,
            t0,
        );
        assert_eq!(pending[&f].due, t0 + SETTLE, "a created file settles");
        let data = FsEvent::Modify(ModifyKind::Data(DataChange::Content));
        let t1 = t0 + Duration::from_millis(5);
        note(&mut pending, ev(data, &[&f]), &dir, &known, t1);
        assert_eq!(pending[&f].due, t1 + SETTLE, "each write restarts the wait");
        let closed = FsEvent::Access(AccessKind::Close(AccessMode::Write));
        let t2 = t1 + Duration::from_millis(5);
        note(&mut pending, ev(closed, &[&f]), &dir, &known, t2);
        assert_eq!(pending[&f].due, t2, "closed after writing: due now");
        assert_eq!(pending[&f].seen, t2);
        // `install` and `cp -p` set the mode and times after the close: still due.
        let meta = FsEvent::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
        note(&mut pending, ev(meta, &[&f]), &dir, &known, t2 + SETTLE);
        assert_eq!(pending[&f].due, t2);
        // Written again: settles again.
        let t3 = t2 + Duration::from_millis(1);
        note(&mut pending, ev(data, &[&f]), &dir, &known, t3);
        assert_eq!(pending[&f].due, t3 + SETTLE);
        // Metadata on a settling file prolongs it; on a file not waiting it does nothing.
        let t4 = t3 + Duration::from_millis(9);
        note(&mut pending, ev(meta, &[&f]), &dir, &known, t4);
        assert_eq!(pending[&f].due, t4 + SETTLE);
        let other = dir.join("q.so");
        note(&mut pending, ev(meta, &[&other]), &dir, &known, t4);
        assert!(!pending.contains_key(&other));
        // Not plugin files, and reads, are ignored.
        let tmp = dir.join("next.tmp");
        note(&mut pending, ev(closed, &[&tmp]), &dir, &known, t4);
        let read = FsEvent::Access(AccessKind::Close(AccessMode::Read));
        note(&mut pending, ev(read, &[&other]), &dir, &known, t4);
        assert_eq!(pending.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rename_loads_its_target_and_removes_its_source_at_once() {
        let dir = scratch("rename");
        let from = dir.join("a.so");
        let to = dir.join("b.so");
        std::fs::write(&to, b"x").unwrap();
        let known = BTreeSet::new();
        let mut pending = Pending::new();
        let t = Instant::now();
        let both = FsEvent::Modify(ModifyKind::Name(RenameMode::Both));
        note(&mut pending, ev(both, &[&from, &to]), &dir, &known, t);
        assert_eq!(pending[&to].due, t);
        assert!(!pending[&to].missing_before);
        assert_eq!(pending[&from].due, t);
        assert!(
            pending[&from].missing_before,
            "renamed away: removed when due"
        );
        // An `rm` is not final: the file may be put back at once.
        let rm = FsEvent::Remove(notify::event::RemoveKind::File);
        let gone = dir.join("c.so");
        note(&mut pending, ev(rm, &[&gone]), &dir, &known, t);
        assert_eq!(pending[&gone].due, t + SETTLE);
        assert!(!pending[&gone].missing_before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_state_changes_with_its_size_or_inode() {
        let d = scratch("state");
        let f = d.join("p.so");
        std::fs::write(&f, b"one").unwrap();
        let a = FileState::of(&f).unwrap();
        assert_eq!(Some(a), FileState::of(&f), "nothing happened");
        std::fs::write(&f, b"longer").unwrap();
        assert_ne!(
            Some(a),
            FileState::of(&f),
            "rewritten in place, another size"
        );
        let b = FileState::of(&f).unwrap();
        let g = d.join("q.tmp");
        std::fs::write(&g, b"longer").unwrap();
        std::fs::rename(&g, &f).unwrap();
        assert_ne!(Some(b), FileState::of(&f), "another file renamed over it");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(FileState::of(&f), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn equal_metadata_skips_a_load_only_if_the_contents_are_the_same() {
        // A rewrite of the same size within one tick of the file-time clock leaves the
        // metadata as they were: the contents decide.
        let d = scratch("unchanged");
        let f = d.join("p.so");
        std::fs::write(&f, b"version 1").unwrap();
        let state = FileState::of(&f);
        let mut last = Loaded::default();
        last.0
            .insert(f.clone(), (state.unwrap(), crc32fast::hash(b"version 1")));
        assert!(last.unchanged(&f, state), "same metadata, same bytes");
        last.0
            .insert(f.clone(), (state.unwrap(), crc32fast::hash(b"version 2")));
        assert!(
            !last.unchanged(&f, state),
            "same metadata, other bytes: load"
        );
        std::fs::write(&f, b"version 1, longer").unwrap();
        assert!(
            !last.unchanged(&f, FileState::of(&f)),
            "other metadata: load"
        );
        assert!(
            !last.unchanged(&d.join("q.so"), state),
            "never loaded: load"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
