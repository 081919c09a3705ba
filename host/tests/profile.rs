//! The engine options shared by `streams`, `run` and `events`, and `--profile mos`: the
//! same options on every command, the profile's policies, explicit options overriding it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn zeek(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/public/zeek/tcp")
        .join(name)
}

fn flowpeek(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn events(capture: &str, extra: &[&str]) -> Vec<String> {
    let path = zeek(capture);
    let mut args = vec!["events"];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    let (code, out, err) = flowpeek(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out.lines().map(str::to_string).collect()
}

#[test]
fn every_command_takes_the_engine_options() {
    for cmd in ["streams", "run", "events"] {
        let (code, help, _) = flowpeek(&[cmd, "--help"]);
        assert_eq!(code, 0);
        for opt in [
            "--profile <PROFILE>",
            "--no-midstream",
            "--midstream",
            "--verify-checksums[=<BOOL>]",
            "--drop-truncated[=<BOOL>]",
            "--overlap <OVERLAP>",
            "--buffer <BUFFER>",
            "--max-flows <MAX_FLOWS>",
            "--buffer-memory <BUFFER_MEMORY>",
            "--timeout <TIMEOUT>",
            "--time-wait <TIME_WAIT>",
            "--gap-skip-after <PACKETS>",
            "--rst-linger <MS>",
            "mOS 0.3's policies",
        ] {
            assert!(help.contains(opt), "{cmd} --help lacks {opt}:\n{help}");
        }
    }
}

#[test]
fn profile_mos_drops_bad_checksums_unless_told_otherwise() {
    // syn-bad: one SYN with a wrong TCP checksum; mOS shows nothing at all.
    assert!(events("syn-bad.pcap", &["--profile", "mos"]).is_empty());
    let kept = events(
        "syn-bad.pcap",
        &["--profile", "mos", "--verify-checksums=false"],
    );
    assert!(kept.iter().any(|l| l.contains("CONN_START")), "{kept:?}");
    assert!(!events("syn-bad.pcap", &[]).is_empty());
}

#[test]
fn profile_mos_drops_snaplen_truncated_packets() {
    let count = |lines: &[String]| lines.iter().filter(|l| l.contains("PKT_IN")).count();
    let mos = events("timestamp.pcap", &["--profile", "mos"]);
    let kept = events(
        "timestamp.pcap",
        &["--profile", "mos", "--drop-truncated=false"],
    );
    // mOS's trace of this capture has 374 PKT_IN lines: 691 of 878 packets are cut.
    assert_eq!(count(&mos), 374);
    assert!(
        count(&kept) > count(&mos),
        "{} {}",
        count(&kept),
        count(&mos)
    );
}

#[test]
fn profile_mos_has_no_midstream_pick_up_unless_told_otherwise() {
    let mos = events("missing-syn.pcap", &["--profile", "mos"]);
    assert!(!mos.is_empty() && mos.iter().all(|l| l.contains("ORPHAN")));
    let pick_up = events("missing-syn.pcap", &["--profile", "mos", "--midstream"]);
    assert!(pick_up.iter().any(|l| l.contains("PKT_IN")));
    // On streams too: no connection without its SYN.
    let path = zeek("missing-syn.pcap");
    let p = path.to_str().unwrap();
    let (code, out, err) = flowpeek(&["streams", "--json", "--profile", "mos", p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 0, "{out}");
    let (_, out, _) = flowpeek(&["streams", "--json", p]);
    assert!(out.lines().count() > 0);
    // Both switches at once make no sense.
    let (code, _, err) = flowpeek(&["events", "--midstream", "--no-midstream", p]);
    assert_eq!(code, 2, "{err}");
}
