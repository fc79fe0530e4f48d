/*
 * load_stream.c - stream mode: keep up to `window` unechoed bytes in flight
 * per connection, one message per send call; no request boundaries, so no
 * latency and nothing to censor.
 */
#include "load.h"

static void stream_start(struct worker *w)
{
	uint32_t i;

	for (i = 0; i < w->nconns; i++)
		w->conns[i].send_limit = w->ld->window;
}

/* One message per call, so payload sets the syscall size. */
static uint64_t stream_send_cap(const struct worker *w, const struct conn *c, uint64_t len)
{
	uint64_t rest = w->ld->payload - c->sent % w->ld->payload;

	return len < rest ? len : rest;
}

static void stream_on_echoed(struct worker *w, struct conn *c, uint64_t t)
{
	(void)t;
	c->send_limit = c->recvd + w->ld->window;
}

/* Unechoed bytes in payload units, rounded up. */
static uint64_t stream_unechoed(const struct worker *w, const struct conn *c)
{
	uint64_t p = w->ld->payload, owed = c->sent > c->recvd ? c->sent - c->recvd : 0;

	return (owed + p - 1) / p;
}

const struct load_mode ec_load_stream = {
	.start = stream_start,
	.send_cap = stream_send_cap,
	.on_echoed = stream_on_echoed,
	.unechoed = stream_unechoed,
};
