"""CPU profiles per cell: real perf sampling real servers over the measured window only."""

import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from conftest import IO_URING_REFUSED, PERF_UNAVAILABLE
from echo_core.profiling import flamegraph
from echo_core.profiling import folded
from echo_core.profiling import profile

REPO = Path(__file__).resolve().parents[2]


needs_perf = pytest.mark.skipif(PERF_UNAVAILABLE is not None, reason=f"no profiles here: {PERF_UNAVAILABLE}")

#: io_uring frames: the submission path every io_uring server sample goes through.
URING_FRAMES = re.compile(r"^(__do_sys_io_uring_enter|io_uring_enter|io_submit_sqes|io_issue_sqe)_\[k\]$")
#: epoll frames: the wait the epoll server's loop blocks in.
EPOLL_FRAMES = re.compile(r"^(ep_poll|do_epoll_wait|__x64_sys_epoll_wait|ep_send_events)_\[k\]$")
SVG = "{http://www.w3.org/2000/svg}"


def _frames(stacks):
    return {frame for stack in stacks for frame in stack}


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """One streaming cell profiled for both servers (epoll only where io_uring is refused).

    The warm-up is as long as the window: were the warm-up sampled too, the samples would hold about
    twice the CPU the load generator measured over the window."""
    if PERF_UNAVAILABLE:
        pytest.skip(f"no profiles here: {PERF_UNAVAILABLE}")
    impls = ["epoll"] if IO_URING_REFUSED else ["uring", "epoll"]
    out = tmp_path_factory.mktemp("profile")
    return profile.profile_cell(impls, "stream", 16384, 4, duration=1.0, warmup=1.0, warmup_max=1.0,
                                output_dir=out, machine=False)


@needs_perf
def test_uring_profile_has_io_uring_frames(cell):
    if "uring" not in cell.stacks:
        pytest.skip(IO_URING_REFUSED)
    frames = _frames(cell.stacks["uring"])
    assert any(URING_FRAMES.match(f) for f in frames), sorted(frames)[:40]
    assert not any(EPOLL_FRAMES.match(f) for f in frames)
    # The copies of the echoed bytes run in the kernel, under the io_uring submission path.
    assert any(f.startswith("_copy_to_iter") for f in frames)


#: An external server: tests/faulty_echo.py (Python, no fault).
PYTHON_ECHO = f"exec:{sys.executable} {REPO / 'tests' / 'faulty_echo.py'} --port {{port}}"


@needs_perf
def test_an_external_server_is_profiled_under_a_file_safe_name(tmp_path):
    """exec:CMD servers are profiled like echo_core's own (liburing's example was profiled by hand before):
    its files are named exec-PROGRAM-HASH, since a command holds slashes and spaces, and its stacks are its own."""
    got = profile.profile_cell([PYTHON_ECHO], "rr", 512, 2, duration=0.5, warmup=0.3, warmup_max=None,
                               output_dir=tmp_path, machine=False, charts=False)
    stem = profile.file_stem(PYTHON_ECHO)
    assert re.fullmatch(r"exec-python[0-9.]*-[0-9a-f]{8}", stem), stem
    info = got.meta["impls"][PYTHON_ECHO]
    assert info["valid"], info["invalid_reason"]
    assert info["folded"] == f"{stem}.folded" and (tmp_path / info["folded"]).stat().st_size > 0
    frames = _frames(got.stacks[PYTHON_ECHO])
    assert any(f.startswith("_PyEval_EvalFrame") for f in frames), sorted(frames)[:40]  # the interpreter's loop
    assert any(EPOLL_FRAMES.match(f) for f in frames)  # its selectors loop waits in epoll
    assert not any(URING_FRAMES.match(f) for f in frames)
    assert profile.file_stem(PYTHON_ECHO + " --fault none") != stem


