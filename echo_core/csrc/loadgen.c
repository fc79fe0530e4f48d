/*
 * loadgen.c - the load generator: many TCP connections against an echo
 * server, every echoed byte verified, latencies in a histogram.
 *
 * A run (ec_load_run) goes:
 *   1. validate the config, raise RLIMIT_NOFILE, build the pattern table;
 *   2. connect phase on the calling thread (not measured);
 *   3. worker threads, each with its own edge-triggered epoll, take a
 *      round-robin share of the connections;
 *   4. t0, warm-up, measured window, hard stop at its end; then a short
 *      drain that only checks that every byte sent came back;
 *   5. merge the per-thread results, close with RST, free.
 *
 * Verification: byte i of connection c's stream is
 * pattern[(seed_c + i) % PATTERN_PERIOD].  The table holds PERIOD +
 * MAX_CHUNK bytes, so any send or recv (capped at MAX_CHUNK) maps onto one
 * contiguous slice: sends go straight from the table and received bytes are
 * checked with a single memcmp.  Seeds differ per connection, so bytes that
 * leak from another connection are caught too.
 *
 * The hot loop makes no allocations and no system calls beyond
 * epoll_pwait2, recv and send (clock_gettime is a vDSO call).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "echo_core.h"
#include "clock.h"
#include "histogram.h"
#include "load_connect.h"
#include "net.h"


#define PATTERN_PERIOD 65521u            /* prime: only shifts by multiples of it go unseen */
#define SEED_STRIDE 40503u               /* < PERIOD: seeds distinct for 65521 conns */
#define MAX_CHUNK (256u * 1024)          /* cap on every send and recv */
#define DEFAULT_WINDOW (256u * 1024)     /* stream: minimum default in-flight window */
#define DEFAULT_STREAM_BUDGET (64ull << 20) /* stream: default cap on all connections' windows */
#define MIN_WINDOW 4096u
#define MAX_EVENTS 256
#define READ_BUDGET 8                    /* recvs per connection per turn */
#define DEFAULT_CONNECT_TIMEOUT_S 10.0
#define DRAIN_IDLE_NS (1000 * NS_PER_MS) /* give up once nothing arrived this long */
#define DRAIN_MAX_NS (10 * NS_PER_S)
#define MAX_THREADS 1024
#define MAX_CONNECTIONS (1u << 20)
#define MAX_SECONDS 1e7                  /* keeps nanosecond sums far from overflow */

enum { GATE_WAIT, GATE_GO, GATE_ABORT };

struct conn {
	int fd;                 /* -1 once closed */
	uint32_t index;         /* global connection number */
	uint32_t seed;          /* pattern offset of stream byte 0 */
	uint8_t blocked;        /* last send hit a full socket buffer */
	uint8_t mismatched;
	uint8_t failed;         /* reset or EOF by the server */
	uint8_t dirty;          /* rate: on the worker's to-send list */
	uint8_t again;          /* read budget ran out: on the worker's again list */
	uint64_t sent;          /* stream bytes sent */
	uint64_t recvd;         /* stream bytes received */
	uint64_t send_limit;    /* may send up to this stream offset */
	uint64_t win_bytes;     /* bytes received inside the measured window */
	uint64_t req_start;     /* rr: time the current request was first sent */
	uint64_t start_ns;      /* rate: scheduled time of request 0 */
	uint64_t done;          /* rate: requests whose echo is complete */
};

struct load;

struct worker {
	pthread_t thread;
	struct load *ld;
	struct conn *conns;
	uint32_t nconns;
	int cpu;                /* -1: not pinned */
	int epfd;
	int setup_err;
	int draining;
	int no_pwait2;          /* kernel without epoll_pwait2: ms timeouts */
	uint8_t *buf;           /* MAX_CHUNK receive buffer */
	struct conn **dirty;    /* rate: connections with newly due requests */
	uint32_t ndirty;
	struct conn **again;    /* connections with unread data left over */
	uint32_t nagain;
	uint32_t cur_j;         /* rate: the next request due is number cur_k */
	uint64_t cur_k;         /*       of connection conns[cur_j] */
	uint64_t drain_left;    /* draining: connections still owed bytes */
	uint64_t rx_total;      /* all bytes received, to see drain progress */
	/* results */
	uint64_t msgs;
	uint64_t bytes;
	uint64_t mismatches;
	uint64_t mismatched_conns;
	uint64_t io_errors;
	uint64_t send_calls;    /* all calls; the result reports the window's share */
	uint64_t recv_calls;
	int win_started;
	uint64_t send_calls0, recv_calls0;  /* at window start */
	uint64_t send_calls1, recv_calls1;  /* at window end */
	struct ec_hist hist;
};

