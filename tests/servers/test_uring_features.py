"""The io_uring server's variants (issue 10): the C contract (feature bits, refused combinations,
epoll refusing features) and what each variant adds - back-pressure and fairness of the multishot
send queue, short sends, batched waits that never hold a lone request long, the counters."""

import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import echo_client
import echo_core
from conftest import IO_URING_REFUSED, SERVER_CPU, variant_refused
from echo_client import connect, distinct_payload, echo_all, echo_on_new_connections, recv_exact
from echo_core.native import ffi, lib
from echo_core.servers import specs

pytestmark = pytest.mark.skipif(IO_URING_REFUSED is not None, reason=str(IO_URING_REFUSED))

PROVIDED = ["uring", "uring+inc", "uring+mshot", "uring+mshot+bundle", "uring+mshot+inc"]
VARIANTS = PROVIDED + ["uring+connbuf", "uring+pollfirst", "uring+batch", "uring+zc", "uring+mshot+zc",
                       "uring+mshot+bundle+batch+pollfirst", "uring+napi"]


@pytest.fixture
def variant_server(request):
    started = []

    def start(name, **options):
        if "+" in name and variant_refused(name):
            pytest.skip(variant_refused(name))
        srv = echo_core.Server(name, port=0, cpu=SERVER_CPU, **options).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc is not None:
            srv.stop()


def test_feature_bits_are_the_contract():
    assert (lib.EC_FEAT_MSHOT, lib.EC_FEAT_BUNDLE, lib.EC_FEAT_INC, lib.EC_FEAT_CONNBUF, lib.EC_FEAT_BATCH,
            lib.EC_FEAT_POLLFIRST, lib.EC_FEAT_ZC, lib.EC_FEAT_SQPOLL, lib.EC_FEAT_NAPI, lib.EC_FEAT_GROW,
            lib.EC_FEAT_HUGE, lib.EC_FEAT_SENDRING, lib.EC_FEAT_ALL) == (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100,
                                                                        0x200, 0x400, 0x800, 0xfff)
    cfg = ffi.new("struct ec_server_config *")
    assert (cfg.features, cfg.batch_nr, cfg.batch_wait_us, cfg.batch_after, cfg.mshot_budget, cfg.sqpoll_cpu,
            cfg.grow_start, cfg.grow_step, cfg.mshot_own_cap) == (0,) * 9


def _serve_directly(func, features, **fields):
    bound = ffi.new("int *")
    listen_fd = lib.ec_listen(b"127.0.0.1", 0, 16, bound)
    assert listen_fd >= 0
    r, w = os.pipe()
    try:
        os.write(w, b"x")  # stop at once should set-up succeed
        cfg = ffi.new("struct ec_server_config *", dict(buf_size=4096, buf_count=16, ring_entries=64,
                                                       epoll_budget=4, ready_fd=-1, sqpoll_cpu=-1,
                                                       features=features, **fields))
        stats = ffi.new("struct ec_server_stats *")
        return func(listen_fd, r, cfg, stats)
    finally:
        os.close(listen_fd)
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("features", [
    4096,         # unknown bit
    0x800 | 0x1,  # sendring without bundle
    0x800 | 0x1 | 0x2 | 0x40,  # sendring with zc
    0x2,          # bundle without mshot
    0x8 | 0x1,    # connbuf with mshot
    0x8 | 0x4,    # connbuf with inc
    0x1 | 0x2 | 0x8,
    0x1 | 0x2 | 0x4,  # bundle with inc
    0x40 | 0x8,   # zc with connbuf
    0x200 | 0x8,  # grow with connbuf
    0x400 | 0x8,  # huge with connbuf
])
def test_impossible_combinations_are_refused_with_einval(features):
    assert _serve_directly(lib.ec_uring_serve, features) == -errno.EINVAL


def test_own_cap_is_zero_or_one():
    assert _serve_directly(lib.ec_uring_serve, 0x1, mshot_own_cap=2) == -errno.EINVAL
    assert _serve_directly(lib.ec_uring_serve, 0x1, mshot_own_cap=1) == 0


