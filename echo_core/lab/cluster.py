"""Load from several hosts: the C load generator as a dask.distributed task on each chosen worker.

    hosts = LoadHosts.connect("tls://10.1.2.3:8786", security=sec)     # an existing cluster
    with netns_hosts(2) as hosts:                                         # or two namespaces here
        row = run_benchmark("uring", "stream", 65536, 64, load_hosts=hosts)

Each run splits its connections over the hosts, hands every host's load generator the same
wall-clock start instant (``--start-at``: all connect first, then start together, so the warm-up
and the window are the same on every host up to the hosts' clock offset) and pins each task to its
worker (worker restrictions, ``allow_other_workers=False``).  The row sums throughput over the
hosts and merges their latency histograms exactly (every host measures every request it sends:
no sampling, so the tail of a 2-host run is as trustworthy as a 1-host one); per-host figures go to
a side table (``<name>-hosts.csv``).  Hosts whose starts lie further apart than
validity.HOSTS_START_SKEW_LIMIT make the row invalid: their windows differ.

Who may drive the load: a dask scheduler runs whatever its clients send, so echo_core binds the
scheduler and workers it starts only to the namespace bridge (``--netns``), connects to plain-TCP
schedulers only on loopback or a lab bridge, and otherwise needs ``tls://`` with a
``distributed.security.Security`` (or an explicit ``allow_plain_tcp=True``).
"""

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

from echo_core.results import histogram
from echo_core.host.machine import machine_id
from echo_core.lab import netns

#: Seconds between submitting the loads and their shared start, before adding 0.5 s per host that
#: shares a machine (see start_margin): time to start Python and connect.
START_MARGIN_S = 1.0


# ------------------------------------------------------------------ who may drive the load

def check_scheduler_address(address, security=None, allow_plain_tcp=False):
    """Refuse a plain-TCP scheduler that is neither loopback nor a lab bridge, unless opted in."""
    address = str(address)
    scheme, _, rest = address.partition("://")
    if not rest:
        scheme, rest = "tcp", address
    if scheme == "tls":
        if security is None:
            raise ValueError(f"{address}: a tls:// scheduler needs security= (distributed.security.Security "
                             "with the CA, certificate and key), or --tls-ca-file/--tls-cert/--tls-key")
        return address
    if scheme not in ("tcp", "inproc"):
        raise ValueError(f"unsupported scheduler address {address!r}: use tcp:// or tls://")
    if scheme == "inproc":
        return address
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None and (addr.is_loopback or netns.is_lab_address(addr)):
        return address
    if not allow_plain_tcp:
        raise ValueError(f"{address}: a plain-TCP scheduler off loopback lets anyone who can reach it run code "
                         "on every worker; use tls:// with certificates, or opt in with --allow-plain-tcp")
    return f"tcp://{rest}"


# ------------------------------------------------------------------ the hosts

class LoadHosts:
    """A dask client and the workers that act as load hosts.

    server_ns: the namespace the server must run in (netns mode) or None (this process's).
    server_address: where the server listens (None: the caller's host).
    same_machine: the workers share this machine with the server, so host 1 can snapshot the
    server's CPU time and counters from /proc (on real hosts those are NaN).
    timings: seconds the set-up took (namespaces, scheduler, workers).
    """

    def __init__(self, client, workers, server_ns=None, server_address=None, same_machine=False, timings=None,
                 description=None):
        if not workers:
            raise ValueError("no dask workers to send load from")
        self.client = client
        self.workers = list(workers)
        self.server_ns = server_ns
        self.server_address = server_address
        self.same_machine = same_machine
        self.timings = dict(timings or {})
        self.description = dict(description or {})

    @classmethod
    def connect(cls, cluster, hosts=None, security=None, allow_plain_tcp=False, timeout=30):
        """From a distributed.Client or a scheduler address; hosts = how many workers to use (default all)."""
        from distributed import Client

        if hosts is not None and (isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1):
            raise ValueError(f"hosts must be a number of workers >= 1, got {hosts!r}")
        t0 = time.monotonic()
        owned = not isinstance(cluster, Client)
        if owned:
            address = check_scheduler_address(cluster, security, allow_plain_tcp)
            client = Client(address, security=security, timeout=timeout)
        else:
            client = cluster
        try:
            if hosts:
                client.wait_for_workers(hosts, timeout=timeout)
            info = client.scheduler_info(n_workers=-1)["workers"]
            workers = sorted(info, key=lambda a: str(info[a].get("name", a)))
            if hosts:
                if hosts > len(workers):
                    raise ValueError(f"asked for {hosts} load hosts, the cluster has {len(workers)} workers")
                workers = workers[:hosts]
            if not workers:
                raise ValueError("the cluster has no workers to send load from")
            # Workers on this machine (a LocalCluster, or hosts that are this one) can read the server's
            # /proc and counters file; on other machines those columns are NaN.
            here = machine_id()
            machines = client.run(machine_id, workers=workers)
        except BaseException:
            if owned:
                client.close()
            raise
        made = cls(client, workers, same_machine=all(m == here for m in machines.values()),
                   timings={"connect_s": time.monotonic() - t0},
                   description={"scheduler": client.scheduler.address, "workers": workers})
        made._owns_client = owned
        return made

    def close(self):
        """Close the dask client if connect() opened it (a Client passed in stays the caller's)."""
        if getattr(self, "_owns_client", False):
            self.client.close()
            self._owns_client = False

    def describe(self):
        return {**self.description, "hosts": len(self.workers), "workers": self.workers,
                "same_machine": self.same_machine, "server_ns": self.server_ns, "timings": self.timings}


