"""Server specs (issue 10): grammar, canonical form, refused combinations, kernel support, the `impls`
listing, the ablation grid, and a spec's way through Server, bench and sweep into the `impl` column."""

import itertools
import subprocess
import sys

import pandas as pd
import pytest

import echo_core
from echo_core.measure import benchmark as bench
from echo_core.measure import grids
from echo_core.analysis import report
from echo_core.measure import sweep as runner
from echo_core.servers import specs
from echo_core.servers.serve import check_impl
from echo_core.analysis import stats
from echo_core.native import lib
from echo_core.results import schema

from conftest import IO_URING_REFUSED, SERVER_CPU
from echo_client import connect, distinct_payload, echo_all

TINY = {"duration": 0.3, "warmup": 0.1, "progress": False}
needs_uring = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=str(IO_URING_REFUSED))
needs_features = pytest.mark.skipif(not specs.features_built(), reason="server features not built")


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "echo_core", *args], capture_output=True, text=True, timeout=timeout)


def _one_line_error(result):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- grammar

@pytest.mark.parametrize("text, canonical", [
    ("uring", "uring"),
    ("epoll", "epoll"),
    ("uring(buf_count=4096)", "uring"),                      # defaults are omitted
    ("epoll(budget=16,buf_size=65536)", "epoll"),
    ("uring(buf_count=16)", "uring(buf_count=16)"),
    ("uring(ring_entries=1024,buf_count=16)", "uring(buf_count=16,ring_entries=1024)"),  # tunables sorted
    ("uring+bundle+mshot", "uring+mshot+bundle"),            # features in the fixed order
    ("uring+inc(buf_count=64)", "uring(buf_count=64)+inc"),  # base tunables go on the base
    ("uring+batch(wait_us=50,nr=16)+mshot", "uring+mshot+batch(nr=16,wait_us=50)"),
    ("uring+batch(nr=8,wait_us=10)", "uring+batch"),
    ("uring+sqpoll(cpu=0)", "uring+sqpoll(cpu=0)"),
    ("uring+mshot(budget=4)", "uring+mshot(budget=4)"),
    ("epoll(budget=8)", "epoll(budget=8)"),
])
def test_canonical_form(text, canonical):
    spec = specs.parse(text)
    assert str(spec) == canonical
    assert specs.parse(canonical) == spec and str(specs.parse(str(spec))) == canonical  # round trip
    assert specs.canonical(text) == canonical


def test_feature_order_does_not_matter():
    names = ["mshot", "bundle", "pollfirst", "batch"]
    seen = {specs.canonical("uring+" + "+".join(p)) for p in itertools.permutations(names)}
    assert seen == {"uring+mshot+bundle+batch+pollfirst"}


def test_exec_specs_pass_through_unchanged():
    cmd = "exec:/bin/some_server --port {port} --mode fast"
    assert specs.canonical(cmd) == cmd
    assert specs.unsupported_reason(cmd) is None
    assert specs.base_of(cmd) == "exec"
    assert check_impl(cmd) == cmd


def test_split_list_keeps_commas_inside_parentheses():
    assert specs.split_list("uring+batch(nr=16,wait_us=50), epoll,uring(buf_count=16)") == \
        ["uring+batch(nr=16,wait_us=50)", "epoll", "uring(buf_count=16)"]


