//! Loading a plugin file: the ownership checks on what is really opened, a private copy taken
//! from that descriptor, the ELF checks on the copy, a test load in a child process
//! ([`super::probe`]), then dlopen, the root-module header checked against the library's own
//! mapping, abi_stable's layout check, the API version and the plugin's name. A library with
//! no root module that exports `mos_plugin_init` is a C plugin ([`super::cabi`]: its
//! `mos_api.h` table version is checked instead); one with neither is refused.
//!
//! Owns: [`load`] and everything it refuses ([`LoadError`]). Libraries are never unloaded
//! (Rust thread-local destructors make `dlclose` unsound); each load is one retained image.
//! Must not: map a file it has not copied and checked, or leave its private directory behind.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::library::{
    lib_header_from_raw_library, AbiHeader, LibHeader, LibraryError, RawLibrary,
    ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use flowpeek_plugin_api::abi::{
    MonitorObj, PluginExt, PluginExtFn, PluginModRef, API_VERSION, EXT_SYMBOL, MIN_API_VERSION,
};

use super::elf::{self, ElfError};

/// A plugin library, loaded and checked: a Rust plugin (abi_stable root module) or a C
/// plugin (`mos_plugin_init`, [`super::cabi`]).
#[derive(Clone, Copy)]
pub struct Library {
    kind: Kind,
    /// What identifies the file that was loaded (for the load and reload lines).
    pub stamp: Stamp,
}

#[derive(Clone, Copy)]
enum Kind {
    /// The root module, and its API 2 entry points ([`EXT_SYMBOL`]), layout-checked:
    /// `None` for a library built against API 1 (called one event at a time, without
    /// `read`).
    Rust {
        module: PluginModRef,
        ext: Option<&'static PluginExt>,
    },
    C(&'static super::cabi::CLib),
}

/// What identifies a loaded file: the CRC-32 of its bytes and its modification time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// CRC-32 (IEEE) of the file as read.
    pub crc32: u32,
    /// Modification time, seconds since the Unix epoch (0 if unknown).
    pub mtime: u64,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crc32 {:08x}, modified {} (Unix time)",
            self.crc32, self.mtime
        )
    }
}

impl Library {
    /// The plugin's name (its records go to `<name>.jsonl`; checked by [`check_name`]).
    pub fn name(&self) -> String {
        match self.kind {
            Kind::Rust { module: m, .. } => (m.name())().to_string(),
            Kind::C(c) => c.name().to_string(),
        }
    }
    /// The plugin's own version.
    pub fn version(&self) -> String {
        match self.kind {
            Kind::Rust { module: m, .. } => (m.version())().to_string(),
            Kind::C(c) => c.version().to_string(),
        }
    }
    /// Whether it is a C plugin (mos_api.h).
    pub fn is_c(&self) -> bool {
        matches!(self.kind, Kind::C(_))
    }
    /// The plugin API it was built against: 1 or 2 (Rust), 0 for a C plugin.
    pub fn api(&self) -> u32 {
        match self.kind {
            Kind::Rust { ext: Some(_), .. } => 2,
            Kind::Rust { ext: None, .. } => 1,
            Kind::C(_) => 0,
        }
    }
    /// The API 2 entry points, if the library has them.
    pub(crate) fn ext(&self) -> Option<&'static PluginExt> {
        match self.kind {
            Kind::Rust { ext, .. } => ext,
            Kind::C(_) => None,
        }
    }
    /// Makes the instance of one core from the configuration text; also returns the stream
    /// filter a C plugin bound with `mtcp_bind_monitor_filter`.
    pub(crate) fn instantiate(
        &self,
        core: u32,
        config: &str,
    ) -> Result<(MonitorObj, Option<String>), String> {
        match self.kind {
            Kind::Rust { module: m, ext } => {
                if let Some(ext) = ext {
                    (ext.bind)(&super::ffi::HOST_EXT);
                }
                (m.new())(core, config.into())
                    .into_result()
                    .map(|obj| (obj, None))
                    .map_err(|e| format!("the constructor failed: {e}"))
            }
            Kind::C(c) => super::cabi::instantiate(c, core, config),
        }
    }
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Library({} {})", self.name(), self.version())
    }
}