def _python():
    return [sys.executable, "-m"]


def make_tls_files(directory, ips):
    """A throw-away CA and one certificate (valid for the IP addresses ips) signed by it, made with
    the openssl command into directory (keys 0600); returns (ca, cert, key) paths."""
    import shutil

    if shutil.which("openssl") is None:
        raise RuntimeError("needs the openssl command for the throw-away TLS certificates "
                           "(Debian/Ubuntu: apt-get install openssl)")
    d = str(directory)
    ca_key, ca, key, csr, cert, ext = (os.path.join(d, n) for n in
                                       ("ca.key", "ca.pem", "node.key", "node.csr", "node.pem", "ext.cnf"))
    with open(ext, "w") as f:
        f.write("subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips) + "\nbasicConstraints=CA:FALSE\n")
    old_umask = os.umask(0o077)
    try:
        for args in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
                      "-subj", "/CN=echo_core throw-away CA"],
                     ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj",
                      f"/CN={ips[0]}"],
                     ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                      "-days", "2", "-extfile", ext]):
            proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    finally:
        os.umask(old_umask)
    return ca, cert, key


def _tls_flags(ca, cert, key):
    return ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]


@contextlib.contextmanager
def netns_hosts(hosts, startup_timeout=120):
    """Namespaces for a server and `hosts` load hosts (echo_core.lab.netns.Lab), a dask scheduler on the
    bridge address in the root namespace and one single-threaded worker in each host namespace;
    yields LoadHosts.  Everything is removed at the end, also on error or Ctrl-C.

    The bridge address is still an address of this machine: another host on its network could route
    to it, and a dask scheduler runs whatever its clients send.  So the scheduler, the workers and
    the client speak TLS with certificates from a throw-away CA made for this lab and kept 0600 in a
    private temporary directory: only this process can drive them."""
    from distributed import Client
    from distributed.security import Security

    with tempfile.TemporaryDirectory(prefix="echo_core-dask-") as tmp, netns.Lab(hosts) as lab, \
            contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        ca, cert, key = make_tls_files(tmp, [lab.bridge_address, *lab.host_addresses])
        tls = _tls_flags(ca, cert, key)
        security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
        sched_file, sched_log = os.path.join(tmp, "scheduler.json"), os.path.join(tmp, "scheduler.log")
        # In the root namespace, registered with the lab (stopped with it, or by the next lab if this
        # process is SIGKILLed); it listens on the bridge address only, its HTTP routes included.
        with open(sched_log, "wb") as log:
            sched = lab.popen(None, _python() + ["distributed.cli.dask_scheduler", "--host", lab.bridge_address,
                                                 "--port", "0", "--protocol", "tls", *tls, "--no-dashboard",
                                                 # distributed serves its HTTP routes (logs, stacks, task
                                                 # keys; no TLS) even without a dashboard, by default on
                                                 # every interface: keep them on the bridge too.
                                                 "--dashboard-address", f"{lab.bridge_address}:0",
                                                 "--scheduler-file", sched_file],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        address = _wait_scheduler(sched, sched_file, sched_log, startup_timeout)
        for k, (ns, addr) in enumerate(zip(lab.host_ns, lab.host_addresses), start=1):
            lab.popen(ns, _python() + ["distributed.cli.dask_worker", address, "--host", addr, "--name", f"h{k}",
                                       "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "30",
                                       "--dashboard-address", f"{addr}:0",
                                       "--local-directory", tmp, *tls],
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = stack.enter_context(Client(address, security=security, timeout=startup_timeout))
        client.wait_for_workers(hosts, timeout=startup_timeout)
        started = time.monotonic()
        info = client.scheduler_info(n_workers=-1)["workers"]
        workers = sorted(info, key=lambda a: int(str(info[a]["name"]).lstrip("h")))
        timings = {"netns_setup_s": lab.setup_s, "dask_startup_s": started - t0}
        yield LoadHosts(client, workers, server_ns=lab.server_ns, server_address=lab.server_address,
                        same_machine=True, timings=timings,
                        description={"netns": lab.describe(), "scheduler": address})


def _wait_scheduler(proc, path, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                err = f.read().strip().splitlines()
            raise RuntimeError("dask scheduler exited: " + (err[-1] if err else f"exit {proc.returncode}"))
        try:
            with open(path) as f:
                return json.load(f)["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise RuntimeError(f"dask scheduler not up within {timeout} s")


# ------------------------------------------------------------------ one run over the hosts

def split_connections(connections, hosts):
    """Connections per host, as even as possible (the first hosts take the remainder)."""
    if connections < hosts:
        raise ValueError(f"{connections} connection(s) cannot be spread over {hosts} load hosts")
    base, extra = divmod(connections, hosts)
    return [base + (1 if k < extra else 0) for k in range(hosts)]


def start_margin(load_hosts, connections):
    """Seconds between submitting the loads and their shared start: each host starts a Python
    process and connects; hosts sharing one machine (namespaces) start one after another."""
    per_machine = len(load_hosts.workers) if load_hosts.same_machine else 1
    return START_MARGIN_S + 0.5 * per_machine + connections / 5000


def run_on_hosts(load_hosts, task, args_for_host, cpus, limit_s):
    """Submit task(args_for_host(k), cpus, limit_s) on each host k (pinned to its worker) and gather the
    results in host order."""
    import distributed

    client = load_hosts.client
    present = set(client.scheduler_info(n_workers=-1)["workers"])
    gone = [w for w in load_hosts.workers if w not in present]
    if gone:
        raise RuntimeError(f"load host(s) gone from the cluster: {', '.join(gone)}")
    futures = [client.submit(task, args_for_host(k), cpus, limit_s, workers=[w], allow_other_workers=False,
                             pure=False, key=f"echo_core-load-{os.getpid()}-{time.monotonic_ns()}-{k}")
               for k, w in enumerate(load_hosts.workers)]
    try:
        distributed.wait(futures, timeout=limit_s + 30)
        return client.gather(futures)
    finally:
        for f in futures:
            f.release()


# ------------------------------------------------------------------ merging the hosts' records

_SUMMED = ("msgs_per_s", "bytes_per_s", "messages", "bytes", "latency_samples", "unanswered", "never_answered",
           "mismatches", "mismatched_conns", "connected", "connections", "connect_errors", "io_errors", "errors",
           "client_cpu_user_s", "client_cpu_sys_s", "client_cpu_s", "send_calls", "recv_calls", "threads")
#: Per-host figures of the side table (besides host, worker and machine).
HOST_COLUMNS = ("connections", "connected", "msgs_per_s", "bytes_per_s", "p50_us",
                "p99_us", "unanswered", "mismatches", "errors", "client_cpu_s", "duration_s", "warmup_s",
                "start_late_s", "fairness")


def _jain(records):
    """Jain's index over all connections, exactly, from each host's index, connections and bytes:
    sum(x^2) over a host's connections is S^2 / (n J)."""
    total = sum(r["bytes"] for r in records)
    n = sum(r["connected"] for r in records)
    squares = 0.0
    for r in records:
        if r["bytes"] and r["connected"]:
            if not r["fairness"] > 0:
                return float("nan")
            squares += r["bytes"] ** 2 / (r["connected"] * r["fairness"])
    return total ** 2 / (n * squares) if squares and n else float("nan")


def merge_records(records):
    """One load record for the whole run from the hosts' records (host 1's first).

    Counts and rates add up; the latency percentiles come from the exactly merged histograms; the
    window, warm-up and the server's figures are host 1's (the one that snapshots the server)."""
    nan = float("nan")
    out = dict(records[0])
    for key in _SUMMED:
        out[key] = sum(r.get(key, 0) or 0 for r in records)
    rates = [r.get("rate", nan) for r in records]
    out["rate"] = sum(rates) if all(x == x for x in rates) else nan  # offered: each host's share
    out["cpus"] = ";".join(str(r.get("cpus", "")) for r in records)
    out["conn_bytes_min"] = min(r["conn_bytes_min"] for r in records)
    out["conn_bytes_max"] = max(r["conn_bytes_max"] for r in records)
    out["fairness"] = _jain(records)
    out["interrupted"] = any(r.get("interrupted") for r in records)
    msgs = out["msgs_per_s"] * out["duration_s"]
    out["cpu_us_per_msg"] = out["client_cpu_s"] / msgs * 1e6 if msgs else nan
    timed = [r for r in records if r.get("latency_samples")]
    if timed:
        merged = histogram.merge([r["latency_hist"] for r in timed if r.get("latency_hist")])
        for key, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999)):
            out[key] = histogram.quantile(merged, q)
        out["latency_hist"] = merged
        out["max_us"] = max(r["max_us"] for r in timed)
        out["min_us"] = min(r["min_us"] for r in timed)
        out["mean_us"] = sum(r["mean_us"] * r["latency_samples"] for r in timed) / out["latency_samples"]
        for key in ("send_lag_p50_us", "send_lag_p99_us", "send_lag_max_us"):
            out[key] = max(r.get(key, nan) for r in timed)  # the laggiest host: an upper bound
    out["hosts"] = len(records)
    # Hosts that were all equally late for the start instant still share their window: what
    # matters is how far apart they started.
    late = [r.get("start_late_s", 0) or 0 for r in records]
    out["hosts_start_skew_s"] = max(late) - min(late)
    return out