struct load {
	const struct ec_load_config *cfg;
	int mode;
	uint64_t payload;
	uint64_t window;        /* stream: max unechoed bytes per connection */
	double interval_ns;     /* rate: between requests of one connection */
	double phase_ns;        /* rate: between consecutive connections' starts */
	uint8_t *pattern;
	uint64_t t0, win_start, win_end;
	/* start gate: workers set up, then wait for t0 */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint32_t ready;
	int state;
};

static struct timespec ns_to_ts(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S) };

	return ts;
}

static double tv_s(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

/* ------------------------------------------------------------ config */

static int fd_ok(int fd)
{
	return fd < 0 || fcntl(fd, F_GETFD) >= 0;
}

static int validate(const struct ec_load_config *cfg)
{
	uint32_t i;

	if (!cfg->host || cfg->port <= 0 || cfg->port > 65535)
		return -EINVAL;
	if (cfg->payload == 0 || cfg->connections == 0 || cfg->connections > MAX_CONNECTIONS)
		return -EINVAL;
	if (cfg->threads == 0 || cfg->threads > MAX_THREADS)
		return -EINVAL;
	/* Written as !(x > 0) so NaN is rejected too. */
	if (!(cfg->duration_s > 0) || cfg->duration_s > MAX_SECONDS)
		return -EINVAL;
	if (!(cfg->warmup_s >= 0) || cfg->warmup_s > MAX_SECONDS)
		return -EINVAL;
	if (!(cfg->connect_timeout_s >= 0) || cfg->connect_timeout_s > MAX_SECONDS)
		return -EINVAL;
	if (cfg->mode != EC_MODE_STREAM && cfg->mode != EC_MODE_RR && cfg->mode != EC_MODE_RATE)
		return -EINVAL;
	if (cfg->mode == EC_MODE_RATE && (!(cfg->rate > 0) || cfg->rate > 1e9))
		return -EINVAL;
	if (cfg->cpus && cfg->ncpus) {
		for (i = 0; i < cfg->ncpus; i++)
			if (cfg->cpus[i] < 0 || cfg->cpus[i] >= CPU_SETSIZE)
				return -EINVAL;
	}
	if (!fd_ok(cfg->notify_fd) || !fd_ok(cfg->stop_fd))
		return -EBADF;
	return 0;
}

/*
 * max(4 * payload, 256 KiB) per connection, but at most 64 MiB over all
 * connections: 10,000 connections with 256 KiB each in flight would exceed
 * the kernel's TCP memory limit (tcp_mem) and stall on drops and
 * retransmit timeouts, while loopback needs far less in flight to run at
 * full speed.
 */
static uint64_t default_window(uint32_t payload, uint32_t connections)
{
	uint64_t w = 4ull * payload, cap = DEFAULT_STREAM_BUDGET / connections;

	if (w < DEFAULT_WINDOW)
		w = DEFAULT_WINDOW;
	if (cap < MIN_WINDOW)
		cap = MIN_WINDOW;
	return w < cap ? w : cap;
}

static uint8_t *make_pattern(void)
{
	uint8_t *p = malloc(PATTERN_PERIOD + MAX_CHUNK);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	uint32_t i;

	if (!p)
		return NULL;
	/* xorshift64: no structure a shifting or duplicating server could match. */
	for (i = 0; i < PATTERN_PERIOD; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 32);
	}
	/* The tail repeats the start so every chunk is one contiguous slice. */
	for (i = PATTERN_PERIOD; i < PATTERN_PERIOD + MAX_CHUNK; i++)
		p[i] = p[i - PATTERN_PERIOD];
	return p;
}

