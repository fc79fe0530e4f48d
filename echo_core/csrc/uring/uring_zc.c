/*
 * uring_zc.c - the send unit: plain send, or send_zc (EC_FEAT_ZC).
 *
 * With send_zc the kernel may read a buffer until it posts the send's
 * notification (a second completion, IORING_CQE_F_NOTIF, announced by
 * IORING_CQE_F_MORE on the first).  So a buffer whose bytes are all sent
 * goes back to the ring only once no notification is outstanding for it:
 * zc_on_send counts them per buffer (the buffer id rides in bits 40..55 of
 * user_data, so a notification needs nothing of a connection that may be
 * closed by then), and release_buf holds back the puts until then.  The
 * strategy's own send handler sees only the first completion of each send.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "uring_types.h"
#include "uring_zc.h"

#define BID_SHIFT 40

static void prep_plain(struct server *s, struct io_uring_sqe *sqe, uint32_t idx, uint16_t bid,
		       const void *buf, uint32_t len)
{
	(void)s;
	(void)bid;
	io_uring_prep_send(sqe, idx, buf, len, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx));
}

/*
 * Bytes spilled out of the pool (see must_spill) go out with a plain send,
 * with zc too: their memory is freed once the send completes, and a zero-copy
 * send could still be reading it until its notification.
 */
void prep_send_spilled(struct server *s, struct io_uring_sqe *sqe, uint32_t idx, const void *buf, uint32_t len)
{
	prep_plain(s, sqe, idx, 0, buf, len);
	s->stats->spilled_sends++;
}

static void prep_zc(struct server *s, struct io_uring_sqe *sqe, uint32_t idx, uint16_t bid,
		    const void *buf, uint32_t len)
{
	(void)s;
	io_uring_prep_send_zc(sqe, idx, buf, len, MSG_NOSIGNAL, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, make_data(OP_SEND, idx) | (uint64_t)bid << BID_SHIFT);
}

static void put_plain(struct server *s, uint16_t bid)
{
	bufring_put(&s->br, bid);
}

static void put_zc(struct server *s, uint16_t bid)
{
	if (s->zc_notifs[bid])
		s->zc_held[bid]++;	/* the kernel may still read it */
	else
		bufring_put(&s->br, bid);
}

static void zc_on_send(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe)
{
	uint16_t bid = (uint16_t)(cqe->user_data >> BID_SHIFT);

	if (cqe->flags & IORING_CQE_F_NOTIF) {
		if (--s->zc_notifs[bid] == 0) {
			while (s->zc_held[bid]) {
				s->zc_held[bid]--;
				bufring_put(&s->br, bid);
			}
		}
		return;
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		s->zc_notifs[bid]++;
	s->send_done(s, idx, cqe);
}

/* Select the send unit; call after the strategy's setup (it wraps handlers[OP_SEND]). */
int setup_send(struct server *s)
{
	if (!(s->features & EC_FEAT_ZC)) {
		s->prep_send = prep_plain;
		s->put_buf = put_plain;
		return 0;
	}
	s->zc_notifs = calloc(s->buf_count, sizeof(*s->zc_notifs));
	s->zc_held = calloc(s->buf_count, sizeof(*s->zc_held));
	if (!s->zc_notifs || !s->zc_held)
		return -ENOMEM;
	s->prep_send = prep_zc;
	s->put_buf = put_zc;
	s->send_done = s->handlers[OP_SEND];
	s->handlers[OP_SEND] = zc_on_send;
	return 0;
}

void teardown_send(struct server *s)
{
	free(s->zc_notifs);
	free(s->zc_held);
	s->zc_notifs = s->zc_held = NULL;
}