@needs_perf
def test_epoll_profile_has_epoll_frames_and_no_io_uring_ones(cell):
    frames = _frames(cell.stacks["epoll"])
    assert any(EPOLL_FRAMES.match(f) for f in frames), sorted(frames)[:40]
    assert not any(URING_FRAMES.match(f) for f in frames)


@needs_perf
def test_samples_cover_the_measured_window_only(cell):
    for impl, info in cell.meta["impls"].items():
        assert info["valid"], info["invalid_reason"]
        assert info["samples"] == folded.total_samples(cell.stacks[impl]) > 100
        # Sampled CPU (samples x period) against the server CPU the load generator measured over its
        # window: about 1 when perf sampled that window only, about 2 had it sampled the warm-up too.
        assert 0.75 <= info["sampling_coverage"] <= 1.25, (impl, info["sampling_coverage"])


@needs_perf
def test_top_functions_add_up_to_the_server_cpu_per_message(cell):
    table = profile.load_profile(cell.output_dir).table
    for impl, info in cell.meta["impls"].items():
        rows = table[table["impl"] == impl]
        assert rows["self_us_per_msg"].sum() == pytest.approx(info["server_cpu_us_per_msg"], rel=0.01)
        assert rows["self_samples"].sum() == info["samples"]
        assert rows["self_share"].sum() == pytest.approx(1.0, rel=1e-9)
        assert (rows["inclusive_samples"] >= rows["self_samples"]).all()
        assert rows["inclusive_samples"].max() <= info["samples"]
    categories = cell.categories
    for impl, info in cell.meta["impls"].items():
        part = categories[categories["impl"] == impl]
        assert part["us_per_msg"].sum() == pytest.approx(info["server_cpu_us_per_msg"], rel=0.01)
        assert part.set_index("category").loc["copy", "share"] > 0.05  # echoing is mostly copying


