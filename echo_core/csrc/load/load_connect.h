/* load_connect.h - the load generator's connect phase (internal, not part of the cffi API). */
#ifndef ECHO_CORE_LOAD_CONNECT_H
#define ECHO_CORE_LOAD_CONNECT_H

#include <stdint.h>
#include <sys/socket.h>

/*
 * Open n TCP connections (TCP_NODELAY, linger 0) to ss within timeout_s.
 * Connected fds land in fds[0..ret); failures are added to *errors.
 * Returns the count, -EINTR (all closed) if stop_fd became readable, or -errno.
 */
int ec_connect_all(const struct sockaddr_storage *ss, socklen_t len, uint32_t n,
		   double timeout_s, int stop_fd, int *fds, uint64_t *errors);

#endif
