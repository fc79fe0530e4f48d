/*
 * uring_echo_single.c - the seed's echo strategy (features 0, or with
 * POLLFIRST, BATCH, INC, SQPOLL, NAPI around it).  Each connection has
 * exactly one operation in flight: a recv that picks a buffer from the
 * provided-buffer ring, then a send of that buffer (resent until complete),
 * then the next recv.  A recv that finds the ring empty (-ENOBUFS) puts its
 * connection in the starved FIFO, re-armed as buffers return.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../net.h"
#include "uring_core.h"
#include "uring_echo.h"
#include "uring_grow.h"
#include "uring_zc.h"

#define SPILLED UINT32_MAX	/* c->off: the bytes are in c->spill, not in buffer c->bid */

/* The echo is done (or abandoned): give its buffer back, unless its bytes were spilled. */
static void release(struct server *s, struct conn *c)
{
	if (c->off != SPILLED)
		s->put_buf(s, c->bid);
}

/* Close: the spill memory goes with the connection. */
static void finish(struct server *s, uint32_t idx)
{
	free(s->conns[idx].spill);
	s->conns[idx].spill = NULL;
	arm_close(s, idx);
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
	sqe->ioprio |= s->recv_ioprio;
	io_uring_sqe_set_data64(sqe, make_data(OP_RECV, idx));
	s->stats->recv_calls++;
}

static void arm_send(struct server *s, uint32_t idx)
{
	struct conn *c = &s->conns[idx];
	struct io_uring_sqe *sqe = get_sqe(s);

	c->state = CONN_SEND;
	if (!sqe) {
		defer(s, idx);
		return;
	}
	if (c->off == SPILLED)
		prep_send_spilled(s, sqe, idx, c->spill + c->sent, (uint32_t)(c->len - c->sent));
	else
		s->prep_send(s, sqe, idx, c->bid, bufring_addr(&s->br, c->bid) + c->off + c->sent,
			     (uint32_t)(c->len - c->sent));
	s->stats->send_calls++;
}

static void resume(struct server *s, uint32_t idx)
{
	switch (s->conns[idx].state) {
	case CONN_RECV:
		arm_recv(s, idx);
		break;
	case CONN_SEND:
		arm_send(s, idx);
		break;
	default:
		break;
	}
}

static void start(struct server *s, uint32_t idx)
{
	s->conns[idx].sent = 0;
	arm_recv(s, idx);
}

static void on_recv(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];

	if (cqe->res == -ENOBUFS) {
		pool_on_enobufs(s);
		starve(s, idx);
		c->state = CONN_STARVED;
		return;
	}
	if (cqe->res <= 0) {
		/* The kernel may still hand us a buffer on error: it left the ring, give it back. */
		if (cqe->flags & IORING_CQE_F_BUFFER)
			bufring_return_unused(&s->br, cqe->flags >> IORING_CQE_BUFFER_SHIFT, cqe->flags);
		if (cqe->res < 0)
			s->stats->conn_errors++;
		/* res == 0 is EOF; everything received was already echoed. */
		finish(s, idx);
		return;
	}
	c->bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	c->len = (uint32_t)cqe->res;
	c->sent = 0;
	c->off = bufring_take(&s->br, c->bid, (uint32_t)c->len, cqe->flags);
	ec_work_on_recv(&s->work, s->stats, &c->work_bytes, bufring_addr(&s->br, c->bid) + c->off, c->len);
	if (must_spill(s) && (c->spill || (c->spill = malloc(s->buf_size)))) {
		memcpy(c->spill, bufring_addr(&s->br, c->bid) + c->off, c->len);
		bufring_put(&s->br, c->bid);
		c->off = SPILLED;
		s->stats->spills++;
	}
	ec_count_recv(s->stats, (uint64_t)cqe->res);
	if (cqe->flags & IORING_CQE_F_BUF_MORE)
		s->stats->recv_buf_more++;
	if (c->len > s->stats->pending_bytes_max)
		s->stats->pending_bytes_max = c->len;
	arm_send(s, idx);
}

static void on_send(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];

	if (cqe->res < 0) {
		s->stats->conn_errors++;
		release(s, c);
		finish(s, idx);
		return;
	}
	s->stats->bytes_out += (uint64_t)cqe->res;
	c->sent += (uint32_t)cqe->res;
	if (c->sent < c->len) {
		s->stats->short_sends++;
		arm_send(s, idx);
		return;
	}
	release(s, c);
	arm_recv(s, idx);
}

static int setup(struct server *s)
{
	s->handlers[OP_RECV] = on_recv;
	s->handlers[OP_SEND] = on_send;
	s->br.bgid = BUF_GROUP;
	return bufring_setup(&s->ring, &s->br, s->buf_count, s->pool_start, s->buf_size,
			     !!(s->features & EC_FEAT_INC), 0);
}

static void teardown(struct server *s)
{
	uint32_t i;

	for (i = 0; i < s->max_conns; i++) {
		free(s->conns[i].spill);
		s->conns[i].spill = NULL;
	}
}

const struct strategy echo_single = {
	.setup = setup,
	.teardown = teardown,
	.start = start,
	.resume = resume,
	.rearm = arm_recv,
};
