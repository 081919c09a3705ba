//! `batcher`: a test plugin that takes `PktIn` (both hooks) and `TcpStateChange` in batches
//! (or, with the feature `unbatched`, as they happen) and records per flow and side, at each
//! `ConnEnd` (`Snd`):
//! `{"flow":"CLI>SVR","serial":N,"side":"cli"|"svr","reason":..,"pkts":N,"states":N,
//! "after_stop":N,"raised_at":N|null,"batched":N}`.
//!
//! `pkts` counts `PktIn` callbacks of the flow, `states` its `TcpStateChange` callbacks,
//! `batched` how many of them came from a batch (`Cx::deferred` said so).
//!
//! Configuration (`batcher.toml`), to exercise what a callback may change mid-batch:
//! - `stop_after = N`: on the flow's Nth `PktIn`, `stop_monitoring` both sides;
//!   `after_stop` counts the events the flow still brought afterwards (must stay 0).
//! - `raise_at = N`: on the flow's Nth `PktIn`, raise a user event; `raised_at` is the flow's
//!   `PktIn` count when that event arrived (it must come right after the raising callback).
//! - `unsubscribe_after = N`: on the flow's Nth `PktIn`, unsubscribe from `PktIn` at both
//!   hooks for the flow (then `pkts` stays N).
//! - `declare = "<tcpdump expression>"`: the plugin's own stream filter
//!   ([`Subscriptions::filter`]); a `filter = "..."` line replaces it (read by the host).
#![forbid(unsafe_code)]

use flowpeek_plugin_api::sdk::*;

#[derive(Default)]
struct PerFlow {
    pkts: u64,
    states: u64,
    batched: u64,
    stopped: bool,
    after_stop: u64,
    raised_at: Option<u64>,
}

/// The monitor.
pub struct Batcher {
    flows: FlowSlab<PerFlow>,
    /// Flows it stopped monitoring, with the events they still brought (counted without any
    /// host call: after a stop, the host refuses them for this flow).
    stopped: std::collections::HashMap<u64, u64>,
    stop_after: Option<u64>,
    raise_at: Option<u64>,
    unsubscribe_after: Option<u64>,
    declare: Option<&'static str>,
    user: Option<EventKind>,
}

impl Batcher {
    fn record(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let Some(idx) = self.flows.entry(cx, ev.flow, |_| PerFlow::default()) else {
            return;
        };
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        let (Ok((c, s)), Ok((_, _, serial))) = (cx.addresses(ev.flow), cx.flow_times(ev.flow))
        else {
            return;
        };
        let side = match ev.side {
            Some(Side::Client) => "cli",
            Some(Side::Server) => "svr",
            None => "both",
        };
        // The reason the event carries (what `end_reason` reads depends on when the callback
        // runs, which is what batching changes).
        let reason = match ev.detail {
            Detail::End(r) => r.name(),
            _ => "?",
        };
        let raised = f.raised_at.map_or("null".to_string(), |n| n.to_string());
        let after_stop = f.after_stop + self.stopped.get(&ev.flow.0).copied().unwrap_or(0);
        let line = format!(
            r#"{{"flow":"{c}>{s}","serial":{serial},"side":"{side}","reason":"{reason}","pkts":{},"states":{},"after_stop":{after_stop},"raised_at":{raised},"batched":{}}}"#,
            f.pkts, f.states, f.batched
        );
        let _ = cx.emit(&line);
    }
}

impl Monitor for Batcher {
    const NAME: &'static str = "batcher";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        config_keys(
            config,
            &[
                "stop_after",
                "raise_at",
                "unsubscribe_after",
                "declare",
                "filter",
            ],
        )?;
        // A test plugin: the declared filter lives as long as the process.
        let declare = config_str(config, "declare").map(|s| &*Box::leak(s.to_string().into()));
        Ok(Batcher {
            flows: FlowSlab::default(),
            stopped: std::collections::HashMap::new(),
            stop_after: config_u64(config, "stop_after")?,
            raise_at: config_u64(config, "raise_at")?,
            unsubscribe_after: config_u64(config, "unsubscribe_after")?,
            declare,
            user: None,
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        let mut s = Subscriptions::none().with(EventKind::ConnEnd, Hook::Snd);
        for hook in [Hook::Snd, Hook::Rcv] {
            s = if cfg!(feature = "unbatched") {
                s.with(EventKind::PktIn, hook)
                    .with(EventKind::TcpStateChange, hook)
            } else {
                s.batched(EventKind::PktIn, hook)
                    .batched(EventKind::TcpStateChange, hook)
            };
        }
        match self.declare {
            Some(f) => s.filter(f),
            None => s,
        }
    }

    fn setup(&mut self, setup: &mut Setup<'_>) {
        if self.raise_at.is_some() {
            if let Ok(e) = setup.define_event(EventKind::PktIn, None, 7) {
                let _ = setup.subscribe(e, Hook::None);
                self.user = Some(e);
            }
        }
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        if ev.kind == EventKind::ConnEnd {
            self.record(cx, ev);
            // Each side ends once at `Snd`: the second one frees the state.
            let flags = self.flows.flags(cx, ev.flow);
            if flags & 1 == 0 {
                self.flows.set_flags(cx, ev.flow, 1);
            } else {
                // The handle may name another flow after this.
                self.stopped.remove(&ev.flow.0);
                if let Ok(v) = cx.user_value(ev.flow) {
                    if v & ((1 << 48) - 1) != 0 {
                        self.flows.release(((v & ((1 << 48) - 1)) - 1) as usize);
                    }
                }
            }
            return;
        }
        if let Some(n) = self.stopped.get_mut(&ev.flow.0) {
            *n += 1;
            return;
        }
        let deferred = cx.deferred().is_some();
        let Some(idx) = self.flows.entry(cx, ev.flow, |_| PerFlow::default()) else {
            return;
        };
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        if f.stopped {
            f.after_stop += 1;
            return;
        }
        if Some(ev.kind) == self.user {
            f.raised_at = Some(f.pkts);
            return;
        }
        f.batched += u64::from(deferred);
        match ev.kind {
            EventKind::TcpStateChange => f.states += 1,
            EventKind::PktIn => {
                f.pkts += 1;
                let n = f.pkts;
                if Some(n) == self.raise_at {
                    if let Some(e) = self.user {
                        let _ = cx.raise(ev.flow, None, e);
                    }
                }
                if Some(n) == self.unsubscribe_after {
                    for hook in [Hook::Snd, Hook::Rcv] {
                        let _ = cx.unsubscribe(ev.flow, EventKind::PktIn, hook);
                    }
                }
                if Some(n) == self.stop_after {
                    f.stopped = true;
                    self.stopped.insert(ev.flow.0, 0);
                    let _ = cx.stop_monitoring(ev.flow, None);
                }
            }
            _ => {}
        }
    }
}

#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::Batcher);
}