/* -------------------------------------------------------- start gate */

static int gate_wait(struct load *ld)
{
	int state;

	pthread_mutex_lock(&ld->lock);
	ld->ready++;
	pthread_cond_broadcast(&ld->cond);
	while (ld->state == GATE_WAIT)
		pthread_cond_wait(&ld->cond, &ld->lock);
	state = ld->state;
	pthread_mutex_unlock(&ld->lock);
	return state;
}

static void gate_wait_ready(struct load *ld, uint32_t n)
{
	pthread_mutex_lock(&ld->lock);
	while (ld->ready < n)
		pthread_cond_wait(&ld->cond, &ld->lock);
	pthread_mutex_unlock(&ld->lock);
}

static void gate_open(struct load *ld, int state)
{
	pthread_mutex_lock(&ld->lock);
	ld->state = state;
	pthread_cond_broadcast(&ld->cond);
	pthread_mutex_unlock(&ld->lock);
}

/* ------------------------------------------------------ per connection */

static int in_window(const struct load *ld, uint64_t t)
{
	return t >= ld->win_start && t < ld->win_end;
}

static void mark_mismatch(struct worker *w, struct conn *c, uint64_t nbytes)
{
	w->mismatches += nbytes;
	if (!c->mismatched) {
		c->mismatched = 1;
		w->mismatched_conns++;
	}
}

/* The server closed or reset the connection: close ours, keep the rest going. */
static void conn_fail(struct worker *w, struct conn *c)
{
	if (w->draining && c->recvd < c->sent)
		w->drain_left--;
	close(c->fd);
	c->fd = -1;
	c->failed = 1;
	w->io_errors++;
}

/*
 * Check n bytes received at stream offset off, when owed bytes had been
 * sent but not yet echoed; anything past owed was never sent.
 */
static void conn_verify(struct worker *w, struct conn *c, const uint8_t *buf, uint64_t n,
			uint64_t off, uint64_t owed)
{
	const uint8_t *want = w->ld->pattern + (c->seed + off) % PATTERN_PERIOD;
	uint64_t len = n < owed ? n : owed;
	uint64_t bad = n - len;             /* bytes beyond what was ever sent */
	uint64_t i;

	if (len && memcmp(buf, want, len)) {
		for (i = 0; i < len; i++)
			bad += buf[i] != want[i];
	}
	if (bad)
		mark_mismatch(w, c, bad);
}

static uint64_t rate_sched(const struct load *ld, const struct conn *c, uint64_t k)
{
	return c->start_ns + (uint64_t)((double)k * ld->interval_ns);
}

/* Book n verified bytes that arrived at time t. */
static void conn_account(struct worker *w, struct conn *c, uint64_t n, uint64_t t)
{
	struct load *ld = w->ld;
	uint64_t before = c->recvd, complete;
	int inwin = in_window(ld, t);

	c->recvd += n;
	w->rx_total += n;
	if (inwin) {
		c->win_bytes += n;
		w->bytes += n;
		w->msgs += c->recvd / ld->payload - before / ld->payload;
	}
	if (w->draining) {
		if (before < c->sent && c->recvd >= c->sent)
			w->drain_left--;
		return;
	}
	switch (ld->mode) {
	case EC_MODE_STREAM:
		c->send_limit = c->recvd + ld->window;
		break;
	case EC_MODE_RR:
		/* Complete only once the whole request went out: extra bytes are garbage. */
		if (c->sent == c->send_limit && c->recvd >= c->send_limit) {
			if (inwin)
				ec_hist_record(&w->hist, t - c->req_start);
			c->send_limit += ld->payload;
		}
		break;
	case EC_MODE_RATE:
		/* The schedule is fixed, so request k's start time needs no queue. */
		complete = (c->recvd < c->sent ? c->recvd : c->sent) / ld->payload;
		for (; c->done < complete; c->done++) {
			uint64_t due = rate_sched(ld, c, c->done);

			if (inwin)
				ec_hist_record(&w->hist, t > due ? t - due : 0);
		}
		break;
	}
}

