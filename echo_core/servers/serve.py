"""Echo servers: run one in this process (serve) or in a pinned child process (Server)."""

import errno
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from echo_core.native import check, ffi, lib, struct_to_dict
from echo_core.servers import specs
from echo_core.servers.options import CONFIG_FIELDS, DEFAULT_OPTIONS, SERVE_FUNCS, WORK_KINDS
from echo_core.servers.process import ServerProcess, exit_description, validate_address
from echo_core.host.cpus import default_cpus
from echo_core.host.proc import proc_stat
from echo_core.host.signals import StopOnSignal

#: How long to retry bind() on EADDRINUSE: a just-stopped io_uring server frees its port a few ms late.
BIND_RETRY_S = 1.0


def check_impl(impl):
    """Raise ValueError (one clear line) unless impl is a server spec (echo_core.servers.specs: "uring",
    "epoll", "uring+mshot", ...) or a well-formed "exec:CMD"; returns its canonical form."""
    return specs.canonical(impl)


def check_supported(impl):
    """Raise OSError(EOPNOTSUPP), one line, when this kernel or build cannot run the spec."""
    why = specs.unsupported_reason(impl)
    if why:
        raise OSError(errno.EOPNOTSUPP, f"{specs.canonical(impl)} unsupported: {why}")


def validate(impl, host, port, cpu, options):
    """Check arguments in Python so bad input never reaches C; returns the full option dict.

    impl is a spec (echo_core.servers.specs); its tunables and features become server options, and an
    explicit option that contradicts the spec is refused."""
    check_impl(impl)
    if specs.is_exec(impl):
        raise ValueError(f"{impl!r} is an external server: use make_server() or ExternalServer for it")
    options = specs.merge_options(impl, options)
    check_supported(impl)
    validate_address(host, port, cpu)
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown server option(s): {', '.join(sorted(unknown))}")
    merged = {**DEFAULT_OPTIONS, **options}
    for name, value in merged.items():
        if name == "sqpoll_cpu" and value == -1:
            continue
        if not isinstance(value, int) or value < 0 or value > 2**31:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    for name in ("buf_size", "buf_count", "ring_entries", "epoll_budget", "backlog"):
        if merged[name] == 0:
            raise ValueError(f"{name} must be positive")
    if merged["work"] not in WORK_KINDS.values():
        raise ValueError(f"work must be one of {WORK_KINDS} (by number), got {merged['work']}")
    if merged["work"] == WORK_KINDS["cpu"] and not merged["work_msg_bytes"]:
        raise ValueError("work 2 (cpu) needs work_msg_bytes, the bytes of one message")
    if merged["work_ns"] > lib.EC_MAX_WORK_NS:
        raise ValueError(f"work_ns must be at most {lib.EC_MAX_WORK_NS}, got {merged['work_ns']}")
    count = merged["buf_count"]
    if count & (count - 1) or count > 32768:
        raise ValueError(f"buf_count must be a power of two <= 32768, got {count}")
    return merged


