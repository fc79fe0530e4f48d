"""What machine a result was measured on: kernel, CPU, io_uring availability, liburing, mitigations,
software versions and the repository commit -- everything a reader needs to judge a sweep -- and the
facts that can explain why the same cell differs between two machines: caches and their sharing, NUMA
nodes, the CPU flags that select the kernel's copy routines, the hypervisor, and what `perf` could count.

Everything here is read from /proc, /sys, the package database or probed with one cheap system
call; a fact that cannot be established is recorded as None (or, where the reason matters to a reader,
as a ``reason`` string) rather than guessed.  Nothing here raises on a machine that lacks a file.
"""

import ctypes
import errno
import glob
import os
import platform
import re
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from echo_core.host import cpus, numbers
from echo_core.native import ffi, lib

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


#: x86 CPU flags (/proc/cpuinfo) that decide how fast the echo servers' bytes are copied, and why each:
#: - erms (enhanced REP MOVSB/STOSB) and fsrm (fast short REP MOVSB): the kernel's copy_to_user /
#:   copy_from_user (_copy_to_iter, _copy_from_iter: every recv and send) use REP MOVSB when these are
#:   set and an unrolled loop otherwise -- the receive copy is where io_uring's CPU per byte differs;
#: - fzrm, fsrs, fsrc (fast zero-length MOVSB, short STOSB, short CMPSB/SCASB): the same choice for
#:   clearing and comparing memory (clear_user, memset of fresh pages and buffers);
#: - rep_good: Linux's own verdict that string instructions are fast here (memcpy/memset alternatives);
#: - smap: every user copy is bracketed by STAC/CLAC, a fixed cost per copy that small messages feel;
#: - avx2, avx512f: which glibc memcpy/memcmp the load generator's byte verification and user-space
#:   copies run (AVX-512 variants also change the core's clock on some CPUs).
COPY_FLAGS = ("erms", "fsrm", "fzrm", "fsrs", "fsrc", "rep_good", "smap", "avx2", "avx512f")


def _cpuinfo_fields(text):
    """The first processor's fields of /proc/cpuinfo as a dict (keys stripped)."""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block ends at the first blank line
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def copy_flags(flags):
    """{flag: present} for COPY_FLAGS, given the CPU's flag list; None when the flags are unknown
    (not x86, or no /proc/cpuinfo) -- absent would then be a guess."""
    if not flags:
        return None
    present = set(flags)
    return {flag: flag in present for flag in COPY_FLAGS}


def cpu_info(cpuinfo_path="/proc/cpuinfo"):
    """CPU model (name, vendor, family/model/stepping, microcode), counts, affinity, frequency governor,
    SMT, the hypervisor flag and the copy-related flags (COPY_FLAGS).  A VM's model name can be as
    vague as "AMD EPYC"; family and model numbers tell its generations apart."""
    text = _read(cpuinfo_path, "") or ""
    fields = _cpuinfo_fields(text)
    model = next((fields[k] for k in ("model name", "Processor", "cpu model") if fields.get(k)), None)
    flags = fields.get("flags", "").split()
    sockets = {line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("physical id")}
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    return {
        "model": model,
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model") if fields.get("model", "").isdigit() else None,
        "stepping": fields.get("stepping"),
        "microcode": fields.get("microcode"),
        "count": os.cpu_count(),
        "affinity": affinity,
        "sockets": len(sockets) or None,
        "hypervisor": "hypervisor" in flags if flags else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "smt": _read("/sys/devices/system/cpu/smt/control"),
        "copy_flags": copy_flags(flags),
    }


# --------------------------------------------------------------------------- caches and NUMA

def _size_bytes(text):
    """'32K' -> 32768, '1M' -> 1048576, '512' -> 512; None if unreadable."""
    try:
        return numbers.byte_count(text or "")
    except ValueError:
        return None


