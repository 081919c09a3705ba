//! Bad configuration and environment (issue "Hardening", item 4): each runs the real binary
//! (`flowpeek`, or `flowpeek-bench gen` for the shm producer) and checks the exit status and
//! that the message names the problem and the fix. Never a panic, never a signal.
//!
//! - /dev/shm full: a private mount namespace with a 256 KiB tmpfs over /dev/shm (root and
//!   `unshare`; skipped otherwise, with the reason printed).
//! - No permission for AF_PACKET: `flowpeek run --source afpacket:lo` as uid 65534, and as
//!   root with CAP_NET_RAW dropped from the bounding set (`setpriv`; root only).
//! - The plugin directory: world-writable, unreadable, not a directory; a world-writable
//!   plugin file; a malformed plugin configuration (`<name>.toml`) or one with an unknown key.
//! - Invalid `--max-flows`, `--buffer-memory`, `--cores`.
//!
//! flowpeek has no configuration file of its own: everything is a command-line option
//! (checked by clap); the only configuration files are the plugins' `<name>.toml`.

mod plugin_util;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugin_util::{demo, place, streamhash, workspace, TempDir};

/// What a run printed and how it ended.
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

impl Outcome {
    /// Exited with `code` by itself (no signal), and printed no panic.
    fn expect_code(&self, code: i32, what: &str) {
        assert_eq!(
            (self.code, self.signal),
            (Some(code), None),
            "{what}: expected exit {code}; stderr:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: panicked:\n{}",
            self.stderr
        );
    }

    /// The message holds every one of `phrases`.
    fn expect_says(&self, what: &str, phrases: &[&str]) {
        for p in phrases {
            assert!(
                self.stderr.contains(p),
                "{what}: expected {p:?} in the message:\n{}",
                self.stderr
            );
        }
    }
}

/// Runs `cmd` (stdin closed) for at most `limit`; killed and failed past it.
fn run_cmd(cmd: &mut Command, limit: Duration) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        signal: status.signal(),
        stderr: reader.join().unwrap(),
    }
}

fn flowpeek() -> &'static str {
    env!("CARGO_BIN_EXE_flowpeek")
}

/// `flowpeek run --source SOURCE --plugins PLUGINS` on one core, no watcher, quiet.
fn flowpeek_run(source: &str, plugins: &Path, logs: &Path, extra: &[&str]) -> Outcome {
    run_cmd(
        Command::new(flowpeek())
            .args(["run", "--source", source, "--plugins"])
            .arg(plugins)
            .arg("--log-dir")
            .arg(logs)
            .args(["--no-watch", "--quiet"])
            .args(extra),
        Duration::from_secs(120),
    )
}

