#!/usr/bin/env bash
# `make test-sanitize`: build echo_core's C core with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/sanitize/ (the normal in-place extension is never touched) and run the server and load-generator
# tests against it.  Fails on any failing test and on any sanitizer report, from pytest's own process or
# from any subprocess the tests start (`python -m echo_core serve/load`, external servers).
#
#   PYTHON=.venv/bin/python   interpreter (default .venv/bin/python)
#   any arguments              go to pytest instead of the default test files (e.g. -k uring tests/servers/test_servers.py)
#
# How: ECHO_CORE_SANITIZE=1 makes echo_core/_build.py add -O1 -g -fsanitize=address,undefined
# -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv (NDEBUG stays defined).  The sources are
# copied to build/sanitize/echo_core/ and the extension is built next to them; build/sanitize goes
# first on PYTHONPATH and is the working directory, so every `python -m echo_core ...` imports it.
# CPython itself is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD) into every process;
# leak detection is off (CPython's own allocations), every report aborts its process and is written to
# build/sanitize/logs/, which must stay empty.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-.venv/bin/python}"
case "$PYTHON" in   # absolute: we cd below
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;
    *) PYTHON="$(command -v "$PYTHON")" ;;
esac
SAN="$ROOT/build/sanitize"
LOGS="$SAN/logs"
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(tests/servers/test_servers.py tests/load/test_load.py tests/load/test_counters.py tests/chaos/test_chaos.py
           tests/servers/test_uring_features.py tests/servers/test_server_threads.py tests/chaos/test_lifetime.py tests/load/test_load_worker.py)
    # The CLI/API and external-server tests are Python plumbing around C the files above drive harder
    # (the servers, the load generator): they run in the normal suite only (CI time).
    # The io_uring variants run here through test_uring_features.py (each variant: echo, short sends,
    # tiny pools, back-pressure, ...); test_servers.py and test_chaos.py take them all in the normal
    # run, and over uring and epoll only here, which keeps CI's whole run well under 20 minutes.
    # test_lifetime.py: the long-lived regime over each strategy and buffer-ring mode (its SPECS); a
    # buffer owned twice aborts there (EC_CHECKED), even where no client would have seen wrong bytes.
    export ECHO_CORE_TEST_VARIANTS="${ECHO_CORE_TEST_VARIANTS:-0}"
    # Tests in which no C runs (Python's faulty_echo.py server against the Python chaos client, argument
    # checks of the chaos CLI) have nothing to sanitize: the normal run has them.
    TESTS+=(-k "not (test_chaos and (faulty_server or dropped_byte or hung_server or bad_input))")
fi
for i in "${!TESTS[@]}"; do   # absolute test paths: pytest runs from build/sanitize
    case "${TESTS[$i]}" in tests/*) TESTS[$i]="$ROOT/${TESTS[$i]}" ;; esac
done

runtime() {   # the real path of a gcc sanitizer runtime, or a clear error
    local p
    p="$(gcc -print-file-name="$1")"
    if [ "$p" = "$1" ] || [ ! -e "$p" ]; then
        echo "test_sanitize: gcc has no $1 (Debian/Ubuntu: apt-get install libasan8 libubsan1, or run scripts/install.sh)" >&2
        exit 2
    fi
    readlink -f "$p"
}
ASAN_LIB="$(runtime libasan.so)"
UBSAN_LIB="$(runtime libubsan.so)"

echo "== sanitized build into $SAN"
start=$SECONDS
rm -rf "$SAN/echo_core" "$LOGS"
mkdir -p "$SAN/echo_core" "$LOGS"
tar -C echo_core --exclude='_native*' --exclude=__pycache__ -cf - . | tar -C "$SAN/echo_core" -xf -
ECHO_CORE_SANITIZE=1 "$PYTHON" setup.py -q build_ext --force --build-lib "$SAN" --build-temp "$SAN/temp"
SO="$(ls "$SAN"/echo_core/_native*.so)"
readelf -d "$SO" | grep -q 'NEEDED.*libasan' || { echo "test_sanitize: $SO is not linked to libasan" >&2; exit 1; }
# UBSan ignores UBSAN_OPTIONS=log_path when ASan is loaded too, and a report on stderr is lost when
# pytest captured that stderr: every Python process sets libubsan's report path at start-up
# (then runs the interpreter's own sitecustomize, if any).
cat > "$SAN/sitecustomize.py" <<'PY'
# Written by scripts/test_sanitize.sh: send UBSan reports to $ECHO_CORE_UBSAN_LOG.<pid>.
import ctypes, os, sys
if os.environ.get("ECHO_CORE_UBSAN_LOG"):
    ctypes.CDLL(os.environ["ECHO_CORE_UBSAN_LIB"]).__sanitizer_set_report_path(
        os.environ["ECHO_CORE_UBSAN_LOG"].encode())
_here = os.path.dirname(os.path.realpath(__file__))
for _d in sys.path:
    _f = os.path.join(_d or ".", "sitecustomize.py")
    if os.path.realpath(_d or ".") != _here and os.path.isfile(_f):
        exec(compile(open(_f).read(), _f, "exec"), {"__name__": "sitecustomize", "__file__": _f})
        break
PY
echo "   $SO ($((SECONDS - start)) s)"

export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:log_path=$LOGS/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan"
export ECHO_CORE_UBSAN_LIB="$UBSAN_LIB" ECHO_CORE_UBSAN_LOG="$LOGS/ubsan"
export PYTHONPATH="$SAN${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1   # Python >= 3.11: `python -m` does not put the working directory first
cd "$SAN"

echo "== check: this process and a server subprocess load the sanitized module with libasan mapped"
SO="$SO" "$PYTHON" - <<'EOF'
import os, select, subprocess, sys
import echo_core._native as native

want = os.path.realpath(os.environ["SO"])
assert os.path.realpath(native.__file__) == want, f"imported {native.__file__}, not {want}"

def check_maps(pid, what):
    maps = open(f"/proc/{pid}/maps").read()
    assert "libasan" in maps, f"{what}: libasan is not mapped"
    assert want in maps, f"{what}: {want} is not mapped"

check_maps(os.getpid(), "pytest's interpreter")
import sitecustomize
assert os.path.dirname(os.path.realpath(sitecustomize.__file__)) == os.path.dirname(os.path.dirname(want)), \
    f"sitecustomize from {sitecustomize.__file__}: UBSan reports would not reach the log directory"
proc = subprocess.Popen([sys.executable, "-m", "echo_core", "serve", "--impl", "uring", "--port", "0"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    assert line.startswith("listening on "), f"server did not start: {line!r}"
    check_maps(proc.pid, "server subprocess")
finally:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
assert proc.returncode == 0, f"server exited with {proc.returncode}: {err}"
print(f"   ok: {want}")
EOF

echo "== pytest under ASan+UBSan: ${TESTS[*]#$ROOT/}"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$LOGS/pytest.out" || status=$?

reports=$(find "$LOGS" -name 'asan.*' -o -name 'ubsan.*')
if [ -n "$reports" ] || grep -qE 'ERROR: AddressSanitizer|runtime error:' "$LOGS/pytest.out"; then
    echo "== SANITIZER REPORTS"
    for f in $reports; do echo "--- $f"; cat "$f"; done
    grep -nE 'ERROR: AddressSanitizer|runtime error:' "$LOGS/pytest.out" || true
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "test-sanitize: FAILED (reports and pytest output in $LOGS)" >&2
else
    echo "test-sanitize: ok, no sanitizer reports ($((SECONDS - start)) s)"
fi
exit "$status"
