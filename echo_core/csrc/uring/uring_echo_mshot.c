/*
 * uring_echo_mshot.c - multishot recv with a per-connection ordered send
 * queue (EC_FEAT_MSHOT; with EC_FEAT_BUNDLE one completion may fill several
 * buffers, with EC_FEAT_INC buffers are filled piece by piece).
 *
 * Each connection keeps one multishot recv armed; every completion that
 * carries data appends its bytes (one segment per buffer, or per piece of
 * an incremental buffer) to the connection's send queue, and the queue is
 * sent head first, one send in flight, short sends resent.  So receiving
 * continues while sends are in flight.
 *
 * Bounded and fair: a connection whose queue holds mshot_budget segments
 * stops receiving (its multishot recv is cancelled and not re-armed) until
 * the queue has drained to half of that - back-pressure like epoll's, and
 * one fast connection cannot take every buffer of the shared pool.
 * A multishot recv ends without IORING_CQE_F_MORE: on -ENOBUFS the
 * connection waits in the core's starved FIFO until buffers return; on
 * -ECANCELED (our own cancel) until its queue drains; after data (the
 * kernel's choice) it is re-armed at once.  EOF while sends are queued:
 * flush, then close.  Errors: drop the queue, wait for what is in flight
 * (send, recv, cancel), close.
 *
 * Flags say what is in flight; CF_W_* what is to be armed once an SQE is
 * free (the connection sits in the core's deferred FIFO at most once).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../net.h"
#include "uring_core.h"
#include "uring_echo.h"
#include "uring_grow.h"
#include "uring_sendring.h"
#include "uring_zc.h"

#define CF_RECV     0x001u	/* multishot recv armed (or to be armed: CF_W_RECV) */
#define CF_SEND     0x002u	/* send of the queue's head in flight (or CF_W_SEND) */
#define CF_CANCEL   0x004u	/* cancel of the recv in flight (or CF_W_CANCEL) */
#define CF_STARVED  0x008u	/* in the starved FIFO */
#define CF_DEFERRED 0x010u	/* in the deferred FIFO */
#define CF_PAUSED   0x020u	/* queue was full: not receiving until it drains */
#define CF_EOF      0x040u	/* peer sent FIN: flush the queue, then close */
#define CF_ERROR    0x080u	/* reset or error: drop the queue, then close */
#define CF_W_RECV   0x100u
#define CF_W_SEND   0x200u
#define CF_W_CANCEL 0x400u
#define CF_RINGSEND 0x800u	/* the send in flight is a send bundle from the connection's send ring */

#define NONE UINT32_MAX
#define GATHER_MAX 16	/* bundle: segments one gathered send takes at most */

struct gather {
	struct msghdr msg;
	struct iovec iov[GATHER_MAX];
	struct sendring send;	/* sendring: the same segments as ring entries */
};

struct seg {
	uint32_t next;
	uint32_t off;	/* where the bytes start in the buffer */
	uint32_t len;
	uint32_t sent;
	uint16_t bid;
	unsigned char *spill;	/* the bytes, copied out of a low pool (must_spill); NULL: in buffer bid */
};

static unsigned char *seg_bytes(const struct server *s, const struct seg *g)
{
	return g->spill ? g->spill : bufring_addr(&s->br, g->bid) + g->off;
}

/* ------------------------------------------------------------- segments */

static uint32_t seg_alloc(struct server *s)
{
	uint32_t i;

	if (s->segs_free == NONE) {
		uint32_t cap = s->segs_cap ? 2 * s->segs_cap : 2 * s->buf_count + 64;
		struct seg *n = realloc(s->segs, (size_t)cap * sizeof(*n));

		if (!n)
			return NONE;
		for (i = s->segs_cap; i < cap; i++) {
			n[i].next = i + 1 < cap ? i + 1 : NONE;
			n[i].spill = NULL;
		}
		s->segs = n;
		s->segs_free = s->segs_cap;
		s->segs_cap = cap;
	}
	i = s->segs_free;
	s->segs_free = s->segs[i].next;
	return i;
}

static void seg_release(struct server *s, uint32_t i)
{
	if (s->segs[i].spill) {
		free(s->segs[i].spill);
		s->segs[i].spill = NULL;
	} else {
		s->put_buf(s, s->segs[i].bid);
	}
	s->segs[i].next = s->segs_free;
	s->segs_free = i;
}

