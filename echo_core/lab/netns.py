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

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from echo_core.host.proc import pid_alive

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


def _registry_trusted():
    """The registry is root's alone: anyone else's entries could mark addresses as load targets or
    name what root removes."""
    try:
        st = REGISTRY_DIR.stat()
    except OSError:
        return False
    return st.st_uid == 0 and not st.st_mode & 0o022


def _names(index, hosts):
    """(bridge, namespaces, root-side veth ends) of lab `index` with `hosts` load hosts."""
    base = f"ec{index}"
    namespaces = [f"{base}-srv"] + [f"{base}-h{k}" for k in range(1, hosts + 1)]
    veths = [f"{base}v{k}" for k in range(hosts + 1)]  # <= 15 characters, as link names must be
    return f"{base}br", namespaces, veths


def _entry_ok(path, entry):
    """A registry entry names only what lab `index` may have: nothing else is ever removed."""
    try:
        index, hosts = int(entry["index"]), len(entry["namespaces"]) - 1
    except (KeyError, TypeError, ValueError):
        return False
    if not (0 <= index < MAX_LABS and 1 <= hosts <= MAX_HOSTS) or path.stem != f"ec{index}":
        return False
    bridge, namespaces, veths = _names(index, hosts)
    return (entry.get("subnet") == f"198.18.{index}.0/24" and entry.get("namespaces") == namespaces
            and entry.get("links") == [bridge, *veths])


def _read_registry():
    """(path, entry) of every well-formed entry of a trusted registry."""
    entries = []
    if not REGISTRY_DIR.is_dir() or not _registry_trusted():
        return entries
    for path in sorted(REGISTRY_DIR.glob("ec*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and _entry_ok(path, entry):
            entries.append((path, entry))
    return entries


def live_subnets():
    """Subnets of labs that exist now (their namespaces are there): the only non-loopback load targets
    allowed without an explicit opt-in."""
    return [ipaddress.ip_network(entry["subnet"]) for _, entry in _read_registry()
            if any((NETNS_DIR / ns).exists() for ns in entry["namespaces"])]


def is_lab_address(addr):
    """True if addr (ipaddress object or text) is inside a live lab's subnet."""
    addr = ipaddress.ip_address(str(addr))
    return addr in BENCH_NET and any(addr in net for net in live_subnets())


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_pids(pids, grace=3.0):
    """SIGTERM pids, SIGKILL whichever still runs after grace seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_process_group(proc, grace=3.0):
    """SIGTERM a child started with start_new_session, SIGKILL its group if it lingers; reaps it.
    Once the leader is reaped its pid (and so the group id) may belong to someone else: a group is
    signalled only while its leader is known to be unreaped."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _netns_pids(ns):
    proc = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _remove(entry, path):
    """Remove what a (validated) registry entry names, and the entry; returns the errors.

    Processes inside the lab's namespaces are found by the kernel (`ip netns pids`): deleting a
    namespace does not end them.  Processes the lab started in the root namespace (its scheduler) by
    their recorded pid, and only while their command line still names the lab's subnet: a pid reused
    by someone else is left alone."""
    errors = []
    marker = entry["subnet"].rsplit(".", 1)[0] + "."
    namespaces = [ns for ns in entry["namespaces"] if (NETNS_DIR / ns).exists()]
    inside = [pid for ns in namespaces for pid in _netns_pids(ns)]
    outside = [pid for pid in entry.get("pids", []) if isinstance(pid, int) and pid not in inside
               and marker in _cmdline(pid)]
    _kill_pids(inside + outside)
    for ns in namespaces:
        proc = _ip("netns", "del", ns, check=False)
        if proc.returncode != 0:
            errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    for link in entry["links"]:
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


def clean_stale():
    """Remove labs whose creating process is gone (it was SIGKILLed before it could clean up)."""
    for path, entry in _read_registry():
        owner = entry.get("owner")
        if not (isinstance(owner, int) and pid_alive(owner)):
            _remove(entry, path)


@contextlib.contextmanager
def signals_deferred():
    """While cleaning up, a second ^C or SIGTERM must not cut the clean-up short: hold them (main
    thread only) and raise KeyboardInterrupt once it is done."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    old = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


class Lab:
    """N load-host namespaces and one server namespace on a bridge; a context manager.

    Attributes once created: index, subnet, bridge, bridge_address, server_ns, server_address,
    host_ns (list), host_addresses (list), setup_s (seconds the namespaces and links took to make).
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

    def _claim(self):
        """Claim the first free lab index by creating its registry entry exclusively, so two labs
        started at once cannot take the same one.  The entry names everything the lab will make
        before any of it exists, so whatever is made is also removed."""
        for x in range(MAX_LABS):
            bridge, namespaces, veths = _names(x, self.hosts)
            # Any name of this index already taken (a leftover ecX-hK of someone else's, say): not ours to
            # fail on and then delete, take the next index.
            if any(Path(f"/sys/class/net/{link}").exists() for link in (bridge, *veths)) or \
                    any((NETNS_DIR / ns).exists() for ns in namespaces):
                continue
            path = REGISTRY_DIR / f"ec{x}.json"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            entry = {"index": x, "owner": os.getpid(), "subnet": f"198.18.{x}.0/24", "namespaces": namespaces,
                     "links": [bridge, *veths], "pids": [], "created": time.time()}
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            return path, entry
        raise NetnsError(f"all {MAX_LABS} lab subnets of 198.18.0.0/15 are in use")

    def create(self):
        check_can_create()
        REGISTRY_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _registry_trusted():
            raise NetnsError(f"{REGISTRY_DIR} must belong to root and be writable by root alone")
        clean_stale()
        t0 = time.monotonic()
        self._path, self._entry = self._claim()
        x = self.index = self._entry["index"]
        self.bridge, namespaces, veths = _names(x, self.hosts)
        self.subnet = ipaddress.ip_network(self._entry["subnet"])
        self.bridge_address = f"198.18.{x}.1"
        self.server_ns, self.host_ns = namespaces[0], namespaces[1:]
        self.server_address = f"198.18.{x}.2"
        self.host_addresses = [f"198.18.{x}.{3 + k}" for k in range(self.hosts)]
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for ns, veth, addr in zip(namespaces, veths, [self.server_address, *self.host_addresses]):
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
        """Start argv inside namespace ns (None: this process's) in a session of its own; it is
        stopped when the lab closes, or by the next lab if this process dies first."""
        prefix = self.exec_prefix(ns) if ns else []
        proc = subprocess.Popen(prefix + list(argv), start_new_session=True, **kwargs)
        self._procs.append(proc)
        self._entry["pids"].append(proc.pid)
        self._save()
        return proc

    def close(self):
        """Stop the lab's processes and remove its namespaces, links and registry entry."""
        if self._entry is None:
            return
        with signals_deferred():
            for proc in reversed(self._procs):
                stop_process_group(proc)
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
