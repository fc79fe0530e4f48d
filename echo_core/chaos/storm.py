"""Seeded chaos client: many connections at once, each following a random script, every echoed
byte verified.

    python -m echo_core chaos --impl uring|epoll|exec:CMD --seconds N --seed S [--connections C]
    python -m echo_core chaos --port P [--pid PID] --seconds N --seed S     (an existing server)
    python -m echo_core chaos --impl uring --seed S --script I [--script J]  (replay scripts alone)

Prints one line, "chaos ok: ..." (exit 0) or "chaos FAILED: ..." (exit 1, with the first violation
and the command that replays its script alone); bad input is one "error: ..." line on stderr, exit 2.
API: run_chaos(...) -> result dict, verdict(result) -> that line, plan(seed, n) -> the scripts.

A correctness tool, not a benchmark: pure Python (selectors, non-blocking sockets), one thread.

Scripts.  Script i of seed S is drawn from random.Random(sub_seed(S, i)), so a seed reproduces
every script and a violation names the script index and sub-seed it came from (plan(S, n) lists
the scripts without running anything).  Kinds:

  echo       bursts of pipelined writes (1 B .. 64 KiB each), reads of a random size (1 B .. 64 KiB),
             pauses in writing and in reading (slow reader); drains, then closes
  halfclose  like echo, then shutdown(SHUT_WR) at a random point (echoes still in flight) and reads
             to EOF: every byte must come back, then EOF
  reset      like echo, then SO_LINGER 0 + close (an RST) at a random point, mid-stream
  idle       connects, stays silent for a while (nothing may arrive), then one small echo
  flood      a row of connections each closed right away (before or after the connect completes,
             plainly or with an RST)
  nonreader  writes a bounded number of bytes and never reads, then closes (with unread data: RST)
  blast      streams 1-8 MiB in 64 KiB reads and writes for a moment, then resets with echoes still
             queued in the server (issue 15: what bundles got wrong; the damage showed in other
             connections' echoes, which every other script verifies)

Verification.  Connection c sends the stream PATTERN[(phase_c + k) % P] for k = 0, 1, ... where
PATTERN is a seeded random block of P = 1048573 (prime) bytes and phase_c comes from the script's
sub-seed; each received chunk is compared with the pattern at the connection's echo offset, so a
lost, duplicated, reordered, corrupted or foreign byte is caught at its offset (and the report says
which it looks like: corrupted in place, a skip = lost bytes, a step back = repeated); more bytes
back than sent, EOF or a reset the client did not cause, and a stall (a script still unfinished
drain_timeout after the run) are violations too.

Server checks (when the server's pid is known): it is still alive at the end; its RSS (VmRSS,
sampled every 0.25 s) stays below rss_start + the margin below; once every client socket is closed
its fd count (/proc/PID/fd) returns to the count before the run and conns_active (echo_core servers)
returns to 0, polled for up to SETTLE_S.

RSS margin (generous on purpose: it catches leaks that grow with the work done, not tight use):
64 MiB + the receive buffers the server may legitimately touch: io_uring buf_count x buf_size,
epoll 2 x buf_size per concurrent connection; an external server gets 256 MiB.  With io_uring's
default 4096 x 64 KiB ring that is loose (its RSS does climb to start + 256 MiB as the kernel fills
buffers); --option buf_count=256 gives a tight bound.
"""

import errno
import hashlib
import heapq
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time

from echo_core.native import lib
from echo_core.host.proc import pid_alive
from echo_core.host.cpus import split_cpus
from echo_core.host.numbers import option_number
from echo_core.load.generator import check_host
from echo_core.servers import specs
from echo_core.servers.factory import make_server
from echo_core.servers.options import DEFAULT_OPTIONS
from echo_core.servers.serve import check_impl, validate

#: Pattern period: a prime, so no power-of-two sized slip lines the stream up with itself.
PERIOD = 1048573
MAX_CHUNK = 1 << 16
KINDS = ("echo", "halfclose", "reset", "idle", "flood", "nonreader", "blast")
WEIGHTS = (32, 22, 18, 10, 12, 6, 8)
RSS_SAMPLE_S = 0.25
SETTLE_S = 5.0
MAX_VIOLATIONS = 50
RECV_SIZES = (1, 7, 100, 1000, 4096, 16384, 65536)


