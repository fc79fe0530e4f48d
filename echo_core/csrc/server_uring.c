/*
 * server_uring.c - RFC 862 echo server on io_uring.
 *
 * One ring, one thread.  Connections arrive through single-shot accepts
 * into direct (fixed) descriptors, each armed only with a table slot
 * reserved for it: a multishot accept would let the kernel accept a
 * connection it then has no slot for and drops (-ENFILE), whereas with
 * reservations the connections beyond max_conns wait in the listen
 * backlog until a close frees a slot.  Each connection has exactly one
 * operation in flight: a recv that picks a buffer from the provided-buffer
 * ring, then a send of that buffer (resent until complete), then the next
 * recv.  One io_uring_enter per loop turn submits and waits.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "echo_core.h"
#include "net.h"

#define BUF_GROUP 0
#define ACCEPT_DEPTH 16		/* single-shot accepts in flight at most */
#define ACCEPT_RETRY_MS 100
#define CQ_MAX (1u << 20)
#define SUBMIT_TRIES 4		/* flushes get_sqe tries before it gives up (and defers) */		/* CQ size asked for at most (the kernel clamps further) */	/* wait before accepting again after EMFILE and co. */

enum op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_CLOSE,
	OP_STOP,
	OP_TIMER,
};

enum conn_state {
	CONN_FREE = 0,
	CONN_RECV,      /* recv in flight */
	CONN_SEND,      /* send of buffer bid in flight */
	CONN_STARVED,   /* recv found no buffer; waiting in the starved queue */
	CONN_CLOSING,   /* close in flight */
};

struct conn {
	uint8_t state;
	uint16_t bid;     /* buffer being echoed while CONN_SEND */
	uint32_t sent;    /* bytes of that buffer already sent */
	uint32_t len;     /* bytes in that buffer */
};

struct server {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	size_t br_size;
	unsigned char *bufs;
	size_t bufs_size;
	uint32_t buf_size;
	uint32_t buf_count;
	uint32_t bufs_free;       /* buffers currently in the provided ring */
	struct conn *conns;
	uint32_t max_conns;
	uint32_t *starved;        /* FIFO of connections waiting for a buffer */
	uint32_t starved_head, starved_len;
	uint32_t *deferred;       /* FIFO of connections whose next op found no SQE */
	uint32_t deferred_head, deferred_len;
	int listen_fd;
	int stop_fd;
	int ready_fd;
	uint32_t nconns;          /* slots holding a connection (closing ones too) */
	uint32_t accepts;         /* accepts in flight, each with a slot reserved */
	int accept_paused;        /* resource error: wait for a close or the timer */
	int timer_armed;
	int table_full;           /* counted once in accept_pauses per full spell */
	struct __kernel_timespec retry_ts;
	int stopping;
	struct ec_server_stats *stats;
};

static inline uint64_t make_data(enum op op, uint32_t idx)
{
	return (uint64_t)op << 32 | idx;
}

/*
 * Get an SQE, flushing the submission queue to the kernel when it is full.
 * The kernel may refuse for a while (-EBUSY while completions overflow,
 * -EAGAIN when short of memory): flush those into the CQ and try again a
 * few times, then give up with NULL, and the caller defers the operation
 * to the next loop turn, after completions have been reaped.
 */
static struct io_uring_sqe *get_sqe(struct server *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	int tries, ret;

	for (tries = 0; !sqe && tries < SUBMIT_TRIES; tries++) {
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

static void defer(struct server *s, uint32_t idx)
{
	s->deferred[(s->deferred_head + s->deferred_len) % s->max_conns] = idx;
	s->deferred_len++;
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

static void arm_recv(struct server *s, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	s->conns[idx].state = CONN_RECV;
	if (!sqe) {
		defer(s, idx);
		return;
	}
	io_uring_prep_recv(sqe, idx, NULL, s->buf_size, 0);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, make_data(OP_RECV, idx));
	s->stats->recv_calls++;
}

static void arm_send(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	struct io_uring_sqe *sqe = get_sqe(s);
	unsigned char *buf = s->bufs + (size_t)c->bid * s->buf_size;

	c->state = CONN_SEND;
	if (!sqe) {
		defer(s, idx);
		return;
	}
	io_uring_prep_send(sqe, idx, buf + c->sent, c->len - c->sent, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx));
	s->stats->send_calls++;
}

static void arm_close(struct server *s, uint32_t idx)
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
		switch (s->conns[idx].state) {
		case CONN_RECV:
			arm_recv(s, idx);
			break;
		case CONN_SEND:
			arm_send(s, idx);
			break;
		case CONN_CLOSING:
			arm_close(s, idx);
			break;
		default:
			break;
		}
	}
}