def test_a_pool_cannot_start_above_its_ceiling():
    # buf_count=16 is the most the pool may grow to: starting at 32 is refused, at 16 it starts.
    assert _serve_directly(lib.ec_uring_serve, 0x200, grow_start=32) == -errno.EINVAL
    assert _serve_directly(lib.ec_uring_serve, 0x200, grow_start=16) == 0
    with pytest.raises(ValueError, match=r"grow\(start=64\) is more than the pool's ceiling buf_count=16"):
        echo_core.Server("uring(buf_count=16)+grow", port=0)
    with pytest.raises(ValueError, match="connbuf excludes grow"):
        echo_core.Server("uring+connbuf+grow", port=0)
    # The ceiling is mapped at start: a pool the machine could never hold is refused, as without grow.
    with pytest.raises(RuntimeError, match="set-up failed: Cannot allocate memory"):
        echo_core.Server("uring+grow", port=0, buf_count=32768, buf_size=2**31).start()


@pytest.mark.parametrize("features", [0x1, 0x8, 0x10, 0x20])
def test_epoll_refuses_any_feature(features):
    assert _serve_directly(lib.ec_epoll_serve, features) == -errno.EINVAL


@pytest.mark.parametrize("features", [0x1, 0x1 | 0x2, 0x4, 0x1 | 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200,
                                      0x1 | 0x2 | 0x10 | 0x20, 0x1 | 0x2 | 0x200, 0x1 | 0x2 | 0x800])
def test_supported_combinations_start_and_stop(features):
    assert _serve_directly(lib.ec_uring_serve, features) in (0, -errno.EOPNOTSUPP)


def test_python_refuses_features_for_epoll():
    with pytest.raises(ValueError, match="epoll takes no features"):
        echo_core.Server("epoll+mshot", port=0)
    with pytest.raises(ValueError, match="conflicts with spec epoll"):
        echo_core.Server("epoll", port=0, features=1)


def _echo_to_slow_reader(port, data, slow_bytes):
    """Send data from a thread while reading the echo through a 4 KiB receive buffer, pausing after each
    read until slow_bytes have come back: the server's sends meet a full socket buffer.  Returns the echo."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect(("127.0.0.1", port))
    writer = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    writer.start()
    got = bytearray()
    s.settimeout(30)
    while len(got) < len(data):
        chunk = s.recv(1 << 16)
        assert chunk, "EOF before every byte came back"
        got += chunk
        if len(got) < slow_bytes:
            time.sleep(0.0005)
    writer.join(10)
    s.close()
    return bytes(got)


SENDRING = "uring+mshot+bundle+sendring"


def test_send_ring_sends_gathered_segments_whole(variant_server):
    # 4 KiB buffers, 16 streams of 1 MiB: a recv bundle queues several segments, which go as send bundles.
    srv = variant_server(SENDRING, buf_count=64, buf_size=4096)
    socks = [connect(srv.port) for _ in range(16)]
    payloads = [distinct_payload(i, 1 << 20) for i in range(16)]
    assert echo_all(socks, payloads, timeout=60) == payloads
    st = srv.stats()
    assert 0 < st["ring_sends"] <= st["send_calls"] and st["ring_refusals"] == 0, st
    assert st["bytes_in"] == st["bytes_out"] == 16 << 20
    for s in socks:
        s.close()


def test_send_ring_completes_sends_to_a_slow_reader(variant_server):
    # A send bundle is sent whole: the kernel retries what a full socket buffer cut short, so
    # every byte comes back in order although the reader takes its time.
    srv = variant_server(SENDRING, buf_count=64, buf_size=4096)
    data = distinct_payload(5, 2 << 20)
    assert _echo_to_slow_reader(srv.port, data, slow_bytes=1 << 19) == data
    st = srv.stats()
    assert st["ring_sends"] > 0 and st["ring_refusals"] == 0, st


# Run in a process of its own without CAP_IPC_LOCK, so that the kernel charges the server's pinned pages to
# RLIMIT_MEMLOCK: once the server is up, its limit is lowered to 0, which leaves no room for any connection's
# send ring.  (Searching for the lowest limit the server starts under was not deterministic: the kernel
# frees a failed attempt's ring, and its charge, asynchronously.)
_REFUSED_RING = r"""
import json, resource, sys
import echo_core
spec, cpu = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from echo_client import connect, distinct_payload, echo_all
hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
try:
    srv = echo_core.Server(spec, port=0, cpu=cpu, max_conns=16).start()
except (OSError, RuntimeError) as e:
    sys.exit(f"SKIP RLIMIT_MEMLOCK {hard} B is too low to start the server: {e}")