def sub_seed(seed, index):
    """The seed of script `index` of run `seed` (random access, stable across Python versions)."""
    digest = hashlib.sha256(f"echo_core.chaos:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _size(rng, lo, hi):
    """Log-uniform integer in [lo, hi]."""
    return max(lo, min(hi, int(round(2 ** rng.uniform(lo.bit_length() - 1, hi.bit_length())))))


def _echo_body(rng, budget):
    """Bursts of pipelined sends with pauses and read stalls, about `budget` bytes in all."""
    actions, total = [], 0
    for _ in range(rng.randint(1, 6)):
        for _ in range(rng.randint(1, 6)):           # a burst: several writes, nothing read first
            n = _size(rng, 1, MAX_CHUNK)
            n = min(n, max(1, budget - total))
            actions.append(("send", n))
            total += n
        r = rng.random()
        if r < 0.2:
            actions.append(("pause", round(rng.uniform(0.0, 0.1), 3)))
        elif r < 0.35:
            actions.append(("noread", round(rng.uniform(0.0, 0.2), 3)))
        elif r < 0.45:
            actions.append(("recvsize", rng.choice(RECV_SIZES)))
        elif r < 0.65:
            actions.append(("drain",))
        if total >= budget:
            break
    return actions, total


def make_script(seed, index):
    """Script `index` of run `seed`: a dict with kind, sub_seed, phase and actions (a list of tuples)."""
    sub = sub_seed(seed, index)
    rng = random.Random(sub)
    kind = rng.choices(KINDS, WEIGHTS)[0]
    recv_size = rng.choice(RECV_SIZES)
    # Small reads cost one event each in Python: keep those scripts' byte counts small.
    budget = min(1 << 20, recv_size * 300, _size(rng, 16, 1 << 20))
    actions = [("recvsize", recv_size)]
    if rng.random() < 0.3:
        actions.append(("nodelay", 0))
    if kind in ("echo", "halfclose", "reset"):
        body, _ = _echo_body(rng, budget)
        if kind == "echo":
            actions += body + [("drain",), ("close",)]
        elif kind == "halfclose":
            cut = rng.randint(1, len(body))
            actions += body[:cut] + [("shutdown",)]
        else:
            cut = rng.randint(1, len(body))
            actions += body[:cut] + [("rst",)]
    elif kind == "idle":
        actions += [("pause", round(rng.uniform(0.2, 2.0), 3)), ("send", rng.randint(1, 200)),
                    ("drain",), ("close",)]
    elif kind == "flood":
        actions = [("reopen", rng.choice(("close", "rst", "now"))) for _ in range(rng.randint(2, 12))]
        actions.append(("rst",) if rng.random() < 0.5 else ("close",))
    elif kind == "blast":
        actions = [("recvsize", MAX_CHUNK), ("send", _size(rng, 1 << 20, 8 << 20)),
                   ("pause", round(rng.uniform(0.02, 0.3), 3)), ("rst",)]
    else:  # nonreader
        actions = [("noread", 1e9), ("send", _size(rng, 64 << 10, 4 << 20)),
                   ("blocked", round(rng.uniform(0.1, 0.5), 3)), ("close",)]
    return {"index": index, "sub_seed": sub, "kind": kind, "phase": sub % PERIOD, "actions": actions}


def plan(seed, count):
    """The first `count` scripts of run `seed`, without running anything."""
    return [make_script(seed, i) for i in range(count)]


def pattern_block(seed):
    """The seeded byte block all streams are cut from (PERIOD bytes + MAX_CHUNK wrap-around)."""
    # The seed strings predate the move into echo_core.chaos: seeded runs reproduce across versions.
    block = random.Random(f"echo_core.chaos.pattern:{seed}").randbytes(PERIOD)
    return block + block[:MAX_CHUNK]


# ----------------------------------------------------------------- /proc helpers


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# ----------------------------------------------------------------- the client


class _Conn:
    __slots__ = ("script", "actions", "pos", "sock", "state", "queued", "sent", "echoed", "recv_size",
                 "read_until", "wake_at", "blocked_since", "shut", "mask", "done", "phase", "nodelay")

    def __init__(self, script):
        self.script = script
        self.actions = script["actions"]
        self.phase = script["phase"]
        self.pos = 0
        self.sock = None
        self.state = "connecting"
        self.queued = self.sent = self.echoed = 0
        self.recv_size = MAX_CHUNK
        self.read_until = 0.0          # reading paused until then
        self.wake_at = None            # a pause or a blocked-writer timer
        self.blocked_since = None
        self.shut = False
        self.mask = 0
        self.done = False
        self.nodelay = True


class ChaosClient:
    def __init__(self, host, port, seed, connections, seconds, drain_timeout, pid=None, stats=None,
                 rss_bound_kib=None, only=None):
        self.host, self.port, self.seed = host, port, seed
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.connections, self.seconds, self.drain_timeout = connections, seconds, drain_timeout
        self.pid, self.stats_fn = pid, stats
        self.block = pattern_block(seed)
        self.sel = selectors.DefaultSelector()
        self.live = set()
        self.timers = []
        self._seq = 0
        self.next_index = 0
        self.violations = []
        self.violation_count = 0
        self.rss_bound_kib = rss_bound_kib
        self.counts = dict(scripts=0, connections=0, bytes_sent=0, bytes_echoed=0, resets=0,
                           half_closes=0, flood_connections=0, idles=0, nonreaders=0,
                           nonreader_bytes=0, closes=0, by_kind={k: 0 for k in KINDS})
        self.rss_samples = []
        self.server_gone = False
        self.only = only

    # -- bookkeeping

    def violate(self, conn, what):
        self.violation_count += 1
        if conn is None:  # server-wide findings are few: always kept
            self.violations.append(what)
        elif len(self.violations) < MAX_VIOLATIONS:
            s = conn.script
            self.violations.append(f"script {s['index']} (sub-seed {s['sub_seed']:#x}, {s['kind']}): {what}")

    # -- sockets

    def _open(self, conn):
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if conn.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.state = "connecting"
        self.counts["connections"] += 1
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self.violate(conn, f"connect failed: {os.strerror(err)}")
            self._finish(conn, "close")
            return False
        self._interest(conn)
        return True

    def _close(self, conn, how):
        sock = conn.sock
        if sock is None:
            return
        if conn.mask:
            self.sel.unregister(sock)
            conn.mask = 0
        if how == "rst":
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()
        conn.sock = None

    def _finish(self, conn, how):
        self._close(conn, how)
        conn.done = True
        self.live.discard(conn)

    def _interest(self, conn):
        if conn.done or conn.sock is None:
            return
        now = time.monotonic()
        if conn.state == "connecting":
            mask = selectors.EVENT_WRITE
        else:
            mask = 0
            if now >= conn.read_until:
                mask |= selectors.EVENT_READ
            if conn.sent < conn.queued and not conn.shut and not self._paused(conn, now):
                mask |= selectors.EVENT_WRITE
        if mask != conn.mask:
            if conn.mask and mask:
                self.sel.modify(conn.sock, mask, conn)
            elif mask:
                self.sel.register(conn.sock, mask, conn)
            else:
                self.sel.unregister(conn.sock)
            conn.mask = mask

    def _paused(self, conn, now):
        return (conn.pos < len(conn.actions) and conn.actions[conn.pos][0] == "pause"
                and conn.wake_at is not None and now < conn.wake_at)

    # -- the script interpreter

    def _advance(self, conn):
        """Run actions until one has to wait."""
        now = time.monotonic()
        while not conn.done and conn.state == "open" and conn.pos < len(conn.actions):
            act = conn.actions[conn.pos]
            op = act[0]
            if op == "send":
                conn.queued += act[1]
            elif op == "recvsize":
                conn.recv_size = act[1]
            elif op == "nodelay":
                pass  # applied at connect time
            elif op == "noread":
                conn.read_until = now + act[1]
                if act[1] < 1e6:
                    self._at(conn.read_until, conn)
            elif op == "pause":
                if conn.wake_at is None:
                    conn.wake_at = now + act[1]
                    self._at(conn.wake_at, conn)
                if now < conn.wake_at:
                    break
                conn.wake_at = None
            elif op == "drain":
                if conn.echoed < conn.queued:
                    break
            elif op == "blocked":
                if conn.sent < conn.queued:
                    if conn.wake_at is None:
                        conn.wake_at = now + 5.0  # whatever happens, give up writing after 5 s
                        self._at(conn.wake_at, conn)
                    if conn.blocked_since is not None:
                        self._at(conn.blocked_since + act[1], conn)
                    stuck = conn.blocked_since is not None and now - conn.blocked_since >= act[1]
                    if not stuck and now < conn.wake_at:
                        break
                conn.wake_at = None
                self.counts["nonreader_bytes"] += conn.sent
                conn.queued = conn.sent
            elif op == "close":
                if conn.script["kind"] != "nonreader" and conn.echoed != conn.sent:
                    self.violate(conn, f"closing with {conn.sent - conn.echoed} bytes unechoed")
                self.counts["closes"] += 1
                self._finish(conn, "close")
                return
            elif op == "rst":
                self.counts["resets"] += 1
                self._finish(conn, "rst")
                return
            elif op == "shutdown":
                if conn.sent < conn.queued:
                    break
                if not conn.shut:
                    try:
                        conn.sock.shutdown(socket.SHUT_WR)
                    except OSError as exc:
                        self.violate(conn, f"shutdown failed: {exc.strerror or exc}")
                        self._finish(conn, "rst")
                        return
                    conn.shut = True
                    self.counts["half_closes"] += 1
                break  # now read to EOF (handled in _read)
            elif op == "reopen":
                self.counts["flood_connections"] += 1
                if act[1] == "rst":
                    self.counts["resets"] += 1
                self._close(conn, "rst" if act[1] == "rst" else "close")
                conn.pos += 1
                if not self._open(conn):
                    return
                if act[1] == "now":  # the next action closes it before the connect completes
                    conn.state = "open"
                    continue
                break
            conn.pos += 1
        self._interest(conn)

    def _on_event(self, conn, events):
        if conn.state == "connecting":
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.violate(conn, f"connect failed: {os.strerror(err)}")
                self._finish(conn, "close")
                return
            conn.state = "open"
            self._advance(conn)
            return
        if events & selectors.EVENT_READ:
            self._read(conn)
        if not conn.done and events & selectors.EVENT_WRITE:
            self._write(conn)
        if not conn.done:
            self._advance(conn)

    def _write(self, conn):
        while conn.sent < conn.queued:
            off = (conn.phase + conn.sent) % PERIOD
            n = min(conn.queued - conn.sent, MAX_CHUNK)
            try:
                k = conn.sock.send(memoryview(self.block)[off:off + n])
            except (BlockingIOError, InterruptedError):
                if conn.blocked_since is None:
                    conn.blocked_since = time.monotonic()
                return
            except OSError as exc:
                self.violate(conn, f"send failed after {conn.sent} bytes: {exc.strerror or exc}")
                self._finish(conn, "rst")
                return
            conn.blocked_since = None
            conn.sent += k
            self.counts["bytes_sent"] += k
            if k < n:
                if conn.blocked_since is None:
                    conn.blocked_since = time.monotonic()
                return

    def _read(self, conn):
        try:
            data = conn.sock.recv(conn.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.violate(conn, f"recv failed after {conn.echoed} of {conn.sent} bytes: {exc.strerror or exc}")
            self._finish(conn, "rst")
            return
        if not data:
            if conn.shut and conn.echoed == conn.sent:
                self.counts["closes"] += 1
                self._finish(conn, "close")
            elif conn.shut:
                self.violate(conn, f"EOF after a half-close with {conn.echoed} of {conn.sent} bytes echoed")
                self._finish(conn, "close")
            else:
                self.violate(conn, f"server closed the connection after {conn.echoed} of {conn.sent} bytes "
                                   "echoed (no EOF or reset from the client)")
                self._finish(conn, "close")
            return
        n = len(data)
        if conn.echoed + n > conn.sent:
            self.violate(conn, f"{conn.echoed + n - conn.sent} more bytes echoed than sent "
                               f"(echo offset {conn.echoed}, sent {conn.sent})")
            self._finish(conn, "rst")
            return
        off = (conn.phase + conn.echoed) % PERIOD
        if data != self.block[off:off + n]:
            want = self.block[off:off + n]
            i = next(j for j in range(n) if data[j] != want[j])
            self.violate(conn, f"byte at stream offset {conn.echoed + i} is {data[i]:#04x}, expected "
                               f"{want[i]:#04x}{self._diagnose(data, want, i, off)} ({conn.sent} sent)")
            self._finish(conn, "rst")
            return
        conn.echoed += n
        self.counts["bytes_echoed"] += n

    def _diagnose(self, data, want, i, off):
        """What a mismatch at data[i] looks like: corrupted bytes, a skip (lost) or a step back (repeated)."""
        tail = len(data) - i
        if tail > 1:
            wrong = sum(1 for a, b in zip(data[i:], want[i:]) if a != b)
            if wrong * 4 < tail:
                return f": {wrong} of the {tail} bytes from there differ (corrupted in place)"
        probe = bytes(data[i:i + 32])
        if len(probe) < 8:
            return ""
        at = off + i
        found = self.block.find(probe, max(0, at - 2 * MAX_CHUNK), at + 2 * MAX_CHUNK + len(probe))
        if found < 0:
            return ": the bytes match no nearby stream offset (foreign or garbled data)"
        if found > at:
            return f": the stream skips {found - at} bytes there (bytes lost)"
        return f": the stream steps back {at - found} bytes there (bytes repeated or reordered)"

    # -- the run

    def _start_script(self, index=None):
        if index is None:
            index = self.next_index
            self.next_index += 1
        script = make_script(self.seed, index)
        self.counts["scripts"] += 1
        self.counts["by_kind"][script["kind"]] += 1
        if script["kind"] == "idle":
            self.counts["idles"] += 1
        elif script["kind"] == "nonreader":
            self.counts["nonreaders"] += 1
        conn = _Conn(script)
        conn.nodelay = ("nodelay", 0) not in script["actions"]
        self.live.add(conn)
        self._open(conn)

    def _at(self, when, conn):
        """Run conn's script again at `when` (spurious wake-ups are harmless)."""
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, conn))

    def _timers(self, now):
        """Fire due timers; return when the next one is due (or None)."""
        while self.timers and self.timers[0][0] <= now:
            _, _, conn = heapq.heappop(self.timers)
            if not conn.done and conn.state == "open":
                self._advance(conn)
        return self.timers[0][0] if self.timers else None

    def _sample_rss(self):
        if self.pid is not None:
            if not pid_alive(self.pid):
                self.server_gone = True
                return
            rss = rss_kib(self.pid)
            if rss is not None:
                self.rss_samples.append(rss)
                if self.rss_bound_kib is not None and rss > self.rss_bound_kib and not getattr(self, "_rss_told", 0):
                    self._rss_told = 1
                    self.violate(None, f"server RSS {rss >> 10} MiB above the bound {self.rss_bound_kib >> 10} MiB")

    def run(self):
        t0 = time.monotonic()
        stop_new = t0 + self.seconds
        hard_stop = stop_new + self.drain_timeout
        next_rss = t0
        self._sample_rss()
        if self.only is not None:  # a replay: just these scripts, all at once
            for index in self.only:
                self._start_script(index)
            stop_new = t0
            hard_stop = t0 + self.seconds + self.drain_timeout
        while True:
            now = time.monotonic()
            if now < stop_new:
                while len(self.live) < self.connections:
                    self._start_script()
            elif not self.live or now >= hard_stop:
                break
            if self.server_gone:
                break
            if now >= next_rss:
                self._sample_rss()
                next_rss = now + RSS_SAMPLE_S
            soonest = self._timers(now)
            timeout = min(0.05, max(0.0, (soonest - now) if soonest else 0.05), max(0.0, next_rss - now))
            if self.sel.get_map():
                events = self.sel.select(timeout)
            else:
                time.sleep(timeout)
                events = []
            for key, ev in events:
                conn = key.data
                if not conn.done and conn.sock is not None:
                    self._on_event(conn, ev)
        for conn in list(self.live):
            s = conn.script
            act = s["actions"][conn.pos] if conn.pos < len(s["actions"]) else ("end",)
            self.violate(conn, f"stalled {self.drain_timeout:g} s after the run: at action {conn.pos} {act}, "
                               f"{conn.sent} of {conn.queued} bytes sent, {conn.echoed} echoed"
                               f"{', half-closed' if conn.shut else ''}")
            self._finish(conn, "rst")
        self._sample_rss()
        self.sel.close()
        return time.monotonic() - t0


