/* uring_bufring.c - the provided-buffer ring object (see uring_bufring.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "uring_bufring.h"

static void add(struct bufring *b, uint16_t bid, uint32_t at)
{
	io_uring_buf_ring_add(b->br, bufring_addr(b, bid), b->buf_size, bid,
			      io_uring_buf_ring_mask(b->count), (int)at);
	if (b->shadow) {
		uint32_t p = b->tail + at;

		b->shadow[p & (b->count - 1)] = bid;
		b->pos[bid] = p;
	}
}

#ifdef EC_CHECKED
void bufring_violation(const struct bufring *b, uint16_t bid, const char *what)
{
	fprintf(stderr, "echo_core: provided buffer %u %s (ring tail %u, %u free)\n", bid, what, b->tail, b->free);
	abort();
}
#endif

void bufring_recycle(struct bufring *b, uint16_t bid)
{
#ifdef EC_CHECKED
	if (b->sending && b->sending[bid])
		bufring_violation(b, bid, "given back while a send in flight reads it");
#endif
	if (!b->inc) {
		BUFRING_CHECK(b, bid, !b->in_ring[bid], "given back twice");
#ifdef EC_CHECKED
		if (b->in_ring)
			b->in_ring[bid] = 1;
#endif
	}
	if (b->inc) {
		b->off[bid] = 0;
		b->out[bid] = 0;
	}
	add(b, bid, 0);
	io_uring_buf_ring_advance(b->br, 1);
	b->tail++;
	b->free++;
}

void bufring_return_unused(struct bufring *b, uint16_t bid, uint32_t cqe_flags)
{
	if (!b->inc) {
#ifdef EC_CHECKED
		if (b->in_ring)
			b->in_ring[bid] = 0;	/* the kernel consumed it for this completion */
#endif
		b->free--;
		bufring_recycle(b, bid);
		return;
	}
	if ((cqe_flags & IORING_CQE_F_BUF_MORE) || b->out[bid])
		return;		/* still in the ring, or already out and counted */
	b->out[bid] = 1;
	b->free--;
	if (!b->refs[bid])
		bufring_recycle(b, bid);
}

uint32_t bufring_grow(struct bufring *b, uint32_t n)
{
	uint32_t i;

	if (n > b->count - b->provided)
		n = b->count - b->provided;
	for (i = 0; i < n; i++) {
		uint16_t bid = (uint16_t)(b->provided + i);

#ifdef EC_CHECKED
		if (b->in_ring)
			b->in_ring[bid] = 1;
#endif
		add(b, bid, i);
	}
	io_uring_buf_ring_advance(b->br, (int)n);
	b->tail += n;
	b->free += n;
	b->provided += n;
	return n;
}

#define HUGE_PAGE ((size_t)2 << 20)	/* the PMD size of x86-64 and 4 KiB-page arm64 */

/*
 * The pool's memory: size bytes, or with huge a whole number of 2 MiB pages
 * at a 2 MiB-aligned address (more is mapped, and the slack around the
 * aligned range unmapped again), advised MADV_HUGEPAGE so that the faults
 * that first touch it take huge pages.  Sets b->bufs and b->bufs_size.
 */
static int pool_map(struct bufring *b, size_t size)
{
	unsigned char *p, *aligned;
	size_t head, span;

	if (!b->huge) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
		if (p == MAP_FAILED)
			return -ENOMEM;
		b->bufs = p;
		b->bufs_size = size;
		return 0;
	}
	span = (size + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
	if (span < size || span + HUGE_PAGE < span)
		return -ENOMEM;
	p = mmap(NULL, span + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	aligned = (unsigned char *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
	head = (size_t)(aligned - p);
	if (head)
		munmap(p, head);
	munmap(aligned + span, HUGE_PAGE - head);	/* head < HUGE_PAGE: the tail slack is never empty */
	b->bufs = aligned;
	b->bufs_size = span;
	if (madvise(aligned, span, MADV_HUGEPAGE))
		return -errno;	/* EINVAL: no transparent huge pages in this kernel */
	return 0;
}

int bufring_setup(struct io_uring *ring, struct bufring *b, uint32_t count, uint32_t provided,
		  uint32_t size, int inc, int track_bundles)
{
	struct io_uring_buf_reg reg;
	int ret;

	if (!provided || provided > count)
		return -EINVAL;
	b->count = count;
	b->buf_size = size;
	b->inc = inc;
	b->br_size = (size_t)count * sizeof(struct io_uring_buf);
	b->br = mmap(NULL, b->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		return -ENOMEM;
	}
	/*
	 * Not MAP_NORESERVE, also with grow: the pool may grow to all of it, so
	 * the kernel's overcommit check should refuse (ENOMEM, before "ready")
	 * a pool the machine could never hold.  Untouched pages cost nothing.
	 */
	ret = pool_map(b, (size_t)count * size);
	if (ret)
		return ret;
	if (track_bundles) {
		b->shadow = calloc(count, sizeof(*b->shadow));
		b->pos = calloc(count, sizeof(*b->pos));
		if (!b->shadow || !b->pos)
			return -ENOMEM;
	}
	if (inc) {
		b->off = calloc(count, sizeof(*b->off));
		b->refs = calloc(count, sizeof(*b->refs));
		b->out = calloc(count, sizeof(*b->out));
		if (!b->off || !b->refs || !b->out)
			return -ENOMEM;
	}
#ifdef EC_CHECKED
	if (!inc) {
		b->in_ring = calloc(count, 1);	/* bufring_grow() marks what it provides */
		if (!b->in_ring)
			return -ENOMEM;
	}
	b->sending = calloc(count, sizeof(*b->sending));
	if (!b->sending)
		return -ENOMEM;
#endif
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)b->br;
	reg.ring_entries = count;
	reg.bgid = b->bgid;
	EC_BUF_REG_FLAGS(reg) = inc ? IOU_PBUF_RING_INC : 0;
	ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret)
		return inc && ret == -EINVAL ? -EOPNOTSUPP : ret;
	io_uring_buf_ring_init(b->br);
	b->tail = 0;
	b->free = 0;
	b->provided = 0;
	bufring_grow(b, provided);
	return 0;
}

void bufring_free(struct bufring *b)
{
	if (b->bufs)
		munmap(b->bufs, b->bufs_size);
	if (b->br)
		munmap(b->br, b->br_size);
	free(b->shadow);
	free(b->pos);
	free(b->off);
	free(b->refs);
	free(b->out);
	free(b->in_ring);
	free(b->sending);
	memset(b, 0, sizeof(*b));
}