static int enqueue(struct server *s, struct conn *c, uint16_t bid, uint32_t off, uint32_t len)
{
	uint32_t i = seg_alloc(s);
	unsigned char *spill = NULL;

	if (i == NONE)
		return -ENOMEM;
	if (must_spill(s) && (spill = malloc(len))) {
		memcpy(spill, bufring_addr(&s->br, bid) + off, len);
		bufring_put(&s->br, bid);	/* nothing of it was sent: no zc notification to wait for */
		s->stats->spills++;
	}
	s->segs[i] = (struct seg){ .next = NONE, .off = off, .len = len, .sent = 0, .bid = bid, .spill = spill };
	if (c->qtail == NONE)
		c->qhead = i;
	else
		s->segs[c->qtail].next = i;
	c->qtail = i;
	c->qlen++;
	c->len += len;
	return 0;
}

static void pop(struct server *s, struct conn *c)
{
	uint32_t i = c->qhead;

	c->qhead = s->segs[i].next;
	if (c->qhead == NONE)
		c->qtail = NONE;
	c->qlen--;
	c->len -= s->segs[i].len;
	seg_release(s, i);
}

/*
 * Drop what is queued, except the segments a send in flight covers: the
 * kernel may still read them (a gathered send spans up to GATHER_MAX), and a
 * buffer given back now could be refilled under it.  on_send drops them.
 */
static void drop_queue(struct server *s, struct conn *c)
{
	uint32_t keep = c->flags & CF_SEND ? c->qsend : 0;
	uint32_t last = c->qhead, i;

	if (!keep) {
		while (c->qhead != NONE)
			pop(s, c);
		return;
	}
	while (--keep)
		last = s->segs[last].next;
	while ((i = s->segs[last].next) != NONE) {
		s->segs[last].next = s->segs[i].next;
		c->qlen--;
		c->len -= s->segs[i].len;
		seg_release(s, i);
	}
	c->qtail = last;
}

/* The send in flight completed: the kernel no longer reads the segments it covered. */
static void sent_off(struct server *s, struct conn *c)
{
#ifdef EC_CHECKED
	uint32_t i = c->qhead, n;

	for (n = 0; n < c->qsend && i != NONE; n++, i = s->segs[i].next) {
		if (!s->segs[i].spill)
			BUFRING_SENDING(&s->br, s->segs[i].bid, -1);
	}
#else
	(void)s;
#endif
	c->qsend = 0;
}

/* ----------------------------------------------------------- operations */

static void fail(struct server *s, uint32_t idx);

static void want(struct server *s, uint32_t idx, uint32_t w)
{
	struct conn *c = &s->conns[idx];

	c->flags |= w;
	if (!(c->flags & CF_DEFERRED)) {
		c->flags |= CF_DEFERRED;
		defer(s, idx);
	}
}

/*
 * The kernel's own cap (6.17: sqe->optlen, file_index's slot in 2.3's SQE):
 * the multishot recv ends, without F_MORE, once it has received this many
 * bytes - the rest of the connection's budget.  Without it the kernel's
 * retry loop can fill dozens of buffers for one connection before the
 * server sees the first completion and can cancel.
 */
static uint32_t recv_allowance(const struct server *s, const struct conn *c)
{
	uint64_t left = c->qlen < s->mshot_budget ? s->mshot_budget - c->qlen : 1;

	left *= s->buf_size;
	return left > (1u << 30) ? 1u << 30 : (uint32_t)left;
}

static void arm_recv(struct server *s, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	s->conns[idx].flags |= CF_RECV;
	if (!sqe) {
		want(s, idx, CF_W_RECV);
		return;
	}
	io_uring_prep_recv_multishot(sqe, idx, NULL, 0, 0);
	if (s->mshot_limit)
		sqe->file_index = recv_allowance(s, &s->conns[idx]);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	sqe->ioprio |= s->recv_ioprio;
	if (s->features & EC_FEAT_BUNDLE)
		sqe->ioprio |= IORING_RECVSEND_BUNDLE;
	io_uring_sqe_set_data64(sqe, make_data(OP_RECV, idx));
	s->stats->recv_calls++;
}

/*
 * sendring: the connection's send ring, registered at its first gathered
 * send and unregistered when it closes; NULL if this send goes by sendmsg
 * (no bgid left for the slot, or registration refused, e.g. by
 * RLIMIT_MEMLOCK: counted, and tried again for the next connection, since
 * the limit is the user's and frees as connections close).  A ring a failed
 * send may have left entries in is registered afresh before the connection
 * sends again.
 */