# ----------------------------------------------------------------- the API


def _check_args(seconds, seed, connections, drain_timeout, settle_s=SETTLE_S):
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:
        raise ValueError(f"seconds must be a number in (0, 86400], got {seconds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= 5000:
        raise ValueError(f"connections must be an integer in 1..5000, got {connections!r}")
    if isinstance(drain_timeout, bool) or not isinstance(drain_timeout, (int, float)) or not 0 < drain_timeout <= 600:
        raise ValueError(f"drain_timeout must be a number in (0, 600], got {drain_timeout!r}")
    if isinstance(settle_s, bool) or not isinstance(settle_s, (int, float)) or not 0 <= settle_s <= 600:
        raise ValueError(f"settle_s must be a number in [0, 600], got {settle_s!r}")


def rss_margin_kib(impl, options, connections):
    """See the module docstring: how far the server's RSS may grow over its starting value."""
    try:
        spec = specs.parse(impl)
    except ValueError:  # exec:CMD, or a label ("port N") of a server chaos did not start
        return 256 << 10
    opts = {**DEFAULT_OPTIONS, **spec.to_server_options(), **(options or {})}
    impl = spec.base
    if impl == "uring" and "connbuf" in spec.features:
        buffers = 2 * opts["buf_size"] * (connections + 16)  # per-connection buffers, like epoll's
    elif impl == "uring":
        # The pool, plus what a small pool spills into connection memory: each connection queues at
        # most its multishot budget (one buffer without mshot) and one completion more.
        budget = opts["mshot_budget"] or lib.ec_default_mshot_budget(opts["buf_count"])
        held = (budget if "mshot" in spec.features else 1) + 1
        spilled = connections * held if connections * held > opts["buf_count"] * 3 // 4 else 0
        buffers = (opts["buf_count"] + spilled) * opts["buf_size"]
    else:
        buffers = 2 * opts["buf_size"] * (connections + 16)
    return (64 << 20) // 1024 + buffers // 1024


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft)), hard))


