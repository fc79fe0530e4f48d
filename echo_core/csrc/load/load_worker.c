/*
 * load_worker.c - one worker thread of the load generator: an epoll loop
 * (edge-triggered, or level-triggered for the EPOLL_LT client) over its
 * share of the connections, every echoed byte verified.
 * What differs between modes lives in the struct load_mode hooks.
 *
 * The hot loop makes no allocations and no system calls beyond
 * epoll_pwait2, recv and send (clock_gettime is a vDSO call).
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "load.h"
#include "pattern.h"

#define MAX_EVENTS 256
#define READ_BUDGET 8                    /* recvs per connection per turn */
/* While the window is not decided yet, look for it this often. */
#define UNKNOWN_WAIT_NS (5 * NS_PER_MS)

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
	uint64_t len = n < owed ? n : owed;
	uint64_t bad = n - len;             /* bytes beyond what was ever sent */

	bad += ec_pattern_diff(w->ld->pattern, c->seed, off, buf, len);
	if (bad)
		mark_mismatch(w, c, bad);
}

/* Book n bytes that arrived at time t. */
static void conn_account(struct worker *w, struct conn *c, uint64_t n, uint64_t t)
{
	uint64_t before = c->recvd, payload = w->ld->payload;

	/* Release: the THREADS client's sender reads recvd from its own thread. */
	__atomic_store_n(&c->recvd, before + n, __ATOMIC_RELEASE);
	w->rx_total += n;
	__atomic_store_n(&w->pub_rx, w->rx_total, __ATOMIC_RELAXED);
	if (in_window(w, t)) {
		c->win_bytes += n;
		w->bytes += n;
		w->msgs += c->recvd / payload - before / payload;
	}
	if (w->draining) {
		if (before < c->sent && c->recvd >= c->sent)
			w->drain_left--;
		return;
	}
	if (w->ops->on_echoed)
		w->ops->on_echoed(w, c, t);
}

/* Book and check n bytes received at stream offset off (owed: sent but not yet echoed then). */
void ec_conn_received(struct worker *w, struct conn *c, const uint8_t *buf, uint64_t n,
		      uint64_t off, uint64_t owed, uint64_t t)
{
	conn_account(w, c, n, t);
	conn_verify(w, c, buf, n, off, owed);
}

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
		n = recv(c->fd, w->buf, w->read_size, 0);
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
			ec_conn_write(w, c);
		conn_verify(w, c, w->buf, (uint64_t)n, off, owed);
		/*
		 * Level-triggered: one read per report, epoll reports the rest.
		 * Edge-triggered: a short read emptied the queue; new data brings
		 * a new edge.
		 */
		if (w->level || c->failed || (size_t)n < w->read_size)
			return;
	}
}

/* EPOLL_LT: watch EPOLLOUT only while a send is blocked, as level-triggered clients must. */
static void conn_watch_out(struct worker *w, struct conn *c, int on)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c };

	if (!w->level || c->watch_out == on || c->fd < 0)
		return;
	if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev)) {
		conn_fail(w, c);
		return;
	}
	c->watch_out = (uint8_t)on;
}

void ec_conn_write(struct worker *w, struct conn *c)
{
	const struct load *ld = w->ld;
	const struct load_mode *ops = w->ops;
	uint64_t len, off;
	ssize_t n;

	while (c->sent < c->send_limit) {
		len = c->send_limit - c->sent;
		if (len > MAX_CHUNK)
			len = MAX_CHUNK;
		if (ops->send_cap)
			len = ops->send_cap(w, c, len);
		if (ops->before_send)
			ops->before_send(w, c);
		off = c->sent;
		n = send(c->fd, ec_pattern_at(ld->pattern, c->seed, off), len, MSG_NOSIGNAL);
		w->send_calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->blocked = 1;
				conn_watch_out(w, c, 1);
			} else {
				conn_fail(w, c);
			}
			return;
		}
		c->sent += (uint64_t)n;
		w->tx_total += (uint64_t)n;
		__atomic_store_n(&w->pub_tx, w->tx_total, __ATOMIC_RELAXED);
		if (ops->after_send && n > 0)
			ops->after_send(w, c, off, (uint64_t)n, now_ns());
		/* A short send means the buffer is full; EPOLLOUT will fire when it drains. */
		if ((uint64_t)n < len) {
			c->blocked = 1;
			conn_watch_out(w, c, 1);
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
		ec_conn_write(w, c);
	if (!c->failed && !c->blocked)
		conn_watch_out(w, c, 0);
}