resource.prlimit(srv.proc.pid, resource.RLIMIT_MEMLOCK, (0, 0))
data = [distinct_payload(i, 1 << 20) for i in range(4)]
back = echo_all([connect(srv.port) for _ in data], data, timeout=60)
print(json.dumps({"exact": back == data, "stats": srv.stop()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop CAP_IPC_LOCK")
def test_a_send_ring_the_kernel_refuses_falls_back_to_sendmsg():
    if variant_refused(SENDRING):
        pytest.skip(variant_refused(SENDRING))
    out = subprocess.run(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", sys.executable, "-c",
                          _REFUSED_RING, "uring(buf_count=64,buf_size=4096,ring_entries=64)+mshot+bundle+sendring",
                          str(SERVER_CPU), os.path.dirname(echo_client.__file__)],
                         capture_output=True, text=True, timeout=120)
    if out.stderr.startswith("SKIP "):
        pytest.skip(out.stderr[5:].strip())
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    st = res["stats"]
    assert res["exact"], res
    assert st["ring_sends"] == 0 and st["ring_refusals"] > 0 and st["send_calls"] > 0, res


def test_send_ring_slots_keep_bytes_after_resets(variant_server):
    # Rounds of streams that read nothing through a 4 KiB window and are reset (RST) while the server's
    # send bundles to them wait for room: a failed send may leave entries in the connection's send ring,
    # and no later send may send them.  Each round's new connections reuse the slots and must get
    # exactly their own bytes back.
    srv = variant_server(SENDRING, buf_count=64, buf_size=4096)
    block = os.urandom(1 << 16)
    for rnd in range(6):
        doomed = []
        for _ in range(8):
            d = socket.socket()
            d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            d.connect(("127.0.0.1", srv.port))
            d.setblocking(False)
            doomed.append(d)
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            for d in doomed:
                try:
                    d.send(block)
                except BlockingIOError:
                    pass
        for d in doomed:
            d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            d.close()
        socks = [connect(srv.port) for _ in range(8)]
        payloads = [distinct_payload(rnd * 8 + i, 300_000) for i in range(8)]
        assert echo_all(socks, payloads, timeout=60) == payloads, f"round {rnd}"
        for s in socks:
            s.close()
    st = srv.stats()
    assert st["ring_sends"] > 0 and st["conn_errors"] > 0 and st["ring_resets"] > 0, st


@pytest.mark.parametrize("name", VARIANTS)
def test_short_sends_are_completed(variant_server, name):
    # A client with a tiny receive buffer that reads slowly: the server's sends come back short.
    srv = variant_server(name)
    data = distinct_payload(3, 4 << 20)
    assert _echo_to_slow_reader(srv.port, data, slow_bytes=1 << 20) == data
    assert srv.stats()["short_sends"] > 0


@pytest.mark.parametrize("name,own_cap", [("uring+mshot", 0), ("uring+mshot+bundle", 0), ("uring+mshot+inc", 0),
                                          ("uring+mshot", 1), ("uring+mshot+bundle", 1)])
def test_never_reading_client_holds_at_most_its_budget(variant_server, name, own_cap):
    # 16 buffers, budget 2: four hogs that never read cannot take the pool; others keep echoing.  With
    # own_cap=1 only the server's own budget (cancel once a queue is full) bounds them, as on kernels
    # before 6.17; the fairness must hold on that path too.
    has_cap = specs.probe()["kernel"] >= (6, 17)
    if own_cap and not has_cap:
        pytest.skip("the kernel has no multishot byte cap (6.17): own_cap=1 is its default path, tested above")
    srv = variant_server(name.replace("mshot", f"mshot(budget=2,own_cap={own_cap})"), buf_count=16, buf_size=4096)
    hogs = [connect(srv.port) for _ in range(4)]
    block = os.urandom(1 << 16)
    for h in hogs:
        h.setblocking(False)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for h in hogs:
            try:
                h.send(block)
            except BlockingIOError:
                pass
        time.sleep(0.005)
    others = [connect(srv.port) for _ in range(8)]
    payloads = [distinct_payload(i, 300_000) for i in range(8)]
    assert echo_all(others, payloads, timeout=60) == payloads
    stats = srv.stats()
    assert stats["backpressure_pauses"] > 0
    if has_cap:
        # The kernel's cap ends a multishot recv once it has received the rest of the budget (2 x 4 KiB).
        # A bundle's buffers are chosen within the cap's rest, so the queue holds at most the budget
        # (8,192 B in 24 of 24 runs by hand); a single-buffer recv takes a whole buffer (or, with inc, a
        # buffer's rest) whatever is left of the cap - the kernel (6.17, 6.18) clamps only the bundle's
        # choice - so the last recv may overshoot by less than one buffer (up to 11,840 B in 48 runs).
        # Without the cap, one hog holds the whole 64 KiB pool, as the kernel's retry loop fills buffers
        # until the server sees a completion and cancels.
        held = stats["pending_bytes_max"]
        if own_cap:
            assert held > 4 * 4096, held
        else:
            assert held <= (2 * 4096 if "bundle" in name else 3 * 4096 - 1), held
    for s in hogs + others:
        s.close()


@pytest.mark.parametrize("name", ["uring+mshot", "uring+mshot+bundle"])
def test_multishot_receives_many_times_per_recv_armed(variant_server, name):
    srv = variant_server(name)
    socks = [connect(srv.port) for _ in range(4)]
    payloads = [distinct_payload(i, 2 << 20) for i in range(4)]
    assert echo_all(socks, payloads, timeout=60) == payloads
    st = srv.stats()
    # One armed recv brings several buffers' worth (the budget's, 16 x 64 KiB, at most).
    assert st["bytes_in"] > 2 * 65536 * st["recv_calls"], (st["bytes_in"], st["recv_calls"])
    assert st["recv_ok"] >= st["recv_calls"] or "bundle" in name
    assert sum(st["recv_hist"]) == st["recv_ok"]
    assert st["bytes_in"] == st["bytes_out"] == 4 * (2 << 20)
    for s in socks:
        s.close()


@pytest.mark.parametrize("name", ["uring+mshot", "uring+mshot+bundle"])
def test_default_budget_scales_with_a_small_pool(variant_server, name):
    # A cache-sized pool (16 x 32 KiB = 512 KiB): the default budget is a quarter of the pool (4 buffers),
    # not 1/64 of it rounded up to one buffer, which re-armed the multishot recv for every buffer.
    assert [lib.ec_default_mshot_budget(n) for n in (1, 4, 16, 64, 4096)] == [1, 1, 4, 16, 16]
    # Two connections on it echo every byte.  (How many buffers each arm takes depends on how fast this
    # client drains its echoes - an arm may take only what the connection's queue has room for - so
    # bytes per recv call is no test of the budget: 1.0-1.2 buffers with budget 1, 1.03-1.9 with 4.)
    srv = variant_server(name, buf_count=16, buf_size=32768)
    socks = [connect(srv.port) for _ in range(2)]
    payloads = [distinct_payload(i, 4 << 20) for i in range(2)]
    assert echo_all(socks, payloads, timeout=60) == payloads
    st = srv.stats()
    assert st["bytes_in"] == st["bytes_out"] == 2 * (4 << 20)
    for s in socks:
        s.close()


def _median_rtt(port, rounds):
    """The median round trip of a lone 64-byte ping-pong on one connection."""
    with connect(port) as s:
        rtts = []
        for i in range(rounds):
            t = time.monotonic()
            s.sendall(b"x" * 64)
            recv_exact(s, 64)
            rtts.append(time.monotonic() - t)
    return sorted(rtts)[rounds // 2]


def test_batched_wait_never_holds_a_lone_request_long(variant_server):
    # batch_nr 64 and 2 ms at most: a lone ping-pong must not wait for 63 companions.
    srv = variant_server("uring+batch(nr=64,wait_us=2000)")
    rtt = _median_rtt(srv.port, 200)
    assert rtt < 20e-3, rtt
    # The idle server is not spinning: a wait lasts until something happens.
    before = srv.stats()["wait_calls"]
    time.sleep(0.3)
    assert srv.stats()["wait_calls"] - before < 50


def test_adaptive_batch_lingers_only_after_busy_wake_ups(variant_server):
    # A 100 ms linger for 64 completions.  A lone ping-pong's wake-ups find one completion each:
    # with after=2 the wait never lingers (no timer), with after=1 it lingers every time.
    quick = variant_server("uring+batch(nr=64,wait_us=100000,after=2)")
    assert _median_rtt(quick.port, 30) < 20e-3
    assert quick.stats()["bytes_out"] == 30 * 64
    slow = variant_server("uring+batch(nr=64,wait_us=100000,after=1)")
    assert _median_rtt(slow.port, 5) > 50e-3  # the threshold is met: it lingers like plain batch


@pytest.mark.parametrize("name", PROVIDED)
def test_growing_pool_grows_under_enobufs_only(variant_server, name):
    # Start with 4 buffers, add 4 while recvs often find none (-ENOBUFS), at most 256.  A lone
    # ping-pong holds one buffer at a time: the pool stays at its start.  Then 32 connections streaming
    # at once hold many: the pool runs dry, grows by whole steps, never beyond its ceiling, and every
    # byte comes back in order.
    srv = variant_server(name + "+grow(start=4,step=4)", buf_count=256, buf_size=4096)
    assert srv.stats()["pool_buffers"] == 4
    s = connect(srv.port)
    for i in range(20):
        s.sendall(b"p" * 100)
        assert recv_exact(s, 100) == b"p" * 100
    s.close()
    assert (srv.stats()["pool_buffers"], srv.stats()["enobufs"]) == (4, 0)
    payloads = [distinct_payload(i, 300_000) for i in range(32)]
    assert echo_on_new_connections(srv.port, payloads, timeout=60) == payloads
    st = srv.stats()
    assert st["enobufs"] > 0
    assert 4 < st["pool_buffers"] <= 256 and st["pool_buffers"] % 4 == 0
    assert st["bytes_in"] == st["bytes_out"] == 20 * 100 + 32 * 300_000


def _anon_huge_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return int(re.search(r"^AnonHugePages:\s+(\d+) kB", f.read(), re.M).group(1))


@pytest.mark.parametrize("name", PROVIDED)
def test_huge_puts_the_pool_on_huge_pages(variant_server, name):
    # 128 buffers of 16 KiB: one 2 MiB huge page, which the first receive's fault takes.  Streams on
    # 16 connections at once cycle through the whole pool; every byte comes back in order.
    srv = variant_server(name + "+huge", buf_count=128, buf_size=16384)
    payloads = [distinct_payload(i, 400_000) for i in range(16)]
    assert echo_on_new_connections(srv.port, payloads, timeout=60) == payloads
    assert _anon_huge_kib(srv.proc.pid) >= 2048
    with pytest.raises(ValueError, match="connbuf excludes huge"):
        echo_core.Server("uring+connbuf+huge", port=0)


def test_pool_size_without_grow_is_buf_count(variant_server):
    assert variant_server("uring+mshot", buf_count=32, buf_size=4096).stats()["pool_buffers"] == 32
    assert variant_server("uring+connbuf").stats()["pool_buffers"] == 0


@pytest.mark.parametrize("name", ["uring+inc", "uring+mshot+inc"])
def test_few_large_incremental_buffers_are_shared_by_many_connections(variant_server, name):
    # Four 1 MiB buffers, consumed piece by piece by 16 streaming connections at once.
    srv = variant_server(name, buf_count=4, buf_size=1 << 20)
    payloads = [distinct_payload(i, 500_000) for i in range(16)]
    assert echo_on_new_connections(srv.port, payloads, timeout=60) == payloads
    st = srv.stats()
    # The kernel left buffers in the ring after filling part of them: later pieces - of this or
    # another connection - went into the same buffer at a growing offset.
    assert st["recv_buf_more"] > 0
    assert st["recv_ok"] > 4
    assert st["bytes_in"] == st["bytes_out"] == 16 * 500_000


@pytest.mark.parametrize("name", ["uring+zc", "uring+mshot+zc"])
def test_send_zc_notifications_are_counted_and_buffers_come_back(variant_server, name):
    # A tiny pool: were a buffer not returned after its notification, the echo would stall.
    srv = variant_server(name, buf_count=4, buf_size=4096)
    payloads = [distinct_payload(i, 300_000) for i in range(8)]
    assert echo_on_new_connections(srv.port, payloads, timeout=60) == payloads
    st = srv.stats()
    # Each send posts its result and (on loopback, which copies) a notification too - except the plain
    # sends of bytes copied out of the tiny pool while it ran low (spilled_sends: no notification).
    zc_sends = st["send_calls"] - st["spilled_sends"]
    assert st["completions"] > st["recv_ok"] + st["send_calls"] + zc_sends - 100