def _change(start, end):
    """A counter's change over the run; histogram counters (lists) change bucket by bucket."""
    if isinstance(end, list):
        return [e - s for s, e in zip(start or [0] * len(end), end)]
    return end - (start or 0)


def run_chaos(impl="uring", seconds=5.0, seed=1, connections=64, host="127.0.0.1", cpu=None,
              server_options=None, port=None, pid=None, drain_timeout=10.0, server_stats=None,
              rss_bound_kib=None, settle_s=SETTLE_S, scripts=None):
    """Run the chaos client for `seconds` (then let scripts finish, up to drain_timeout) and check.

    Without port: starts its own server (echo_core.servers.factory.make_server(impl, ...)) pinned to `cpu`
    (default: the last CPU) with the client on another CPU if there is one, and stops it after.
    With port: targets the server already listening there (impl is only a label); the alive, RSS
    and fd checks need its pid (pid=...) and are skipped without it; conns_active is checked only
    if server_stats (a callable returning the server's counters, e.g. Server.stats) is given.
    rss_bound_kib overrides the RSS bound (default: RSS at the start + rss_margin_kib()), e.g. to
    hold a long soak to the server's RSS before its first chunk.  settle_s: how long the fd count
    and conns_active may take to return after the last client close.  scripts: replay only these
    script indices of `seed` (all at once, each once; `seconds` + drain_timeout bound the replay).

    Returns a dict; result["violations"] (at most MAX_VIOLATIONS per-connection strings plus every
    server-wide one; violation_count is the total) is empty and result["ok"] true when nothing went wrong.
    """

    _check_args(seconds, seed, connections, drain_timeout, settle_s)
    host = check_host(host)
    if scripts is not None:
        scripts = list(scripts)
        if not scripts or len(scripts) > 5000 or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                     for i in scripts):
            raise ValueError(f"scripts must be 1..5000 non-negative script indices, got {scripts!r}")
    if port is None:
        impl = check_impl(impl)  # the canonical spec (exec:CMD unchanged)
    elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or not pid_alive(pid)):
        raise ValueError(f"pid {pid!r} is not a running process")
    if server_options and port is not None:
        raise ValueError("server_options apply only to a server run_chaos starts (no port=)")
    raise_fd_limit(connections + 256)

    server_cpu, client_cpu = split_cpus(cpu)
    srv = None
    violations_pre = []
    if port is None:
        srv = make_server(impl, host=host, port=0, cpu=server_cpu, **(server_options or {}))
        srv.start()
        port, pid = srv.port, srv.pid
    saved_affinity = os.sched_getaffinity(0)
    try:
        if client_cpu is not None and srv is not None:
            os.sched_setaffinity(0, {client_cpu})
        stats_fn = srv.stats if srv is not None and srv.stats() is not None else server_stats
        # Let the server settle (an exec: server's readiness probe connection must be gone).
        fds_start = settled_fds(pid, None, 0.3) if pid is not None else None
        rss_start = rss_kib(pid) if pid is not None else None
        bound = rss_bound_kib
        if bound is None and rss_start:
            bound = rss_start + rss_margin_kib(impl, server_options, connections)
        stats_start = stats_fn() if stats_fn else None
        client = ChaosClient(host, port, seed, connections, seconds, drain_timeout, pid=pid,
                             stats=stats_fn, rss_bound_kib=bound, only=scripts)
        elapsed = client.run()
        alive = pid_alive(pid) if pid is not None else None
        if alive is False:
            client.violate(None, f"server process {pid} is gone")
        fds_end = active = None
        if alive:
            fds_end, active, problems = settle_server(pid, fds_start, stats_fn, 0, settle_s)
            for problem in problems:
                client.violate(None, problem)
        stats_end = stats_fn() if stats_fn else None
    finally:
        os.sched_setaffinity(0, saved_affinity)
        if srv is not None:
            try:
                srv.stop()
            except RuntimeError as exc:
                violations_pre.append(f"server stop: {exc}")
    for v in violations_pre:
        client.violate(None, v)

    counts = client.counts
    server = None
    if stats_end is not None:
        server = {k: _change(stats_start.get(k), stats_end[k]) if k not in ("running", "conns_active", "pending_bytes_max")
                  else stats_end[k] for k in stats_end}
    result = {
        "impl": impl, "seed": seed, "seconds": seconds, "elapsed_s": round(elapsed, 3),
        "concurrency": connections, "host": host, "port": port, "pid": pid,
        **{k: v for k, v in counts.items()},
        "server": server,
        "rss_start_kib": rss_start, "rss_max_kib": max(client.rss_samples) if client.rss_samples else None,
        "rss_end_kib": client.rss_samples[-1] if client.rss_samples else None, "rss_bound_kib": bound,
        "fds_start": fds_start, "fds_end": fds_end, "conns_active_end": active, "server_alive": alive,
        "violation_count": client.violation_count, "violations": client.violations,
    }
    for name in ("conns_accepted", "bytes_in", "bytes_out", "enobufs", "conn_errors"):
        result[name] = server[name] if server else None
    result["ok"] = client.violation_count == 0
    return result


