"""Kernel counters on the server over the measured window: which exist here, and per-message columns.

The load generator counts perf events on the server's threads (csrc/load/load_counters.c): kernel
tracepoints (io_uring, scheduler, system calls) and the PMU's cycles, instructions and cache misses.
This module decides which of them can be counted on this machine -- it finds (or, as root, mounts)
tracefs and reads the tracepoints' ids -- hands them to the C side as ``struct ec_counter`` entries,
and turns the C side's per-event deltas and statuses into row columns.

Counting is never an error: an event that cannot be counted gives NaN columns, and one short line,
``counters_note``, says why ("" when everything was counted).  ``ECHO_CORE_COUNTERS=0`` in the
environment turns counting off (every counter column NaN, note "disabled by ECHO_CORE_COUNTERS=0").
"""

import contextlib
import errno
import math
import os
import subprocess
import threading

from echo_core.native import ffi, lib

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PERF_TYPE_HARDWARE = 0
PERF_TYPE_TRACEPOINT = 2
ENV_SWITCH = "ECHO_CORE_COUNTERS"
DISABLED_NOTE = f"disabled by {ENV_SWITCH}=0"

#: Tracepoints counted, by the short name their raw column (server_kc_<name>) carries; where the
#: kernel renamed one, the alternatives are tried in order.
TRACEPOINTS = {
    "submit_req": ("io_uring:io_uring_submit_req", "io_uring:io_uring_submit_sqe"),
    "poll_arm": ("io_uring:io_uring_poll_arm",),
    "task_work_run": ("io_uring:io_uring_task_work_run",),
    "local_work_run": ("io_uring:io_uring_local_work_run",),
    "queue_async_work": ("io_uring:io_uring_queue_async_work",),
    "sched_switch": ("sched:sched_switch",),
    "sched_wakeup": ("sched:sched_wakeup",),
    # sched_waking fires in the waker's context also for a task on another CPU, whose sched_wakeup
    # then fires over there; the IPIs are what such a remote wake-up costs the server's CPU (a VM
    # exit each in a guest).
    "sched_waking": ("sched:sched_waking",),
    "ipi_send_cpu": ("ipi:ipi_send_cpu",),
    "ipi_send_cpumask": ("ipi:ipi_send_cpumask",),
    # The epoll server's recv()/send() are recvfrom/sendto on x86-64 and arm64 glibc; the msg
    # variants are counted too so another server (exec:) or libc is not missed.
    "sys_recvfrom": ("syscalls:sys_enter_recvfrom",),
    "sys_recvmsg": ("syscalls:sys_enter_recvmsg",),
    "sys_sendto": ("syscalls:sys_enter_sendto",),
    "sys_sendmsg": ("syscalls:sys_enter_sendmsg",),
    "sys_epoll_wait": ("syscalls:sys_enter_epoll_wait",),
    "sys_epoll_pwait": ("syscalls:sys_enter_epoll_pwait",),
    "sys_epoll_pwait2": ("syscalls:sys_enter_epoll_pwait2",),
    "sys_io_uring_enter": ("syscalls:sys_enter_io_uring_enter",),
}
#: PERF_COUNT_HW_* of the PMU events counted.
HARDWARE = {"cycles": 0, "instructions": 1, "cache_misses": 3}
NAMES = tuple(TRACEPOINTS) + tuple(HARDWARE)

#: Per-message columns: the raw counters each one sums (NaN unless every one of them was counted).
PER_MSG = {
    "server_submit_reqs_per_msg": ("submit_req",),
    "server_poll_arms_per_msg": ("poll_arm",),
    "server_task_work_per_msg": ("task_work_run", "local_work_run"),
    "server_local_work_per_msg": ("local_work_run",),
    "server_async_punts_per_msg": ("queue_async_work",),
    "server_sched_switches_per_msg": ("sched_switch",),
    "server_wakeups_per_msg": ("sched_wakeup",),
    "server_wakings_per_msg": ("sched_waking",),
    "server_ipis_per_msg": ("ipi_send_cpu", "ipi_send_cpumask"),
    "server_recv_syscalls_per_msg": ("sys_recvfrom", "sys_recvmsg"),
    "server_send_syscalls_per_msg": ("sys_sendto", "sys_sendmsg"),
    "server_wait_syscalls_per_msg": ("sys_epoll_wait", "sys_epoll_pwait", "sys_epoll_pwait2", "sys_io_uring_enter"),
    "server_uring_enter_syscalls_per_msg": ("sys_io_uring_enter",),
    "server_cycles_per_msg": ("cycles",),
    "server_instructions_per_msg": ("instructions",),
    "server_cache_misses_per_msg": ("cache_misses",),
}


