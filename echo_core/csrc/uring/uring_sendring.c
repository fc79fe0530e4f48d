/*
 * uring_sendring.c - a connection's send ring: see uring_sendring.h.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "uring_sendring.h"

int sendring_bgid(uint32_t idx)
{
	return idx < UINT16_MAX ? (int)idx + 1 : -1;
}

static size_t ring_bytes(void)
{
	return SENDRING_ENTRIES * sizeof(struct io_uring_buf);
}

int sendring_open(struct io_uring *ring, struct sendring *r, uint16_t bgid)
{
	struct io_uring_buf_reg reg;
	void *p;
	int ret;

	/* The kernel pins the ring's memory, which must start a page: one page of its own. */
	p = mmap(NULL, ring_bytes(), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)p;
	reg.ring_entries = SENDRING_ENTRIES;
	reg.bgid = bgid;
	ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret) {
		munmap(p, ring_bytes());
		return ret;
	}
	r->br = p;
	io_uring_buf_ring_init(r->br);
	r->bgid = bgid;
	r->queued = 0;
	r->done = 0;
	r->dirty = 0;
	return 0;
}

void sendring_close(struct io_uring *ring, struct sendring *r)
{
	if (!r->br)
		return;
	if (ring)
		io_uring_unregister_buf_ring(ring, r->bgid);
	munmap(r->br, ring_bytes());
	r->br = NULL;
}

void sendring_add(struct sendring *r, void *addr, uint32_t len, unsigned k)
{
	if (!k)
		r->queued = 0;
	io_uring_buf_ring_add(r->br, addr, len, (unsigned short)k, io_uring_buf_ring_mask(SENDRING_ENTRIES),
			      (int)k);
	r->queued += len;
}

void sendring_publish(struct sendring *r, unsigned n)
{
	io_uring_buf_ring_advance(r->br, (int)n);
}

void sendring_prep(struct io_uring_sqe *sqe, const struct sendring *r, uint32_t idx)
{
	io_uring_prep_send(sqe, (int)idx, NULL, 0, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
	sqe->buf_group = r->bgid;
	sqe->ioprio |= IORING_RECVSEND_BUNDLE;
}

int sendring_done(struct sendring *r, int *res, int more)
{
	if (*res > 0)
		r->done += (uint32_t)*res;
	if (more)
		return 0;
	if (r->done != r->queued)
		r->dirty = 1;
	if (r->done || *res == -ENOBUFS)
		*res = (int)r->done;	/* ENOBUFS: a retry found the entries gone, which all went */
	r->done = 0;
	return 1;
}
