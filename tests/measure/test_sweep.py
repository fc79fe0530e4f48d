"""The sweep engine on real (tiny) benchmark runs: rows, order, validity, incremental writing, statistics, CLI."""

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from echo_core.measure import grids
from echo_core.analysis import report
from echo_core.results import resultsets as results
from echo_core.measure import sweep as runner
from echo_core.analysis import stats
from echo_core.cli import sweep as sweep_cli
from echo_core.results import validity

from conftest import IO_URING_REFUSED

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"sweeps compare io_uring with epoll: {IO_URING_REFUSED}")
TINY = {"duration": 0.3, "warmup": 0.1, "warmup_max": None, "progress": False}
FAULTY = f"exec:{sys.executable} {REPO / 'tests' / 'faulty_echo.py'} --port {{port}}"


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real 8-run sweep: 2 impls x 2 modes x 1 payload x 1 connection count x 2 repeats."""
    out = tmp_path_factory.mktemp("sweep")
    df = runner.sweep(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(512,), connections=(2,),
                      repeats=2, output_dir=out, name="tiny", **TINY)
    return df, out


def test_plan_interleaves_implementations_and_alternates_their_order():
    runs = grids.plan(impls=("uring", "epoll"), modes=("rr",), payloads=(512, 4096), connections=(1, 8), repeats=3)
    assert len(runs) == 2 * 2 * 2 * 3
    pairs = [runs[i:i + 2] for i in range(0, len(runs), 2)]
    for first, second in pairs:  # every cell's impls run back to back
        assert {k: first[k] for k in ("mode", "payload", "connections", "repeat")} == \
               {k: second[k] for k in ("mode", "payload", "connections", "repeat")}
        expected = ["uring", "epoll"] if first["repeat"] % 2 == 0 else ["epoll", "uring"]
        assert [first["impl"], second["impl"]] == expected
    assert [r["repeat"] for r in runs] == sorted(r["repeat"] for r in runs)  # repeat-major


def test_plan_gives_rate_mode_one_cell_per_offered_load():
    runs = grids.plan(("uring", "epoll"), ("rr", "rate"), (512,), (1,), 1, rates=(1000, 5000))
    assert [r["load"] for r in runs if r["mode"] == "rr"] == [None, None]
    assert [r["load"] for r in runs if r["mode"] == "rate"] == [("rate", 1000.0)] * 2 + [("rate", 5000.0)] * 2
    fractions = grids.plan(("epoll",), ("rate",), (512,), (1,), 1)
    assert [r["load"][1] for r in fractions] == list(grids.DEFAULT_LOAD_FRACTIONS)
    with pytest.raises(ValueError, match="not both"):
        grids.plan(("epoll",), ("rate",), (512,), (1,), 1, rates=(1,), load_fractions=(0.5,))


def test_named_grids():
    assert grids.count_runs(grids.grid_params("quick")) == 48
    assert grids.count_runs(grids.grid_params("seed")) == 8 * 5 * 2 * 2 * 3
    assert grids.count_runs(grids.grid_params("latency")) == 2 * 2 * 9 * 2 * 3
    assert grids.GRIDS["seed"]["connections"] == (1, 8, 512, 1000, 10000)
    # Offered loads given as overrides replace the grid's of either kind.
    params = grids.grid_params("latency", rates=[1000.0])
    assert params["rates"] == [1000.0] and "load_fractions" not in params
    with pytest.raises(ValueError, match="unknown grid"):
        runner.sweep_grid("nope")


def test_sweep_writes_one_tidy_valid_row_per_run_in_plan_order(tiny):
    df, out = tiny
    rows = _csv_rows(out / "tiny.csv")
    assert len(rows) == len(df) == 8
    assert [int(r["run_index"]) for r in rows] == list(range(8))
    planned = grids.plan(("uring", "epoll"), ("rr", "stream"), (512,), (2,), 2)
    assert [(r["impl"], r["mode"], int(r["repeat"])) for r in rows] == \
           [(p["impl"], p["mode"], p["repeat"]) for p in planned]
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)
    for column in ("sweep", "run_index", "repeat", "started_at", "wall_s", "impl", "mode", "payload", "connections",
                   "offered_rate", "msgs_per_s", "bytes_per_s", "p50_us", "p99_us", "server_cpu_us_per_msg",
                   "bottleneck", "window_agreement", "warmup_s", "duration_s", "valid", "invalid_reason", "error"):
        assert column in df.columns, column
    assert list(df.columns)[-1] == "error"
    assert (df["sweep"] == "tiny").all() and (df["error"] == "").all()
    assert df["valid"].all(), df["invalid_reason"].tolist()
    assert (df["msgs_per_s"] > 0).all()
    # One window on both sides: the server's bytes out agree with the client's bytes in.
    assert ((df["window_agreement"] - 1).abs() <= validity.STEADY_TOLERANCE).all(), df["window_agreement"].tolist()
    assert df.loc[df["mode"] == "rr", "p50_us"].notna().all()
    assert df.loc[df["mode"] == "rr", "latency_hist"].str.len().gt(0).all()
    # The per-message kernel counters reach the CSV: numbers or NaN, with counters_note saying why.
    for column in ("server_ctx_switches_per_msg", "server_poll_arms_per_msg", "server_completions_per_wait",
                   "server_bytes_per_recv", "server_recv_size_hist", "counters_note"):
        assert column in df.columns, column
    assert (df["server_bytes_per_recv"] > 0).all()


def test_metadata_json_describes_machine_and_sweep(tiny):
    _, out = tiny
    meta = json.loads((out / "tiny.json").read_text())
    assert meta["status"] == "complete" and meta["rows"] == 8 and meta["failed_runs"] == 0
    assert meta["invalid_runs"] == 0
    assert meta["parameters"]["repeats"] == 2 and meta["parameters"]["payloads"] == [512]
    assert meta["started_at"] <= meta["finished_at"]
    m = meta["machine"]
    assert m["kernel"]["release"] == platform.release()
    assert m["cpu"]["count"] == os.cpu_count()
    assert m["io_uring"]["setup_permitted"] in (True, False)
    assert "liburing" in m and "version" in m["liburing"]
    assert isinstance(m["mitigations"]["vulnerabilities"], dict)
    assert m["packages"]["pandas"]
    assert {"tracepoints", "pmu"} <= set(meta["counters"])


def test_summarize_gives_median_and_ci_per_cell(tiny):
    df, _ = tiny
    s = stats.summarize(df)
    assert len(s) == 4 and (s["n"] == 2).all() and (s["n_excluded"] == 0).all()
    for _, rec in s.iterrows():
        cell = df[(df["impl"] == rec["impl"]) & (df["mode"] == rec["mode"])]
        assert rec["msgs_per_s_median"] == pytest.approx(cell["msgs_per_s"].median())
        assert rec["msgs_per_s_ci_low"] <= rec["msgs_per_s_median"] <= rec["msgs_per_s_ci_high"]
        assert rec["msgs_per_s_ci_low"] >= cell["msgs_per_s"].min() - 1e-9
    stream = s[s["mode"] == "stream"]
    assert stream["p50_us_median"].isna().all()  # no latency in stream mode
    one = stats.summarize(df[df["repeat"] == 0])  # one repeat: no interval
    assert (one["n"] == 1).all() and one["msgs_per_s_ci_low"].isna().all()


def test_ratios_pair_the_runs_of_each_repeat(tiny):
    df, _ = tiny
    r = stats.ratios(df)
    assert sorted(r["mode"]) == ["rr", "stream"]
    for _, rec in r.iterrows():
        cell = df[df["mode"] == rec["mode"]].set_index(["repeat", "impl"])["msgs_per_s"]
        per_repeat = [cell[(k, "uring")] / cell[(k, "epoll")] for k in (0, 1)]
        assert rec["n_pairs"] == 2
        assert rec["ratio"] == pytest.approx(sorted(per_repeat)[0] / 2 + sorted(per_repeat)[1] / 2)
        assert rec["ratio_ci_low"] <= rec["ratio"] <= rec["ratio_ci_high"]


def _synthetic(drifts, ratio, extra=None):
    """A results table whose io_uring runs are exactly `ratio` x epoll's in every repeat, under drift."""
    rows = []
    for repeat, drift in enumerate(drifts):
        for impl, value in (("uring", ratio * drift), ("epoll", drift)):
            rows.append({"sweep": "s", "impl": impl, "mode": "rr", "payload": 512, "connections": 1,
                         "repeat": repeat, "msgs_per_s": value * 1000, "server_cpu_us_per_msg": 2.0 if impl == "uring" else 1.0,
                         "bytes": 1000, "valid": True, "invalid_reason": "", "error": ""})
    rows += extra or []
    return results.normalize(pd.DataFrame(rows))


