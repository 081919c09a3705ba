//! The test load: before the host maps a plugin, a short-lived process opens the private copy
//! and checks its root module. A library that crashes the loader, its initialisers or
//! abi_stable's checks (a file overwritten in place, a forged header) then kills only that
//! process, and the file is refused with its status.
//!
//! That process is forked, one per load, by a test-load server: a child started once per
//! host (`flowpeek __probe-server`, single-threaded, so forking it is sound) that reads
//! requests on its stdin and answers on its stdout. Forking it costs a fraction of a
//! millisecond where starting the flowpeek binary costs about two (libpcap brings in dbus,
//! systemd and gcrypt). If the server cannot be started or dies, that load runs the old way:
//! `flowpeek __probe-plugin COPY FILE`, a process of its own. Both ways keep the same deadline
//! and give the same answers.
//!
//! Owns: the hidden subcommands' entry ([`main_hook`]), which program runs the test load, the
//! server and its protocol, and running a test load with a deadline (`test_load`).
//! Must not: map the library in this process, or keep a test load past its deadline (the
//! server outlives loads by design, and ends when the host closes its stdin).

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::load::{self, LoadError};

/// The hidden subcommand that runs one test load.
pub const SUBCOMMAND: &str = "__probe-plugin";
/// The hidden subcommand of the test-load server.
pub const SERVER: &str = "__probe-server";
/// How long a test load may take (a library's initialisers run in it).
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The child's exit status when it refused the file cleanly (its message on stderr).
const REFUSED: u8 = 3;
/// How much of a test load's stderr is kept.
const STDERR_KEPT: u64 = 64 << 10;

static PROGRAM: RwLock<Option<PathBuf>> = RwLock::new(None);
/// Test loads answered by the server, and run in a process of their own.
static BY_SERVER: AtomicU64 = AtomicU64::new(0);
static BY_OWN_PROCESS: AtomicU64 = AtomicU64::new(0);

/// How many test loads a process ran, by how they ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestLoads {
    /// Forked by the test-load server.
    pub server: u64,
    /// In a process of their own (`flowpeek __probe-plugin`), when there was no server.
    pub own_process: u64,
}

/// How many test loads this process ran through the server, and in processes of their own.
pub fn test_loads() -> TestLoads {
    TestLoads {
        server: BY_SERVER.load(Ordering::Relaxed),
        own_process: BY_OWN_PROCESS.load(Ordering::Relaxed),
    }
}

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
    if args.get(1).is_some_and(|a| a == SERVER) {
        return Some(server::serve());
    }
    if args.get(1).is_some_and(|a| a == SUBCOMMAND) {
        let (Some(copy), Some(file)) = (args.get(2), args.get(3)) else {
            eprintln!("flowpeek: usage: flowpeek {SUBCOMMAND} COPY FILE (internal)");
            return Some(ExitCode::from(2));
        };
        return Some(ExitCode::from(child(Path::new(copy), Path::new(file))));
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

/// The test load itself: load the copy as the host would, say what happened; the exit code.
fn child(copy: &Path, file: &Path) -> u8 {
    match load::open_image(file, copy) {
        Ok(lib) => {
            println!("ok {}", lib.name());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            REFUSED
        }
    }
}

/// How a test load ended.
enum Outcome {
    /// It exited (with this status) or was killed (by this signal); what it wrote on stderr.
    Ended(std::process::ExitStatus, String),
    /// Still running at the deadline: killed.
    TimedOut,
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
    let outcome = match server::request(&program, copy, file) {
        Some(outcome) => {
            BY_SERVER.fetch_add(1, Ordering::Relaxed);
            outcome
        }
        None => {
            BY_OWN_PROCESS.fetch_add(1, Ordering::Relaxed);
            match spawn_one(&program, copy, file) {
                Ok(outcome) => outcome,
                Err(e) => return Err(failed(e)),
            }
        }
    };
    let (status, stderr) = match outcome {
        Outcome::Ended(st, stderr) => (Some(st), stderr),
        Outcome::TimedOut => (None, String::new()),
    };
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

/// One test load in a process of its own (`flowpeek __probe-plugin COPY FILE`).
fn spawn_one(program: &Path, copy: &Path, file: &Path) -> Result<Outcome, String> {
    let mut child = Command::new(program)
        .arg(SUBCOMMAND)
        .arg(copy)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not be started ({}: {e})", program.display()))?;
    let Some(pipe) = child.stderr.take() else {
        return Err("could not be started (no stderr pipe)".into());
    };
    let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
    match watch(pipe, || child.try_wait().ok().flatten()) {
        (Some(st), said) => Ok(Outcome::Ended(
            st,
            String::from_utf8_lossy(&said).into_owned(),
        )),
        (None, _) => {
            let _ = child.kill();
            let _ = child.wait();
            Ok(Outcome::TimedOut)
        }
    }
}

/// What a test load writes on stderr, kept up to [`STDERR_KEPT`] bytes.
struct StderrTail {
    pipe: std::fs::File,
    said: Vec<u8>,
    /// The write end is still open somewhere.
    open: bool,
}

impl StderrTail {
    /// Reads what is there within `wait`; true if bytes came.
    fn take(&mut self, wait: Duration) -> bool {
        if !self.open || !readable(self.pipe.as_raw_fd(), wait) {
            return false;
        }
        let mut buf = [0u8; 4096];
        match self.pipe.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.open = false;
                false
            }
            Ok(n) => {
                let room = (STDERR_KEPT as usize).saturating_sub(self.said.len());
                self.said.extend_from_slice(&buf[..n.min(room)]);
                true
            }
        }
    }
}

