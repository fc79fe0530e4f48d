"""External echo servers: any program that takes a port, benchmarked like echo_core's own servers.

A spec ``exec:CMD`` names the command line; ``{port}`` in CMD (required) and ``{host}`` (optional)
are replaced by the address the server must listen on, e.g.::

    exec:/usr/local/bin/my_echo --port {port}

ExternalServer offers Server's interface (start/stop, context manager, host, port, pid, cpu,
final_stats, stats()) but has no counters: stats(), stats_path and final_stats are None.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time

from echo_core.host.proc import proc_stat
from echo_core.servers.process import ServerProcess, validate_address
from echo_core.servers.specs import parse_exec


def free_port(host):
    """A port that was free a moment ago (bind to 0, read it, close).

    Another process could take it before the server binds it; on loopback, in tests and
    benchmarks, that race is acceptable (and start() would then see the server exit or time out).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def descendants(pid):
    """Every live descendant of pid, children first (empty if pid is gone)."""
    found, todo = [], [pid]
    by_parent = None
    while todo:
        parent = todo.pop(0)
        try:
            kids = _children(parent)
        except FileNotFoundError:
            if not os.path.isdir(f"/proc/{parent}"):
                continue  # it exited meanwhile
            # No /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN off): use the ppid field.
            if by_parent is None:
                by_parent = _ppid_map()
            kids = by_parent.get(parent, [])
        for kid in kids:
            if kid not in found:
                found.append(kid)
                todo.append(kid)
    return found


def _children(pid):
    kids = []
    tasks = os.listdir(f"/proc/{pid}/task")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            if os.path.isdir(f"/proc/{pid}/task/{tid}"):
                raise
    return kids


def _ppid_map():
    by_parent = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = proc_stat(name)
        if stat is not None:
            by_parent.setdefault(stat.ppid, []).append(int(name))
    return by_parent


def listener_inodes(port):
    """Socket inodes of TCP listeners (IPv4 and IPv6) on port, from /proc/net; None if unreadable."""
    inodes, readable = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            # local_address is HEXADDR:HEXPORT, st 0A is LISTEN, inode is the 10th field.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if readable else None


