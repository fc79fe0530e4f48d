/* net.c - listening socket and fd-limit helpers shared by both servers. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_core.h"
#include "net.h"

int ec_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

int ec_listen(const char *host, int port, int backlog, int *bound_port)
{
	return ec_listen_reuseport(host, port, backlog, 0, bound_port);
}

int ec_listen_reuseport(const char *host, int port, int backlog, int reuseport, int *bound_port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1, ret;

	if (port < 0 || port > 65535 || backlog <= 0)
		return -EINVAL;
	ret = ec_sockaddr(host, port, &ss, &len);
	if (ret)
		return ret;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * TCP_NODELAY on the listener is inherited by every accepted socket,
	 * which is the only way to set it on io_uring direct descriptors.
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one))) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&ss, len) || listen(fd, backlog)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	*bound_port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
					      : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

_Static_assert(sizeof(struct ec_server_stats) % sizeof(uint64_t) == 0,
	       "the server's counters are plain uint64_t fields");

/* The fields that do not add up over threads, as uint64_t indexes into the struct. */
#define STATS_IDX(field) (offsetof(struct ec_server_stats, field) / sizeof(uint64_t))

void ec_server_stats_sum(const struct ec_server_stats *slots, uint32_t n, struct ec_server_stats *out)
{
	const size_t nf = sizeof(*out) / sizeof(uint64_t);
	uint64_t *d = (uint64_t *)out;
	uint32_t t;
	size_t i;

	memset(out, 0, sizeof(*out));
	for (t = 0; t < n; t++) {
		/* Relaxed loads: the loops write these as we read, each one a plain aligned uint64_t. */
		const uint64_t *s = (const uint64_t *)&slots[t];

		for (i = 0; i < nf; i++) {
			uint64_t v = __atomic_load_n(&s[i], __ATOMIC_RELAXED);

			if (i == STATS_IDX(running))
				d[i] = t == 0 ? v : (d[i] && v);
			else if (i == STATS_IDX(pending_bytes_max))
				d[i] = v > d[i] ? v : d[i];
			else
				d[i] += v;
		}
	}
}

int ec_raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			return -errno;
	}
	return rl.rlim_cur > 1 << 30 ? 1 << 30 : (int)rl.rlim_cur;
}

int ec_notify_ready(int ready_fd)
{
	ssize_t r;

	if (ready_fd < 0)
		return 0;
	do {
		r = write(ready_fd, "R", 1);
	} while (r < 0 && errno == EINTR);
	return r == 1 ? 0 : r < 0 ? -errno : -EIO;
}