/// Waits for a test load to end (`ended` answers whether it has, without blocking) while
/// keeping what it writes on `pipe` (its stderr), for at most [`DEADLINE`]. Returns what
/// `ended` answered (None: still running at the deadline, for the caller to kill) and the
/// stderr kept.
fn watch<T>(pipe: std::fs::File, mut ended: impl FnMut() -> Option<T>) -> (Option<T>, Vec<u8>) {
    let deadline = Instant::now() + DEADLINE;
    let mut tail = StderrTail {
        pipe,
        said: Vec::new(),
        open: true,
    };
    loop {
        // Read what it says until it closes stderr, looking whether it ended meanwhile (a
        // process it started may keep the pipe open).
        if tail.open {
            tail.take(Duration::from_millis(20));
        }
        if let Some(v) = ended() {
            // What it wrote last may still be in the pipe: take what is there now (bounded:
            // a process it started may go on writing).
            for _ in 0..=STDERR_KEPT / 4096 {
                if !tail.take(Duration::ZERO) {
                    break;
                }
            }
            return (Some(v), tail.said);
        }
        if Instant::now() >= deadline {
            return (None, tail.said);
        }
        if !tail.open {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits up to `wait` for `fd` to be readable (or closed).
fn readable(fd: std::os::fd::RawFd, wait: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n >= 0 {
            return n > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
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

/// The test-load server and the host's side of it.
mod server {
    use std::ffi::{OsStr, OsString};
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::path::Path;
    use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::{child, readable, watch, Outcome, DEADLINE, SERVER, STDERR_KEPT};

    /// Answers: the load ended (with its wait status), or was killed at the deadline, or
    /// the server could not run it (the host then runs it the old way).
    const ENDED: i32 = 0;
    const TIMED_OUT: i32 = 1;
    const CANNOT: i32 = 2;
    /// How long the host waits for an answer beyond the deadline the server keeps.
    const SLACK: Duration = Duration::from_secs(5);
    /// Longest path a request may carry.
    const MAX_FIELD: u32 = 1 << 16;

    struct Running {
        child: Child,
        to: ChildStdin,
        from: ChildStdout,
    }

    /// The server of this process, started at the first test load.
    static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

    /// Runs one test load through the server (starting it if needed); `None` if there is no
    /// working server, and then the caller runs the load itself.
    pub(super) fn request(program: &Path, copy: &Path, file: &Path) -> Option<Outcome> {
        let mut guard = RUNNING.lock().ok()?;
        if guard.is_none() {
            *guard = start(program);
        }
        let running = guard.as_mut()?;
        let answer = exchange(running, copy, file);
        if answer.is_err() {
            // Dead, or not answering: the server goes with every test load it forked (they
            // share its process group), and the next load starts a new one.
            if let Some(mut r) = guard.take() {
                if let Ok(pid) = i32::try_from(r.child.id()) {
                    // SAFETY: signals the process group this host created for the server
                    // (it has not been reaped, so the group id is still its own).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = r.child.wait();
            }
        }
        match answer {
            Ok(Reply::Done(outcome)) => Some(outcome),
            // It could not fork, or died: this load runs the old way.
            Ok(Reply::Cannot) | Err(Lost::Gone) => None,
            // Silent past the deadline the load was given: the load hung it (or hung with
            // it). Running it again in a process of its own would cost the deadline twice.
            Err(Lost::Silent) => Some(Outcome::TimedOut),
        }
    }

    fn start(program: &Path) -> Option<Running> {
        let mut child = Command::new(program)
            .arg(SERVER)
            // A group of its own: the server and the loads it forks end together.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let to = child.stdin.take()?;
        let from = child.stdout.take()?;
        Some(Running { child, to, from })
    }

    /// What the server answered.
    enum Reply {
        Done(Outcome),
        /// It could not run the load (no pipe, no fork).
        Cannot,
    }

    /// Why the server gave no answer.
    enum Lost {
        /// It closed its end, sent garbage, or the request could not be sent.
        Gone,
        /// Nothing came within the load's deadline and the slack.
        Silent,
    }

    /// One request and its reply.
    fn exchange(r: &mut Running, copy: &Path, file: &Path) -> Result<Reply, Lost> {
        let mut msg = Vec::new();
        for field in [copy.as_os_str(), file.as_os_str()] {
            let bytes = field.as_bytes();
            let len = u32::try_from(bytes.len()).map_err(|_| Lost::Gone)?;
            msg.extend_from_slice(&len.to_le_bytes());
            msg.extend_from_slice(bytes);
        }
        r.to.write_all(&msg)
            .and_then(|()| r.to.flush())
            .map_err(|_| Lost::Gone)?;
        let by = Instant::now() + DEADLINE + SLACK;
        let mut head = [0u8; 12];
        read_by(&mut r.from, &mut head, by)?;
        let word = |i: usize| i32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (kind, status) = (word(0), word(4));
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if u64::from(len) > STDERR_KEPT {
            return Err(Lost::Gone);
        }
        let mut said = vec![0u8; len as usize];
        read_by(&mut r.from, &mut said, by)?;
        match kind {
            ENDED => Ok(Reply::Done(Outcome::Ended(
                std::process::ExitStatus::from_raw(status),
                String::from_utf8_lossy(&said).into_owned(),
            ))),
            TIMED_OUT => Ok(Reply::Done(Outcome::TimedOut)),
            CANNOT => Ok(Reply::Cannot),
            _ => Err(Lost::Gone),
        }
    }

    /// Fills `buf` from `from`, waiting no later than `by`.
    fn read_by(from: &mut ChildStdout, buf: &mut [u8], by: Instant) -> Result<(), Lost> {
        let mut got = 0;
        while got < buf.len() {
            if !readable(
                from.as_raw_fd(),
                by.saturating_duration_since(Instant::now()),
            ) {
                return Err(Lost::Silent);
            }
            match from.read(&mut buf[got..]) {
                Ok(0) | Err(_) => return Err(Lost::Gone),
                Ok(n) => got += n,
            }
        }
        Ok(())
    }

    /// The server: one test load per request, each in a forked child, until stdin closes
    /// (the host is gone). It never starts a thread, so each child may run any code.
    pub(super) fn serve() -> ExitCode {
        let mut input = std::io::stdin();
        let mut output = std::io::stdout();
        loop {
            let (Some(copy), Some(file)) = (field(&mut input), field(&mut input)) else {
                return ExitCode::SUCCESS;
            };
            let (kind, status, said) = run_one(&copy, &file);
            let mut msg = Vec::with_capacity(12 + said.len());
            msg.extend_from_slice(&kind.to_le_bytes());
            msg.extend_from_slice(&status.to_le_bytes());
            msg.extend_from_slice(&(said.len() as u32).to_le_bytes());
            msg.extend_from_slice(&said);
            if output
                .write_all(&msg)
                .and_then(|()| output.flush())
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
        }
    }

    fn field(input: &mut impl Read) -> Option<OsString> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).ok()?;
        let len = u32::from_le_bytes(len);
        if len > MAX_FIELD {
            return None;
        }
        let mut bytes = vec![0u8; len as usize];
        input.read_exact(&mut bytes).ok()?;
        Some(OsString::from_vec(bytes))
    }

    /// Forks one test load; (answer, wait status, what it wrote on stderr).
    fn run_one(copy: &OsStr, file: &OsStr) -> (i32, i32, Vec<u8>) {
        let cannot = (CANNOT, 0, Vec::new());
        let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        else {
            return cannot;
        };
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two new descriptors into the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return cannot;
        }
        let [rd, wr] = fds;
        // SAFETY: this process has one thread (the server starts none), so the child may
        // allocate, lock and load libraries; it leaves only through _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: dup2 onto the standard descriptors of this (child) process, from
            // descriptors it owns; a child that cannot set them up ends at once.
            unsafe {
                if libc::dup2(null.as_raw_fd(), 0) < 0
                    || libc::dup2(null.as_raw_fd(), 1) < 0
                    || libc::dup2(wr, 2) < 0
                {
                    libc::_exit(127);
                }
            }
            let code = child(Path::new(copy), Path::new(file));
            let _ = std::io::stdout().flush();
            // SAFETY: ends the child without running the exit handlers it shares with the
            // server.
            unsafe { libc::_exit(i32::from(code)) }
        }
        // SAFETY: `wr` is this process's descriptor, not used after this.
        unsafe { libc::close(wr) };
        // SAFETY: `rd` is this process's descriptor, owned by the File from here on.
        let pipe: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(rd) };
        if pid < 0 {
            return cannot;
        }
        let ended = watch(pipe, || {
            let mut status = 0;
            // SAFETY: waits for our own child, writing its status into `status`.
            (unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid).then_some(status)
        });
        match ended {
            (Some(status), said) => (ENDED, status, said),
            (None, said) => {
                let mut status = 0;
                // SAFETY: `pid` is our child, not yet reaped, so the pid is still its own.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                (TIMED_OUT, 0, said)
            }
        }
    }
}
