"""run_benchmark: a pinned server and a pinned load process give one row with both sides' CPU."""

import math

import pytest

from echo_core.measure.benchmark import SATURATED, bottleneck, run_benchmark
from echo_core.results.validity import STEADY_TOLERANCE

ROW_KEYS = {"impl", "mode", "payload", "connections", "duration_s", "msgs_per_s", "bytes_per_s",
            "p50_us", "p99_us", "p999_us", "max_us", "fairness", "mismatches", "errors",
            "client_cpu_s", "server_cpu_s", "server_cpu_user_s", "server_cpu_sys_s", "server_util",
            "client_util", "bottleneck", "server_syscalls_per_msg", "server_ops_per_msg",
            "server_cpu_us_per_msg", "server_loop_iterations", "server_wait_calls", "server_enobufs",
            # issue 9's per-message counters (NaN where not countable, counters_note says why)
            "server_ctx_switches_per_msg", "server_minor_faults_per_msg", "server_completions_per_wait",
            "server_bytes_per_recv", "server_sends_per_msg", "server_recv_size_hist", "server_poll_arms_per_msg",
            "server_task_work_per_msg", "server_wait_syscalls_per_msg", "server_cycles_per_msg", "counters_note"}


@pytest.mark.parametrize("mode", ["rr", "stream"])
def test_run_benchmark_row(impl, mode):
    row = run_benchmark(impl, mode, 2048, 4, duration=0.6, warmup=0.2, warmup_max=3.0)
    assert ROW_KEYS <= set(row)
    assert row["impl"] == impl and row["mode"] == mode
    assert row["mismatches"] == 0 and row["errors"] == 0
    assert row["messages"] > 100
    assert 0.2 <= row["warmup_s"] <= 3.0 + 0.2
    # The server's counters and CPU cover the same window as the client's record, taken by the load
    # generator itself at its window's edges: a steady window agrees within the tolerance.
    assert row["server_bytes_out"] > 0 and row["server_cpu_s"] > 0
    assert row["window_agreement"] == pytest.approx(row["server_bytes_out"] / row["bytes"])
    assert abs(row["window_agreement"] - 1) <= STEADY_TOLERANCE, row["window_agreement"]
    assert row["valid"] is True and row["invalid_reason"] == "" and row["load_exit"] == 0
    assert 0 < row["server_util"] <= 1.1 and 0 < row["client_util"] <= 1.1
    assert row["bottleneck"] in {"server", "client", "both", "none"}
    if impl == "uring":
        # io_uring's operations are queue entries: at most one io_uring_enter each (fewer when a turn
        # reaps several completions; equal when the load brings one completion a turn).
        assert 0 < row["server_syscalls_per_msg"] <= row["server_ops_per_msg"]
    else:
        assert row["server_syscalls_per_msg"] >= row["server_ops_per_msg"]
    if mode == "rr":
        assert 0 < row["p50_us"] <= row["p99_us"] <= row["max_us"]
    else:
        assert math.isnan(row["p50_us"])
        # Stream throughput is the byte rate in payload units, not a count quantized per connection.
        assert row["msgs_per_s"] == pytest.approx(row["bytes_per_s"] / 2048)


def test_bottleneck_names_the_saturated_side():
    busy, idle = SATURATED + 0.05, SATURATED - 0.3
    assert bottleneck(busy, idle) == "server"
    assert bottleneck(idle, busy) == "client"
    assert bottleneck(busy, busy) == "both"
    assert bottleneck(idle, idle) == "none"
    assert bottleneck(float("nan"), idle) == "unknown"


def test_run_benchmark_rejects_bad_input():
    with pytest.raises(ValueError):
        run_benchmark("uring", "rr", 0, 1, duration=0.2)
    with pytest.raises(ValueError):
        run_benchmark("nope", "rr", 64, 1, duration=0.2)
