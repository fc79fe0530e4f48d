/*
 * load_threads.c - the THREADS client design: blocking sockets and a thread
 * per connection, the way the simplest real clients are written.
 *
 *   rr      one thread: send the request (blocking), read 64 KiB at a time
 *           until its whole echo is back, repeat
 *   stream  a sender thread (one message per send, at most `window` bytes
 *           unechoed) and a receiver thread (64 KiB reads), so that neither
 *           direction can block the other
 *
 * Each connection is a worker of its own (struct worker with nconns == 1),
 * so the window, the verification, the accounting and the results are the
 * event-driven designs' (load_worker.c).  Blocking calls time out after
 * TICK_NS (SO_RCVTIMEO / SO_SNDTIMEO): every loop looks at the clock, the
 * window's end and the stop fd at least that often, and a stalled peer
 * cannot keep a thread forever.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "load.h"
#include "pattern.h"

#define TICK_NS (20 * NS_PER_MS)

static int stop_fired(struct worker *w)
{
	struct pollfd pfd = { .fd = w->ld->cfg->stop_fd, .events = POLLIN };

	if (pfd.fd >= 0 && poll(&pfd, 1, 0) > 0)
		__atomic_store_n(&w->stopped, 1, __ATOMIC_RELAXED);
	return __atomic_load_n(&w->stopped, __ATOMIC_RELAXED);
}

/*
 * The window's end as the timeline published it, read directly: the
 * stream sender must not use the receiver's cached copy (load_window).
 */
static uint64_t published_end(const struct worker *w)
{
	if (__atomic_load_n(&w->ld->win_start, __ATOMIC_ACQUIRE) == WIN_UNKNOWN)
		return WIN_UNKNOWN;
	return __atomic_load_n(&w->ld->win_end, __ATOMIC_RELAXED);
}

static uint64_t published_start(const struct worker *w)
{
	return __atomic_load_n(&w->ld->win_start, __ATOMIC_ACQUIRE);
}

static void io_error(struct worker *w, struct conn *c)
{
	if (!__atomic_exchange_n(&c->failed, 1, __ATOMIC_RELAXED))
		__atomic_fetch_add(&w->io_errors, 1, __ATOMIC_RELAXED);
}

static int socket_blocking(int fd)
{
	struct timeval tv = { .tv_sec = 0, .tv_usec = (long)(TICK_NS / 1000) };
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK))
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		return -errno;
	return 0;
}

/*
 * One blocking recv (at most TICK_NS).  Returns bytes read, 0 on a timeout
 * or EINTR, -1 once the connection failed.
 */
static ssize_t read_some(struct worker *w, struct conn *c)
{
	uint64_t off = c->recvd, sent;
	ssize_t n = recv(c->fd, w->buf, w->read_size, 0);

	/*
	 * Read after the recv: the echo of a send can arrive before its sender
	 * stored c->sent, so the sender announces c->sending before it sends.
	 */
	sent = __atomic_load_n(&c->sending, __ATOMIC_ACQUIRE);
	w->recv_calls++;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n <= 0) {
		io_error(w, c);
		return -1;
	}
	ec_conn_received(w, c, w->buf, (uint64_t)n, off, sent > off ? sent - off : 0, now_ns());
	return n;
}

/*
 * One blocking send of up to len bytes from stream offset c->sent.
 * Returns bytes sent, 0 on a timeout or EINTR, -1 once the connection failed.
 */
static ssize_t send_some(struct worker *w, struct conn *c, uint64_t len)
{
	uint64_t off = c->sent;
	ssize_t n;

	if (w->ops->before_send)
		w->ops->before_send(w, c);
	__atomic_store_n(&c->sending, off + len, __ATOMIC_RELEASE);
	n = send(c->fd, ec_pattern_at(w->ld->pattern, c->seed, off), len, MSG_NOSIGNAL);
	w->send_calls++;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n < 0) {
		io_error(w, c);
		return -1;
	}
	__atomic_store_n(&c->sent, off + (uint64_t)n, __ATOMIC_RELEASE);
	__atomic_store_n(&c->sending, off + (uint64_t)n, __ATOMIC_RELEASE);
	w->tx_total += (uint64_t)n;
	__atomic_store_n(&w->pub_tx, w->tx_total, __ATOMIC_RELAXED);
	if (w->ops->after_send && n > 0)
		w->ops->after_send(w, c, off, (uint64_t)n, now_ns());
	return n;
}

