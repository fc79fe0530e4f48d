/*
 * uring_core.c - RFC 862 echo server on io_uring: the shared core.
 *
 * One ring, one thread.  Connections arrive through single-shot accepts
 * into direct (fixed) descriptors, each armed only with a table slot
 * reserved for it: a multishot accept would let the kernel accept a
 * connection it then has no slot for and drops (-ENFILE), whereas with
 * reservations the connections beyond max_conns wait in the listen
 * backlog until a close frees a slot.  What happens on a connection is
 * the echo strategy's (uring_echo_*.c), which uring_serve.c picks and
 * hands to core_serve: features=0 selects uring_echo_single.c, the seed's
 * design.  One io_uring_enter per loop turn submits and waits (the wait
 * unit; uring_wait.c batches it).
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "../net.h"
#include "uring_core.h"
#include "uring_grow.h"
#include "uring_wait.h"
#include "uring_zc.h"

#define ACCEPT_DEPTH 16		/* single-shot accepts in flight at most */
#define ACCEPT_RETRY_MS 100	/* wait before accepting again after EMFILE and co. */
#define CQ_MAX (1u << 20)	/* CQ size asked for at most (the kernel clamps further) */
#define SUBMIT_TRIES 4		/* flushes get_sqe tries before it gives up (and defers) */
#define NAPI_BUSY_POLL_US 50	/* napi: busy-poll time per wait */

/*
 * Get an SQE, flushing the submission queue to the kernel when it is full.
 * The kernel may refuse for a while (-EBUSY while completions overflow,
 * -EAGAIN when short of memory): flush those into the CQ and try again a
 * few times, then give up with NULL, and the caller defers the operation
 * to the next loop turn, after completions have been reaped.
 */
struct io_uring_sqe *get_sqe(struct server *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	int tries, ret;

	for (tries = 0; !sqe && tries < SUBMIT_TRIES; tries++) {
		if (s->ring.flags & IORING_SETUP_SQPOLL) {
			/* sqpoll: the SQ thread frees entries as it submits them; wait for one. */
			ret = io_uring_sqring_wait(&s->ring);
			s->stats->wait_calls++;
			sqe = io_uring_get_sqe(&s->ring);
			continue;
		}
		ret = io_uring_submit(&s->ring);
		s->stats->wait_calls++;
		if (ret == -EBUSY || ret == -EAGAIN)
			io_uring_get_events(&s->ring);
		else if (ret < 0 && ret != -EINTR)
			return NULL;	/* fatal: the loop's own submit reports it */
		sqe = io_uring_get_sqe(&s->ring);
	}
	return sqe;
}

/* Queue connection idx to arm what it was about to do once SQEs are free (at most once at a time). */
void defer(struct server *s, uint32_t idx)
{
	s->deferred[(s->deferred_head + s->deferred_len) % s->max_conns] = idx;
	s->deferred_len++;
}

/* Queue connection idx until a buffer returns to the ring (at most once at a time). */
void starve(struct server *s, uint32_t idx)
{
	s->starved[(s->starved_head + s->starved_len) % s->max_conns] = idx;
	s->starved_len++;
}

/* One accept into a free slot of the table; the caller has reserved it. */
static int arm_accept(struct server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	if (!sqe)
		return -EBUSY;
	/*
	 * The helper stores file_index + 1, and older liburing does not map
	 * IORING_FILE_INDEX_ALLOC itself: ALLOC - 1 means "allocate" in both.
	 */
	io_uring_prep_accept_direct(sqe, s->listen_fd, NULL, NULL, 0, IORING_FILE_INDEX_ALLOC - 1);
	io_uring_sqe_set_data64(sqe, make_data(OP_ACCEPT, 0));
	s->accepts++;
	s->stats->accept_calls++;
	return 0;
}

static void arm_timer(struct server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	if (!sqe)
		return;		/* fill_accepts tries again next turn */
	s->retry_ts.tv_sec = 0;
	s->retry_ts.tv_nsec = ACCEPT_RETRY_MS * 1000000LL;
	io_uring_prep_timeout(sqe, &s->retry_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, make_data(OP_TIMER, 0));
	s->timer_armed = 1;
}

/*
 * Keep up to ACCEPT_DEPTH accepts in flight, but never more than there are
 * free slots: the kernel must never hold a connection with nowhere to put
 * it.  Connections beyond max_conns stay in the listen backlog.
 */