static void conn_write(struct worker *w, struct conn *c);

static void conn_read(struct worker *w, struct conn *c)
{
	uint64_t off, owed;
	unsigned reads = 0;
	ssize_t n;

	for (;;) {
		/*
		 * A server that floods us must not keep this loop from the
		 * window's end or starve the other connections: after the budget,
		 * come back on the next turn (edge-triggered epoll will not
		 * remind us).
		 */
		if (reads++ == READ_BUDGET) {
			if (!c->again) {
				c->again = 1;
				w->again[w->nagain++] = c;
			}
			return;
		}
		n = recv(c->fd, w->buf, MAX_CHUNK, 0);
		w->recv_calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				conn_fail(w, c);
			return;
		}
		if (n == 0) {
			conn_fail(w, c);
			return;
		}
		off = c->recvd;
		owed = c->sent > off ? c->sent - off : 0;
		conn_account(w, c, (uint64_t)n, now_ns());
		/* Refill the pipe first: the memcmp then overlaps with the server's work. */
		if (!c->blocked && c->sent < c->send_limit)
			conn_write(w, c);
		conn_verify(w, c, w->buf, (uint64_t)n, off, owed);
		/* Edge-triggered: a short read emptied the queue; new data brings a new edge. */
		if (c->failed || (size_t)n < MAX_CHUNK)
			return;
	}
}

static void conn_write(struct worker *w, struct conn *c)
{
	const struct load *ld = w->ld;
	uint64_t len, rest;
	ssize_t n;

	while (c->sent < c->send_limit) {
		len = c->send_limit - c->sent;
		if (len > MAX_CHUNK)
			len = MAX_CHUNK;
		/* Stream sends one message per call, so payload sets the syscall size. */
		if (ld->mode == EC_MODE_STREAM) {
			rest = ld->payload - c->sent % ld->payload;
			if (len > rest)
				len = rest;
		}
		/* rr: the round trip starts with the request's first send (retried if EAGAIN). */
		if (ld->mode == EC_MODE_RR && c->sent + ld->payload == c->send_limit)
			c->req_start = now_ns();
		n = send(c->fd, ld->pattern + (c->seed + c->sent) % PATTERN_PERIOD, len, MSG_NOSIGNAL);
		w->send_calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->blocked = 1;
			else
				conn_fail(w, c);
			return;
		}
		c->sent += (uint64_t)n;
		/* A short send means the buffer is full; EPOLLOUT will fire when it drains. */
		if ((uint64_t)n < len) {
			c->blocked = 1;
			return;
		}
	}
}

static void conn_event(struct worker *w, struct conn *c, uint32_t events)
{
	if (c->failed)
		return;
	if (events & EPOLLOUT)
		c->blocked = 0;
	/* Always read before writing: a big rr payload must not deadlock on full buffers. */
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
		conn_read(w, c);
	if (!c->failed && !c->blocked && c->sent < c->send_limit)
		conn_write(w, c);
}

/* ------------------------------------------------------------ workers */

/*
 * Rate mode: post every request due by now and return the time of the
 * next one.  Within a thread, connection j starts at a later phase than
 * j-1 but less than one interval later, so walking (k, j) in order walks
 * the schedule in time order.
 */
static uint64_t rate_schedule(struct worker *w, uint64_t now)
{
	const struct load *ld = w->ld;
	struct conn *c;
	uint64_t due;
	uint32_t i;

	if (!w->nconns)
		return UINT64_MAX;
	for (;;) {
		c = &w->conns[w->cur_j];
		due = rate_sched(ld, c, w->cur_k);
		if (due > now)
			break;
		c->send_limit = (w->cur_k + 1) * ld->payload;
		if (!c->dirty) {
			c->dirty = 1;
			w->dirty[w->ndirty++] = c;
		}
		if (++w->cur_j == w->nconns) {
			w->cur_j = 0;
			w->cur_k++;
		}
	}
	/* One send per connection however many of its requests fell due. */
	for (i = 0; i < w->ndirty; i++) {
		c = w->dirty[i];
		c->dirty = 0;
		if (!c->failed && !c->blocked)
			conn_write(w, c);
	}
	w->ndirty = 0;
	return due;
}

