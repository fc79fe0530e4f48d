/*
 * work.h - what a server does with the bytes it received before echoing
 * them (both servers, not part of the cffi API).  An echo server never
 * looks at its data; a real one parses it, which changes what cold receive
 * buffers cost.  EC_WORK_TOUCH reads every byte (a checksum); EC_WORK_CPU
 * spends work_ns of CPU for every work_msg_bytes a connection received
 * (a fixed cost per message).
 */
#ifndef ECHO_CORE_WORK_H
#define ECHO_CORE_WORK_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "echo_core.h"

struct ec_work {
	uint32_t kind;          /* EC_WORK_* */
	uint32_t ns;            /* EC_WORK_CPU: nanoseconds per message */
	uint32_t msg_bytes;     /* EC_WORK_CPU: bytes per message */
};

/* -EINVAL for an unknown kind, or CPU work without a message size. */
static inline int ec_work_init(struct ec_work *w, const struct ec_server_config *cfg)
{
	if (cfg->work > EC_WORK_CPU || (cfg->work == EC_WORK_CPU && !cfg->work_msg_bytes) ||
	    cfg->work_ns > EC_MAX_WORK_NS)
		return -EINVAL;
	w->kind = cfg->work;
	w->ns = cfg->work_ns;
	w->msg_bytes = cfg->work_msg_bytes;
	return 0;
}

static inline uint64_t ec_work_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sum every byte as 64-bit words: the loads are the point, the sum keeps them from being elided. */
static inline uint64_t ec_work_touch(const unsigned char *p, uint64_t n)
{
	uint64_t sum = 0, word;

	for (; n >= 8; p += 8, n -= 8) {
		memcpy(&word, p, 8);
		sum += word;
	}
	while (n--)
		sum += *p++;
	return sum;
}

/*
 * n bytes at p arrived on a connection that had received *conn_bytes before.
 * The checksum goes into stats->work_checksum (nobody reads it; it must exist).
 */
static inline void ec_work_on_recv(const struct ec_work *w, struct ec_server_stats *st, uint64_t *conn_bytes,
				   const unsigned char *p, uint64_t n)
{
	uint64_t msgs, end;

	if (w->kind == EC_WORK_NONE)
		return;
	if (w->kind == EC_WORK_TOUCH) {
		st->work_checksum += ec_work_touch(p, n);
		return;
	}
	msgs = (*conn_bytes + n) / w->msg_bytes - *conn_bytes / w->msg_bytes;
	*conn_bytes += n;
	if (!msgs || !w->ns)
		return;
	end = ec_work_now() + msgs * w->ns;
	while (ec_work_now() < end)
		;
	st->work_checksum += msgs;
}

#endif
