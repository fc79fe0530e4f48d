/*
 * uring_sendring.h - a connection's send ring (EC_FEAT_SENDRING): the
 * segments of one gathered send written as entries of a buffer ring of the
 * connection's own and sent by one IORING_OP_SEND bundle (6.10), instead of
 * a sendmsg whose msghdr and iovec the kernel copies in for every send.
 *
 * One send in flight per connection, as with sendmsg, so the entries of a
 * send are all the ring holds.  A send bundle is sent whole (the kernel adds
 * MSG_WAITALL and retries short sends itself).  The kernel (6.10 to 6.18)
 * takes a send's entries off the ring when it selects them, before it sends;
 * a send that fails before selecting leaves them there.  The server cannot
 * tell which happened, so a send that did not move every byte it queued
 * marks the ring "dirty", and the ring is registered afresh before the
 * connection sends again (in practice only after a send that failed part
 * way, whose connection is failing anyway).  A connection's ring lives from
 * its first gathered send to its close.
 */
#ifndef ECHO_CORE_URING_SENDRING_H
#define ECHO_CORE_URING_SENDRING_H

#include <stdint.h>

#include "uring_compat.h"

#define SENDRING_ENTRIES 16	/* = the gathered send's most segments (GATHER_MAX) */

struct sendring {
	struct io_uring_buf_ring *br;	/* NULL: not registered */
	uint16_t bgid;
	uint32_t queued;	/* bytes the entries of the send in flight hold */
	uint32_t done;		/* bytes its completions with F_MORE reported so far */
	int dirty;		/* the last send did not consume every entry */
	int refused;		/* registration failed: this connection sends with sendmsg */
};

/* The buffer group of connection slot idx, or -1 if it has none (bgids are 16 bits; 0 is the pool's). */
int sendring_bgid(uint32_t idx);
/* Map and register the ring under bgid. Returns 0 or -errno (the caller then sends with sendmsg). */
int sendring_open(struct io_uring *ring, struct sendring *r, uint16_t bgid);
/* Unregister (ring NULL: it is gone already) and unmap; nothing of it may be in flight. */
void sendring_close(struct io_uring *ring, struct sendring *r);
/* Add entry k (0-based) of the next send; sendring_publish(n) hands the first n to the kernel. */
void sendring_add(struct sendring *r, void *addr, uint32_t len, unsigned k);
void sendring_publish(struct sendring *r, unsigned n);
/* Prepare the send bundle on fixed file idx. */
void sendring_prep(struct io_uring_sqe *sqe, const struct sendring *r, uint32_t idx);
/*
 * Fold a completion of the send in flight into the send's result: 0 while
 * completions with F_MORE say more follow (never seen: the send's entries
 * are all the ring holds), else 1 with *res the bytes the whole send moved,
 * or its -errno if none.  The ring is dirty unless every byte queued went,
 * the one case in which the kernel has surely consumed every entry.
 */
int sendring_done(struct sendring *r, int *res, int more);

#endif
