"""The server options every echo_core server takes, their defaults, and which of them go to C as they are.

The C core's own defaults (echo_core.h: EC_DEFAULT_*) apply where an option is 0."""

from echo_core.native import lib

#: The two base designs; any spec (echo_core.servers.specs, e.g. "uring+mshot") names a variant of one of them.
IMPLS = ("uring", "epoll")
SERVE_FUNCS = {"uring": "ec_uring_serve", "epoll": "ec_epoll_serve"}
#: Tunables and their defaults.  buf_size is the same for both servers so the comparison is fair.
DEFAULT_OPTIONS = {
    "buf_size": 65536,      # bytes per receive buffer (io_uring provided buffer / epoll per-connection)
    "buf_count": 4096,      # io_uring: provided buffers in the ring (power of two, <= 32768)
    "ring_entries": 4096,   # io_uring: submission queue entries
    "epoll_budget": 16,     # epoll: recv/send operations per connection per turn
    "epoll_spin_us": 0,     # epoll: poll this long before blocking (0 = block at once)
    "epoll_level": 0,       # epoll: 1 = level-triggered (EPOLLOUT only while blocked), 0 = edge-triggered
    "epoll_busy_poll_us": 0,  # epoll: the kernel's epoll busy poll (EPIOCSPARAMS, Linux 6.9), 0 = off
    "max_conns": 0,         # connection table size; 0 = the process fd limit
    "backlog": 4096,        # listen backlog
    # io_uring variants (issue 10; echo_core.h's EC_FEAT_* and ec_server_config): 0 = the seed's design
    "features": 0,          # io_uring: EC_FEAT_* bits (epoll refuses anything but 0)
    "batch_nr": 0,          # io_uring batch: completions per wait (0 = EC_DEFAULT_BATCH_NR)
    "batch_wait_us": 0,     # io_uring batch: most a wait lingers (0 = EC_DEFAULT_BATCH_WAIT_US)
    "batch_after": 0,       # io_uring batch: linger only after a wake-up with this many completions (0 = always)
    "mshot_budget": 0,      # io_uring mshot: queued buffers per connection (0 = buf_count / 4 in [1, 16])
    "sqpoll_cpu": -1,       # io_uring sqpoll: CPU of the SQ thread (-1 = not pinned)
    "grow_start": 0,        # io_uring grow: buffers provided at start (0 = EC_DEFAULT_GROW_BLOCK, at most buf_count)
    "grow_step": 0,         # io_uring grow: buffers added per -ENOBUFS (0 = EC_DEFAULT_GROW_BLOCK)
    "mshot_own_cap": 0,     # io_uring mshot: 1 = the server's own budget alone, not the kernel's 6.17 byte cap
    # Server work per request, both servers (echo_core.h EC_WORK_*; see WORK below)
    "work": 0,              # 0 none, 1 touch (read every received byte), 2 cpu (work_ns per message)
    "work_ns": 0,           # cpu work: nanoseconds of CPU per message
    "work_msg_bytes": 0,    # cpu work: bytes per message (the load's payload)
}
#: The options passed to C as they are (struct ec_server_config fields).
CONFIG_FIELDS = ("buf_size", "buf_count", "ring_entries", "epoll_budget", "epoll_spin_us", "epoll_level",
                 "epoll_busy_poll_us", "max_conns", "features",
                 "batch_nr", "batch_wait_us", "batch_after", "mshot_budget", "sqpoll_cpu", "grow_start", "grow_step",
                 "mshot_own_cap",
                 "work", "work_ns", "work_msg_bytes")

#: Server work per request, as a sweep's ``work`` dimension writes it: "none", "touch" or "cpu=NS".
WORK_KINDS = {"none": 0, "touch": 1, "cpu": 2}


def parse_work(text):
    """"none" | "touch" | "cpu=NS" -> (canonical text, kind, ns); ValueError with one line otherwise."""
    text = str(text).strip()
    kind, _, value = text.partition("=")
    if kind not in WORK_KINDS or (kind == "cpu") != bool(value):
        raise ValueError(f'work must be "none", "touch" or "cpu=NS" (ns of CPU per message), got {text!r}')
    if kind != "cpu":
        return kind, WORK_KINDS[kind], 0
    try:
        ns = int(value)
    except ValueError:
        raise ValueError(f"work cpu=NS needs an integer NS, got {text!r}") from None
    if not 0 < ns <= lib.EC_MAX_WORK_NS:
        raise ValueError(f"work cpu=NS must be in 1..{lib.EC_MAX_WORK_NS}, got {ns}")
    return f"cpu={ns}", WORK_KINDS[kind], ns


def work_options(work, payload):
    """The server options of a work text for a load of this payload (cpu work is per message)."""
    _, kind, ns = parse_work(work)
    return {"work": kind, "work_ns": ns, "work_msg_bytes": int(payload) if kind == WORK_KINDS["cpu"] else 0}
