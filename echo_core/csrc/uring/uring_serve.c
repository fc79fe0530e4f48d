/*
 * uring_serve.c - ec_uring_serve, the io_uring echo server's entry point.
 *
 * Picks the echo strategy the features select and runs the core with it,
 * so that the core (uring_core.c) never names a strategy: the strategies
 * depend on the core, not the other way round.
 */
#include "../echo_core.h"
#include "uring_core.h"
#include "uring_echo.h"

/* The strategy the features select: connbuf, mshot (with bundle/inc) or the seed's single. */
static const struct strategy *pick_strategy(uint32_t f)
{
	if (f & EC_FEAT_CONNBUF)
		return &echo_connbuf;
	if (f & EC_FEAT_MSHOT)
		return &echo_mshot;
	return &echo_single;
}

int ec_uring_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
		   struct ec_server_stats *stats)
{
	return core_serve(listen_fd, stop_fd, cfg, stats, pick_strategy(cfg->features));
}