def raw_key(name):
    """The load record's key for one counter's change over the window."""
    return f"server_kc_{name}"


def disabled():
    return os.environ.get(ENV_SWITCH, "").strip() == "0"


# ---------------------------------------------------------------- tracefs

_tracefs_cache = None


def _is_tracefs(path):
    return os.path.isdir(os.path.join(path, "events"))


def find_tracefs(mount=True):
    """(path or None, what happened): tracefs where it is mounted; as root, mounted if it is not."""
    global _tracefs_cache
    if _tracefs_cache is not None and (_tracefs_cache[0] or not mount):
        return _tracefs_cache
    for path in TRACEFS_PATHS:
        try:
            if _is_tracefs(path):
                _tracefs_cache = (path, f"tracefs at {path}")
                return _tracefs_cache
            os.listdir(path)  # tells a mounted tracefs we may not enter from an absent one
        except PermissionError:
            _tracefs_cache = (None, f"tracefs: permission denied ({path})")
            return _tracefs_cache
        except OSError:
            continue
    if not mount or os.geteuid() != 0:
        return None, "tracefs: not mounted (mounting needs root)"
    path = TRACEFS_PATHS[0]
    try:
        done = subprocess.run(["mount", "-t", "tracefs", "nodev", path], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        _tracefs_cache = (None, f"tracefs: not mounted, mount failed ({e})")
        return _tracefs_cache
    if done.returncode == 0 and _is_tracefs(path):
        _tracefs_cache = (path, f"tracefs mounted by echo_core at {path}")
    else:
        why = (done.stderr or done.stdout).strip().splitlines()
        _tracefs_cache = (None, "tracefs: not mounted, mount failed" + (f" ({why[-1]})" if why else ""))
    return _tracefs_cache


def _tracepoint_id(tracefs, event):
    """(id, None) or (None, reason) for "sys:name"."""
    system, name = event.split(":", 1)
    try:
        with open(os.path.join(tracefs, "events", system, name, "id")) as f:
            return int(f.read().strip()), None
    except FileNotFoundError:
        return None, "missing on this kernel"
    except PermissionError:
        return None, "tracefs: permission denied reading event ids (EACCES)"
    except (OSError, ValueError) as e:
        return None, f"tracefs: cannot read the event id ({e})"


# ---------------------------------------------------------------- resolving


def resolve(names=None, mount=True):
    """What to count: ([(name, type, config)], {name: reason it is not counted}).

    names: the counters wanted (default all of NAMES).  Hardware events are always handed to the C
    side, which finds out whether there is a PMU (its -errno becomes the reason).
    """
    names = list(NAMES if names is None else names)
    if disabled():
        return [], {name: DISABLED_NOTE for name in names}
    events, missing = [], {}
    tracefs, how = (None, "")
    if any(name in TRACEPOINTS for name in names):
        tracefs, how = find_tracefs(mount=mount)
    for name in names:
        if name in HARDWARE:
            events.append((name, PERF_TYPE_HARDWARE, HARDWARE[name]))
            continue
        if tracefs is None:
            missing[name] = how
            continue
        reason = None
        for event in TRACEPOINTS[name]:
            tid, reason = _tracepoint_id(tracefs, event)
            if tid is not None:
                events.append((name, PERF_TYPE_TRACEPOINT, tid))
                break
        else:
            missing[name] = (f"tracepoint {TRACEPOINTS[name][0]} {reason}" if reason == "missing on this kernel"
                             else reason)
    return events, missing


_hold_lock = threading.Lock()
_hold_depth = 0


@contextlib.contextmanager
def tracepoints_held(events=None):
    """Keep the tracepoints among events (default: every one resolve() finds) registered while the block runs.

    Closing the last perf event on a tracepoint waits for a kernel grace period: 0.6 s per run for the
    16 tracepoints on the 2-vCPU guest, spent after every window.  Inside this block the process holds
    one disabled event per tracepoint that counts nothing (csrc/load/load_counters.c, ec_counters_hold),
    so each run's events close at once; leaving the outermost block releases them and pays once.  A held
    syscall tracepoint keeps every task's system calls on the kernel's traced path, as during a run:
    hence a block around a sweep, not a hold for a process's life.  Failing to hold costs only time.
    """
    global _hold_depth
    if events is None:
        events = resolve()[0]
    with _hold_lock:
        _hold_depth += 1
        if events:
            cdata = ffi.new("struct ec_counter[]", [{"type": t, "config": c} for _, t, c in events])
            lib.ec_counters_hold(cdata, len(events))
    try:
        yield
    finally:
        with _hold_lock:
            _hold_depth -= 1
            if not _hold_depth:
                lib.ec_counters_release()


def parse_names(spec):
    """--counters SPEC: "all" (default), "none", or a comma list of NAMES -> list of names."""
    spec = (spec or "all").strip()
    if spec == "all":
        return list(NAMES)
    if spec == "none":
        return []
    names = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown counter(s) {', '.join(unknown)}: choose from all, none, {', '.join(NAMES)}")
    return names


# ---------------------------------------------------------------- reasons


def _errno_name(err):
    return errno.errorcode.get(err, str(err))


def _paranoid():
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return f.read().strip()
    except OSError:
        return "?"


def status_reason(name, err):
    """One short reason for a counter the C side could not count (err a positive errno)."""
    code = _errno_name(err)
    if err in (errno.EACCES, errno.EPERM):
        return (f"no permission to count the server's events (perf_event_open: {code}; needs root or "
                f"CAP_PERFMON, perf_event_paranoid={_paranoid()})")
    if name in HARDWARE and err in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL):
        return f"pmu: no hardware PMU on this machine (perf_event_open: {code})"
    if err == errno.ENODATA:
        return "window not measured (the run stopped before it)"
    if err == errno.ESRCH:
        return "server process gone before counting started (ESRCH)"
    if err == errno.EMFILE:
        return "out of file descriptors for perf events (EMFILE)"
    return f"{name}: perf_event_open/read failed ({code})"


