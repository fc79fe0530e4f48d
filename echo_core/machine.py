"""What machine a result was measured on: kernel, CPU, io_uring availability, liburing, mitigations,
software versions and the repository commit -- everything a reader needs to judge a sweep.

Everything here is read from /proc, /sys, the package database or probed with one cheap system
call; a fact that cannot be established is recorded as None rather than guessed.
"""

import ctypes
import glob
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

#: Packages whose versions go into the metadata.
PACKAGES = ("echo_core", "cffi", "numpy", "pandas", "matplotlib", "seaborn", "tqdm", "papermill",
            "nbconvert", "ipykernel")

# io_uring system call numbers: the same on every architecture (unified syscall table, Linux >= 5.1).
_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_REGISTER = 427
_IORING_REGISTER_PROBE = 8
_IO_URING_OP_SUPPORTED = 1

#: IORING_FEAT_* bits reported by io_uring_setup in io_uring_params.features (include/uapi/linux/io_uring.h).
IORING_FEATURES = ("SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY",
                   "FAST_POLL", "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS",
                   "RSRC_TAGS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE",
                   "MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT")

#: IORING_OP_* names by opcode number (include/uapi/linux/io_uring.h, Linux 6.18).
IORING_OPS = ("NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD", "POLL_REMOVE",
              "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT", "TIMEOUT_REMOVE", "ACCEPT",
              "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT", "FALLOCATE", "OPENAT", "CLOSE", "FILES_UPDATE",
              "STATX", "READ", "WRITE", "FADVISE", "MADVISE", "SEND", "RECV", "OPENAT2", "EPOLL_CTL",
              "SPLICE", "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE", "SHUTDOWN", "RENAMEAT", "UNLINKAT",
              "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING", "FSETXATTR", "SETXATTR", "FGETXATTR",
              "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC", "SENDMSG_ZC", "READ_MULTISHOT", "WAITID",
              "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV", "FIXED_FD_INSTALL", "FTRUNCATE", "BIND",
              "LISTEN", "RECV_ZC", "EPOLL_WAIT", "READV_FIXED", "WRITEV_FIXED", "PIPE")

#: Setup flag combinations worth knowing about for an echo server (echo_core's io_uring server asks
#: for SINGLE_ISSUER|DEFER_TASKRUN and falls back to COOP_TASKRUN).  SQPOLL is not probed: it would
#: start a kernel thread.
SETUP_FLAGS = {
    "COOP_TASKRUN": 1 << 8,
    "SINGLE_ISSUER": 1 << 12,
    "SINGLE_ISSUER|DEFER_TASKRUN": (1 << 12) | (1 << 13),
}


class _IoUringParams(ctypes.Structure):
    # struct io_uring_params: 10 x u32, then struct io_sqring_offsets and io_cqring_offsets (40 B each).
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", ctypes.c_uint8 * 40), ("cq_off", ctypes.c_uint8 * 40)]


def _read(path, default=None):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return default


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _io_uring_setup(flags=0):
    """Try io_uring_setup(2) with 4 entries; return (fd or -errno, params)."""
    params = _IoUringParams()
    params.flags = flags
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_IO_URING_SETUP), ctypes.c_uint32(4), ctypes.byref(params))
    if fd < 0:
        return -ctypes.get_errno(), params
    return fd, params


def _probe_ops(fd):
    """Opcodes the kernel reports as supported (IORING_REGISTER_PROBE), or None if the probe fails."""
    nr_ops = 256
    buf = (ctypes.c_uint8 * (16 + 8 * nr_ops))()
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(_SYS_IO_URING_REGISTER), ctypes.c_uint(fd),
                       ctypes.c_uint(_IORING_REGISTER_PROBE), buf, ctypes.c_uint(nr_ops))
    if ret < 0:
        return None
    ops_len = buf[1]
    supported = []
    for i in range(ops_len):
        op, flags = buf[16 + 8 * i], buf[16 + 8 * i + 2] | (buf[16 + 8 * i + 3] << 8)
        if flags & _IO_URING_OP_SUPPORTED:
            supported.append(IORING_OPS[op] if op < len(IORING_OPS) else f"op{op}")
    return supported


def io_uring_info(features_file=None):
    """What this kernel accepts, as probed from this process (plus, verbatim, an optional file).

    Probed: /proc/sys/kernel/io_uring_disabled, whether io_uring_setup succeeds, the feature bits it
    returns, the opcodes IORING_REGISTER_PROBE reports, and whether the setup flags in SETUP_FLAGS
    are accepted.  A features file (e.g. a liburing-based probe's output) is included as
    ``features_file_content``, labelled as not probed here.
    """
    info = {"io_uring_disabled": None, "setup_permitted": None, "setup_error": None,
            "features_mask": None, "features": None, "ops_supported": None, "setup_flags_accepted": None}
    disabled = _read("/proc/sys/kernel/io_uring_disabled")
    info["io_uring_disabled"] = int(disabled) if disabled and disabled.isdigit() else None
    if platform.system() != "Linux":
        info["setup_error"] = "not Linux"
        return info
    fd, params = _io_uring_setup()
    info["setup_permitted"] = fd >= 0
    if fd < 0:
        info["setup_error"] = os.strerror(-fd)
    else:
        try:
            info["features_mask"] = hex(params.features)
            info["features"] = [name for bit, name in enumerate(IORING_FEATURES) if params.features >> bit & 1]
            unknown = params.features >> len(IORING_FEATURES)
            if unknown:
                info["features"].append(f"unknown_bits<<{len(IORING_FEATURES)}:{hex(unknown)}")
            info["ops_supported"] = _probe_ops(fd)
        finally:
            os.close(fd)
        accepted = {}
        for name, flags in SETUP_FLAGS.items():
            fd2, _ = _io_uring_setup(flags)
            accepted[name] = fd2 >= 0
            if fd2 >= 0:
                os.close(fd2)
        info["setup_flags_accepted"] = accepted
    if features_file:
        info["features_file"] = str(features_file)
        info["features_file_content"] = _read(features_file)
        info["features_file_note"] = "copied verbatim from the file; not probed by machine_info()"
    return info


