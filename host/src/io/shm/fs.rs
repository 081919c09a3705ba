//! The region's file on /dev/shm: its name ([`region_path`]), reserving its blocks so that a
//! full /dev/shm is an error and not a `SIGBUS` ([`reserve`]), the room left for the message
//! ([`fs_space`]), and I/O errors as [`ShmError`]s.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{ShmError, SHM_DIR};

pub(super) fn region_path(name: &str) -> Result<PathBuf, ShmError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('/') || name.contains('\0') {
        Some("it contains '/' or NUL")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ShmError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(Path::new(SHM_DIR).join(name)),
    }
}

/// `bytes` for a message: KiB below 1 MiB, then MiB, then GiB (one decimal).
pub(super) fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// A `size=` for `mount -o remount` that fits the region: what is in use now plus the
/// region, rounded up to whole MiB (`2G` when the current use is unknown).
pub(super) fn remount_size(needed: u64, free: Option<u64>, size: Option<u64>) -> String {
    match (free, size) {
        (Some(free), Some(size)) => {
            let want = size.saturating_sub(free).saturating_add(needed);
            format!("{}M", want.div_ceil(1 << 20).max(1))
        }
        _ => "2G".into(),
    }
}

/// Free bytes (for an unprivileged user) and total bytes of the filesystem holding `file`.
pub(super) fn fs_space(file: &File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid `statvfs` (integers only).
    #[allow(unsafe_code)]
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call; `st` is valid and exclusive.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Sizes `file` to `len` bytes and reserves its blocks (`fallocate`), so that a full
/// /dev/shm is an error here instead of `SIGBUS` when a page is first touched. Where the
/// filesystem cannot reserve (`EOPNOTSUPP`), the file is sized sparsely as before.
pub(super) fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let off =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: fallocate on an fd we own, mode 0 (allocate and extend); no memory is
        // passed.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // tmpfs gives up with EINTR when a signal is pending: try again.
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return file.set_len(len),
            _ => return Err(e),
        }
    }
}

pub(super) fn io_err(path: &Path, op: &'static str, source: std::io::Error) -> ShmError {
    match source.kind() {
        std::io::ErrorKind::NotFound => ShmError::NotFound {
            path: path.to_owned(),
        },
        std::io::ErrorKind::AlreadyExists => ShmError::Exists {
            path: path.to_owned(),
        },
        _ => ShmError::Io {
            path: path.to_owned(),
            op,
            source,
        },
    }
}
