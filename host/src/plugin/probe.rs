//! The test load: before the host maps a plugin, a short-lived child process (the flowpeek
//! binary itself, `flowpeek __probe-plugin COPY FILE`) opens the private copy and checks its
//! root module. A library that crashes the loader, its initialisers or abi_stable's checks
//! (a file overwritten in place, a forged header) then kills only the child, and the file is
//! refused with the child's status.
//!
//! Owns: the hidden subcommand's entry ([`main_hook`]), which program runs the test load, and
//! running it with a deadline (`test_load`).
//! Must not: map the library in this process, or keep a child past its deadline.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::load::{self, LoadError};

/// The hidden subcommand the test load runs.
pub const SUBCOMMAND: &str = "__probe-plugin";
/// How long a test load may take (a library's initialisers run in it).
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The child's exit status when it refused the file cleanly (its message on stderr).
const REFUSED: u8 = 3;

static PROGRAM: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Makes every later load test-load its file with `program` (a flowpeek binary) first.
pub fn enable(program: PathBuf) {
    if let Ok(mut p) = PROGRAM.write() {
        *p = Some(program);
    }
}

/// The program that test-loads plugin files, if any (the flowpeek binary sets itself; a
/// library user without one loads in-process only, with the structural checks).
pub fn program() -> Option<PathBuf> {
    PROGRAM.read().ok().and_then(|p| p.clone())
}

/// For `main`, before parsing arguments: runs the test load and returns its exit code when
/// this process is a test-load child; otherwise enables test loads by this very binary
/// (`/proc/self/exe`, which stays this image even if the file is replaced) and returns None.
pub fn main_hook() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == SUBCOMMAND) {
        let (Some(copy), Some(file)) = (args.get(2), args.get(3)) else {
            eprintln!("flowpeek: usage: flowpeek {SUBCOMMAND} COPY FILE (internal)");
            return Some(ExitCode::from(2));
        };
        return Some(child(Path::new(copy), Path::new(file)));
    }
    let me = Path::new("/proc/self/exe");
    let program = if me.exists() {
        Some(me.to_path_buf())
    } else {
        std::env::current_exe().ok()
    };
    if let Some(p) = program {
        enable(p);
    }
    None
}

/// The child: load the copy as the host would, say what happened, exit.
fn child(copy: &Path, file: &Path) -> ExitCode {
    match load::open_image(file, copy) {
        Ok(lib) => {
            println!("ok {}", lib.name());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(REFUSED)
        }
    }
}

/// Test-loads `copy` (the private copy of `file`) in a child process, if a program is set.
pub(crate) fn test_load(copy: &Path, file: &Path) -> Result<(), LoadError> {
    let Some(program) = program() else {
        return Ok(());
    };
    let failed = |detail: String| LoadError::TestLoad {
        path: file.into(),
        detail,
    };
    let mut child = Command::new(&program)
        .arg(SUBCOMMAND)
        .arg(copy)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("could not be started ({}: {e})", program.display())))?;
    // The reader says when the child's stderr closes, which is when it exits (unless a
    // process it started keeps the pipe): the wait then costs no polling interval.
    let mut pipe = child.stderr.take();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(p) = pipe.as_mut() {
            // Bounded: a library printing without end must not grow this process.
            let _ = p.take(64 << 10).read_to_end(&mut s);
            let _ = std::io::copy(p, &mut std::io::sink());
        }
        drop(closed_tx);
        String::from_utf8_lossy(&s).into_owned()
    });
    let started = Instant::now();
    let _ = closed_rx.recv_timeout(DEADLINE);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(failed(format!("could not be waited for ({e})"))),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    let said = last_lines(&stderr);
    match status {
        None => Err(failed(format!(
            "did not finish within {} s (its initialisers may hang)",
            DEADLINE.as_secs()
        ))),
        Some(st) if st.success() => Ok(()),
        Some(st) if st.code() == Some(i32::from(REFUSED)) => Err(LoadError::Refused {
            path: file.into(),
            message: stderr.trim_end().to_string(),
        }),
        Some(st) => {
            let how = match (st.signal(), st.code()) {
                (Some(sig), _) => format!("was killed by signal {sig} ({})", signal_name(sig)),
                (None, Some(code)) => format!("exited with status {code}"),
                (None, None) => "ended abnormally".into(),
            };
            Err(failed(if said.is_empty() {
                how
            } else {
                format!("{how}: {said}")
            }))
        }
    }
}

/// The last non-empty lines of the child's stderr, on one line.
fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(3)..].join(" | ");
    if out.len() > 400 {
        let mut cut = 400;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => "a signal",
    }
}
