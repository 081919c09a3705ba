//! The sans-I/O monitoring engine: flow table, both-sided TCP state, receive buffers,
//! events and the `ppeek`/`peek` read API, with the semantics of docs/SPEC.md.
//!
//! Owns: the per-core flow table (fixed capacity, symmetric key, eviction of the least
//! recently active flow), each side's emulated TCP state machine and receive buffer,
//! dispatch of events to monitors in SPEC §2.1's order, `NewData` coalescing per batch,
//! user-defined events, per-flow subscriptions, timers, idle timeout and TIME_WAIT.
//!
//! Must not: do I/O, read a clock (time is the packets' timestamps, passed in), spawn
//! threads, or allocate per packet (buffers are pooled per side, the table is preallocated).
//!
//! Driving it: call [`Engine::on_frame`] (or [`Engine::on_segment`]) for each packet of a
//! batch, then [`Engine::end_batch`]; at the end, [`Engine::finish`].
//!
//! One file per concept, in the order a packet meets them:
//! - `key.rs`: the symmetric flow key and hash, and the quick hash of a raw frame.
//! - `engine.rs`: [`Engine`], the orchestration of the parts below per packet and batch;
//!   `fragments.rs`: IP fragments on their way in; `ending.rs`: timers due, expiry, a
//!   flow's destruction and tombstone.
//! - `table.rs`: flow slots (`FlowIdx`), the hash index, the idle (LRU) and TIME_WAIT lists.
//! - `tcp.rs`: each side's emulated TCP state machine, RST window checks.
//! - `reassembly.rs`: the receive path: offsets, overlaps, skipped gaps; `marks.rs`: the
//!   sides owed a `NewData` at the end of the batch.
//! - `disorder.rs`: reordering on the tap: when a gap is skipped, FIN/RST held until the
//!   stream reaches them, a FIN whose ACK came first; `holdback.rs`: what each side holds.
//! - `tombstone.rs`: closed connections, so that their late packets count as `late`.
//! - `buffer.rs`: one side's receive buffer, and the pool bounded by `buffer_memory`.
//! - `deliver.rs`: delivery: event order, per-flow masks, derived user events, batches;
//!   `dispatch.rs`: the state it keeps between callbacks ([`Held`], [`Deferred`]);
//!   `subscriptions.rs`: [`Subscriptions`], [`BufferRequest`].
//! - `timers.rs`: monitors' timers, idle and TIME_WAIT expiry, the next deadline.
//! - `api.rs`: [`Cx`], the read API of a callback, and the user events it defines with
//!   their [`Filter`]s (a filter is a callback on a `Cx`, so they live together);
//!   `monitor.rs`: [`Monitor`], [`Setup`].
//! - `config.rs`: [`Config`]; `stats.rs`: [`Stats`]; `types.rs`: the event vocabulary.

mod api;
mod buffer;
mod config;
mod deliver;
mod disorder;
mod dispatch;
mod ending;
mod engine;
mod fragments;
mod holdback;
mod key;
mod marks;
mod monitor;
mod reassembly;
mod stats;
mod subscriptions;
mod table;
mod tcp;
#[cfg(test)]
mod testing;
mod timers;
mod tombstone;
mod types;

pub use api::{BufferInfo, Cx, Errno, Filter, FlowTimes, ForeignFilter, PeekError, UserFilter};
pub use buffer::{OverlapPolicy, MAX_FRAGMENTS};
pub use config::Config;
pub use dispatch::{Deferred, Held, HELD_MAX};
pub use engine::{moves_clock, Engine, Handed, HandoffRoute};
pub use key::{quick_frame_hash, symmetric_hash};
pub use monitor::{Monitor, Setup};
pub use stats::Stats;
pub use subscriptions::{BufferRequest, Subscriptions};
pub use table::{LastPacket, PREFETCH_MIN_FLOWS};
pub use tombstone::TOMBSTONE_TTL;
pub use types::*;

/// The layering of this module, checked: the `use` graph between its files has no cycle.
/// Every file imports only files below it; `reassembly.rs`, `disorder.rs`, `deliver.rs`,
/// `fragments.rs` and `ending.rs` add one concept's methods to [`Engine`] and sit above
/// `engine.rs`, which imports none of them (it calls their methods on itself).
#[cfg(test)]
mod layering {
    use std::collections::BTreeMap;

    /// The files of `flow/` a source imports (outside its `#[cfg(test)] mod`, comments
    /// left out): `super::x` and `crate::flow::x`, also inside `use super::{x, y}` groups.
    fn imports(source: &str, modules: &[String]) -> Vec<String> {
        let mut code = String::new();
        let mut lines = source.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.starts_with("mod "))
            {
                break;
            }
            let line = line.split("//").next().unwrap_or("");
            code.push_str(line);
            code.push('\n');
        }
        let mut out = Vec::new();
        for prefix in ["super::", "crate::flow::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    group[..end].split(',').collect()
                } else {
                    vec![rest]
                };
                for n in names {
                    let n: String = n
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if modules.contains(&n) && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    /// A cycle of the graph, if it has one (depth-first search).
    fn cycle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            graph: &BTreeMap<String, Vec<String>>,
            state: &mut BTreeMap<String, u8>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            match state.get(n) {
                Some(2) => return None,
                Some(1) => {
                    let start = path.iter().position(|p| p == n).unwrap_or(0);
                    let mut c = path[start..].to_vec();
                    c.push(n.to_string());
                    return Some(c);
                }
                _ => {}
            }
            state.insert(n.to_string(), 1);
            path.push(n.to_string());
            for m in graph.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, graph, state, path) {
                    return Some(c);
                }
            }
            path.pop();
            state.insert(n.to_string(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for n in graph.keys() {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
        None
    }

    #[test]
    fn flow_files_import_each_other_without_a_cycle() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/flow");
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("host/src/flow") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                sources.insert(name, std::fs::read_to_string(&path).expect("a source file"));
            }
        }
        assert!(sources.len() > 10, "found the flow module's files");
        let modules: Vec<String> = sources.keys().cloned().collect();
        let graph: BTreeMap<String, Vec<String>> = sources
            .iter()
            .filter(|(name, _)| *name != "mod")
            .map(|(name, src)| {
                let mut deps = imports(src, &modules);
                deps.retain(|d| d != name);
                (name.clone(), deps)
            })
            .collect();
        assert!(
            graph["deliver"].contains(&"engine".to_string()),
            "the checker sees the imports it checks"
        );
        if let Some(c) = cycle(&graph) {
            panic!("flow/ imports in a circle: {}", c.join(" -> "));
        }
    }

    #[test]
    fn the_checker_finds_a_cycle_and_reads_groups() {
        let modules: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let a =
            "use super::{b, c::X};\n// use super::a;\n#[cfg(test)]\nmod tests { use super::c; }";
        assert_eq!(imports(a, &modules), ["b", "c"]);
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), vec!["b".to_string()]);
        g.insert("b".to_string(), vec!["c".to_string()]);
        g.insert("c".to_string(), vec![]);
        assert_eq!(cycle(&g), None);
        g.insert("c".to_string(), vec!["a".to_string()]);
        assert_eq!(
            cycle(&g),
            Some(["a", "b", "c", "a"].iter().map(|s| s.to_string()).collect())
        );
    }
}
