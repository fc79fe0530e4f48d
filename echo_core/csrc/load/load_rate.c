/*
 * load_rate.c - open loop: requests on a schedule (uniform or Poisson, see
 * arrivals.h), pipelined, latency from the scheduled time, so a slow server
 * cannot slow the offered load down (no coordinated omission).
 *
 * Each connection walks its schedule with three cursors that recompute the
 * same times: `post` (next request to make sendable), `first` (next request
 * whose first byte goes out: send lag) and `due` (next request to complete).
 * A per-worker min-heap on post.t yields the due requests in time order.
 */
#include <errno.h>
#include <stdlib.h>

#include "load.h"

static void sched_next(const struct worker *w, const struct conn *c, struct ec_sched *s)
{
	ec_sched_next(&w->ld->arr, c->index, c->start_ns, s);
}

static int rate_setup(struct worker *w)
{
	uint32_t n = w->nconns ? w->nconns : 1;

	w->dirty = calloc(n, sizeof(*w->dirty));
	w->heap = calloc(n, sizeof(*w->heap));
	return w->dirty && w->heap ? 0 : -ENOMEM;
}

static void heap_down(struct conn **h, uint32_t n, uint32_t i)
{
	struct conn *x = h[i];
	uint32_t k;

	for (;;) {
		k = 2 * i + 1;
		if (k >= n)
			break;
		if (k + 1 < n && h[k + 1]->post.t < h[k]->post.t)
			k++;
		if (x->post.t <= h[k]->post.t)
			break;
		h[i] = h[k];
		i = k;
	}
	h[i] = x;
}

static void rate_start(struct worker *w)
{
	struct conn *c;
	uint32_t i;

	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		ec_sched_first(&w->ld->arr, c->index, &c->start_ns, &c->post);
		c->first = c->post;
		c->due = c->post;
		w->heap[i] = c;
	}
	for (i = w->nconns / 2; i-- > 0;)
		heap_down(w->heap, w->nconns, i);
}

/* Post every request due by now; one send per connection however many fell due. */
static uint64_t rate_tick(struct worker *w, uint64_t now)
{
	struct conn *c;
	uint32_t i;

	if (!w->nconns)
		return UINT64_MAX;
	while ((c = w->heap[0])->post.t <= now) {
		c->send_limit = (c->post.k + 1) * w->ld->payload;
		if (!c->dirty) {
			c->dirty = 1;
			w->dirty[w->ndirty++] = c;
		}
		sched_next(w, c, &c->post);
		heap_down(w->heap, w->nconns, 0);
	}
	for (i = 0; i < w->ndirty; i++) {
		c = w->dirty[i];
		c->dirty = 0;
		if (!c->failed && !c->blocked)
			ec_conn_write(w, c);
	}
	w->ndirty = 0;
	return w->heap[0]->post.t;
}

/* Send lag: the generator's own lateness, kept apart from the server's latency. */
static void rate_after_send(struct worker *w, struct conn *c, uint64_t off, uint64_t n, uint64_t t)
{
	uint64_t p = w->ld->payload;

	while (c->first.k * p < off + n) {
		if (in_window(w, t))
			ec_hist_record(&w->lag, t > c->first.t ? t - c->first.t : 0);
		sched_next(w, c, &c->first);
	}
}

static void censor(struct worker *w, uint64_t due)
{
	ec_hist_record(&w->hist, w->win_end - due);
	w->unanswered++;
}

static void rate_on_echoed(struct worker *w, struct conn *c, uint64_t t)
{
	uint64_t complete = (c->recvd < c->sent ? c->recvd : c->sent) / w->ld->payload;

	for (; c->due.k < complete; sched_next(w, c, &c->due)) {
		if (in_window(w, t))
			ec_hist_record(&w->hist, t > c->due.t ? t - c->due.t : 0);
		else if (past_window(w, t) && c->due.t < w->win_end)
			censor(w, c->due.t);    /* still open when the window closed */
	}
}

/*
 * Every request due before the window's end and not answered by then -
 * sent or not, connection alive or not - is charged what it waited until
 * that end: dropping them would make a server that stops answering look fast.
 */
static void rate_at_window_close(struct worker *w)
{
	struct ec_sched s;
	uint32_t i;

	for (i = 0; i < w->nconns; i++) {
		s = w->conns[i].due;
		for (; s.t < w->win_end; sched_next(w, &w->conns[i], &s))
			censor(w, s.t);
	}
}

const struct load_mode ec_load_rate = {
	.setup = rate_setup,
	.start = rate_start,
	.after_send = rate_after_send,
	.on_echoed = rate_on_echoed,
	.tick = rate_tick,
	.at_window_close = rate_at_window_close,
	.unechoed = requests_unechoed,
};
