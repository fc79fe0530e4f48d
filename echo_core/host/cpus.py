"""CPU lists: the one parser of the kernel's cpulist notation ("0-2,5"), its writer, and where server
and client run by default."""

import os


def parse_cpu_list(text):
    """'0-2,5' -> [0, 1, 2, 5] (also '0', '0,1'); ValueError for anything else."""
    cpus = []
    for part in str(text).split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(f'a CPU list looks like "0", "0,1" or "0-3", got {text!r}')
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpu_list(cpus):
    """[0, 1, 2, 5] -> '0-2,5' (the kernel's cpulist notation)."""
    cpus, parts, i = sorted(cpus), [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def available_cpus(cpus):
    """None, an int, a cpulist string or an iterable of ints -> the CPUs as a list (None for none given),
    each checked to be one this process may run on."""
    if cpus is None or cpus == "":
        return None
    if isinstance(cpus, bool):
        raise ValueError(f"cpu list must be CPU numbers, got {cpus!r}")
    if isinstance(cpus, int):
        listed = [cpus]
    elif isinstance(cpus, str):
        listed = parse_cpu_list(cpus)
    else:
        listed = list(cpus)
    allowed = os.sched_getaffinity(0)
    for cpu in listed:
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise ValueError(f"cpu must be an integer, got {cpu!r}")
        if cpu not in allowed:
            raise ValueError(f"cpu {cpu} is not available to this process (allowed: {sorted(allowed)})")
    return listed or None


def default_cpus():
    """Server on the last CPU, client on all the others (on 2 vCPUs: server 1, client 0)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus[0], cpus
    return cpus[-1], cpus[:-1]


def split_cpus(cpu):
    """(server cpu, client cpu or None): the server on `cpu` or the last CPU, the client on another one."""
    avail = sorted(os.sched_getaffinity(0))
    server_cpu = avail[-1] if cpu is None else cpu
    others = [c for c in avail if c != server_cpu]
    return server_cpu, (others[0] if others else None)


def cpus_shared(server_cpus, client_cpus, server_threads=1, available=None):
    """True when the server's and the client's CPUs overlap, or when server_threads loops plus a
    load generator cannot each have a CPU of their own here: such a run proves correctness, it
    cannot show how the server scales."""
    available = len(os.sched_getaffinity(0)) if available is None else available
    if set(server_cpus or ()) & set(client_cpus or ()):
        return True
    return server_threads > 1 and available < server_threads + 1
