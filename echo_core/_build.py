"""Out-of-line API-mode cffi builder for echo_core's C core (referenced by setup.py's cffi_modules)."""

import glob
import os
import re
import sys

from cffi import FFI

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# One folder per job; every #include is relative to the including file ("../net.h"), so the only
# include directory is CSRC itself, for the wrapper's echo_core.h.
SOURCES = [
    # shared: the public API is echo_core.h; sockets; what the kernel's io_uring accepts
    "net.c", "probe.c",
    # the epoll server
    "epoll/server_epoll.c",
    # the io_uring server: entry, core, buffer ring, growing pool, wait unit, send unit, send rings, echo
    # strategies (uring_core.h)
    "uring/uring_serve.c", "uring/uring_core.c", "uring/uring_bufring.c", "uring/uring_grow.c", "uring/uring_wait.c",
    "uring/uring_zc.c", "uring/uring_sendring.c",
    "uring/uring_echo_single.c", "uring/uring_echo_mshot.c", "uring/uring_echo_connbuf.c",
    # the load generator (see csrc/load/load.h for which file does what)
    "load/loadgen.c", "load/load_connect.c", "load/load_worker.c", "load/load_threads.c", "load/load_timeline.c",
    "load/load_server.c", "load/load_counters.c", "load/load_stream.c", "load/load_rr.c", "load/load_rate.c",
    "load/pattern.c", "load/arrivals.c", "load/histogram.c",
]
# ECHO_CORE_SANITIZE=1 builds the C core with AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g,
# every report fatal) for `make test-sanitize` (scripts/test_sanitize.sh), which builds it into
# build/sanitize/ and never over the normal extension.  NDEBUG stays defined, as in the normal build;
# -fno-wrapv undoes CPython's -fwrapv so that UBSan can see signed overflow.
SANITIZE = os.environ.get("ECHO_CORE_SANITIZE", "") not in ("", "0")
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                  "-fno-wrapv"]
# ECHO_CORE_LIBURING=PREFIX builds against the liburing under PREFIX (PREFIX/include and PREFIX/lib or its
# multiarch subdirectory) before any other: scripts/test_liburing_current.sh builds against a current
# release that way.
LIBURING_PREFIX = os.environ.get("ECHO_CORE_LIBURING", "")
LIBURING_HEADER_DIRS = ([os.path.join(LIBURING_PREFIX, "include")] if LIBURING_PREFIX else []) + \
    ["/usr/include", "/usr/local/include", os.path.join(sys.prefix, "include")]


def _cdef_from_header(path):
    """The header is the single source of the API: drop preprocessor lines but keep integer #defines."""
    keep = []
    for line in open(path, encoding="utf-8"):
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.match(r"#define\s+\w+\s+-?\d+\b", stripped):
                keep.append(re.sub(r"/\*.*\*/", "", stripped).strip() + "\n")
            continue
        keep.append(line)
    return "".join(keep)


def _liburing_prefix():
    """The include directory holding liburing.h (the first of LIBURING_HEADER_DIRS); its sibling lib/ is
    where the library is looked for first.  A prefix of its own (conda's, a liburing built from source
    under /usr/local) must be searched for both, not only found."""
    if LIBURING_PREFIX and not os.path.exists(os.path.join(LIBURING_PREFIX, "include", "liburing.h")):
        raise SystemExit(f"ECHO_CORE_LIBURING={LIBURING_PREFIX}: no include/liburing.h there")
    for d in LIBURING_HEADER_DIRS:
        if os.path.exists(os.path.join(d, "liburing.h")):
            return d
    raise SystemExit(
        "echo_core needs liburing's headers to build: install them with "
        "'apt-get install liburing-dev' (Debian/Ubuntu) or 'conda install -c conda-forge liburing'."
    )


def _liburing_libdir(include_dir):
    """PREFIX/lib, or the multiarch directory below it (Debian's layout), that holds liburing.so."""
    lib = os.path.join(os.path.dirname(include_dir), "lib")
    found = glob.glob(os.path.join(lib, "liburing.so")) + glob.glob(os.path.join(lib, "*", "liburing.so"))
    return os.path.dirname(found[0]) if found else None


LIBURING_INCLUDE = _liburing_prefix()
# /usr/include is the compiler's own; any other prefix goes first on both search paths (and the
# runtime path, so that the extension loads the liburing it was built against).
_EXTRA_INCLUDE = [] if LIBURING_INCLUDE == "/usr/include" else [LIBURING_INCLUDE]
_LIBURING_LIB = _liburing_libdir(LIBURING_INCLUDE) if _EXTRA_INCLUDE else None
_EXTRA_LIB = [_LIBURING_LIB] if _LIBURING_LIB else []
ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(os.path.join(CSRC, "echo_core.h")))
ffibuilder.set_source(
    "echo_core._native",
    '#include "echo_core.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES],
    # Every header: an edited struct must recompile every file that includes it, not just the edited ones.
    depends=[os.path.relpath(h) for h in sorted(glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True))],
    include_dirs=[CSRC] + _EXTRA_INCLUDE,
    library_dirs=_EXTRA_LIB,
    runtime_library_dirs=_EXTRA_LIB,
    libraries=["uring", "pthread"],
    # EC_CHECKED: the sanitizer build also checks invariants that cost a little (see uring_bufring.h).
    define_macros=[("NDEBUG", None), ("_GNU_SOURCE", None)] + ([("EC_CHECKED", None)] if SANITIZE else []),
    extra_compile_args=(["-O1", "-g"] + SANITIZE_FLAGS if SANITIZE else ["-O2", "-fno-omit-frame-pointer"]) + ["-Wall", "-Wextra", "-std=gnu11"],
    extra_link_args=SANITIZE_FLAGS if SANITIZE else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
