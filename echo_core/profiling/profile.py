"""CPU profiles per cell: where does each server's CPU per message go?

:func:`profile_cell` runs one cell (mode, payload, connections) for each implementation exactly like a
benchmark run (``bench.run_benchmark``: fresh pinned server, pinned load generator, one row) while
``perf record -g -e cpu-clock`` samples the server process's kernel and user stacks.  perf starts
with its events disabled (``-D -1``) and the load generator enables them when its measured window
opens and disables them when it closes (``--control fifo:...``), so the samples cover the same window
as the row's throughput and server CPU.  For each implementation it writes, into ``output_dir``:

``<impl>.folded``
    folded stacks, ``frame;frame;...;leaf count`` per line, root first, kernel frames suffixed
    ``_[k]`` (see echo_core.profiling.folded);
``<impl>.svg``
    a flame graph (echo_core.profiling.flamegraph);

and for the cell:

``top_functions.csv``
    one row per (impl, function): self and inclusive samples, their shares of the impl's samples,
    and CPU µs per message (see :func:`top_functions`);
``categories.csv``
    one row per (impl, category): each sample's CPU attributed to a small set of subsystems
    (see :data:`CATEGORIES`);
``top_functions.png``
    the top functions' µs per message side by side, ordered by the difference between the first two
    implementations (echo_core.profiling.charts);
``profile.json``
    the cell, per impl the bench row's key figures and the whole row, sample counts and file names,
    the perf version and command, and the machine.

:func:`load_profile` reads such a directory back, so notebooks and reports can render saved
profiles without running anything.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from echo_core.host import cpus
from echo_core.measure import benchmark as bench
from echo_core.profiling import flamegraph
from echo_core.profiling.charts import save_charts
from echo_core.profiling import folded
from echo_core.load.generator import DEFAULT_CLIENT, check_load_args
from echo_core.servers.options import parse_work
from echo_core.servers import specs
from echo_core.results.schema import IMPL_LABELS
from echo_core.host.machine import machine_info

#: Sampling frequency (Hz) of cpu-clock; 4000 Hz is one sample per 250 µs of CPU.
FREQUENCY_HZ = 4000
#: Bench row figures copied into profile.json next to the sample counts.
ROW_KEY_FIGURES = ("msgs_per_s", "bytes_per_s", "duration_s", "warmup_s", "server_cpu_s", "server_cpu_us_per_msg",
                   "server_util", "client_util", "bottleneck", "window_agreement", "valid", "invalid_reason")
PROFILE_JSON = "profile.json"
TOP_FUNCTIONS_CSV = "top_functions.csv"
CATEGORIES_CSV = "categories.csv"
#: How long perf may take to start sampling and to write its file after "stop".
PERF_START_TIMEOUT_S = 15.0
PERF_STOP_TIMEOUT_S = 30.0

INSTALL_HINT = ("install perf: 'apt-get install linux-perf' (Debian) or 'apt-get install linux-tools-common "
                "linux-tools-$(uname -r)' (Ubuntu), or run scripts/install.sh")
PERMISSION_HINT = ("run as root, or allow it with 'sysctl kernel.perf_event_paranoid=1' "
                   "(kernel stacks of another process need CAP_PERFMON or paranoid <= 1)")

#: Subsystems a sample's CPU is attributed to.  The sample's frames are tried from the leaf towards
#: the root and the first frame matching one of these patterns (tried in this order) decides; a sample
#: whose leaf is a user-space frame is "user", one that matches nothing is "other kernel".  So a
#: spin lock taken in tcp_sendmsg counts as tcp/ip, a copy inside a softirq as copy, and a page fault
#: taken while copying to a not yet touched user buffer as a page fault.
CATEGORIES = (
    # First touches of memory (e.g. io_uring's provided-buffer pool in a fresh server) fault inside copies.
    ("page faults", r"page_fault|handle_mm_fault|do_anonymous_page|clear_page|do_user_addr_fault|vma_alloc_folio|"
                    r"alloc_anon_folio|__do_fault|lock_vma_under_rcu"),
    ("copy", r"copy_(to|from)_iter|copy_user|copy_page|memcpy|memmove|csum_partial_copy|skb_copy_bits"),
    ("memory", r"kmalloc|kfree|kmem_cache|__alloc_pages|alloc_pages|free_.*pages|page_frag|__slab|slab_|"
               r"skb_release|__build_skb|__alloc_skb|kfree_skb|consume_skb|sk_mem_|skb_attempt_defer_free"),
    ("io_uring", r"^_*io_(?!schedule)|io_uring|io_wq|io_poll|io_req|io_issue|io_submit|io_cqring|io_buffer"),
    ("epoll", r"^_*ep_|epoll"),
    ("softirq", r"softirq|net_rx_action|napi|process_backlog|irq_exit"),
    ("tcp/ip", r"tcp|^_*ip_|ipv4|inet|^_*sock_|^_*sk_|skb|netif|dev_queue|dev_hard|loopback|^_*dst_|nf_"),
    ("sched", r"schedule|pick_next|enqueue_|dequeue_|wake_up|ttwu|finish_task_switch|update_curr|"
              r"update_load|psi_|task_tick|hrtimer|tick_"),
    ("syscall entry", r"entry_SYSCALL|do_syscall|syscall_exit|syscall_enter|__x64_sys|exit_to_user_mode|"
                      r"fpregs|fpu_|syscall_return"),
)
_CATEGORY_RES = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)
USER_CATEGORY = "user"
OTHER_CATEGORY = "other kernel"


class ProfilerUnavailable(RuntimeError):
    """perf is missing or may not sample here; the message names the fix."""


@dataclass
class Profile:
    """A profiled cell, as written by profile_cell() or read back by load_profile()."""

    output_dir: Path
    meta: dict                                   # profile.json
    stacks: dict = field(default_factory=dict)   # impl -> {stack tuple root first: samples}
    table: pd.DataFrame = None                   # top_functions.csv
    categories: pd.DataFrame = None              # categories.csv

    @property
    def impls(self):
        return list(self.meta["impls"])

    def files(self):
        """Every file of the profile, by role (paths)."""
        out = {role: self.output_dir / name for role, name in self.meta["files"].items()}
        for impl, info in self.meta["impls"].items():
            out[f"{impl}.folded"] = self.output_dir / info["folded"]
            out[f"{impl}.svg"] = self.output_dir / info["svg"]
        return out


# ------------------------------------------------------------------- perf


def perf_path():
    return shutil.which("perf")


def perf_version(perf=None):
    perf = perf or perf_path()
    try:
        out = subprocess.run([perf, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired, TypeError):
        return None
    return out.stdout.strip() or None


def _last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_perf():
    """Raise ProfilerUnavailable (naming the fix) unless perf exists and may sample kernel stacks.

    Probes with a tiny real recording of kernel stacks (`perf record -g -e cpu-clock:k -- true`), which
    fails the same way a profile would: perf missing, perf_event_open refused (perf_event_paranoid,
    seccomp), or perf not matching the kernel (Ubuntu's wrapper then says which linux-tools package is
    missing).  ":k" because without it perf silently falls back to user-only sampling where kernel
    profiling is not allowed, and a server's CPU is mostly in the kernel.
    """
    perf = perf_path()
    if perf is None:
        raise ProfilerUnavailable(f"perf not found; {INSTALL_HINT}")
    version = perf_version(perf)
    with tempfile.TemporaryDirectory(prefix="echo_core-perf-probe-") as tmp:
        try:
            probe = subprocess.run([perf, "record", "-q", "-g", "-e", "cpu-clock:k", "-o", os.path.join(tmp, "probe.data"),
                                    "--", "true"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProfilerUnavailable(f"perf does not run ({exc}); {INSTALL_HINT}") from None
    if probe.returncode == 0 and version:
        return version
    raise ProfilerUnavailable(explain_perf_failure(probe.stderr + probe.stdout, probe.returncode))


def explain_perf_failure(text, returncode):
    """perf's own error output -> one line saying what is wrong and how to fix it."""
    if re.search(r"perf_event_paranoid|Permission|not permitted|Access to performance monitoring", text, re.I):
        return f"perf may not sample kernel stacks here (perf_event_open refused); {PERMISSION_HINT}"
    if re.search(r"not found|linux-tools|No such file", text, re.I):
        return f"perf is not usable with this kernel ({_last_line(text)}); {INSTALL_HINT}"
    return f"perf record failed ({_last_line(text) or f'exit {returncode}'}); {PERMISSION_HINT}"