static void recycle_buffer(struct server *s, uint16_t bid)
{
	io_uring_buf_ring_add(s->br, s->bufs + (size_t)bid * s->buf_size, s->buf_size, bid,
			      io_uring_buf_ring_mask(s->buf_count), 0);
	io_uring_buf_ring_advance(s->br, 1);
	s->bufs_free++;
}

static void starve(struct server *s, uint32_t idx)
{
	s->starved[(s->starved_head + s->starved_len) % s->max_conns] = idx;
	s->starved_len++;
	s->conns[idx].state = CONN_STARVED;
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
	uint32_t n = s->starved_len < s->bufs_free ? s->starved_len : s->bufs_free;

	while (n--) {
		uint32_t idx = s->starved[s->starved_head];

		s->starved_head = (s->starved_head + 1) % s->max_conns;
		s->starved_len--;
		arm_recv(s, idx);
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

static void on_accept(struct server *s, const struct io_uring_cqe *cqe)
{
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
	s->nconns++;
	s->stats->conns_accepted++;
	s->stats->conns_active = s->nconns;
	s->conns[cqe->res].sent = 0;
	arm_recv(s, (uint32_t)cqe->res);
	if (s->nconns == s->max_conns && !s->table_full) {
		s->table_full = 1;
		s->stats->accept_pauses++;
	}
}

static void on_recv(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];

	if (cqe->res == -ENOBUFS) {
		s->stats->enobufs++;
		starve(s, idx);
		return;
	}
	if (cqe->res <= 0) {
		/* The kernel may still hand us a buffer on error: it left the ring, give it back. */
		if (cqe->flags & IORING_CQE_F_BUFFER) {
			s->bufs_free--;
			recycle_buffer(s, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		}
		if (cqe->res < 0)
			s->stats->conn_errors++;
		/* res == 0 is EOF; everything received was already echoed. */
		arm_close(s, idx);
		return;
	}
	c->bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	c->len = (uint32_t)cqe->res;
	c->sent = 0;
	s->bufs_free--;
	s->stats->bytes_in += (uint64_t)cqe->res;
	ec_count_recv(s->stats, (uint64_t)cqe->res);
	if (c->len > s->stats->pending_bytes_max)
		s->stats->pending_bytes_max = c->len;
	arm_send(s, idx);
}

static void on_send(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];

	if (cqe->res < 0) {
		s->stats->conn_errors++;
		recycle_buffer(s, c->bid);
		arm_close(s, idx);
		return;
	}
	s->stats->bytes_out += (uint64_t)cqe->res;
	c->sent += (uint32_t)cqe->res;
	if (c->sent < c->len) {
		s->stats->short_sends++;
		arm_send(s, idx);
		return;
	}
	recycle_buffer(s, c->bid);
	arm_recv(s, idx);
}

/* The slot is free again (close_direct has completed): accepting may resume. */
static void on_close(struct server *s, uint32_t idx)
{
	s->conns[idx].state = CONN_FREE;
	s->nconns--;
	s->stats->conns_active = s->nconns;
	s->stats->conns_closed++;
	s->table_full = 0;
	s->accept_paused = 0;
}

static void on_timer(struct server *s)
{
	s->timer_armed = 0;
	s->accept_paused = 0;
}

static void on_cqe(struct server *s, const struct io_uring_cqe *cqe)
{
	uint64_t data = io_uring_cqe_get_data64(cqe);
	uint32_t idx = (uint32_t)data;

	switch ((enum op)(data >> 32)) {
	case OP_ACCEPT:
		on_accept(s, cqe);
		break;
	case OP_RECV:
		on_recv(s, idx, cqe);
		break;
	case OP_SEND:
		on_send(s, idx, cqe);
		break;
	case OP_CLOSE:
		on_close(s, idx);
		break;
	case OP_STOP:
		s->stopping = 1;
		break;
	case OP_TIMER:
		on_timer(s);
		break;
	}
}

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
	/* Saves an fd lookup per io_uring_enter; harmless if refused. */
	io_uring_register_ring_fd(&s->ring);
	return 0;
}

