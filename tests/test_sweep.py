"""The sweep engine on real (tiny) benchmark runs: rows, order, incremental writing, statistics, CLI glue."""

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from echo_core import sweeps as sw

REPO = Path(__file__).resolve().parent.parent
TINY = {"duration": 0.3, "warmup": 0.1, "progress": False}


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real 8-run sweep: 2 impls x 2 modes x 1 payload x 1 connection count x 2 repeats."""
    out = tmp_path_factory.mktemp("sweep")
    df = sw.sweep(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(512,), connections=(2,),
                  repeats=2, output_dir=out, name="tiny", **TINY)
    return df, out


def test_plan_interleaves_implementations_and_alternates_their_order():
    runs = sw.plan(impls=("uring", "epoll"), modes=("rr",), payloads=(512, 4096), connections=(1, 8), repeats=3)
    assert len(runs) == 2 * 2 * 2 * 3
    pairs = [runs[i:i + 2] for i in range(0, len(runs), 2)]
    for first, second in pairs:  # every cell's impls run back to back
        assert {k: first[k] for k in ("mode", "payload", "connections", "repeat")} == \
               {k: second[k] for k in ("mode", "payload", "connections", "repeat")}
        expected = ["uring", "epoll"] if first["repeat"] % 2 == 0 else ["epoll", "uring"]
        assert [first["impl"], second["impl"]] == expected
    assert [r["repeat"] for r in runs] == sorted(r["repeat"] for r in runs)  # repeat-major


def test_named_grids():
    assert sw.grid_runs("quick") == 48
    assert sw.grid_runs("seed") == 8 * 5 * 2 * 2 * 3
    assert sw.GRIDS["seed"]["connections"] == (1, 8, 512, 1000, 10000)
    with pytest.raises(ValueError, match="unknown grid"):
        sw.sweep_grid("nope")


def test_sweep_writes_one_tidy_row_per_run_in_plan_order(tiny):
    df, out = tiny
    rows = _csv_rows(out / "tiny.csv")
    assert len(rows) == len(df) == 8
    assert [int(r["run_index"]) for r in rows] == list(range(8))
    planned = sw.plan(("uring", "epoll"), ("rr", "stream"), (512,), (2,), 2)
    assert [(r["impl"], r["mode"], int(r["repeat"])) for r in rows] == \
           [(p["impl"], p["mode"], p["repeat"]) for p in planned]
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)
    for column in ("run_index", "repeat", "started_at", "wall_s", "impl", "mode", "payload", "connections",
                   "msgs_per_s", "bytes_per_s", "p50_us", "p99_us", "server_cpu_us_per_msg", "bottleneck", "error"):
        assert column in df.columns, column
    assert (df["error"] == "").all(), df["error"].tolist()
    assert (df["msgs_per_s"] > 0).all()
    assert df.loc[df["mode"] == "rr", "p50_us"].notna().all()


def test_metadata_json_describes_machine_and_sweep(tiny):
    _, out = tiny
    meta = json.loads((out / "tiny.json").read_text())
    assert meta["status"] == "complete" and meta["rows"] == 8 and meta["failed_runs"] == 0
    assert meta["parameters"]["repeats"] == 2 and meta["parameters"]["payloads"] == [512]
    assert meta["started_at"] <= meta["finished_at"]
    m = meta["machine"]
    assert m["kernel"]["release"] == platform.release()
    assert m["cpu"]["count"] == os.cpu_count()
    assert m["io_uring"]["setup_permitted"] in (True, False)
    assert "liburing" in m and "version" in m["liburing"]
    assert isinstance(m["mitigations"]["vulnerabilities"], dict)
    assert m["packages"]["pandas"]


def test_summarize_gives_median_and_ci_per_cell(tiny):
    df, _ = tiny
    s = sw.summarize(df)
    assert len(s) == 4 and (s["n"] == 2).all() and (s["n_failed"] == 0).all()
    for _, rec in s.iterrows():
        cell = df[(df["impl"] == rec["impl"]) & (df["mode"] == rec["mode"])]
        assert rec["msgs_per_s_median"] == pytest.approx(cell["msgs_per_s"].median())
        assert rec["msgs_per_s_ci_low"] <= rec["msgs_per_s_median"] <= rec["msgs_per_s_ci_high"]
        assert rec["msgs_per_s_ci_low"] >= cell["msgs_per_s"].min() - 1e-9
    stream = s[s["mode"] == "stream"]
    assert stream["p50_us_median"].isna().all()  # no latency in stream mode
    one = sw.summarize(df[df["repeat"] == 0])  # one repeat: no interval
    assert (one["n"] == 1).all() and one["msgs_per_s_ci_low"].isna().all()


def test_ratios_are_uring_over_epoll_medians(tiny):
    df, _ = tiny
    r = sw.ratios(df)
    assert sorted(r["mode"]) == ["rr", "stream"]
    for _, rec in r.iterrows():
        cell = df[df["mode"] == rec["mode"]]
        uring = cell.loc[cell["impl"] == "uring", "msgs_per_s"].median()
        epoll = cell.loc[cell["impl"] == "epoll", "msgs_per_s"].median()
        assert rec["ratio"] == pytest.approx(uring / epoll)
        assert rec["ratio_ci_low"] <= rec["ratio"] <= rec["ratio_ci_high"]


class _Stop(Exception):
    pass


def test_rows_reach_the_csv_as_they_are_measured(tmp_path):
    seen = []

    def after_row(row):
        seen.append(len(_csv_rows(tmp_path / "cut.csv")))
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        sw.sweep(impls=("epoll", "uring"), modes=("rr",), payloads=(512,), connections=(1, 2), repeats=1,
                 output_dir=tmp_path, name="cut", on_row=after_row, **TINY)
    assert seen == [1, 2]  # each row was on disk before the next run started
    assert len(_csv_rows(tmp_path / "cut.csv")) == 2
    meta = json.loads((tmp_path / "cut.json").read_text())
    assert meta["status"].startswith("failed") and meta["rows"] == 2 and meta["finished_at"]


def test_a_failing_run_becomes_a_row_with_an_error(tmp_path):
    # buf_count must be a power of two: the server refuses to start, for real.
    df = sw.sweep(impls=("uring", "epoll"), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                  output_dir=tmp_path, name="bad", server_options={"buf_count": 3}, **TINY)
    assert len(df) == 2 and df["error"].str.contains("buf_count").all()
    s = sw.summarize(df)
    assert (s["n"] == 0).all() and (s["n_failed"] == 1).all() and s["msgs_per_s_median"].isna().all()
    assert json.loads((tmp_path / "bad.json").read_text())["failed_runs"] == 2
    with pytest.raises(ValueError, match="buf_count"):
        sw.sweep(impls=("epoll",), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                 output_dir=tmp_path, name="bad-raise", server_options={"buf_count": 3}, on_error="raise", **TINY)


def test_csv_header_widens_when_a_later_row_has_new_columns(tmp_path):
    writer = sw._CsvAppender(tmp_path / "w.csv", leading=["run_index"])
    writer.write({"run_index": 0, "impl": "uring", "error": "RuntimeError: boom"})
    writer.write({"run_index": 1, "impl": "epoll", "msgs_per_s": 12.5, "error": ""})
    df = sw.load_csv(tmp_path / "w.csv")
    assert list(df.columns) == ["run_index", "impl", "msgs_per_s", "error"]
    assert df["error"].tolist() == ["RuntimeError: boom", ""]
    assert math.isnan(df["msgs_per_s"][0]) and df["msgs_per_s"][1] == 12.5


def test_an_explicit_name_is_never_overwritten(tiny):
    _, out = tiny
    with pytest.raises(FileExistsError):
        sw.sweep(impls=("epoll",), modes=("rr",), payloads=(512,), connections=(1,), repeats=1,
                 output_dir=out, name="tiny", **TINY)


def test_notebook_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sw.resolve_notebook_path("../data") == REPO / "data"
    assert sw.resolve_notebook_path(tmp_path / "x") == tmp_path / "x"


def test_sweep_command_writes_csv_json_and_charts(tmp_path, capsys):
    parser = sw.add_sweep_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--grid", "quick", "--payloads", "512", "--connections", "1,2", "--modes", "rr",
                              "--repeats", "1", "--duration", "0.3", "--warmup", "0.1", "--quiet",
                              "--output-dir", str(tmp_path), "--name", "cli"])
    assert sw.sweep_command(args) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli.csv") in printed
    assert len(_csv_rows(tmp_path / "cli.csv")) == 4
    for chart in ("throughput", "latency", "server-cpu", "ratio", "ratio-heatmap"):
        png = tmp_path / f"cli-{chart}.png"
        assert png.stat().st_size > 1000, chart


def test_python_m_echo_core_sweep(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--payloads", "512", "--connections", "1",
                           "--modes", "rr", "--repeats", "1", "--duration", "0.3", "--warmup", "0.1",
                           "--no-plots", "--quiet", "--output-dir", str(tmp_path), "--name", "m"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(_csv_rows(tmp_path / "m.csv")) == 2 and (tmp_path / "m.json").exists()
