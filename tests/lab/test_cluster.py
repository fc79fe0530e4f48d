"""Load from several hosts: a real dask scheduler and workers (on loopback, and in network namespaces
this test makes), the start barrier, where load may go and who may drive it, and clean-up."""

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from echo_core.lab import cluster
from echo_core.results import histogram
from echo_core.lab import netns
from echo_core.results import resultsets
from echo_core.analysis import stats
from echo_core.measure.benchmark import run_benchmark
from echo_core.load.generator import check_host, run_load
from echo_core.measure.sweep import sweep
from echo_core.servers.serve import Server

FAULTY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "faulty_echo.py")
SERVER_CPU = max(os.sched_getaffinity(0))
CLIENT_CPUS = [c for c in sorted(os.sched_getaffinity(0)) if c != SERVER_CPU] or [SERVER_CPU]

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not netns.shutil.which("ip"),
                                reason="network namespaces need root and iproute2's ip")


def _lab_leftovers(index):
    """Namespaces, links, registry entries and processes of lab `index` that still exist."""
    left = [ns for ns in os.listdir(netns.NETNS_DIR) if ns.startswith(f"ec{index}-")] \
        if netns.NETNS_DIR.is_dir() else []
    left += [link for link in os.listdir("/sys/class/net") if link.startswith(f"ec{index}")]
    if (netns.REGISTRY_DIR / f"ec{index}.json").exists():
        left.append("registry entry")
    marker = f"198.18.{index}."
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(pid) != os.getpid():
                left.append(f"process {pid}: {cmd[:80]}")
    return left


# ------------------------------------------------------------------ where load may go

