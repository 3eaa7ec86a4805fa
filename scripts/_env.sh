# shellcheck shell=bash
# Sourced by scripts/test, scripts/zramd and scripts/bench*: make a fresh Debian machine ready.
#
# nbdkit's Python plugin embeds Debian's /usr/bin/python3, so the project's venv is built from that
# interpreter (same ABI, same site layout) with --system-site-packages (python3-libnbd is only
# packaged by Debian). Everything is idempotent: a ready machine pays two dpkg queries and a hash.

ZRAMD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ZRAMD_VENV=${ZRAMD_VENV:-$ZRAMD_ROOT/.venv}
ZRAMD_PY=$ZRAMD_VENV/bin/python

# What serving needs (nbdkit + its Python plugin, FUSE, a compiler for pyfuse3, python-lzo and
# zramd._zram, and the codec libraries zramd._zram links: liblz4, libzstd, zlib, liblzo2).
ZRAMD_SERVE_PKGS="nbdkit nbdkit-plugin-python fuse3 libfuse3-dev pkg-config gcc python3-dev
    python3-venv liblzo2-dev liblz4-dev libzstd-dev zlib1g-dev"
# What the tests and benchmarks add (real clients, a VM, fio).
ZRAMD_TEST_PKGS="libnbd-bin python3-libnbd fio qemu-utils qemu-system-x86 nbd-client
    busybox-static socat e2fsprogs cpio kmod util-linux"

zramd_log() { printf 'zramd-setup: %s\n' "$*" >&2; }

zramd_need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then SUDO=sudo; else
            zramd_log "missing Debian packages: ${missing[*]} (run as root or install them)"; return 1
        fi
    fi
    zramd_log "installing Debian packages: ${missing[*]}"
    ${SUDO:-} apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || return 1
}

zramd_need_venv() {
    local extras=$1 stamp want
    # the C extensions are built by the editable install: a changed source means reinstall
    want=$(cat "$ZRAMD_ROOT/pyproject.toml" "$ZRAMD_ROOT/setup.py" \
        "$ZRAMD_ROOT"/zramd/csrc/*.[ch] | sha256sum | cut -c1-16)-$extras
    stamp=$ZRAMD_VENV/.zramd-stamp
    if [ -x "$ZRAMD_PY" ] && [ -f "$stamp" ] && grep -qx -- "$want" "$stamp"; then return 0; fi
    if [ ! -x "$ZRAMD_PY" ]; then
        zramd_log "creating venv $ZRAMD_VENV from /usr/bin/python3"
        /usr/bin/python3 -m venv --system-site-packages "$ZRAMD_VENV" || return 1
    fi
    zramd_log "installing zramd[$extras] into the venv"
    "$ZRAMD_PY" -m pip install -q --disable-pip-version-check -e "$ZRAMD_ROOT[$extras]" || return 1
    # The LZO backends are optional: the registry lists them only when the binding imports.
    "$ZRAMD_PY" -m pip install -q --disable-pip-version-check -e "$ZRAMD_ROOT[lzo]" >/dev/null 2>&1 \
        || zramd_log "python-lzo did not build; lzo/lzo-rle backends will be unavailable"
    if ! "$ZRAMD_PY" -c 'import sys; from zramd.native import native_module; sys.exit(native_module() is None)'; then
        zramd_log "zramd._zram did not build (gcc, python3-dev, liblz4-dev libzstd-dev zlib1g-dev liblzo2-dev?): zramd runs its Python data path"
    fi
    if ! "$ZRAMD_PY" -c 'import zramd._zram' 2>/dev/null; then
        zramd_log "zramd._zram did not build (liblz4-dev libzstd-dev zlib1g-dev liblzo2-dev?)"
    fi
    echo "$want" > "$stamp"
}

# The site-packages directory nbdkit's embedded interpreter must see (same Python 3.11 ABI).
zramd_site_packages() {
    "$ZRAMD_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}