static struct sendring *send_ring(struct server *s, uint32_t idx, struct gather *gt)
{
	struct sendring *r = &gt->send;
	int bgid = sendring_bgid(idx);

	if (!(s->features & EC_FEAT_SENDRING) || bgid < 0 || r->refused)
		return NULL;
	if (r->br && r->dirty) {
		sendring_close(&s->ring, r);	/* entries an error left behind: start afresh */
		s->stats->ring_resets++;
	}
	if (!r->br && sendring_open(&s->ring, r, (uint16_t)bgid)) {
		r->refused = 1;
		s->stats->ring_refusals++;
		return NULL;
	}
	return r;
}

/*
 * bundle: send up to GATHER_MAX queued segments in one sendmsg (a send
 * bundle of our own), or with sendring as the kernel's send bundle from the
 * connection's send ring.  The kernel copies msghdr and iovec when it takes
 * the SQE (a send ring's entries when it issues the send), and the
 * connection's gather area is rewritten only for its next send.
 */
static int prep_gather(struct server *s, struct io_uring_sqe *sqe, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	struct gather *gt = s->gathers[idx];
	struct sendring *r;
	uint32_t i, n = 0;

	if (!gt) {
		gt = s->gathers[idx] = calloc(1, sizeof(*gt));
		if (!gt)
			return -ENOMEM;
	}
	r = send_ring(s, idx, gt);
	c->sent = 0;
	for (i = c->qhead; i != NONE && n < GATHER_MAX; i = s->segs[i].next, n++) {
		const struct seg *g = &s->segs[i];
		unsigned char *p = seg_bytes(s, g) + g->sent;
		uint32_t len = g->len - g->sent;

		if (!g->spill)
			BUFRING_SENDING(&s->br, g->bid, 1);
		if (r) {
			sendring_add(r, p, len, n);
		} else {
			gt->iov[n].iov_base = p;
			gt->iov[n].iov_len = len;
		}
		c->sent += len;
	}
	c->qsend = n;
	if (r) {
		sendring_publish(r, n);
		sendring_prep(sqe, r, idx);
		c->flags |= CF_RINGSEND;
		s->stats->ring_sends++;
		io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx));
		return 0;
	}
	memset(&gt->msg, 0, sizeof(gt->msg));
	gt->msg.msg_iov = gt->iov;
	gt->msg.msg_iovlen = n;
	io_uring_prep_sendmsg(sqe, idx, &gt->msg, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx));
	return 0;
}

static void arm_send(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	struct io_uring_sqe *sqe = get_sqe(s);
	const struct seg *g = &s->segs[c->qhead];

	c->flags |= CF_SEND;
	c->qsend = 0;		/* nothing of the queue is the kernel's until the SQE is prepared */
	if (!sqe) {
		want(s, idx, CF_W_SEND);
		return;
	}
	if (s->gathers && c->qlen > 1) {
		if (prep_gather(s, sqe, idx)) {
			io_uring_prep_nop(sqe);	/* the SQE is taken: make it harmless */
			io_uring_sqe_set_data64(sqe, 0);
			c->flags &= ~CF_SEND;
			fail(s, idx);
			return;
		}
		s->stats->send_calls++;
		return;
	}
	c->sent = g->len - g->sent;
	c->qsend = 1;
	if (g->spill) {
		prep_send_spilled(s, sqe, idx, g->spill + g->sent, g->len - g->sent);
	} else {
		BUFRING_SENDING(&s->br, g->bid, 1);
		s->prep_send(s, sqe, idx, g->bid, bufring_addr(&s->br, g->bid) + g->off + g->sent,
			     g->len - g->sent);
	}
	s->stats->send_calls++;
}

/* End the connection's multishot recv (it completes with -ECANCELED, without F_MORE). */
static void arm_cancel(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	struct io_uring_sqe *sqe;

	if (!(c->flags & CF_RECV) || (c->flags & (CF_CANCEL | CF_W_RECV)))
		return;		/* nothing armed to cancel, or already cancelling */
	sqe = get_sqe(s);
	c->flags |= CF_CANCEL;
	if (!sqe) {
		want(s, idx, CF_W_CANCEL);
		return;
	}
	io_uring_prep_cancel64(sqe, make_data(OP_RECV, idx), 0);
	io_uring_sqe_set_data64(sqe, make_data(OP_CANCEL, idx));
}

