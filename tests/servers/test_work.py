"""Server work per request (servers' ``work`` options, echo_core/csrc/work.h): both servers read every
received byte (touch) or spend a fixed CPU time per message (cpu=NS) before echoing, and still echo
every byte unchanged."""

import pytest

import echo_core
from echo_core.load.generator import run_load
from echo_core.servers.options import parse_work, work_options
from conftest import CLIENT_CPUS, SERVER_CPU

BASES = ["epoll", "uring", "uring+mshot+bundle"]


def _run(impl, work, mode="rr", payload=512, connections=2, duration=0.4):
    with echo_core.Server(impl, port=0, cpu=SERVER_CPU, **work_options(work, payload)) as srv:
        record = run_load(port=srv.port, mode=mode, payload=payload, connections=connections,
                          duration=duration, warmup=0.1, cpus=CLIENT_CPUS[:1], server_pids=srv.pids(),
                          counters="none")
        stats = srv.stats()
    assert record["mismatches"] == 0 and record["errors"] == 0 and record["never_answered"] == 0
    assert record["messages"] > 0
    return record, stats


@pytest.mark.parametrize("impl", BASES)
def test_touch_reads_every_byte_and_echoes_it_unchanged(impl):
    record, stats = _run(impl, "touch", mode="stream", payload=16384)
    assert stats["work_checksum"] != 0  # the pattern's bytes were summed
    none, stats_none = _run(impl, "none", mode="stream", payload=16384)
    assert stats_none["work_checksum"] == 0


@pytest.mark.parametrize("impl", BASES)
def test_cpu_work_costs_its_time_per_message(impl):
    # 200 µs per message, one connection in a closed loop: the server can answer at most ~5,000/s and
    # spends at least that long of CPU on each (loose: a busy 2-CPU machine only adds time).
    record, stats = _run(impl, "cpu=200000", connections=1, duration=0.5)
    per_msg_us = record["server_cpu_s"] / record["messages"] * 1e6
    assert per_msg_us >= 150, per_msg_us
    assert record["msgs_per_s"] <= 5200
    assert stats["work_checksum"] >= record["messages"]  # one count per message worked on


def test_work_texts():
    assert parse_work("none")[:2] == ("none", 0)
    assert parse_work("touch")[:2] == ("touch", 1)
    assert parse_work("cpu=2000") == ("cpu=2000", 2, 2000)
    assert work_options("cpu=500", 16384) == {"work": 2, "work_ns": 500, "work_msg_bytes": 16384}
    assert work_options("touch", 16384) == {"work": 1, "work_ns": 0, "work_msg_bytes": 0}
    for bad in ("cpu", "cpu=x", "cpu=0", "touch=3", "parse", "cpu=99999999999"):
        with pytest.raises(ValueError, match="work"):
            parse_work(bad)


@pytest.mark.parametrize("impl", ["epoll", "uring"])
def test_the_servers_refuse_bad_work_options(impl):
    with pytest.raises(ValueError, match="work"):
        echo_core.Server(impl, port=0, work=3)
    with pytest.raises(ValueError, match="work"):
        echo_core.Server(impl, port=0, work=2, work_ns=100)  # cpu work without a message size
