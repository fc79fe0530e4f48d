"""The long-lived-server regime (echo_core.chaos.lifetime): one server through every phase, every byte verified,
for every spec `impls` lists and for share-nothing threads; and the bundle corruption it was made for."""

import os
import socket
import subprocess
import sys

import pytest

from conftest import impl_param
from echo_core.chaos import lifetime
from echo_core.servers import specs

SERVER_CPU = max(os.sched_getaffinity(0))
#: Under ASan (make test-sanitize preloads it into every process) freed memory sits in its quarantine,
#: so RSS growth across rounds says nothing about leaks there.
RSS_GROWTH = None if "libasan" in os.environ.get("LD_PRELOAD", "") else lifetime.RSS_GROWTH_KIB


def _check(result):
    assert result["ok"], lifetime.verdict(result)
    # Every phase ran, and each stream burst closed connections in the three ways.
    assert set(result["phases_run"]) == set(lifetime.PHASES)
    assert result["bytes_verified"] > 0
    assert result["fds_end"] == result["fds_start"]
    assert result["conns_active_end"] in (0, None)


#: Every spec `impls` lists; the sanitizer and current-liburing runs (ECHO_CORE_TEST_VARIANTS=0) take the
#: recommended design (also without the kernel's byte cap, and with send rings), the buffer-ring modes and
#: the (adaptive) batched wait only (uring and epoll run there in the threads test, each spec's unit tests
#: through test_uring_features.py).
SPECS = specs.CATALOGUE if os.environ.get("ECHO_CORE_TEST_VARIANTS", "1") != "0" else (
    specs.RECOMMENDED, specs.RECOMMENDED + "+batch(after=4)", specs.GROWING, specs.RECOMMENDED_OWN_CAP,
    specs.RECOMMENDED + "+sendring", "uring+mshot+inc", "uring(buf_count=16)")


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_survives_one_long_lived_server(spec):
    why = specs.unsupported_reason(spec)
    if why:
        pytest.skip(f"{spec} unsupported: {why}")
    _check(lifetime.run_lifetime(impl_param(spec), seconds=0, seed=1, short=True))


def test_a_growing_pool_keeps_every_byte_through_a_long_life():
    """The growing pool (issue 18) from 4 buffers, 4 more while it runs dry: every kind of client the regime
    has, on one server, while the pool runs dry and grows - bids added at the ring's tail must name
    the buffers bundles and recycling think they name."""
    impl = impl_param("uring(buf_count=256,buf_size=4096)+mshot+bundle+grow(start=4,step=4)")
    result = lifetime.run_lifetime(impl, seconds=0, seed=18, short=True)
    _check(result)
    assert result["server_enobufs"] > 0
    assert 4 < result["server_pool_buffers"] <= 256


@pytest.mark.parametrize("impl", ["epoll", "uring", "uring+mshot+bundle"])
def test_threads_survive_one_long_lived_server(impl):
    _check(lifetime.run_lifetime(impl_param(impl), seconds=0, seed=2, short=True, threads=2))


def test_bundles_keep_bytes_after_streams_close_with_echoes_queued():
    """Issue 15: a bundle completion for a connection that had failed gave its first buffer back before
    naming the others from that buffer's ring position - which giving it back had just moved - so wrong
    buffers were echoed and given back twice, and later clients got other connections' bytes.  On the
    old code one round failed about two times in three; this runs rounds for 6 s."""
    impl = impl_param("uring+mshot+bundle")
    result = lifetime.run_lifetime(impl, seconds=6, seed=15, short=True, rss_growth_kib=RSS_GROWTH)
    _check(result)
    assert result["rounds"] >= 2
    if RSS_GROWTH is not None:
        assert result["rss_end_kib"] <= result["rss_warm_kib"] + RSS_GROWTH
    assert all(result.get(f"stream_closes_{how}", 0) > 0 for how in lifetime.CLOSE_KINDS)


def test_a_server_that_corrupts_is_caught():
    """The regime's checks can fail: a server that flips a byte of every large message is reported."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    code = ("import socket,threading,sys\n"
            "s=socket.socket(fileno=int(sys.argv[1]))\n"
            "def h(c):\n"
            "    n=0\n"
            "    while True:\n"
            "        d=c.recv(65536)\n"
            "        if not d: break\n"
            "        n+=len(d)\n"
            "        if n>200000: d=bytes([d[0]^1])+d[1:]; n=0\n"
            "        try: c.sendall(d)\n"
            "        except OSError: break\n"
            "    c.close()\n"
            "while True:\n"
            "    c,_=s.accept(); threading.Thread(target=h,args=(c,),daemon=True).start()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(srv.fileno())], pass_fds=[srv.fileno()])
    try:
        result = lifetime.run_lifetime("external", seconds=0, seed=3, port=port, pid=proc.pid, short=True)
    finally:
        proc.kill()
        proc.wait()
        srv.close()
    assert not result["ok"]
    assert "wrong" in result["violations"][0], result["violations"]


@pytest.mark.parametrize("impl", ["uring", "uring+mshot", "uring+mshot+bundle", "uring+inc", "uring+zc",
                                  "uring+mshot+bundle+grow(start=4,step=4)"])
def test_non_readers_cannot_starve_a_small_pool(impl):
    """Review item 4: 64 connections that send and never read, on a pool of 16 buffers, stay open while
    ordinary clients are still served byte for byte; the pool's reserve is kept by copying (spills)."""
    import echo_core

    srv = echo_core.Server(impl_param(impl), port=0, cpu=SERVER_CPU, buf_count=16, buf_size=16384).start()
    blockers = []
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            try:
                while True:
                    s.send(b"x" * 65536)
            except BlockingIOError:
                pass
            blockers.append(s)
        for size in (512, 100000):
            for _ in range(3):
                c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                msg = os.urandom(size)
                c.sendall(msg)
                got = bytearray()
                while len(got) < size:
                    chunk = c.recv(size - len(got))
                    assert chunk, "EOF"
                    got += chunk
                assert bytes(got) == msg
                c.close()
        assert srv.stats()["spills"] > 0
    finally:
        for s in blockers:
            s.close()
        srv.stop()