static int wait_events(struct worker *w, struct epoll_event *evs, uint64_t timeout_ns)
{
	struct timespec ts = ns_to_ts(timeout_ns);
	int n;

	if (!w->no_pwait2) {
		n = epoll_pwait2(w->epfd, evs, MAX_EVENTS, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		w->no_pwait2 = 1;
	}
	return epoll_wait(w->epfd, evs, MAX_EVENTS, ms_timeout(timeout_ns));
}

/*
 * Read on from connections whose read budget ran out.  Each entry adds at
 * most one entry back, at an index not above its own, so the list can be
 * refilled in place while it is walked.
 */
static void run_again_list(struct worker *w)
{
	uint32_t i, n = w->nagain;
	struct conn *c;

	w->nagain = 0;
	for (i = 0; i < n; i++) {
		c = w->again[i];
		c->again = 0;
		conn_event(w, c, EPOLLIN);
	}
}

/*
 * Run the event loop until `end`.  While draining, also stop as soon as no
 * connection is owed bytes, or nothing arrived for DRAIN_IDLE_NS.
 * Returns 1 if the stop fd fired, -1 if the drain went idle, 0 otherwise.
 */
static int worker_loop(struct worker *w, uint64_t end)
{
	struct epoll_event evs[MAX_EVENTS];
	uint64_t now, next, idle_end = 0, rx_seen = w->rx_total;
	int n, i;

	for (;;) {
		now = now_ns();
		if (now >= end)
			return 0;
		next = end;
		/* Snapshot the syscall counters as the window opens. */
		if (!w->win_started && !w->draining) {
			if (now >= w->ld->win_start) {
				w->win_started = 1;
				w->send_calls0 = w->send_calls;
				w->recv_calls0 = w->recv_calls;
			} else if (w->ld->win_start < next) {
				next = w->ld->win_start;
			}
		}
		if (w->draining) {
			if (!w->drain_left)
				return 0;
			if (w->rx_total != rx_seen || !idle_end) {
				rx_seen = w->rx_total;
				idle_end = now + DRAIN_IDLE_NS;
			}
			if (now >= idle_end)
				return -1;
			if (idle_end < next)
				next = idle_end;
		} else if (w->ld->mode == EC_MODE_RATE) {
			uint64_t due = rate_schedule(w, now);

			if (due < next)
				next = due;
			now = now_ns();
			if (now >= next)
				continue;
		}
		n = wait_events(w, evs, w->nagain ? 0 : next - now);
		for (i = 0; i < n; i++) {
			if (!evs[i].data.ptr)
				return 1;
			conn_event(w, evs[i].data.ptr, evs[i].events);
		}
		run_again_list(w);
	}
}

/*
 * After the window: stop sending and wait for what is still in flight.  A
 * correct server returns every byte; bytes that never come back although
 * the server went quiet are losses and count as mismatches.  A drain cut
 * short while bytes were still flowing proves nothing, so it counts none.
 */
static void worker_drain(struct worker *w)
{
	struct conn *c;
	uint32_t i;

	w->draining = 1;
	w->drain_left = 0;
	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		c->send_limit = c->sent;
		if (!c->failed && c->recvd < c->sent)
			w->drain_left++;
	}
	if (worker_loop(w, now_ns() + DRAIN_MAX_NS) != -1)
		return;
	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		if (!c->failed && c->recvd < c->sent)
			mark_mismatch(w, c, c->sent - c->recvd);
	}
}

