//! `tagger`: a test plugin for host/tests/plugins.rs.
//!
//! Emits one record per connection start and one per side at its end:
//! `{"tag":"v1","ev":"start"|"end","flow":"CLI>SVR","serial":N,"side":..,"reason":..}`.
//! The tag is "v1", or "v2" with the feature `v2` (it is also the plugin's version).
//! Features `api_new` / `api_old` make the root module declare API version 999 / 0;
//! `name_escape` / `name_subdir` name the plugin "../escaped" / "sub/dir" (names the host
//! must refuse).
//!
//! Configuration (`tagger.toml`): `fail = true` makes the constructor fail;
//! `panic_every = N` makes `on_event` panic on every Nth `PktIn`; `sleep_every = N` with
//! `sleep_ms = M` makes it sleep M ms on every Nth `PktIn` (a slow callback);
//! `rearm_zero = true` sets a core timer with delay 0 at every connection start and sets it
//! again, with delay 0, from its own callback (a timer chain that never ends).
#![forbid(unsafe_code)]

use flowpeek_plugin_api::sdk::*;

#[cfg(feature = "v2")]
const TAG: &str = "v2";
#[cfg(not(feature = "v2"))]
const TAG: &str = "v1";

#[cfg(feature = "name_escape")]
const NAME: &str = "../escaped";
#[cfg(feature = "name_subdir")]
const NAME: &str = "sub/dir";
#[cfg(not(any(feature = "name_escape", feature = "name_subdir")))]
const NAME: &str = "tagger";

/// The monitor.
pub struct Tagger {
    panic_every: u64,
    sleep_every: u64,
    sleep_ms: u64,
    rearm_zero: bool,
    packets: u64,
}

fn config_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then_some(v.trim())
    })
}

impl Tagger {
    fn flow_name(cx: &Cx<'_>, flow: Flow) -> (String, u64) {
        let name = match cx.addresses(flow) {
            Ok((c, s)) => format!("{c}>{s}"),
            Err(e) => format!("?{e}"),
        };
        let serial = cx.flow_times(flow).map(|t| t.2).unwrap_or(u64::MAX);
        (name, serial)
    }
}

impl Monitor for Tagger {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = TAG;

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        if config_value(config, "fail") == Some("true") {
            return Err("configured to fail".into());
        }
        let panic_every = match config_value(config, "panic_every") {
            Some(v) => v.parse().map_err(|_| format!("panic_every: {v:?}"))?,
            None => 0,
        };
        let number = |key: &str| -> Result<u64, String> {
            config_value(config, key)
                .map_or(Ok(0), |v| v.parse().map_err(|_| format!("{key}: {v:?}")))
        };
        Ok(Tagger {
            panic_every,
            sleep_every: number("sleep_every")?,
            sleep_ms: number("sleep_ms")?,
            rearm_zero: config_value(config, "rearm_zero") == Some("true"),
            packets: 0,
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        let s = Subscriptions::none()
            .with(EventKind::ConnStart, Hook::Snd)
            .with(EventKind::ConnEnd, Hook::Snd);
        if self.panic_every > 0 || self.sleep_every > 0 {
            s.with(EventKind::PktIn, Hook::Snd)
        } else {
            s
        }
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        match ev.kind {
            EventKind::PktIn => {
                self.packets += 1;
                if self.panic_every > 0 && self.packets % self.panic_every == 0 {
                    panic!("tagger: configured to panic at packet {}", self.packets);
                }
                if self.sleep_every > 0 && self.packets % self.sleep_every == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(self.sleep_ms));
                }
            }
            EventKind::ConnStart => {
                if self.rearm_zero {
                    let _ = cx.set_core_timer(0, 1);
                }
                let (flow, serial) = Self::flow_name(cx, ev.flow);
                let _ = cx.emit(&format!(
                    "{{\"tag\":\"{TAG}\",\"ev\":\"start\",\"flow\":\"{flow}\",\"serial\":{serial}}}"
                ));
            }
            EventKind::ConnEnd => {
                let (flow, serial) = Self::flow_name(cx, ev.flow);
                let side = ev.side.map_or("both", Side::short_name);
                let reason = match ev.detail {
                    Detail::End(r) => r.name(),
                    _ => "?",
                };
                let _ = cx.emit(&format!(
                    "{{\"tag\":\"{TAG}\",\"ev\":\"end\",\"flow\":\"{flow}\",\"serial\":{serial},\"side\":\"{side}\",\"reason\":\"{reason}\"}}"
                ));
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>, _flow: Option<Flow>, tag: u64) {
        if self.rearm_zero {
            let _ = cx.set_core_timer(0, tag);
        }
    }
}

#[cfg(not(any(feature = "api_new", feature = "api_old")))]
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::Tagger);
}

#[cfg(any(feature = "api_new", feature = "api_old"))]
const DECLARED_API: u32 = if cfg!(feature = "api_new") { 999 } else { 0 };

/// The root module, declaring an API version this host does not load.
#[cfg(any(feature = "api_new", feature = "api_old"))]
#[allow(missing_docs, unreachable_pub)]
mod export {
    use super::{Tagger, DECLARED_API};
    use flowpeek_plugin_api::sdk::Glue;

    #[abi_stable::export_root_module]
    pub fn flowpeek_plugin_root() -> flowpeek_plugin_api::abi::PluginModRef {
        use abi_stable::prefix_type::PrefixTypeTrait;
        flowpeek_plugin_api::abi::PluginMod {
            api_version: DECLARED_API,
            name: Glue::<Tagger>::name,
            version: Glue::<Tagger>::version,
            new: Glue::<Tagger>::new,
        }
        .leak_into_prefix()
    }
}