/* Close once nothing is in flight or waiting, after an error or a flushed EOF. */
static void maybe_close(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];

	if (c->flags & (CF_RECV | CF_SEND | CF_CANCEL | CF_STARVED | CF_DEFERRED))
		return;
	if ((c->flags & CF_ERROR) || ((c->flags & CF_EOF) && !c->qlen)) {
		drop_queue(s, c);
		/*
		 * Only live connections hold a send ring: a long-lived server whose
		 * connections pass through every slot would otherwise keep a
		 * pinned page per slot it ever used.
		 */
		if (s->gathers && s->gathers[idx]) {
			sendring_close(&s->ring, &s->gathers[idx]->send);
			free(s->gathers[idx]);
			s->gathers[idx] = NULL;
		}
		c->flags = 0;
		arm_close(s, idx);
	}
}

/* Receive again, unless receiving is paused, already armed, waiting for buffers or over. */
static void maybe_recv(struct server *s, uint32_t idx)
{
	if (!(s->conns[idx].flags & (CF_RECV | CF_STARVED | CF_PAUSED | CF_EOF | CF_ERROR)))
		arm_recv(s, idx);
}

static void fail(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];

	if (!(c->flags & CF_ERROR))
		s->stats->conn_errors++;
	c->flags |= CF_ERROR;
	drop_queue(s, c);
	arm_cancel(s, idx);
	maybe_close(s, idx);
}

/* ------------------------------------------------------------- handlers */

/*
 * Queue the res bytes of a completion: one segment per buffer (several for a
 * bundle, named by ring position from the first: see bufring_pos()).
 */
static int take_data(struct server *s, struct conn *c, const struct io_uring_cqe *cqe)
{
	uint16_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	int bundle = !!s->br.shadow;
	uint32_t pos = bundle ? bufring_pos(&s->br, bid) : 0;
	uint32_t left = (uint32_t)cqe->res, k, n, off;
	int ret = 0;

	for (k = 0; left; k++) {
		uint16_t b = k ? bufring_at(&s->br, pos + k) : bid;
		uint32_t room = bundle ? bufring_len_at(&s->br, pos + k) : s->buf_size;

		n = left < room ? left : room;
		off = bufring_take(&s->br, b, n, cqe->flags);
		left -= n;
		ec_work_on_recv(&s->work, s->stats, &c->work_bytes, bufring_addr(&s->br, b) + off, n);
		if (ret || (c->flags & CF_ERROR) || (ret = enqueue(s, c, b, off, n)))
			bufring_put(&s->br, b);	/* not to be echoed: give it back */
	}
	return ret;
}

static void on_recv(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];
	int more = !!(cqe->flags & IORING_CQE_F_MORE);

	if (!more)
		c->flags &= ~CF_RECV;
	if (cqe->res > 0) {
		ec_count_recv(s->stats, (uint64_t)cqe->res);
		if (cqe->flags & IORING_CQE_F_BUF_MORE)
			s->stats->recv_buf_more++;
		if (take_data(s, c, cqe)) {
			fail(s, idx);
			return;
		}
		if (c->flags & CF_ERROR) {
			maybe_close(s, idx);
			return;
		}
		if (c->len > s->stats->pending_bytes_max)
			s->stats->pending_bytes_max = c->len;
		if (!(c->flags & CF_SEND))
			arm_send(s, idx);
		if (c->qlen >= s->mshot_budget && !(c->flags & CF_PAUSED)) {
			c->flags |= CF_PAUSED;
			s->stats->backpressure_pauses++;
			arm_cancel(s, idx);
		}
		if (!more)
			maybe_recv(s, idx);
		return;
	}
	if (cqe->flags & IORING_CQE_F_BUFFER)
		bufring_return_unused(&s->br, cqe->flags >> IORING_CQE_BUFFER_SHIFT, cqe->flags);
	if (cqe->res == -ENOBUFS) {
		pool_on_enobufs(s);
		if (c->flags & (CF_ERROR | CF_EOF)) {
			maybe_close(s, idx);
		} else if (!(c->flags & CF_STARVED)) {
			c->flags |= CF_STARVED;
			starve(s, idx);
		}
		return;
	}
	if (cqe->res == -ECANCELED) {
		maybe_recv(s, idx);	/* drained meanwhile, or a stale cancel */
		maybe_close(s, idx);
		return;
	}
	if (cqe->res == 0) {
		c->flags |= CF_EOF;
		maybe_close(s, idx);
		return;
	}
	fail(s, idx);
}

