"""Process state from /proc: the one reader of /proc/PID/stat, shared by whatever supervises processes
(servers, external servers, lab hosts), including ones it did not start."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat echo_core uses (proc(5) numbering: state 3, ppid 4, pgrp 5,
    utime 14, stime 15); CPU times in seconds."""

    state: str
    ppid: int
    pgrp: int
    user_s: float
    system_s: float


def proc_stat(pid):
    """/proc/PID/stat of a process (or PID/task/TID), or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = text.rsplit(")", 1)[-1].split()
    try:
        tick = os.sysconf("SC_CLK_TCK")
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[11]) / tick, int(fields[12]) / tick)
    except (IndexError, ValueError):
        return None


def pid_alive(pid):
    """Running and not a zombie (whoever's child it is): kill(pid, 0) would count a zombie alive."""
    stat = proc_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")
