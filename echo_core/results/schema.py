"""The one schema of a result set: which columns identify a cell, which figures and per-message counters
a row carries, and how each is labelled in tables and charts.  Stats, report, explain and the profiles
derive their columns and labels from here."""

#: Columns that identify a cell.  offered_rate is NaN outside rate mode; client is the load generator's
#: design (echo_core.load.generator.CLIENTS) and work the server's work per request
#: (echo_core.servers.options.parse_work) -- result sets measured before them hold DEFAULT_CLIENT / "none".
CELL = ["impl", "client", "work", "mode", "payload", "connections", "offered_rate"]
#: What a row measured before the client and work dimensions existed was measured with.
CELL_DEFAULTS = {"client": "epoll-et", "work": "none"}
#: The cell of a ratio: CELL without the implementation.
RATIO_CELL = [c for c in CELL if c != "impl"]
#: The columns a result set must have.
REQUIRED = ["impl", "mode", "payload", "connections"]
#: Metrics summarize() reports.
METRICS = ["msgs_per_s", "bytes_per_s", "p50_us", "p99_us", "server_cpu_us_per_msg"]

#: The implementation every other one is compared with.
BASELINE = "epoll"
#: Display names of the implementations in tables and charts; any other spec is shown as its
#: canonical string (impl_label).
IMPL_LABELS = {"uring": "io_uring", "epoll": "epoll"}
#: Display names of the load modes.
MODE_LABELS = {"rr": "request-response (rr)", "stream": "streaming", "rate": "fixed rate"}

#: Per-message kernel and server counters (sweep columns; NaN where the kernel could not count, and
#: absent from result sets measured before them), with their display labels, in the order tables show them.
COUNTERS = {
    "server_poll_arms_per_msg": "poll arms/msg",
    "server_ctx_switches_per_msg": "ctx switches/msg",
    "server_task_work_per_msg": "task work/msg",
    "server_completions_per_wait": "completions/wait",
    "server_bytes_per_recv": "bytes/recv",
    "server_submit_reqs_per_msg": "submitted reqs/msg",
    "server_async_punts_per_msg": "io-wq punts/msg",
    "server_sched_switches_per_msg": "sched switches/msg",
    "server_wakeups_per_msg": "wakeups/msg",
    "server_wakings_per_msg": "wakings/msg",
    "server_ipis_per_msg": "IPIs sent/msg",
    "server_minor_faults_per_msg": "minor faults/msg",
    "server_recv_syscalls_per_msg": "recv syscalls/msg",
    "server_send_syscalls_per_msg": "send syscalls/msg",
    "server_wait_syscalls_per_msg": "wait syscalls/msg",
}
#: Figures that describe a run's outcome (never listed as a counter difference), with their labels.
OUTCOMES = {
    "msgs_per_s": "msgs/s",
    "bytes_per_s": "bytes/s",
    "server_cpu_us_per_msg": "server CPU µs/msg",
    "server_util": "server CPU utilisation",
    "client_util": "client CPU utilisation",
}
#: Every figure of a row an explanation shows, in table order: outcomes, then what the server did.
FIGURES = {
    **OUTCOMES,
    "server_sends_per_msg": "sends/msg",
    **COUNTERS,
    "server_local_work_per_msg": "local task work/msg",
    "server_vol_ctx_switches_per_msg": "voluntary ctx switches/msg",
    "server_invol_ctx_switches_per_msg": "involuntary ctx switches/msg",
    "server_uring_enter_syscalls_per_msg": "io_uring_enter calls/msg",
}


def impl_label(impl):
    """The legend label of an implementation: "io_uring" for uring, else the canonical spec itself."""
    return IMPL_LABELS.get(impl, impl)


def bytes_label(n):
    """A payload as people write it: "16 KiB" for whole KiB, else "100000 B"."""
    n = int(n)
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"