/// The fix for a file that was incomplete or changed while it was read.
const REPLACE_FIX: &str = "copy the whole file to a temporary name in the same directory (not ending in .so) and rename it into place";

/// Why a plugin file was refused. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read it ({source}); check the path, and that the user running flowpeek may read it (and search its directory)")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// World-writable file or directory, or a file owned by another user.
    #[error("{path}: refused: {why} (anyone who can change it could run code inside flowpeek); fix: {fix}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// The command or step that fixes it.
        fix: String,
    },
    /// Not a shared library for this machine.
    #[error("{path}: not a loadable library ({detail}); {fix}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        detail: String,
        /// What to do.
        fix: &'static str,
    },
    /// A truncated, half-written or damaged ELF file.
    #[error("{path}: {detail}: the file is incomplete or damaged; {REPLACE_FIX}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is out of bounds.
        detail: String,
    },
    /// The file changed while it was being read (it is still being written).
    #[error("{path}: the file changed while it was read (it is still being written); it is loaded once it has been still for a moment; {REPLACE_FIX}")]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// The test load in a child process crashed, hung or failed.
    #[error("{path}: refused: a test load in a separate process {detail}; the file is damaged or incomplete (e.g. overwritten in place), or its initialisers crash; {REPLACE_FIX}")]
    TestLoad {
        /// The file.
        path: PathBuf,
        /// How the child ended.
        detail: String,
    },
    /// The test load refused the file cleanly, with this message.
    #[error("{message}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The child's message.
        message: String,
    },
    /// dlopen failed on a file that looked complete.
    #[error(
        "{path}: the dynamic loader refused it ({detail}); if it was being replaced, {REPLACE_FIX}"
    )]
    LoaderRefused {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// Neither a root module symbol nor `mos_plugin_init`.
    #[error("{path}: no flowpeek root module and no mos_plugin_init: a Rust plugin exports a root module with flowpeek_plugin_api::export_monitor!(YourMonitor); a C plugin includes mos_api.h and exports int mos_plugin_init(mctx_t, const char *)")]
    MissingRootModule {
        /// The file.
        path: PathBuf,
    },
    /// A C plugin that cannot be hosted.
    #[error("{path}: refused as a C plugin: {detail}")]
    CPlugin {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The root module symbol or its header points outside the library.
    #[error("{path}: refused: its root-module header {detail}, outside the library's own mapping: the file is damaged or forged; rebuild it with flowpeek_plugin_api::export_monitor!")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which pointer, and where it points.
        detail: String,
    },
    /// abi_stable found an incompatible layout or version.
    #[error("{path}: built against an incompatible flowpeek-plugin-api ({detail}); rebuild it against this host's plugin-api")]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// abi_stable's report (shortened).
        detail: String,
    },
    /// The plugin's API version is outside the range this host loads.
    #[error("{path}: built against plugin-api {found}, this host speaks {max}: rebuild (plugin-api {found} is too {which}: this host loads plugin-api {min} to {max}; build the plugin against this host's flowpeek-plugin-api)")]
    ApiVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// "new" or "old".
        which: &'static str,
        /// The oldest loaded.
        min: u32,
        /// The newest loaded.
        max: u32,
    },
    /// The plugin's name cannot name its record file.
    #[error("{path}: refused: its plugin name {name:?} {why}; a name may hold only A-Z, a-z, 0-9, '_', '.' and '-' (not \".\" or \"..\", 1 to {MAX_NAME} characters), since it names <log-dir>/<name>.jsonl; fix the plugin's Monitor::NAME")]
    BadName {
        /// The file.
        path: PathBuf,
        /// The name (as the plugin gave it).
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// Another file's plugin has the same name.
    #[error("{path}: refused: its plugin is named {name:?}, like the plugin loaded from {other}; two plugins cannot share a name (both would write <log-dir>/{name}.jsonl); remove one, or give one another Monitor::NAME")]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The file whose plugin has it.
        other: PathBuf,
    },
    /// The private copy could not be made.
    #[error("cannot copy {path} to {dir} before loading it ({source})")]
    Copy {
        /// The file.
        path: PathBuf,
        /// The private directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl LoadError {
    /// Whether the file was still being written: worth another try once it is still.
    pub fn is_changing(&self) -> bool {
        matches!(self, LoadError::Changing { .. })
    }
}

