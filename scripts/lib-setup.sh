# Shared set-up for scripts/dev, scripts/test, scripts/image and scripts/test-image: install
# Debian packages that are missing, or say what to install. Source it; it defines functions only.
#
#   setup_install WHO PACKAGE...   apt-get install the packages as root (or with password-less
#                                  sudo); elsewhere print "WHO: missing ...; on Debian:
#                                  apt-get install ..." and exit 1. Nothing to do for no packages.
#   setup_missing_build_tools      the Debian packages the Rust build still needs (the opus crate
#                                  builds libopus with cmake and a C compiler), one per line.
#   setup_need_cargo WHO           exit 1 with a pointer to rustup when cargo is missing.
#   setup_browser_packages WHO     `npm ci` the browser tests' packages (tests/browser: axe-core,
#                                  pinned in its package-lock.json) unless already installed.

setup_install() {
    local who=$1
    shift
    [ $# -gt 0 ] || return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "$who: installing $* (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$@" >/dev/null
    elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "$who: installing $* (Debian packages, with sudo)"
        sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "$who: missing $*; on Debian: apt-get install $*" >&2
        exit 1
    fi
}

setup_missing_build_tools() {
    command -v cmake >/dev/null 2>&1 || echo cmake
    # cmake drives make; cc compiles libopus (and ring's assembly) and links every binary.
    command -v make >/dev/null 2>&1 || echo make
    command -v cc >/dev/null 2>&1 || echo gcc
    # gcc only recommends the C library's headers.
    [ -e /usr/include/stdio.h ] || echo libc6-dev
}

setup_need_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    echo "$1: cargo is missing; install Rust (https://rustup.rs)" >&2
    exit 1
}

setup_browser_packages() {
    local dir=tests/browser
    if ! command -v npm >/dev/null 2>&1; then
        echo "$1: npm is missing (the accessibility tests inject axe-core from $dir); on Debian: apt-get install npm" >&2
        exit 1
    fi
    # npm ci wipes and reinstalls: only when the lock file changed since the last install.
    if [ -f "$dir/node_modules/.package-lock.json" ] && [ ! "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        return 0
    fi
    echo "$1: installing $dir's packages (npm ci)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
}