def _open_ctl(path, proc, deadline):
    """Open perf's control FIFO for writing once perf has opened it (before that, ENXIO)."""
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: perf has not opened it yet
                raise
        if proc.poll() is not None or time.monotonic() > deadline:
            return -1
        time.sleep(0.01)


def _wait_ack(ack_fd, proc, deadline):
    """Wait until perf writes an acknowledgement ("ack\\n") to the ack FIFO; False if it never does."""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([ack_fd], [], [], 0.05)
        if ready:
            try:
                data = os.read(ack_fd, 4096)
            except BlockingIOError:
                continue
            if b"ack" in data:
                return True
    return False


def _drain(fd):
    with contextlib.suppress(BlockingIOError, OSError):
        while os.read(fd, 4096):
            pass


class PerfRecorder:
    """bench.run_benchmark's observer: ``perf record`` on the server's process for the measured window.

    Called with the running server it starts perf (events disabled, control FIFOs in a private temp
    directory, perf itself on the client CPUs so it does not steal the server's), waits until perf
    answers a "ping" (its events are open), and yields the control FIFO for the load generator's
    --window-ctl.  On leaving it sends "stop" (perf handles commands in order, so the load generator's
    "disable" has been handled by then) and waits for perf to write its file.
    """

    def __init__(self, data_path, cpus=None, frequency=FREQUENCY_HZ):
        self.data_path = str(data_path)
        self.cpus = cpus
        self.frequency = frequency
        self.command = None
        self.stderr = ""

    def command_for(self, pids, ctl, ack):
        return [perf_path() or "perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", str(self.frequency),
                "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-o", self.data_path,
                "-p", ",".join(map(str, pids))]

    @contextlib.contextmanager
    def __call__(self, srv):
        pids = srv.pids()
        if not pids:
            raise RuntimeError("the server has no process to profile")
        with tempfile.TemporaryDirectory(prefix="echo_core-perf-") as tmp, \
                tempfile.TemporaryFile(mode="w+") as err:
            ctl, ack = os.path.join(tmp, "ctl"), os.path.join(tmp, "ack")
            os.mkfifo(ctl, 0o600)
            os.mkfifo(ack, 0o600)
            self.command = self.command_for(pids, ctl, ack)
            proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            if self.cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, set(self.cpus))
            ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            ctl_fd = -1
            try:
                deadline = time.monotonic() + PERF_START_TIMEOUT_S
                ctl_fd = _open_ctl(ctl, proc, deadline)
                if ctl_fd >= 0:
                    os.write(ctl_fd, b"ping\n")
                if ctl_fd < 0 or not _wait_ack(ack_fd, proc, deadline):
                    self._stop(proc, -1)
                    err.seek(0)
                    self.stderr = err.read()
                    raise ProfilerUnavailable(f"perf record did not start "
                                              f"({_last_line(self.stderr) or 'no answer on its control FIFO'}); "
                                              f"{PERMISSION_HINT}")
                _drain(ack_fd)
                yield ctl
            finally:
                self._stop(proc, ctl_fd)
                for fd in (ctl_fd, ack_fd):
                    if fd >= 0:
                        os.close(fd)
                err.seek(0)
                self.stderr = err.read()
        if proc.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"perf record exited with status {proc.returncode}: {_last_line(self.stderr)}")

    @staticmethod
    def _stop(proc, ctl_fd):
        if proc.poll() is not None:
            return
        if ctl_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(ctl_fd, b"stop\n")
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=PERF_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=PERF_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def perf_script(data_path):
    """`perf script` of a recording, with the fields echo_core.profiling.folded parses; returns (text, command)."""
    cmd = [perf_path() or "perf", "script", "-i", str(data_path), "-F", folded.PERF_SCRIPT_FIELDS]
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"perf script failed: {_last_line(out.stderr) or f'exit {out.returncode}'}")
    return out.stdout, cmd