def settled_fds(pid, want, timeout):
    """Poll the fd count until it equals want (or, with want None, stops changing); the last count."""
    deadline = time.monotonic() + timeout
    last = fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = fd_count(pid)
        if want is not None and now == want:
            return now
        if want is None and now == last:
            return now
        last = now
    return last


def settle_server(pid, fds_start, stats_fn, active_want, settle_s):
    """After the last client close, wait up to settle_s for the server's fd count to return to fds_start
    and (with stats_fn, its counters) conns_active to active_want.  Returns (fds, conns_active, problems)."""
    problems = []
    fds_end = settled_fds(pid, fds_start, settle_s)
    if fds_end != fds_start:
        problems.append(f"server fd count {fds_end} did not return to {fds_start} within {settle_s:g} s of the "
                        "last client close")
    active = None
    if stats_fn:
        deadline = time.monotonic() + settle_s
        while stats_fn()["conns_active"] != active_want and time.monotonic() < deadline:
            time.sleep(0.02)
        active = stats_fn()["conns_active"]
        if active != active_want:
            problems.append(f"server conns_active is {active}, not {active_want}, {settle_s:g} s after the last "
                            "client close")
    return fds_end, active, problems


def _mib(kib):
    return "?" if kib is None else f"{kib / 1024:.0f}"


