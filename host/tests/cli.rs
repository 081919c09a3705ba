//! `flowpeek run` refuses bad sources and directories with a message that names the problem
//! and the fix, and a non-zero exit, never a panic.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap_or(-1), err)
}

fn empty_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowpeek-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn netmap_without_the_module_says_how_to_load_it() {
    let d = empty_dir("netmap");
    for spec in ["netmap:eth0", "netmap:eth0-1"] {
        let (code, err) = run(&[
            "run",
            "--source",
            spec,
            "--plugins",
            d.to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("netmap kernel module is not loaded"), "{err}");
        assert!(err.contains("scripts/netmap-setup.sh"), "{err}");
    }
}

#[test]
fn a_missing_interface_is_named() {
    let d = empty_dir("afpacket");
    let (code, err) = run(&[
        "run",
        "--source",
        "afpacket:nosuchif0",
        "--plugins",
        d.to_str().unwrap(),
        "--quiet",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuchif0"), "{err}");
}

#[test]
fn a_missing_plugin_directory_is_named() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo.pcapng");
    let (code, err) = run(&[
        "run",
        "--source",
        &format!("pcap:{demo}"),
        "--plugins",
        "/nonexistent/plugins",
        "--quiet",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/plugins") && err.contains("--plugins"),
        "{err}"
    );
}

#[test]
fn bad_source_syntax_and_missing_shm_region() {
    let d = empty_dir("syntax");
    let (code, err) = run(&[
        "run",
        "--source",
        "tape:x",
        "--plugins",
        d.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    // Of the form KIND:ARG; the kind is what is wrong.
    assert!(err.contains("unknown kind \"tape\""), "{err}");
    let (code, err) = run(&[
        "run",
        "--source",
        "x.pcap",
        "--plugins",
        d.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("KIND:ARG"), "{err}");
    let (code, err) = run(&[
        "run",
        "--source",
        "shm:flowpeek-no-such-region",
        "--plugins",
        d.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("flowpeek-no-such-region"), "{err}");
}

#[test]
fn streams_without_sha256_keeps_every_other_field() {
    let capture = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo.pcapng");
    let json = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
            .args(["streams", "--json"])
            .args(extra)
            .arg(capture)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let full = json(&[]);
    let crc_only = json(&["--no-sha256"]);
    assert!(!full.is_empty());
    assert_eq!(full.len(), crc_only.len());
    for (mut f, c) in full.into_iter().zip(crc_only) {
        for dir in ["c2s", "s2c"] {
            assert_eq!(f[dir]["sha256"].as_str().map(str::len), Some(64));
            assert!(c[dir].get("sha256").is_none(), "{c}");
            f[dir].as_object_mut().unwrap().remove("sha256");
        }
        assert_eq!(f, c);
    }
}