def socket_inodes(pids):
    """Inodes of the sockets the given processes hold open."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    return inodes


def _last_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class ExternalServer(ServerProcess):
    """An external echo server (exec:CMD) in its own session and process group, optionally pinned.

    >>> with ExternalServer("exec:/usr/local/bin/my_echo --port {port}", cpu=1) as srv:
    ...     srv.port, srv.pids()

    start() picks a free port (unless one is given), starts CMD without a shell, pinned to cpu
    (the affinity is inherited by everything it starts), and returns once a TCP connect to
    host:port succeeds.  stop() sends SIGTERM to the whole process group, then SIGKILL after
    the timeout.
    """

    def __init__(self, impl, host="127.0.0.1", port=0, cpu=None, startup_timeout=15.0, netns=None, **options):
        self.argv = parse_exec(impl)
        self.netns = netns  # a namespace echo_core made (echo_core.lab.netns) to run the server in
        if options:
            raise ValueError(f"server options ({', '.join(sorted(options))}) do not apply to an external "
                             f"server ({impl!r}); pass them in its command line")
        validate_address(host, port, cpu)
        self.impl, self.host, self.port, self.cpu = impl, host, port, cpu
        self.startup_timeout = startup_timeout
        self.options = {}
        self.proc = None
        self.final_stats = None
        self.returncode = None
        self._stderr = None

    @property
    def stats_path(self):
        """External servers keep no echo_core counters."""
        return None

    def stats(self):
        """External servers keep no echo_core counters."""
        return None

    def command(self, port=None):
        """The argv that start() runs, placeholders filled in."""
        port = self.port if port is None else port
        return [arg.replace("{port}", str(port)).replace("{host}", self.host) for arg in self.argv]

    def start(self):
        # A fresh namespace has every port free; one free on this namespace's loopback will do.
        port = self.port or free_port("127.0.0.1" if self.netns else self.host)
        argv = self.command(port)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self._stderr = tempfile.NamedTemporaryFile(prefix="echo_core-external-", suffix=".stderr")
        try:
            self.proc = self._spawn(argv)
        except OSError as exc:
            self._close_stderr()
            raise RuntimeError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        self.port = port
        try:
            self._wait_until_accepting()
        except BaseException:
            self._kill_group()
            self._close_stderr()
            self.proc = None
            raise
        return self

    def _spawn(self, argv):
        # Affinity is per thread and a new process inherits its creating thread's: pin this thread
        # around the spawn (no preexec_fn, which is unsafe with threads), then restore it.
        saved = os.sched_getaffinity(0)
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})
        try:
            # A new session (hence process group) lets stop() signal the server and its children.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=self._stderr, start_new_session=True)
        finally:
            if self.cpu is not None:
                os.sched_setaffinity(0, saved)

    def _wait_until_accepting(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.returncode = code
                why = _last_line(self._stderr.name) or "no output on stderr"
                raise RuntimeError(f"external server {self.impl!r} exited with status {code} before "
                                   f"accepting connections: {why}")
            if self._accepting():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"external server {self.impl!r} did not accept connections on "
                                   f"{self.host}:{self.port} within {self.startup_timeout} s")
            time.sleep(0.02)

    def _accepting(self):
        """Does a connect succeed, and is the listener ours?

        A connect alone could reach another program that already holds the port (the server then
        fails to bind and exits, which the caller reports).  Where /proc/net cannot be read, a
        connect has to do.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        listeners = listener_inodes(self.port)
        if listeners is None:
            return True
        return bool(listeners & socket_inodes([self.proc.pid] + descendants(self.proc.pid)))

    def pids(self):
        """The server process and its current descendants (empty when not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + descendants(self.proc.pid)

    def cpu_times(self):
        """(user, system) CPU seconds used so far by the server and its live descendants."""
        stats = [s for s in map(proc_stat, self.pids()) if s is not None]
        return sum(s.user_s for s in stats), sum(s.system_s for s in stats)

    def stop(self, timeout=15.0):
        """SIGTERM to the process group, SIGKILL after timeout s.  Returns final_stats (None).

        Any exit status after our SIGTERM is fine (most servers just die of it); RuntimeError if
        the server had already exited on its own with a failure, or had to be killed.
        """
        if self.proc is None:
            return self.final_stats
        exited_before = self.proc.poll()
        killed = False
        if exited_before is None:
            killed = not self._terminate_group(timeout)
        else:
            # The leader is gone, but children it left in its group may still hold the port.
            _signal_group(self.proc.pid, signal.SIGKILL)
        self.returncode = self.proc.returncode
        why = _last_line(self._stderr.name) if self._stderr else ""
        self._close_stderr()
        self.proc = None
        if killed:
            raise RuntimeError(f"external server {self.impl!r} did not stop within {timeout} s of "
                               "SIGTERM; killed")
        if exited_before not in (None, 0):
            raise RuntimeError(f"external server {self.impl!r} exited on its own with status "
                               f"{exited_before}: {why or 'no output on stderr'}")
        return self.final_stats

    def _terminate_group(self, timeout):
        """SIGTERM the group and wait for all of it; SIGKILL what is left at the deadline.

        Returns False if anything had to be killed.
        """
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        known = descendants(pgid)
        deadline = time.monotonic() + timeout
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            return False
        # Children the leader leaves behind get reparented; wait for those we know of (an exited
        # one may linger as a zombie until its new parent reaps it, which does not count).
        while any(_running_in_group(pid, pgid) for pid in known):
            if time.monotonic() > deadline:
                _signal_group(pgid, signal.SIGKILL)
                return False
            time.sleep(0.01)
        # Anything started during shutdown that we never saw must not outlive stop().
        _signal_group(pgid, signal.SIGKILL)
        return True

    def _kill_group(self):
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def _close_stderr(self):
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None



def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _running_in_group(pid, pgid):
    """Is pid alive (not a zombie) and still in process group pgid?"""
    stat = proc_stat(pid)
    return stat is not None and stat.state != "Z" and stat.pgrp == pgid