@pytest.mark.parametrize("bad, message", [
    ("kqueue", "unknown implementation 'kqueue'"),
    ("uring+bundle", "bundle needs mshot"),
    ("uring+connbuf+inc", "connbuf excludes inc"),
    ("uring+mshot+bundle+connbuf", "connbuf excludes mshot and bundle"),
    ("uring+connbuf+zc", "connbuf excludes zc"),
    ("uring+mshot+bundle+inc", "bundle excludes inc"),
    ("epoll+mshot", "epoll takes no features"),
    ("epoll(buf_count=16)", "epoll has no tunable 'buf_count'"),
    ("uring(budget=4)", "uring has no tunable 'budget'"),
    ("uring+mshot+mshot", "given twice"),
    ("uring(buf_count=16,buf_count=32)", "given twice"),
    ("uring(buf_count=16)+inc(buf_count=32)", "given twice"),
    ("uring+foo", "unknown feature 'foo'"),
    ("uring(buf_count=1000)", "power of two"),
    ("uring+batch(nr=0)", "must be in 1..4096"),
    ("uring+batch(nr=x)", "expected name=integer"),
    ("uring+batch()", "empty parentheses"),
    ("uring(", "unbalanced"),
    ("uring)", "unbalanced"),
    ("uring+", "cannot parse"),
    ("uring + mshot", "no spaces"),
    ("", "unknown implementation ''"),
    ("EXEC:/bin/x {port}", "unknown implementation"),
    ("uring+uring", "is a base"),
])
def test_bad_specs_are_one_clear_line(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")) as info:
        specs.parse(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["serve", "--impl", "uring+bundle"], "bundle needs mshot"),
    (["serve", "--impl", "epoll+zc"], "epoll takes no features"),
    (["serve", "--impl", "uring(buf_count=16)", "--buf-count", "64"], "conflicts with spec"),
    (["sweep", "--impls", "uring,uring+mshot+connbuf+bundle"], "connbuf excludes mshot and bundle"),
    (["chaos", "--impl", "uring+bundle", "--seconds", "1"], "bundle needs mshot"),
])
def test_cli_refuses_bad_specs_with_exit_2_and_one_line(args, message):
    assert message in _one_line_error(_cli(*args))


# ----------------------------------------------------------------------------- server options

def test_bases_set_no_options_so_todays_servers_are_unchanged():
    assert specs.parse("uring").to_server_options() == {}
    assert specs.parse("epoll").to_server_options() == {}
    assert specs.parse("epoll(budget=8)").to_server_options() == {"epoll_budget": 8}
    assert specs.parse("uring(buf_count=16)").to_server_options() == {"buf_count": 16}


def test_feature_bits_come_from_the_compiled_module():
    for name, feat in specs.FEATURES.items():
        assert specs.feature_bit(name) == getattr(lib, feat.bit_name)
    assert sum(specs.feature_bit(name) for name in specs.FEATURES) == lib.EC_FEAT_ALL
    bits = [specs.feature_bit(name) for name in specs.FEATURES]
    assert bits == sorted(bits) and len(set(bits)) == len(bits)  # canonical order is bit order
    opts = specs.parse("uring+mshot+batch(nr=16,wait_us=50)").to_server_options()
    assert opts == {"features": specs.feature_bit("mshot") | specs.feature_bit("batch"), "mshot_budget": 0,
                    "mshot_own_cap": 0, "batch_nr": 16, "batch_wait_us": 50, "batch_after": 0}
    assert specs.parse("uring+mshot(own_cap=1)").to_server_options()["mshot_own_cap"] == 1
    assert specs.parse("uring+sqpoll(cpu=1)").to_server_options()["sqpoll_cpu"] == 1
    assert "sqpoll_cpu" not in specs.parse("uring+sqpoll").to_server_options()  # the server's default


def test_explicit_options_that_contradict_the_spec_are_refused():
    assert specs.merge_options("uring(buf_count=16)", {"buf_count": 16}) == {"buf_count": 16}
    assert specs.merge_options("uring", {"buf_count": 64}) == {"buf_count": 64}  # as before specs
    with pytest.raises(ValueError, match="buf_count=64 conflicts with spec uring\\(buf_count=16\\)"):
        specs.merge_options("uring(buf_count=16)", {"buf_count": 64})
    with pytest.raises(ValueError, match="epoll_budget=4 conflicts"):
        specs.merge_options("epoll(budget=8)", {"epoll_budget": 4})
    # The features word belongs to the spec: it cannot be smuggled in as an option.
    with pytest.raises(ValueError, match="features"):
        specs.merge_options("uring", {"features": 1})
    # ... and no server process starts for a refused combination.
    with pytest.raises(ValueError, match="conflicts with spec"):
        echo_core.Server("uring(buf_count=16)", buf_count=64)
    with pytest.raises(ValueError, match="conflicts with spec"):
        bench.run_benchmark("uring(buf_count=16)", "rr", 512, 1, server_options={"buf_count": 64}, **{
            k: v for k, v in TINY.items() if k != "progress"})


