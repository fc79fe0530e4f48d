/*
 * loadgen.c - the load generator: many TCP connections against an echo
 * server, every echoed byte verified, latencies in a histogram.
 *
 * A run (ec_load_run) goes:
 *   1. validate the config, raise RLIMIT_NOFILE, build the pattern table;
 *   2. connect phase on the calling thread (load_connect.c, not measured);
 *   3. worker threads (load_worker.c), each with its own epoll (edge- or,
 *      for the EPOLL_LT client, level-triggered), take a round-robin share
 *      of the connections and run the mode's hooks (load_stream.c,
 *      load_rr.c, load_rate.c); the THREADS client runs a worker per
 *      connection on blocking sockets instead (load_threads.c);
 *   4. t0; the calling thread runs the timeline (load_timeline.c): warm-up,
 *      measured window and snapshots at its edges; workers stop at the
 *      window's end, censor what is still open, then drain: a short wait
 *      that only checks that every byte sent came back;
 *   5. merge the per-thread results, close with RST, free.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../net.h"
#include "clock.h"
#include "load.h"
#include "load_connect.h"
#include "pattern.h"

/* The limits (EC_LOAD_MAX_*) and the stream budget are echo_core.h's, shared with the Python side. */
#define DEFAULT_WINDOW (256u * 1024)     /* stream: minimum default in-flight window */
#define MIN_WINDOW 4096u

/* ------------------------------------------------------------ config */

static int fd_ok(int fd)
{
	return fd < 0 || fcntl(fd, F_GETFD) >= 0;
}

/* Written as !(x >= lo) so NaN is rejected too. */
static int seconds_ok(double s, double lo)
{
	return s >= lo && s <= EC_LOAD_MAX_SECONDS;
}

static int validate(const struct ec_load_config *cfg)
{
	uint32_t i;

	if (!cfg->host || cfg->port <= 0 || cfg->port > 65535)
		return -EINVAL;
	if (cfg->payload == 0 || cfg->connections == 0 || cfg->connections > EC_LOAD_MAX_CONNECTIONS)
		return -EINVAL;
	if (cfg->threads == 0 || cfg->threads > EC_LOAD_MAX_THREADS)
		return -EINVAL;
	if (!(cfg->duration_s > 0) || cfg->duration_s > EC_LOAD_MAX_SECONDS)
		return -EINVAL;
	if (!seconds_ok(cfg->warmup_s, 0) || !seconds_ok(cfg->connect_timeout_s, 0))
		return -EINVAL;
	/* 0 means "same as warmup_s"; otherwise it cannot be below it. */
	if (cfg->warmup_max_s != 0 && !seconds_ok(cfg->warmup_max_s, cfg->warmup_s))
		return -EINVAL;
	if (cfg->mode != EC_MODE_STREAM && cfg->mode != EC_MODE_RR && cfg->mode != EC_MODE_RATE)
		return -EINVAL;
	/* A start barrier waits without watching stop_fd: it must be a real instant. */
	if (!(cfg->start_at_s >= 0) || !isfinite(cfg->start_at_s))
		return -EINVAL;
	/* Several hosts share one window only when its start is fixed in advance. */
	if (cfg->start_at_s > 0 && cfg->mode != EC_MODE_RATE && cfg->warmup_max_s > cfg->warmup_s)
		return -EINVAL;
	if (cfg->mode == EC_MODE_RATE && (!(cfg->rate > 0) || cfg->rate > EC_LOAD_MAX_RATE))
		return -EINVAL;
	if (cfg->mode == EC_MODE_RATE && cfg->arrivals != EC_ARRIVALS_UNIFORM &&
	    cfg->arrivals != EC_ARRIVALS_POISSON)
		return -EINVAL;
	if (cfg->cpus && cfg->ncpus) {
		for (i = 0; i < cfg->ncpus; i++)
			if (cfg->cpus[i] < 0 || cfg->cpus[i] >= CPU_SETSIZE)
				return -EINVAL;
	}
	if (cfg->nserver_pids > EC_LOAD_MAX_SERVER_PIDS || (cfg->nserver_pids && !cfg->server_pids))
		return -EINVAL;
	for (i = 0; i < cfg->nserver_pids; i++)
		if (cfg->server_pids[i] <= 0)
			return -EINVAL;
	if (cfg->ncounters > EC_MAX_COUNTERS || (cfg->ncounters && !cfg->counters))
		return -EINVAL;
	if (cfg->nserver_stats > EC_MAX_SERVER_THREADS || (cfg->nserver_stats && !cfg->server_stats))
		return -EINVAL;
	if (cfg->client != EC_CLIENT_EPOLL_ET && cfg->client != EC_CLIENT_EPOLL_LT &&
	    cfg->client != EC_CLIENT_THREADS)
		return -EINVAL;
	/* Blocking threads have no schedule to keep; a thread per connection has a limit. */
	if (cfg->client == EC_CLIENT_THREADS &&
	    (cfg->mode == EC_MODE_RATE || cfg->connections > EC_LOAD_MAX_THREADS_CONNECTIONS))
		return -EINVAL;
	if (!fd_ok(cfg->stop_fd) || !fd_ok(cfg->window_ctl_fd))
		return -EBADF;
	return 0;
}