static void fill_accepts(struct server *s)
{
	if (s->stopping)
		return;
	if (s->accept_paused) {
		if (!s->timer_armed)
			arm_timer(s);
		return;
	}
	while (s->accepts < ACCEPT_DEPTH && s->nconns + s->accepts < s->max_conns) {
		if (arm_accept(s))
			return;
	}
}

/* Close the connection's direct descriptor; nothing else of it may be in flight. */
void arm_close(struct server *s, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	s->conns[idx].state = CONN_CLOSING;
	if (!sqe) {
		defer(s, idx);
		return;
	}
	io_uring_prep_close_direct(sqe, idx);
	io_uring_sqe_set_data64(sqe, make_data(OP_CLOSE, idx));
}

/* Arm what each deferred connection was about to do, in order, while SQEs last. */
static void drain_deferred(struct server *s)
{
	uint32_t n = s->deferred_len;

	while (n--) {
		uint32_t idx = s->deferred[s->deferred_head];

		s->deferred_head = (s->deferred_head + 1) % s->max_conns;
		s->deferred_len--;
		if (s->conns[idx].state == CONN_CLOSING)
			arm_close(s, idx);
		else
			s->strat->resume(s, idx);
	}
}

/*
 * Re-arm starved connections, oldest first, about as many as there are free
 * buffers: arming all of them for one free buffer only buys an -ENOBUFS
 * storm.  An armed recv takes a buffer only when data arrives, so the
 * armed ones may sit idle while buffers stay free; run_loop then does not
 * block, and the next turns arm the rest of the queue.
 */
static void rearm_starved(struct server *s)
{
	uint32_t n = s->starved_len < s->br.free ? s->starved_len : s->br.free;

	while (n--) {
		uint32_t idx = s->starved[s->starved_head];

		s->starved_head = (s->starved_head + 1) % s->max_conns;
		s->starved_len--;
		s->strat->rearm(s, idx);
	}
}

/* Errors that concern one connection only: the next accept may succeed. */
static int accept_error_is_transient(int err)
{
	switch (err) {
	case -ECONNABORTED:
	case -EPROTO:
	case -EPERM:
	case -EINTR:
	case -ENETDOWN:
	case -ENETUNREACH:
	case -EHOSTUNREACH:
		return 1;
	default:
		return 0;
	}
}

static void on_accept(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	(void)idx;
	s->accepts--;
	if (cqe->res < 0) {
		if (cqe->res == -ECANCELED)
			return;
		s->stats->accept_errors++;
		/* Out of files or memory (or worse): pause, retry on a close or the timer. */
		if (!accept_error_is_transient(cqe->res) && !s->accept_paused) {
			s->accept_paused = 1;
			s->stats->accept_pauses++;
			if (!s->timer_armed)
				arm_timer(s);
		}
		return;
	}
	if (s->conns[cqe->res].state != CONN_FREE) {
		/* The kernel allocated a slot we still use: our table and its disagree.  Not ours to close. */
		s->stats->accept_errors++;
		return;
	}
	s->conns[cqe->res].work_bytes = 0;
	s->nconns++;
	s->stats->conns_accepted++;
	s->stats->conns_active = s->nconns;
	s->strat->start(s, (uint32_t)cqe->res);
	if (s->nconns == s->max_conns && !s->table_full) {
		s->table_full = 1;
		s->stats->accept_pauses++;
	}
}

/* The slot is free again (close_direct has completed): accepting may resume. */
static void on_close(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	/* The slot is free for the kernel's allocator either way; a failed close is still worth a count. */
	if (cqe->res < 0)
		s->stats->conn_errors++;
	s->conns[idx].state = CONN_FREE;
	s->nconns--;
	s->stats->conns_active = s->nconns;
	s->stats->conns_closed++;
	s->table_full = 0;
	s->accept_paused = 0;
}

static void on_stop(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	(void)idx;
	(void)cqe;
	s->stopping = 1;
}

static void on_timer(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	(void)idx;
	(void)cqe;
	s->timer_armed = 0;
	s->accept_paused = 0;
}

static void on_ignore(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	(void)s;
	(void)idx;
	(void)cqe;
}

/* The running kernel's version is at least major.minor (features no flag announces). */
static int kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return 0;
	return ma > major || (ma == major && mi >= minor);
}

