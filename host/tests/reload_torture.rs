//! The reload torture test (issue 14): while `flowpeek run` replays http-small.pcap (looped,
//! paced, two cores) with streamhash, the plugin file is written in every way an operator
//! might: `cp` (twice in a row), `cat >`, `dd conv=notrunc` of another build's bytes (at 4096, where loading breaks),
//! `truncate`, `install`, `rsync --inplace` (when installed), copy and rename, delete and put
//! back, a symlink swapped in. The host must stay up and exit 0 with its stats, every damaged
//! state must be refused as damaged (never as "not a cdylib"), no private directory may be
//! left behind, and the streamhash records must be exactly those of a clean run: every line
//! whole, every connection once.

mod plugin_util;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugin_util::{corpus, place, streamhash, tagger, TempDir};

const LOOPS: &str = "3";

fn flowpeek_run(plugins: &Path, logs: &Path, tmp: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowpeek"));
    cmd.arg("run")
        .arg(format!(
            "--source=pcap:{}",
            corpus().join("gen/http-small.pcap").display()
        ))
        .args([
            "--loop",
            LOOPS,
            "--cores",
            "2",
            "--drain-timeout",
            "3600",
            "--quiet",
        ])
        // No time budget: a debug plugin on a busy machine overruns it and floods stderr.
        .args(["--plugin-budget-ms", "0"])
        .arg("--plugins")
        .arg(plugins)
        .arg("--log-dir")
        .arg(logs)
        .args(extra)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// The records of a log, each line parsed (a torn line fails here), canonical and sorted.
fn sorted_records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: the last line is cut",
        path.display()
    );
    let mut v: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("torn or malformed record {l:?}: {e}"))
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn every_way_of_writing_the_plugin_directory_under_traffic() {
    let lib = streamhash();
    let other = tagger(&["v2"]);
    let started = Instant::now();

    // The clean run: the records every connection must have.
    let clean_dir = TempDir::new("torture-clean");
    let clean_logs = TempDir::new("torture-clean-logs");
    let clean_tmp = TempDir::new("torture-clean-tmp");
    place(&lib, clean_dir.path(), "streamhash.so");
    let st = flowpeek_run(
        clean_dir.path(),
        clean_logs.path(),
        clean_tmp.path(),
        &["--no-watch"],
    )
    .status()
    .unwrap();
    assert!(st.success(), "clean run: {st:?}");
    let want = sorted_records(&clean_logs.join("streamhash.jsonl"));
    assert_eq!(want.len(), 9000 * 3, "http-small: 9,000 connections a pass");
    eprintln!(
        "clean run: {} records in {:.1} s",
        want.len(),
        started.elapsed().as_secs_f64()
    );

    let dir = TempDir::new("torture");
    let logs = TempDir::new("torture-logs");
    let tmp = TempDir::new("torture-tmp");
    let stats = logs.join("stats.json");
    let dst = place(&lib, dir.path(), "streamhash.so");
    let mut child = flowpeek_run(
        dir.path(),
        logs.path(),
        tmp.path(),
        &["--pace", "14000", "--stats", stats.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });

    // Writes start once the first generation is in (its log is opened when it is installed):
    // a file written while the run starts is not loaded, and then records are missing.
    let log = logs.join("streamhash.jsonl");
    while !log.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "flowpeek run ended before loading streamhash"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no streamhash log"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rsync = have("rsync");
    if !rsync {
        eprintln!("note: rsync is not installed: the `rsync --inplace` write is skipped");
    }
    // Each step is one shell command; a damaging step is followed by a repairing one.
    let mut steps: Vec<(&str, &str)> = vec![
        ("cp twice", r#"cp "$LIB" "$DST" && cp "$LIB" "$DST""#),
        ("cat >", r#"cat "$LIB" > "$DST""#),
        (
            "dd conv=notrunc at 4096",
            r#"dd if="$OTHER" of="$DST" bs=4096 seek=1 skip=1 count=1 conv=notrunc status=none"#,
        ),
        ("cp", r#"cp "$LIB" "$DST""#),
        // No deeper in-place overwrite: it can land in code that still loads and then writes
        // garbage (README: the one unsafe way). plugin_safety.rs checks the host survives it.
        ("install", r#"install -m 755 "$LIB" "$DST""#),
        ("truncate", r#"truncate -s 300000 "$DST""#),
        (
            "cat > slowly",
            r#"head -c 2000000 "$LIB" > "$DST"; sleep 0.05; cat "$LIB" > "$DST""#,
        ),
        (
            "rename into place",
            r#"cp "$LIB" "$DIR/next.tmp" && mv "$DIR/next.tmp" "$DST""#,
        ),
        ("delete and put back", r#"rm "$DST" && cp "$LIB" "$DST""#),
        (
            "symlink swapped in",
            r#"ln -sf "$LIB" "$DIR/link.tmp" && mv -T "$DIR/link.tmp" "$DST""#,
        ),
        ("replace the symlink", r#"rm "$DST" && cp "$LIB" "$DST""#),
        ("truncate to 0", r#"truncate -s 0 "$DST""#),
        ("cp after truncation", r#"cp "$LIB" "$DST""#),
    ];
    if rsync {
        steps.push(("truncate before rsync", r#"truncate -s 1000000 "$DST""#));
        steps.push(("rsync --inplace", r#"rsync --inplace "$LIB" "$DST""#));
    }
    let mut done = 0;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "flowpeek run did not finish"
        );
        let (what, script) = steps[done % steps.len()];
        let out = Command::new("sh")
            .args(["-c", script])
            .env("LIB", &lib)
            .env("OTHER", &other)
            .env("DST", &dst)
            .env("DIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        done += 1;
        // Sometimes faster than the settle time (the steps merge), sometimes slower.
        std::thread::sleep(Duration::from_millis(if done % 3 == 0 { 120 } else { 450 }));
    };
    let stderr = reader.join().unwrap();
    eprintln!(
        "torture run: {done} writes in {:.1} s; stderr:\n{}",
        started.elapsed().as_secs_f64(),
        stderr.trim_end()
    );
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "the host must survive and exit 0"
    );
    assert!(done >= steps.len(), "only {done} writes happened");

    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats written")).unwrap();
    let gens = s["plugins"]["streamhash"]["generations"].as_u64().unwrap();
    assert!(gens >= 5, "reloads happened: {s}");
    assert_eq!(s["plugins"]["streamhash"]["drained_flows"], 0, "{s}");
    for f in s["load_failures"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        assert!(
            f.contains("damaged") || f.contains("incomplete") || f.contains("changed while"),
            "a refusal that does not say the file is damaged: {f}"
        );
        assert!(!f.contains("cdylib"), "{f}");
    }
    eprintln!(
        "{gens} generations, {} refusals",
        s["load_failures"].as_array().unwrap().len()
    );

    let got = sorted_records(&logs.join("streamhash.jsonl"));
    if got != want {
        let only_got: Vec<&String> = got
            .iter()
            .filter(|g| want.binary_search(g).is_err())
            .take(3)
            .collect();
        let only_want: Vec<&String> = want
            .iter()
            .filter(|w| got.binary_search(w).is_err())
            .take(3)
            .collect();
        panic!(
            "records differ from the clean run: {} vs {}\nonly here: {only_got:#?}\nonly clean: {only_want:#?}",
            got.len(),
            want.len()
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "private directories left behind: {left:?}");
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
