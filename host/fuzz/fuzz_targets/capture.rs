//! Fuzz `flowpeek::io::CaptureFile`: the input is written to a temp file, opened (mapped)
//! and iterated to the end. Asserts the reader's contract: no panic, at most one error and
//! it is the last item, packet data lies inside the file, offsets strictly increase.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/capture/.
#![cfg_attr(not(test), no_main)]

use std::io::Write as _;

use flowpeek::io::CaptureFile;

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("flowpeek-fuzz-capture-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&path).expect("create temp file");
        f.write_all(data).expect("write temp file");
    }
    if let Ok(cap) = CaptureFile::open(&path) {
        assert_eq!(cap.len_bytes(), data.len() as u64);
        let mut last_offset = None;
        let mut it = cap.packets();
        for item in it.by_ref() {
            match item {
                Ok(p) => {
                    assert!(p.offset < cap.len_bytes());
                    assert!(last_offset.map_or(true, |o| p.offset > o));
                    last_offset = Some(p.offset);
                    assert!(p.data.len() <= data.len());
                }
                Err(e) => {
                    assert!(e.offset().map_or(true, |o| o < cap.len_bytes()));
                    break;
                }
            }
        }
        assert!(it.next().is_none());
    }
    let _ = std::fs::remove_file(&path);
}
