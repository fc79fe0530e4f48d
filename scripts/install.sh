#!/usr/bin/env bash
# Install everything echo_core needs on a fresh Debian/Ubuntu machine: the C toolchain, liburing,
# a virtualenv in .venv, and the package (its C core is compiled by cffi) with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# gcc brings gcc-N -> libgcc-N-dev, which depends on the ASan and UBSan runtimes (Debian 12: libasan8,
# libubsan1) and binutils (readelf) that `make test-sanitize` uses: nothing more to install for it.
# iproute2: `ip` for `sweep --netns`; openssl: the TLS test's throw-away certificates; iperf3: the
# one-way loopback ceiling of benchmarks/bench_loopback.py.
$SUDO apt-get install -y -qq --no-install-recommends \
    gcc libc6-dev make liburing-dev python3 python3-venv python3-dev iproute2 netcat-openbsd openssl iperf3 >/dev/null
# perf, for `python -m echo_core profile` (optional at run time: profiling says what is missing).
# Debian packages it as linux-perf; Ubuntu as linux-tools-common plus the kernel's linux-tools-$(uname -r).
if ! command -v perf >/dev/null 2>&1; then
    $SUDO apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 \
        || $SUDO apt-get install -y -qq --no-install-recommends linux-tools-common "linux-tools-$(uname -r)" >/dev/null 2>&1 \
        || echo "note: perf is not installed (no linux-perf or linux-tools-$(uname -r) package); profiles will not run"
fi
python3 -m venv .venv
# setuptools >= 77 (the build backend pyproject.toml names) also for `make test-sanitize`, which builds
# the sanitized extension with this venv's setup.py rather than in pip's isolated build environment.
.venv/bin/pip install -q --upgrade pip "setuptools>=77"
# pyproject.toml's dependencies include dask.distributed (load from several hosts, `sweep --netns`);
# iproute2 above provides `ip` for the namespaces.
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -c "import distributed" || { echo "error: dask.distributed did not install" >&2; exit 1; }
.venv/bin/python -c "import echo_core; print('echo_core', echo_core.__version__, 'installed in .venv')"