def check_max_conns(impl, max_conns, nofile, threads=1):
    """max_conns (per server thread) must fit the (raised) soft fd limit and EC_MAX_CONNS, for both
    servers alike: the threads share one process's fds, so threads x max_conns must fit the limit.

    Raises the OSError (EMFILE) the C servers would return, with the limit spelled out.
    """
    limit = min(nofile // threads, lib.EC_MAX_CONNS)
    if max_conns > limit:
        share = f"the fd limit {nofile}" if threads == 1 else f"the fd limit {nofile} shared by {threads} threads"
        raise OSError(errno.EMFILE, f"{impl} server set-up failed: {os.strerror(errno.EMFILE)} "
                                    f"(max_conns {max_conns} is above the limit {limit}: {share}, "
                                    f"at most {lib.EC_MAX_CONNS})")


def per_thread_max_conns(max_conns, nofile, threads):
    """The max_conns each loop gets: as given, or with 0 ("the fd limit") and several threads an
    equal share of the fd limit, so that no loop's table promises fds another loop holds."""
    if max_conns or threads == 1:
        return max_conns
    return max(1, min(nofile // threads, lib.EC_MAX_CONNS))


def thread_cpus(threads=1, cpu=None, cpus=None):
    """The CPU each server thread is pinned to: a list of `threads` CPUs, or None (one thread, no
    cpu: not pinned, as before threads existed).  Raises ValueError (one line) for bad input.

    Without cpus, several threads go to the server's default CPU (``cpu``, else the one
    echo_core.host.cpus.default_cpus picks for the server: the last) and then the other available CPUs
    in ascending order, cycling when there are more threads than CPUs; so on a 2-CPU machine
    threads=2 runs on CPUs 1 and 0 and shares CPU 0 with the load generator.
    """
    limit = lib.EC_MAX_SERVER_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValueError(f"threads must be an integer in 1..{limit}, got {threads!r}")
    available = os.sched_getaffinity(0)
    if cpus is None:
        if threads == 1:
            return None if cpu is None else [cpu]
        first = default_cpus()[0] if cpu is None else cpu
        order = [first] + [c for c in sorted(available) if c != first]
        return [order[i % len(order)] for i in range(threads)]
    if isinstance(cpus, (str, bytes)) or not hasattr(cpus, "__len__"):
        raise ValueError(f"cpus must be a list of CPU numbers, got {cpus!r}")
    cpus = list(cpus)
    if len(cpus) != threads:
        raise ValueError(f"cpus must name one CPU per thread: threads={threads} but {len(cpus)} CPU(s) {cpus}")
    for c in cpus:
        if isinstance(c, bool) or not isinstance(c, int) or c not in available:
            raise ValueError(f"cpu {c!r} is not available (available: {sorted(available)})")
    if cpu is not None and cpu != cpus[0]:
        raise ValueError(f"cpu {cpu} contradicts cpus {cpus}: give cpus alone (cpu would be cpus[0])")
    return cpus


def _listen(host, port, backlog, reuseport=False):
    deadline = time.monotonic() + BIND_RETRY_S
    bound = ffi.new("int *")
    while True:
        fd = lib.ec_listen_reuseport(host.encode(), port, backlog, int(reuseport), bound)
        if fd != -98 or port == 0 or time.monotonic() > deadline:  # 98 = EADDRINUSE
            break
        time.sleep(0.005)
    if fd == -98:
        raise OSError(98, f"port {port} on {host} is already in use")
    check(fd, f"cannot listen on {host}:{port}")
    return fd, bound[0]


def _listen_all(host, port, backlog, threads):
    """One listening socket per thread, all on one port: SO_REUSEPORT when threads > 1 (the first may
    bind port 0; the rest join the port it got).  Returns (fds, port)."""
    if threads == 1:
        fd, port = _listen(host, port, backlog)
        return [fd], port
    if port:
        _check_port_free(host, port)
    fds = []
    try:
        for _ in range(threads):
            fd, port = _listen(host, port, backlog, reuseport=True)
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds, port


def _check_port_free(host, port):
    """SO_REUSEPORT would let our loops join any same-user listener already on the port and share its
    connections: make sure nobody listens there first (a plain bind, as ec_listen binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise OSError(exc.errno, f"port {port} on {host} is already in use") from None
        time.sleep(0.005)


def _format_addr(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _setup_hint(impl, err, opts):
    """A short why for the set-up failures one can actually do something about."""
    if err == errno.EOPNOTSUPP:
        return " (the kernel refused a feature of this spec; see python -m echo_core impls)"
    if err == errno.EINVAL and specs.parse(impl).features:
        return " (the server refused this combination of features)"
    impl = specs.parse(impl).base
    if impl == "uring" and err == errno.ENOMEM:
        total = opts["buf_count"] * opts["buf_size"]
        return f" (buf_count x buf_size = {total} bytes of receive buffers)"
    if impl == "uring" and err in (errno.EPERM, errno.ENOSYS):
        return " (io_uring is disabled or unsupported here; see /proc/sys/kernel/io_uring_disabled)"
    if err in (errno.EMFILE, errno.ENFILE):
        return " (out of file descriptors; check max_conns against the fd limit)"
    return ""


class _ReadyWaiter:
    """Calls on_listening(host, port) from a helper thread once every server loop (one per thread)
    has written to its ready pipe.

    The C calls block their threads (without the GIL), so the announcement has to come from
    elsewhere; if a loop's set-up fails, its pipe's write end is closed without a byte and nothing
    is announced.
    """

    def __init__(self, on_listening, host, port, stop_on_error, count=1):
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(count)]
        self.read_fds = [r for r, _ in pipes]
        self.write_fds = [w for _, w in pipes]
        self.slot_ready = [False] * count
        self.ready = False
        self.error = None
        self._args = (on_listening, host, port)
        self._stop_on_error = stop_on_error
        self._thread = threading.Thread(target=self._wait, name="echo_core-ready", daemon=True)
        self._thread.start()

    def _wait(self):
        on_listening, host, port = self._args
        try:
            # In slot order: a loop that failed ends the wait (and has stopped the others).
            for i, fd in enumerate(self.read_fds):
                if os.read(fd, 1) != b"R":
                    return
                self.slot_ready[i] = True
            self.ready = True
            if on_listening:
                on_listening(host, port)
        except BaseException as exc:  # re-raised by serve(); a server nobody can hear of should stop
            self.error = exc
            try:
                self._stop_on_error()
            except OSError:
                pass

    def close_write(self, i):
        """Loop i's C call returned: close its write end so the waiter cannot wait for it forever."""
        if self.write_fds[i] >= 0:
            os.close(self.write_fds[i])
            self.write_fds[i] = -1

    def finish(self):
        """After every C call returned: close the write ends, join the waiter, and learn which loops
        got ready that the waiter did not read (it stops at the first that failed)."""
        for i in range(len(self.write_fds)):
            self.close_write(i)
        self._thread.join()
        for i, fd in enumerate(self.read_fds):
            if not self.slot_ready[i]:
                self.slot_ready[i] = os.read(fd, 1) == b"R"
            os.close(fd)


def serve(impl, host="127.0.0.1", port=0, cpu=None, stats_path=None, on_listening=None, threads=1, cpus=None,
          **options):
    """Run an echo server in this process until SIGINT/SIGTERM; return its counters (the totals
    over its threads).

    threads=N runs N share-nothing event loops, each with its own SO_REUSEPORT listener on the
    one port, its own ring or epoll instance and its own counters, pinned to cpus[i] (see
    thread_cpus for the default); loop 0 runs on the main thread, the others on Python threads
    (cffi releases the GIL for the C call).  All loops watch one stop pipe; when any loop returns
    (stop, set-up failure or error) the others are stopped too.  With threads > 1 and max_conns 0,
    each loop gets an equal share of the fd limit.

    on_listening(host, port) is called (from a helper thread) once every C loop has finished its
    set-up and is about to run.  If a set-up fails, OSError is raised and on_listening is never
    called.

    stats_path names a file of threads x ffi.sizeof("struct ec_server_stats") bytes: slot i holds
    loop i's counters, mapped so that another process can read them while the server runs.
    """
    opts = validate(impl, host, port, cpu, options)
    cpus = thread_cpus(threads, cpu, cpus)
    impl = specs.canonical(impl)
    base = specs.parse(impl).base
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() must run on the main thread; use Server for anything else")
    if cpus is not None:
        # Only the calling thread is pinned (Linux); helper threads pin themselves below.
        os.sched_setaffinity(0, {cpus[0]})
    nofile = check(lib.ec_raise_nofile(), "cannot raise the fd limit")
    check_max_conns(impl, opts["max_conns"], nofile, threads)
    opts = {**opts, "max_conns": per_thread_max_conns(opts["max_conns"], nofile, threads)}
    cfgs = [ffi.new("struct ec_server_config *") for _ in range(threads)]
    for cfg in cfgs:
        for name in CONFIG_FIELDS:
            setattr(cfg, name, opts[name])
    slots = _stats_slots(stats_path, threads)
    listen_fds, port = _listen_all(host, port, opts["backlog"], threads)
    try:
        # SIGINT and SIGTERM make the stop pipe readable; the C loops watch it and return.
        with StopOnSignal((signal.SIGINT, signal.SIGTERM), raise_interrupt=False) as stop:
            if stop.fd < 0:
                raise RuntimeError("serve() must run on the main thread; use Server for anything else")

            # An on_listening that fails (say stdout is gone), or one loop of several that ends,
            # stops the server the way a signal would: CPython's signal handler writes to the same
            # pipe (the wakeup fd) that C watches.  Byte 0 is no signal, so a previous wakeup-fd
            # owner that gets it forwarded ignores it.
            def stop_all():
                os.write(stop._write, b"\0")

            waiter = _ReadyWaiter(on_listening, host, port, stop_all, threads)
            rets = [None] * threads
            serve_fn = getattr(lib, SERVE_FUNCS[base])

            def run(i):
                try:
                    if i and cpus is not None:
                        os.sched_setaffinity(0, {cpus[i]})
                    cfgs[i].ready_fd = waiter.write_fds[i]
                    rets[i] = serve_fn(listen_fds[i], stop.fd, cfgs[i], slots + i)
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread below
                    rets[i] = exc
                finally:
                    waiter.close_write(i)
                    if threads > 1:
                        stop_all()

            helpers = [threading.Thread(target=run, args=(i,), name=f"echo_core-loop-{i}", daemon=True)
                       for i in range(1, threads)]
            try:
                for helper in helpers:
                    helper.start()
                run(0)
            finally:
                if threads > 1:
                    stop_all()  # loop 0 may not have run (a helper failed to start): stop the rest
                for helper in helpers:
                    if helper.ident is not None:
                        helper.join()
                waiter.finish()
        _raise_for_loops(impl, rets, waiter.slot_ready, opts)
        if waiter.error is not None:
            raise waiter.error
        return _sum_stats(slots, threads)
    finally:
        for fd in listen_fds:
            os.close(fd)


def _stats_slots(stats_path, threads):
    """threads consecutive struct ec_server_stats: in stats_path's file (mapped) or private memory."""
    if not stats_path:
        return ffi.new("struct ec_server_stats[]", threads)
    size = threads * ffi.sizeof("struct ec_server_stats")
    with open(stats_path, "r+b") as f:
        if os.fstat(f.fileno()).st_size < size:
            raise ValueError(f"stats file {stats_path!r} is smaller than {threads} x struct ec_server_stats")
        shared = mmap.mmap(f.fileno(), size)
    return ffi.from_buffer("struct ec_server_stats[]", shared)


def _raise_for_loops(impl, rets, ready, opts):
    """The first loop failure as OSError (a set-up failure says so), or nothing."""
    for i, ret in enumerate(rets):
        where = f" (thread {i} of {len(rets)})" if len(rets) > 1 else ""
        if isinstance(ret, BaseException):
            raise ret
        if ret < 0 and not ready[i]:
            raise OSError(-ret, f"{impl} server set-up failed{where}: {os.strerror(-ret)}"
                                f"{_setup_hint(impl, -ret, opts)}")
        check(ret, f"{impl} server failed{where}")


def _sum_stats(slots, count):
    """The totals over count stats slots (echo_core.h: ec_server_stats_sum) as a dict."""
    total = ffi.new("struct ec_server_stats *")
    lib.ec_server_stats_sum(slots, count, total)
    return struct_to_dict(total)


def _thread_stats(slots, count):
    return [struct_to_dict(slots + i) for i in range(count)]


class Server(ServerProcess):
    """An echo server in its own (optionally CPU-pinned) process.

    >>> with Server("uring", port=0, cpu=1) as srv:
    ...     srv.port, srv.stats()

    start() returns once the server accepts connections; stop() (or leaving the with-block)
    sends SIGTERM, waits for a clean exit and returns the final counters.

    threads=N runs N share-nothing event loops pinned to cpus (see serve() and thread_cpus);
    stats() gives the totals, thread_stats() each loop's counters, both readable while it runs.
    """

    def __init__(self, impl, host="127.0.0.1", port=0, cpu=None, startup_timeout=15.0, threads=1, cpus=None,
                 netns=None, **options):
        self.options = validate(impl, host, port, cpu, options)
        self.cpus = thread_cpus(threads, cpu, cpus)
        self.threads = threads
        self.netns = netns  # a namespace echo_core made (echo_core.lab.netns) to run the server in
        cpu = self.cpus[0] if self.cpus else None
        impl = check_impl(impl)  # the canonical spec
        self.impl, self.host, self.port, self.cpu = impl, host, port, cpu
        self.startup_timeout = startup_timeout
        self.proc = None
        self.final_stats = None
        self.final_thread_stats = None
        self._stats_file = None
        self._shared = None

    def pids(self):
        """The server's process (one process; its CPU time is the sum over its threads)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    @property
    def stats_path(self):
        """Path of the file the server's counters (struct ec_server_stats) live in; None when not running."""
        if self.proc is None or self._stats_file is None:
            return None
        return self._stats_file.name

    def start(self):
        size = self.threads * ffi.sizeof("struct ec_server_stats")
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._stats_file = tempfile.NamedTemporaryFile(prefix="echo_core-stats-", dir=shm_dir)
        self._stats_file.truncate(size)
        self._stats_file.flush()
        self._shared = mmap.mmap(self._stats_file.fileno(), size, prot=mmap.PROT_READ)
        cmd = [sys.executable, "-m", "echo_core", "serve", "--impl", self.impl, "--host", self.host,
               "--port", str(self.port), "--stats-file", self._stats_file.name]
        if self.threads > 1:
            cmd += ["--threads", str(self.threads), "--cpus", ",".join(map(str, self.cpus))]
        elif self.cpu is not None:
            cmd += ["--cpu", str(self.cpu)]
        for name, value in self.options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        if self.netns:
            # `ip netns exec` enters the namespace and execs the command: the pid stays the server's.
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        # "listening on" comes only after the C side finished its set-up; a failure there is a
        # one-line "error: ..." on stderr and a non-zero exit, which we pass on.
        line = self._read_line(self.startup_timeout)
        if not line.startswith("listening on "):
            err = self._fail()
            if err.startswith("error: "):
                err = err[len("error: "):]
            why = err or line.strip() or f"no 'listening on' within {self.startup_timeout} s"
            raise RuntimeError(f"{self.impl} server did not start: {why}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _read_line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def _fail(self):
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        self._cleanup()
        return err.strip().splitlines()[-1] if err.strip() else ""

    def _slots(self):
        return ffi.from_buffer("struct ec_server_stats[]", self._shared)

    def stats(self):
        """Current counters, totals over the threads (a consistent-enough snapshot of plain 64-bit
        counters; see ec_server_stats_sum for how each one combines)."""
        if self.final_stats is not None:
            return dict(self.final_stats)
        return _sum_stats(self._slots(), self.threads)

    def thread_stats(self):
        """Current counters of each thread's loop: a list of threads dicts."""
        if self.final_thread_stats is not None:
            return [dict(d) for d in self.final_thread_stats]
        return _thread_stats(self._slots(), self.threads)

    def cpu_times(self):
        """(user, system) CPU seconds the server process has used so far, from /proc."""
        stat = proc_stat(self.proc.pid)
        if stat is None:
            raise ProcessLookupError(f"server process {self.proc.pid} is gone")
        return stat.user_s, stat.system_s

    def stop(self, timeout=15.0):
        if self.proc is None:
            return self.final_stats
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            self._cleanup()
            raise RuntimeError(f"{self.impl} server did not stop within {timeout} s; killed") from None
        code = self.proc.returncode
        self.final_stats = _sum_stats(self._slots(), self.threads)
        self.final_thread_stats = _thread_stats(self._slots(), self.threads)
        self._cleanup()
        if code != 0:
            # A server that died during the run (e.g. SIGKILL) said nothing on stderr: say how it ended.
            raise RuntimeError(f"{self.impl} server {exit_description(code)}" + (f": {err.strip()}" if err.strip() else ""))
        return dict(self.final_stats)

    def _cleanup(self):
        self.proc = self.proc if self.proc and self.proc.poll() is None else None
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        if self._stats_file is not None:
            self._stats_file.close()
            self._stats_file = None


def print_listening(host, port):
    print(f"listening on {_format_addr(host, port)}", flush=True)


def stats_json(stats):
    return json.dumps(stats, sort_keys=False)
