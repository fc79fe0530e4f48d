/*
 * echo_core.h - the C API exposed to Python through cffi.
 *
 * Plain structs in, plain structs out; every function returns 0 (or a
 * non-negative value) on success and a negative errno on failure.  The C
 * never calls back into Python: Python hands in file descriptors (listen
 * socket, stop pipe) and memory (stats), and reads results.
 */
#ifndef ECHO_CORE_H
#define ECHO_CORE_H

#include <stdint.h>

/* ---------------------------------------------------------------- servers */

/*
 * Largest max_conns either server takes (io_uring's fixed-file table cap);
 * max_conns must also be at most the soft RLIMIT_NOFILE, else -EMFILE.
 */
#define EC_MAX_CONNS 1048576

/* Buckets of the servers' recv-size histogram (log2 of the bytes a successful recv returned). */
#define EC_RECV_HIST_BUCKETS 20

/*
 * io_uring server features (ec_server_config.features); 0 = the seed's design
 * (one recv re-armed after each send, buffers from the provided-buffer ring).
 * Values in decimal so that the cffi cdef keeps them; the bit in the comment.
 * ec_uring_serve returns -EINVAL for unknown bits and for these combinations:
 *   BUNDLE without MSHOT; CONNBUF with MSHOT, BUNDLE or INC (no provided
 *   buffers to bundle or consume incrementally); BUNDLE with INC;
 *   ZC with CONNBUF (the next recv would overwrite bytes a zero-copy send
 *   may still be reading).
 *   GROW with CONNBUF (no pool to grow); GROW with grow_start > buf_count.
 *   SENDRING without BUNDLE (only bundles gather sends) or with ZC (whose
 *   sends are not gathered).
 * It returns -EOPNOTSUPP, before "ready", when the kernel lacks a feature:
 * MSHOT before 6.0, BUNDLE without IORING_FEAT_RECVSEND_BUNDLE (6.10), INC
 * (buffer-ring registration refused, before 6.12), ZC without the SEND_ZC
 * opcode, BATCH without IORING_FEAT_EXT_ARG, SQPOLL or NAPI refused.
 * GROW provides grow_start buffers at start and grow_step more whenever at
 * least one recv in 32 since the last growth found the pool empty (-ENOBUFS;
 * at most one growth per loop turn), up to buf_count: a pool that stays
 * cache-sized unless many connections hold buffers at once (the buffers'
 * address range is mapped for buf_count, and a pool too large for the
 * machine is refused with -ENOMEM; untouched memory costs nothing).
 * POLLFIRST, BATCH, SQPOLL, NAPI combine with every strategy (single, MSHOT,
 * CONNBUF); INC and ZC with single and MSHOT.  BATCH waits with
 * min_wait_usec = batch_wait_us where the kernel has IORING_FEAT_MIN_TIMEOUT
 * (6.12), else with wait_nr = batch_nr and a batch_wait_us timeout.  MSHOT
 * caps each multishot recv's bytes at the connection's remaining budget
 * (sqe->optlen) on kernels >= 6.17; before that only by cancelling.  BUNDLE
 * also gathers up to 16 queued buffers into one sendmsg (not with ZC).
 * HUGE maps the provided-buffer pool 2 MiB-aligned and asks for transparent
 * huge pages on it (madvise MADV_HUGEPAGE; -EINVAL from set-up where the
 * kernel has none): a large pool then takes one TLB entry per 2 MiB instead
 * of 512.  Not with CONNBUF (no pool).
 * The epoll server returns -EINVAL for any features != 0.
 */