@needs_perf
def test_saved_profile_loads_back_without_running(cell):
    loaded = profile.load_profile(cell.output_dir)
    assert loaded.meta["cell"]["payload"] == 16384 and loaded.meta["cell"]["connections"] == 4
    assert loaded.stacks == cell.stacks
    assert list(loaded.table.columns) == list(cell.table.columns)
    assert len(loaded.table) == len(cell.table)
    assert loaded.meta["perf"]["version"].startswith("perf version")
    assert "-D" in loaded.meta["perf"]["record_command"] and "cpu-clock" in loaded.meta["perf"]["record_command"]
    for role, path in loaded.files().items():
        assert path.is_file(), role
    assert (cell.output_dir / "top_functions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for impl in loaded.impls:
        assert not (cell.output_dir / f"{impl}.perf.data").exists()  # not kept unless asked


@needs_perf
def test_flame_graph_is_xml_with_one_rect_per_frame_node(cell):
    for impl, stacks in cell.stacks.items():
        root = ET.parse(cell.output_dir / f"{impl}.svg").getroot()
        groups = root.findall(f"{SVG}g")
        tree = flamegraph.build_tree(stacks)
        assert len(groups) == flamegraph.count_nodes(tree)
        assert all(len(g.findall(f"{SVG}rect")) == 1 and g.find(f"{SVG}title") is not None for g in groups)
        # The root ("all", drawn first) spans the drawing's width; the frames right above it (the
        # stacks' outermost frames) have widths proportional to their samples, in name order.
        rects = [g.find(f"{SVG}rect") for g in groups]
        full = float(root.get("width")) - 2 * flamegraph.PAD_X
        assert groups[0].find(f"{SVG}title").text.startswith("all:")
        assert float(rects[0].get("width")) == pytest.approx(full)
        level1_y = str(int(rects[0].get("y")) - flamegraph.FRAME_HEIGHT)
        level1 = [float(r.get("width")) for r in rects if r.get("y") == level1_y]
        expected = [full * tree.children[name].count / tree.count for name in sorted(tree.children)]
        assert level1 == pytest.approx(expected, abs=0.01)
        assert "µs/msg" in groups[0].find(f"{SVG}title").text
        fills = {g.find(f"{SVG}rect").get("fill") for g in groups if "(kernel)" in g.find(f"{SVG}title").text}
        user_fills = {g.find(f"{SVG}rect").get("fill") for g in groups if "(user)" in g.find(f"{SVG}title").text}
        assert fills and not fills & user_fills  # kernel and user frames never share a colour


@needs_perf
def test_top_functions_chart_orders_by_difference(cell):
    if len(cell.impls) < 2:
        pytest.skip("one implementation only")
    from echo_core.profiling import charts
    from echo_core.analysis import report

    report.use_headless_backend()
    wide = charts.top_function_order(cell.table, cell.impls, n=10)
    assert list(wide["difference"]) == sorted(wide["difference"], reverse=True)
    fig = charts.plot_top_functions(cell, n=10)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith(wide.iloc[0]["function"]) and len(labels) == len(wide)
    diffs = profile.differences(cell.table, cell.impls, n=3)
    assert (diffs["difference"].abs().diff().dropna() <= 0).all()
    sentences = profile.difference_sentences(cell, n=3)
    assert len(sentences) == 3 and diffs.iloc[0]["function"] in sentences[0]
    assert f"{abs(diffs.iloc[0]['difference']):.2f} µs/msg more" in sentences[0]


def _leaf_symbols(script_text):
    """Independently of echo_core.profiling.folded: the first callchain line's symbol of every sample."""
    leaves, expect_leaf = Counter(), False
    for line in script_text.splitlines():
        if not line.strip():
            expect_leaf = False
        elif line[0] not in " \t":
            expect_leaf = True
        elif expect_leaf:
            leaves[line.split()[1]] += 1
            expect_leaf = False
    return leaves


@needs_perf
def test_folding_real_perf_script_output_round_trips(tmp_path):
    data = tmp_path / "perf.data"
    # dd copies through the kernel (read from /dev/zero, write to /dev/null): kernel and user frames.
    subprocess.run(["perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", "2000", "-o", str(data), "--",
                    "dd", "if=/dev/zero", "of=/dev/null", "bs=64k", "count=40000"],
                   check=True, capture_output=True, timeout=120)
    text, _cmd = profile.perf_script(data)
    headers = sum(1 for line in text.splitlines() if line and line[0] not in " \t")
    stacks = folded.parse_perf_script(text)
    assert headers > 10 and folded.total_samples(stacks) == headers
    # The leaf of each folded stack is the sampled function perf printed first.
    self_counts = Counter()
    for frame, (self_n, _incl) in folded.function_samples(stacks).items():
        self_counts[folded.split_frame(frame)[0]] += self_n
    assert +self_counts == +_leaf_symbols(text)
    frames = _frames(stacks)
    assert any(f.endswith(folded.KERNEL_SUFFIX) for f in frames)
    assert not any(re.search(r"\+0x[0-9a-f]+$|^[0-9a-f]{8,}$", folded.split_frame(f)[0]) for f in frames)
    # Written and read back: the same stacks and counts.
    path = tmp_path / "dd.folded"
    folded.write_folded(stacks, path)
    assert folded.read_folded(path) == stacks
    lines = path.read_text().splitlines()
    assert all(re.fullmatch(r"[^ ]+( [^ ]+)* \d+", line) for line in lines)
    # Root first: the kernel's syscall entry sits below (before) the function it calls.
    assert any(re.search(r"entry_SYSCALL_64\w*_\[k\];.*_\[k\]", line) for line in lines)


def test_folded_parser_rejects_a_line_without_count():
    with pytest.raises(ValueError, match="line 2"):
        folded.parse_folded("a;b 3\na;b;c\n")
    assert folded.parse_folded("a;b 3\na;b 2\nc_[k] 1\n") == {("a", "b"): 5, ("c_[k]",): 1}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "echo_core", "profile", *args], capture_output=True, text=True,
                          env=env or _env(), cwd=REPO, timeout=120)


