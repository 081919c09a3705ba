//! The system calls of the AF_PACKET socket, each wrapped once with its safety argument.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

pub(super) fn if_nametoindex(name: &CString) -> u32 {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

pub(super) fn socket() -> Option<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: `fd` is a freshly created descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn set_errno(code: i32) {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = code };
}

/// `setsockopt(SOL_PACKET, opt, value)`; `None` on failure (errno set).
pub(super) fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: &T) -> Option<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it
    // (for PACKET_FANOUT_DATA it also reads the filter array `value` points to, which
    // the caller keeps alive across the call).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            opt,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    (rc == 0).then_some(())
}

pub(super) fn mmap_ring(fd: RawFd, len: usize) -> Option<NonNull<u8>> {
    // SAFETY: maps a fresh region chosen by the kernel (no address hint), backed by the
    // socket's ring; nothing else in the process aliases it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // MAP_LOCKED fails under a low RLIMIT_MEMLOCK for non-root users; retry without.
        // SAFETY: as above.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        return NonNull::new(p.cast());
    }
    NonNull::new(p.cast())
}

pub(super) fn munmap_ring(p: NonNull<u8>, len: usize) {
    // SAFETY: `p`/`len` are exactly a mapping made by `mmap_ring`, unmapped once (from
    // `Drop`), after which no reference into it survives (they all borrow the socket).
    unsafe {
        libc::munmap(p.as_ptr().cast(), len);
    }
}

/// Binds to `ifindex` for all protocols; returns the device's ARPHRD type.
pub(super) fn bind(fd: RawFd, ifindex: u32) -> Option<u16> {
    // SAFETY: all-zero is a valid `sockaddr_ll`.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a valid `sockaddr_ll` of the size passed.
    let rc = unsafe { libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len) };
    if rc != 0 {
        return None;
    }
    let mut out_len = len;
    // SAFETY: `sll` is writable for `out_len` bytes, which the kernel updates.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut out_len,
        )
    };
    Some(if rc == 0 { sll.sll_hatype } else { u16::MAX })
}

/// Waits for the socket to become readable; returns `revents` (0 on timeout or EINTR).
pub(super) fn poll(fd: RawFd, ms: libc::c_int) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLERR,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(if rc == 0 { 0 } else { p.revents })
}

/// Reads and clears the socket's pending error.
pub(super) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` is a writable c_int of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

pub(super) fn packet_statistics(fd: RawFd) -> io::Result<libc::tpacket_stats_v3> {
    // SAFETY: all-zero is a valid `tpacket_stats_v3` (three integers).
    let mut st: libc::tpacket_stats_v3 = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `st` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}