static void worker_run(struct worker *w)
{
	const struct load *ld = w->ld;
	struct conn *c;
	uint32_t i;
	int ret;

	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		/*
		 * No sends here: adding a connected socket edge-triggered reports
		 * EPOLLOUT at once, so the first sends go out from the event loop in
		 * batches, interleaved with reading.  Sending every connection's
		 * first window up front could take longer than the whole window.
		 */
		switch (ld->mode) {
		case EC_MODE_STREAM:
			c->send_limit = ld->window;
			break;
		case EC_MODE_RR:
			c->send_limit = ld->payload;
			break;
		case EC_MODE_RATE:
			c->start_ns = ld->t0 + (uint64_t)((double)c->index * ld->phase_ns);
			break;
		}
	}
	ret = worker_loop(w, ld->win_end);
	if (w->win_started) {
		w->send_calls1 = w->send_calls;
		w->recv_calls1 = w->recv_calls;
	}
	if (ret == 1)
		return;
	worker_drain(w);
}

static int worker_setup(struct worker *w)
{
	const struct ec_load_config *cfg = w->ld->cfg;
	struct epoll_event ev;
	cpu_set_t set;
	uint32_t i;
	int ret;

	/* Default 50 us timer slack would blur rate-mode send times. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	if (w->cpu >= 0) {
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (ret)
			return -ret;
	}
	w->buf = malloc(MAX_CHUNK);
	w->again = calloc(w->nconns ? w->nconns : 1, sizeof(*w->again));
	if (!w->buf || !w->again)
		return -ENOMEM;
	if (w->ld->mode == EC_MODE_RATE) {
		w->dirty = calloc(w->nconns ? w->nconns : 1, sizeof(*w->dirty));
		if (!w->dirty)
			return -ENOMEM;
	}
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0)
		return -errno;
	if (cfg->stop_fd >= 0) {
		/* Level-triggered, data.ptr NULL: every worker sees the stop. */
		ev.events = EPOLLIN;
		ev.data.ptr = NULL;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, cfg->stop_fd, &ev))
			return -errno;
	}
	for (i = 0; i < w->nconns; i++) {
		/* Both directions, edge-triggered, once: no epoll_ctl in the hot loop. */
		ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
		ev.data.ptr = &w->conns[i];
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->conns[i].fd, &ev))
			return -errno;
	}
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	w->setup_err = worker_setup(w);
	if (gate_wait(w->ld) == GATE_GO && !w->setup_err)
		worker_run(w);
	return NULL;
}

/* ------------------------------------------------------- main thread */

/* Sleep until the absolute monotonic deadline; returns 1 if stop_fd fired. */
static int sleep_until(uint64_t deadline, int stop_fd)
{
	struct pollfd pfd = { .fd = stop_fd, .events = POLLIN };
	struct timespec ts;
	uint64_t now;
	int ret;

	if (stop_fd < 0) {
		ts = ns_to_ts(deadline);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		return 0;
	}
	for (;;) {
		now = now_ns();
		if (now >= deadline)
			return 0;
		ts = ns_to_ts(deadline - now);
		ret = ppoll(&pfd, 1, &ts, NULL);
		if (ret > 0)
			return 1;
		if (ret < 0 && errno != EINTR) {
			/* Cannot watch the fd: still keep the timeline. */
			ts = ns_to_ts(deadline);
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			return 0;
		}
	}
}

static void notify(int fd, const char *msg)
{
	ssize_t ret;

	if (fd < 0)
		return;
	do
		ret = write(fd, msg, 2);
	while (ret < 0 && errno == EINTR);
}

