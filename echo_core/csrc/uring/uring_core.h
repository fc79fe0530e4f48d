/*
 * uring_core.h - the io_uring echo server's shared core: what it offers
 * the echo strategies, and its entry point.
 *
 * One ring, one thread.  The core owns the ring (set-up with the
 * DEFER_TASKRUN fallback, SQPOLL, NAPI), the registered file table,
 * accepts with the table guard, the stop poll, the accept-retry timer,
 * get_sqe with the deferred FIFO, the starved FIFO, the completion
 * dispatch table (handlers[op]) and the wait/reap loop.  An echo strategy
 * (uring_echo_*.c) fills handlers[OP_RECV], handlers[OP_SEND], ... and the
 * few hooks of struct strategy; a feature is a small unit that sets one of
 * them up (the wait unit, a recv ioprio bit, the buffer ring's mode).
 *
 * Dependencies run one way: uring_serve.c -> the strategies -> the core ->
 * the send, wait and pool (uring_grow.c) units -> uring_types.h.  The core
 * does not know the strategies: uring_serve.c picks one and hands it to
 * core_serve.
 */
#ifndef ECHO_CORE_URING_CORE_H
#define ECHO_CORE_URING_CORE_H

#include <stdint.h>

#include "../echo_core.h"
#include "uring_types.h"

/*
 * A connection whose peer never reads keeps its buffers until its send
 * completes, i.e. forever: enough of them would take the whole shared pool
 * and starve every other connection (epoll is immune: each connection has
 * its own buffer).  So while fewer than spill_below buffers are free, the
 * strategies copy what a recv brought into memory of the connection's own
 * and give the pool buffer back at once: the pool keeps a reserve for
 * everyone, and what a stalled connection holds is bounded by its own
 * budget, as with epoll.  Spilled bytes go out with a plain send.
 */
static inline int must_spill(const struct server *s)
{
	return s->br.free < s->spill_below;
}

struct io_uring_sqe *get_sqe(struct server *s);
void defer(struct server *s, uint32_t idx);
void arm_close(struct server *s, uint32_t idx);
void starve(struct server *s, uint32_t idx);

/* ec_uring_serve with the echo strategy already picked (uring_serve.c). */
int core_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
	       struct ec_server_stats *stats, const struct strategy *strat);

#endif