#define EC_FEAT_MSHOT     1    /* 0x001 multishot recv + per-connection ordered send queue */
#define EC_FEAT_BUNDLE    2    /* 0x002 recv bundles (one CQE, several buffers); needs MSHOT */
#define EC_FEAT_INC       4    /* 0x004 incremental buffer consumption (IOU_PBUF_RING_INC) */
#define EC_FEAT_CONNBUF   8    /* 0x008 no provided buffers: one fixed buffer per connection, like epoll */
#define EC_FEAT_BATCH     16   /* 0x010 wait for batch_nr completions, at most batch_wait_us */
#define EC_FEAT_POLLFIRST 32   /* 0x020 IORING_RECVSEND_POLL_FIRST on recvs */
#define EC_FEAT_ZC        64   /* 0x040 send_zc; buffer recycled on the notification CQE */
#define EC_FEAT_SQPOLL    128  /* 0x080 SQPOLL thread pinned to sqpoll_cpu */
#define EC_FEAT_NAPI      256  /* 0x100 register NAPI busy poll */
#define EC_FEAT_GROW      512  /* 0x200 pool starts at grow_start buffers, grows by grow_step while recvs find it dry */
#define EC_FEAT_HUGE      1024 /* 0x400 provided-buffer pool on transparent huge pages */
#define EC_FEAT_SENDRING  2048 /* 0x800 gathered sends as send bundles from a per-connection buffer ring; needs BUNDLE */
#define EC_FEAT_ALL       4095 /* 0xfff */

/* Defaults the io_uring server uses where a tunable below is 0. */
#define EC_DEFAULT_BATCH_NR 8         /* batch: completions one wait asks for (as specs.py, README) */
#define EC_DEFAULT_BATCH_WAIT_US 10   /* batch: longest a lone completion waits for company (ditto) */
#define EC_MAX_SPIN_US 1000000       /* epoll spin: at most 1 s of polling before blocking */
#define EC_DEFAULT_MSHOT_BUDGET 16    /* mshot: cap; default buf_count / 4, within [1, 16] */
#define EC_DEFAULT_GROW_BLOCK 64      /* grow: buffers provided at start and added per growth */

/*
 * Server work per request (ec_server_config.work), the same in both servers:
 * what they do with received bytes before echoing them.
 */
#define EC_WORK_NONE  0     /* echo untouched (the seed's) */
#define EC_WORK_TOUCH 1     /* read every received byte (a checksum) */
#define EC_WORK_CPU   2     /* spend work_ns of CPU per work_msg_bytes received on a connection */
#define EC_MAX_WORK_NS 10000000 /* work_ns: at most 10 ms per message */

struct ec_server_config {
	uint32_t buf_size;      /* bytes per receive buffer (both servers) */
	uint32_t buf_count;     /* io_uring: provided buffers, a power of two */
	uint32_t ring_entries;  /* io_uring: submission queue entries */
	uint32_t epoll_budget;  /* epoll: recv/send operations per connection per turn */
	uint32_t max_conns;     /* connection table size; 0 = soft RLIMIT_NOFILE (capped at EC_MAX_CONNS) */
	int ready_fd;           /* -1, or a fd that gets one byte once set-up is done and the loop starts */
	/* io_uring variants (issue 10); all 0 = the seed's design. */
	uint32_t features;      /* EC_FEAT_* bits */
	uint32_t batch_nr;      /* batch: completions per wait; 0 = EC_DEFAULT_BATCH_NR */
	uint32_t batch_wait_us; /* batch: most a wait lingers for batch_nr; 0 = EC_DEFAULT_BATCH_WAIT_US */
	uint32_t batch_after;   /* batch: linger only after a wake-up that found at least this many
				   completions, else wait for one with no timer; 0 = always linger */
	uint32_t mshot_budget;  /* mshot: buffers one connection may hold queued before it stops receiving
				   (re-armed when half drained); 0 = buf_count / 4 within [1, 16] */
	int sqpoll_cpu;         /* sqpoll: CPU the SQ thread is pinned to (IORING_SETUP_SQ_AFF);
				   -1 = not pinned (the Python option's default); ignored without SQPOLL */
	uint32_t epoll_spin_us; /* epoll: before blocking, poll (epoll_wait timeout 0) for this long -- the
				   counterpart of io_uring's batch wait; 0 = block at once (the seed's) */
	uint32_t epoll_level;   /* epoll: 1 = level-triggered, EPOLLOUT watched only while a send is blocked,
				   EPOLLIN only while there is room (the textbook server); 0 = edge-triggered */
	uint32_t epoll_busy_poll_us; /* epoll: the kernel's busy poll (EPIOCSPARAMS, Linux 6.9; -EOPNOTSUPP
					before "ready" where the kernel lacks it); 0 = off */
	uint32_t work;          /* EC_WORK_*: server work per request (both servers); -EINVAL if unknown */
	uint32_t work_ns;       /* EC_WORK_CPU: ns per message (at most EC_MAX_WORK_NS) */
	uint32_t work_msg_bytes; /* EC_WORK_CPU: bytes per message (> 0) */
	uint32_t grow_start;    /* grow: buffers provided at start (<= buf_count); 0 = EC_DEFAULT_GROW_BLOCK,
				   or buf_count if that is fewer */
	uint32_t grow_step;     /* grow: buffers added per growth; 0 = EC_DEFAULT_GROW_BLOCK */
	uint32_t mshot_own_cap; /* mshot: 1 = only the server's own budget bounds a multishot recv, also
				   where the kernel has its byte cap (6.17): the path of older kernels,
				   to test and to measure it; 0 = the kernel's cap where it has one;
				   ignored without MSHOT; -EINVAL above 1 */
};

