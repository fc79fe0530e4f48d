/*
 * load_timeline.c - the calling thread's part of a run: the start gate, the
 * warm-up (fixed, or adaptive: until the load is steady), and the measured
 * window, whose edges it decides and publishes to the workers.  Exactly at
 * each edge it takes the client's rusage and the server's counters, CPU
 * time, /proc figures and perf counters, so both sides' numbers cover the
 * same window.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "load.h"

#define STEADY_STEP_NS (100 * NS_PER_MS)  /* adaptive warm-up: one interval */
#define STEADY_TOL 0.02                   /* relative tolerance of a steady interval */
/* Sleep until this close to a window edge, then spin: wake-up latency would skew the snapshots. */
#define EDGE_SPIN_NS (NS_PER_MS / 2)
/* Publish a window this far ahead of its start: workers (waiting <= 5 ms) see it in time. */
#define WINDOW_LEAD_NS (10 * NS_PER_MS)

/* -------------------------------------------------------- start gate */

int ec_gate_wait(struct load *ld)
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

void ec_gate_wait_ready(struct load *ld, uint32_t n)
{
	pthread_mutex_lock(&ld->lock);
	while (ld->ready < n)
		pthread_cond_wait(&ld->cond, &ld->lock);
	pthread_mutex_unlock(&ld->lock);
}

void ec_gate_open(struct load *ld, int state)
{
	pthread_mutex_lock(&ld->lock);
	ld->state = state;
	pthread_cond_broadcast(&ld->cond);
	pthread_mutex_unlock(&ld->lock);
}

/* End first, start last with release: a worker that sees the start sees the end. */
void ec_window_publish(struct load *ld, uint64_t start, uint64_t end)
{
	__atomic_store_n(&ld->win_end, end, __ATOMIC_RELAXED);
	__atomic_store_n(&ld->win_start, start, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------ sleeping */

static struct timespec ns_to_ts(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S) };

	return ts;
}

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

/*
 * Return at the deadline itself, not a scheduler wake-up later: the workers
 * count by timestamp, so the snapshots must be taken on time too.
 */
static int sleep_until_edge(uint64_t deadline, int stop_fd)
{
	if (deadline > EDGE_SPIN_NS && sleep_until(deadline - EDGE_SPIN_NS, stop_fd))
		return 1;
	while (now_ns() < deadline)
		;
	return 0;
}

/* ------------------------------------------------- adaptive warm-up */

struct progress {
	uint64_t tx, rx;        /* client: all bytes sent / received */
	uint64_t server_out;    /* server: bytes_out */
};

static void progress_now(const struct load *ld, struct progress *p)
{
	uint32_t i;

	memset(p, 0, sizeof(*p));
	for (i = 0; i < ld->nw; i++) {
		p->tx += __atomic_load_n(&ld->ws[i].pub_tx, __ATOMIC_RELAXED);
		p->rx += __atomic_load_n(&ld->ws[i].pub_rx, __ATOMIC_RELAXED);
	}
	if (ld->cfg->server_stats) {
		/* bytes_out over every server thread's slot: the server as a whole kept up, or not. */
		uint32_t n = ld->cfg->nserver_stats ? ld->cfg->nserver_stats : 1;

		for (i = 0; i < n; i++)
			p->server_out += __atomic_load_n(&ld->cfg->server_stats[i].bytes_out, __ATOMIC_RELAXED);
	}
}

static uint64_t absdiff(uint64_t a, uint64_t b)
{
	return a > b ? a - b : b - a;
}

/*
 * Steady: echoes flow (drx > 0), the bytes in flight did not grow or
 * shrink by more than 2 % of drx (the client is not still filling the
 * pipe, the server not falling behind) and, with the server's counters,
 * it sent what we received, to within 2 %.  Totals are read one worker
 * at a time, so a single reading may be off by a few sends: 2 % of a
 * 100 ms interval absorbs that.
 */
