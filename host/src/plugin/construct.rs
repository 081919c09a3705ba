//! Plugin constructors off the data path: every load of a plugin file makes its instance
//! for a core on a thread of its own, under the time budget's watchdog ([`super::budget`]),
//! and hands it to the core, which takes it at its reload safe point. A constructor that is
//! slow or never returns is reported by name; the core goes on with its traffic (and with
//! the plugin's older generation, if one runs) meanwhile.
//!
//! Owns: [`Instance`] (a made instance, not yet installed), [`Built`] (what a constructor
//! thread sends back) and [`spawn`]. Must not: install anything (the core does, in
//! [`super::PluginHost`]), or wait for a constructor.
//!
//! The contract this sets for plugins: `new` may run on any thread, not the core's; the
//! instance is then used by that core's thread only.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use flowpeek_plugin_api::abi::{status, FfiSubscriptionsV2, MonitorObj};

use super::budget::Registrar;
use super::ffi;
use super::load::Library;
use crate::flow::Subscriptions;

/// An instance made by a plugin's constructor, with the subscriptions it asked for.
pub struct Instance {
    obj: MonitorObj,
    subs: Subscriptions,
    /// The filter the plugin asked for: bound by a C plugin (`mtcp_bind_monitor_filter`),
    /// declared by a Rust one (`Subscriptions::filter`), if any.
    own_filter: Option<String>,
}

// SAFETY: an instance is made on its constructor thread and handed over once, through a
// channel, to the one core it was made for; from then on only that core's thread uses it
// (the plugin ABI says `new` may run on any thread). The constructor thread keeps no
// reference to it.
unsafe impl Send for Instance {}

impl Instance {
    /// Runs `lib`'s constructor for `core` on the calling thread.
    pub fn make(lib: &Library, core: u32, config: &str) -> Result<Instance, String> {
        let (obj, own_filter) = lib.instantiate(core, config)?;
        let (subs, declared) = match lib.ext() {
            Some(ext) => {
                let mut out = FfiSubscriptionsV2::default();
                // SAFETY: `obj` was just made by this library's constructor; `out` is a valid
                // out-pointer for the call.
                let r = unsafe { (ext.subscriptions_v2)(obj.this, &mut out) };
                if r == status::PANICKED {
                    out = FfiSubscriptionsV2::default();
                }
                ffi::subscriptions_v2(&out)
            }
            // SAFETY: `obj` was just made by this library's constructor.
            None => (
                ffi::subscriptions(unsafe { (obj.vtable.subscriptions)(obj.this) }),
                None,
            ),
        };
        let own_filter = own_filter.or(declared);
        Ok(Instance {
            obj,
            subs,
            own_filter,
        })
    }

    /// The instance, its subscriptions and the filter it asked for itself, to install.
    pub(crate) fn into_parts(self) -> (MonitorObj, Subscriptions, Option<String>) {
        (self.obj, self.subs, self.own_filter)
    }

    /// Frees an instance that will not be installed (a newer load or a removal came first).
    pub fn destroy(self) {
        // SAFETY: the instance is dropped once, by its own library's code, never used again.
        unsafe { (self.obj.vtable.drop)(self.obj.this) };
    }
}

/// What a constructor thread sends back.
pub struct Built {
    /// The plugin file.
    pub file: PathBuf,
    /// Its library.
    pub lib: Library,
    /// The configuration the instance was made with.
    pub config: String,
    /// The host's number for this load of the file (a later load or removal supersedes it).
    pub load: u64,
    /// The instance, or why there is none.
    pub result: Result<Instance, String>,
    /// The constructor ran past the time budget.
    pub slow: bool,
}

/// One load of a plugin file, for one core.
pub struct Job {
    /// The plugin file.
    pub file: PathBuf,
    /// Its library.
    pub lib: Library,
    /// The text of its configuration.
    pub config: String,
    /// The core the instance is for.
    pub core: u32,
    /// The host's number for this load.
    pub load: u64,
    /// The plugin's id in the watchdog's name table.
    pub plugin_id: u32,
}

/// Starts the constructor of `job` on a thread of its own; the result goes to `tx`. Fails
/// only if the thread cannot be started.
pub fn spawn(job: Job, registrar: Registrar, tx: Sender<Built>) -> std::io::Result<()> {
    let Job {
        file,
        lib,
        config,
        core,
        load,
        plugin_id,
    } = job;
    std::thread::Builder::new()
        .name(format!("flowpeek-new-{core}"))
        .spawn(move || {
            let beat = registrar.constructor_beat(core);
            let token = beat.as_ref().map_or(0, |b| b.enter(plugin_id));
            let result = Instance::make(&lib, core, &config);
            let slow = beat.as_ref().is_some_and(|b| b.exit(token));
            drop(beat);
            let built = Built {
                file,
                lib,
                config,
                load,
                result,
                slow,
            };
            if let Err(e) = tx.send(built) {
                // The core is gone (the run ended): free what it will never take.
                if let Ok(inst) = e.0.result {
                    inst.destroy();
                }
            }
        })
        .map(|_| ())
}