static void fill_result(const struct load *ld, struct worker *ws, uint32_t nw,
			const struct conn *conns, uint64_t nconns, struct ec_load_result *res)
{
	struct ec_hist *h;
	double sum = 0, sumsq = 0;
	uint64_t i, minb = UINT64_MAX, maxb = 0;

	h = &ws[0].hist;
	for (i = 0; i < nw; i++) {
		res->msgs += ws[i].msgs;
		res->bytes += ws[i].bytes;
		res->mismatches += ws[i].mismatches;
		res->mismatched_conns += ws[i].mismatched_conns;
		res->io_errors += ws[i].io_errors;
		res->send_calls += ws[i].send_calls1 - ws[i].send_calls0;
		res->recv_calls += ws[i].recv_calls1 - ws[i].recv_calls0;
		if (i)
			ec_hist_merge(h, &ws[i].hist);
	}
	res->latency_count = h->count;
	if (h->count && ld->mode != EC_MODE_STREAM) {
		res->lat_mean_us = ec_hist_mean(h) / 1e3;
		res->lat_min_us = (double)h->min / 1e3;
		res->max_us = (double)h->max / 1e3;
		res->p50_us = (double)ec_hist_quantile(h, 0.50) / 1e3;
		res->p90_us = (double)ec_hist_quantile(h, 0.90) / 1e3;
		res->p99_us = (double)ec_hist_quantile(h, 0.99) / 1e3;
		res->p999_us = (double)ec_hist_quantile(h, 0.999) / 1e3;
	}
	for (i = 0; i < nconns; i++) {
		double b = (double)conns[i].win_bytes;

		sum += b;
		sumsq += b * b;
		if (conns[i].win_bytes < minb)
			minb = conns[i].win_bytes;
		if (conns[i].win_bytes > maxb)
			maxb = conns[i].win_bytes;
	}
	/* Jain's index; undefined (NaN) when nothing at all was echoed. */
	res->fairness = sumsq > 0 ? sum * sum / ((double)nconns * sumsq) : NAN;
	res->conn_bytes_min = nconns ? minb : 0;
	res->conn_bytes_max = maxb;
}

static void reset_result(struct ec_load_result *res)
{
	memset(res, 0, sizeof(*res));
	res->lat_mean_us = NAN;
	res->lat_min_us = NAN;
	res->p50_us = NAN;
	res->p90_us = NAN;
	res->p99_us = NAN;
	res->p999_us = NAN;
	res->max_us = NAN;
	res->fairness = NAN;
}

/* Lay connections out so worker i owns global numbers i, i+T, i+2T, ... contiguously. */
static void distribute(struct load *ld, const int *fds, uint32_t n, struct conn *conns,
		       struct worker *ws, uint32_t nw)
{
	const struct ec_load_config *cfg = ld->cfg;
	uint32_t i, g, k = 0;

	for (i = 0; i < nw; i++) {
		ws[i].ld = ld;
		ws[i].conns = &conns[k];
		ws[i].epfd = -1;
		ws[i].cpu = cfg->cpus && cfg->ncpus ? cfg->cpus[i % cfg->ncpus] : -1;
		ec_hist_init(&ws[i].hist);
		for (g = i; g < n; g += nw, k++) {
			memset(&conns[k], 0, sizeof(conns[k]));
			conns[k].fd = fds[g];
			conns[k].index = g;
			conns[k].seed = (uint32_t)(((uint64_t)g * SEED_STRIDE + 17) % PATTERN_PERIOD);
			ws[i].nconns++;
		}
	}
}

