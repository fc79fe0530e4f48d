/*
 * uring_bufring.h - the provided-buffer ring: count buffers of size bytes,
 * registered as one buffer group.  The kernel takes them in ring order;
 * the server gives each one back (recycle) once its bytes are echoed.
 *
 * Incremental mode (IOU_PBUF_RING_INC, 6.12): a buffer stays at the ring's
 * head while the kernel fills it piece by piece (IORING_CQE_F_BUF_MORE), so
 * several completions - of several connections - may point into one buffer
 * at growing offsets.  The object then counts the pieces still being echoed
 * per buffer and recycles it when the kernel has let go of it and the last
 * piece is sent.  In plain mode every completion owns a whole buffer.
 *
 * Bundles: one completion spans the buffers that followed its first one in
 * the ring; bufring_at() names them from a shadow copy of the ring.
 *
 * Growing (grow): the ring and the buffers' address range are made for
 * count buffers, but only the first `provided` are handed to the kernel;
 * bufring_grow() adds the next ones in bid order at the ring's tail.  So a
 * bid still names base + bid * size, and ring positions stay what bundles
 * read; memory of buffers never provided is never touched.
 */
#ifndef ECHO_CORE_URING_BUFRING_H
#define ECHO_CORE_URING_BUFRING_H

#include <stdint.h>
#include <stddef.h>

#include "uring_compat.h"

struct bufring {
	struct io_uring_buf_ring *br;
	size_t br_size;
	unsigned char *bufs;
	size_t bufs_size;
	uint32_t buf_size;
	uint32_t count;		/* ring entries and bids: the most buffers the pool may hold */
	uint32_t provided;	/* buffers handed to the kernel so far (bids 0 .. provided - 1) */
	uint32_t free;		/* buffers the kernel may still fill (in the ring) */
	uint16_t bgid;
	int inc;		/* incremental consumption */
	int huge;		/* pool on transparent huge pages (core_serve sets it before the strategy's setup) */
	uint32_t tail;		/* ring position the next recycled buffer goes to */
	uint16_t *shadow;	/* bundles: bid at each ring position (count entries) */
	uint32_t *pos;		/* bundles: ring position each bid was last added at */
	uint32_t *off;		/* inc: bytes of each buffer the kernel has filled */
	uint32_t *refs;		/* inc: pieces of each buffer still being echoed */
	uint8_t *out;		/* inc: 1 once the kernel has let go of the buffer */
	uint8_t *in_ring;	/* checked builds, plain mode: 1 while the buffer is the kernel's */
	uint32_t *sending;	/* checked builds: sends in flight that read the buffer */
};

/*
 * Checked builds (EC_CHECKED, which the sanitizer build defines): a plain-mode
 * buffer taken while the server believes the kernel holds none of it, or
 * given back while it is still in the ring, aborts with what happened - two
 * owners of one buffer is how bytes get corrupted, long before a client sees it.
 */
#ifdef EC_CHECKED
void bufring_violation(const struct bufring *b, uint16_t bid, const char *what);
#define BUFRING_CHECK(b, bid, cond, what) \
	do { if ((b)->in_ring && !(cond)) bufring_violation(b, bid, what); } while (0)
/* A send that reads buffer bid was handed to the kernel (+1) or has completed (-1). */
#define BUFRING_SENDING(b, bid, delta) \
	do { if ((b)->sending) (b)->sending[bid] += (uint32_t)(delta); } while (0)
#else
#define BUFRING_CHECK(b, bid, cond, what) do { } while (0)
#define BUFRING_SENDING(b, bid, delta) do { } while (0)
#endif

/*
 * Allocate for count buffers, register, and provide the first `provided` of
 * them (1..count); track_bundles keeps the shadow ring. Returns 0 or -errno.
 */
int bufring_setup(struct io_uring *ring, struct bufring *b, uint32_t count, uint32_t provided,
		  uint32_t size, int inc, int track_bundles);
/* Provide up to n more buffers (never beyond count). Returns how many were added. */
uint32_t bufring_grow(struct bufring *b, uint32_t n);
void bufring_free(struct bufring *b);

static inline unsigned char *bufring_addr(const struct bufring *b, uint16_t bid)
{
	return b->bufs + (size_t)bid * b->buf_size;
}

/* Put a whole buffer back at the ring's tail. */
void bufring_recycle(struct bufring *b, uint16_t bid);

/*
 * A completion put len > 0 bytes into buffer bid: returns the offset they
 * start at and takes a reference for echoing them (plain mode: the whole
 * buffer is now the server's).
 */
static inline uint32_t bufring_take(struct bufring *b, uint16_t bid, uint32_t len, uint32_t cqe_flags)
{
	uint32_t o;

	if (!b->inc) {
		BUFRING_CHECK(b, bid, b->in_ring[bid], "taken but not in the ring");
#ifdef EC_CHECKED
		if (b->in_ring)
			b->in_ring[bid] = 0;
#endif
		b->free--;
		return 0;
	}
	o = b->off[bid];
	b->off[bid] += len;
	b->refs[bid]++;
	if (!(cqe_flags & IORING_CQE_F_BUF_MORE) && !b->out[bid]) {
		b->out[bid] = 1;
		b->free--;
	}
	return o;
}

/* The bytes taken from bid are echoed: drop the reference (plain mode: recycle). */
static inline void bufring_put(struct bufring *b, uint16_t bid)
{
	if (!b->inc) {
		bufring_recycle(b, bid);
		return;
	}
	if (--b->refs[bid] == 0 && b->out[bid])
		bufring_recycle(b, bid);
}

/* A completion without data (error, EOF) came with buffer bid: give it back if it left the ring. */
void bufring_return_unused(struct bufring *b, uint16_t bid, uint32_t cqe_flags);

/*
 * Bundles: a completion names only its first buffer; the others are the ones
 * that followed it in the ring.  Read the first one's ring position before
 * any buffer of the completion goes back: bufring_recycle() moves a buffer
 * to the ring's tail and so rewrites its position (issue 15's corruption).
 * Position pos + k stays valid until k buffers of the completion are back.
 */
static inline uint32_t bufring_pos(const struct bufring *b, uint16_t bid)
{
	return b->pos[bid];
}

/* The buffer at ring position pos (bundles). */
static inline uint16_t bufring_at(const struct bufring *b, uint32_t pos)
{
	return b->shadow[pos & (b->count - 1)];
}

/*
 * The length the kernel saw for the entry at ring position pos.  The kernel
 * truncates a bundle's first entry in place to what it means to receive
 * (io_ring_buffers_peek); if that receive then fails, the entry stays short
 * in the ring and a later bundle fills only that much of it before moving on
 * to the next buffer.  Recycling writes the full size back.
 */
static inline uint32_t bufring_len_at(const struct bufring *b, uint32_t pos)
{
	return *(volatile const uint32_t *)&b->br->bufs[pos & (b->count - 1)].len;
}

#endif