def test_paired_ratio_ci_on_a_table_with_a_known_answer():
    # The machine drifts by 4x between repeats, but within each repeat io_uring is exactly 1.5x epoll.
    df = _synthetic([1.0, 4.0, 2.0, 0.5, 3.0], 1.5)
    (rec,) = stats.ratios(df).to_dict("records")
    assert rec["ratio"] == pytest.approx(1.5)
    assert rec["ratio_ci_low"] == pytest.approx(1.5) and rec["ratio_ci_high"] == pytest.approx(1.5)
    assert rec["n_pairs"] == 5 and rec["cpu_ratio"] == pytest.approx(2.0)
    # Resampling each side independently (the old estimator) would have spread over the drift.
    lo_u, hi_u = stats.bootstrap_median_ci(df.loc[df["impl"] == "uring", "msgs_per_s"])
    lo_e, hi_e = stats.bootstrap_median_ci(df.loc[df["impl"] == "epoll", "msgs_per_s"])
    assert hi_u / lo_e > 2 * 1.5


def test_an_invalid_run_breaks_its_pair_and_is_counted():
    df = _synthetic([1.0, 1.1, 0.9], 2.0)
    df.loc[(df["impl"] == "epoll") & (df["repeat"] == 1), ["valid", "invalid_reason"]] = [False, "3 mismatched bytes"]
    df.loc[(df["impl"] == "epoll") & (df["repeat"] == 1), "msgs_per_s"] = 1e9  # would wreck the ratio if used
    (rec,) = stats.ratios(df).to_dict("records")
    assert rec["n_pairs"] == 2 and rec["n_excluded"] == 1 and rec["ratio"] == pytest.approx(2.0)
    s = stats.summarize(df).set_index("impl")
    assert s.loc["epoll", "n"] == 2 and s.loc["epoll", "n_excluded"] == 1
    assert s.loc["epoll", "msgs_per_s_median"] < 2000
    assert "1 of 6 runs excluded" in results.excluded_note(df) and "mismatched bytes" in results.excluded_note(df)