def note(reasons):
    """{name: reason} -> one short line; identical reasons are said once."""
    if not reasons:
        return ""
    if all(r == DISABLED_NOTE for r in reasons.values()):
        return DISABLED_NOTE
    by_reason = {}
    for name, reason in reasons.items():
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names in by_reason.items():
        everything = set(names) >= set(TRACEPOINTS) or set(names) == set(HARDWARE) or len(by_reason) == 1
        parts.append(reason if everything else f"{reason} [{', '.join(names)}]")
    return "; ".join(parts)


# ---------------------------------------------------------------- columns


def per_msg_columns(row, msgs):
    """The counters' per-message columns from a row holding the raw server_kc_* deltas."""
    nan = math.nan
    out = {}
    for column, names in PER_MSG.items():
        values = [row.get(raw_key(n), nan) for n in names]
        total = sum(float(v) if v is not None else nan for v in values)
        out[column] = total / msgs if msgs and math.isfinite(total) else nan
    return out


def availability():
    """What this machine and user can count, and why not (cheap: no perf event is opened)."""
    out = {"disabled": disabled(), "euid": os.geteuid(), "perf_event_paranoid": _paranoid()}
    if out["disabled"]:
        out.update(tracefs=None, tracepoints="disabled", pmu="disabled", note=DISABLED_NOTE)
        return out
    tracefs, how = find_tracefs(mount=True)
    out["tracefs"] = tracefs
    out["tracefs_note"] = how
    if tracefs is None:
        out["tracepoints"] = how
    else:
        _, missing = resolve([n for n in TRACEPOINTS], mount=False)
        out["tracepoints"] = "available" if not missing else note(missing)
    if out["euid"] != 0 and out["perf_event_paranoid"] not in ("-1",):
        out["tracepoints_permission"] = ("other users' processes need root or CAP_PERFMON "
                                         f"(perf_event_paranoid={out['perf_event_paranoid']})")
    out["pmu"] = _pmu()
    return out


def _pmu():
    """"available" or why not: the kernel lists a core PMU under /sys/bus/event_source/devices/cpu."""
    if os.path.isdir("/sys/bus/event_source/devices/cpu") or os.path.isdir("/sys/bus/event_source/devices/cpu_core"):
        return "available"
    return "pmu: no hardware PMU on this machine (no /sys/bus/event_source/devices/cpu)"
