"""What machine a result was measured on: kernel, CPU, io_uring availability, liburing, mitigations,
software versions and the repository commit -- everything a reader needs to judge a sweep.

Everything here is read from /proc, /sys, the package database or probed with one cheap system
call; a fact that cannot be established is recorded as None rather than guessed.
"""

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

def _read(path, default=None):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return default


def io_uring_info(features_file=None):
    """What this kernel accepts, as probed from this process (plus, verbatim, an optional file).

    Probed (echo_core's C core, through liburing): /proc/sys/kernel/io_uring_disabled, whether a
    ring can be set up, the feature bits it returns, the opcodes the kernel's probe reports, and
    whether the setup flags echo_core's io_uring server uses are accepted.  A features file (e.g. a liburing-based probe's output) is included as
    ``features_file_content``, labelled as not probed here.
    """
    from echo_core.native import ffi, lib

    info = {"io_uring_disabled": None, "setup_permitted": None, "setup_error": None,
            "features_mask": None, "features": None, "ops_supported": None, "setup_flags_accepted": None}
    disabled = _read("/proc/sys/kernel/io_uring_disabled")
    info["io_uring_disabled"] = int(disabled) if disabled and disabled.isdigit() else None
    probe = ffi.new("struct ec_uring_probe *")
    lib.ec_uring_probe(probe)
    info["setup_permitted"] = probe.setup_error == 0
    if probe.setup_error:
        info["setup_error"] = os.strerror(-probe.setup_error)
    else:
        info["features_mask"] = hex(probe.features)
        info["features"] = [name for bit, name in enumerate(IORING_FEATURES) if probe.features >> bit & 1]
        unknown = probe.features >> len(IORING_FEATURES)
        if unknown:
            info["features"].append(f"unknown_bits<<{len(IORING_FEATURES)}:{hex(unknown)}")
        info["ops_supported"] = [IORING_OPS[op] if op < len(IORING_OPS) else f"op{op}"
                                 for op in range(probe.ops_len) if probe.op_supported[op]]
        # echo_core's io_uring server asks for SINGLE_ISSUER|DEFER_TASKRUN, else COOP_TASKRUN.
        info["setup_flags_accepted"] = {"COOP_TASKRUN": probe.coop_taskrun == 0,
                                        "SINGLE_ISSUER": probe.single_issuer == 0,
                                        "SINGLE_ISSUER|DEFER_TASKRUN": probe.defer_taskrun == 0}
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
