/* net.h - socket helpers shared by the servers and the load generator (not part of the cffi API). */
#ifndef ECHO_CORE_NET_H
#define ECHO_CORE_NET_H

#include <stdint.h>
#include <sys/socket.h>

#include "echo_core.h"

/* Parse a numeric IPv4/IPv6 host and a port into ss. Returns 0 or -EINVAL. */
int ec_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);

/* Tell whoever waits on ready_fd (-1: nobody) that a server's set-up is done. Returns 0 or -errno. */
int ec_notify_ready(int ready_fd);

/*
 * Count one successful recv of n > 0 bytes: bytes_in, recv_ok and the size
 * histogram (bucket floor(log2(n)), the last bucket taking everything above).
 * A few instructions, so it can sit in the hot path of every server.
 */
static inline void ec_count_recv(struct ec_server_stats *st, uint64_t n)
{
	unsigned b = 63u - (unsigned)__builtin_clzll(n);

	if (b >= EC_RECV_HIST_BUCKETS)
		b = EC_RECV_HIST_BUCKETS - 1;
	st->bytes_in += n;
	st->recv_ok++;
	st->recv_hist[b]++;
}

#endif
