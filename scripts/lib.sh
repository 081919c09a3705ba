# Sourced by every script of scripts/ and .ci/ (bash): where the repository, the build
# output and the shared corpus are. It only defines variables and functions; it changes no
# directory and runs nothing.
#
#   . "$(dirname "$0")/lib.sh"        # from scripts/*.sh (adjust the path elsewhere)
#
# FLOWPEEK_ROOT    the repository root (absolute, found from this file's location).
# FLOWPEEK_TARGET  cargo's target directory: $CARGO_TARGET_DIR if set (a relative value is
#                  taken from the repository root, where the scripts run cargo), else
#                  target/ in the repository.
# FLOWPEEK_CORPUS  the shared capture corpus: the environment's value if set (relative to
#                  the repository root), else ../shared/corpus beside the clone. The Rust
#                  tests resolve it the same way (flowpeek::testing::corpus_dir).

FLOWPEEK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# abs_from_root PATH: PATH, made absolute against the repository root if it is relative.
abs_from_root() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$FLOWPEEK_ROOT/$1" ;;
    esac
}

FLOWPEEK_TARGET=$(abs_from_root "${CARGO_TARGET_DIR:-target}")
FLOWPEEK_CORPUS=$(abs_from_root "${FLOWPEEK_CORPUS:-../shared/corpus}")
# The tests and cargo subprocesses read the same resolved value.
export FLOWPEEK_CORPUS

# require_corpus WHO: exits with a message naming FLOWPEEK_CORPUS if the corpus is missing.
require_corpus() {
    if [ ! -d "$FLOWPEEK_CORPUS" ]; then
        echo "$1: no capture corpus at $FLOWPEEK_CORPUS: the tests replay its captures;" \
            "clone beside ../shared or set FLOWPEEK_CORPUS to its directory" >&2
        exit 1
    fi
}