def sampled_period_ns(script_text):
    """Sum of the samples' periods (ns of CPU for cpu-clock) from `perf script -F comm,tid,period,...`."""
    total = 0
    for line in script_text.splitlines():
        if line and line[0] not in " \t":
            parts = line.split()
            if len(parts) >= 3 and parts[-1].isdigit():
                total += int(parts[-1])
    return total


# ------------------------------------------------------------ tables


def categorize(stack):
    """The subsystem a sample's CPU goes to (see CATEGORIES)."""
    if not stack:
        return OTHER_CATEGORY
    if not stack[-1].endswith(folded.KERNEL_SUFFIX):
        return USER_CATEGORY
    for frame in reversed(stack):
        function, _kernel = folded.split_frame(frame)
        for name, pattern in _CATEGORY_RES:
            if pattern.search(function):
                return name
    return OTHER_CATEGORY


def _us_per_sample(server_cpu_us_per_msg, total):
    # CPU µs per message carried by one sample.  Samples are scaled by the server CPU the load generator
    # measured over the same window (server_cpu_us_per_msg), not by the sampling period: the sampled time
    # (samples x period) can miss or add a little (timer granularity, the window's edges), while the
    # measured figure is the one every row reports, so the table's per-function parts add up to it.
    if not total or not (isinstance(server_cpu_us_per_msg, (int, float)) and math.isfinite(server_cpu_us_per_msg)):
        return math.nan
    return server_cpu_us_per_msg / total


