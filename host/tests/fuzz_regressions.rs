//! The fuzz targets' regression inputs, replayed in the normal `cargo test`.
//!
//! Each target of `host/fuzz` keeps its body in `pub fn run(data: &[u8])` (the
//! `fuzz_target!` wrapper is compiled only outside `cfg(test)`), so this test includes the
//! target files as modules and runs each body over every file in
//! `host/fuzz/regressions/<target>/`: the crash inputs the fuzzers found (kept once fixed)
//! and a few seeds. A panic on any input fails the test, naming the target and the file.
//! Without libFuzzer there is no address sanitizer here: an out-of-bounds read that ASan
//! would report in `scripts/fuzz.sh` only fails this test if it panics or faults.
#![allow(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/capture.rs"]
mod capture;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/decode.rs"]
mod decode;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/defrag.rs"]
mod defrag;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/engine.rs"]
mod engine;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/plugin_config.rs"]
mod plugin_config;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/fuzz_targets/shm_ring.rs"]
mod shm_ring;

mod plugin_util;

fn regressions(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
}

/// Runs `body` on every file of `dir` (sorted; dot files skipped). Returns how many were
/// replayed, or the list of inputs whose run panicked.
fn replay_dir(dir: &Path, body: &dyn Fn(&[u8])) -> Result<usize, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| body(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    if failed.is_empty() {
        Ok(files.len())
    } else {
        Err(failed.join("\n"))
    }
}

fn replay(target: &str, body: &dyn Fn(&[u8])) {
    let dir = regressions(target);
    match replay_dir(&dir, body) {
        Ok(n) => {
            assert!(n > 0, "no regression inputs in {}", dir.display());
            eprintln!("{target}: replayed {n} inputs from {}", dir.display());
        }
        Err(failed) => panic!("{target}: inputs that still fail:\n{failed}"),
    }
}

#[test]
fn decode_regressions() {
    replay("decode", &decode::run);
}

#[test]
fn defrag_regressions() {
    replay("defrag", &defrag::run);
}

#[test]
fn capture_regressions() {
    replay("capture", &capture::run);
}

#[test]
fn engine_regressions() {
    replay("engine", &engine::run);
}

#[test]
fn shm_ring_regressions() {
    replay("shm_ring", &shm_ring::run);
}

#[test]
fn plugin_config_regressions() {
    // The target loads the bundled plugins (cdylibs) through the plugin ABI: build each one
    // (debug, as the plugin tests do) and put them where the target looks.
    let dir = plugin_util::TempDir::new("fuzz-plugins");
    for p in plugin_config::PLUGINS {
        let lib = plugin_util::build(&format!("flowpeek-plugin-{p}"), p, &[]);
        plugin_util::place(&lib, dir.path(), &format!("lib{p}.so"));
    }
    plugin_config::PLUGIN_DIR
        .set(dir.path().to_path_buf())
        .expect("the plugin directory is set once");
    let libs = plugin_config::libs();
    for (p, l) in plugin_config::PLUGINS.iter().zip(libs) {
        assert!(
            l.is_some(),
            "plugin {p} did not load (see the message above)"
        );
    }
    replay("plugin_config", &plugin_config::run);
}

/// The replay is able to fail: an input whose run panics is reported, with its file name.
#[test]
fn a_panicking_input_fails_the_replay() {
    let dir = plugin_util::TempDir::new("fuzz-replay");
    std::fs::write(dir.join("fine"), b"ok").unwrap();
    std::fs::write(dir.join("crash-1234"), b"boom").unwrap();
    let body = |d: &[u8]| assert_ne!(d, b"boom", "the body panics on this input");
    let err = replay_dir(dir.path(), &body).unwrap_err();
    assert!(err.contains("crash-1234"), "{err}");
    assert!(err.contains("the body panics on this input"), "{err}");
    std::fs::remove_file(dir.join("crash-1234")).unwrap();
    assert_eq!(replay_dir(dir.path(), &body), Ok(1));
}
