"""Client designs and server work as sweep dimensions, the verdict per cell over them, and the
confirmatory protocol (winners fixed in advance, re-measured on fresh runs)."""

import json

import pandas as pd
import pytest

from echo_core.analysis import ablation, report, stats
from echo_core.cli import sweep as sweep_cli
from echo_core.measure import grids
from echo_core.measure import sweep as runner
from echo_core.results import resultsets

from conftest import IO_URING_REFUSED

TINY = {"duration": 0.3, "warmup": 0.1, "warmup_max": None, "progress": False}


def _table(ratios_by_variant, repeats=4, impls=("uring", "epoll"), cell=("rr", 512, 1)):
    """Runs whose numerator is exactly ratio x the denominator in every repeat, per (client, work)."""
    rows = []
    for (client, work), ratio in ratios_by_variant.items():
        for repeat in range(repeats):
            drift = 1 + repeat / 3
            for impl, value in ((impls[0], ratio * drift), (impls[1], drift)):
                rows.append({"sweep": "s", "impl": impl, "client": client, "work": work, "mode": cell[0],
                             "payload": cell[1], "connections": cell[2], "repeat": repeat,
                             "msgs_per_s": value * 1000, "valid": True, "invalid_reason": "", "error": ""})
    return resultsets.normalize(pd.DataFrame(rows))


@pytest.mark.parametrize("variants, verdict", [
    ({("epoll-et", "none"): 1.3, ("epoll-lt", "none"): 1.2, ("threads", "none"): 1.1}, "io_uring better"),
    ({("epoll-et", "none"): 0.8, ("epoll-lt", "none"): 0.7}, "epoll better"),
    ({("epoll-et", "none"): 1.3, ("epoll-lt", "none"): 0.7}, "depends on the client"),
    ({("epoll-et", "none"): 1.3, ("epoll-et", "touch"): 0.7}, "depends on the work"),
])
def test_the_verdict_of_a_cell_says_whether_the_clients_agree(variants, verdict):
    (rec,) = stats.verdicts(_table(variants), "uring", "epoll").to_dict("records")
    assert rec["verdict"] == verdict
    assert rec["n_variants"] == len(variants)
    assert rec["ratio_min"] == pytest.approx(min(variants.values()))


def test_a_ci_spanning_one_is_no_difference_and_too_few_pairs_is_said():
    df = _table({("epoll-et", "none"): 1.0})
    # Break the exact ratio: two repeats above, two below 1.
    df.loc[(df["impl"] == "uring") & (df["repeat"] < 2), "msgs_per_s"] *= 1.1
    df.loc[(df["impl"] == "uring") & (df["repeat"] >= 2), "msgs_per_s"] *= 0.9
    assert stats.verdicts(df, "uring", "epoll")["verdict"].tolist() == ["no difference"]
    one = _table({("epoll-et", "none"): 1.5}, repeats=1)
    assert stats.verdicts(one, "uring", "epoll")["verdict"].tolist() == ["not enough runs"]


def test_fixed_winners_pick_one_spec_per_base_for_all_cells():
    # uring+mshot wins one cell by far, uring+mshot+bundle wins the other two a little: the fixed
    # choice is the best median over cells, not the best per cell.
    parts = []
    for cell, ratios in ((("rr", 512, 1), (2.0, 1.1)), (("rr", 512, 8), (0.9, 1.1)), (("stream", 512, 8), (0.9, 1.1))):
        for spec, ratio in zip(("uring+mshot", "uring+mshot+bundle"), ratios):
            parts.append(_table({("epoll-et", "none"): ratio}, impls=(spec, "epoll"), cell=cell))
        parts.append(_table({("epoll-et", "none"): 0.95}, impls=("epoll(spin_us=50)", "epoll"), cell=cell))
    df = pd.concat(parts, ignore_index=True).drop_duplicates(subset=["impl", "mode", "payload", "connections", "repeat"])
    chosen = ablation.fixed_winners(df)
    assert (chosen["uring"], chosen["epoll"]) == ("uring+mshot+bundle", "epoll")
    assert chosen["scores"]["uring+mshot"] == pytest.approx(0.9)


def test_plan_runs_every_client_and_work_inside_each_cell():
    runs = grids.plan(("uring", "epoll"), ("rr", "rate"), (512,), (8, 2000), 1, rates=(1000,),
                      clients=("epoll-et", "threads"), works=("none", "touch"))
    threads = [r for r in runs if r["client"] == "threads"]
    # The blocking client runs no rate cell and no cell beyond its connection limit.
    assert {(r["mode"], r["connections"]) for r in threads} == {("rr", 8)}
    assert len(runs) == 2 * 2 * (4 + 1)  # works x impls x (epoll-et: 4 cells, threads: 1)
    keys = {runner._plan_key(r) for r in runs}
    assert len(keys) == len(runs)  # client and work tell runs apart (resume)


def test_old_result_sets_read_as_the_default_client_without_work():
    df = resultsets.normalize(pd.DataFrame([{"impl": "epoll", "mode": "rr", "payload": 1, "connections": 1}]))
    assert (df["client"].iloc[0], df["work"].iloc[0]) == ("epoll-et", "none")