/* Snapshot the send (sender) or recv (receiver) call counter at the window's edges. */
static void edge_calls(uint64_t now, uint64_t start, uint64_t end, const uint64_t *calls,
		       uint64_t *at_start, uint64_t *at_end, int *started)
{
	if (start == WIN_UNKNOWN)
		return;
	if (!*started && now >= start) {
		*started = 1;
		*at_start = *calls;
	}
	if (*started && now < end)
		*at_end = *calls;
}

/*
 * Read until every byte sent has come back, the peer went quiet for
 * DRAIN_IDLE_NS (returns 1: losses) or DRAIN_MAX_NS passed.
 */
static int drain(struct worker *w, struct conn *c, uint64_t since)
{
	uint64_t last = since, now;
	ssize_t n;

	while (!c->failed && c->recvd < __atomic_load_n(&c->sent, __ATOMIC_ACQUIRE)) {
		now = now_ns();
		if (now - since >= DRAIN_MAX_NS || stop_fired(w))
			return 0;
		if (now - last >= DRAIN_IDLE_NS)
			return 1;
		n = read_some(w, c);
		if (n > 0)
			last = now_ns();
	}
	return 0;
}

/* ------------------------------------------------------------------ rr */

static void rr_loop(struct worker *w, struct conn *c)
{
	uint64_t now, tick = 0, len;
	int in_win = 0;

	w->ops->start(w);
	for (;;) {
		now = now_ns();
		if (now >= tick) {
			tick = now + TICK_NS;
			if (stop_fired(w))
				return;
		}
		load_window(w);
		edge_calls(now, w->win_start, w->win_end, &w->send_calls, &w->send_calls0, &w->send_calls1, &in_win);
		edge_calls(now, w->win_start, w->win_end, &w->recv_calls, &w->recv_calls0, &w->recv_calls1, &w->win_started);
		if (w->win_end != WIN_UNKNOWN && now >= w->win_end)
			break;
		if (c->failed)
			return;
		if (c->sent < c->send_limit) {
			len = c->send_limit - c->sent;
			send_some(w, c, len < MAX_CHUNK ? len : MAX_CHUNK);
		} else {
			read_some(w, c);
		}
	}
	if (w->ops->at_window_close && w->win_start < w->win_end)
		w->ops->at_window_close(w);
	c->send_limit = c->sent;
	w->draining = 1;        /* echoes now only complete what was sent: no new requests, no samples */
	ec_conn_unechoed(w, drain(w, c, now_ns()));
}

/* -------------------------------------------------------------- stream */

static void *stream_receiver(void *arg)
{
	struct worker *w = arg;
	struct conn *c = &w->conns[0];
	uint64_t now, tick = 0, done_at = 0, last = 0;
	ssize_t n;

	for (;;) {
		now = now_ns();
		if (now >= tick) {
			tick = now + TICK_NS;
			if (stop_fired(w))
				return NULL;
		}
		load_window(w);
		edge_calls(now, w->win_start, w->win_end, &w->recv_calls, &w->recv_calls0, &w->recv_calls1,
			   &w->win_started);
		if (c->failed)
			break;
		if (__atomic_load_n(&w->sender_done, __ATOMIC_ACQUIRE)) {
			if (!done_at) {
				done_at = last = now;
				w->draining = 1;
			}
			if (c->recvd >= c->sent)
				break;
			if (now - done_at >= DRAIN_MAX_NS)
				break;
			if (now - last >= DRAIN_IDLE_NS)
				return (void *)1;       /* the drain went idle: what is missing is lost */
		}
		n = read_some(w, c);
		if (n > 0) {
			last = now_ns();
			/* Dekker with the sender: recvd is stored, then sender_waiting read (seq_cst fence). */
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			if (__atomic_load_n(&w->sender_waiting, __ATOMIC_RELAXED)) {
				pthread_mutex_lock(&w->space_lock);
				pthread_cond_signal(&w->space);
				pthread_mutex_unlock(&w->space_lock);
			}
		}
	}
	return NULL;
}