/// Longest plugin name.
pub const MAX_NAME: usize = 128;

/// Checks that a plugin name can name its record file: `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn check_name(path: &Path, name: &str) -> Result<(), LoadError> {
    let bad = |why: String| {
        Err(LoadError::BadName {
            path: path.into(),
            name: name.into(),
            why,
        })
    };
    if name.is_empty() {
        return bad("is empty".into());
    }
    if name.len() > MAX_NAME {
        return bad(format!("is {} bytes long", name.len()));
    }
    if name == "." || name == ".." {
        return bad("is a directory name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(format!("contains {c:?}"));
    }
    Ok(())
}

/// What was read from a plugin file, through one descriptor.
struct Image {
    bytes: Vec<u8>,
}

fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn unsafe_err<T>(path: &Path, why: String, fix: String) -> Result<T, LoadError> {
    Err(LoadError::Unsafe {
        path: path.into(),
        why,
        fix,
    })
}

/// Opens `dir` as a directory descriptor.
fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is checked and owned.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` inside the directory `dir` without following a symlink.
fn open_in(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<File> {
    let c = CString::new(name.as_bytes())?;
    // SAFETY: `dir` is an open directory descriptor and `c` a valid NUL-terminated name; the
    // returned descriptor is checked and owned.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn fstat(fd: &impl AsRawFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` a valid, writable stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// The identity and state of a file: a change in any means it was written or replaced.
fn identity(st: &libc::stat) -> (u64, u64, i64, i64, i64) {
    (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
    )
}