def _size_label(n):
    """32768 -> '32K', 1048576 -> '1M' (the kernel's own notation, in the largest exact unit)."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def _cache_name(level, kind):
    suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
    return f"L{level}{suffix}"


def _lenient_cpu_list(text):
    """'0-2,5' -> [0, 1, 2, 5]; [] if unreadable (sysfs files may be missing or empty)."""
    try:
        return cpus.parse_cpu_list((text or "").strip())
    except ValueError:
        return []


def cache_info(cpu_dir="/sys/devices/system/cpu"):
    """Every cache level the kernel describes, summarised per level across CPUs.

    Returns {"levels": [...], "summary": "L1d 32K x2 (per core), ..., L3 32M shared by cpus 0-1",
    "reason": None}; each level has name (L1d, L1i, L2, L3), level, type, size_bytes, ways, line_bytes,
    instances (distinct caches), shared_cpu_lists (one per instance) and sharing (a phrase).  On a
    machine without cache entries in sysfs: levels [], summary None and the reason.
    """
    entries = {}
    for index in sorted(glob.glob(os.path.join(cpu_dir, "cpu[0-9]*", "cache", "index[0-9]*"))):
        level, kind = _read(os.path.join(index, "level")), _read(os.path.join(index, "type"))
        shared = _read(os.path.join(index, "shared_cpu_list"))
        if not (level and level.isdigit() and kind):
            continue
        key = (int(level), kind)
        size = _size_bytes(_read(os.path.join(index, "size")))
        ways = _read(os.path.join(index, "ways_of_associativity"))
        line = _read(os.path.join(index, "coherency_line_size"))
        rec = entries.setdefault(key, {"name": _cache_name(*key), "level": key[0], "type": kind, "size_bytes": size,
                                       "ways": int(ways) if ways and ways.isdigit() else None,
                                       "line_bytes": int(line) if line and line.isdigit() else None,
                                       "shared_cpu_lists": []})
        if shared and shared not in rec["shared_cpu_lists"]:
            rec["shared_cpu_lists"].append(shared)
        if rec["size_bytes"] is None:
            rec["size_bytes"] = size
    if not entries:
        return {"levels": [], "summary": None,
                "reason": f"no cache descriptions under {cpu_dir}/cpu*/cache (kernel or container hides them)"}
    siblings = {}  # cpu -> the CPUs of its core (SMT threads), to tell "per core" from "shared"
    for path in glob.glob(os.path.join(cpu_dir, "cpu[0-9]*", "topology", "thread_siblings_list")):
        cpu = os.path.basename(os.path.dirname(os.path.dirname(path)))[3:]
        if cpu.isdigit():
            siblings[int(cpu)] = _lenient_cpu_list(_read(path))
    levels = []
    for key in sorted(entries, key=lambda k: (k[0], {"Data": 0, "Instruction": 1}.get(k[1], 2))):
        rec = entries[key]
        groups = [_lenient_cpu_list(s) for s in rec["shared_cpu_lists"]]
        rec["instances"] = len(groups)
        per_core = groups and all(g and siblings.get(g[0], [g[0]]) == g for g in groups)
        if per_core:
            rec["sharing"] = "per core"
        elif len(groups) == 1:
            rec["sharing"] = f"shared by cpus {cpus.format_cpu_list(groups[0])}"
        else:
            rec["sharing"] = "shared by cpus " + " | ".join(cpus.format_cpu_list(g) for g in groups)
        levels.append(rec)
    parts = []
    for rec in levels:
        size = _size_label(rec["size_bytes"]) if rec["size_bytes"] else "size ?"
        count = f" ×{rec['instances']}" if rec["instances"] > 1 else ""
        parts.append(f"{rec['name']} {size}{count} ({rec['sharing']})")
    return {"levels": levels, "summary": ", ".join(parts), "reason": None}


def numa_info(node_dir="/sys/devices/system/node"):
    """NUMA nodes: {"count", "nodes": [{"node", "cpus", "memory_kib"}], "reason"}; count None and a reason
    when the kernel does not describe them (no CONFIG_NUMA, or a container hides sysfs)."""
    nodes = []
    for path in glob.glob(os.path.join(node_dir, "node[0-9]*")):
        name = os.path.basename(path)
        if not name[4:].isdigit():
            continue
        meminfo = _read(os.path.join(path, "meminfo"), "") or ""
        mem = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        nodes.append({"node": int(name[4:]), "cpus": _read(os.path.join(path, "cpulist")),
                      "memory_kib": int(mem.group(1)) if mem else None})
    if not nodes:
        return {"count": None, "nodes": [], "reason": f"no NUMA nodes described under {node_dir}"}
    nodes.sort(key=lambda n: n["node"])
    return {"count": len(nodes), "nodes": nodes, "reason": None}


# --------------------------------------------------------------------------- hypervisor

def _run(cmd, timeout=5):
    """(exit status, stdout stripped) of a short command, or (None, why it could not run)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None, f"{cmd[0]} not found"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{cmd[0]}: {exc}"
    return proc.returncode, (proc.stdout.strip() or proc.stderr.strip())