@pytest.mark.parametrize("host", ["192.0.2.1", "198.18.250.9", "2001:db8::1"])
def test_load_to_a_non_loopback_address_is_refused_without_the_opt_in(host):
    # Documentation and benchmarking addresses: nothing is sent, the check refuses first.
    with pytest.raises(ValueError, match="--allow-remote"):
        run_load(host=host, port=9, duration=0.1)
    with pytest.raises(ValueError, match="--allow-remote"):
        run_benchmark("epoll", "rr", 64, 1, duration=0.1, host=host)
    proc = subprocess.run([sys.executable, "-m", "echo_core", "load", "--host", host, "--port", "9"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "--allow-remote" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The opt-in only lifts the address check (tests never send load there).
    assert check_host(host, allow_remote=True) == str(ipaddress.ip_address(host))


def test_loopback_needs_no_opt_in_and_broadcast_is_never_a_target():
    assert check_host("127.0.0.1") == "127.0.0.1"
    assert check_host("::1") == "::1"
    for host in ("0.0.0.0", "224.0.0.1", "255.255.255.255"):
        with pytest.raises(ValueError, match="unicast"):
            check_host(host, allow_remote=True)


# ------------------------------------------------------------------ who may drive it

def test_plain_tcp_scheduler_off_loopback_needs_tls_or_an_explicit_opt_in():
    assert cluster.check_scheduler_address("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="tls://"):
        cluster.check_scheduler_address("tcp://192.0.2.7:8786")
    with pytest.raises(ValueError, match="tls://"):
        cluster.check_scheduler_address("192.0.2.7:8786")
    assert cluster.check_scheduler_address("192.0.2.7:8786", allow_plain_tcp=True) == "tcp://192.0.2.7:8786"
    with pytest.raises(ValueError, match="security"):
        cluster.check_scheduler_address("tls://192.0.2.7:8786")
    assert cluster.check_scheduler_address("tls://192.0.2.7:8786", security=object()) == "tls://192.0.2.7:8786"
    with pytest.raises(ValueError, match="unsupported"):
        cluster.check_scheduler_address("ws://127.0.0.1:8786")


# ------------------------------------------------------------------ the start barrier

def test_load_generators_wait_for_a_shared_start_instant():
    with Server("epoll", cpu=SERVER_CPU) as srv:
        start_at = time.time() + 1.5
        t0 = time.time()
        r = run_load(port=srv.port, mode="rr", payload=64, connections=2, duration=0.3, start_at=start_at,
                     cpus=CLIENT_CPUS)
        assert time.time() - t0 >= 1.5 + 0.3 - 0.05  # waited for the instant, then ran the window
        assert r["start_late_s"] < 0.05 and r["mismatches"] == 0 and r["messages"] > 0
        # An instant already past starts at once and says how late it was.
        r = run_load(port=srv.port, mode="rr", payload=64, connections=2, duration=0.2,
                     start_at=time.time() - 2, cpus=CLIENT_CPUS)
        assert r["start_late_s"] >= 2
    with pytest.raises(ValueError, match="fixed warm-up"):
        run_load(port=9, mode="rr", duration=0.1, warmup=0.1, warmup_max=1, start_at=time.time() + 1)
    for bad in (time.time() + 3600, -1, float("nan")):
        with pytest.raises(ValueError, match="within"):
            run_load(port=9, mode="rr", duration=0.1, start_at=bad)


def _record(conn_bytes, latencies_ns, **extra):
    """A load record as one host would report it, from known per-connection bytes and latencies."""
    counts = {}
    for ns in latencies_ns:
        index = next(i for i in range(histogram.BUCKETS)
                     if histogram.bucket_low(i) <= ns < histogram.bucket_low(i) + histogram.bucket_width(i))
        counts[index] = counts.get(index, 0) + 1
    total = sum(conn_bytes)
    rec = {"connections": len(conn_bytes), "connected": len(conn_bytes), "bytes": total, "messages": total // 64,
           "msgs_per_s": total / 64, "bytes_per_s": float(total), "duration_s": 1.0, "client_cpu_s": 0.5,
           "fairness": total ** 2 / (len(conn_bytes) * sum(b * b for b in conn_bytes)),
           "conn_bytes_min": min(conn_bytes), "conn_bytes_max": max(conn_bytes),
           "latency_hist": histogram.encode(counts), "latency_samples": len(latencies_ns),
           "p50_us": histogram.quantile(counts, 0.5), "max_us": max(latencies_ns) / 1e3,
           "min_us": min(latencies_ns) / 1e3, "mean_us": sum(latencies_ns) / len(latencies_ns) / 1e3,
           "rate": float("nan"), "start_late_s": 0.0}
    rec.update(extra)
    return rec


def test_merged_record_sums_hosts_and_merges_latency_exactly():
    a = _record([100 * 64, 300 * 64], [10_000] * 3, start_late_s=0.2)
    b = _record([200 * 64, 200 * 64], [40_000] * 5, start_late_s=0.21)
    merged = cluster.merge_records([a, b])
    assert merged["hosts"] == 2 and merged["connections"] == 4 and merged["bytes"] == 800 * 64
    # Jain's index over all four connections, rebuilt from each host's index: 800^2 / (4 * 180,000).
    assert merged["fairness"] == pytest.approx(800 ** 2 / (4 * (100 ** 2 + 300 ** 2 + 2 * 200 ** 2)))
    # Percentiles of all 8 samples, not of host 1 (3 fast ones) nor an average of the hosts' p50s.
    everything = histogram.merge([a["latency_hist"], b["latency_hist"]])
    assert merged["p50_us"] == histogram.quantile(everything, 0.5) == pytest.approx(40, rel=0.02)
    assert merged["p99_us"] == pytest.approx(40, rel=0.02) and merged["min_us"] == 10 and merged["max_us"] == 40
    assert merged["mean_us"] == pytest.approx((3 * 10 + 5 * 40) / 8)
    assert merged["hosts_start_skew_s"] == pytest.approx(0.01)  # both late, 10 ms apart
    assert cluster.split_connections(7, 2) == [4, 3]
    with pytest.raises(ValueError, match="cannot be spread"):
        cluster.split_connections(1, 2)


# ------------------------------------------------------------------ a real dask cluster on loopback

@pytest.fixture(scope="module")
def local_hosts():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        yield cluster.LoadHosts.connect(client)


def test_two_dask_workers_send_the_load_and_the_row_adds_them_up(local_hosts):
    assert len(local_hosts.workers) == 2 and local_hosts.same_machine
    row = run_benchmark("epoll", "rr", 512, 6, duration=0.5, warmup=0.2, client_cpus=CLIENT_CPUS,
                        load_hosts=local_hosts)
    assert row["hosts"] == 2 and row["connections"] == 6 and row["connected"] == 6
    assert row["mismatches"] == 0 and row["errors"] == 0
    assert row["valid"], row["invalid_reason"]
    hosts = row["host_rows"]
    assert [h["host"] for h in hosts] == [1, 2] and [h["connections"] for h in hosts] == [3, 3]
    assert {h["worker"] for h in hosts} == set(local_hosts.workers)
    assert row["msgs_per_s"] == pytest.approx(sum(h["msgs_per_s"] for h in hosts))
    # Host 1 shares the server's machine: the server's side of the window is measured.
    assert row["server_cpu_s"] > 0 and row["window_agreement"] == pytest.approx(1, abs=0.05)


def test_a_byte_flipping_server_gives_an_invalid_row_not_a_crash(local_hosts):
    spec = f"exec:{sys.executable} {FAULTY} --host {{host}} --port {{port}} --fault flip --after 100"
    row = run_benchmark(spec, "rr", 512, 2, duration=0.4, warmup=0.1, client_cpus=CLIENT_CPUS,
                        load_hosts=local_hosts)
    assert row["hosts"] == 2 and row["mismatches"] > 0
    assert not row["valid"] and "mismatched" in row["invalid_reason"]


# ------------------------------------------------------------------ namespaces on this machine

@needs_root
def test_lab_addresses_are_load_targets_only_while_the_lab_lives():
    with netns.Lab(1) as lab:
        assert check_host(lab.server_address) == lab.server_address
        index = lab.index
        # The server namespace is reachable from a host namespace over the bridge.
        probe = subprocess.run(lab.exec_prefix(lab.host_ns[0]) + [
            sys.executable, "-c", f"import socket; s = socket.socket(); s.settimeout(5); "
            f"print(s.connect_ex(('{lab.server_address}', 9)))"], capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == str(__import__("errno").ECONNREFUSED)  # routed, nobody listening
    assert _lab_leftovers(index) == []
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host(lab.server_address)


@needs_root
def test_a_lab_whose_creator_was_killed_is_removed_by_the_next_one():
    code = ("from echo_core.lab import netns; import time; lab = netns.Lab(1).create(); "
            "print(lab.index, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    index = int(proc.stdout.readline())
    assert _lab_leftovers(index)  # made
    proc.kill()
    proc.wait()
    with netns.Lab(1):
        pass
    assert _lab_leftovers(index) == []


@needs_root
def test_netns_scheduler_listens_on_the_bridge_only_and_speaks_tls_to_its_own_certificates(tmp_path):
    from distributed import Client
    from distributed.security import Security

    # Certificates of another CA: what anyone else who reached the bridge address would hold at best.
    ca, cert, key = cluster.make_tls_files(tmp_path, ["127.0.0.1"])
    stranger = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    with cluster.netns_hosts(1) as hosts:
        sched = hosts.description["scheduler"]
        port = int(sched.rsplit(":", 1)[1])
        assert sched.startswith(f"tls://{hosts.description['netns']['bridge_address']}:")
        with pytest.raises(Exception):
            with Client(sched, security=stranger, timeout=5):
                pass
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
        addresses = {line.split()[3].split("/")[0] for line in out.splitlines() if " inet" in line}
        others = [a for a in addresses
                  if not ipaddress.ip_address(a).is_link_local and ipaddress.ip_address(a) not in netns.BENCH_NET]
        assert others, out  # at least loopback
        for addr in others:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with socket.socket(family) as s:
                s.settimeout(5)
                if s.connect_ex((addr, port)) != 0:
                    continue
            # A port number is free per address: the kernel may have given the scheduler a number another
            # process listens on at this address (fresh-clone CI, stop 27).  Reachable fails only if the
            # listener there belongs to the lab.
            here = (f"[{addr}]" if family == socket.AF_INET6 else addr,) + _WILDCARD_HOSTS
            owners = [cmd for local, cmd in _listeners(None) if _host_port(local) in [(h, port) for h in here]]
            assert owners and not any("distributed.cli.dask_" in cmd for cmd in owners), \
                f"scheduler reachable on {addr}:{port}: {owners}"
        # Every socket a lab process listens on, in the root namespace and in the hosts' (review item 1:
        # distributed's HTTP routes listened on 0.0.0.0:8787 even with --no-dashboard).
        listening = _dask_listeners(None) + [row for ns in hosts.description["netns"]["host_ns"]
                                             for row in _dask_listeners(ns)]
        assert len(listening) >= 2, listening  # the scheduler's TLS port and its HTTP routes at least
        wildcard = [row for row in listening if _host_port(row[0])[0] in _WILDCARD_HOSTS]
        assert not wildcard, f"lab processes listening on a wildcard address: {wildcard}"
        lab_net = [ipaddress.ip_address(_host_port(row[0])[0].strip("[]")) in netns.BENCH_NET for row in listening]
        assert all(lab_net), listening
        index = hosts.description["netns"]["subnet"].split(".")[2]
    assert _lab_leftovers(index) == []


# How ss writes a socket bound to every address.
_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "::")


def _host_port(local):
    """("host", port) of an ss local address such as "198.18.3.1:4242" or "[::1]:80"."""
    host, port = local.rsplit(":", 1)
    return host, int(port)


def _dask_listeners(ns):
    """(local address, process) of every listening TCP socket of a dask process in namespace ns."""
    return [(local, cmd.split(" -m ")[-1][:60]) for local, cmd in _listeners(ns) if "distributed.cli.dask_" in cmd]


def _listeners(ns):
    """(local address, command line) of every listening TCP socket in namespace ns (None: the root one)."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    out = subprocess.run(prefix + ["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        if not pids:
            rows.append((fields[3], ""))  # a listener whose process ss cannot name
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            rows.append((fields[3], cmd))
    return rows


@needs_root
def test_netns_sweep_from_two_hosts(tmp_path):
    df = sweep(impls=["uring", "epoll"], modes=["rr", "stream"], payloads=[4096], connections=[8], repeats=1,
               duration=0.5, warmup=0.2, netns=2, output_dir=tmp_path, name="two-hosts", progress=False,
               client_cpus=CLIENT_CPUS, server_cpu=SERVER_CPU)
    assert len(df) == 4
    assert (df["hosts"] == 2).all() and (df["mismatches"] == 0).all() and (df["errors"] == 0).all()
    assert df["valid"].all(), df["invalid_reason"].tolist()
    assert (df["host"].str.startswith("198.18.")).all()
    side = (tmp_path / "two-hosts-hosts.csv").read_text().splitlines()
    assert len(side) == 1 + 2 * 4
    meta = json.loads((tmp_path / "two-hosts.json").read_text())
    lab = meta["load_hosts"]
    assert lab["hosts"] == 2 and lab["timings"]["netns_setup_s"] > 0 and lab["timings"]["dask_startup_s"] > 0
    index = lab["netns"]["subnet"].split(".")[2]
    assert _lab_leftovers(index) == []
    # The report pools single-host sets only; the side table is never taken for a set.
    assert resultsets.multi_host_sets(tmp_path) == ["two-hosts"]
    with pytest.raises(FileNotFoundError):
        resultsets.load_results(tmp_path)
    pooled, metas = resultsets.load_results(tmp_path, multi_host=True)
    assert list(metas) == ["two-hosts"] and len(pooled) == 4
    table = stats.hosts_comparison({"2 hosts": df})
    assert set(table["impl"]) == {"uring"} and (table["hosts"] == 2).all() and len(table) == 2
    assert (table["ratio"] > 0).all()


@needs_root
def test_sigterm_during_a_netns_sweep_removes_everything(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "echo_core", "sweep", "--netns", "1", "--impls", "epoll",
                             "--modes", "rr", "--payloads", "512", "--connections", "2", "--repeats", "20",
                             "--duration", "0.5", "--warmup", "0.1", "--output-dir", str(tmp_path), "--quiet",
                             "--no-plots"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    entry = None
    while time.monotonic() < deadline and entry is None:
        for path in netns.REGISTRY_DIR.glob("*.json") if netns.REGISTRY_DIR.is_dir() else []:
            data = json.loads(path.read_text() or "{}")
            if data.get("owner") == proc.pid and data.get("pids"):
                entry = data
        time.sleep(0.2)
    assert entry is not None, "the sweep did not start its lab"
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _lab_leftovers(entry["index"]) == []


@needs_root
def test_netns_without_root_is_one_clear_line(tmp_path):
    # The CLI as an unprivileged user: drop root after the imports (the interpreter's own files may
    # not be readable by that user), then run `sweep --netns 2`.
    code = ("import os, sys; import echo_core.cli.main, echo_core.lab.cluster, echo_core.lab.netns; "
            "os.setgid(65534); os.setuid(65534); "
            f"sys.exit(echo_core.cli.main.main(['sweep', '--netns', '2', '--output-dir', '{tmp_path}', '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --netns needs root") and "Traceback" not in proc.stderr


@pytest.mark.skipif(not netns.shutil.which("openssl"), reason="needs the openssl command to make certificates")
def test_a_tls_scheduler_drives_the_load_with_certificates(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    ca, cert, key = cluster.make_tls_files(tmp_path, ["127.0.0.1"])
    sec = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                   tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
                      security=sec, dashboard_address=None) as lc:
        address = lc.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with pytest.raises(ValueError, match="security"):
            cluster.LoadHosts.connect(address)
        hosts = cluster.LoadHosts.connect(address, security=sec)
        try:
            row = run_benchmark("epoll", "rr", 256, 2, duration=0.3, warmup=0.1, client_cpus=CLIENT_CPUS,
                                load_hosts=hosts)
        finally:
            hosts.close()
    assert row["hosts"] == 1 and row["mismatches"] == 0 and row["valid"], row["invalid_reason"]


@needs_root
def test_a_leftover_host_namespace_is_skipped_not_deleted():
    """Review item 6: a namespace ecX-h1 that is not the lab's own made the lab fail at `ip netns add`
    and was then removed with the lab; now the lab takes another index and leaves it alone."""
    x = next(i for i in range(netns.MAX_LABS) if not _lab_leftovers(i))
    leftover = f"ec{x}-h1"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        with netns.Lab(1) as lab:
            assert lab.index != x
        assert os.path.exists(netns.NETNS_DIR / leftover)
    finally:
        subprocess.run(["ip", "netns", "del", leftover], check=False)