def top_functions(stacks_by_impl, cpu_us_per_msg_by_impl):
    """Tidy table, one row per (impl, function), heaviest self first within each impl.

    Columns: impl, function, kernel (bool), self_samples, inclusive_samples, self_share and
    inclusive_share (of the impl's samples), self_us_per_msg and inclusive_us_per_msg
    (= server_cpu_us_per_msg x samples / the impl's total samples), total_samples.
    Self µs/msg over all of an impl's functions add up to its server_cpu_us_per_msg.
    """
    records = []
    for impl, stacks in stacks_by_impl.items():
        total = folded.total_samples(stacks)
        per_sample = _us_per_sample(cpu_us_per_msg_by_impl.get(impl), total)
        for frame, (self_n, incl_n) in folded.function_samples(stacks).items():
            function, kernel = folded.split_frame(frame)
            records.append({"impl": impl, "function": function, "kernel": kernel,
                            "self_samples": self_n, "inclusive_samples": incl_n,
                            "self_share": self_n / total, "inclusive_share": incl_n / total,
                            "self_us_per_msg": self_n * per_sample, "inclusive_us_per_msg": incl_n * per_sample,
                            "total_samples": total})
    columns = ["impl", "function", "kernel", "self_samples", "inclusive_samples", "self_share", "inclusive_share",
               "self_us_per_msg", "inclusive_us_per_msg", "total_samples"]
    table = pd.DataFrame.from_records(records, columns=columns)
    order = {impl: i for i, impl in enumerate(stacks_by_impl)}
    table["_order"] = table["impl"].map(order)
    table = table.sort_values(["_order", "self_samples", "function"], ascending=[True, False, True])
    return table.drop(columns="_order").reset_index(drop=True)