def verdict(result):
    """One line: 'chaos ok: ...' or 'chaos FAILED: ...'."""
    r = result
    head = f"{r['impl']} seed {r['seed']} {r['seconds']:g} s"
    body = (f"{r['scripts']} scripts, {r['connections']} connections, {r['bytes_sent'] / 2**20:.1f} MiB sent "
            f"({r['nonreader_bytes'] / 2**20:.1f} to non-readers), "
            f"{r['bytes_echoed'] / 2**20:.1f} MiB echoed+verified, {r['resets']} resets, "
            f"{r['half_closes']} half-closes, {r['flood_connections']} flood, {r['nonreaders']} non-readers")
    if r["server"]:
        s = r["server"]
        body += (f"; server accepted {s['conns_accepted']}, conn_errors {s['conn_errors']}, "
                 f"enobufs {s['enobufs']}")
    if r["rss_max_kib"] is not None:
        body += f", rss max {_mib(r['rss_max_kib'])} MiB (start {_mib(r['rss_start_kib'])}, bound {_mib(r['rss_bound_kib'])})"
    if r["fds_start"] is not None:
        body += f", fds {r['fds_start']}->{r['fds_end']}"
    if r["ok"]:
        return f"chaos ok: {head}: {body}"
    first = r["violations"][0]
    replay = ""
    if first.startswith("script ") and r.get("impl") and not str(r["impl"]).startswith("port "):
        replay = (f" (replay it alone: python -m echo_core chaos --impl '{r['impl']}' --seed {r['seed']} "
                  f"--script {first.split()[1]})")
    return f"chaos FAILED: {head}: {r['violation_count']} violation(s); first: {first}{replay} [{body}]"


