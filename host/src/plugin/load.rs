//! Loading a plugin file: checks, a private copy, dlopen, abi_stable's layout check, the API
//! version check. Libraries are never unloaded (Rust thread-local destructors make
//! `dlclose` unsound); each load is one retained image.

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use flowpeek_plugin_api::abi::{PluginModRef, API_VERSION, MIN_API_VERSION};

/// A plugin library, loaded and checked.
#[derive(Clone, Copy)]
pub struct Library {
    /// The root module.
    pub module: PluginModRef,
}

impl Library {
    /// The plugin's name (its records go to `<name>.jsonl`).
    pub fn name(&self) -> String {
        (self.module.name())().to_string()
    }
    /// The plugin's own version.
    pub fn version(&self) -> String {
        (self.module.version())().to_string()
    }
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Library({} {})", self.name(), self.version())
    }
}

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
    /// dlopen failed.
    #[error("{path}: not a loadable library ({detail}); build the plugin as a cdylib (crate-type = [\"cdylib\"])")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// No root module symbol.
    #[error("{path}: no flowpeek root module; export one with flowpeek_plugin_api::export_monitor!(YourMonitor)")]
    MissingRootModule {
        /// The file.
        path: PathBuf,
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
    #[error("{path}: plugin API version {found} is too {which}: this host loads versions {min} to {max}; rebuild the plugin against this host's plugin-api")]
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

/// Checks that neither the file nor its directory can be changed by others.
pub fn check_ownership(path: &Path) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Unreadable {
        path: path.into(),
        source,
    })?;
    let unsafe_err = |why: String, fix: String| {
        Err(LoadError::Unsafe {
            path: path.into(),
            why,
            fix,
        })
    };
    if !meta.is_file() {
        return unsafe_err(
            "not a regular file".into(),
            "put the plugin's library (the cdylib's .so file) there, or move this out of the plugin directory".into(),
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return unsafe_err(
            format!("owned by uid {}, not by this user (uid {me})", meta.uid()),
            format!(
                "chown {me} {} (or run flowpeek as uid {})",
                path.display(),
                meta.uid()
            ),
        );
    }
    if meta.permissions().mode() & 0o002 != 0 {
        return unsafe_err(
            "the file is world-writable".into(),
            format!("chmod o-w {}", path.display()),
        );
    }
    if let Some(dir) = path.parent() {
        let dmeta = std::fs::metadata(dir).map_err(|source| LoadError::Unreadable {
            path: dir.into(),
            source,
        })?;
        if dmeta.permissions().mode() & 0o002 != 0 {
            return unsafe_err(
                format!("its directory {} is world-writable", dir.display()),
                format!("chmod o-w {}", dir.display()),
            );
        }
    }
    Ok(())
}

static COPIES: AtomicU64 = AtomicU64::new(0);
static RETAINED: AtomicU64 = AtomicU64::new(0);

/// The private directory where plugin files are copied before loading (mode 0700).
pub fn private_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flowpeek-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Loads the plugin at `path`: checks it, copies it to a unique private path (dlopen of the
/// same path or inode would return the old code, and a file overwritten in place while
/// mapped would crash the process), opens it and checks its root module.
pub fn load(path: &Path) -> Result<Library, LoadError> {
    check_ownership(path)?;
    let dir = private_dir().map_err(|source| LoadError::Copy {
        path: path.into(),
        dir: std::env::temp_dir(),
        source,
    })?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let copy = dir.join(format!("{stem}-{n}.so"));
    std::fs::copy(path, &copy).map_err(|source| LoadError::Copy {
        path: path.into(),
        dir: dir.clone(),
        source,
    })?;
    let loaded = open(path, &copy);
    // The mapping keeps the code alive; the name can go.
    let _ = std::fs::remove_file(&copy);
    loaded
}

fn open(path: &Path, copy: &Path) -> Result<Library, LoadError> {
    let raw = RawLibrary::load_at(copy).map_err(|e| LoadError::NotALibrary {
        path: path.into(),
        detail: shorten(&e.to_string()),
    })?;
    // Never unloaded: see the module doc.
    let raw: &'static RawLibrary = Box::leak(Box::new(raw));
    RETAINED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `raw` is leaked, so the 'static references in the header never dangle.
    let header = unsafe { lib_header_from_raw_library(raw) }.map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => LoadError::MissingRootModule { path: path.into() },
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
    if found > API_VERSION || found < MIN_API_VERSION {
        let which = if found > API_VERSION { "new" } else { "old" };
        return Err(LoadError::ApiVersion {
            path: path.into(),
            found,
            which,
            min: MIN_API_VERSION,
            max: API_VERSION,
        });
    }
    Ok(Library { module })
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
        out.truncate(600);
        out.push('…');
    }
    out
}

/// How many library images were loaded (and are retained) in this process.
pub fn retained_images() -> u64 {
    RETAINED.load(Ordering::Relaxed)
}
