/*
 * uring_echo_connbuf.c - no provided buffers (EC_FEAT_CONNBUF): each
 * connection receives into its own buf_size buffer, allocated when it is
 * accepted and freed when it closes, exactly as the epoll server does;
 * then the buffer is sent (resent until complete) and the next recv goes
 * into the same, cache-warm memory.  One operation in flight per
 * connection, as in the seed's design; there is no pool to run dry, so
 * no -ENOBUFS and no starved queue.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "../net.h"
#include "uring_core.h"
#include "uring_echo.h"

static void close_conn(struct server *s, uint32_t idx)
{
	free(s->connbuf[idx]);
	s->connbuf[idx] = NULL;
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
	io_uring_prep_recv(sqe, idx, s->connbuf[idx], s->buf_size, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
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
	io_uring_prep_send(sqe, idx, s->connbuf[idx] + c->sent, c->len - c->sent, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx));
	s->stats->send_calls++;
}

static void resume(struct server *s, uint32_t idx)
{
	if (s->conns[idx].state == CONN_RECV)
		arm_recv(s, idx);
	else if (s->conns[idx].state == CONN_SEND)
		arm_send(s, idx);
}

static void start(struct server *s, uint32_t idx)
{
	s->conns[idx].sent = 0;
	s->connbuf[idx] = malloc(s->buf_size);
	if (!s->connbuf[idx]) {
		s->stats->conn_errors++;
		arm_close(s, idx);
		return;
	}
	arm_recv(s, idx);
}

static void on_recv(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	struct conn *c = &s->conns[idx];

	if (cqe->res <= 0) {
		if (cqe->res < 0)
			s->stats->conn_errors++;
		close_conn(s, idx);	/* EOF: everything received was already echoed */
		return;
	}
	c->len = (uint32_t)cqe->res;
	c->sent = 0;
	ec_work_on_recv(&s->work, s->stats, &c->work_bytes, s->connbuf[idx], c->len);
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
		close_conn(s, idx);
		return;
	}
	s->stats->bytes_out += (uint64_t)cqe->res;
	c->sent += (uint32_t)cqe->res;
	if (c->sent < c->len) {
		s->stats->short_sends++;
		arm_send(s, idx);
		return;
	}
	arm_recv(s, idx);
}

static int setup(struct server *s)
{
	s->handlers[OP_RECV] = on_recv;
	s->handlers[OP_SEND] = on_send;
	s->connbuf = calloc(s->max_conns, sizeof(*s->connbuf));
	return s->connbuf ? 0 : -ENOMEM;
}

static void teardown(struct server *s)
{
	uint32_t i;

	if (!s->connbuf)
		return;
	for (i = 0; i < s->max_conns; i++)
		free(s->connbuf[i]);
	free(s->connbuf);
	s->connbuf = NULL;
}

static void no_rearm(struct server *s, uint32_t idx)
{
	(void)s;
	(void)idx;
}

const struct strategy echo_connbuf = {
	.setup = setup,
	.teardown = teardown,
	.start = start,
	.resume = resume,
	.rearm = no_rearm,
};