# ----------------------------------------------------------------- CLI


def add_chaos_arguments(p):
    p.add_argument("--impl", default=None, help="a server spec (uring, epoll, uring+mshot, ...) or exec:CMD "
                                               "(a server chaos starts); "
                                               "with --port only a label")
    p.add_argument("--seconds", default="5", metavar="N", help="seconds of new scripts (default 5)")
    p.add_argument("--seed", default="1", metavar="S", help="seed (default 1)")
    p.add_argument("--connections", default="64", metavar="C", help="concurrent scripts (default 64)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--cpu", default=None, metavar="CPU", help="server CPU (default: the last one)")
    p.add_argument("--port", default=None, help="target a server already listening here (none started)")
    p.add_argument("--pid", default=None, help="with --port: the server's pid, for the alive/RSS/fd checks")
    p.add_argument("--drain-timeout", default="10", metavar="S",
                   help="after the run, how long scripts may take to finish (default 10)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="server option, e.g. buf_count=256 (repeatable)")
    p.add_argument("--script", action="append", default=None, metavar="INDEX",
                   help="replay only script INDEX of --seed (repeatable), e.g. one a violation named")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--lifetime", action="store_true",
                   help="the long-lived-server regime instead of scripts: one server through rounds of phases "
                        "(streams closed with echoes queued, large and small rr, many connections, "
                        "half-closes, non-readers) for --seconds (echo_core.chaos.lifetime)")
    p.add_argument("--threads", default="1", metavar="N", help="with --lifetime: the server's event loops (default 1)")
    return p


