/*
 * load_connect.c - the load generator's connect phase: open many non-blocking
 * connections with a bounded number in flight, before anything is measured.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "clock.h"
#include "load_connect.h"

#define MAX_EVENTS 256
#define MAX_PENDING_CONNECTS 512	/* stay below typical listen backlogs */

/* Returns 1 if connected at once, 0 if in progress, or a negative errno. */
static int start_connect(const struct sockaddr_storage *ss, socklen_t len, int *fdp)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int fd, one = 1, ret;

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * Linger 0 makes close() send RST: many runs in a row would otherwise
	 * pile up TIME_WAIT sockets and exhaust the ephemeral ports.
	 */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))) {
		ret = -errno;
		close(fd);
		return ret;
	}
	*fdp = fd;
	if (connect(fd, (const struct sockaddr *)ss, len) == 0)
		return 1;
	if (errno == EINPROGRESS)
		return 0;
	ret = -errno;
	close(fd);
	return ret;
}

enum { CS_UNSTARTED, CS_PENDING, CS_OK, CS_FAILED };

/*
 * Open n connections, at most MAX_PENDING_CONNECTS in flight so a server
 * that accepts slowly does not overflow its backlog and push us into 1 s
 * SYN retransmits.  Connected fds land in fds[0..ret); ret is their count,
 * or -EINTR (everything closed) if stop_fd fired.
 */
int ec_connect_all(const struct sockaddr_storage *ss, socklen_t len, uint32_t n,
		   double timeout_s, int stop_fd, int *fds, uint64_t *errors)
{
	struct epoll_event evs[MAX_EVENTS];
	uint8_t *state;
	uint64_t deadline, now;
	uint32_t next = 0, pending = 0, i, k;
	int ep, ret, nev, err, stopped = 0;
	socklen_t elen;

	state = calloc(n, 1);
	if (!state)
		return -ENOMEM;
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		free(state);
		return -errno;
	}
	if (stop_fd >= 0) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = UINT32_MAX };

		if (epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd, &ev)) {
			ret = -errno;
			close(ep);
			free(state);
			return ret;
		}
	}
	deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
	for (;;) {
		while (next < n && pending < MAX_PENDING_CONNECTS) {
			struct epoll_event ev = { .events = EPOLLOUT | EPOLLONESHOT, .data.u32 = next };

			ret = start_connect(ss, len, &fds[next]);
			if (ret < 0) {
				state[next++] = CS_FAILED;
				continue;
			}
			if (ret == 1) {
				state[next++] = CS_OK;
				continue;
			}
			if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[next], &ev)) {
				close(fds[next]);
				state[next++] = CS_FAILED;
				continue;
			}
			state[next++] = CS_PENDING;
			pending++;
		}
		if (!pending)
			break;
		now = now_ns();
		if (now >= deadline)
			break;
		nev = epoll_wait(ep, evs, MAX_EVENTS, ms_timeout(deadline - now));
		if (nev < 0 && errno != EINTR)
			break;
		for (i = 0; i < (uint32_t)(nev > 0 ? nev : 0); i++) {
			k = evs[i].data.u32;
			if (k == UINT32_MAX) {
				stopped = 1;
				continue;
			}
			err = 0;
			elen = sizeof(err);
			if (getsockopt(fds[k], SOL_SOCKET, SO_ERROR, &err, &elen) || err) {
				close(fds[k]);
				state[k] = CS_FAILED;
			} else {
				state[k] = CS_OK;
			}
			pending--;
		}
		if (stopped)
			break;
	}
	close(ep);
	/* Compact: connected fds first, in the order they were opened. */
	for (i = 0, k = 0; i < n; i++) {
		if (state[i] == CS_OK) {
			fds[k++] = fds[i];
			continue;
		}
		if (state[i] == CS_PENDING)
			close(fds[i]);
		(*errors)++;
	}
	free(state);
	if (stopped) {
		for (i = 0; i < k; i++)
			close(fds[i]);
		return -EINTR;
	}
	return (int)k;
}
