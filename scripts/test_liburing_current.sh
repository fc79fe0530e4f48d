#!/usr/bin/env bash
# Build the C core against a current liburing and run the io_uring tests against it.
#
# Debian 12 ships liburing 2.3; Ubuntu 24.04, conda and anyone who builds liburing themselves have
# newer ones, which behave differently: liburing >= 2.5 sets rings up with IORING_SETUP_NO_SQARRAY on
# kernels >= 6.6 and never maps the SQ array (issue 15, review item 2: the batched wait wrote through
# it).  This takes the liburing packages of the next Debian release (trixie: 2.9), with that
# release's kernel headers, which its liburing.h includes, downloaded by apt with a private sources
# list into build/liburing-current/ and unpacked there - nothing is installed on the machine - builds
# the extension against them into the same folder (the normal one is left alone) and runs the
# variants' tests and the long-lived regime with it loaded.  ECHO_CORE_LIBURING_VERSION=V pins a
# version of trixie's liburing (default: whatever trixie has).
#
#   bash scripts/test_liburing_current.sh              the default tests
#   bash scripts/test_liburing_current.sh ARGS...      ARGS go to pytest instead
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-.venv/bin/python}"
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; *) PYTHON="$(command -v "$PYTHON")" ;; esac
VERSION="${ECHO_CORE_LIBURING_VERSION:-}"
SUITE="${ECHO_CORE_LIBURING_SUITE:-trixie}"
OUT="$ROOT/build/liburing-current"
mkdir -p "$OUT/debs"
. scripts/private_apt.sh
private_apt "$OUT/apt" "deb http://deb.debian.org/debian $SUITE main"
PIN="${VERSION:+=$VERSION}"
(cd "$OUT/debs" && rm -f ./*.deb && apt-get "${APT[@]}" download "liburing-dev$PIN" "liburing2$PIN" linux-libc-dev >/dev/null) || {
    echo "test_liburing_current: apt could not download liburing${PIN} and linux-libc-dev from Debian $SUITE" >&2; exit 2; }
VERSION="$(dpkg-deb -f "$OUT"/debs/liburing-dev_*.deb Version)"
echo "== liburing $VERSION and $(basename "$OUT"/debs/linux-libc-dev_*.deb) from Debian $SUITE into $OUT"
rm -rf "$OUT/root" "$OUT/kernel"
for deb in "$OUT"/debs/liburing*.deb; do dpkg-deb -x "$deb" "$OUT/root"; done
# liburing.h includes <linux/blkdev.h> (uapi 6.11+); only that header is taken from the newer kernel
# headers, so that the rest still matches this machine's C library.
dpkg-deb -x "$OUT"/debs/linux-libc-dev_*.deb "$OUT/kernel"
mkdir -p "$OUT/root/usr/include/linux"
cp "$OUT/kernel/usr/include/linux/blkdev.h" "$OUT/root/usr/include/linux/"
PREFIX="$OUT/root/usr"

echo "== build against it into $OUT/lib"
rm -rf "$OUT/lib" "$OUT/temp"
mkdir -p "$OUT/lib/echo_core"
tar -C echo_core --exclude='_native*' --exclude=__pycache__ -cf - . | tar -C "$OUT/lib/echo_core" -xf -
ECHO_CORE_LIBURING="$PREFIX" "$PYTHON" setup.py -q build_ext --force --build-lib "$OUT/lib" --build-temp "$OUT/temp"

export PYTHONPATH="$OUT/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1
cd "$OUT/lib"
echo "== check: the module loaded here maps liburing $VERSION's library"
"$PYTHON" - "$OUT/lib" "$PREFIX" "${VERSION%%-*}" <<'PY'
import os, sys
import echo_core._native as native
from echo_core.host.machine import liburing_info

lib_dir, prefix, version = sys.argv[1:]
assert os.path.realpath(native.__file__).startswith(os.path.realpath(lib_dir)), native.__file__
info = liburing_info()
print("   ", info)
assert info["loaded_library"].startswith(os.path.realpath(prefix)), "the current liburing is not the one mapped"
assert info["version"] == version, f"liburing {info['version']} loaded, not {version}"
PY

if [ "$#" -gt 0 ]; then
    TESTS=("$@")
else
    # What liburing's set-up and helpers touch: the batched wait (it enters the kernel itself), the
    # buffer-ring registration, bundles; and one long-lived round per strategy and ring mode.
    TESTS=("$ROOT/tests/servers/test_uring_features.py" "$ROOT/tests/chaos/test_lifetime.py" -k
           "batch or bundle or inc or refused or combinations or contract or every_spec")
fi
echo "== pytest ${TESTS[*]}"
ECHO_CORE_TEST_VARIANTS=0 "$PYTHON" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "${TESTS[@]}"