/* Wait (at most TICK_NS) until the receiver made room in the window. */
static void wait_for_space(struct worker *w, struct conn *c, uint64_t limit_sent)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += (long)TICK_NS;
	if (ts.tv_nsec >= (long)NS_PER_S) {
		ts.tv_sec++;
		ts.tv_nsec -= (long)NS_PER_S;
	}
	pthread_mutex_lock(&w->space_lock);
	__atomic_store_n(&w->sender_waiting, 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(&c->recvd, __ATOMIC_ACQUIRE) + w->ld->window <= limit_sent && !c->failed)
		pthread_cond_timedwait(&w->space, &w->space_lock, &ts);
	__atomic_store_n(&w->sender_waiting, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->space_lock);
}

static void stream_sender(struct worker *w, struct conn *c)
{
	uint64_t now, tick = 0, start, end, limit, len, rest;
	uint64_t payload = w->ld->payload;
	int in_win = 0;

	for (;;) {
		now = now_ns();
		if (now >= tick) {
			tick = now + TICK_NS;
			if (stop_fired(w))
				break;
		}
		start = published_start(w);
		end = published_end(w);
		edge_calls(now, start, end, &w->send_calls, &w->send_calls0, &w->send_calls1, &in_win);
		if ((end != WIN_UNKNOWN && now >= end) || __atomic_load_n(&c->failed, __ATOMIC_RELAXED))
			break;
		limit = __atomic_load_n(&c->recvd, __ATOMIC_ACQUIRE) + w->ld->window;
		if (c->sent >= limit) {
			wait_for_space(w, c, c->sent);
			continue;
		}
		/* One message per call, as the event-driven designs send. */
		rest = payload - c->sent % payload;
		len = limit - c->sent;
		len = len < rest ? len : rest;
		send_some(w, c, len < MAX_CHUNK ? len : MAX_CHUNK);
	}
	__atomic_store_n(&w->sender_done, 1, __ATOMIC_RELEASE);
}

static void stream_run(struct worker *w, struct conn *c)
{
	pthread_condattr_t attr;
	pthread_attr_t thread_attr;
	void *idle = NULL;
	int ret;

	/* wait_for_space's deadline is on the monotonic clock. */
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_mutex_init(&w->space_lock, NULL);
	pthread_cond_init(&w->space, &attr);
	pthread_condattr_destroy(&attr);
	/* A small stack, as the sender's (loadgen.c): a thousand connections are two thousand threads. */
	pthread_attr_init(&thread_attr);
	pthread_attr_setstacksize(&thread_attr, THREAD_STACK);
	ret = pthread_create(&w->reader, &thread_attr, stream_receiver, w);
	pthread_attr_destroy(&thread_attr);
	if (ret) {
		/* No receiver: this connection cannot run; count it, the others go on. */
		io_error(w, c);
	} else {
		w->reader_up = 1;
		stream_sender(w, c);
		pthread_join(w->reader, &idle);
	}
	pthread_cond_destroy(&w->space);
	pthread_mutex_destroy(&w->space_lock);
	if (!w->stopped && w->reader_up)
		ec_conn_unechoed(w, idle != NULL);
}

/* ---------------------------------------------------------------- main */

static int threads_setup(struct worker *w)
{
	cpu_set_t set;
	int ret;

	if (w->cpu >= 0) {
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (ret)
			return -ret;
	}
	w->buf = malloc(w->read_size);
	if (!w->buf)
		return -ENOMEM;
	return socket_blocking(w->conns[0].fd);
}

void *ec_threads_main(void *arg)
{
	struct worker *w = arg;

	w->setup_err = threads_setup(w);
	if (ec_gate_wait(w->ld) != GATE_GO || w->setup_err)
		return NULL;
	if (w->ld->mode == EC_MODE_STREAM)
		stream_run(w, &w->conns[0]);
	else
		rr_loop(w, &w->conns[0]);
	return NULL;
}