fn demo_source() -> String {
    format!("pcap:{}", demo().display())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// Whether `tool` runs (`tool --version`).
fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A copy of the flowpeek binary that any user can run (mode 0755 in a 0755 directory under
/// the temp dir): the build tree may not be reachable by uid 65534.
fn public_flowpeek(dir: &TempDir) -> PathBuf {
    let bin = dir.join("flowpeek");
    std::fs::copy(flowpeek(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A directory anyone may write (for the log directory of a run as another user).
fn open_dir(label: &str) -> TempDir {
    let d = TempDir::new(label);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// `flowpeek-bench`, built with cargo (it belongs to another package, so cargo gives this
/// test no CARGO_BIN_EXE for it), in the target directory the plugin tests build into.
fn flowpeek_bench() -> PathBuf {
    let target = workspace().join("target/plugin-tests");
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "--quiet", "-p", "flowpeek-bench", "--target-dir"])
        .arg(&target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building flowpeek-bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/flowpeek-bench")
}

// ---------------------------------------------------------------------------------------
// /dev/shm full
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_dev_shm_is_refused_with_the_room_needed_and_the_fix() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs over /dev/shm needs root");
        return;
    }
    if !have("unshare") {
        eprintln!("skipped: no `unshare` (util-linux) to make a private mount namespace");
        return;
    }
    let ns = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status();
    if !ns.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare -m` failed (no CAP_SYS_ADMIN here, e.g. a container)");
        return;
    }
    let bench = flowpeek_bench();
    let out = TempDir::new("shm-full");
    let name = format!("flowpeek-test-full-{}", std::process::id());
    // In a private mount namespace: a 256 KiB tmpfs over /dev/shm; the default region
    // (1 ring of 4096 slots of 2 KiB, about 8 MiB) cannot fit, a 64-slot one (about 140 KiB)
    // can. Each run's stderr and status go to files in `out`.
    let script = r#"
        mount -t tmpfs -o size=256k flowpeek-test /dev/shm || exit 97
        "$1" gen --out "shm:$2" --count 10 --quiet 2>"$3/big.err"; echo $? >"$3/big.rc"
        "$1" gen --out "shm:$2" --count 10 --quiet --slots 64 2>"$3/small.err"; echo $? >"$3/small.rc"
        ls -A /dev/shm >"$3/left"
    "#;
    let ran = run_cmd(
        Command::new("unshare")
            .args(["-m", "sh", "-c", script, "sh"])
            .arg(&bench)
            .arg(&name)
            .arg(out.path()),
        Duration::from_secs(120),
    );
    if ran.code == Some(97) {
        eprintln!(
            "skipped: cannot mount a tmpfs in the namespace: {}",
            ran.stderr
        );
        return;
    }
    ran.expect_code(0, "the namespace script");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();

    // The status as the shell saw it: 128 + N for a signal (SIGBUS is 135).
    let big = Outcome {
        code: read("big.rc").trim().parse().ok(),
        signal: None,
        stderr: read("big.err"),
    };
    eprintln!("{}", big.stderr.trim_end());
    big.expect_code(2, "gen into a full /dev/shm");
    big.expect_says(
        "gen into a full /dev/shm",
        &[
            &format!("/dev/shm/{name}"),
            "/dev/shm has no room for this shm region",
            "it needs 8.1 MiB",
            "256 KiB free (of 256 KiB)",
            "ls -la /dev/shm",
            "fewer --rings or --slots",
            "mount -o remount,size=9M /dev/shm",
        ],
    );

    // A region that fits is made, filled and removed as before.
    let small = Outcome {
        code: read("small.rc").trim().parse().ok(),
        signal: None,
        stderr: read("small.err"),
    };
    small.expect_code(0, "gen of a region that fits");
    // Neither the refused region's temporary file nor the finished one stays behind.
    assert_eq!(read("left").trim(), "", "files left in /dev/shm");
}

// ---------------------------------------------------------------------------------------
// No permission for AF_PACKET
// ---------------------------------------------------------------------------------------

#[test]
fn afpacket_without_cap_net_raw_names_the_capability_and_the_fix() {
    if !is_root() {
        eprintln!("skipped: switching to uid 65534 and dropping CAP_NET_RAW needs root");
        return;
    }
    if !have("setpriv") {
        eprintln!("skipped: no `setpriv` (util-linux) to drop privileges");
        return;
    }
    let bin_dir = TempDir::new("afp-bin");
    let bin = public_flowpeek(&bin_dir);
    let plugins = TempDir::new("afp-plugins");
    let logs = open_dir("afp-logs");
    let run_as = |setpriv: &[&str]| {
        run_cmd(
            Command::new("setpriv")
                .args(setpriv)
                .arg(&bin)
                .args(["run", "--source", "afpacket:lo", "--plugins"])
                .arg(plugins.path())
                .arg("--log-dir")
                .arg(logs.join("logs"))
                .args(["--no-watch", "--quiet", "--cores", "1"]),
            Duration::from_secs(60),
        )
    };

    let nobody = run_as(&[
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    eprintln!("{}", nobody.stderr.trim_end());
    nobody.expect_code(2, "afpacket as uid 65534");
    nobody.expect_says(
        "afpacket as uid 65534",
        &[
            "lo: no permission for live capture",
            "opening an AF_PACKET socket failed",
            "CAP_NET_RAW",
            "run flowpeek as root",
            "sudo setcap cap_net_raw+ep $(command -v flowpeek)",
        ],
    );

    let capless_root = run_as(&["--bounding-set=-net_raw", "--inh-caps=-net_raw"]);
    eprintln!("{}", capless_root.stderr.trim_end());
    capless_root.expect_code(2, "afpacket as root without CAP_NET_RAW");
    capless_root.expect_says(
        "afpacket as root without CAP_NET_RAW",
        &[
            "lo: no permission for live capture",
            "CAP_NET_RAW",
            "runs as root but CAP_NET_RAW was removed",
            "--cap-add NET_RAW",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// The plugin directory and plugin configuration
// ---------------------------------------------------------------------------------------

#[test]
fn a_world_writable_plugin_directory_or_file_is_refused_with_chmod() {
    let lib = streamhash();
    let logs = TempDir::new("ww-logs");

    let dir = TempDir::new("ww-dir");
    place(&lib, dir.path(), "streamhash.so");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = flowpeek_run(&demo_source(), dir.path(), logs.path(), &["--cores", "1"]);
    eprintln!("{}", r.stderr.trim_end());
    // The refused plugin is reported; the run goes on without it.
    r.expect_code(0, "world-writable plugin directory");
    let d = dir.path().display();
    r.expect_says(
        "world-writable plugin directory",
        &[
            "plugin not loaded",
            &format!("{d}/streamhash.so: refused: its directory {d} is world-writable"),
            "could run code inside flowpeek",
            &format!("fix: chmod o-w {d}"),
        ],
    );

    let dir = TempDir::new("ww-file");
    let so = place(&lib, dir.path(), "streamhash.so");
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = flowpeek_run(&demo_source(), dir.path(), logs.path(), &["--cores", "1"]);
    r.expect_code(0, "world-writable plugin file");
    r.expect_says(
        "world-writable plugin file",
        &[
            &format!("{}: refused: the file is world-writable", so.display()),
            &format!("fix: chmod o-w {}", so.display()),
        ],
    );
}

/// An unreadable plugin directory: run as uid 65534 (as root) or with the directory at mode
/// 0 (as anyone else). Returns the outcome and the directory (kept alive).
fn unreadable_plugin_dir() -> (Outcome, TempDir) {
    let dir = TempDir::new("unreadable");
    let logs = open_dir("unreadable-logs");
    if is_root() {
        // Root reads any directory: the run must be another user's.
        assert!(have("setpriv"), "running as another user needs setpriv");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let bin_dir = TempDir::new("unreadable-bin");
        let bin = public_flowpeek(&bin_dir);
        // The capture too: the source is opened before the plugin directory.
        let capture = bin_dir.join("demo.pcapng");
        std::fs::copy(demo(), &capture).unwrap();
        std::fs::set_permissions(&capture, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = run_cmd(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin)
                .args(["run", "--source", &format!("pcap:{}", capture.display())])
                .arg("--plugins")
                .arg(dir.path())
                .arg("--log-dir")
                .arg(logs.join("logs"))
                .args(["--no-watch", "--quiet", "--cores", "1"]),
            Duration::from_secs(60),
        );
        (r, dir)
    } else {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
        let r = flowpeek_run(&demo_source(), dir.path(), &logs.join("logs"), &[]);
        (r, dir)
    }
}

#[test]
fn an_unreadable_plugin_directory_is_named() {
    let (r, dir) = unreadable_plugin_dir();
    eprintln!("{}", r.stderr.trim_end());
    r.expect_code(2, "unreadable plugin directory");
    r.expect_says(
        "unreadable plugin directory",
        &[
            &format!("plugin directory {}", dir.path().display()),
            "Permission denied",
        ],
    );
}

/// The fix for an unreadable directory is not "create it": needs the `HostError::Dir`
/// change in host/src/plugin/mod.rs (see the item 4 report).
#[test]
fn an_unreadable_plugin_directory_names_the_fix() {
    let (r, _dir) = unreadable_plugin_dir();
    r.expect_code(2, "unreadable plugin directory");
    r.expect_says(
        "unreadable plugin directory",
        &["cannot list it", "chmod u+rx"],
    );
    assert!(!r.stderr.contains("create it"), "{}", r.stderr);
}

#[test]
fn a_plugin_path_that_is_a_file_is_named() {
    let dir = TempDir::new("notadir");
    let file = dir.join("plugins");
    std::fs::write(&file, "not a directory\n").unwrap();
    let r = flowpeek_run(&demo_source(), &file, &dir.join("logs"), &[]);
    r.expect_code(2, "--plugins naming a file");
    r.expect_says(
        "--plugins naming a file",
        &[
            &format!("plugin directory {}", file.display()),
            "Not a directory",
            "--plugins at an existing directory",
        ],
    );
}

#[test]
fn a_malformed_plugin_configuration_or_an_unknown_key_is_named() {
    let logs = TempDir::new("badconf-logs");
    for (text, phrase) in [
        (
            "buffer = lots\n",
            "buffer: expected an integer, found \"lots\"",
        ),
        ("buffer = 0\n", "buffer: must be at least 1 byte"),
        (
            "buffer = 99999999999\n",
            "buffer: 99999999999 is more than 4 GiB",
        ),
        (
            "# a misspelt key\nbufer = 65536\n",
            "line 2: unknown key \"bufer\"; this plugin knows buffer, hash",
        ),
        (
            "buffer 65536\n",
            "line 1: \"buffer 65536\" is not `key = value`",
        ),
        (
            "hash = \"md5\"\n",
            "hash: \"md5\" is not one of \"sha256\", \"crc32\", \"xxh3\"",
        ),
    ] {
        let dir = TempDir::new("badconf");
        let so = place(&streamhash(), dir.path(), "streamhash.so");
        std::fs::write(dir.join("streamhash.toml"), text).unwrap();
        let r = flowpeek_run(&demo_source(), dir.path(), logs.path(), &["--cores", "1"]);
        eprintln!("{}", r.stderr.trim_end());
        // The plugin is not loaded; the run goes on without it.
        r.expect_code(0, text);
        r.expect_says(
            text,
            &[
                &format!("plugin not loaded: {}", so.display()),
                "streamhash: the constructor failed",
                phrase,
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------
// Invalid numbers on the command line
// ---------------------------------------------------------------------------------------

/// `flowpeek run` on the demo capture with `args` added.
fn run_with(args: &[&str]) -> Outcome {
    let plugins = TempDir::new("args");
    let logs = TempDir::new("args-logs");
    flowpeek_run(&demo_source(), plugins.path(), logs.path(), args)
}

#[test]
fn invalid_numbers_are_refused_by_clap_with_the_option_and_the_range() {
    for (args, phrases) in [
        (
            &["--max-flows", "0"][..],
            &[
                "invalid value '0' for '--max-flows <MAX_FLOWS>'",
                "0 is not in 1..=",
            ][..],
        ),
        (
            &["--max-flows", "lots"],
            &[
                "invalid value 'lots' for '--max-flows <MAX_FLOWS>'",
                "invalid digit",
            ],
        ),
        (
            &["--max-flows", "99999999999"],
            &["invalid value '99999999999' for '--max-flows <MAX_FLOWS>'"],
        ),
        (
            &["--buffer-memory", "lots"],
            &[
                "invalid value 'lots' for '--buffer-memory <BUFFER_MEMORY>'",
                "invalid digit",
            ],
        ),
        (
            &["--buffer-memory", "1.5"],
            &["invalid value '1.5' for '--buffer-memory <BUFFER_MEMORY>'"],
        ),
        (
            &["--cores", "lots"],
            &[
                "invalid value 'lots' for '--cores <CORES>'",
                "invalid digit",
            ],
        ),
        (&["--cores", "-1"], &["unexpected argument '-1'"]),
    ] {
        let what = args.join(" ");
        let r = run_with(args);
        r.expect_code(2, &what);
        r.expect_says(&what, phrases);
        r.expect_says(&what, &["For more information, try '--help'"]);
    }
}

/// 0 for `--cores` or `--buffer-memory`, and more cores than the machine can run threads
/// for: today `--cores 0` runs one core, `--buffer-memory 0` runs with every buffer refused,
/// and `--cores 100000` panics spawning threads. Needs the `main.rs` change of the item 4
/// report.
#[test]
fn zero_and_absurd_cores_or_buffer_memory_are_refused() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (args, phrases) in [
        (
            vec!["--cores".to_string(), "0".into()],
            vec![
                "invalid value '0' for '--cores <CORES>'".to_string(),
                format!("use 1 to {cpus}"),
            ],
        ),
        (
            vec!["--cores".into(), "100000".into()],
            vec![
                "invalid value '100000' for '--cores <CORES>'".into(),
                format!("this machine has {cpus} CPUs"),
            ],
        ),
        (
            vec!["--buffer-memory".into(), "0".into()],
            vec![
                "invalid value '0' for '--buffer-memory <BUFFER_MEMORY>'".into(),
                "0 is not in 1..".into(),
            ],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let phrases: Vec<&str> = phrases.iter().map(String::as_str).collect();
        let what = args.join(" ");
        let r = run_with(&args);
        r.expect_code(2, &what);
        r.expect_says(&what, &phrases);
    }
    // More workers than CPUs runs (they share CPUs), with a warning saying so.
    let more = (cpus + 1).to_string();
    let r = run_with(&["--cores", &more]);
    r.expect_code(0, "--cores CPUs+1");
    r.expect_says(
        "--cores CPUs+1",
        &[&format!(
            "warning: --cores {more} is more than the {cpus} CPUs"
        )],
    );
}
