/*
 * load.h - the load generator's internals, shared by its files (not part of
 * the cffi API).
 *
 *   loadgen.c       ec_load_run: validate, connect, start workers, results
 *   load_connect.c  connect phase
 *   load_worker.c   a worker thread: epoll loop, send/recv/verify, drain
 *   load_threads.c  the THREADS client: a blocking thread per connection
 *   load_stream.c   \
 *   load_rr.c        } what each mode does (struct load_mode)
 *   load_rate.c     /
 *   load_timeline.c the calling thread: warm-up, window edges, snapshots
 *   load_server.c   reading the server's counters and CPU time
 *   load_counters.c perf events (tracepoints, PMU) counted on the server's threads
 *   pattern.c       verification pattern
 *   arrivals.c      rate mode's schedule
 */
#ifndef ECHO_CORE_LOAD_H
#define ECHO_CORE_LOAD_H

#include <pthread.h>
#include <stdint.h>

#include "../echo_core.h"
#include "arrivals.h"
#include "histogram.h"

#define MAX_CHUNK (256u * 1024)          /* cap on every send and recv */
#define SMALL_READ (64u * 1024)          /* EPOLL_LT and THREADS clients' read size */
#define THREAD_STACK (256u * 1024)       /* THREADS: each thread's stack (its buffers are on the heap) */
#define WIN_UNKNOWN UINT64_MAX           /* window edge not decided yet */
#define DRAIN_IDLE_NS (1000ull * 1000000) /* drain: give up once nothing arrived this long */
#define DRAIN_MAX_NS (10ull * 1000000000) /* drain: at most this long */

struct conn {
	int fd;                 /* -1 once closed */
	uint32_t index;         /* global connection number */
	uint32_t seed;          /* pattern offset of stream byte 0 */
	uint8_t blocked;        /* last send hit a full socket buffer */
	uint8_t mismatched;
	uint8_t failed;         /* reset or EOF by the server */
	uint8_t dirty;          /* rate: on the worker's to-send list */
	uint8_t again;          /* read budget ran out: on the worker's again list */
	uint8_t watch_out;      /* EPOLL_LT: EPOLLOUT is in the interest set */
	uint64_t sent;          /* stream bytes sent */
	uint64_t sending;       /* THREADS: stream offset a send under way may reach (>= sent) */
	uint64_t recvd;         /* stream bytes received */
	uint64_t send_limit;    /* may send up to this stream offset */
	uint64_t win_bytes;     /* bytes received inside the measured window */
	uint64_t req_start;     /* rr: time the current request was first sent */
	/*
	 * rate: three cursors over the same recomputable schedule - next
	 * request to post, next request whose first byte goes out (send lag),
	 * next request to complete (due.k == requests completed).
	 */
	uint64_t start_ns;
	struct ec_sched post;
	struct ec_sched first;
	struct ec_sched due;
};

struct worker;

/*
 * What a mode does, in one place.  Hooks may be NULL, except start and
 * unechoed.  The worker calls:
 *   setup           before the start gate: per-worker allocations
 *   start           once the clock runs: first send limits, schedules
 *   send_cap        limit one send's length (stream: one message per call)
 *   before_send     just before a send of stream offset c->sent
 *   after_send      n bytes from stream offset off went out at time t
 *   on_echoed       c->recvd grew at time t (verified separately)
 *   tick            post what is due by now; returns the next due time
 *   at_window_close the worker passed the window's end: censor what is open
 *   unechoed        requests sent on c but never (fully) echoed
 */
struct load_mode {
	int (*setup)(struct worker *w);
	void (*start)(struct worker *w);
	uint64_t (*send_cap)(const struct worker *w, const struct conn *c, uint64_t len);
	void (*before_send)(struct worker *w, struct conn *c);
	void (*after_send)(struct worker *w, struct conn *c, uint64_t off, uint64_t n, uint64_t t);
	void (*on_echoed)(struct worker *w, struct conn *c, uint64_t t);
	uint64_t (*tick)(struct worker *w, uint64_t now);
	void (*at_window_close)(struct worker *w);
	uint64_t (*unechoed)(const struct worker *w, const struct conn *c);
};

extern const struct load_mode ec_load_stream, ec_load_rr, ec_load_rate;

/* load_counters.c: perf events counted on the server's threads. */
struct counter_fd {
	int fd;
	uint32_t event;         /* index into cfg->counters */
};
struct counters {
	uint32_t n;             /* events (cfg->ncounters) */
	int status[EC_MAX_COUNTERS]; /* 0, or -errno: the event could not be opened on every thread */
	struct counter_fd *fds;
	uint32_t nfds, cap;
};
int ec_counters_open(struct counters *c, const struct ec_load_config *cfg);
void ec_counters_read(const struct counters *c, uint64_t *vals, int *status);
void ec_counters_close(struct counters *c);

struct load {
	const struct ec_load_config *cfg;
	const struct load_mode *ops;
	int mode;
	uint64_t payload;
	uint64_t window;        /* stream: max unechoed bytes per connection */
	struct ec_arrivals arr; /* rate: the schedule */
	uint8_t *pattern;
	uint64_t t0;
	/*
	 * The window, decided by the timeline thread possibly after the
	 * workers started (adaptive warm-up).  Written end first, then start
	 * with release; workers acquire start, and once it is known, end is.
	 */
	uint64_t win_start, win_end;
	/* start gate: workers set up, then wait for t0 */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint32_t ready;
	int state;
	struct worker *ws;
	uint32_t nw;
	struct counters ctr;    /* opened before the connections, read at the window's edges */
};