def category_table(stacks_by_impl, cpu_us_per_msg_by_impl):
    """One row per (impl, category): samples, share, us_per_msg (scaled like top_functions)."""
    records = []
    names = [name for name, _ in CATEGORIES] + [OTHER_CATEGORY, USER_CATEGORY]
    for impl, stacks in stacks_by_impl.items():
        total = folded.total_samples(stacks)
        per_sample = _us_per_sample(cpu_us_per_msg_by_impl.get(impl), total)
        counts = dict.fromkeys(names, 0)
        for stack, count in stacks.items():
            counts[categorize(stack)] += count
        for name in names:
            records.append({"impl": impl, "category": name, "samples": counts[name],
                            "share": counts[name] / total if total else math.nan,
                            "us_per_msg": counts[name] * per_sample})
    return pd.DataFrame.from_records(records, columns=["impl", "category", "samples", "share", "us_per_msg"])


def differences(table, impls=None, n=5, column="self_us_per_msg"):
    """Functions by how much more µs/msg the first impl spends in them than the second, largest
    absolute difference first: columns function, kernel, <impl a>, <impl b>, difference."""
    impls = list(impls or dict.fromkeys(table["impl"]))
    if len(impls) < 2:
        raise ValueError("differences need two implementations")
    a, b = impls[:2]
    wide = table.pivot_table(index=["function", "kernel"], columns="impl", values=column, aggfunc="sum",
                             fill_value=0.0)
    for impl in (a, b):
        if impl not in wide.columns:
            wide[impl] = 0.0
    wide = wide[[a, b]].reset_index()
    wide.columns.name = None
    wide["difference"] = wide[a] - wide[b]
    order = wide["difference"].abs().sort_values(ascending=False).index
    return wide.loc[order].head(n).reset_index(drop=True)


# ------------------------------------------------------------- running


def default_output_dir(mode, payload, connections, root="data/profiles"):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{mode}-{payload}x{connections}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def _combine_runs(runs):
    """One implementation's figures over its valid repeats: totals, and CPU per message as total server
    CPU over total messages (the figure the merged samples are scaled by).  Invalid runs are counted in
    ``excluded`` with their reasons and enter no figure."""
    nan = math.nan
    good = [run for run in runs if run["valid"]]
    msgs = sum(run["msgs_in_window"] for run in good)
    cpu = sum(run["server_cpu_s"] if run["server_cpu_s"] is not None else nan for run in good)
    window = sum(run["duration_s"] for run in good)
    sampled = sum(run["sampled_cpu_s"] for run in good)
    reasons = [f"run {i + 1}: {run['invalid_reason']}" if len(runs) > 1 else run["invalid_reason"]
               for i, run in enumerate(runs) if not run["valid"]]
    return {
        "repeats": len(runs),
        "excluded": len(runs) - len(good),
        "msgs_per_s": msgs / window if window else nan,
        "bytes_per_s": sum(run["bytes_per_s"] * run["duration_s"] for run in good) / window if window else nan,
        "duration_s": window,
        "msgs_in_window": msgs,
        "server_cpu_s": cpu if good else nan,
        "server_cpu_us_per_msg": cpu * 1e6 / msgs if msgs else nan,
        "valid": not reasons,
        "invalid_reason": "; ".join(reasons),
        "samples": sum(run["samples"] for run in good),
        # Sampled CPU time over the measured one: near 1 when the samples cover the windows only.
        "sampled_cpu_s": sampled,
        "sampling_coverage": sampled / cpu if good and cpu and math.isfinite(cpu) else nan,
    }


def file_stem(impl):
    """A spec as a file name: "uring" stays "uring"; "uring(buf_count=16)+mshot" -> "uring_buf_count-16+mshot";
    an external server "exec:CMD" -> "exec-PROGRAM-HASH" (a command holds slashes and spaces; the hash, 8 hex
    digits of the whole spec's SHA-1, tells two commands of one program apart)."""
    if specs.is_exec(impl):
        program = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(specs.parse_exec(impl)[0]))
        return f"exec-{program}-{hashlib.sha1(impl.encode()).hexdigest()[:8]}"
    return impl.replace("(", "_").replace(")", "").replace("=", "-").replace(",", "_")


