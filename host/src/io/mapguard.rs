//! A guard that turns "the mapped capture file shrank" from a fatal `SIGBUS` into an error.
//!
//! A capture is read through a read-only memory map ([`super::pcap`]). When another process
//! truncates the file, touching a page past the new end raises `SIGBUS`. Each mapping
//! registers its range here; the process-wide `SIGBUS` handler, when the faulting address
//! lies in a registered range, maps anonymous zero pages over the rest of that range (so
//! the faulting read completes, reading zeros) and raises the mapping's flag. The reader
//! checks the flag after each packet and before handing the packet out, so no packet that
//! read zeros is ever delivered: it stops with "the file shrank".
//!
//! A fault outside every registered range goes to the handler that was installed before
//! (the Rust runtime's stack-overflow check) or, without one, kills the process as it
//! always did. Must not: allocate, lock or do anything in the handler beyond atomics and
//! `mmap`/`sigaction` system calls; the registry is a fixed array of atomics.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings guarded at once; beyond that a mapping is read unguarded (as before).
const SLOTS: usize = 256;

static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static HIT: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The `SIGBUS` action installed before ours (leaked, set once before ours is installed).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();
/// Never set: the flag of an unguarded mapping.
static NEVER: AtomicBool = AtomicBool::new(false);

/// One guarded mapping; unregisters it when dropped (before the mapping goes away).
#[derive(Debug)]
pub(crate) struct MapGuard {
    slot: Option<usize>,
}

impl MapGuard {
    /// Guards the mapping `[start, start + len)`.
    pub(crate) fn register(start: *const u8, len: usize) -> MapGuard {
        install();
        let start = start as usize;
        for i in 0..SLOTS {
            if START[i].load(Ordering::Acquire) != 0 {
                continue;
            }
            // Claim the slot with its length first, then publish the start.
            if LEN[i]
                .compare_exchange(0, len, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            HIT[i].store(false, Ordering::Relaxed);
            START[i].store(start, Ordering::Release);
            return MapGuard { slot: Some(i) };
        }
        MapGuard { slot: None }
    }

    /// The flag the handler raises when the file shrank under this mapping.
    pub(crate) fn flag(&self) -> &'static AtomicBool {
        match self.slot {
            Some(i) => &HIT[i],
            None => &NEVER,
        }
    }
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            START[i].store(0, Ordering::Release);
            HIT[i].store(false, Ordering::Relaxed);
            LEN[i].store(0, Ordering::Release);
        }
    }
}

#[allow(unsafe_code)]
fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid value to be filled; `sigaction` reads
        // `act` and writes `old`, both live for the call; the handler only uses
        // async-signal-safe operations (atomics, mmap, sigaction).
        unsafe {
            let old = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, std::ptr::null(), old);
            PREVIOUS.store(old, Ordering::Release);
            libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
        }
    });
}

#[allow(unsafe_code)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for i in 0..SLOTS {
        let start = START[i].load(Ordering::Acquire);
        let len = LEN[i].load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= start + len {
            continue;
        }
        let from = addr & !(page - 1);
        // SAFETY: `[from, start + len)` lies inside the registered read-only mapping,
        // which its owner keeps mapped while registered; replacing its pages beyond the
        // file's end with zero pages changes only bytes the reader is about to discard
        // (it checks the flag before handing a packet out).
        let p = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                start + len - from,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            HIT[i].store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours: the handler installed before, or the default action.
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `prev` was leaked by `install` before this handler was installed; the calls
    // follow the previous action's own convention (SA_SIGINFO or not).
    unsafe {
        if !prev.is_null() {
            let h = (*prev).sa_sigaction;
            if h != libc::SIG_DFL && h != libc::SIG_IGN {
                if (*prev).sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(h);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
                    f(sig);
                }
                return;
            }
        }
        // Returning re-runs the faulting access, which now gets the default action.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
    }
}
