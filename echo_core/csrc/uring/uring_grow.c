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
 * grow_step more while recvs often find it empty (below), up to buf_count:
 * the pool grows to about what the load holds at once.  It never shrinks:
 * buffers the kernel has once filled are in the ring's rotation from then on.
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

/*
 * When to grow.  Growing on every -ENOBUFS took the pool to its ceiling
 * (explore-grow2-20261204: 4 ENOBUFS, 320 buffers; 16, 1024): every
 * multishot recv armed when the ring ran empty ends with one, and rare dry
 * spells (0.002 per message at stream 16 KiB x 512) cost less than a pool
 * the cache no longer holds, which every message pays.  So the pool grows
 * only while running dry is common: at least one recv in GROW_DRY_SHARE
 * since the last growth found no buffer, over at least a pool's worth of
 * recvs; and at most once per turn of the event loop (the -ENOBUFS of one
 * spell are reaped together).
 */
#define GROW_DRY_SHARE 32

void pool_on_enobufs(struct server *s)
{
	uint64_t dry, recvs;

	s->stats->enobufs++;
	if (!(s->features & EC_FEAT_GROW) || s->grew_at_turn == s->stats->loop_iterations)
		return;
	dry = s->stats->enobufs - s->grow_mark_enobufs;
	recvs = s->stats->recv_ok - s->grow_mark_recvs;
	if (recvs < s->br.provided || dry * GROW_DRY_SHARE < recvs)
		return;
	if (!bufring_grow(&s->br, s->grow_step))
		return;
	s->grew_at_turn = s->stats->loop_iterations;
	s->grow_mark_enobufs = s->stats->enobufs;
	s->grow_mark_recvs = s->stats->recv_ok;
	pool_sized(s, s->br.provided);
}