static int steady(const struct load *ld, const struct progress *a, const struct progress *b)
{
	uint64_t drx = b->rx - a->rx;
	double tol = STEADY_TOL * (double)drx;
	int64_t inflight_a = (int64_t)(a->tx - a->rx), inflight_b = (int64_t)(b->tx - b->rx);
	int64_t dinflight = inflight_b - inflight_a;

	if (!drx)
		return 0;
	if ((double)(dinflight < 0 ? -dinflight : dinflight) > tol)
		return 0;
	if (ld->cfg->server_stats &&
	    (double)absdiff(b->server_out - a->server_out, drx) > tol)
		return 0;
	return 1;
}

/*
 * Candidate window starts are t0 + warmup + k * 100 ms, and t0 + warmup_max
 * at the latest.  For candidate c the load is sampled at c - LEAD; the
 * window opens at the first candidate whose last two intervals were steady.
 * Returns the start (0 if stop_fd fired) and sets *steady_out.
 */
static uint64_t adaptive_start(struct load *ld, int *steady_out)
{
	const struct ec_load_config *cfg = ld->cfg;
	int64_t min_off = (int64_t)(cfg->warmup_s * 1e9), max_off = (int64_t)(cfg->warmup_max_s * 1e9);
	int64_t off, at;
	struct progress prev, cur;
	int k, ok, ok_prev = 0, last;

	for (k = -2;; k++) {
		off = min_off + (int64_t)k * (int64_t)STEADY_STEP_NS;
		last = k >= 0 && off >= max_off;
		if (last)
			off = max_off;
		at = off - (int64_t)WINDOW_LEAD_NS;
		if (at < 0)
			at = 0;
		if (sleep_until(ld->t0 + (uint64_t)at, cfg->stop_fd))
			return 0;
		progress_now(ld, &cur);
		ok = k > -2 && steady(ld, &prev, &cur);
		if (k >= 0 && ok && ok_prev) {
			*steady_out = 1;
			return ld->t0 + (uint64_t)off;
		}
		if (last) {
			*steady_out = 0;
			return ld->t0 + (uint64_t)off;
		}
		ok_prev = ok;
		prev = cur;
	}
}

/* ------------------------------------------------------------ window */