def cpu_info():
    """CPU model, counts, affinity, frequency governor, SMT and hypervisor flags."""
    model, flags, sockets = None, [], set()
    text = _read("/proc/cpuinfo", "")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Processor", "cpu model") and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = value.split()
        elif key == "physical id":
            sockets.add(value)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    return {
        "model": model,
        "count": os.cpu_count(),
        "affinity": affinity,
        "sockets": len(sockets) or None,
        "hypervisor": "hypervisor" in flags if flags else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "smt": _read("/sys/devices/system/cpu/smt/control"),
    }


def mitigations():
    """Every /sys/devices/system/cpu/vulnerabilities/* entry, and the kernel's mitigations= setting."""
    out = {}
    for path in sorted(glob.glob("/sys/devices/system/cpu/vulnerabilities/*")):
        out[os.path.basename(path)] = _read(path)
    cmdline = _read("/proc/cmdline", "") or ""
    match = re.search(r"(?:^|\s)mitigations=(\S+)", cmdline)
    return {"vulnerabilities": out, "cmdline_mitigations": match.group(1) if match else None}


def liburing_info():
    """liburing as packaged (dpkg) and as actually loaded by echo_core's compiled module."""
    info = {"package": None, "package_version": None, "loaded_library": None, "version": None}
    for pkg in ("liburing-dev", "liburing2"):
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            break
        if out.returncode == 0 and out.stdout.strip():
            info["package"], info["package_version"] = pkg, out.stdout.strip()
            break
    try:  # the file the dynamic linker mapped for echo_core._native
        import echo_core.native  # noqa: F401
        maps = _read("/proc/self/maps", "") or ""
        libs = sorted({line.split()[-1] for line in maps.splitlines() if "liburing" in line})
        if libs:
            info["loaded_library"] = os.path.realpath(libs[0])
    except ImportError:
        pass
    candidates = [info["loaded_library"]] if info["loaded_library"] else []
    for libdir in ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
                   os.path.join(sys.prefix, "lib")):
        candidates += sorted(glob.glob(os.path.join(libdir, "liburing.so.*.*")))
    for path in candidates:
        match = re.search(r"liburing\.so\.(\d+\.\d+(?:\.\d+)?)$", os.path.realpath(path))
        if match:
            info["version"] = match.group(1)
            if info["loaded_library"] is None:
                info["library_file"] = os.path.realpath(path)
            break
    if info["version"] is None and info["package_version"]:
        info["version"] = re.split(r"[-+~]", info["package_version"].split(":")[-1])[0]
    return info


def package_versions(names=PACKAGES):
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions.get("echo_core") is None:
        try:
            import echo_core

            versions["echo_core"] = echo_core.__version__
        except ImportError:  # pragma: no cover
            pass
    return versions


def repo_root():
    """The source checkout echo_core is imported from, or None (e.g. installed into site-packages)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def git_commit(root=None):
    """The commit checked out in root, read from .git without running git (None if not a checkout)."""
    root = Path(root) if root else repo_root()
    if root is None:
        return None
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = _read(git, "") or ""
        if not text.startswith("gitdir:"):
            return None
        git = (root / text.split(":", 1)[1].strip()).resolve()
    head = _read(git / "HEAD")
    if not head:
        return None
    if not head.startswith("ref:"):
        return head
    ref = head.split(":", 1)[1].strip()
    common = git
    commondir = _read(git / "commondir")
    if commondir:
        common = (git / commondir).resolve()
    for base in (git, common):
        value = _read(base / ref)
        if value:
            return value
        packed = _read(base / "packed-refs", "") or ""
        for line in packed.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def cpu_times_total():
    """Aggregate /proc/stat CPU times (jiffies): user, nice, system, idle, iowait, irq, softirq, steal."""
    line = (_read("/proc/stat", "") or "").splitlines()[:1]
    if not line or not line[0].startswith("cpu "):
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = [int(v) for v in line[0].split()[1:1 + len(names)]]
    return dict(zip(names, values))


def steal_fraction(before, after):
    """Share of all CPU time the hypervisor stole between two cpu_times_total() snapshots."""
    if not before or not after:
        return None
    total = sum(after.values()) - sum(before.values())
    return (after["steal"] - before["steal"]) / total if total > 0 else None


def machine_info(features_file=None):
    """One JSON-ready dict describing this machine and software (see the module docstring)."""
    uname = platform.uname()
    meminfo = _read("/proc/meminfo", "") or ""
    mem = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    return {
        "collected_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine,
                   "system": uname.system},
        "os": _os_release(),
        "cpu": cpu_info(),
        "memory_total_kib": int(mem.group(1)) if mem else None,
        "loadavg": _read("/proc/loadavg"),
        "io_uring": io_uring_info(features_file),
        "liburing": liburing_info(),
        "mitigations": mitigations(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def _os_release():
    text = _read("/etc/os-release", "") or ""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields.get("PRETTY_NAME", "").strip('"') or None
