"""Explaining a cell: the explain notebook under papermill, the words and tables explain.py makes from a
real profile's numbers, and the report's explain section over the committed profiles."""

import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import IO_URING_REFUSED, PERF_UNAVAILABLE
from echo_core.profiling import explain
from echo_core.profiling import profile
from echo_core.profiling import charts as profile_charts
from echo_core.results.schema import COUNTERS
from echo_core.results import schema

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "data" / "profiles"


pytestmark = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"explaining compares io_uring with epoll: {IO_URING_REFUSED}")


def _outputs(notebook_path):
    nb = nbformat.read(notebook_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     + str(o.get("data", {}).get("text/html", "")) for c in code for o in c.get("outputs", []))
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    svgs = sum("image/svg+xml" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    return errors, text, images, svgs


def test_explain_notebook_is_stored_clean():
    nb = nbformat.read(REPO / "notebooks" / "explain.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.metadata.kernelspec.name == "python3"
    assert all(not c.outputs and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ("mode", "payload", "connections", "impls", "duration", "output_dir"):
        assert f"\n{name} = " in "\n" + params[0].source, name


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """papermill notebooks/explain.ipynb on a tiny cell, from the repository root as a user would."""
    if PERF_UNAVAILABLE:
        pytest.skip(f"no profiles here: {PERF_UNAVAILABLE}")
    tmp = tmp_path_factory.mktemp("explain")
    out_dir, out_nb = tmp / "profile", tmp / "explain-out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "notebooks/explain.ipynb", str(out_nb), "-p", "mode", "rr",
           "-p", "payload", "512", "-p", "connections", "4", "-p", "duration", "0.5", "-p", "repeats", "1",
           "-p", "output_dir", str(out_dir), "--no-progress-bar"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir, out_nb


def test_explain_notebook_says_in_words_where_the_cpu_goes(explained):
    out_dir, out_nb = explained
    errors, text, images, svgs = _outputs(out_nb)
    assert not errors
    prof = profile.load_profile(out_dir)
    assert set(prof.impls) == {"uring", "epoll"}
    # The words are generated from this run's numbers: the headline and the top differences appear verbatim.
    assert explain.headline(prof) in text
    for sentence in profile.difference_sentences(prof, n=3):
        assert sentence in text
    assert "poll arms/msg" in text  # the counters table
    assert images >= 2 and svgs == 2  # top functions + subsystems charts; one flame graph per implementation
    for impl in prof.impls:
        assert (out_dir / f"{impl}.folded").stat().st_size > 0


def test_counter_table_is_the_median_of_the_valid_runs(explained):
    prof = profile.load_profile(explained[0])
    table = explain.counter_table(prof)
    rows = explain.run_rows(prof)
    for impl in prof.impls:
        mine = rows[(rows["impl"] == impl) & rows["valid"].astype(bool)]
        for column in ("msgs_per_s", "server_cpu_us_per_msg", "server_ctx_switches_per_msg"):
            assert table.loc[schema.FIGURES[column], impl] == pytest.approx(mine[column].median())
    ratio = table.loc["server CPU µs/msg"]
    assert ratio["ratio"] == pytest.approx(ratio["uring"] / ratio["epoll"])
    # rr: io_uring submits at least one request per echoed message; epoll submits none.
    if math.isfinite(table.loc[COUNTERS["server_submit_reqs_per_msg"], "uring"]):
        assert table.loc[COUNTERS["server_submit_reqs_per_msg"], "uring"] >= 1
        assert table.loc[COUNTERS["server_submit_reqs_per_msg"], "epoll"] == 0


# ------------------------------------------------------------------- the committed profiles

def _committed_profiles():
    profiles = explain.saved_profiles(PROFILES)
    if not profiles:
        pytest.skip("no committed profiles in data/profiles (make explain)")
    return profiles


def test_largest_gaps_rank_by_throughput_or_cpu_ratio():
    profiles = _committed_profiles()
    ranked = list(explain.largest_gaps(profiles, n=len(profiles)).values())
    gaps = [explain.gap(p) for p in ranked]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0
    top = ranked[0]
    a, b = (top.meta["impls"][i] for i in top.impls[:2])
    assert gaps[0] == pytest.approx(max(abs(math.log(a["msgs_per_s"] / b["msgs_per_s"])),
                                        abs(math.log(a["server_cpu_us_per_msg"] / b["server_cpu_us_per_msg"]))))


def test_explanation_of_a_committed_profile_names_its_largest_differences():
    for prof in _committed_profiles().values():
        lines = explain.explanation(prof)
        assert lines[0] == explain.headline(prof)
        wide = profile.differences(prof.table, prof.impls, n=1)
        assert wide.iloc[0]["function"] in "\n".join(lines)
        categories = explain.category_sentences(prof, n=1)
        cats = prof.categories.pivot_table(index="category", columns="impl", values="us_per_msg").fillna(0)
        biggest = (cats[prof.impls[0]] - cats[prof.impls[1]]).abs().idxmax()
        assert categories[0].startswith(f"{biggest}: ")


def test_profile_charts_say_how_many_runs_were_excluded():
    prof = next(iter(_committed_profiles().values()))
    fig = profile_charts.plot_top_functions(prof, n=5)
    notes = [t.get_text() for t in fig.texts if t.get_text().startswith("Valid runs only:")]
    assert notes == [profile_charts.excluded_note(prof)]
    excluded = sum(info.get("excluded", 0) for info in prof.meta["impls"].values())
    assert (" excluded as invalid" in notes[0]) == (excluded > 0)
