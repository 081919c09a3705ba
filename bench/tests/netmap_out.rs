//! `flowpeek-bench gen --out netmap:…` drives a real netmap port's TX rings. The machines
//! this is developed on have no netmap module: there, it must fail at once with exit status 2
//! and say why (the ring code itself is unit-tested on in-memory images in
//! `flowpeek::io::netmap`).

use std::path::Path;
use std::process::Command;

fn gen(out: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flowpeek-bench"))
        .args(["gen", "--out", out, "--count", "10", "--quiet"])
        .output()
        .expect("run flowpeek-bench")
}

#[test]
fn netmap_output_without_the_module_fails_cleanly() {
    if Path::new("/dev/netmap").exists() {
        eprintln!("/dev/netmap exists here: skipping the not-available check");
        return;
    }
    for out in ["netmap:lo", "netmap:lo-0", "netmap:pipe{1", "vale0:a"] {
        let r = gen(out);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{out}: {stderr}");
        assert!(
            stderr.contains("the netmap kernel module is not loaded"),
            "{out}: {stderr}"
        );
        assert!(
            stderr.contains("scripts/netmap-setup.sh"),
            "{out}: {stderr}"
        );
        assert!(r.stdout.is_empty(), "{out}");
    }
}

#[test]
fn bad_netmap_port_is_refused_with_the_forms() {
    let r = gen("netmap:lo*");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("netmap:IF-K"), "{stderr}");
    assert!(stderr.contains("valeB:P"), "{stderr}");
}

#[test]
fn gen_help_describes_netmap_output() {
    let r = Command::new(env!("CARGO_BIN_EXE_flowpeek-bench"))
        .args(["gen", "--help"])
        .output()
        .expect("run flowpeek-bench");
    let help = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success());
    for needle in ["netmap:IF-K", "netmap:NAME{K", "valeB:P", "NIOCTXSYNC"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