/// Reads the plugin file at `path` through one descriptor, after checking what that
/// descriptor really is: the link's directory, the real directory (a symlink is resolved)
/// and the file itself must not be changeable by others, and the file must not change while
/// it is read.
fn read_checked(path: &Path) -> Result<Image, LoadError> {
    let unreadable = |p: &Path| {
        let p = p.to_path_buf();
        move |source| LoadError::Unreadable { path: p, source }
    };
    let link_dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = link_dir {
        let m = std::fs::metadata(dir).map_err(unreadable(dir))?;
        if m.mode() & 0o002 != 0 {
            return unsafe_err(
                path,
                format!("its directory {} is world-writable", dir.display()),
                format!("chmod o-w {}", dir.display()),
            );
        }
    }
    let real = std::fs::canonicalize(path).map_err(unreadable(path))?;
    let (Some(real_dir), Some(real_name)) = (real.parent(), real.file_name()) else {
        return unsafe_err(
            path,
            format!("it resolves to {}, not a file", real.display()),
            "put the plugin's library (the cdylib's .so file) there".into(),
        );
    };
    let dfd = open_dir(real_dir).map_err(unreadable(real_dir))?;
    let dst = fstat(&dfd).map_err(unreadable(real_dir))?;
    let via = if real != path {
        format!(" (where {} points)", path.display())
    } else {
        String::new()
    };
    if dst.st_mode & 0o002 != 0 {
        return unsafe_err(
            path,
            format!(
                "the directory of the file it resolves to, {}{via}, is world-writable",
                real_dir.display()
            ),
            format!(
                "chmod o-w {}, or point the link at a file in a directory only its owner can write",
                real_dir.display()
            ),
        );
    }
    let before = std::fs::metadata(&real).map_err(unreadable(path))?;
    let mut file = match open_in(&dfd, real_name) {
        Ok(f) => f,
        // A symlink or another file swapped in since the path was resolved.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LoadError::Changing { path: path.into() })
        }
        Err(e) => {
            return Err(LoadError::Unreadable {
                path: path.into(),
                source: e,
            })
        }
    };
    let st = fstat(&file).map_err(unreadable(path))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return unsafe_err(
            path,
            format!("{}{via} is not a regular file", real.display()),
            "put the plugin's library (the cdylib's .so file) there, or move this out of the plugin directory".into(),
        );
    }
    let me = geteuid();
    if st.st_uid != me {
        return unsafe_err(
            path,
            format!(
                "{} owned by uid {}, not by this user (uid {me})",
                if via.is_empty() {
                    "the file is".to_string()
                } else {
                    format!("{}{via} is", real.display())
                },
                st.st_uid
            ),
            format!(
                "chown {me} {} (or run flowpeek as uid {})",
                real.display(),
                st.st_uid
            ),
        );
    }
    if st.st_mode & 0o002 != 0 {
        return unsafe_err(
            path,
            if via.is_empty() {
                "the file is world-writable".into()
            } else {
                format!("{}{via} is world-writable", real.display())
            },
            format!("chmod o-w {}", real.display()),
        );
    }
    if (before.dev(), before.ino(), before.size() as i64) != (st.st_dev, st.st_ino, st.st_size) {
        return Err(LoadError::Changing { path: path.into() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(unreadable(path))?;
    let after = fstat(&file).map_err(unreadable(path))?;
    let now = std::fs::metadata(&real).map_err(unreadable(path))?;
    if identity(&after) != identity(&st)
        || bytes.len() as i64 != st.st_size
        || (now.dev(), now.ino()) != (st.st_dev, st.st_ino)
    {
        return Err(LoadError::Changing { path: path.into() });
    }
    Ok(Image { bytes })
}

/// A private directory made with `mkdtemp` (a fresh name, mode 0700, created exclusively):
/// nothing at a predictable path matters. It lives for one load and is removed on drop, on
/// every path out of [`load`].
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create() -> std::io::Result<PrivateDir> {
        let template = std::env::temp_dir().join("flowpeek-XXXXXX");
        let mut buf = CString::new(template.as_os_str().as_bytes())?.into_bytes_with_nul();
        // SAFETY: `buf` is a writable NUL-terminated template ending in XXXXXX, as mkdtemp
        // requires; it only rewrites those six bytes.
        let p = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        buf.pop();
        Ok(PrivateDir {
            path: PathBuf::from(std::ffi::OsString::from_vec(buf)),
        })
    }

    /// Writes `bytes` as a new file `name` in the directory (never through a symlink, never
    /// over an existing file).
    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let to = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&to)?;
        f.write_all(bytes)?;
        Ok(to)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // The mappings keep loaded code alive; the names can go.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

static COPIES: AtomicU64 = AtomicU64::new(0);
static RETAINED: AtomicU64 = AtomicU64::new(0);

/// Loads the plugin at `path`. It is opened once and checked through that descriptor
/// (ownership, permissions, the real directory of a symlink), read whole (refused with
/// [`LoadError::Changing`] if it changes meanwhile), checked as an ELF shared library whose
/// segments all lie in the file, copied to a fresh private directory (dlopen of the same path
/// or inode would return the old code, and a file overwritten while mapped would crash the
/// process), test-loaded in a child process when a probe program is set
/// ([`super::probe::enable`]; the flowpeek binary sets itself), and only then opened here.
pub fn load(path: &Path) -> Result<Library, LoadError> {
    let image = read_checked(path)?;
    elf::check(&image.bytes).map_err(|e| match e {
        ElfError::Damaged(detail) => LoadError::Damaged {
            path: path.into(),
            detail,
        },
        ElfError::NotElf(detail) => LoadError::NotALibrary {
            path: path.into(),
            detail,
            fix: "build the plugin as a cdylib (crate-type = [\"cdylib\"]), or a C plugin with cc -shared -fPIC -I plugin-api/c/include",
        },
        ElfError::Foreign(detail) => LoadError::NotALibrary {
            path: path.into(),
            detail,
            fix: "build the plugin as a cdylib (crate-type = [\"cdylib\"]), or a C plugin with cc -shared -fPIC, for this machine",
        },
    })?;
    let dir = PrivateDir::create().map_err(|source| LoadError::Copy {
        path: path.into(),
        dir: std::env::temp_dir(),
        source,
    })?;
    let stem: String = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let copy = dir
        .write(&format!("{stem}-{n}.so"), &image.bytes)
        .map_err(|source| LoadError::Copy {
            path: path.into(),
            dir: dir.path.clone(),
            source,
        })?;
    let stamp = Stamp {
        crc32: crc32fast::hash(&image.bytes),
        mtime: std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
    };
    drop(image);
    super::probe::test_load(&copy, path)?;
    let mut lib = open_image(path, &copy)?;
    lib.stamp = stamp;
    Ok(lib)
}

/// The readable address ranges of the loaded object named `copy` (the path given to dlopen).
fn mapped_ranges(copy: &Path) -> Vec<(usize, usize)> {
    struct Search {
        name: Vec<u8>,
        ranges: Vec<(usize, usize)>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes the `Search` given below and a valid `info` whose
        // name is a NUL-terminated string (or null) and whose `dlpi_phnum` headers are
        // readable, for the duration of this call.
        unsafe {
            let search = &mut *data.cast::<Search>();
            let info = &*info;
            if info.dlpi_name.is_null()
                || CStr::from_ptr(info.dlpi_name).to_bytes() != search.name.as_slice()
            {
                return 0;
            }
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_R != 0 {
                    let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                    search
                        .ranges
                        .push((start, start.saturating_add(ph.p_memsz as usize)));
                }
            }
            1
        }
    }
    let mut search = Search {
        name: copy.as_os_str().as_bytes().to_vec(),
        ranges: Vec::new(),
    };
    // SAFETY: `visit` only reads what dl_iterate_phdr hands it and writes `search`, which
    // outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast());
    }
    search.ranges
}

