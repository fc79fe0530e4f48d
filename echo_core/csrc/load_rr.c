/*
 * load_rr.c - closed loop: one request per connection in flight; its round
 * trip runs from its first send to the last byte of its echo.
 */
#include "clock.h"
#include "load.h"

static void rr_start(struct worker *w)
{
	uint32_t i;

	for (i = 0; i < w->nconns; i++)
		w->conns[i].send_limit = w->ld->payload;
}

/* The round trip starts with the request's first send (re-stamped if that hit EAGAIN). */
static void rr_before_send(struct worker *w, struct conn *c)
{
	if (c->sent + w->ld->payload == c->send_limit)
		c->req_start = now_ns();
}

static void censor(struct worker *w, uint64_t since)
{
	ec_hist_record(&w->hist, w->win_end - since);
	w->unanswered++;
}

static void rr_on_echoed(struct worker *w, struct conn *c, uint64_t t)
{
	/* Complete only once the whole request went out: extra bytes are garbage. */
	if (c->sent != c->send_limit || c->recvd < c->send_limit)
		return;
	if (in_window(w, t))
		ec_hist_record(&w->hist, t - c->req_start);
	else if (past_window(w, t) && c->req_start < w->win_end)
		censor(w, c->req_start);  /* it was still open when the window closed */
	c->send_limit += w->ld->payload;
}

/* The request in flight at the window's end counts as answered at that end, at best. */
static void rr_at_window_close(struct worker *w)
{
	struct conn *c;
	uint32_t i;

	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		if (c->failed || c->sent + w->ld->payload <= c->send_limit || c->recvd >= c->send_limit)
			continue;       /* no request started, or the last one is complete */
		if (c->req_start < w->win_end)
			censor(w, c->req_start);
	}
}

const struct load_mode ec_load_rr = {
	.start = rr_start,
	.before_send = rr_before_send,
	.on_echoed = rr_on_echoed,
	.at_window_close = rr_at_window_close,
	.unechoed = requests_unechoed,
};