/*
 * Counters, written only by the server loop and readable at any time from
 * another process (the struct lives in a shared mapping).  "calls" count
 * system calls for epoll and submitted operations (SQEs) for io_uring;
 * wait_calls counts epoll_wait / io_uring_enter.
 */
struct ec_server_stats {
	uint64_t running;             /* 1 while the event loop runs */
	uint64_t conns_accepted;
	uint64_t conns_active;
	uint64_t conns_closed;
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t loop_iterations;
	uint64_t wait_calls;
	uint64_t accept_calls;
	uint64_t recv_calls;
	uint64_t send_calls;
	uint64_t short_sends;         /* sends that moved fewer bytes than asked */
	uint64_t enobufs;             /* io_uring: recvs that found no provided buffer */
	uint64_t conn_errors;         /* resets and other per-connection errors */
	uint64_t accept_errors;       /* failed accepts (EMFILE, ENFILE, ...) */
	uint64_t accept_pauses;       /* times accepting stopped because the table was full */
	uint64_t backpressure_pauses; /* epoll: times reading stopped because a buffer was full */
	uint64_t pending_bytes_max;   /* largest per-connection backlog seen (bytes) */
	/* Appended for the per-message counters (issue 9); cheap increments in the existing loops. */
	uint64_t completions;         /* io_uring: CQEs handled; epoll: events epoll_wait returned */
	uint64_t recv_ok;             /* recvs that returned data (> 0 bytes) */
	uint64_t recv_hist[EC_RECV_HIST_BUCKETS]; /* those recvs by size: bucket i holds
						     [2^i, 2^(i+1)) bytes, the last one all above */
	uint64_t recv_buf_more;       /* io_uring inc: recvs whose buffer stayed in the ring for the
					 next piece (IORING_CQE_F_BUF_MORE) */
	uint64_t spills;              /* io_uring: recvs whose bytes were copied out of a low pool
					 (a quarter or less free) so the buffer went back at once */
	uint64_t spilled_sends;       /* io_uring: sends of such bytes (plain sends, also with zc) */
	uint64_t work_checksum;       /* work: what the server work computed (kept so it is not optimized away) */
	uint64_t pool_buffers;        /* io_uring: provided buffers the pool holds now (buf_count, or with
					 grow what it has grown to; it never shrinks) */
	uint64_t ring_sends;          /* io_uring sendring: sends that went as send bundles from a
					 connection's send ring (in send_calls too) */
	uint64_t ring_resets;         /* io_uring sendring: send rings registered afresh because a send
					 that failed may have left entries in them */
	uint64_t ring_refusals;       /* io_uring sendring: connections whose send ring the kernel refused
					 to register (e.g. RLIMIT_MEMLOCK): they send with sendmsg */
};

/*
 * Most share-nothing event loops one server runs (threads=N): one
 * SO_REUSEPORT listener, one ring or epoll instance and one stats slot each.
 * Sized for a 64-core machine with headroom; the kernel spreads new
 * connections over the listeners by a hash of the 4-tuple.
 */
#define EC_MAX_SERVER_THREADS 256

/* Bind and listen (TCP_NODELAY, SO_REUSEADDR, non-blocking). Returns the fd. */
int ec_listen(const char *host, int port, int backlog, int *bound_port);

/*
 * ec_listen, plus SO_REUSEPORT when reuseport is non-zero: every listener of
 * a multi-threaded server binds the same port with it (the first one may
 * bind port 0 and tell the others the port it got).
 */
int ec_listen_reuseport(const char *host, int port, int backlog, int reuseport, int *bound_port);

