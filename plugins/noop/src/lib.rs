//! `noop`: subscribes to `PktIn` at the sender's hook, in batches (SPEC §2.4), and counts,
//! nothing more. It measures what the plugin boundary costs per packet; at shutdown it emits
//! the count.
#![forbid(unsafe_code)]

use flowpeek_plugin_api::sdk::{config_keys, Cx, Event, EventKind, Hook, Monitor, Subscriptions};

/// Counts packets.
pub struct Noop {
    packets: u64,
}

impl Monitor for Noop {
    const NAME: &'static str = "noop";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        config_keys(config, &[])?;
        Ok(Noop { packets: 0 })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none().batched(EventKind::PktIn, Hook::Snd)
    }

    fn on_event(&mut self, _cx: &mut Cx<'_>, _ev: &Event) {
        self.packets += 1;
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        let _ = cx.emit(&format!("{{\"packets\":{}}}", self.packets));
    }
}

flowpeek_plugin_api::export_monitor!(Noop);
