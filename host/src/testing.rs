//! Where the tests find the shared capture corpus: the one definition for the unit tests
//! (`crate::testing`), the integration tests (`flowpeek::testing`) and, with the same rule,
//! the scripts (scripts/lib.sh). Not part of the API: it is only public so that the test
//! crates can reach it, and nothing in the program calls it.
//!
//! The rule: `FLOWPEEK_CORPUS` if set (a relative value is taken from the repository root),
//! else `../shared/corpus` beside the clone. It must never hold a machine's absolute path,
//! and a test that needs the corpus must fail, not skip, when it is missing.

use std::path::{Path, PathBuf};

/// The environment variable naming the corpus directory.
pub const CORPUS_VAR: &str = "FLOWPEEK_CORPUS";

/// The repository root (the parent of the `flowpeek` package's directory).
pub fn repo_root() -> PathBuf {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    host.parent().unwrap_or(host).to_path_buf()
}

/// The corpus directory by the rule above, whether it exists or not.
pub fn corpus_path() -> PathBuf {
    match std::env::var_os(CORPUS_VAR) {
        Some(dir) if !dir.is_empty() => repo_root().join(dir),
        _ => repo_root().join("../shared/corpus"),
    }
}

/// The corpus directory. Panics, naming `FLOWPEEK_CORPUS`, if it is not a directory: the
/// tests that call it replay its captures and would prove nothing without them.
#[track_caller]
pub fn corpus_dir() -> PathBuf {
    let dir = corpus_path();
    assert!(
        dir.is_dir(),
        "no capture corpus at {}: these tests replay its captures; clone the repository \
         beside ../shared, or set {CORPUS_VAR} to the corpus directory (relative to the \
         repository root or absolute)",
        dir.display()
    );
    dir
}
