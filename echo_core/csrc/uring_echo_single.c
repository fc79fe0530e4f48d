/*
 * uring_echo_single.c - the seed's echo strategy (features 0, or with
 * POLLFIRST, BATCH, INC, SQPOLL, NAPI around it).  Each connection has
 * exactly one operation in flight: a recv that picks a buffer from the
 * provided-buffer ring, then a send of that buffer (resent until complete),
 * then the next recv.  A recv that finds the ring empty (-ENOBUFS) puts its
 * connection in the starved FIFO, re-armed as buffers return.
 */
#include <errno.h>
#include <sys/socket.h>

#include "net.h"
#include "uring_core.h"

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
	unsigned char *buf = bufring_addr(&s->br, c->bid) + c->off;

	c->state = CONN_SEND;
	if (!sqe) {
		defer(s, idx);
		return;
	}
	s->prep_send(s, sqe, idx, c->bid, buf + c->sent, c->len - c->sent);
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
		s->stats->enobufs++;
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
		arm_close(s, idx);
		return;
	}
	c->bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	c->len = (uint32_t)cqe->res;
	c->sent = 0;
	c->off = bufring_take(&s->br, c->bid, c->len, cqe->flags);
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
		s->put_buf(s, c->bid);
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
	s->put_buf(s, c->bid);
	arm_recv(s, idx);
}

static int setup(struct server *s)
{
	s->handlers[OP_RECV] = on_recv;
	s->handlers[OP_SEND] = on_send;
	s->br.bgid = BUF_GROUP;
	return bufring_setup(&s->ring, &s->br, s->buf_count, s->buf_size,
			     !!(s->features & EC_FEAT_INC), 0);
}

const struct strategy echo_single = {
	.setup = setup,
	.start = start,
	.resume = resume,
	.rearm = arm_recv,
};
