/*
 * uring_grow.c - the pool's size, and the growing pool (EC_FEAT_GROW).
 *
 * A small pool stays in the cache, so the kernel's receive copy lands in
 * warm memory (issue 18's profiles: a 256 MiB pool doubled the copy's cost
 * per message), but with many connections each holding a buffer between its
 * recv and its send it runs dry: every -ENOBUFS ends a multishot recv, which
 * is re-armed and often arms a poll (0.165 ENOBUFS per message at rr 512 B x
 * 64 with 64 buffers).  A larger fixed pool removes that and pays in every
 * streaming cell.  So grow starts at grow_start buffers and provides
 * grow_step more on each -ENOBUFS, up to buf_count: the pool grows to what
 * the load holds at once, and no further.  It never shrinks: buffers the
 * kernel has once filled are in the ring's rotation from then on.
 */
#include "uring_bufring.h"
#include "uring_grow.h"

/*
 * A quarter of the pool (the share spilling keeps free for readers, see must_spill), between 1 and
 * EC_DEFAULT_MSHOT_BUDGET buffers.  1/64 of it, as before, left a cache-sized pool (16-64 buffers)
 * one buffer per multishot arm: a re-arm per buffer.
 */
uint32_t ec_default_mshot_budget(uint32_t buf_count)
{
	uint32_t budget = buf_count / 4;

	if (budget > EC_DEFAULT_MSHOT_BUDGET)
		return EC_DEFAULT_MSHOT_BUDGET;
	return budget ? budget : 1;
}

uint32_t pool_start(const struct ec_server_config *cfg)
{
	if (!(cfg->features & EC_FEAT_GROW))
		return cfg->buf_count;
	if (cfg->grow_start)
		return cfg->grow_start;
	return cfg->buf_count < EC_DEFAULT_GROW_BLOCK ? cfg->buf_count : EC_DEFAULT_GROW_BLOCK;
}

void pool_sized(struct server *s, uint32_t buffers)
{
	/* A quarter of the pool stays for connections that read (see must_spill). */
	s->spill_below = buffers / 4 ? buffers / 4 : 1;
	if (s->mshot_budget_auto)
		s->mshot_budget = ec_default_mshot_budget(buffers);
	s->stats->pool_buffers = s->features & EC_FEAT_CONNBUF ? 0 : buffers;
}

void pool_on_enobufs(struct server *s)
{
	s->stats->enobufs++;
	if (!(s->features & EC_FEAT_GROW) || !bufring_grow(&s->br, s->grow_step))
		return;
	pool_sized(s, s->br.provided);
}