def test_bottleneck_verdict_on_ties_is_deterministic():
    import itertools

    for votes in itertools.permutations(["client", "server", "client", "server"]):
        assert stats.most_common_verdict(list(votes)) == "server"
    assert stats.most_common_verdict(["none", "client"]) == "client"
    assert stats.most_common_verdict(["none", "none", "both"]) == "none"
    assert stats.most_common_verdict([]) is None


def test_validity_reasons():
    good = {"bytes": 100, "server_bytes_out": 102, "mismatches": 0, "error": ""}
    assert validity.assess(good) == (True, "")
    assert validity.assess({**good, "server_bytes_out": 157})[1].startswith("unsteady: server/client bytes 1.57")
    assert "2 never answered" in validity.assess({**good, "never_answered": 2})[1]
    assert "load generator exit 1" in validity.assess({**good, "load_exit": 1})[1]
    assert validity.assess({**good, "interrupted": True})[0] is False
    assert validity.assess({**good, "error": "RuntimeError: x"})[1] == "error: RuntimeError: x"
    # Counters a server cannot report (external servers) leave the window check open, not failed.
    assert validity.assess({"bytes": 100, "server_bytes_out": float("nan")}) == (True, "")


def test_a_misspelt_keyword_is_a_type_error_before_any_server_starts(tmp_path):
    with pytest.raises(TypeError, match="duratoin"):
        runner.sweep(warmup_max=None, impls=("epoll",), modes=("rr",), payloads=(512,), connections=(1,), output_dir=tmp_path,
                     duratoin=1.0)
    with pytest.raises(TypeError):
        runner.sweep_grid("quick", output_dir=tmp_path, repeat=2)
    assert not list(tmp_path.iterdir())


class _Stop(Exception):
    pass


def test_rows_reach_the_csv_as_they_are_measured(tmp_path):
    seen = []

    def after_row(row):
        seen.append(len(_csv_rows(tmp_path / "cut.csv")))
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        runner.sweep(impls=("epoll", "uring"), modes=("rr",), payloads=(512,), connections=(1, 2), repeats=1,
                     output_dir=tmp_path, name="cut", on_row=after_row, **TINY)
    assert seen == [1, 2]  # each row was on disk before the next run started
    assert len(_csv_rows(tmp_path / "cut.csv")) == 2
    meta = json.loads((tmp_path / "cut.json").read_text())
    assert meta["status"].startswith("failed") and meta["rows"] == 2 and meta["finished_at"]


