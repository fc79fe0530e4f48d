"""The load worker's protocol: a LoadSpec in, one record back on its own pipe, exit statuses as the CLI's."""

import math

import pytest

import echo_core
from echo_core.load.record import decode_record, encode_record
from echo_core.load.worker import LoadSpec, run_worker
from conftest import SERVER_CPU


def test_a_spec_round_trips_through_json():
    spec = LoadSpec(port=7, mode="stream", payload=4096, cpus=(0,), server_pids=(1, 2), warmup_max=3.0)
    assert LoadSpec.from_json(spec.to_json()) == LoadSpec(**{**spec.__dict__, "cpus": [0], "server_pids": [1, 2]})
    with pytest.raises(ValueError, match="unknown load spec field"):
        LoadSpec.from_json('{"port": 1, "payloads": 3}')


def test_the_record_codec_keeps_numbers_and_turns_non_finite_into_nan():
    back = decode_record(encode_record({"a": 1, "b": float("nan"), "c": float("inf"), "d": "x", "e": 2.5}))
    assert back["a"] == 1 and back["d"] == "x" and back["e"] == 2.5
    assert math.isnan(back["b"]) and math.isnan(back["c"])


def test_a_worker_run_returns_its_record_on_the_reply_pipe():
    with echo_core.Server("epoll", port=0, cpu=SERVER_CPU) as srv:
        record, status, error = run_worker(LoadSpec(port=srv.port, mode="rr", payload=512, connections=2,
                                                    duration=0.3, server_pids=tuple(srv.pids())))
    assert status == 0 and error is None
    assert record["messages"] > 0 and record["mismatches"] == 0 and record["errors"] == 0


def test_bad_input_is_exit_2_with_one_line_and_no_record():
    record, status, error = run_worker(LoadSpec(port=1, payload=0, duration=0.1))
    assert record is None and status == 2
    assert "payload" in error and "\n" not in error


def test_a_refused_connection_is_exit_1_with_the_reason():
    with echo_core.Server("epoll", port=0) as srv:
        port = srv.port
    record, status, error = run_worker(LoadSpec(port=port, duration=0.2))
    assert status == 1 and (record is None or record["errors"] > 0)
