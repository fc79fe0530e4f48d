"""The epoll server's variants, given the care io_uring's got: spin_us=N polls before it blocks (the
counterpart of io_uring's batch wait), lt=1 is the textbook level-triggered server, busy_poll_us=N the
kernel's epoll busy poll."""

import pytest

import echo_core
from echo_core.load.generator import run_load
from echo_core.servers import specs
from conftest import CLIENT_CPUS, SERVER_CPU


def _wait_calls_per_msg(impl):
    with echo_core.Server(impl, port=0, cpu=SERVER_CPU) as srv:
        record = run_load(port=srv.port, mode="rr", payload=512, connections=1, duration=0.5, warmup=0.1,
                          cpus=CLIENT_CPUS[:1], server_pids=srv.pids(), server_stats_path=srv.stats_path,
                          counters="none")
    assert record["mismatches"] == 0 and record["errors"] == 0 and record["messages"] > 100
    return record["server_wait_calls"] / record["messages"]


def test_spin_is_an_epoll_tunable_with_a_bounded_range():
    assert specs.parse("epoll(spin_us=50)").to_server_options() == {"epoll_spin_us": 50}
    assert str(specs.parse("epoll(spin_us=0)")) == "epoll"
    with pytest.raises(ValueError, match="spin_us"):
        specs.parse("epoll(spin_us=2000000)")
    assert "epoll(spin_us=50)" in specs.CATALOGUE


def test_a_spinning_server_polls_between_requests_and_echoes_every_byte():
    """Between two requests of one closed-loop client, a blocking server waits once or twice per
    message; a spinning one polls many times (each poll a wait call) before the next request comes."""
    plain = _wait_calls_per_msg("epoll")
    spinning = _wait_calls_per_msg("epoll(spin_us=500)")
    assert plain < 4, plain
    assert spinning > 3 * plain, (spinning, plain)


def _echo(impl, mode, payload, connections):
    with echo_core.Server(impl, port=0, cpu=SERVER_CPU) as srv:
        record = run_load(port=srv.port, mode=mode, payload=payload, connections=connections, duration=0.4,
                          warmup=0.1, cpus=CLIENT_CPUS[:1], server_pids=srv.pids(),
                          server_stats_path=srv.stats_path, counters="none")
    assert record["mismatches"] == 0 and record["errors"] == 0 and record["never_answered"] == 0
    assert record["messages"] > 0
    return record


@pytest.mark.parametrize("mode, payload, connections", [("rr", 512, 4), ("stream", 100000, 8), ("rr", 100000, 2)])
def test_level_triggered_server_echoes_every_byte(mode, payload, connections):
    _echo("epoll(lt=1)", mode, payload, connections)


def test_level_triggered_server_does_not_spin_on_a_client_that_never_reads():
    """A full buffer must leave epoll's interest set (else every wait reports it at once): with one
    client that only sends, the server sleeps instead of spinning on it."""
    import socket
    import time

    with echo_core.Server("epoll(lt=1)", port=0, cpu=SERVER_CPU, buf_size=4096) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setblocking(False)
        try:
            for _ in range(2000):
                sock.send(b"x" * 65536)
        except BlockingIOError:
            pass  # both directions' buffers are full now
        before = srv.stats()["wait_calls"]
        time.sleep(0.5)
        waits = srv.stats()["wait_calls"] - before
        sock.close()
    assert waits < 2000, waits  # a server spinning on the reported connection waits 100,000s of times


def test_epoll_tunables_parse_and_busy_poll_needs_its_kernel():
    assert specs.parse("epoll(lt=1)").to_server_options() == {"epoll_level": 1}
    assert specs.parse("epoll(busy_poll_us=50)").to_server_options() == {"epoll_busy_poll_us": 50}
    with pytest.raises(ValueError, match="lt"):
        specs.parse("epoll(lt=2)")
    old = {**specs.probe(), "kernel": (6, 1)}
    assert "6.9" in specs.unsupported_reason("epoll(busy_poll_us=50)", old)
    assert specs.unsupported_reason("epoll(lt=1)", old) is None
    assert {"epoll(lt=1)", "epoll(busy_poll_us=50)"} <= set(specs.CATALOGUE)


def test_busy_polling_server_echoes_every_byte():
    why = specs.unsupported_reason("epoll(busy_poll_us=50)")
    if why:
        pytest.skip(why)
    _echo("epoll(busy_poll_us=50)", "rr", 512, 2)