def profile_cell(impls, mode, payload, connections, duration=2.0, output_dir=None, warmup=0.5, warmup_max=None,
                 server_cpu=None, client_cpus=None, repeats=1, frequency=FREQUENCY_HZ, server_options=None,
                 keep_perf_data=False, charts=True, machine=True, client=DEFAULT_CLIENT, work="none"):
    """Profile one cell for each implementation in ``impls`` (e.g. ["uring", "epoll"]); see the module
    docstring for the files written to ``output_dir`` (default data/profiles/<time>-<mode>-<payload>x<conns>).

    Runs ``repeats`` benchmarks per implementation (bench.run_benchmark, same arguments), the
    implementations interleaved; an implementation's samples over its repeats fold into one
    ``<impl>.folded`` and its CPU per message is its total server CPU over its total messages.
    ``client`` (the load generator's design) and ``work`` (the servers' work per request) are
    run_benchmark's: the same cell profiled under two clients shows why a verdict flips with the client.
    Raises ValueError for bad arguments and ProfilerUnavailable when perf is missing or may not
    sample (both before any server starts).  Returns a Profile.

    profile.json's ``impls[impl]`` holds the combined figures (repeats, msgs_per_s, bytes_per_s,
    duration_s, msgs_in_window, server_cpu_s, server_cpu_us_per_msg, valid, invalid_reason, samples,
    sampled_cpu_s, sampling_coverage, folded, svg) and ``runs``: per repeat the row's key figures
    (ROW_KEY_FIGURES), msgs_in_window, samples, sampled_cpu_s, perf_data and the whole ``row``.
    """
    if isinstance(impls, str):
        impls = specs.split_list(impls)
    impls = list(dict.fromkeys(specs.canonical(impl) for impl in impls))
    if not impls:
        raise ValueError("no implementation to profile")
    for impl in impls:
        why = specs.unsupported_reason(impl)
        if why:
            raise ValueError(f"cannot profile {impl}: unsupported: {why}")
    if mode == "rate":
        raise ValueError('profiles are for the closed-loop modes "stream" and "rr", got "rate"')
    auto_server, auto_client = cpus.default_cpus()
    server_cpu = auto_server if server_cpu is None else server_cpu
    client_cpus = list(auto_client if client_cpus is None else client_cpus)
    checked = check_load_args("127.0.0.1", 1, mode, payload, connections, len(client_cpus), duration, warmup,
                              cpus=client_cpus, warmup_max=warmup_max, client=client)
    work = parse_work(work)[0]
    if server_cpu not in os.sched_getaffinity(0):
        raise ValueError(f"server cpu {server_cpu} is not available (available: {sorted(os.sched_getaffinity(0))})")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        raise ValueError(f"repeats must be an integer in 1..100, got {repeats!r}")
    frequency = int(frequency)
    if not 1 <= frequency <= 100000:
        raise ValueError(f"frequency must be in 1..100000 Hz, got {frequency}")
    version = check_perf()

    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(mode, checked["payload"],
                                                                                     checked["connections"])
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cell": {"mode": mode, "payload": checked["payload"], "connections": checked["connections"],
                 "duration": checked["duration"], "repeats": repeats, "warmup": checked["warmup"], "warmup_max": warmup_max,
                 "server_cpu": server_cpu, "client_cpus": client_cpus, "server_options": server_options or {},
                 "client": client, "work": work},
        "perf": {"version": version, "event": "cpu-clock", "frequency_hz": frequency, "callchain": "fp",
                 "record_command": None, "script_command": None,
                 "window": "events enabled and disabled by the load generator at its measured window's edges"},
        "impls": {},
        "files": {"top_functions": TOP_FUNCTIONS_CSV, "categories": CATEGORIES_CSV},
        "scaling": "µs/msg = server_cpu_us_per_msg x samples / total samples (the measured server CPU, "
                   "not the sampling period)",
    }
    runs = {impl: [] for impl in impls}
    stacks_by_impl = {impl: Counter() for impl in impls}
    # Repeats interleave the implementations (uring, epoll, uring, epoll, ...) so that a drift of the
    # machine over the profile touches both alike.
    for repeat in range(repeats):
        for impl in impls:
            suffix = f".{repeat + 1}" if repeats > 1 else ""
            data_path = output_dir / f"{file_stem(impl)}{suffix}.perf.data"
            recorder = PerfRecorder(data_path, cpus=client_cpus, frequency=frequency)
            row = bench.run_benchmark(impl, mode, checked["payload"], checked["connections"],
                                      duration=checked["duration"], warmup=checked["warmup"], warmup_max=warmup_max,
                                      server_cpu=server_cpu, client_cpus=client_cpus, server_options=server_options,
                                      observer=recorder, client=client, work=work)
            text, script_cmd = perf_script(data_path)
            if not keep_perf_data:
                data_path.unlink(missing_ok=True)
            stacks = folded.parse_perf_script(text)
            # A run that is not a valid measurement is kept in profile.json but adds no samples (and,
            # in _combine_runs, no CPU or messages): like every statistic, a profile uses valid runs only.
            if row["valid"]:
                stacks_by_impl[impl].update(stacks)
            meta["perf"]["record_command"] = [str(part) for part in recorder.command]
            meta["perf"]["script_command"] = script_cmd
            runs[impl].append({**{key: row.get(key) for key in ROW_KEY_FIGURES},
                               "msgs_in_window": row["msgs_per_s"] * row["duration_s"],
                               "samples": folded.total_samples(stacks),
                               "sampled_cpu_s": sampled_period_ns(text) / 1e9,
                               "perf_data": data_path.name if keep_perf_data else None,
                               "row": row})
    stacks_by_impl = {impl: dict(stacks) for impl, stacks in stacks_by_impl.items()}
    for impl in impls:
        folded.write_folded(stacks_by_impl[impl], output_dir / f"{file_stem(impl)}.folded")
        meta["impls"][impl] = {**_combine_runs(runs[impl]), "folded": f"{file_stem(impl)}.folded",
                               "svg": f"{file_stem(impl)}.svg",
                               "runs": runs[impl]}
    cpu_per_msg = {impl: meta["impls"][impl]["server_cpu_us_per_msg"] for impl in impls}
    table = top_functions(stacks_by_impl, cpu_per_msg)
    table.to_csv(output_dir / TOP_FUNCTIONS_CSV, index=False)
    categories = category_table(stacks_by_impl, cpu_per_msg)
    categories.to_csv(output_dir / CATEGORIES_CSV, index=False)
    if machine:
        meta["machine"] = machine_info()
    profile = Profile(output_dir, _json_safe(meta), stacks_by_impl, table, categories)
    for impl in impls:
        write_flamegraph(profile, impl)
    if charts:
        for role, path in save_charts(profile).items():
            profile.meta["files"][role] = path.name
    with open(output_dir / PROFILE_JSON, "w", encoding="utf-8") as f:
        json.dump(profile.meta, f, indent=1)
        f.write("\n")
    return profile