def test_a_failing_run_becomes_an_invalid_row_with_an_error(tmp_path):
    # buf_count must be a power of two: the server refuses to start, for real.
    df = runner.sweep(impls=("uring", "epoll"), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                      output_dir=tmp_path, name="bad", server_options={"buf_count": 3}, **TINY)
    assert len(df) == 2 and df["error"].str.contains("buf_count").all()
    assert not df["valid"].any() and df["invalid_reason"].str.startswith("error").all()
    s = stats.summarize(df)
    assert (s["n"] == 0).all() and (s["n_excluded"] == 1).all() and s["msgs_per_s_median"].isna().all()
    assert json.loads((tmp_path / "bad.json").read_text())["failed_runs"] == 2
    with pytest.raises(ValueError, match="buf_count"):
        runner.sweep(impls=("epoll",), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                     output_dir=tmp_path, name="bad-raise", server_options={"buf_count": 3}, on_error="raise", **TINY)


@pytest.mark.parametrize("fault, mode", [("flip", "rr"), ("drop", "stream")])
def test_a_corrupting_server_makes_its_rows_invalid_and_they_are_excluded(tmp_path, fault, mode):
    faulty = f"{FAULTY} --fault {fault} --after 2000"
    df = runner.sweep(impls=(faulty, "epoll"), modes=(mode,), payloads=(512,), connections=(2,), repeats=2,
                      output_dir=tmp_path, name=fault, **TINY)
    bad, good = df[df["impl"] == faulty], df[df["impl"] == "epoll"]
    assert len(bad) == 2 and not bad["valid"].any(), bad[["invalid_reason", "error"]].to_dict("records")
    assert bad["invalid_reason"].str.contains("mismatched bytes|never answered").all()
    assert good["valid"].all()
    s = stats.summarize(df).set_index("impl")
    assert s.loc[faulty, "n"] == 0 and s.loc[faulty, "n_excluded"] == 2
    assert math.isnan(s.loc[faulty, "msgs_per_s_median"]) and s.loc["epoll", "n"] == 2
    (rec,) = stats.ratios(df, numerator=faulty, denominator="epoll").to_dict("records")
    assert rec["n_pairs"] == 0 and math.isnan(rec["ratio"]) and rec["n_excluded"] == 2
    assert set(report._prepare(df)["impl"]) == {"epoll"}  # what every chart draws from
    assert "2 of 4 runs excluded" in results.excluded_note(df)
    meta = json.loads((tmp_path / f"{fault}.json").read_text())
    assert meta["invalid_runs"] == 2


def test_a_freezing_server_in_rate_mode_is_invalid_and_its_latency_shows_the_freeze(tmp_path):
    frozen = f"{FAULTY} --fault freeze --after 0.5"
    df = runner.sweep(warmup_max=None, impls=(frozen,), modes=("rate",), payloads=(64,), connections=(4,), repeats=1, rates=(2000,),
                      duration=1.5, warmup=0.1, output_dir=tmp_path, name="freeze", progress=False)
    (row,) = df.to_dict("records")
    assert row["offered_rate"] == 2000 and not row["valid"]
    assert row["unanswered"] > 1000
    # Censored at the window's end: the frozen requests' latency is at least (window end - scheduled time).
    assert row["p99_us"] >= 0.5e6
    assert stats.latency_vs_load(df)["n"].tolist() == [0]


def test_rate_sweep_at_load_fractions_measures_capacity_first(tmp_path):
    df = runner.sweep(impls=("uring", "epoll"), modes=("rate",), payloads=(512,), connections=(2,), repeats=1,
                      load_fractions=(0.2, 0.5), output_dir=tmp_path, name="lat", **TINY)
    assert len(df) == 4 and df["valid"].all(), df["invalid_reason"].tolist()
    cap = df["capacity_msgs_per_s"].iloc[0]
    assert cap > 0 and (df["capacity_msgs_per_s"] == cap).all()
    assert sorted(set(df["offered_rate"])) == pytest.approx([0.2 * cap, 0.5 * cap], rel=1e-3)
    meta = json.loads((tmp_path / "lat.json").read_text())
    assert {r["impl"] for r in meta["capacity_runs"]} == {"uring", "epoll"}
    curves = stats.latency_vs_load(df)
    assert len(curves) == 4 and (curves["n"] == 1).all()
    assert (curves["p50_us"] <= curves["p99_us"]).all() and (curves["p99_us"] <= curves["p999_us"]).all()
    # Far below capacity the generator keeps up with the offered load (a loose band).
    assert (curves["achieved_fraction"] > 0.7).all(), curves["achieved_fraction"].tolist()
    paths = report.save_charts(df, tmp_path, "lat")
    assert set(paths) == {"latency-load"} and paths["latency-load"].stat().st_size > 1000