/* Adaptive warm-up only where "steady" means something: rate mode's load is fixed by design. */
static int adaptive(const struct ec_load_config *cfg)
{
	return cfg->mode != EC_MODE_RATE && cfg->warmup_max_s > cfg->warmup_s;
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
	uint64_t w = 4ull * payload, cap = (uint64_t)EC_LOAD_DEFAULT_STREAM_BUDGET / connections;

	if (w < DEFAULT_WINDOW)
		w = DEFAULT_WINDOW;
	if (cap < MIN_WINDOW)
		cap = MIN_WINDOW;
	return w < cap ? w : cap;
}

static const struct load_mode *mode_ops(int mode)
{
	if (mode == EC_MODE_STREAM)
		return &ec_load_stream;
	return mode == EC_MODE_RR ? &ec_load_rr : &ec_load_rate;
}

/* ------------------------------------------------------------ results */

static double us(uint64_t ns)
{
	return (double)ns / 1e3;
}

static void fill_result(const struct load *ld, struct worker *ws, uint32_t nw,
			const struct conn *conns, uint64_t nconns, struct ec_load_result *res)
{
	struct ec_hist *h = &ws[0].hist, *lag = &ws[0].lag;
	double sum = 0, sumsq = 0;
	uint64_t i, minb = UINT64_MAX, maxb = 0;

	for (i = 0; i < nw; i++) {
		res->msgs += ws[i].msgs;
		res->bytes += ws[i].bytes;
		res->mismatches += ws[i].mismatches;
		res->mismatched_conns += ws[i].mismatched_conns;
		res->io_errors += ws[i].io_errors;
		res->unanswered += ws[i].unanswered;
		res->never_answered += ws[i].never_answered;
		res->send_calls += ws[i].send_calls1 - ws[i].send_calls0;
		res->recv_calls += ws[i].recv_calls1 - ws[i].recv_calls0;
		if (i) {
			ec_hist_merge(h, &ws[i].hist);
			ec_hist_merge(lag, &ws[i].lag);
		}
	}
	res->latency_count = h->count;
	if (h->count && ld->mode != EC_MODE_STREAM) {
		res->lat_mean_us = ec_hist_mean(h) / 1e3;
		res->lat_min_us = us(h->min);
		res->max_us = us(h->max);
		res->p50_us = us(ec_hist_quantile(h, 0.50));
		res->p90_us = us(ec_hist_quantile(h, 0.90));
		res->p99_us = us(ec_hist_quantile(h, 0.99));
		res->p999_us = us(ec_hist_quantile(h, 0.999));
		memcpy(res->latency_hist, h->buckets, sizeof(res->latency_hist));
	}
	if (lag->count) {
		res->send_lag_p50_us = us(ec_hist_quantile(lag, 0.50));
		res->send_lag_p99_us = us(ec_hist_quantile(lag, 0.99));
		res->send_lag_max_us = us(lag->max);
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
	res->warmup_s = NAN;
	res->warmup_steady = -1;
	res->lat_mean_us = NAN;
	res->lat_min_us = NAN;
	res->p50_us = NAN;
	res->p90_us = NAN;
	res->p99_us = NAN;
	res->p999_us = NAN;
	res->max_us = NAN;
	res->send_lag_p50_us = NAN;
	res->send_lag_p99_us = NAN;
	res->send_lag_max_us = NAN;
	res->fairness = NAN;
}

/* ------------------------------------------------------------ workers */

/* Lay connections out so worker i owns global numbers i, i+T, i+2T, ... contiguously. */
static void distribute(struct load *ld, const int *fds, uint32_t n, struct conn *conns,
		       struct worker *ws, uint32_t nw)
{
	const struct ec_load_config *cfg = ld->cfg;
	uint32_t i, g, k = 0;

	for (i = 0; i < nw; i++) {
		ws[i].ld = ld;
		ws[i].ops = ld->ops;
		ws[i].conns = &conns[k];
		ws[i].epfd = -1;
		ws[i].win_start = WIN_UNKNOWN;
		ws[i].win_end = WIN_UNKNOWN;
		ws[i].cpu = cfg->cpus && cfg->ncpus ? cfg->cpus[i % cfg->ncpus] : -1;
		ws[i].level = cfg->client == EC_CLIENT_EPOLL_LT;
		ws[i].read_size = cfg->client == EC_CLIENT_EPOLL_ET ? MAX_CHUNK : SMALL_READ;
		ec_hist_init(&ws[i].hist);
		ec_hist_init(&ws[i].lag);
		for (g = i; g < n; g += nw, k++) {
			memset(&conns[k], 0, sizeof(conns[k]));
			conns[k].fd = fds[g];
			conns[k].index = g;
			conns[k].seed = ec_pattern_seed(g);
			ws[i].nconns++;
		}
	}
}

/* Start workers with every signal blocked, so signals go to the caller's thread. */
static int start_workers(struct worker *ws, uint32_t nw, uint32_t *started)
{
	void *(*main_fn)(void *) = ws[0].ld->cfg->client == EC_CLIENT_THREADS ? ec_threads_main : ec_worker_main;
	pthread_attr_t attr;
	sigset_t all, old;
	uint32_t i;
	int ret = 0;

	pthread_attr_init(&attr);
	if (main_fn == ec_threads_main)
		pthread_attr_setstacksize(&attr, THREAD_STACK);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (i = 0; i < nw; i++) {
		ret = pthread_create(&ws[i].thread, &attr, main_fn, &ws[i]);
		if (ret)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	*started = i;
	return -ret;
}

/*
 * Several hosts' load generators share one start instant (wall clock: the
 * only clock hosts share).  Waits for it, or until stop_fd becomes readable
 * (^C: the run then ends at once, as it would mid-window).  Returns how late
 * t0 comes after the instant, 0 when on time.
 */
static double wait_for_start(double start_at_s, int stop_fd)
{
	struct pollfd pfd = { .fd = stop_fd, .events = POLLIN };
	struct timespec now;
	double left;

	if (start_at_s <= 0)
		return 0;
	for (;;) {
		clock_gettime(CLOCK_REALTIME, &now);
		left = start_at_s - ((double)now.tv_sec + (double)now.tv_nsec / 1e9);
		if (left <= 0)
			break;
		if (stop_fd < 0) {
			struct timespec ts = { .tv_sec = (time_t)left,
					       .tv_nsec = (long)((left - (double)(time_t)left) * 1e9) };

			nanosleep(&ts, NULL);	/* an EINTR just loops */
			continue;
		}
		/* poll() has ms resolution: sleep the last millisecond off above instead. */
		if (left > 2e-3 && poll(&pfd, 1, (int)((left - 1e-3) * 1e3)) > 0)
			return 0;
		if (left <= 2e-3) {
			struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)(left * 1e9) };

			nanosleep(&ts, NULL);
		}
	}
	/* "left" is how far past the instant we woke: late when connecting outlasted the margin. */
	return -left > 1e-3 ? -left : 0;
}