def flame_graph_svg(profile, impl):
    """The flame graph of one implementation of a profile as SVG text (a notebook can show it with
    IPython.display.SVG); tooltips carry CPU µs per message when the run measured the server CPU."""
    info = profile.meta["impls"][impl]
    cell = profile.meta["cell"]
    stacks = profile.stacks[impl]
    total = folded.total_samples(stacks)
    us_per_msg = info.get("server_cpu_us_per_msg")
    per_sample = _us_per_sample(us_per_msg if us_per_msg is not None else math.nan, total)
    title = f"{impl}: {cell['mode']}, {cell['payload']:,} B x {cell['connections']} connections"
    subtitle = (f"{total:,} samples of the server over the measured window"
                + (f", server {us_per_msg:.2f} µs CPU/msg" if us_per_msg is not None else "")
                + "; width = samples; warm colours = kernel, cool = user")
    return flamegraph.render_svg(stacks, title=title, subtitle=subtitle,
                                 us_per_sample=None if math.isnan(per_sample) else per_sample)


def write_flamegraph(profile, impl):
    """Write <impl>.svg of a profile (also for a profile loaded from disk); returns its path."""
    path = profile.output_dir / profile.meta["impls"][impl]["svg"]
    path.write_text(flame_graph_svg(profile, impl), encoding="utf-8")
    return path


