"""epoll(spin_us=N): the epoll server polls before it blocks (the counterpart of io_uring's batch wait)."""

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