static int setup_buffers(struct server *s)
{
	struct io_uring_buf_reg reg;
	uint32_t i;
	int ret;

	s->br_size = (size_t)s->buf_count * sizeof(struct io_uring_buf);
	s->br = mmap(NULL, s->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->br == MAP_FAILED) {
		s->br = NULL;
		return -ENOMEM;
	}
	s->bufs_size = (size_t)s->buf_count * s->buf_size;
	s->bufs = mmap(NULL, s->bufs_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->bufs == MAP_FAILED) {
		s->bufs = NULL;
		return -ENOMEM;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)s->br;
	reg.ring_entries = s->buf_count;
	reg.bgid = BUF_GROUP;
	ret = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (ret)
		return ret;
	io_uring_buf_ring_init(s->br);
	for (i = 0; i < s->buf_count; i++)
		io_uring_buf_ring_add(s->br, s->bufs + (size_t)i * s->buf_size, s->buf_size, i,
				      io_uring_buf_ring_mask(s->buf_count), i);
	io_uring_buf_ring_advance(s->br, s->buf_count);
	s->bufs_free = s->buf_count;
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

static int check_config(const struct ec_server_config *cfg)
{
	if (!cfg->buf_size || !cfg->ring_entries)
		return -EINVAL;
	/* Buffer ids are 16 bits and the ring size must be a power of two. */
	if (!cfg->buf_count || cfg->buf_count > 32768 || (cfg->buf_count & (cfg->buf_count - 1)))
		return -EINVAL;
	/* The same bound as the epoll server's (and register_files_sparse's). */
	if (cfg->max_conns > conns_limit())
		return -EMFILE;
	return 0;
}

static void teardown(struct server *s, int ring_up)
{
	if (ring_up)
		io_uring_queue_exit(&s->ring);
	if (s->bufs)
		munmap(s->bufs, s->bufs_size);
	if (s->br)
		munmap(s->br, s->br_size);
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
 * so that the kernel has CQ room for what the handlers submit.
 */
static void reap(struct server *s)
{
	struct io_uring_cqe *cqe, copy;
	unsigned n = s->ring.cq.ring_entries;

	while (n-- && !io_uring_peek_cqe(&s->ring, &cqe)) {
		copy = *cqe;
		io_uring_cqe_seen(&s->ring, cqe);
		s->stats->completions++;
		on_cqe(s, &copy);
	}
}

/* Work left that needs no completion to go ahead: do not block in the wait. */
static int must_not_block(const struct server *s)
{
	return s->deferred_len || (s->starved_len && s->bufs_free);
}

static int run_loop(struct server *s)
{
	while (!s->stopping) {
		int ret;

		ret = io_uring_submit_and_wait(&s->ring, must_not_block(s) ? 0 : 1);
		s->stats->wait_calls++;
		s->stats->loop_iterations++;
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
			return ret;
		reap(s);
		drain_deferred(s);
		rearm_starved(s);
		fill_accepts(s);
	}
	return 0;
}

int ec_uring_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
		   struct ec_server_stats *stats)
{
	struct server s;
	int ret;

	ret = check_config(cfg);
	if (ret)
		return ret;
	memset(&s, 0, sizeof(s));
	s.listen_fd = listen_fd;
	s.stop_fd = stop_fd;
	s.ready_fd = cfg->ready_fd;
	s.stats = stats;
	s.buf_size = cfg->buf_size;
	s.buf_count = cfg->buf_count;
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
	if (!ret)
		ret = setup_buffers(&s);
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