struct worker {
	pthread_t thread;
	struct load *ld;
	const struct load_mode *ops;
	struct conn *conns;
	uint32_t nconns;
	int cpu;                /* -1: not pinned */
	int epfd;
	int setup_err;
	int draining;
	int no_pwait2;          /* kernel without epoll_pwait2: ms timeouts */
	int level;              /* EPOLL_LT: level-triggered, one read per report */
	uint32_t read_size;     /* bytes one recv asks for */
	/* THREADS stream: the receiving thread, and the sender's wait for window space */
	pthread_t reader;
	int reader_up;
	pthread_mutex_t space_lock;
	pthread_cond_t space;
	int sender_waiting;     /* the sender sleeps on space (seq_cst with recvd, see load_threads.c) */
	int sender_done;        /* the sender stopped sending: c->sent is final */
	int stopped;            /* the stop fd fired */
	uint64_t win_start;     /* this worker's copy of the window; WIN_UNKNOWN until published */
	uint64_t win_end;
	uint8_t *buf;           /* MAX_CHUNK receive buffer */
	struct conn **dirty;    /* rate: connections with newly due requests */
	uint32_t ndirty;
	struct conn **heap;     /* rate: min-heap of connections by next posting time */
	struct conn **again;    /* connections with unread data left over */
	uint32_t nagain;
	uint64_t drain_left;    /* draining: connections still owed bytes */
	uint64_t rx_total;      /* all bytes received, to see drain progress */
	uint64_t tx_total;      /* all bytes sent */
	/* published for the timeline's steadiness check (single writer, relaxed) */
	uint64_t pub_tx, pub_rx;
	/* results */
	uint64_t msgs;
	uint64_t bytes;
	uint64_t mismatches;
	uint64_t mismatched_conns;
	uint64_t io_errors;
	uint64_t unanswered;
	uint64_t never_answered;
	uint64_t send_calls;    /* all calls; the result reports the window's share */
	uint64_t recv_calls;
	int win_started;
	uint64_t send_calls0, recv_calls0;  /* at window start */
	uint64_t send_calls1, recv_calls1;  /* at window end */
	struct ec_hist hist;
	struct ec_hist lag;     /* rate: send lag */
};

/*
 * Pick up the window once the timeline has published it (acquire pairs
 * with its release).  Checked per event, not per loop turn: one turn of a
 * busy stream worker can take tens of ms, and every byte after the start
 * must count.
 */
static inline void load_window(struct worker *w)
{
	uint64_t start;

	if (w->win_start != WIN_UNKNOWN)
		return;
	start = __atomic_load_n(&w->ld->win_start, __ATOMIC_ACQUIRE);
	if (start == WIN_UNKNOWN)
		return;
	w->win_end = __atomic_load_n(&w->ld->win_end, __ATOMIC_RELAXED);
	w->win_start = start;
}

static inline int in_window(struct worker *w, uint64_t t)
{
	load_window(w);
	return t >= w->win_start && t < w->win_end;
}

/* Is t at or past a window end that is already known? */
static inline int past_window(struct worker *w, uint64_t t)
{
	load_window(w);
	return w->win_end != WIN_UNKNOWN && t >= w->win_end;
}

/* rr, rate: requests (wholly or partly) sent on c whose echo is incomplete. */
static inline uint64_t requests_unechoed(const struct worker *w, const struct conn *c)
{
	uint64_t p = w->ld->payload, got = c->recvd < c->sent ? c->recvd : c->sent;

	return (c->sent + p - 1) / p - got / p;
}

/* load_worker.c */
void *ec_worker_main(void *arg);
void ec_conn_write(struct worker *w, struct conn *c);
void ec_conn_received(struct worker *w, struct conn *c, const uint8_t *buf, uint64_t n,
		      uint64_t off, uint64_t owed, uint64_t t);
void ec_conn_unechoed(struct worker *w, int drain_idle);

/* load_threads.c: the THREADS client (one thread per connection, blocking sockets). */
void *ec_threads_main(void *arg);

/* load_timeline.c */
enum { GATE_WAIT, GATE_GO, GATE_ABORT };
int ec_gate_wait(struct load *ld);
void ec_gate_wait_ready(struct load *ld, uint32_t n);
void ec_gate_open(struct load *ld, int state);
void ec_window_publish(struct load *ld, uint64_t start, uint64_t end);
void ec_run_timeline(struct load *ld, struct ec_load_result *res);

/* load_server.c: the server's counters and CPU at one instant. */
struct server_snap {
	int ok;                 /* cpu_ns, user_s, sys_s, minflt read */
	int proc_ok;            /* and the context switches too */
	uint64_t cpu_ns;
	double user_s, sys_s;
	uint64_t minflt;
	uint64_t vol_ctxsw, invol_ctxsw;
	struct ec_server_stats stats;
};
void ec_server_snap(const struct ec_load_config *cfg, struct server_snap *s);


#endif