static struct timespec ns_to_ts(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S) };

	return ts;
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
 * Run the event loop until `end` (the window's end while measuring, which
 * may not be known yet).  While draining, also stop as soon as no
 * connection is owed bytes, or nothing arrived for DRAIN_IDLE_NS.
 * Returns 1 if the stop fd fired, -1 if the drain went idle, 0 otherwise.
 */
static int worker_loop(struct worker *w, uint64_t drain_end)
{
	struct epoll_event evs[MAX_EVENTS];
	uint64_t now, next, end, idle_end = 0, rx_seen = w->rx_total;
	int n, i;

	for (;;) {
		now = now_ns();
		if (!w->draining)
			load_window(w);
		end = w->draining ? drain_end : w->win_end;
		if (now >= end)
			return 0;
		next = end;
		if (w->win_start == WIN_UNKNOWN && now + UNKNOWN_WAIT_NS < next)
			next = now + UNKNOWN_WAIT_NS;
		/* Snapshot the syscall counters as the window opens. */
		if (!w->win_started && !w->draining) {
			if (now >= w->win_start) {
				w->win_started = 1;
				w->send_calls0 = w->send_calls;
				w->recv_calls0 = w->recv_calls;
			} else if (w->win_start < next) {
				next = w->win_start;
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
		} else if (w->ops->tick) {
			uint64_t due = w->ops->tick(w, now);

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
 * Either way, requests whose echo never completed are never_answered.
 */
static void worker_drain(struct worker *w)
{
	struct conn *c;
	uint32_t i;
	int ret;

	w->draining = 1;
	w->drain_left = 0;
	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		c->send_limit = c->sent;
		if (!c->failed && c->recvd < c->sent)
			w->drain_left++;
	}
	ret = worker_loop(w, now_ns() + DRAIN_MAX_NS);
	if (ret == 1)
		return;
	ec_conn_unechoed(w, ret == -1);
}

/* After the drain: what never came back (bytes lost when the server went idle, drain_idle). */
void ec_conn_unechoed(struct worker *w, int drain_idle)
{
	struct conn *c;
	uint32_t i;

	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		if (c->recvd >= c->sent)
			continue;
		w->never_answered += w->ops->unechoed(w, c);
		if (drain_idle && !c->failed)
			mark_mismatch(w, c, c->sent - c->recvd);
	}
}

static void worker_run(struct worker *w)
{
	int ret;

	/*
	 * No sends here: adding a connected socket edge-triggered reports
	 * EPOLLOUT at once, so the first sends go out from the event loop in
	 * batches, interleaved with reading.  Sending every connection's
	 * first window up front could take longer than the whole window.
	 */
	w->ops->start(w);
	ret = worker_loop(w, 0);
	if (w->win_started) {
		w->send_calls1 = w->send_calls;
		w->recv_calls1 = w->recv_calls;
	}
	if (ret == 1)
		return;
	/* A run stopped during warm-up publishes an empty window: nothing was measured. */
	if (w->ops->at_window_close && w->win_start < w->win_end)
		w->ops->at_window_close(w);
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
	w->buf = malloc(w->read_size);
	w->again = calloc(w->nconns ? w->nconns : 1, sizeof(*w->again));
	if (!w->buf || !w->again)
		return -ENOMEM;
	if (w->ops->setup) {
		ret = w->ops->setup(w);
		if (ret)
			return ret;
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
		/*
		 * Edge-triggered: both directions once, no epoll_ctl in the hot
		 * loop.  Level-triggered: EPOLLOUT until the first sends went out.
		 */
		ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | (w->level ? 0 : EPOLLET);
		ev.data.ptr = &w->conns[i];
		w->conns[i].watch_out = 1;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->conns[i].fd, &ev))
			return -errno;
	}
	return 0;
}

void *ec_worker_main(void *arg)
{
	struct worker *w = arg;

	w->setup_err = worker_setup(w);
	if (ec_gate_wait(w->ld) == GATE_GO && !w->setup_err)
		worker_run(w);
	return NULL;
}
