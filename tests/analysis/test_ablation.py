"""The ablation analysis on a real, tiny sweep of two io_uring specs against epoll, and its notebook."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import IO_URING_REFUSED
from echo_core.analysis import ablation
from echo_core.analysis import stats
from echo_core.measure.sweep import sweep
from echo_core.results import schema

REPO = Path(__file__).resolve().parents[2]
SPECS = ["uring", "uring(buf_count=16)", "epoll"]
pytestmark = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"the ablation compares io_uring specs: {IO_URING_REFUSED}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    df = sweep(impls=SPECS, modes=["stream"], payloads=[16384], connections=[4], duration=0.4, warmup=0.1, warmup_max=None,
               repeats=2, output_dir=out, name="abl", progress=False)
    return out, df


def test_every_spec_is_paired_with_epoll_of_the_same_repeat(swept):
    _, df = swept
    r = ablation.spec_ratios(df)
    assert list(r["impl"]) == ["uring", "uring(buf_count=16)"]
    for rec in r.to_dict("records"):
        pairs = stats.paired_ratios(df, numerator=rec["impl"])
        assert rec["ratio"] == pytest.approx(pairs["ratio"].median())
        assert 1 <= rec["n_pairs"] <= int(df[df["impl"] == rec["impl"]]["valid"].sum())


def test_best_spec_is_the_highest_ratio(swept):
    _, df = swept
    r = ablation.spec_ratios(df)
    best = ablation.best_per_cell(df)
    assert len(best) == 1
    top = r.loc[r["ratio"].idxmax()]
    assert best["best"].iloc[0] == top["impl"] and best["ratio"].iloc[0] == pytest.approx(top["ratio"])
    assert best["uring_ratio"].iloc[0] == pytest.approx(r[r["impl"] == "uring"]["ratio"].iloc[0])


def test_counter_changes_compare_against_the_seed_design(swept):
    _, df = swept
    changes = ablation.counter_changes(df)
    assert list(changes["impl"]) == ["uring(buf_count=16)"]
    for part in filter(None, changes["changes"].iloc[0].split("; ")):
        label, values = part.rsplit(" ", 3)[0], part.rsplit(" ", 3)[1:]
        assert label in schema.COUNTERS.values() and values[1] == "→"
        before, after = float(values[0]), float(values[2])
        assert max(before, after) >= 1.25 * min(before, after) or min(before, after) == 0


def test_charts_say_how_many_runs_were_excluded(swept):
    _, df = swept
    for fig in (ablation.plot_spec_ratios(df), ablation.plot_best_heatmap(df)):
        notes = [t.get_text() for t in fig.texts if t.get_text().startswith("Valid runs only:")]
        assert len(notes) == 1


def test_ablation_notebook_reads_a_result_set(swept, tmp_path):
    out, df = swept
    nb_out = tmp_path / "ablation-out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/ablation.ipynb", str(nb_out), "-p",
                           "results_csv", str(out / "abl.csv"), "-p", "output_dir", str(tmp_path), "--no-progress-bar"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(nb_out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "uring(buf_count=16)" in text
    assert (tmp_path / "abl-specs.png").exists() and (tmp_path / "abl-best.png").exists()


def test_ablation_notebook_is_stored_clean():
    nb = nbformat.read(REPO / "notebooks" / "ablation.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_the_best_io_uring_spec_is_never_an_epoll_variant():
    """A result set with epoll(spin_us=50) beside io_uring specs: its ratio is shown, never named best io_uring."""
    import pandas as pd

    rows = []
    for repeat in range(3):
        for impl, rate in (("epoll", 100.0), ("epoll(spin_us=50)", 300.0), ("uring", 110.0), ("uring+mshot", 120.0)):
            rows.append({"impl": impl, "mode": "rr", "payload": 512, "connections": 1, "offered_rate": float("nan"),
                         "repeat": repeat, "sweep": "s", "msgs_per_s": rate + repeat, "server_cpu_us_per_msg": 1.0,
                         "valid": True, "invalid_reason": ""})
    best = ablation.best_per_cell(pd.DataFrame(rows))
    assert list(best["best"]) == ["uring+mshot"]
    assert ablation.spec_ratios(pd.DataFrame(rows))["impl"].tolist().count("epoll(spin_us=50)") == 1