@pytest.mark.parametrize("args", [["--payload", "0"], ["--payload", "lots"], ["--impl", "nginx"],
                                  ["--mode", "rate"], ["--impl", "uring", "--impls", "epoll"],
                                  ["--server-cpu", "4096"], ["--repeats", "0"], ["--frequency", "0"]])
def test_cli_bad_input_is_one_line_and_exit_2(args):
    out = _cli("--duration", "0.5", *args)
    assert out.returncode == 2, out
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: "), out.stderr


@needs_perf
def test_cli_profiles_request_response_with_repeats(tmp_path):
    out_dir = tmp_path / "rr"
    out = _cli("--impl", "epoll", "--mode", "rr", "--payload", "512", "--connections", "2", "--duration", "0.5",
               "--warmup", "0.2", "--warmup-max", "1", "--repeats", "2", "--output-dir", str(out_dir))
    assert out.returncode == 0, out.stderr
    assert str(out_dir) in out.stdout and "epoll.svg" in out.stdout and "samples" in out.stdout
    saved = profile.load_profile(out_dir)
    info = saved.meta["impls"]["epoll"]
    assert info["repeats"] == 2 and len(info["runs"]) == 2
    # The repeats' samples fold into one file; CPU per message is over both runs' messages.
    assert folded.total_samples(saved.stacks["epoll"]) == info["samples"] == sum(r["samples"] for r in info["runs"])
    assert info["msgs_in_window"] == pytest.approx(sum(r["msgs_in_window"] for r in info["runs"]))
    assert info["server_cpu_us_per_msg"] == pytest.approx(
        sum(r["server_cpu_s"] for r in info["runs"]) * 1e6 / info["msgs_in_window"])
    assert any(EPOLL_FRAMES.match(f) for f in _frames(saved.stacks["epoll"]))
    assert saved.meta["machine"]["kernel"]["release"] == os.uname().release


def test_cli_without_perf_says_how_to_install_it_and_exits_1(tmp_path):
    env = {**_env(), "PATH": str(tmp_path)}  # an empty directory: no perf on the PATH
    out = _cli("--impl", "epoll", "--duration", "0.5", "--output-dir", str(tmp_path / "out"), env=env)
    assert out.returncode == 1, out
    assert len(out.stderr.splitlines()) == 1 and "linux-perf" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0 or PERF_UNAVAILABLE is not None, reason="needs root (to drop to nobody) and perf")
def test_refused_kernel_sampling_is_explained():
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if paranoid < 2:
        pytest.skip(f"perf_event_paranoid is {paranoid}: an unprivileged user may sample the kernel here")
    # perf's real refusal, as an unprivileged user (nobody) asking for kernel stacks.
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "perf", "record", "-q",
                          "-g", "-e", "cpu-clock:k", "-o", "/dev/null", "--", "true"],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode != 0
    message = profile.explain_perf_failure(out.stderr, out.returncode)
    assert "perf_event_paranoid" in message and "root" in message and "\n" not in message


def test_categories_follow_the_stack_from_the_leaf():
    k = folded.KERNEL_SUFFIX
    assert profile.categorize(("main", "entry_SYSCALL_64" + k, "tcp_sendmsg" + k, "_copy_from_iter" + k)) == "copy"
    assert profile.categorize(("main", "tcp_sendmsg" + k, "native_queued_spin_lock_slowpath" + k)) == "tcp/ip"
    assert profile.categorize(("main", "io_submit_sqes" + k, "io_issue_sqe" + k)) == "io_uring"
    assert profile.categorize(("main", "do_epoll_wait" + k, "ep_poll" + k)) == "epoll"
    assert profile.categorize(("io_recv" + k, "_copy_to_iter" + k, "asm_exc_page_fault" + k, "exc_page_fault" + k)) \
        == "page faults"
    assert profile.categorize(("ec_uring_serve",)) == "user"
    assert profile.categorize(("main", "mystery" + k)) == "other kernel"
    assert not math.isnan(profile._us_per_sample(10.0, 4))
