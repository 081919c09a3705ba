//! Fuzz the bundled plugins' configuration parsers and httplog's HTTP parser, through the
//! plugin ABI (the plugins are `cdylib`s, not reachable as Rust libraries).
//!
//! The plugin libraries are loaded once from `$FLOWPEEK_FUZZ_PLUGIN_DIR` (default
//! `../../target/debug`, i.e. `cargo build -p flowpeek-plugin-httplog ...` at the workspace
//! root). They are not instrumented: libFuzzer sees coverage of the host side only, so seed
//! the corpus with real configurations (see README.md).
//!
//! Input: byte 0 picks the plugin (httplog most often); the bytes up to the first 0x00 are
//! the configuration text (lossy UTF-8, as a `.toml` file would be read); the bytes after it
//! are the client's payload of one TCP connection to port 80, and the server answers with
//! the same bytes reversed in 3 segments. A constructor error is fine; a panic (in the host,
//! or a plugin panic that reaches the host) or an abort is a bug.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/plugin_config/.
#![cfg_attr(not(test), no_main)]

use std::path::PathBuf;
use std::sync::OnceLock;

use flowpeek::flow::{Config, EndReason, Engine, Monitor};
use flowpeek::plugin::ffi::Sink;
use flowpeek::plugin::{load, Library, PluginSlot, SlotMonitor};
use flowpeek::wire::LinkType;

/// The bundled plugins, in the order byte 0 picks them.
pub const PLUGINS: [&str; 5] = ["httplog", "streamhash", "midstat", "eventlog", "noop"];

/// Where the plugin libraries are loaded from, if set before the first input (the regression
/// test sets it); otherwise `$FLOWPEEK_FUZZ_PLUGIN_DIR`, otherwise `../../target/debug`.
pub static PLUGIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The plugins of `PLUGINS`, loaded once (`None`: not loaded, the reason is printed).
pub fn libs() -> &'static Vec<Option<Library>> {
    static L: OnceLock<Vec<Option<Library>>> = OnceLock::new();
    L.get_or_init(|| {
        let dir = PLUGIN_DIR.get().cloned().unwrap_or_else(|| {
            std::env::var_os("FLOWPEEK_FUZZ_PLUGIN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug")
                })
        });
        let v: Vec<Option<Library>> = PLUGINS
            .iter()
            .map(|p| {
                let path = dir.join(format!("lib{p}.so"));
                match load::load(&path) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        eprintln!("plugin_config: {p} not loaded: {e}");
                        None
                    }
                }
            })
            .collect();
        assert!(
            v[0].is_some(),
            "httplog must load (build it: cargo build -p flowpeek-plugin-httplog)"
        );
        v
    })
}

fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for ch in part.chunks(2) {
            let w = if ch.len() == 2 {
                u16::from_be_bytes([ch[0], ch[1]])
            } else {
                u16::from(ch[0]) << 8
            };
            sum += u32::from(w);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/TCP frame between 10.0.0.1:40000 (client) and 10.0.0.2:80.
fn frame(from_client: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (s, d, sp, dp) = if from_client {
        ([10, 0, 0, 1], [10, 0, 0, 2], 40000u16, 80u16)
    } else {
        ([10, 0, 0, 2], [10, 0, 0, 1], 80, 40000)
    };
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&sp.to_be_bytes());
    tcp.extend_from_slice(&dp.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&s);
    pseudo.extend_from_slice(&d);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    let c = csum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&s);
    ip.extend_from_slice(&d);
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // httplog half the time, the others the other half.
    let which = if pick & 1 == 0 {
        0
    } else {
        usize::from(pick >> 1) % PLUGINS.len()
    };
    let Some(lib) = libs()[which] else {
        return;
    };
    let (config, payload) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let config = String::from_utf8_lossy(config);

    let mut slot = PluginSlot::new(PLUGINS[which], 0, Sink::discard(), 1_000_000_000);
    if slot.install(&lib, &config).is_err() {
        return;
    }
    let cfg = Config {
        max_flows: 16,
        buffer_capacity: 4096,
        // Bounds whatever buffer a configuration asks for.
        buffer_memory: 8 << 20,
        ..Config::default()
    };
    let shared = slot.shared();
    let monitors: Vec<Box<dyn Monitor>> = vec![Box::new(SlotMonitor(slot))];
    let mut engine = Engine::new(cfg, monitors);

    let (cisn, sisn) = (1000u32, 9000u32);
    let mut ts = 1_000_000_000u64;
    let mut send = |engine: &mut Engine, f: Vec<u8>| {
        engine.on_frame(Some(LinkType::Ethernet), &f, ts);
        engine.end_batch();
        ts += 1000;
    };
    send(&mut engine, frame(true, cisn, 0, SYN, &[]));
    send(&mut engine, frame(false, sisn, cisn + 1, SYN | ACK, &[]));
    send(&mut engine, frame(true, cisn + 1, sisn + 1, ACK, &[]));
    // The client's bytes in segments of up to 1400 (split at a fuzzer-chosen size).
    let seg = usize::from(pick >> 3).max(1) * 50;
    let mut off = 0u32;
    for chunk in payload.chunks(seg.min(1400)) {
        send(
            &mut engine,
            frame(true, cisn + 1 + off, sisn + 1, PSH | ACK, chunk),
        );
        off += chunk.len() as u32;
    }
    // The server answers with the reversed bytes in 3 segments.
    let answer: Vec<u8> = payload.iter().rev().copied().collect();
    let mut soff = 0u32;
    for chunk in answer.chunks(answer.len().div_ceil(3).clamp(1, 1400)) {
        send(
            &mut engine,
            frame(false, sisn + 1 + soff, cisn + 1 + off, PSH | ACK, chunk),
        );
        soff += chunk.len() as u32;
    }
    send(
        &mut engine,
        frame(true, cisn + 1 + off, sisn + 1 + soff, FIN | ACK, &[]),
    );
    send(
        &mut engine,
        frame(false, sisn + 1 + soff, cisn + 2 + off, FIN | ACK, &[]),
    );
    send(
        &mut engine,
        frame(true, cisn + 2 + off, sisn + 2 + soff, ACK, &[]),
    );
    engine.finish(EndReason::Eof);
    engine.with_monitor_cx(0, |m, cx| {
        if let Some(s) = m.as_any_mut().and_then(|a| a.downcast_mut::<SlotMonitor>()) {
            s.0.shutdown(cx);
        }
    });
    let st = shared.stats();
    // A plugin callback that panicked is caught by the host and counted: still a bug in the
    // plugin (its input was a configuration and one ordinary connection).
    assert_eq!(
        st.failures, 0,
        "{} callback panicked: {st:?}",
        PLUGINS[which]
    );
}