/* Start workers with every signal blocked, so signals go to the caller's thread. */
static int start_workers(struct worker *ws, uint32_t nw, uint32_t *started)
{
	sigset_t all, old;
	uint32_t i;
	int ret = 0;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (i = 0; i < nw; i++) {
		ret = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
		if (ret)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	*started = i;
	return -ret;
}

/* The timeline: window start/end marks, CPU use, early stop. */
static void run_timeline(struct load *ld, struct ec_load_result *res)
{
	const struct ec_load_config *cfg = ld->cfg;
	struct rusage ru0, ru1;
	uint64_t end = ld->win_end;

	if (sleep_until(ld->win_start, cfg->stop_fd)) {
		notify(cfg->notify_fd, "S\n");
		notify(cfg->notify_fd, "E\n");
		return;
	}
	getrusage(RUSAGE_SELF, &ru0);
	notify(cfg->notify_fd, "S\n");
	if (sleep_until(ld->win_end, cfg->stop_fd))
		end = now_ns();
	getrusage(RUSAGE_SELF, &ru1);
	notify(cfg->notify_fd, "E\n");
	res->duration_s = (double)(end - ld->win_start) / 1e9;
	res->cpu_user_s = tv_s(&ru1.ru_utime) - tv_s(&ru0.ru_utime);
	res->cpu_sys_s = tv_s(&ru1.ru_stime) - tv_s(&ru0.ru_stime);
}

static int run_workers(struct load *ld, struct conn *conns, uint32_t nconns, struct worker *ws,
		       uint32_t nw, struct ec_load_result *res)
{
	uint32_t i, started;
	int ret;

	ret = start_workers(ws, nw, &started);
	gate_wait_ready(ld, started);
	for (i = 0; i < started && !ret; i++)
		ret = ws[i].setup_err;
	if (ret) {
		gate_open(ld, GATE_ABORT);
	} else {
		ld->t0 = now_ns();
		ld->win_start = ld->t0 + (uint64_t)(ld->cfg->warmup_s * 1e9);
		ld->win_end = ld->win_start + (uint64_t)(ld->cfg->duration_s * 1e9);
		/* The gate's mutex publishes t0 and the window to the workers. */
		gate_open(ld, GATE_GO);
		run_timeline(ld, res);
	}
	for (i = 0; i < started; i++)
		pthread_join(ws[i].thread, NULL);
	if (!ret)
		fill_result(ld, ws, nw, conns, nconns, res);
	return ret;
}

int ec_load_run(const struct ec_load_config *cfg, struct ec_load_result *res)
{
	struct sockaddr_storage ss;
	struct load ld;
	struct worker *ws = NULL;
	struct conn *conns = NULL;
	int *fds = NULL;
	socklen_t alen;
	uint32_t i, n = 0, nw;
	int ret;

	if (!cfg || !res)
		return -EINVAL;
	reset_result(res);
	ret = validate(cfg);
	if (ret)
		return ret;
	ret = ec_sockaddr(cfg->host, cfg->port, &ss, &alen);
	if (ret)
		return ret;
	ec_raise_nofile();

	memset(&ld, 0, sizeof(ld));
	ld.cfg = cfg;
	ld.mode = cfg->mode;
	ld.payload = cfg->payload;
	ld.window = cfg->window ? cfg->window : default_window(cfg->payload, cfg->connections);
	ld.pattern = make_pattern();
	fds = calloc(cfg->connections, sizeof(*fds));
	if (!ld.pattern || !fds) {
		ret = -ENOMEM;
		goto out;
	}

	ret = ec_connect_all(&ss, alen, cfg->connections,
			  cfg->connect_timeout_s > 0 ? cfg->connect_timeout_s : DEFAULT_CONNECT_TIMEOUT_S,
			  cfg->stop_fd, fds, &res->connect_errors);
	if (ret < 0)
		goto out;
	n = (uint32_t)ret;
	ret = 0;
	res->connected = n;
	if (!n)
		goto out;       /* the caller sees connected == 0 and connect_errors */

	nw = cfg->threads < n ? cfg->threads : n;
	ld.phase_ns = 1e9 / (cfg->rate > 0 ? cfg->rate : 1.0);
	ld.interval_ns = ld.phase_ns * n;
	conns = calloc(n, sizeof(*conns));
	ws = calloc(nw, sizeof(*ws));
	if (!conns || !ws) {
		/* Nothing refers to these yet; fds[] still owns the sockets. */
		free(conns);
		free(ws);
		conns = NULL;
		ws = NULL;
		ret = -ENOMEM;
		goto out;
	}
	distribute(&ld, fds, n, conns, ws, nw);
	pthread_mutex_init(&ld.lock, NULL);
	pthread_cond_init(&ld.cond, NULL);
	ret = run_workers(&ld, conns, n, ws, nw, res);
	pthread_cond_destroy(&ld.cond);
	pthread_mutex_destroy(&ld.lock);

out:
	if (ret)
		reset_result(res);
	if (conns) {
		for (i = 0; i < n; i++)
			if (conns[i].fd >= 0)
				close(conns[i].fd);
	} else {
		for (i = 0; i < n; i++)
			close(fds[i]);
	}
	if (ws) {
		for (i = 0; i < nw; i++) {
			if (ws[i].epfd >= 0)
				close(ws[i].epfd);
			free(ws[i].buf);
			free(ws[i].dirty);
			free(ws[i].again);
		}
	}
	free(ws);
	free(conns);
	free(fds);
	free(ld.pattern);
	return ret;
}
