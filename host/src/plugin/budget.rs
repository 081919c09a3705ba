//! The per-callback time budget of plugins, kept by a watchdog thread.
//!
//! A plugin callback runs on the core's own thread and cannot be interrupted in-process, so
//! the budget is enforced from outside without touching the packet path's clock: every core
//! has a [`CoreBeat`], a cache line the core writes twice per callback (a sequence number
//! that is odd while a plugin runs, and the plugin's id). A watchdog thread looks at every
//! beat a few times per budget period; a callback it sees running, under the same sequence
//! number, for longer than the budget is *flagged*: the watchdog says so on stderr (and
//! again every few seconds while it does not return), and when the callback returns the
//! core counts an overrun for the plugin and applies the policy:
//!
//! - [`OverrunPolicy::Warn`]: count and go on;
//! - [`OverrunPolicy::Disable`]: disable the plugin's instance on that core, as after a
//!   panic (its other flows get no more events; other plugins go on).
//!
//! Preemption is not an overrun: on a busy machine a core's thread may wait for a CPU longer
//! than the budget while its callback has done almost nothing. So the watchdog also reads
//! the core thread's CPU clock (`pthread_getcpuclockid`, taken when the beat is made on the
//! core's thread): a callback past the budget in wall time but not in CPU time is flagged
//! only if its thread is not runnable (sleeping or blocked inside the callback: the core
//! waits on the plugin); a runnable thread is waiting for a CPU, and is not flagged until
//! its CPU time passes the budget too. The message gives both times.
//!
//! The cost on the packet path is two relaxed stores and a load per callback, on a line
//! that only the watchdog reads: no clock read, no lock, no syscall.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happens to a plugin whose callback ran past the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverrunPolicy {
    /// Count the overrun, say so on stderr, keep the plugin.
    #[default]
    Warn,
    /// Count it and disable the plugin's instance on that core once the callback returns.
    Disable,
}

impl FromStr for OverrunPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "warn" => Ok(OverrunPolicy::Warn),
            "disable" => Ok(OverrunPolicy::Disable),
            _ => Err(format!("{s:?}: the overrun policy is warn or disable")),
        }
    }
}

impl fmt::Display for OverrunPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverrunPolicy::Warn => "warn",
            OverrunPolicy::Disable => "disable",
        })
    }
}

/// The budget: how long one callback may run, and what happens past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallBudget {
    /// The longest a callback may run (zero: no budget, no watchdog).
    pub limit: Duration,
    /// What happens to a plugin that runs past it.
    pub policy: OverrunPolicy,
}

/// The default budget of one callback, in milliseconds (`--plugin-budget-ms`).
pub const DEFAULT_LIMIT_MS: u64 = 10;

impl Default for CallBudget {
    fn default() -> Self {
        CallBudget {
            limit: Duration::from_millis(DEFAULT_LIMIT_MS),
            policy: OverrunPolicy::Warn,
        }
    }
}

impl CallBudget {
    /// No budget.
    pub const OFF: CallBudget = CallBudget {
        limit: Duration::ZERO,
        policy: OverrunPolicy::Warn,
    };
}

/// One core's heartbeat, written by the core around each plugin callback.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CoreBeat {
    /// Incremented when a callback starts and when it ends: odd while one runs.
    seq: AtomicU64,
    /// The id of the plugin running (valid while `seq` is odd).
    plugin: AtomicU32,
    /// The `seq` of the last call the watchdog found over budget.
    flagged: AtomicU64,
    /// The core thread's CPU clock and thread id (`None`: not known, wall time only).
    thread: Option<CoreThread>,
    /// The beat of a constructor thread (one load of a plugin for one core), not of a core.
    constructor: bool,
}

/// The thread that writes a beat, as the watchdog sees it.
#[derive(Clone, Copy, Debug)]
struct CoreThread {
    clock: libc::clockid_t,
    tid: libc::pid_t,
}