static double tv_s(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

/*
 * Tell a window watcher (a profiler) that the window opened or closed.
 * Best effort: a watcher that went away must not end the run.
 */
static void window_ctl(int fd, const char *cmd)
{
	ssize_t n;

	if (fd < 0)
		return;
	do
		n = write(fd, cmd, strlen(cmd));
	while (n < 0 && errno == EINTR);
}

/* Each counter's change over the window, or why there is none. */
static void counters_result(const struct counters *c, const uint64_t *c0, const int *st0,
			    const uint64_t *c1, const int *st1, struct ec_load_result *res)
{
	uint32_t i;

	for (i = 0; i < c->n; i++) {
		res->counter_status[i] = st0[i] ? st0[i] : st1[i];
		if (!res->counter_status[i] && c1[i] < c0[i])
			res->counter_status[i] = -ERANGE;
		res->counter_delta[i] = res->counter_status[i] ? 0 : c1[i] - c0[i];
	}
}

/*
 * Through the window, the client's echoed bytes per interval (EC_SERIES_STEP_MS,
 * longer for windows of over EC_SERIES_MAX of them), for the stationarity
 * check.  Returns 1 if stop_fd fired.
 */
static int record_series(struct load *ld, uint64_t start, uint64_t end, struct ec_load_result *res)
{
	uint64_t step = EC_SERIES_STEP_MS * NS_PER_MS, t, prev;
	struct progress p;

	if ((end - start) / step > EC_SERIES_MAX)
		step = (end - start) / EC_SERIES_MAX;
	res->series_step_ns = step;
	progress_now(ld, &p);
	prev = p.rx;
	for (t = start + step; t <= end - step / 2 && res->series_n < EC_SERIES_MAX; t += step) {
		if (sleep_until(t, ld->cfg->stop_fd))
			return 1;
		progress_now(ld, &p);
		res->series[res->series_n++] = p.rx - prev;
		prev = p.rx;
	}
	return 0;
}

/* The timeline: warm-up, window edges, both sides' snapshots, early stop. */
void ec_run_timeline(struct load *ld, struct ec_load_result *res)
{
	const struct ec_load_config *cfg = ld->cfg;
	uint64_t dur = (uint64_t)(cfg->duration_s * 1e9), start, end;
	struct server_snap s0, s1;
	struct rusage ru0, ru1;
	uint64_t c0[EC_MAX_COUNTERS], c1[EC_MAX_COUNTERS];
	int st0[EC_MAX_COUNTERS], st1[EC_MAX_COUNTERS];
	int steady_flag = -1;

	if (ld->win_start == WIN_UNKNOWN) {
		start = adaptive_start(ld, &steady_flag);
		if (!start) {
			/* Stopped during warm-up: let the workers (which see the stop too) finish. */
			start = now_ns();
			ec_window_publish(ld, start, start);
			return;
		}
		/*
		 * The sample for this start was taken WINDOW_LEAD_NS before it; if
		 * this thread woke late, the start may already have passed, and the
		 * workers would miss [start, publish).  Open it a little later.
		 */
		if (start < now_ns() + WINDOW_LEAD_NS / 2)
			start = now_ns() + WINDOW_LEAD_NS / 2;
		ec_window_publish(ld, start, start + dur);
	}
	start = ld->win_start;
	end = ld->win_end;
	res->warmup_s = (double)(start - ld->t0) / 1e9;
	res->warmup_steady = steady_flag;
	if (sleep_until_edge(start, cfg->stop_fd))
		return;
	ec_server_snap(cfg, &s0);
	ec_counters_read(&ld->ctr, c0, st0);
	getrusage(RUSAGE_SELF, &ru0);
	window_ctl(cfg->window_ctl_fd, "enable\n");
	if (record_series(ld, start, end, res) || sleep_until_edge(end, cfg->stop_fd))
		end = now_ns();
	window_ctl(cfg->window_ctl_fd, "disable\n");
	ec_server_snap(cfg, &s1);
	ec_counters_read(&ld->ctr, c1, st1);
	getrusage(RUSAGE_SELF, &ru1);
	res->duration_s = (double)(end - start) / 1e9;
	res->cpu_user_s = tv_s(&ru1.ru_utime) - tv_s(&ru0.ru_utime);
	res->cpu_sys_s = tv_s(&ru1.ru_stime) - tv_s(&ru0.ru_stime);
	if (cfg->server_stats) {
		res->server_stats_snap = 1;
		res->server_start = s0.stats;
		res->server_end = s1.stats;
	}
	/* A server process that exited between the snapshots takes its time with it: no figure. */
	if (s0.ok && s1.ok && s1.cpu_ns >= s0.cpu_ns) {
		res->server_snap = 1;
		res->server_cpu_ns = s1.cpu_ns - s0.cpu_ns;
		res->server_cpu_user_s = s1.user_s - s0.user_s;
		res->server_cpu_sys_s = s1.sys_s - s0.sys_s;
		res->server_minflt = s1.minflt - s0.minflt;
	}
	/* Context switches of a thread that exited mid-window left the sum: no figure then. */
	if (res->server_snap && s0.proc_ok && s1.proc_ok && s1.vol_ctxsw >= s0.vol_ctxsw &&
	    s1.invol_ctxsw >= s0.invol_ctxsw) {
		res->server_proc_snap = 1;
		res->server_vol_ctxsw = s1.vol_ctxsw - s0.vol_ctxsw;
		res->server_invol_ctxsw = s1.invol_ctxsw - s0.invol_ctxsw;
	}
	counters_result(&ld->ctr, c0, st0, c1, st1, res);
}