/* A send (of one segment, or gathered from several) completed: res bytes off the queue's head. */
static void on_send(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];
	int res = cqe->res;
	uint32_t done;

	if ((c->flags & CF_RINGSEND) &&
	    !sendring_done(&s->gathers[idx]->send, &res, !!(cqe->flags & IORING_CQE_F_MORE)))
		return;		/* more of this send bundle follows */
	c->flags &= ~(CF_SEND | CF_RINGSEND);
	sent_off(s, c);
	if (res < 0 || (c->flags & CF_ERROR)) {
		if (res > 0)
			s->stats->bytes_out += (uint64_t)res;
		fail(s, idx);
		return;
	}
	done = (uint32_t)res;
	s->stats->bytes_out += done;
	if (done < c->sent)
		s->stats->short_sends++;
	while (done) {
		struct seg *g = &s->segs[c->qhead];
		uint32_t rest = g->len - g->sent;

		if (done < rest) {
			g->sent += done;
			break;
		}
		done -= rest;
		pop(s, c);
	}
	if (c->qlen)
		arm_send(s, idx);
	if ((c->flags & CF_PAUSED) && c->qlen <= s->mshot_budget / 2) {
		c->flags &= ~CF_PAUSED;
		maybe_recv(s, idx);
	}
	maybe_close(s, idx);
}

static void on_cancel(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	(void)cqe;
	s->conns[idx].flags &= ~CF_CANCEL;
	maybe_close(s, idx);
}

/* --------------------------------------------------------------- hooks */

static void resume(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	uint32_t w = c->flags & (CF_W_RECV | CF_W_SEND | CF_W_CANCEL);

	c->flags &= ~(w | CF_DEFERRED);
	if (w & CF_W_SEND) {
		c->flags &= ~CF_SEND;
		if (c->flags & CF_ERROR)
			drop_queue(s, c);
		else
			arm_send(s, idx);
	}
	if (w & CF_W_RECV) {
		c->flags &= ~CF_RECV;
		if (!(c->flags & CF_PAUSED))
			maybe_recv(s, idx);
	}
	if (w & CF_W_CANCEL) {
		c->flags &= ~CF_CANCEL;
		arm_cancel(s, idx);
	}
	maybe_close(s, idx);
}

/* Buffers are back: receive again (a paused connection waits for its queue to drain). */
static void rearm(struct server *s, uint32_t idx)
{
	s->conns[idx].flags &= ~CF_STARVED;
	maybe_recv(s, idx);
	maybe_close(s, idx);
}

static void start(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];

	c->state = CONN_OPEN;
	c->flags = 0;
	c->qhead = c->qtail = NONE;
	c->qlen = 0;
	c->qsend = 0;
	c->len = 0;
	c->sent = 0;
	arm_recv(s, idx);
}

static int setup(struct server *s)
{
	s->handlers[OP_RECV] = on_recv;
	s->handlers[OP_SEND] = on_send;
	s->handlers[OP_CANCEL] = on_cancel;
	s->segs_free = NONE;
	/* Gathered sends with bundles; not with send_zc (its notifications gate one buffer each). */
	if ((s->features & EC_FEAT_BUNDLE) && !(s->features & EC_FEAT_ZC)) {
		s->gathers = calloc(s->max_conns, sizeof(*s->gathers));
		if (!s->gathers)
			return -ENOMEM;
	}
	s->br.bgid = BUF_GROUP;
	return bufring_setup(&s->ring, &s->br, s->buf_count, s->pool_start, s->buf_size,
			     !!(s->features & EC_FEAT_INC), !!(s->features & EC_FEAT_BUNDLE));
}

static void teardown(struct server *s)
{
	uint32_t i;

	for (i = 0; i < s->segs_cap; i++)
		free(s->segs[i].spill);	/* NULL on the free list */
	free(s->segs);
	s->segs = NULL;
	if (s->gathers) {
		for (i = 0; i < s->max_conns; i++) {
			if (s->gathers[i])
				sendring_close(NULL, &s->gathers[i]->send);	/* the ring's fd is closed: unmap only */
			free(s->gathers[i]);
		}
		free(s->gathers);
		s->gathers = NULL;
	}
}

const struct strategy echo_mshot = {
	.setup = setup,
	.teardown = teardown,
	.start = start,
	.resume = resume,
	.rearm = rearm,
};
