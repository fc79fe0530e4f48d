"""The load worker: one load generator run in a process of its own, spoken to in one structured
protocol (the way pyperf talks to its workers).

The parent hands the worker one LoadSpec as JSON on its stdin and gets one record back on a pipe of its
own (the file descriptor named on the worker's command line), never by scraping stdout; stderr is left
for diagnostics.  The record is one JSON object: ``{"exit": status, "record": "<the record in echo_core.load.record's codec>"}`` after a run, or
``{"exit": status, "error": "one line"}``.  Exit statuses are those of ``python -m echo_core load``:
0 clean, 1 mismatches / errors / unanswered requests or a failed run, 2 bad input, 130 interrupted.

The record travels in echo_core.load.record's codec.  Both the local benchmark and the load tasks on
dask workers (host_task) run the load through run_worker.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass

from echo_core.host.machine import machine_id
from echo_core.load.generator import run_load
from echo_core.load.record import decode_record, encode_record, exit_status
from echo_core.servers.process import exit_description

#: Seconds a worker may take beyond its load's warm-up and window (start-up, connecting, draining).
SLACK_S = 60.0


@dataclass(frozen=True)
class LoadSpec:
    """Everything one load generator run needs: run_load's arguments, as plain JSON-able values."""

    port: int
    host: str = "127.0.0.1"
    mode: str = "rr"
    payload: int = 512
    connections: int = 1
    duration: float = 1.0
    warmup: float = 0.0
    warmup_max: float | None = None
    rate: float | None = None
    arrivals: str = "poisson"
    threads: int = 1
    cpus: tuple = ()
    window: int = 0
    seed: int = 1
    server_pids: tuple = ()
    server_stats_path: str | None = None
    window_ctl_path: str | None = None
    start_at: float | None = None
    allow_remote: bool = False
    client: str = "epoll-et"

    def to_json(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        fields = json.loads(text)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown load spec field(s): {', '.join(sorted(unknown))}")
        return cls(**fields)

    def run_load_kwargs(self):
        kw = dataclasses.asdict(self)
        kw["cpus"] = list(self.cpus) or None
        kw["server_pids"] = list(self.server_pids) or None
        return kw


def _serve(spec_text, reply_fd):
    """The worker's side: run the load named by spec_text, write one reply on reply_fd; the exit status."""
    try:
        record = run_load(**LoadSpec.from_json(spec_text).run_load_kwargs())
        reply, status = {"record": encode_record(record)}, exit_status(record)
    except (ValueError, TypeError) as exc:
        reply, status = {"error": str(exc)}, 2
    except KeyboardInterrupt:
        reply, status = {"error": "interrupted"}, 130
    except OSError as exc:  # ConnectionError too
        reply, status = {"error": str(exc)}, 1
    with os.fdopen(reply_fd, "w") as out:
        out.write(json.dumps({"exit": status, **reply}))
    return status


def run_worker(spec, cpus=None, timeout=None):
    """Run one load in a worker process pinned to cpus; returns (record or None, exit status, error line).

    The record is None when the worker failed before or during the run (then error says why, one
    line); RuntimeError when it did not finish within timeout (default: warm-up + window + SLACK_S).
    """
    timeout = timeout or max(spec.warmup, spec.warmup_max or 0) + spec.duration + SLACK_S
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "echo_core.load.worker", str(write_fd)], pass_fds=(write_fd,),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_fd)
    reply = []
    reader = threading.Thread(target=lambda: reply.append(_read_all(read_fd)))
    reader.start()
    if cpus:
        try:
            os.sched_setaffinity(proc.pid, set(cpus))
        except OSError:
            pass  # the load generator pins its own threads to cpus as well
    try:
        _, err = proc.communicate(spec.to_json(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"load generator did not finish within {timeout:.0f} s") from None
    finally:
        reader.join()
        os.close(read_fd)
    return _reply(reply[0] if reply else b"", err, proc.returncode)


def _read_all(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(raw, err, code):
    """(record, status, error) from the worker's reply pipe, or from its stderr and exit status when it
    died without replying (a signal, an interpreter that could not start)."""
    if raw:
        reply = json.loads(raw)
        record = reply.get("record")
        if record is None:
            return None, reply["exit"], f"load generator {exit_description(reply['exit'])}: error: {reply.get('error')}"
        return decode_record(record), reply["exit"], None
    detail = [line for line in (err or "").strip().splitlines() if line.strip()]
    return None, code, f"load generator {exit_description(code)}" + (f": {detail[-1]}" if detail else "")


def host_task(spec_fields, cpus, limit_s):
    """Run on a dask worker: one load (LoadSpec fields as a dict) pinned to cpus; returns the record,
    exit status and error line, and which machine ran it."""
    record, status, error = run_worker(LoadSpec(**spec_fields), cpus, limit_s)
    return {"record": record, "exit": status, "error": error, "machine": machine_id()}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m echo_core.load.worker REPLY_FD  (a LoadSpec as JSON on stdin)", file=sys.stderr)
        return 2
    return _serve(sys.stdin.read(), int(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
