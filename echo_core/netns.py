"""Network namespaces that stand in for separate hosts on one machine (``sweep --netns N``).

A Lab makes N+1 namespaces joined by a bridge in the root namespace, addresses from 198.18.0.0/15
(RFC 2544's benchmarking range):

    root namespace   bridge ec<X>br   198.18.<X>.1   (the dask scheduler listens here)
    ec<X>-srv        eth0             198.18.<X>.2   (the echo server)
    ec<X>-h1 .. hN   eth0             198.18.<X>.3 .. (a dask worker each: the load hosts)

and removes every namespace, link and process it made when it closes -- also on Ctrl-C, SIGTERM
or an error.  Each live lab is recorded in REGISTRY_DIR (its creator's pid, subnet and names):
load.check_host accepts addresses of live labs only, and a lab whose creator died (SIGKILL) is
cleaned up by the next Lab that starts.  Needs root and iproute2's ``ip``.
"""

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

#: RFC 2544's benchmarking range: nothing real lives there.
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
REGISTRY_DIR = Path("/run/echo_core/netns")
NETNS_DIR = Path("/run/netns")
MAX_HOSTS = 250  # one /24 per lab: .1 bridge, .2 server, .3.. hosts
#: Labs that may exist at once (the third octet of 198.18.X.0/24).
MAX_LABS = 256


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made; the message names the command."""


def _ip(*args, check=True):
    """Run ``ip ARGS``; NetnsError with ip's own message on failure."""
    proc = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise NetnsError(f"ip {' '.join(args)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc


def check_can_create():
    """Raise PermissionError / NetnsError with a one-line reason when this process cannot make labs."""
    if os.geteuid() != 0:
        raise PermissionError("--netns needs root: creating network namespaces, veth pairs and a bridge "
                              "is a privileged operation (run as root, or use loopback load without --netns)")
    if shutil.which("ip") is None:
        raise NetnsError("--netns needs iproute2's `ip` command (Debian/Ubuntu: apt-get install iproute2)")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_registry():
    entries = []
    if not REGISTRY_DIR.is_dir():
        return entries
    for path in sorted(REGISTRY_DIR.glob("*.json")):
        try:
            entries.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return entries


def live_subnets():
    """Subnets of labs that exist now (their namespaces are there): the only non-loopback load targets
    allowed without an explicit opt-in."""
    nets = []
    for _, entry in _read_registry():
        if any((NETNS_DIR / ns).exists() for ns in entry.get("namespaces", [])):
            try:
                nets.append(ipaddress.ip_network(entry["subnet"]))
            except (KeyError, ValueError):
                continue
    return nets


def is_lab_address(addr):
    """True if addr (ipaddress object or text) is inside a live lab's subnet."""
    addr = ipaddress.ip_address(str(addr))
    return addr in BENCH_NET and any(addr in net for net in live_subnets())


def _remove(entry, path):
    """Remove what a registry entry names (best effort) and the entry; returns the errors."""
    errors = []
    for pid in entry.get("pids", []):
        _kill_group(pid)
    for ns in entry.get("namespaces", []):
        if (NETNS_DIR / ns).exists():
            proc = _ip("netns", "del", ns, check=False)
            if proc.returncode != 0:
                errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    for link in entry.get("links", []):
        if Path(f"/sys/class/net/{link}").exists():
            proc = _ip("link", "del", link, check=False)
            # A veth goes away with its peer's namespace, possibly between the check and the del.
            if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
                errors.append(f"ip link del {link}: {proc.stderr.strip()}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return errors


def _kill_group(pid, grace=3.0):
    """SIGTERM a process group we started (start_new_session), SIGKILL it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def clean_stale():
    """Remove labs whose creating process is gone (it was SIGKILLed before it could clean up)."""
    for path, entry in _read_registry():
        if not _pid_alive(int(entry.get("owner", 0) or 0)):
            _remove(entry, path)


class Lab:
    """N load-host namespaces and one server namespace on a bridge; a context manager.

    Attributes once created: subnet, bridge_address, server_ns, server_address, host_ns (list),
    host_addresses (list), setup_s (seconds the namespaces and links took to make).
    """

    def __init__(self, hosts):
        if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"--netns takes a number of load hosts in 1..{MAX_HOSTS}, got {hosts!r}")
        self.hosts = hosts
        self.index = None
        self.setup_s = None
        self._procs = []
        self._path = None
        self._entry = None

    # ------------------------------------------------------------ naming
    def _names(self, x):
        base = f"ec{x}"
        namespaces = [f"{base}-srv"] + [f"{base}-h{k}" for k in range(1, self.hosts + 1)]
        veths = [f"{base}v{k}" for k in range(self.hosts + 1)]  # root-side ends; <= 15 characters
        return base, namespaces, veths

    def _pick_index(self):
        used = set()
        for _, entry in _read_registry():
            used.add(int(entry.get("index", -1)))
        for x in range(MAX_LABS):
            base = f"ec{x}"
            if x not in used and not Path(f"/sys/class/net/{base}br").exists() \
                    and not (NETNS_DIR / f"{base}-srv").exists():
                return x
        raise NetnsError(f"all {MAX_LABS} lab subnets of 198.18.0.0/15 are in use")

    # ------------------------------------------------------------ life cycle
    def create(self):
        check_can_create()
        clean_stale()
        t0 = time.monotonic()
        x = self._pick_index()
        base, namespaces, veths = self._names(x)
        self.index = x
        self.subnet = ipaddress.ip_network(f"198.18.{x}.0/24")
        self.bridge = f"{base}br"
        self.bridge_address = f"198.18.{x}.1"
        self.server_ns, self.host_ns = namespaces[0], namespaces[1:]
        self.server_address = f"198.18.{x}.2"
        self.host_addresses = [f"198.18.{x}.{3 + k}" for k in range(self.hosts)]
        # Registered before anything exists, so that whatever is made is also removed.
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        self._entry = {"index": x, "owner": os.getpid(), "subnet": str(self.subnet), "namespaces": namespaces,
                       "links": [self.bridge, *veths], "pids": [], "created": time.time()}
        self._path = REGISTRY_DIR / f"{base}.json"
        self._save()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            addresses = [self.server_address, *self.host_addresses]
            for ns, veth, addr in zip(namespaces, veths, addresses):
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - t0
        return self

    def _save(self):
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._entry))
        os.replace(tmp, self._path)

    def exec_prefix(self, ns):
        """argv prefix that runs a command inside namespace ns."""
        return ["ip", "netns", "exec", ns]

    def popen(self, ns, argv, **kwargs):
        """Start argv inside namespace ns in a session of its own; it is killed when the lab closes."""
        proc = subprocess.Popen(self.exec_prefix(ns) + list(argv), start_new_session=True, **kwargs)
        self._procs.append(proc)
        self._entry["pids"].append(proc.pid)
        self._save()
        return proc

    def close(self):
        """Kill the lab's processes and remove its namespaces, links and registry entry."""
        if self._entry is None:
            return
        for proc in self._procs:
            _kill_group(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        errors = _remove(self._entry, self._path)
        self._entry = None
        self._procs = []
        if errors:
            raise NetnsError("could not remove all of the lab: " + "; ".join(errors))

    def __enter__(self):
        if self._entry is None:
            self.create()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def describe(self):
        """What the lab is, for a result set's metadata."""
        return {"subnet": str(self.subnet), "bridge": self.bridge, "bridge_address": self.bridge_address,
                "server_ns": self.server_ns, "server_address": self.server_address,
                "host_ns": list(self.host_ns), "host_addresses": list(self.host_addresses),
                "setup_s": self.setup_s}
