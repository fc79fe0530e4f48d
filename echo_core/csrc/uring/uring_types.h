/*
 * uring_types.h - the io_uring echo server's shared types (private to uring/).
 *
 * Plain types only, no unit's functions: the connection slot, the
 * completion-handler and strategy tables, and struct server, which every
 * io_uring unit works on.  Each unit's functions are in its own header:
 * uring_core.h (the core), uring_zc.h (the send unit), uring_wait.h (the
 * batched wait unit), uring_echo.h (the echo strategies), uring_bufring.h.
 * A unit that needs only the types (uring_zc.c, uring_wait.c) includes this
 * header and nothing of the core, so the core depends on them, never the
 * other way round.
 *
 * user_data = op << 32 | connection index (the fixed-file slot), plus a
 * buffer id in bits 40..55 where a handler needs one after the connection
 * may be gone (send_zc notifications).
 */
#ifndef ECHO_CORE_URING_TYPES_H
#define ECHO_CORE_URING_TYPES_H

#include <stdint.h>

#include "../echo_core.h"
#include "../work.h"
#include "uring_bufring.h"
#include "uring_compat.h"

#define BUF_GROUP 0

enum op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_CLOSE,
	OP_STOP,
	OP_TIMER,
	OP_CANCEL,
	OP_COUNT,
};

enum conn_state {
	CONN_FREE = 0,
	CONN_RECV,      /* single, connbuf: recv in flight */
	CONN_SEND,      /* single, connbuf: send in flight */
	CONN_STARVED,   /* single: recv found no buffer; waiting in the starved queue */
	CONN_CLOSING,   /* close in flight (or deferred) */
	CONN_OPEN,      /* mshot: open; what is in flight is in flags */
};

struct conn {
	uint8_t state;    /* enum conn_state */
	uint8_t pad;
	uint16_t bid;     /* single: buffer being echoed while CONN_SEND */
	uint32_t off;     /* where they start in it (incremental buffers) */
	uint64_t sent;    /* bytes of that buffer already sent (mshot: bytes the send in flight asked for) */
	uint64_t len;     /* bytes in that buffer (mshot: bytes queued; 64 bits: a bundle may overshoot
			     the budget, and 16 gathered buffers of up to 1 GiB overflow 32) */
	uint32_t flags;   /* mshot: CF_* */
	uint32_t qhead;   /* mshot: the send queue (segment indices) */
	uint32_t qtail;
	uint32_t qlen;
	uint32_t qsend;   /* mshot: segments at the queue's head the send in flight covers */
	unsigned char *spill; /* single: the connection's own copy of its bytes (see must_spill) */
	uint64_t work_bytes;  /* received so far (server work per message) */
};

struct server;
typedef void (*handler_fn)(struct server *s, uint32_t idx, const struct io_uring_cqe *cqe);

/* What an echo strategy provides; NULL hooks do nothing. */
struct strategy {
	int (*setup)(struct server *s);                 /* after ring and files: buffers, handlers */
	void (*teardown)(struct server *s);
	void (*start)(struct server *s, uint32_t idx);  /* a connection was accepted into slot idx */
	void (*resume)(struct server *s, uint32_t idx); /* arm what found no SQE (not closes) */
	void (*rearm)(struct server *s, uint32_t idx);  /* a starved connection may receive again */
	int (*must_not_block)(const struct server *s);  /* work left that needs no completion */
};

struct seg;
struct gather;

struct server {
	struct io_uring ring;
	struct bufring br;
	const struct strategy *strat;
	handler_fn handlers[OP_COUNT];
	int (*wait)(struct server *s, int block);      /* the wait unit: plain or batched */
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
	struct ec_work work;      /* what to do with received bytes before echoing them */
	/* configuration, defaults resolved */
	uint32_t features;
	uint32_t buf_size;
	uint32_t buf_count;
	uint32_t batch_nr;
	uint32_t batch_wait_us;
	uint32_t batch_after;
	unsigned last_reaped;     /* completions the last wake-up found (batch_after) */
	uint32_t mshot_budget;
	int mshot_budget_auto;    /* mshot_budget follows the pool's size (not configured) */
	int mshot_own_cap;        /* mshot: the kernel's byte cap left unused (ec_server_config.mshot_own_cap) */
	uint32_t pool_start;      /* buffers provided at start (buf_count, or grow_start with grow) */
	uint32_t grow_step;       /* grow: buffers added per growth */
	uint64_t grew_at_turn;    /* grow: loop turn of the last growth (one per turn) */
	uint64_t grow_mark_enobufs, grow_mark_recvs; /* grow: the counters at the last growth */
	int sqpoll_cpu;
	uint16_t recv_ioprio;     /* IORING_RECVSEND_POLL_FIRST (pollfirst) */
	int min_timeout;          /* batch: the kernel has IORING_FEAT_MIN_TIMEOUT */
	int mshot_limit;          /* mshot: the kernel caps a multishot recv's bytes (6.17), unless mshot_own_cap */
	/* the send unit (uring_zc.c): plain send or send_zc */
	void (*prep_send)(struct server *s, struct io_uring_sqe *sqe, uint32_t idx, uint16_t bid,
			  const void *buf, uint32_t len);
	void (*put_buf)(struct server *s, uint16_t bid);  /* a buffer's bytes are echoed */
	handler_fn send_done;     /* zc: the strategy's send handler, behind the notification filter */
	uint32_t *zc_notifs;      /* zc: notifications outstanding per buffer */
	uint32_t *zc_held;        /* zc: puts held back until they arrive */
	/* strategy state */
	unsigned char **connbuf;  /* connbuf: each connection's own buffer */
	struct seg *segs;         /* mshot: send-queue entries */
	struct gather **gathers;  /* mshot+bundle: each connection's sendmsg area */
	uint32_t segs_cap, segs_free;
	uint32_t spill_below;     /* copy received bytes out of the pool while fewer buffers are free */
};

/* Encode the user_data layout above (an inline helper on these types, not a unit's function). */
static inline uint64_t make_data(enum op op, uint32_t idx)
{
	return (uint64_t)op << 32 | idx;
}

#endif