/*
 * The totals over n consecutive stats slots (one per server thread), read
 * with relaxed loads while the loops write them: counters and recv_hist
 * buckets add up, pending_bytes_max is the largest, running is 1 only when
 * every loop runs.  n == 0 gives all zeros.
 */
void ec_server_stats_sum(const struct ec_server_stats *slots, uint32_t n, struct ec_server_stats *out);

/* Raise the soft RLIMIT_NOFILE to the hard limit. Returns the new soft limit. */
int ec_raise_nofile(void);

/*
 * Run an echo server on listen_fd until stop_fd becomes readable.
 * Once set-up is complete (ring or epoll created, buffers registered,
 * accept armed) one byte is written to cfg->ready_fd, unless it is -1; a
 * negative errno returned before that byte is a set-up failure.
 * Returns 0 after a clean stop, or a negative errno.
 * Neither function closes listen_fd, stop_fd or ready_fd.
 */
/*
 * The multishot budget an io_uring server uses when ec_server_config.mshot_budget is 0:
 * a quarter of the pool (with grow: of the buffers provided so far), between 1 and
 * EC_DEFAULT_MSHOT_BUDGET buffers.
 */
uint32_t ec_default_mshot_budget(uint32_t buf_count);

int ec_uring_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
		   struct ec_server_stats *stats);
int ec_epoll_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
		   struct ec_server_stats *stats);

/* ------------------------------------------------------- kernel probe */

#define EC_PROBE_MAX_OPS 256

/* What io_uring on this kernel accepts; each *_taskrun/issuer field is 0 or the setup's -errno. */
struct ec_uring_probe {
	int setup_error;          /* 0, or -errno when no ring can be set up at all */
	uint32_t features;        /* IORING_FEAT_* bits from io_uring_setup */
	uint32_t ops_len;         /* opcodes the kernel knows */
	uint8_t op_supported[EC_PROBE_MAX_OPS];
	int coop_taskrun;         /* IORING_SETUP_COOP_TASKRUN */
	int single_issuer;        /* IORING_SETUP_SINGLE_ISSUER */
	int defer_taskrun;        /* IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN */
};

/* Fill out; returns 0 (a refused io_uring is reported in setup_error, not as a failure). */
int ec_uring_probe(struct ec_uring_probe *out);

/* ------------------------------------------------------- load generator */

#define EC_MODE_STREAM 0   /* write continuously, read echoes as they come */
#define EC_MODE_RR     1   /* closed loop: write, wait for the whole echo, repeat */
#define EC_MODE_RATE   2   /* open loop: requests on a schedule, pipelined */

/*
 * Client designs (ec_load_config.client): how the load generator's threads do
 * their I/O.  Every design verifies every byte and fills the same result.
 *   EPOLL_ET  one edge-triggered epoll loop per worker thread, reads of up to
 *             256 KiB until EAGAIN (at most 8 per connection per turn)
 *   EPOLL_LT  one level-triggered epoll loop per worker thread, one 64 KiB
 *             read per readiness report, EPOLLOUT watched only while a send
 *             is blocked (epoll_ctl MOD) -- the textbook single-threaded client
 *   THREADS   blocking sockets, a thread per connection (stream: a sender and
 *             a receiver thread), 64 KiB reads; not for rate mode, at most
 *             EC_LOAD_MAX_THREADS_CONNECTIONS connections
 */
#define EC_CLIENT_EPOLL_ET 0
#define EC_CLIENT_EPOLL_LT 1
#define EC_CLIENT_THREADS  2

#define EC_ARRIVALS_UNIFORM 0  /* rate: fixed gaps, connections spread over one gap */
#define EC_ARRIVALS_POISSON 1  /* rate: each connection a Poisson process at rate/connections */

/*
 * The load generator's limits and defaults, owned here: ec_load_run rejects
 * (-EINVAL) a config beyond a limit, and the Python side reads the same
 * values from lib.  Plain decimal integers: the cdef keeps only
 * `#define NAME <integer>` lines.
 */
