"""The server options every echo_core server takes, their defaults, and which of them go to C as they are.

The C core's own defaults (echo_core.h: EC_DEFAULT_*) apply where an option is 0."""

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
    "max_conns": 0,         # connection table size; 0 = the process fd limit
    "backlog": 4096,        # listen backlog
    # io_uring variants (issue 10; echo_core.h's EC_FEAT_* and ec_server_config): 0 = the seed's design
    "features": 0,          # io_uring: EC_FEAT_* bits (epoll refuses anything but 0)
    "batch_nr": 0,          # io_uring batch: completions per wait (0 = EC_DEFAULT_BATCH_NR)
    "batch_wait_us": 0,     # io_uring batch: most a wait lingers (0 = EC_DEFAULT_BATCH_WAIT_US)
    "mshot_budget": 0,      # io_uring mshot: queued buffers per connection (0 = buf_count / 64 in [1, 16])
    "sqpoll_cpu": -1,       # io_uring sqpoll: CPU of the SQ thread (-1 = not pinned)
}
#: The options passed to C as they are (struct ec_server_config fields).
CONFIG_FIELDS = ("buf_size", "buf_count", "ring_entries", "epoll_budget", "epoll_spin_us", "max_conns", "features",
                 "batch_nr", "batch_wait_us", "mshot_budget", "sqpoll_cpu")