# ----------------------------------------------------------------------------- kernel support

OLD_KERNEL = {"kernel": (5, 15), "setup_error": None, "features_built": True,
              "feat": frozenset({"EXT_ARG", "SQPOLL_NONFIXED", "FAST_POLL"}), "ops": frozenset({"RECV", "SEND"})}
NEW_KERNEL = {"kernel": (6, 18), "setup_error": None, "features_built": True,
              "feat": frozenset({"EXT_ARG", "SQPOLL_NONFIXED", "RECVSEND_BUNDLE", "MIN_TIMEOUT"}),
              "ops": frozenset({"RECV", "SEND", "SEND_ZC"}), "thp": "madvise"}


def test_unsupported_reasons_name_the_missing_kernel_feature():
    why = lambda spec, probed=OLD_KERNEL: specs.unsupported_reason(spec, probed)  # noqa: E731
    assert why("uring") is None and why("epoll") is None and why("uring(buf_count=16)") is None
    assert why("uring+mshot") == "mshot (multishot recv) needs Linux 6.0, this kernel is 5.15"
    assert "IORING_FEAT_RECVSEND_BUNDLE" in why("uring+mshot+bundle", {**OLD_KERNEL, "kernel": (6, 8)})
    assert "6.12" in why("uring+inc") and "6.9" in why("uring+napi")
    assert "IORING_OP_SEND_ZC" in why("uring+zc")
    assert why("uring+connbuf") is None and why("uring+batch") is None
    assert "5.19" in why("uring+pollfirst") and why("uring+pollfirst", {**OLD_KERNEL, "kernel": (6, 1)}) is None
    assert "CONFIG_TRANSPARENT_HUGEPAGE" in why("uring+huge")
    assert why("uring+huge", {**NEW_KERNEL, "thp": "never"}).endswith("which are off here "
                                                                   "(/sys/kernel/mm/transparent_hugepage/enabled: never)")
    assert all(specs.unsupported_reason(s, NEW_KERNEL) is None for s in specs.CATALOGUE
               if "sqpoll(cpu=" not in s)
    assert why("uring+mshot", {**NEW_KERNEL, "features_built": False}) == \
        "server features not built (the compiled C core predates them)"
    assert why("uring", {**NEW_KERNEL, "setup_error": "Operation not permitted"}).startswith("io_uring is not available")
    assert "not available" in specs.unsupported_reason("uring+sqpoll(cpu=4095)", NEW_KERNEL)
    assert specs.supported(["epoll", "uring(buf_count=4096)"]) == ["epoll", "uring"] or IO_URING_REFUSED


def test_impls_lines_list_supported_specs_first():
    lines = specs.impls_lines(probed=OLD_KERNEL)
    names = [line.split("  ")[0] for line in lines]
    assert names == sorted(names, key=lambda n: specs.unsupported_reason(n, OLD_KERNEL) is not None)
    assert sorted(names) == sorted(specs.CATALOGUE)
    for line in lines:
        name, _, rest = line.partition("  ")
        assert specs.canonical(name) == name
        assert rest == "" or rest == f"unsupported: {specs.unsupported_reason(name, OLD_KERNEL)}"
    assert "uring+mshot  unsupported: mshot (multishot recv) needs Linux 6.0, this kernel is 5.15" in lines