def test_latency_curves_stop_at_saturation_and_knees_mark_the_last_good_load():
    curves = pd.DataFrame({"impl": "uring", "payload": 512, "connections": 64,
                           "offered_rate": [100.0, 200.0, 300.0, 400.0, 500.0],
                           "n": [3, 3, 3, 0, 3], "achieved": [100.0, 200.0, 240.0, math.nan, 200.0],
                           "achieved_fraction": [1.0, 1.0, 0.8, math.nan, 0.4],
                           "p99_us": [100.0, 250.0, 5000.0, math.nan, 9000.0]})
    kept, left_out = stats.up_to_saturation(curves)
    assert kept["offered_rate"].tolist() == [100.0, 200.0, 300.0] and left_out == 2
    (knee,) = stats.knees(curves).to_dict("records")
    assert knee["knee_offered"] == 200.0 and knee["knee_achieved"] == 200.0


def test_adaptive_repeats_stop_at_the_target_or_the_maximum(tmp_path):
    common = dict(impls=("uring", "epoll"), modes=("rr",), payloads=(512,), connections=(1,), repeats=2,
                  output_dir=tmp_path, **TINY)
    df = runner.sweep(name="tight", target_ci=1e-6, max_repeats=3, **common)
    meta = json.loads((tmp_path / "tight.json").read_text())["adaptive"]
    assert len(df) == 6 and sorted(set(df["repeat"])) == [0, 1, 2]
    assert meta["repeats_run"] == 3 and meta["cells"][0]["pairs"] == 3 and meta["cells"][0]["met"] is False
    df = runner.sweep(name="loose", target_ci=0.9, max_repeats=5, **common)
    meta = json.loads((tmp_path / "loose.json").read_text())["adaptive"]
    assert len(df) == 4 and meta["repeats_run"] == 2 and meta["cells"][0]["met"] is True
    with pytest.raises(ValueError, match="max_repeats"):
        runner.sweep(name="x", target_ci=0.1, max_repeats=1, **common)