fn inside(ranges: &[(usize, usize)], at: usize, len: usize) -> bool {
    at.checked_add(len)
        .is_some_and(|end| ranges.iter().any(|&(s, e)| at >= s && end <= e))
}

/// Checks that the root-module header (the exported symbol is the header itself) lies,
/// whole and aligned, inside the library's own readable segments, before abi_stable reads it.
fn check_header_pointers(path: &Path, raw: &RawLibrary, copy: &Path) -> Result<(), LoadError> {
    // SAFETY: the symbol's address is taken as a raw pointer; nothing is read through it.
    let sym = unsafe { raw.get::<*const u8>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }
        .map_err(|_| LoadError::MissingRootModule { path: path.into() })?;
    let at = *sym as usize;
    let size = std::mem::size_of::<LibHeader>();
    if !inside(&mapped_ranges(copy), at, size) || at % std::mem::align_of::<LibHeader>() != 0 {
        return Err(LoadError::BadHeader {
            path: path.into(),
            detail: format!("is at {at:#x} ({size} bytes needed there)"),
        });
    }
    Ok(())
}

/// Opens `copy` (the private copy of `path`) in this process and checks its root module.
/// Called by [`load`] and, in the test-load child, by [`super::probe`].
pub(crate) fn open_image(path: &Path, copy: &Path) -> Result<Library, LoadError> {
    let raw = RawLibrary::load_at(copy).map_err(|e| LoadError::LoaderRefused {
        path: path.into(),
        detail: shorten(&e.to_string()),
    })?;
    // Never unloaded: see the module doc.
    let raw: &'static RawLibrary = Box::leak(Box::new(raw));
    RETAINED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: only the symbols' addresses are taken.
    let has_root =
        unsafe { raw.get::<*const u8>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }.is_ok();
    // SAFETY: as above.
    let has_init = unsafe { raw.get::<*const u8>(b"mos_plugin_init\0") }.is_ok();
    if !has_root && has_init {
        let c: &'static super::cabi::CLib = Box::leak(Box::new(super::cabi::open(path, raw)?));
        let lib = Library {
            kind: Kind::C(c),
            stamp: Stamp::default(),
        };
        check_name(path, &lib.name())?;
        return Ok(lib);
    }
    check_header_pointers(path, raw, copy)?;
    // SAFETY: `raw` is leaked, so the 'static references in the header never dangle; the
    // header pointer was checked to lie in the library's mapping.
    let header = unsafe { lib_header_from_raw_library(raw) }.map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => LoadError::MissingRootModule { path: path.into() },
        LibraryError::InvalidAbiHeader(found) => LoadError::AbiMismatch {
            path: path.into(),
            detail: abi_header_mismatch(&found),
        },
        other => LoadError::AbiMismatch {
            path: path.into(),
            detail: shorten(&other.to_string()),
        },
    })?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| LoadError::AbiMismatch {
            path: path.into(),
            detail: shorten(&e.to_string()),
        })?;
    let found = module.api_version();
    if !(MIN_API_VERSION..=API_VERSION).contains(&found) {
        let which = if found > API_VERSION { "new" } else { "old" };
        return Err(LoadError::ApiVersion {
            path: path.into(),
            found,
            which,
            min: MIN_API_VERSION,
            max: API_VERSION,
        });
    }
    let ext = api2_entry_points(path, raw)?;
    let lib = Library {
        kind: Kind::Rust { module, ext },
        stamp: Stamp::default(),
    };
    check_name(path, &lib.name())?;
    Ok(lib)
}