def hypervisor_info(cpuinfo_path="/proc/cpuinfo", sys_hypervisor="/sys/hypervisor/type",
                    dmi_dir="/sys/class/dmi/id"):
    """Which hypervisor (and container) the machine runs under, from every cheap source there is.

    Keys: cpuid_hypervisor_flag (the CPU's "hypervisor" flag: running in some VM), detect_virt_vm and
    detect_virt_container (systemd-detect-virt --vm / --container: "kvm", "docker", "none", or None
    and detect_virt_reason when the tool is absent), sys_hypervisor_type (Xen), dmi_product and
    dmi_vendor, and name: the best single answer -- systemd's, else sysfs's, else the DMI vendor,
    else "unknown (CPUID hypervisor flag set)", else "none" (bare metal as far as can be seen).
    """
    flags = _cpuinfo_fields(_read(cpuinfo_path, "") or "").get("flags", "").split()
    info = {"cpuid_hypervisor_flag": ("hypervisor" in flags) if flags else None,
            "detect_virt_vm": None, "detect_virt_container": None, "detect_virt_reason": None,
            "sys_hypervisor_type": _read(sys_hypervisor),
            "dmi_product": _read(os.path.join(dmi_dir, "product_name")),
            "dmi_vendor": _read(os.path.join(dmi_dir, "sys_vendor"))}
    for option, key in (("--vm", "detect_virt_vm"), ("--container", "detect_virt_container")):
        # exits 1 and prints "none" when there is no VM (container): that is an answer, not an error
        status, out = _run(["systemd-detect-virt", option])
        if status is None:
            info["detect_virt_reason"] = out
            break
        info[key] = out.splitlines()[0] if out else None
    vm = info["detect_virt_vm"]
    if vm and vm != "none":
        info["name"] = vm
    elif info["sys_hypervisor_type"]:
        info["name"] = info["sys_hypervisor_type"]
    elif info["cpuid_hypervisor_flag"] and info["dmi_vendor"]:
        info["name"] = f"{info['dmi_vendor']} {info['dmi_product'] or ''}".strip()
    elif info["cpuid_hypervisor_flag"]:
        info["name"] = "unknown (CPUID hypervisor flag set)"
    elif vm == "none" or info["cpuid_hypervisor_flag"] is False:
        info["name"] = "none"
    else:
        info["name"] = None
    return info


# --------------------------------------------------------------------------- perf availability

#: perf_event_open(2) system call numbers (the C library has no wrapper).
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "i686": 336, "i386": 336, "riscv64": 241, "ppc64le": 319,
                    "s390x": 331}


def _perf_tool():
    """{"path", "version", "reason"}: the perf binary on PATH and what `perf --version` says."""
    import shutil

    path = shutil.which("perf")
    if path is None:
        return {"path": None, "version": None, "reason": "perf not on PATH (Debian: apt-get install linux-perf)"}
    status, out = _run([path, "--version"], timeout=10)
    if status == 0 and out:
        return {"path": path, "version": out.splitlines()[0], "reason": None}
    # Debian's /usr/bin/perf wrapper fails like this when no perf matches the running kernel
    first = (out or "").splitlines()[0] if out else f"exit status {status}"
    return {"path": path, "version": None, "reason": f"`perf --version` failed: {first}"}


def _tracefs(mounts_path="/proc/mounts"):
    """{"mounted", "mount_points", "reason"} for tracefs (where the io_uring and sched tracepoints live)."""
    text = _read(mounts_path)
    if text is None:
        return {"mounted": None, "mount_points": [], "reason": f"{mounts_path} unreadable"}
    points = [line.split()[1] for line in text.splitlines() if len(line.split()) > 2 and line.split()[2] == "tracefs"]
    reason = None if points else "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing, as root)"
    return {"mounted": bool(points), "mount_points": points, "reason": reason}


def _perf_event_open_cycles():
    """Try to open a hardware cycles counter on this thread (user space only, so an unprivileged user may):
    (True, None) if the CPU's PMU is usable, (False, why) if not, (None, why) if it cannot be tried."""
    number = _PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        return None, f"perf_event_open number unknown for {platform.machine()}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint8 * 128)()  # struct perf_event_attr, zeroed; the kernel accepts any known size
        ctypes.c_uint32.from_buffer(attr, 0).value = 0  # type PERF_TYPE_HARDWARE
        ctypes.c_uint32.from_buffer(attr, 4).value = 128  # size
        ctypes.c_uint64.from_buffer(attr, 8).value = 0  # config PERF_COUNT_HW_CPU_CYCLES
        # flags: disabled (bit 0), exclude_kernel (bit 5), exclude_hv (bit 6) -- allowed at paranoid 2
        ctypes.c_uint64.from_buffer(attr, 40).value = 1 | 1 << 5 | 1 << 6
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(ctypes.c_long(number), attr, ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(-1),
                          ctypes.c_ulong(8))  # this thread, any CPU, no group, PERF_FLAG_FD_CLOEXEC
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        return None, f"perf_event_open not callable: {exc}"
    if fd >= 0:
        os.close(fd)
        return True, None
    err = ctypes.get_errno()
    why = f"perf_event_open(PERF_TYPE_HARDWARE cycles): {os.strerror(err)} (errno {err})"
    if err in (errno.EACCES, errno.EPERM):
        return None, why + ": not permitted here, so the PMU could be there or not"
    return False, why