def test_impls_command_lists_every_catalogue_spec_on_this_machine():
    result = _cli("impls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = [line.split("  ")[0] for line in lines]
    assert sorted(names) == sorted(specs.CATALOGUE)
    flags = ["  unsupported: " in line for line in lines]
    assert flags == sorted(flags)  # supported ones first
    assert lines[:3] == [specs.RECOMMENDED, "uring", "epoll"] or IO_URING_REFUSED
    for name, line in zip(names, lines):
        why = specs.unsupported_reason(name)
        assert line == (f"{name}  unsupported: {why}" if why else name)
    for base in ("uring", "epoll"):
        assert base in names
    for feature in specs.FEATURES:  # each feature alone on uring (bundle with the mshot it needs)
        assert any(n in (f"uring+{feature}", "uring+mshot+bundle") for n in names)
    assert set(specs.ABLATION_SPECS) <= set(names)


# ----------------------------------------------------------------------------- grids

def test_ablation_grid_runs_its_cells_over_epoll_spinning_epoll_and_the_ablation_specs():
    params = grids.grid_params("ablation")
    assert params["impls"] == ("epoll", specs.EPOLL_SPIN, specs.EPOLL_LT) + specs.ABLATION_SPECS
    assert all(specs.canonical(s) == s for s in params["impls"])
    runs = grids.plan(params["impls"], params["modes"], params["payloads"], params["connections"], 1,
                      cells=params["cells"])
    cells = list(dict.fromkeys((r["mode"], r["payload"], r["connections"]) for r in runs))
    assert cells == [tuple(c) for c in params["cells"]]
    assert ("stream", 100000, 512) in cells and ("rr", 16384, 512) in cells and len(cells) == 9
    assert grids.count_runs(params) == 9 * len(params["impls"]) * params["repeats"]
    # Overriding a dimension picks the matching cells.
    stream = grids.grid_params("ablation", modes=["stream"])
    picked = grids.plan(stream["impls"], stream["modes"], stream["payloads"], stream["connections"], 1,
                        cells=stream["cells"])
    assert {r["mode"] for r in picked} == {"stream"} and len(picked) == 4 * len(stream["impls"])
    with pytest.raises(ValueError, match="no cell"):
        grids.plan(("epoll",), ("rr",), (7,), (1,), 1, cells=params["cells"])


def test_product_grids_are_unchanged():
    for name in ("quick", "seed", "explain", "latency"):
        g = grids.GRIDS[name]
        assert "cells" not in g
        runs = grids.plan(g["impls"], g["modes"], g["payloads"], g["connections"], 1, g.get("rates"),
                          g.get("load_fractions"))
        loads = len(grids.offered_loads(g.get("rates"), g.get("load_fractions"))) if "rate" in g["modes"] else 1
        assert len(runs) == len(g["impls"]) * len(g["modes"]) * len(g["payloads"]) * len(g["connections"]) * loads
        assert set(g["impls"]) == {"uring", "epoll"}


# ----------------------------------------------------------------------------- stats, charts, files

def _fake_rows():
    rows = []
    for repeat in range(3):
        for impl, rate in (("uring", 90.0), ("epoll", 100.0), ("uring+mshot", 110.0 + repeat)):
            rows.append({"sweep": "s", "impl": impl, "mode": "stream", "payload": 512, "connections": 8,
                         "offered_rate": float("nan"), "repeat": repeat, "msgs_per_s": rate,
                         "server_cpu_us_per_msg": 1.0, "valid": True, "invalid_reason": ""})
    return pd.DataFrame(rows)


def test_spec_ratios_generalise_uring_over_epoll():
    df = _fake_rows()
    assert stats.numerators(df) == ["uring", "uring+mshot"]
    table = stats.spec_ratios(df)
    plain = stats.ratios(df)
    mine = table[table["impl"] == "uring"].iloc[0]
    assert mine["ratio"] == plain["ratio"].iloc[0] == pytest.approx(0.9)
    assert table[table["impl"] == "uring+mshot"]["ratio"].iloc[0] == pytest.approx(1.11)
    assert schema.impl_label("uring") == "io_uring" and schema.impl_label("uring+mshot") == "uring+mshot"
    assert len(report.spec_ratio_table(df)) == 2


def test_palette_keeps_io_uring_and_epoll_and_gives_each_spec_a_stable_colour():
    labels = ["epoll", "io_uring"] + [s for s in specs.CATALOGUE if s.startswith("uring+") or s.startswith("uring(")]
    colors = report.impl_palette(labels)
    assert colors["io_uring"] == report.PALETTE["io_uring"] and colors["epoll"] == report.PALETTE["epoll"]
    assert len(set(colors.values())) == len(colors)
    assert report.impl_palette(["uring+mshot"])["uring+mshot"] == colors["uring+mshot"]
    assert report.impl_order(labels)[:2] == ["io_uring", "epoll"]


def test_profile_file_names_of_specs():
    from echo_core.profiling.profile import file_stem

    assert file_stem("uring") == "uring" and file_stem("epoll") == "epoll"
    assert file_stem("uring(buf_count=16)+batch(nr=16,wait_us=50)") == "uring_buf_count-16+batch_nr-16_wait_us-50"


# ----------------------------------------------------------------------------- real runs

@needs_uring
def test_a_spec_reaches_the_impl_column_of_a_real_sweep(tmp_path):
    df = runner.sweep(impls=["uring(ring_entries=1024)"], modes=["rr"], payloads=[512], connections=[2],
                      repeats=1, output_dir=tmp_path, name="spec", **TINY)
    assert list(df["impl"]) == ["uring(ring_entries=1024)"]
    assert bool(df["valid"].iloc[0]), df["invalid_reason"].iloc[0]
    assert df.attrs["metadata"]["parameters"]["impls"] == ["uring(ring_entries=1024)"]
    assert df.attrs["metadata"]["specs"] == {"uring(ring_entries=1024)": {
        "base": "uring", "features": [], "server_options": {"ring_entries": 1024}, "unsupported": None}}


@needs_uring
def test_todays_uring_and_epoll_rows_are_unchanged(tmp_path):
    # Spelled with their default tunables, they are still exactly "uring" and "epoll".
    df = runner.sweep(impls=["uring(buf_count=4096)", "epoll(budget=16)"], modes=["rr"], payloads=[512],
                      connections=[2], repeats=1, output_dir=tmp_path, name="plain", **TINY)
    assert list(df["impl"]) == ["uring", "epoll"]
    assert df["valid"].all(), list(df["invalid_reason"])
    assert "server_note" not in df.columns
    with pytest.raises(ValueError, match="listed twice"):
        runner.sweep(impls=["uring", "uring(buf_count=4096)"], output_dir=tmp_path, **TINY)


def test_a_cell_this_machine_cannot_run_is_skipped_with_its_reason(tmp_path):
    spec = "uring+sqpoll(cpu=4095)"  # no such CPU here (and, before the C side lands, no features built)
    why = specs.unsupported_reason(spec)
    assert why
    with pytest.raises(OSError, match="unsupported"):
        echo_core.Server(spec)
    df = runner.sweep(impls=[spec, "epoll"], modes=["rr"], payloads=[512], connections=[2], repeats=1,
                      output_dir=tmp_path, name="skip", on_error="raise", **TINY)
    row = df[df["impl"] == spec].iloc[0]
    assert row["error"] == f"unsupported: {why}" and row["invalid_reason"] == f"unsupported: {why}"
    assert not row["valid"]
    assert bool(df[df["impl"] == "epoll"]["valid"].iloc[0])


@needs_uring
@needs_features
def test_a_feature_spec_reaches_the_impl_column(tmp_path):
    spec = next(s for s in ("uring+mshot", "uring+connbuf", "uring+batch") if specs.unsupported_reason(s) is None)
    df = runner.sweep(impls=[spec], modes=["rr"], payloads=[512], connections=[2],
                      repeats=1, output_dir=tmp_path, name="feature", **TINY)
    assert list(df["impl"]) == [spec]
    assert bool(df["valid"].iloc[0]), df["invalid_reason"].iloc[0]


def test_chart_legends_show_the_canonical_spec():
    report.use_headless_backend()
    df = _fake_rows().assign(bytes_per_s=lambda d: d["msgs_per_s"] * 512)
    fig = report.plot_throughput(df)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["io_uring", "epoll", "uring+mshot"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_every_supported_spec_echoes(spec):
    """A smoke test of each variant (the robustness suites run over `impl`; this runs over `spec`)."""
    with echo_core.Server(spec, port=0, cpu=SERVER_CPU) as srv:
        assert srv.impl == spec
        socks = [connect(srv.port) for _ in range(4)]
        try:
            payloads = [distinct_payload(i, 100000) for i in range(4)]
            assert echo_all(socks, payloads) == payloads
        finally:
            for s in socks:
                s.close()