def _children(marker):
    """Live child processes of this test process whose command line contains marker."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and marker in cmdline:
            out.append(int(pid))
    return out


@pytest.mark.parametrize("victim, reason", [("echo_core serve", "uring server was killed by SIGKILL"),
                                            ("echo_core.load.worker", "load generator was killed by SIGKILL")])
def test_a_sweep_survives_a_process_killed_mid_run(tmp_path, victim, reason):
    import signal
    import threading
    import time

    killed = []

    def killer():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            pids = _children(victim)
            if pids:
                time.sleep(0.5)  # well inside the first run's window
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    df = runner.sweep(warmup_max=None, impls=("uring", "epoll"), modes=("rr",), payloads=(512,), connections=(2,), repeats=1,
                      duration=1.0, warmup=0.1, output_dir=tmp_path, name="killed", progress=False)
    thread.join(timeout=5)
    assert killed
    first, second = df.to_dict("records")
    assert reason in first["error"] and not first["valid"], first["error"]
    assert second["impl"] == "epoll" and second["valid"], second["invalid_reason"]  # a fresh server, a good run
    assert not _children("echo_core serve")  # nothing left behind


def test_resume_continues_the_same_result_set_and_skips_valid_runs(tmp_path):
    common = dict(impls=("uring", "epoll"), modes=("rr",), payloads=(512,), connections=(1, 2), repeats=1,
                  output_dir=tmp_path, name="cut", **TINY)

    def stop_after_two(row):
        if row["run_index"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        runner.sweep(on_row=stop_after_two, **common)
    rows = _csv_rows(tmp_path / "cut.csv")
    assert len(rows) == 2
    # Pretend the first run had been recorded invalid: resuming must run it again.
    rows[0]["valid"], rows[0]["invalid_reason"] = "False", "1 mismatched bytes"
    with open(tmp_path / "cut.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--resume", "cut", "--output-dir", str(tmp_path),
                           "--quiet", "--no-plots"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    df = results.load_csv(tmp_path / "cut.csv")
    assert df["run_index"].tolist() == [0, 1, 2, 3, 4]
    planned = {(r["impl"], r["connections"]) for r in grids.plan(("uring", "epoll"), ("rr",), (512,), (1, 2), 1)}
    assert {(r.impl, r.connections) for r in df[df["valid"]].itertuples()} == planned
    assert (df.iloc[2]["impl"], df.iloc[2]["connections"]) == (rows[0]["impl"], int(rows[0]["connections"]))
    assert len(df[df["valid"]]) == 4 and not df.iloc[0]["valid"]
    meta = json.loads((tmp_path / "cut.json").read_text())
    assert meta["status"] == "complete" and meta["rows"] == 5 and len(meta["resumed"]) == 1
    assert meta["resumed"][0]["runs_skipped"] == 1
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        runner.resume_sweep("nope", output_dir=tmp_path)


def test_csv_header_widens_when_a_later_row_has_new_columns(tmp_path):
    writer = runner._CsvAppender(tmp_path / "w.csv", leading=["run_index"])
    writer.write({"run_index": 0, "impl": "uring", "mode": "rr", "payload": 1, "connections": 1,
                  "error": "RuntimeError: boom"})
    writer.write({"run_index": 1, "impl": "epoll", "mode": "rr", "payload": 1, "connections": 1,
                  "msgs_per_s": 12.5, "bytes": 10, "error": ""})
    df = results.load_csv(tmp_path / "w.csv")
    assert list(df.columns)[:7] == ["sweep", "run_index", "impl", "mode", "payload", "connections", "msgs_per_s"]
    assert df["error"].tolist() == ["RuntimeError: boom", ""]
    assert math.isnan(df["msgs_per_s"][0]) and df["msgs_per_s"][1] == 12.5
    # A CSV written without validity columns gets them from the same rules.
    assert df["valid"].tolist() == [False, True]


def test_pooling_result_sets_with_different_windows_is_reported():
    metas = {"a": {"parameters": {"duration": 2.0, "warmup": 0.5}}, "b": {"parameters": {"duration": 1.5, "warmup": 0.5}}}
    (text,) = results.pooling_differences(metas)
    assert "window" in text and "a=2.0" in text and "b=1.5" in text
    assert results.pooling_differences({"a": metas["a"], "c": metas["a"]}) == []


def test_an_explicit_name_is_never_overwritten(tiny):
    _, out = tiny
    with pytest.raises(FileExistsError):
        runner.sweep(impls=("epoll",), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                     output_dir=out, name="tiny", **TINY)


def test_notebook_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert results.resolve_notebook_path("../data") == REPO / "data"
    assert results.resolve_notebook_path(tmp_path / "x") == tmp_path / "x"


def test_sweep_command_writes_csv_json_and_charts(tmp_path, capsys):
    parser = sweep_cli.add_sweep_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--grid", "quick", "--payloads", "512", "--connections", "1,2", "--modes", "rr",
                              "--repeats", "1", "--duration", "0.3", "--warmup", "0.1", "--quiet",
                              "--output-dir", str(tmp_path), "--name", "cli"])
    assert sweep_cli.sweep_command(args) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli.csv") in printed and "runs valid" in printed
    assert len(_csv_rows(tmp_path / "cli.csv")) == 4
    for chart in ("throughput", "latency", "server-cpu", "ratio", "ratio-heatmap"):
        png = tmp_path / f"cli-{chart}.png"
        assert png.stat().st_size > 1000, chart


def test_charts_are_redrawn_from_the_csv_alone(tiny, tmp_path):
    _, out = tiny
    csv_copy = tmp_path / "tiny.csv"
    csv_copy.write_bytes((out / "tiny.csv").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "echo_core", "charts", str(csv_copy)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tiny-ratio-heatmap.png").stat().st_size > 1000 and "all 8 runs valid" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "echo_core", "charts", str(tmp_path / "nope.csv")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such result set")


def test_python_m_echo_core_sweep_in_rate_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--payloads", "512", "--connections", "1",
                           "--modes", "rate", "--rates", "2000,4000", "--repeats", "1", "--duration", "0.3",
                           "--warmup", "0.1", "--quiet", "--output-dir", str(tmp_path), "--name", "m"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = _csv_rows(tmp_path / "m.csv")
    assert len(rows) == 4 and sorted({float(r["offered_rate"]) for r in rows}) == [2000.0, 4000.0]
    assert (tmp_path / "m.json").exists() and (tmp_path / "m-latency-load.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--rates", "1,x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "error:" in bad.stderr