/*
 * Refuse at set-up, not at the first completion, what this kernel would
 * refuse later: multishot recv (6.0), recv POLL_FIRST (5.19), bundles (IORING_FEAT_RECVSEND_BUNDLE,
 * 6.10), send_zc (the opcode), a batched wait's extended argument (5.11).
 */
static int kernel_has_features(struct server *s, uint32_t ring_features)
{
	struct io_uring_probe *probe;
	int ok = 1;

	if ((s->features & EC_FEAT_MSHOT) && !kernel_at_least(6, 0))
		ok = 0;
	/* IORING_RECVSEND_POLL_FIRST (5.19): older kernels fail every such recv with -EINVAL. */
	if ((s->features & EC_FEAT_POLLFIRST) && !kernel_at_least(5, 19))
		ok = 0;
	if ((s->features & EC_FEAT_BUNDLE) && !(ring_features & IORING_FEAT_RECVSEND_BUNDLE))
		ok = 0;
	if ((s->features & EC_FEAT_BATCH) && !(ring_features & IORING_FEAT_EXT_ARG))
		ok = 0;
	if (ok && (s->features & EC_FEAT_ZC)) {
		probe = io_uring_get_probe_ring(&s->ring);
		ok = probe && io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
		if (probe)
			io_uring_free_probe(probe);
	}
	return ok;
}

/* Set up the ring; features add SQPOLL (no DEFER_TASKRUN then) and NAPI. */
static int setup_ring(struct server *s, uint32_t entries)
{
	struct io_uring_params p;
	uint64_t want = (uint64_t)s->max_conns + ACCEPT_DEPTH + 64;
	uint32_t cq = 1;
	int ret;

	/*
	 * Room for one completion per connection plus accepts, stop and timer;
	 * IORING_SETUP_CLAMP trims anything above the kernel's maximum.
	 */
	if (want < 2 * (uint64_t)entries)
		want = 2 * (uint64_t)entries;
	while (cq < want && cq < CQ_MAX)
		cq <<= 1;
	memset(&p, 0, sizeof(p));
	if (s->features & EC_FEAT_SQPOLL) {
		/* DEFER_TASKRUN is refused with SQPOLL; the SQ thread is the one issuer. */
		p.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_CQSIZE |
			  IORING_SETUP_CLAMP;
		if (s->sqpoll_cpu >= 0) {
			p.flags |= IORING_SETUP_SQ_AFF;
			p.sq_thread_cpu = (uint32_t)s->sqpoll_cpu;
		}
		p.sq_thread_idle = 1000;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(entries, &s->ring, &p);
		if (ret == -EINVAL || ret == -EPERM)
			return -EOPNOTSUPP;
		if (ret)
			return ret;
	} else {
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
			  IORING_SETUP_CLAMP;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(entries, &s->ring, &p);
		if (ret == -EINVAL) {
			/* Kernels before 6.1 refuse DEFER_TASKRUN. */
			memset(&p, 0, sizeof(p));
			p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
			p.cq_entries = cq;
			ret = io_uring_queue_init_params(entries, &s->ring, &p);
		}
		if (ret)
			return ret;
	}
	s->min_timeout = !!(p.features & IORING_FEAT_MIN_TIMEOUT);
	s->mshot_limit = kernel_at_least(6, 17) && !s->mshot_own_cap;
	if (!kernel_has_features(s, p.features)) {
		io_uring_queue_exit(&s->ring);
		return -EOPNOTSUPP;
	}
	/* Saves an fd lookup per io_uring_enter; harmless if refused. */
	io_uring_register_ring_fd(&s->ring);
	return 0;
}

/* napi: busy-poll the NAPI contexts of the connections' sockets (6.9). */
static int setup_napi(struct server *s)
{
	struct ec_uring_napi napi;
	int ret;

	memset(&napi, 0, sizeof(napi));
	napi.busy_poll_to = NAPI_BUSY_POLL_US;
	napi.prefer_busy_poll = 1;
	ret = (int)syscall(__NR_io_uring_register, s->ring.ring_fd, EC_IORING_REGISTER_NAPI, &napi, 1);
	if (ret < 0)
		return errno == EINVAL ? -EOPNOTSUPP : -errno;
	return 0;
}