def parse_options(items):
    """--option NAME=VALUE items -> {name: int}; ValueError with one line on a malformed one."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects NAME=VALUE, got {item!r}")
        options[name.strip().replace("-", "_")] = option_number(f"option {name}", value, int)
    return options


def chaos_command(args):
    """0: no violation; 1: violations (or the server could not start); 2: bad input."""
    import json

    try:
        kwargs = dict(seconds=option_number("seconds", args.seconds), seed=option_number("seed", args.seed, int),
                      connections=option_number("connections", args.connections, int), host=args.host,
                      drain_timeout=option_number("drain-timeout", args.drain_timeout))
        if args.cpu is not None:
            kwargs["cpu"] = option_number("cpu", args.cpu, int)
        if args.port is not None:
            kwargs["port"] = option_number("port", args.port, int)
            if args.pid is not None:
                kwargs["pid"] = option_number("pid", args.pid, int)
            impl = args.impl or f"port {kwargs['port']}"
        else:
            if args.impl is None:
                raise ValueError("give --impl (a spec such as uring, epoll, uring+mshot, or exec:CMD) or --port "
                                 "of a running server")
            if args.pid is not None:
                raise ValueError("--pid goes with --port")
            impl = args.impl
        options = parse_options(args.option)
        if options:
            kwargs["server_options"] = options
        if args.script:
            kwargs["scripts"] = [option_number("script", i, int) for i in args.script]
        if kwargs.get("cpu") is not None and kwargs["cpu"] not in os.sched_getaffinity(0):
            raise ValueError(f"cpu {kwargs['cpu']} is not available (available: {sorted(os.sched_getaffinity(0))})")
        if args.port is None:
            check_impl(impl)
            if not specs.is_exec(impl):
                validate(impl, "127.0.0.1", 0, kwargs.get("cpu"), options)
        _check_args(kwargs["seconds"], kwargs["seed"], kwargs["connections"], kwargs["drain_timeout"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_chaos(impl, **kwargs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"chaos FAILED: {impl}: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in the client itself: still one line, still a failure
        print(f"chaos FAILED: {impl}: internal error: {type(exc).__name__}: {exc}", flush=True)
        return 1
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(verdict(result), flush=True)
    return 0 if result["ok"] else 1
