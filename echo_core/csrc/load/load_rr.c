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

/*
 * A request still open when the window closed is counted, but unlike the
 * open loop's it adds no latency sample: every connection has one in
 * flight at any instant, so at 10,000 connections such lower bounds would
 * be a large share of the samples and pull the percentiles down.  A server
 * that stops answering is caught by never_answered instead.
 */
static void count_open(struct worker *w, uint64_t since)
{
	if (since < w->win_end)
		w->unanswered++;
}

static void rr_on_echoed(struct worker *w, struct conn *c, uint64_t t)
{
	/* Complete only once the whole request went out: extra bytes are garbage. */
	if (c->sent != c->send_limit || c->recvd < c->send_limit)
		return;
	if (in_window(w, t))
		ec_hist_record(&w->hist, t - c->req_start);
	else if (past_window(w, t))
		count_open(w, c->req_start);  /* it was still open when the window closed */
	c->send_limit += w->ld->payload;
}

/* The request in flight at the window's end is counted as unanswered (see count_open). */
static void rr_at_window_close(struct worker *w)
{
	struct conn *c;
	uint32_t i;

	for (i = 0; i < w->nconns; i++) {
		c = &w->conns[i];
		if (c->failed || c->sent + w->ld->payload <= c->send_limit || c->recvd >= c->send_limit)
			continue;       /* no request started, or the last one is complete */
		count_open(w, c->req_start);
	}
}

const struct load_mode ec_load_rr = {
	.start = rr_start,
	.before_send = rr_before_send,
	.on_echoed = rr_on_echoed,
	.at_window_close = rr_at_window_close,
	.unechoed = requests_unechoed,
};