#define EC_LOAD_MAX_CONNECTIONS 1048576       /* connections, 2^20 */
#define EC_LOAD_MAX_THREADS 1024              /* worker threads */
#define EC_LOAD_MAX_SECONDS 10000000          /* any duration in s (1e7): keeps ns sums far from overflow */
#define EC_LOAD_MAX_RATE 1000000000           /* rate mode: total requests per second (1e9) */
#define EC_LOAD_MAX_SERVER_PIDS 1024          /* server_pids */
#define EC_LOAD_MAX_THREADS_CONNECTIONS 1024 /* client THREADS: connections (stream: 2 threads each) */
#define EC_LOAD_DEFAULT_STREAM_BUDGET 67108864 /* stream: default cap on all connections' windows, 64 MiB */
#define EC_LOAD_DEFAULT_CONNECT_TIMEOUT_S 10  /* connect_timeout_s where it is 0 */

/* Kernel counters (perf events) a load run may count on the server's threads at most. */
#define EC_MAX_COUNTERS 32

/* One perf event to count on the server: perf_event_attr's type and config. */
struct ec_counter {
	uint32_t type;            /* PERF_TYPE_TRACEPOINT (2), PERF_TYPE_HARDWARE (0), ... */
	uint64_t config;          /* tracepoint id (tracefs events/SYS/NAME/id), or PERF_COUNT_HW_* */
};

/* The window's throughput series: echoed bytes per interval of at least EC_SERIES_STEP_MS, at most this many. */
#define EC_SERIES_MAX 600
#define EC_SERIES_STEP_MS 100

/* Latency histogram buckets exported in the result (must equal histogram.h's count). */
#define EC_HIST_BUCKETS 1920

struct ec_load_config {
	const char *host;         /* numeric IPv4/IPv6 address */
	int port;
	int mode;                 /* EC_MODE_* */
	uint32_t payload;         /* bytes per message (> 0) */
	uint32_t connections;     /* > 0 */
	uint32_t threads;         /* worker threads (> 0) */
	const int *cpus;          /* CPUs to pin worker i to cpus[i % ncpus]; may be NULL */
	uint32_t ncpus;
	double warmup_s;          /* run but discard results for at least this long */
	double warmup_max_s;      /* stream, rr: open the window once steady, by this at the latest;
				     0 (or == warmup_s) = fixed warm-up; ignored in rate mode */
	double duration_s;        /* measured window (> 0) */
	double rate;              /* EC_MODE_RATE: total requests per second */
	int arrivals;             /* EC_MODE_RATE: EC_ARRIVALS_* */
	uint64_t seed;            /* EC_MODE_RATE: poisson schedule seed */
	uint32_t window;          /* EC_MODE_STREAM: max unechoed bytes per connection; 0 = default */
	double connect_timeout_s; /* give up on connections not established by then */
	const int *server_pids;   /* server processes whose CPU use the window records; may be NULL */
	uint32_t nserver_pids;
	const struct ec_server_stats *server_stats; /* the server's live counters (read-only); may be NULL */
	uint32_t nserver_stats;   /* consecutive slots at server_stats (one per server thread, at most
				     EC_MAX_SERVER_THREADS); their totals are snapshot; 0 counts as 1 */
	int stop_fd;              /* -1, or a fd whose readability ends the run early */
	int window_ctl_fd;        /* -1, or a fd (e.g. perf's --control fifo) that gets "enable\n"
				     at the window's start and "disable\n" at its end */
	const struct ec_counter *counters; /* perf events counted on every server pid's threads
					      (inherited by threads they create), may be NULL */
	uint32_t ncounters;       /* at most EC_MAX_COUNTERS */
	double start_at_s;        /* 0, or a CLOCK_REALTIME instant (s since the epoch): with every
				     connection up, wait for it before t0, so that load generators on
				     several hosts run the same warm-up and window */
	int client;               /* EC_CLIENT_*: the client design */
};