static int run_workers(struct load *ld, struct conn *conns, uint32_t nconns, struct worker *ws,
		       uint32_t nw, struct ec_load_result *res)
{
	const struct ec_load_config *cfg = ld->cfg;
	uint64_t start;
	uint32_t i, started;
	int ret;

	ret = start_workers(ws, nw, &started);
	ec_gate_wait_ready(ld, started);
	for (i = 0; i < started && !ret; i++)
		ret = ws[i].setup_err;
	if (ret) {
		ec_gate_open(ld, GATE_ABORT);
	} else {
		res->start_late_s = wait_for_start(cfg->start_at_s, cfg->stop_fd);
		ld->t0 = now_ns();
		ld->arr.t0 = ld->t0;
		ld->win_start = WIN_UNKNOWN;
		ld->win_end = WIN_UNKNOWN;
		/* A fixed warm-up is known now; an adaptive one is decided by the timeline. */
		if (!adaptive(cfg)) {
			start = ld->t0 + (uint64_t)(cfg->warmup_s * 1e9);
			ec_window_publish(ld, start, start + (uint64_t)(cfg->duration_s * 1e9));
		}
		/* The gate's mutex publishes t0 (and a fixed window) to the workers. */
		ec_gate_open(ld, GATE_GO);
		ec_run_timeline(ld, res);
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
	uint32_t i, n = 0, nw = 0;
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
	ld.ops = mode_ops(cfg->mode);
	ld.payload = cfg->payload;
	ld.window = cfg->window ? cfg->window : default_window(cfg->payload, cfg->connections);
	ld.pattern = ec_pattern_make(MAX_CHUNK);
	fds = calloc(cfg->connections, sizeof(*fds));
	if (!ld.pattern || !fds) {
		ret = -ENOMEM;
		goto out;
	}
	/* Until the window's edges are read, no counter has a figure. */
	for (i = 0; i < cfg->ncounters; i++)
		res->counter_status[i] = -ENODATA;
	/* Before connecting: the server's threads then are the ones that will serve (or spawn those that do). */
	ret = ec_counters_open(&ld.ctr, cfg);
	if (ret)
		goto out;

	ret = ec_connect_all(&ss, alen, cfg->connections,
			  cfg->connect_timeout_s > 0 ? cfg->connect_timeout_s : EC_LOAD_DEFAULT_CONNECT_TIMEOUT_S,
			  cfg->stop_fd, fds, &res->connect_errors);
	if (ret < 0)
		goto out;
	n = (uint32_t)ret;
	ret = 0;
	res->connected = n;
	if (!n)
		goto out;       /* the caller sees connected == 0 and connect_errors */

	/* THREADS: a worker per connection; the others share threads workers. */
	nw = cfg->client == EC_CLIENT_THREADS ? n : (cfg->threads < n ? cfg->threads : n);
	/* Rate: the schedule spreads the total rate over the connections actually up. */
	ld.arr.kind = cfg->arrivals;
	ld.arr.seed = cfg->seed;
	ld.arr.phase_ns = 1e9 / (cfg->rate > 0 ? cfg->rate : 1.0);
	ld.arr.interval_ns = ld.arr.phase_ns * n;
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
	ld.ws = ws;
	ld.nw = nw;
	pthread_mutex_init(&ld.lock, NULL);
	pthread_cond_init(&ld.cond, NULL);
	ret = run_workers(&ld, conns, n, ws, nw, res);
	pthread_cond_destroy(&ld.cond);
	pthread_mutex_destroy(&ld.lock);

out:
	if (ret) {
		reset_result(res);
	}
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
			free(ws[i].heap);
			free(ws[i].again);
		}
	}
	free(ws);
	free(conns);
	free(fds);
	free(ld.pattern);
	ec_counters_close(&ld.ctr);
	return ret;
}