def perf_info(event_source_dir="/sys/bus/event_source/devices"):
    """What kernel counting and profiling can use here (the counters and profiles depend on it).

    Keys: tool (perf's path and version, or why absent), perf_event_paranoid (int, None if the kernel
    has no perf events), tracefs (mounted, mount_points, reason), event_sources (the PMUs in sysfs:
    "tracepoint", "software", "cpu", ...), hardware_pmu (True/False/None) and hardware_pmu_reason.
    A VM without a virtual PMU has no "cpu" event source and refuses hardware events (ENOENT):
    cycles, instructions and cache misses cannot be counted there.
    """
    paranoid = _read("/proc/sys/kernel/perf_event_paranoid")
    sources = sorted(os.path.basename(p) for p in glob.glob(os.path.join(event_source_dir, "*")))
    hardware_sources = [s for s in sources if s in ("cpu", "cpu_core", "cpu_atom") or s.startswith("armv8_pmu")]
    opened, why = _perf_event_open_cycles()
    if opened is None:  # could not try, or not allowed to: the PMUs sysfs lists are the best evidence
        opened = True if hardware_sources else (False if sources else None)
        why = None if opened else why
    if opened is False and not why:
        why = "no hardware PMU in " + event_source_dir
    return {"tool": _perf_tool(),
            "perf_event_paranoid": int(paranoid) if paranoid and paranoid.lstrip("-").isdigit() else None,
            "tracefs": _tracefs(),
            "event_sources": sources,
            "hardware_pmu": opened,
            "hardware_pmu_reason": None if opened else (why or f"no hardware PMU listed in {event_source_dir}")}


def comparable_facts(machine_meta):
    """The recorded machine facts that can make two result sets' numbers differ, as display strings keyed
    by label (None: not recorded in that result set, e.g. one measured before echo_core recorded it).
    Used both to warn when pooled sets come from different machines and for the report's machine table."""
    m = machine_meta or {}
    cpu = m.get("cpu") or {}
    caches, numa, virt = m.get("caches"), m.get("numa"), m.get("virtualization")
    flags = cpu.get("copy_flags")
    generation = None
    if cpu.get("vendor") or cpu.get("family"):
        generation = (f"{cpu.get('vendor')} family {cpu.get('family')} model {cpu.get('model_number')} "
                      f"stepping {cpu.get('stepping')}")
    return {
        "CPU model": cpu.get("model"),
        "CPU vendor / family / model": generation,
        "CPUs": str(cpu["count"]) if cpu.get("count") is not None else None,
        "caches": (caches.get("summary") or f"unknown: {caches.get('reason')}") if isinstance(caches, dict) else None,
        "NUMA nodes": ((str(numa["count"]) if numa.get("count") is not None else f"unknown: {numa.get('reason')}")
                       if isinstance(numa, dict) else None),
        "copy-related CPU flags": (" ".join(f for f, on in flags.items() if on) or "none of " + " ".join(flags)
                                   if isinstance(flags, dict) else None),
        "hypervisor": (virt.get("name") if isinstance(virt, dict) else None),
        "kernel": (m.get("kernel") or {}).get("release"),
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
    # The file the dynamic linker mapped for echo_core._native (imported with this module), by file
    # name: a path such as build/liburing-current/.../_native.so is not liburing.
    maps = _read("/proc/self/maps", "") or ""
    libs = sorted({line.split()[-1] for line in maps.splitlines()
                   if os.path.basename(line.split()[-1]).startswith("liburing.so")})
    if libs:
        info["loaded_library"] = os.path.realpath(libs[0])
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


def machine_id():
    """Which machine (and boot) this is: hostname/boot_id; namespaces of one machine share it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def package_versions(names=PACKAGES):
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def repo_root():
    """The source checkout echo_core is imported from, or None (e.g. installed into site-packages)."""
    root = Path(__file__).resolve().parents[2]
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
        "caches": cache_info(),
        "numa": numa_info(),
        "virtualization": hypervisor_info(),
        "perf": perf_info(),
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
