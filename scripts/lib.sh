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

# Debian packages a script needs: those missing are installed when this is root on Debian;
# otherwise the script stops and names them. $1 names the caller, the rest are packages.
require_packages() {
    local who=$1 p missing=()
    shift
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$who: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
        return 0
    fi
    echo "$who: missing Debian packages: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
    exit 1
}

# What the build needs: flowpeek links libpcap (stream filters use its compiler and matcher).
BUILD_PACKAGES=(libpcap-dev)
# What the test suite adds: g++ (libFuzzer is compiled from C++), rsync (the reload torture
# test writes plugins with rsync --inplace), tshark (the corpus's fragment cases are compared
# with tshark's follow; `follow` is compared with it too), tcpdump (the filter tests compare
# with its selection), tcpflow (`streams --write --gaps zero` is compared with its files).
TEST_PACKAGES=(libpcap-dev g++ rsync tshark tcpdump tcpflow)