def load_profile(output_dir):
    """Read a directory written by profile_cell() back into a Profile (nothing is re-run)."""
    output_dir = Path(output_dir)
    path = output_dir / PROFILE_JSON
    if not path.is_file():
        raise ValueError(f"no profile in {output_dir} (missing {PROFILE_JSON})")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    stacks = {impl: folded.read_folded(output_dir / info["folded"]) for impl, info in meta["impls"].items()}
    table = pd.read_csv(output_dir / meta["files"]["top_functions"])
    categories_path = output_dir / meta["files"].get("categories", CATEGORIES_CSV)
    categories = pd.read_csv(categories_path) if categories_path.is_file() else None
    return Profile(output_dir, meta, stacks, table, categories)


def difference_sentences(profile, n=3, column="self_us_per_msg"):
    """The n largest per-function differences between the first two implementations, in words, e.g.
    "io_uring spends 0.76 µs/msg more than epoll in _copy_to_iter (kernel): 1.40 against 0.64 (2.2x)"."""
    impls = profile.impls
    if len(impls) < 2 or profile.table is None or not len(profile.table):
        return []
    a, b = impls[:2]
    name_a, name_b = IMPL_LABELS.get(a, a), IMPL_LABELS.get(b, b)
    out = []
    for rec in differences(profile.table, impls, n=n, column=column).to_dict("records"):
        more, less = (name_a, name_b) if rec["difference"] >= 0 else (name_b, name_a)
        high, low = max(rec[a], rec[b]), min(rec[a], rec[b])
        times = f" ({high / low:.1f}x)" if low > 0 else f" (none in {less})"
        where = "kernel" if rec["kernel"] else "user"
        out.append(f"{more} spends {abs(rec['difference']):.2f} µs/msg more than {less} in {rec['function']} "
                   f"({where}): {high:.2f} against {low:.2f}{times}")
    return out


def summary_lines(profile, n=5):
    """A few lines for the CLI: samples and server CPU per impl, then the top differences."""
    lines = []
    for impl, info in profile.meta["impls"].items():
        cpu = info.get("server_cpu_us_per_msg")
        coverage = info.get("sampling_coverage")
        valid = "" if info.get("valid") else f"  INVALID: {info.get('invalid_reason')}"
        lines.append(f"  {impl:<6} {info['samples']:>7,} samples  server {cpu if cpu is not None else math.nan:8.3f} µs/msg"
                     f"  {info.get('msgs_per_s') or math.nan:>12,.0f} msg/s"
                     + (f"  ({info['repeats']} runs)" if info.get("repeats", 1) > 1 else "")
                     + (f"  (sampled {coverage:.0%} of the measured CPU)" if coverage else "") + valid)
    impls = profile.impls
    if len(impls) >= 2 and len(profile.table):
        a, b = impls[:2]
        lines.append(f"  top differences in self CPU, {a} - {b} (µs/msg):")
        for rec in differences(profile.table, impls, n=n).to_dict("records"):
            where = "kernel" if rec["kernel"] else "user"
            lines.append(f"    {rec['difference']:+9.3f}  {rec['function']} ({where}; {a} {rec[a]:.3f}, {b} {rec[b]:.3f})")
    elif len(profile.table):
        impl = impls[0]
        lines.append(f"  top functions of {impl} by self CPU (µs/msg):")
        for rec in profile.table[profile.table["impl"] == impl].head(n).to_dict("records"):
            lines.append(f"    {rec['self_us_per_msg']:9.3f}  {rec['function']}")
    return lines
