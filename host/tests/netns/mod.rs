//! Two network namespaces joined by a veth pair, for the live tests (AF_PACKET on real
//! traffic): [`Net::up`] makes them, dropping the [`Net`] deletes them, [`enter_netns`]
//! moves a thread into one, and `require_live!` skips a test (saying why) where this
//! cannot run: not root, or no iproute2. Used by host/tests/live_afpacket.rs and, through
//! `#[path]`, by the bench crate's live fragment test.
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Why the live tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: `geteuid` has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}): namespaces, veth pairs and packet sockets need root"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not available".into()),
    }
}

/// Returns from the test, saying why, where the live tests cannot run.
macro_rules! require_live {
    () => {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipping live AF_PACKET test: {why}");
            return;
        }
    };
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted on drop.
pub struct Net {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
}

impl Net {
    pub fn up(tag: char) -> Net {
        let base = format!("fp{}{tag}", std::process::id() % 1_000_000);
        let net = Net {
            ns_a: format!("{base}-a"),
            ns_b: format!("{base}-b"),
            if_a: format!("{base}0"),
            if_b: format!("{base}1"),
        };
        let if_b = net.if_b.clone();
        // Leftovers of an earlier run with the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &net.ns_a])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &net.ns_b])
            .output();
        ip(&["netns", "add", &net.ns_a]);
        ip(&["netns", "add", &net.ns_b]);
        ip(&[
            "link", "add", &net.if_a, "netns", &net.ns_a, "type", "veth", "peer", "name", &if_b,
            "netns", &net.ns_b,
        ]);
        for (ns, ifname, addr) in [
            (&net.ns_a, &net.if_a, "10.77.0.1/24"),
            (&net.ns_b, &if_b, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", ifname]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // Wire-sized frames when ethtool is there; otherwise GSO super-packets, which
            // TPACKET_V3 delivers whole.
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-K", ifname])
                .args(["tso", "off", "gso", "off", "gro", "off"])
                .output();
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_a])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_b])
            .output();
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open namespace");
    // SAFETY: `f` is an open namespace file; setns only changes this thread's namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}