def test_bad_clients_and_works_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown client"):
        runner.sweep(clients=("curl",), output_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="work"):
        runner.sweep(works=("parse",), output_dir=tmp_path, **TINY)
    with pytest.raises(FileNotFoundError, match="cannot confirm"):
        runner.confirm_sweep("nope", output_dir=tmp_path)
    parser = sweep_cli.add_sweep_arguments(__import__("argparse").ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--clients", "curl"])


def test_a_sweep_no_client_design_can_run_is_a_one_line_error(tmp_path):
    from echo_core.load.generator import MAX_THREADS_CONNECTIONS
    assert not grids.client_runs("threads", "rr", MAX_THREADS_CONNECTIONS + 1)
    with pytest.raises(ValueError, match="nothing to run"):
        runner.sweep(impls=("epoll",), modes=("rr",), payloads=(512,), connections=(MAX_THREADS_CONNECTIONS + 1,),
                     repeats=1, clients=("threads",), output_dir=tmp_path, name="skip", **TINY)
    assert not (tmp_path / "skip.json").exists()


@pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"compares io_uring with epoll: {IO_URING_REFUSED}")
def test_a_sweep_over_clients_and_works_then_its_confirmation(tmp_path):
    df = runner.sweep(impls=("uring", "uring+mshot", "epoll"), modes=("rr",), payloads=(512,), connections=(2,),
                      repeats=1, clients=("epoll-lt", "threads"), works=("none", "touch"),
                      output_dir=tmp_path, name="explore", **TINY)
    assert len(df) == 3 * 2 * 2 and df["valid"].all(), df["invalid_reason"].tolist()
    assert set(df["client"]) == {"epoll-lt", "threads"} and set(df["work"]) == {"none", "touch"}
    meta = json.loads((tmp_path / "explore.json").read_text())
    assert meta["parameters"]["clients"] == ["epoll-lt", "threads"]

    confirmed = runner.confirm_sweep("explore", output_dir=tmp_path, repeats=2, clients=("epoll-et", "threads"),
                                     confirm_name="check", progress=False, duration=0.3, warmup=0.1, warmup_max=None)
    link = confirmed.attrs["metadata"]["confirms"]
    assert link["set"] == "explore" and link["rule"].startswith("per base")
    assert len(set(confirmed["impl"])) == 2 and set(map(lambda i: i.split("+")[0].split("(")[0], confirmed["impl"])) == {"uring", "epoll"}
    assert len(confirmed) == 2 * 2 * 2 and confirmed["valid"].all()
    assert json.loads((tmp_path / "check.json").read_text())["confirms"]["impls"] == link["impls"]
    # Resuming a confirmatory set (nothing left to run here) keeps its link.
    runner.resume_sweep("check", output_dir=tmp_path, progress=False)
    resumed = json.loads((tmp_path / "check.json").read_text())
    assert resumed["confirms"] == link and len(resumed["resumed"]) == 1
    # The headline chart: the verdict over the clients.
    assert report.applicable_charts(confirmed)[0] == "verdict"
    assert set(stats.verdicts(confirmed, *stats.base_pair(confirmed))["verdict"]) <= set(stats.VERDICTS)


def test_latency_percentiles_pool_the_histograms_and_bound_them():
    from echo_core.results import histogram

    def hist(center, n=2000):
        low = 900 + center  # bucket indexes around a value: a narrow bump
        return histogram.encode({low: n // 2, low + 1: n // 2, low + 40: n // 100})

    rows = [{"sweep": "s", "impl": "epoll", "mode": "rr", "payload": 512, "connections": 1, "repeat": r,
             "msgs_per_s": 1000, "latency_hist": hist(c), "valid": True, "invalid_reason": "", "error": ""}
            for r, c in enumerate((0, 2, 4))]
    df = resultsets.normalize(pd.DataFrame(rows))
    (rec,) = stats.latency_percentiles(df).to_dict("records")
    merged = histogram.merge([r["latency_hist"] for r in rows])
    assert rec["p50_us"] == pytest.approx(histogram.quantile(merged, 0.5))
    assert rec["p99_us"] == pytest.approx(histogram.quantile(merged, 0.99))
    assert rec["p50_us_ci_low"] <= rec["p50_us"] <= rec["p50_us_ci_high"]
    assert rec["p50_us_ci_low"] < rec["p50_us_ci_high"]  # the repeats differ: the CI says so
    assert rec["samples"] == histogram.count(merged) and rec["n"] == 3
    one = stats.latency_percentiles(df[df["repeat"] == 0]).iloc[0]
    assert one["p50_us"] == one["p50_us"] and one["p50_us_ci_low"] != one["p50_us_ci_low"]  # NaN: one run
    table = report.latency_ci_table(df)
    assert "p50 µs [95 % CI]" in table.columns and len(table) == 1


def test_verdict_and_ratio_tables_of_a_confirmatory_set():
    df = _table({("epoll-et", "none"): 1.3, ("threads", "none"): 0.7}, impls=("uring+mshot", "epoll(spin_us=50)"))
    assert stats.base_pair(df) == ("uring+mshot", "epoll(spin_us=50)")
    assert report.verdict_table(df)["verdict"].tolist() == ["depends on the client"]
    table = report.ratio_table(df)
    assert list(table.index.names) == ["client", "mode", "payload", "connections"]
    assert sorted(table["ratio"].round(2)) == [0.7, 1.3]