struct ec_load_result {
	double duration_s;        /* length of the measured window actually run */
	double warmup_s;          /* warm-up actually used (window start - t0) */
	int warmup_steady;        /* -1 fixed warm-up; 1 steady state reached; 0 warmup_max hit */
	uint64_t connected;       /* connections established */
	uint64_t msgs;            /* messages fully echoed inside the window */
	uint64_t bytes;           /* echoed bytes received inside the window */
	uint64_t latency_count;   /* latency samples (rr; rate, censored ones included) */
	double lat_mean_us;
	double lat_min_us;
	double p50_us, p90_us, p99_us, p999_us;
	double max_us;
	uint64_t unanswered;      /* rr, rate: requests due before the window end, unanswered at it
				     (rate: also in the percentiles at window end - due) */
	uint64_t never_answered;  /* requests sent whose echo never came (drain gave up; stream: payload units) */
	double send_lag_p50_us;   /* rate: first send of a request minus its scheduled time */
	double send_lag_p99_us;
	double send_lag_max_us;
	double fairness;          /* Jain's index over per-connection echoed bytes */
	uint64_t conn_bytes_min;
	uint64_t conn_bytes_max;
	uint64_t mismatches;      /* echoed bytes that differ from what was sent */
	uint64_t mismatched_conns;
	uint64_t connect_errors;  /* connections that failed or timed out */
	uint64_t io_errors;       /* connections reset or closed by the server mid-run */
	double cpu_user_s;        /* client process CPU inside the window */
	double cpu_sys_s;
	uint64_t send_calls;
	uint64_t recv_calls;
	/* The server, at the window's edges (taken by the load generator's timeline thread). */
	int server_snap;          /* 1: the server_* fields below cover the window */
	int server_stats_snap;    /* 1: server_start/server_end were copied from server_stats */
	struct ec_server_stats server_start;
	struct ec_server_stats server_end;
	uint64_t server_cpu_ns;   /* all server pids, from their CPU-time clocks (exited threads included) */
	double server_cpu_user_s; /* from /proc/PID/stat, clock-tick resolution */
	double server_cpu_sys_s;
	/* From /proc over the window (valid when server_proc_snap is 1). */
	int server_proc_snap;
	uint64_t server_vol_ctxsw;    /* voluntary context switches, summed over /proc/PID/task/ * */
	uint64_t server_invol_ctxsw;  /* involuntary ones */
	uint64_t server_minflt;       /* minor faults of the whole process (/proc/PID/stat field 10) */
	/* cfg->counters[i] over the window; status 0, or -errno why counter_delta[i] means nothing. */
	uint64_t counter_delta[EC_MAX_COUNTERS];
	int counter_status[EC_MAX_COUNTERS];
	uint64_t latency_hist[EC_HIST_BUCKETS]; /* merged latency histogram (ns buckets) */
	double start_late_s;      /* with start_at_s: how late t0 came after it (connecting took
				     longer than the barrier allowed); 0 otherwise */
	/* Echoed bytes per series_step_ns over the window (the last, shorter interval left out):
	   what a stationarity check needs. */
	uint32_t series_n;
	uint64_t series_step_ns;
	uint64_t series[EC_SERIES_MAX];
};

/* Run one load. Returns 0, or a negative errno for bad config or set-up failure. */
int ec_load_run(const struct ec_load_config *cfg, struct ec_load_result *res);

/*
 * Keep each tracepoint among the n events registered until
 * ec_counters_release: one disabled, non-inherited perf event on the
 * calling process per tracepoint not held yet.  Closing the last perf event
 * on a tracepoint waits for an RCU grace period under the kernel's event
 * mutex (about 35 ms here, 0.6 s for a run's 16 tracepoints); while they
 * are held, a run's own events close at once.  Counts nothing, but a held
 * syscall tracepoint keeps every task's system calls on the traced path, as
 * during a run: hold across a sweep, not for a process's life.  Returns the
 * number held now, or a negative errno if one could not be opened (the
 * others stay held).
 */
int ec_counters_hold(const struct ec_counter *events, uint32_t n);
/* Close what ec_counters_hold holds (this is where the grace periods are paid, once). */
void ec_counters_release(void);

/*
 * The first n scheduled times (ns after t0) of connection `index` out of
 * `connections` at total `rate` with the given arrivals and seed: exactly
 * the schedule a rate run uses.  Returns 0 or -EINVAL.
 */
int ec_load_schedule(int arrivals, double rate, uint32_t connections, uint32_t index,
		     uint64_t seed, uint64_t *times_ns, uint32_t n);

/* Latency histogram bucket idx covers [low, low + width) nanoseconds; both 0 for idx >= EC_HIST_BUCKETS. */
uint64_t ec_hist_bucket_low(unsigned idx);
uint64_t ec_hist_bucket_width(unsigned idx);

#endif