/// The library's API 2 table, if it exports one: its layout is checked with abi_stable's
/// checker against this host's before the table is used.
fn api2_entry_points(
    path: &Path,
    raw: &'static RawLibrary,
) -> Result<Option<&'static PluginExt>, LoadError> {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::type_layout::TypeLayout;
    use abi_stable::StableAbi;
    // SAFETY: the symbol, when present, is the SDK's `extern "C" fn() -> PluginExtHeader`
    // (export_monitor!); the library stays mapped for the life of the process (leaked).
    let Ok(sym) = (unsafe { raw.get::<PluginExtFn>(EXT_SYMBOL) }) else {
        return Ok(None);
    };
    let header = (*sym)();
    if header.layout.is_null() || header.ext.is_null() {
        return Err(LoadError::AbiMismatch {
            path: path.into(),
            detail: "its API 2 entry points are null".into(),
        });
    }
    // SAFETY: the SDK stores `<PluginExt as StableAbi>::LAYOUT`, a 'static TypeLayout of the
    // library's image, which is never unmapped.
    let theirs: &'static TypeLayout = unsafe { &*header.layout.cast::<TypeLayout>() };
    check_layout_compatibility(<PluginExt as StableAbi>::LAYOUT, theirs).map_err(|e| {
        LoadError::AbiMismatch {
            path: path.into(),
            detail: shorten(&e.to_string()),
        }
    })?;
    // SAFETY: the layout check passed: `ext` is a 'static PluginExt of the library's image.
    Ok(Some(unsafe { &*header.ext }))
}

/// An abi_stable header that does not match, as text (abi_stable prints the magic as a
/// column of decimal bytes).
fn abi_header_mismatch(found: &AbiHeader) -> String {
    let want = AbiHeader::VALUE;
    format!(
        "its abi_stable header reads {} version {}.{}; this host expects {} version {}.{}",
        magic_text(&found.magic_string),
        found.abi_major,
        found.abi_minor,
        magic_text(&want.magic_string),
        want.abi_major,
        want.abi_minor
    )
}

/// A magic string as quoted text, non-printable bytes as `\xNN`, trailing blanks dropped.
pub fn magic_text(magic: &[u8]) -> String {
    let end = magic.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    format!("\"{}\"", magic[..end].escape_ascii())
}

/// abi_stable's reports can run to pages; keep the first lines.
fn shorten(s: &str) -> String {
    let mut out: String = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join(" | ");
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// How many library images were loaded (and are retained) in this process.
pub fn retained_images() -> u64 {
    RETAINED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_paths_are_refused() {
        let p = Path::new("x.so");
        for good in ["streamhash", "a.b-c_9", ".hidden", "A"] {
            assert!(check_name(p, good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../escaped", "sub/dir", "a b", "é", "nul\0"] {
            let e = check_name(p, bad).expect_err(bad).to_string();
            assert!(e.contains("x.so: refused: its plugin name"), "{e}");
            assert!(e.contains("A-Z, a-z, 0-9"), "{e}");
        }
        assert!(check_name(p, &"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn the_magic_is_printed_as_text() {
        assert_eq!(
            magic_text(b"abi stable library for Rust     "),
            "\"abi stable library for Rust\""
        );
        assert_eq!(magic_text(b"ab\0\xff  "), "\"ab\\x00\\xff\"");
    }

    #[test]
    fn the_private_directory_is_fresh_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = PrivateDir::create().unwrap();
        let p = d.path.clone();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let e = PrivateDir::create().unwrap();
        assert_ne!(p, e.path);
        let f = d.write("x.so", b"abc").unwrap();
        assert!(
            d.write("x.so", b"abc").is_err(),
            "never over an existing file"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"abc");
        drop(d);
        assert!(!p.exists());
    }
}