impl CoreThread {
    /// The calling thread's.
    #[allow(unsafe_code)]
    fn current() -> Option<CoreThread> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is always valid for the calling thread; the call writes one
        // clockid_t into `clock`.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        (rc == 0).then_some(CoreThread { clock, tid })
    }

    /// CPU time the thread has used.
    #[allow(unsafe_code)]
    fn cpu(&self) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec into the exclusive `ts`; a clock of a thread that
        // has exited fails with EINVAL, which is handled.
        let rc = unsafe { libc::clock_gettime(self.clock, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Whether the thread is runnable (state `R`: running, or waiting for a CPU).
    fn runnable(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid))
            .unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            == Some('R')
    }
}

impl CoreBeat {
    /// A callback of plugin `plugin` starts; returns its token (0 when called inside another
    /// callback, which the outer call covers).
    #[inline]
    pub fn enter(&self, plugin: u32) -> u64 {
        // Only the core's thread writes `seq`.
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 == 1 {
            return 0;
        }
        self.plugin.store(plugin, Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Release);
        s + 1
    }

    /// Whether the call running now was found over budget (it has not returned yet).
    pub fn running_over(&self) -> bool {
        let s = self.seq.load(Ordering::Acquire);
        s & 1 == 1 && self.flagged.load(Ordering::Acquire) == s
    }

    /// The callback with `token` returned; true if the watchdog found it over budget.
    #[inline]
    pub fn exit(&self, token: u64) -> bool {
        if token == 0 {
            return false;
        }
        self.seq.store(token + 1, Ordering::Release);
        self.flagged.load(Ordering::Acquire) == token
    }
}

/// Plugin names by id, shared by every core and the watchdog.
#[derive(Debug, Default)]
pub struct Names(Mutex<Vec<String>>);