/* The most connections the table may hold: the soft fd limit, capped. */
static uint32_t conns_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur > EC_MAX_CONNS)
		return EC_MAX_CONNS;
	return rl.rlim_cur ? (uint32_t)rl.rlim_cur : 1;
}

static uint32_t table_size(const struct ec_server_config *cfg)
{
	return cfg->max_conns ? cfg->max_conns : conns_limit();
}

/* Feature combinations that cannot work together (see echo_core.h). */
static int check_features(uint32_t f)
{
	if (f & ~(uint32_t)EC_FEAT_ALL)
		return -EINVAL;
	if ((f & EC_FEAT_BUNDLE) && !(f & EC_FEAT_MSHOT))
		return -EINVAL;
	if ((f & EC_FEAT_CONNBUF) && (f & (EC_FEAT_MSHOT | EC_FEAT_BUNDLE | EC_FEAT_INC)))
		return -EINVAL;
	if ((f & EC_FEAT_BUNDLE) && (f & EC_FEAT_INC))
		return -EINVAL;
	if ((f & EC_FEAT_ZC) && (f & EC_FEAT_CONNBUF))
		return -EINVAL;	/* the next recv would overwrite bytes the kernel may still send */
	if ((f & (EC_FEAT_GROW | EC_FEAT_HUGE)) && (f & EC_FEAT_CONNBUF))
		return -EINVAL;	/* no pool to grow or to put on huge pages */
	if ((f & EC_FEAT_SENDRING) && (!(f & EC_FEAT_BUNDLE) || (f & EC_FEAT_ZC)))
		return -EINVAL;	/* only bundles gather sends, and not with send_zc */
	return 0;
}

static int check_config(const struct ec_server_config *cfg)
{
	int ret;

	if (!cfg->buf_size || !cfg->ring_entries)
		return -EINVAL;
	/* Buffer ids are 16 bits and the ring size must be a power of two. */
	if (!cfg->buf_count || cfg->buf_count > 32768 || (cfg->buf_count & (cfg->buf_count - 1)))
		return -EINVAL;
	ret = check_features(cfg->features);
	if (ret)
		return ret;
	if ((cfg->features & EC_FEAT_GROW) && cfg->grow_start > cfg->buf_count)
		return -EINVAL;
	if (cfg->mshot_own_cap > 1)
		return -EINVAL;
	/* The same bound as the epoll server's (and register_files_sparse's). */
	if (cfg->max_conns > conns_limit())
		return -EMFILE;
	return 0;
}

static void teardown(struct server *s, int ring_up)
{
	/* The ring first: its exit cancels what is in flight, which may still point into buffers. */
	if (ring_up)
		io_uring_queue_exit(&s->ring);
	if (s->strat->teardown)
		s->strat->teardown(s);
	teardown_send(s);
	bufring_free(&s->br);
	free(s->conns);
	free(s->starved);
	free(s->deferred);
}

/*
 * Queue the stop watch and the first accepts and hand them to the kernel,
 * so that "ready" means they are really in place.  Returns 0 or -errno.
 */
static int arm_first(struct server *s)
{
	struct io_uring_sqe *sqe;
	int ret;

	sqe = get_sqe(s);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, s->stop_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, make_data(OP_STOP, 0));
	fill_accepts(s);
	ret = io_uring_submit(&s->ring);
	s->stats->wait_calls++;
	return ret < 0 ? ret : 0;
}

/*
 * Handle the completions there are, each marked seen before it is handled,
 * so that the kernel has CQ room for what the handlers submit.  Returns how
 * many (the batched wait's batch_after looks at it).
 */
static unsigned reap(struct server *s)
{
	struct io_uring_cqe *cqe, copy;
	unsigned n = s->ring.cq.ring_entries, seen = 0;

	while (n-- && !io_uring_peek_cqe(&s->ring, &cqe)) {
		uint64_t data;
		uint32_t op;

		copy = *cqe;
		io_uring_cqe_seen(&s->ring, cqe);
		s->stats->completions++;
		seen++;
		data = io_uring_cqe_get_data64(&copy);
		op = (uint32_t)(data >> 32) & 0xff;
		if (op && op < OP_COUNT)
			s->handlers[op](s, (uint32_t)data, &copy);
	}
	return seen;
}

/* Work left that needs no completion to go ahead: do not block in the wait. */
static int must_not_block(const struct server *s)
{
	return s->deferred_len || (s->starved_len && s->br.free);
}

