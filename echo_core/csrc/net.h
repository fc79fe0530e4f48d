/* net.h - socket helpers shared by the servers and the load generator (not part of the cffi API). */
#ifndef ECHO_CORE_NET_H
#define ECHO_CORE_NET_H

#include <sys/socket.h>

/* Parse a numeric IPv4/IPv6 host and a port into ss. Returns 0 or -EINVAL. */
int ec_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);

/* Tell whoever waits on ready_fd (-1: nobody) that a server's set-up is done. Returns 0 or -errno. */
int ec_notify_ready(int ready_fd);

#endif