impl Names {
    /// The id of `name` (the same on every core).
    pub fn id(&self, name: &str) -> u32 {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|n| n == name) {
            return i as u32;
        }
        v.push(name.to_string());
        (v.len() - 1) as u32
    }

    fn name(&self, id: u32) -> String {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.get(id as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// Every core's beat, with its core number.
type Beats = Mutex<Vec<(u32, Arc<CoreBeat>)>>;

/// Constructors found over budget, by plugin name (all cores; `slow_constructors` in the
/// plugin's stats).
pub type SlowConstructors = Mutex<std::collections::BTreeMap<String, u64>>;

/// Makes beats for constructor threads (shared by the hosts of every core).
#[derive(Clone, Debug)]
pub struct Registrar {
    on: bool,
    beats: Arc<Beats>,
    slow: Arc<SlowConstructors>,
}

impl Registrar {
    /// A beat for a constructor of a plugin for `core`, watched while the returned beat
    /// lives. Call it on the constructor's thread (its CPU clock is read). `None` with no
    /// budget.
    pub fn constructor_beat(&self, core: u32) -> Option<Arc<CoreBeat>> {
        if !self.on {
            return None;
        }
        let b = Arc::new(CoreBeat {
            thread: CoreThread::current(),
            constructor: true,
            ..CoreBeat::default()
        });
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((core, Arc::clone(&b)));
        Some(b)
    }

    /// Constructors found over budget so far, by plugin name.
    pub fn slow_constructors(&self) -> std::collections::BTreeMap<String, u64> {
        self.slow.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The cores' beats and the thread that watches them.
#[derive(Debug)]
pub struct Watchdog {
    budget: CallBudget,
    names: Arc<Names>,
    beats: Arc<Beats>,
    /// Callbacks flagged over budget, all cores.
    flagged: Arc<AtomicU64>,
    slow: Arc<SlowConstructors>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often a flagged callback that has not returned is reported again.
const REPEAT: Duration = Duration::from_secs(5);

struct Seen {
    seq: u64,
    since: Instant,
    /// The thread's CPU time when the call was first seen.
    cpu_since: Option<Duration>,
    said: Option<Instant>,
}

impl Watchdog {
    /// Starts watching (no thread when the budget is off).
    pub fn start(budget: CallBudget) -> Watchdog {
        let names = Arc::new(Names::default());
        let beats: Arc<Beats> = Arc::default();
        let flagged = Arc::new(AtomicU64::new(0));
        let slow: Arc<SlowConstructors> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (!budget.limit.is_zero())
            .then(|| {
                let (names, beats, flagged, slow, stop) = (
                    Arc::clone(&names),
                    Arc::clone(&beats),
                    Arc::clone(&flagged),
                    Arc::clone(&slow),
                    Arc::clone(&stop),
                );
                std::thread::Builder::new()
                    .name("flowpeek-watchdog".into())
                    .spawn(move || watch(budget, &names, &beats, &flagged, &slow, &stop))
                    .map_err(|e| {
                        eprintln!(
                            "flowpeek: warning: the plugin watchdog did not start ({e}): callbacks have no time budget"
                        )
                    })
                    .ok()
            })
            .flatten();
        Watchdog {
            budget,
            names,
            beats,
            flagged,
            slow,
            stop,
            thread,
        }
    }

    /// What constructor threads make their beats with.
    pub fn registrar(&self) -> Registrar {
        Registrar {
            on: self.thread.is_some(),
            beats: Arc::clone(&self.beats),
            slow: Arc::clone(&self.slow),
        }
    }

    /// The budget watched.
    pub fn budget(&self) -> CallBudget {
        self.budget
    }

    /// The plugin-name table.
    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// A new beat for `core`, watched from now on. Call it on the core's thread: the
    /// watchdog reads that thread's CPU clock.
    pub fn beat(&self, core: u32) -> Arc<CoreBeat> {
        let b = Arc::new(CoreBeat {
            thread: CoreThread::current(),
            ..CoreBeat::default()
        });
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((core, Arc::clone(&b)));
        b
    }

    /// Callbacks flagged over budget so far (all cores, including any still running).
    pub fn flagged(&self) -> u64 {
        self.flagged.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch(
    budget: CallBudget,
    names: &Names,
    beats: &Beats,
    flagged: &AtomicU64,
    slow: &SlowConstructors,
    stop: &AtomicBool,
) {
    // Look four times per budget period, within 0.25–100 ms.
    let tick = (budget.limit / 4).clamp(Duration::from_micros(250), Duration::from_millis(100));
    let mut seen: Vec<Seen> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(tick);
        let now = Instant::now();
        let beats = {
            let mut all = beats.lock().unwrap_or_else(|e| e.into_inner());
            // A constructor's beat whose thread let go of it (it returned) is forgotten,
            // with what was seen of it.
            let mut i = 0;
            while i < all.len() {
                if all[i].1.constructor && Arc::strong_count(&all[i].1) == 1 {
                    all.remove(i);
                    if i < seen.len() {
                        seen.remove(i);
                    }
                } else {
                    i += 1;
                }
            }
            all.clone()
        };
        seen.resize_with(beats.len(), || Seen {
            seq: 0,
            since: now,
            cpu_since: None,
            said: None,
        });
        for ((core, beat), s) in beats.iter().zip(seen.iter_mut()) {
            let seq = beat.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                continue;
            }
            if seq != s.seq {
                *s = Seen {
                    seq,
                    since: now,
                    cpu_since: beat.thread.and_then(|t| t.cpu()),
                    said: None,
                };
                continue;
            }
            let ran = now - s.since;
            if ran < budget.limit {
                continue;
            }
            let on_cpu = match (beat.thread, s.cpu_since) {
                (Some(t), Some(c0)) => t.cpu().map(|c| (t, c.saturating_sub(c0))),
                _ => None,
            };
            if s.said.is_none() {
                if let Some((t, cpu)) = on_cpu {
                    if cpu < budget.limit && t.runnable() {
                        // Waiting for a CPU (preempted), not running the plugin: not yet.
                        continue;
                    }
                }
            }
            let cpu_ms =
                on_cpu.map_or_else(|| "unknown".to_string(), |(_, c)| c.as_millis().to_string());
            let name = names.name(beat.plugin.load(Ordering::Relaxed));
            if beat.constructor {
                match s.said {
                    None => {
                        beat.flagged.store(seq, Ordering::Release);
                        flagged.fetch_add(1, Ordering::Relaxed);
                        *slow
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(name.clone())
                            .or_default() += 1;
                        s.said = Some(now);
                        eprintln!(
                            "flowpeek: plugin {name}: its constructor (new) for core {core} has run for over {} ms ({cpu_ms} ms of it on the CPU), past the budget (--plugin-budget-ms {}); it runs off the data path: core {core} goes on without this load of the plugin (a running older generation keeps serving) and takes it when it returns",
                            ran.as_millis(),
                            budget.limit.as_millis()
                        );
                    }
                    Some(t) if now - t >= REPEAT => {
                        s.said = Some(now);
                        eprintln!(
                            "flowpeek: plugin {name}: its constructor for core {core} has still not returned after {} s; traffic goes on without this load: fix the plugin's `new` or remove the file",
                            ran.as_secs()
                        );
                    }
                    Some(_) => {}
                }
                continue;
            }
            match s.said {
                None => {
                    beat.flagged.store(seq, Ordering::Release);
                    flagged.fetch_add(1, Ordering::Relaxed);
                    s.said = Some(now);
                    let then = match budget.policy {
                        OverrunPolicy::Warn => "counted (--on-overrun warn)",
                        OverrunPolicy::Disable => {
                            "it will be disabled on this core when the callback returns (--on-overrun disable)"
                        }
                    };
                    eprintln!(
                        "flowpeek: plugin {name} on core {core}: one callback has run for over {} ms ({cpu_ms} ms of it on the CPU; the rest the thread slept or waited inside the callback), past the budget (--plugin-budget-ms {}); {then}",
                        ran.as_millis(),
                        budget.limit.as_millis()
                    );
                }
                Some(t) if now - t >= REPEAT => {
                    s.said = Some(now);
                    eprintln!(
                        "flowpeek: plugin {name} on core {core} is still in one callback after {} s: core {core} processes no packets until it returns; a callback cannot be interrupted in-process: stop flowpeek and remove or fix the plugin",
                        ran.as_secs()
                    );
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_call_is_flagged_and_a_short_one_is_not() {
        let dog = Watchdog::start(CallBudget {
            limit: Duration::from_millis(5),
            policy: OverrunPolicy::Warn,
        });
        let id = dog.names().id("slowpoke");
        assert_eq!(dog.names().id("slowpoke"), id);
        let beat = dog.beat(0);
        let t = beat.enter(id);
        assert_eq!(
            beat.enter(id),
            0,
            "a nested call is covered by the outer one"
        );
        assert!(!beat.exit(0));
        std::thread::sleep(Duration::from_millis(200));
        assert!(beat.exit(t), "a 200 ms call past a 5 ms budget is flagged");
        assert_eq!(dog.flagged(), 1);
        let t = beat.enter(id);
        assert!(!beat.exit(t), "an instant call is not flagged");
        assert_eq!(dog.flagged(), 1);
    }

    #[test]
    fn no_budget_no_thread() {
        let dog = Watchdog::start(CallBudget::OFF);
        assert!(dog.thread.is_none());
        let beat = dog.beat(0);
        let t = beat.enter(0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!beat.exit(t));
    }

    #[test]
    fn policies_parse() {
        assert_eq!("warn".parse(), Ok(OverrunPolicy::Warn));
        assert_eq!("disable".parse(), Ok(OverrunPolicy::Disable));
        assert!("kill".parse::<OverrunPolicy>().is_err());
    }
}