/* The plain wait unit: submit and wait for one completion (none if there is work left). */
static int plain_wait(struct server *s, int block)
{
	return io_uring_submit_and_wait(&s->ring, block ? 1 : 0);
}

static int run_loop(struct server *s)
{
	while (!s->stopping) {
		int ret;

		ret = s->wait(s, !must_not_block(s));
		s->stats->wait_calls++;
		s->stats->loop_iterations++;
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
			return ret;
		s->last_reaped = reap(s);
		drain_deferred(s);
		rearm_starved(s);
		fill_accepts(s);
	}
	return 0;
}

static void configure(struct server *s, const struct ec_server_config *cfg, const struct strategy *strat)
{
	s->features = cfg->features;
	s->buf_size = cfg->buf_size;
	s->buf_count = cfg->buf_count;
	s->batch_nr = cfg->batch_nr ? cfg->batch_nr : EC_DEFAULT_BATCH_NR;
	s->batch_wait_us = cfg->batch_wait_us ? cfg->batch_wait_us : EC_DEFAULT_BATCH_WAIT_US;
	s->batch_after = cfg->batch_after;
	/* Not configured (0): the pool's size sets the budget and keeps setting it as the pool grows. */
	s->mshot_budget = cfg->mshot_budget;
	s->mshot_budget_auto = !cfg->mshot_budget;
	s->mshot_own_cap = (int)cfg->mshot_own_cap;
	s->grow_step = cfg->grow_step ? cfg->grow_step : EC_DEFAULT_GROW_BLOCK;
	s->pool_start = pool_start(cfg);
	s->br.huge = !!(cfg->features & EC_FEAT_HUGE);
	pool_sized(s, s->pool_start);
	s->sqpoll_cpu = cfg->sqpoll_cpu;
	s->recv_ioprio = cfg->features & EC_FEAT_POLLFIRST ? IORING_RECVSEND_POLL_FIRST : 0;
	s->wait = cfg->features & EC_FEAT_BATCH ? batch_wait : plain_wait;
	s->strat = strat;
	s->handlers[OP_ACCEPT] = on_accept;
	s->handlers[OP_CLOSE] = on_close;
	s->handlers[OP_STOP] = on_stop;
	s->handlers[OP_TIMER] = on_timer;
	s->handlers[OP_RECV] = on_ignore;
	s->handlers[OP_SEND] = on_ignore;
	s->handlers[OP_CANCEL] = on_ignore;
}

int core_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
	       struct ec_server_stats *stats, const struct strategy *strat)
{
	struct server s;
	int ret;

	ret = check_config(cfg);
	if (ret)
		return ret;
	memset(&s, 0, sizeof(s));
	ret = ec_work_init(&s.work, cfg);
	if (ret)
		return ret;
	memset(stats, 0, sizeof(*stats));	/* as the epoll server does: counters start at 0 */
	s.listen_fd = listen_fd;
	s.stop_fd = stop_fd;
	s.ready_fd = cfg->ready_fd;
	s.stats = stats;
	configure(&s, cfg, strat);
	s.max_conns = table_size(cfg);
	s.conns = calloc(s.max_conns, sizeof(*s.conns));
	s.starved = calloc(s.max_conns, sizeof(*s.starved));
	s.deferred = calloc(s.max_conns, sizeof(*s.deferred));
	if (!s.conns || !s.starved || !s.deferred) {
		teardown(&s, 0);
		return -ENOMEM;
	}
	ret = setup_ring(&s, cfg->ring_entries);
	if (ret) {
		teardown(&s, 0);
		return ret;
	}
	ret = io_uring_register_files_sparse(&s.ring, s.max_conns);
	if (!ret && (s.features & EC_FEAT_NAPI))
		ret = setup_napi(&s);
	if (!ret)
		ret = s.strat->setup(&s);
	if (!ret)
		ret = setup_send(&s);
	if (!ret)
		ret = arm_first(&s);
	if (!ret) {
		/* Counters read "running" as soon as the waiter hears we are ready. */
		stats->running = 1;
		ret = ec_notify_ready(s.ready_fd);
	}
	if (!ret)
		ret = run_loop(&s);
	stats->running = 0;
	/* Ring teardown cancels what is in flight and closes every direct descriptor. */
	teardown(&s, 1);
	stats->conns_active = 0;
	return ret;
}
