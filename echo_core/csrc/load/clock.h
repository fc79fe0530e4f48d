/* clock.h - monotonic time in nanoseconds for the load generator's loops. */
#ifndef ECHO_CORE_CLOCK_H
#define ECHO_CORE_CLOCK_H

#include <stdint.h>
#include <time.h>

#define NS_PER_S 1000000000ull
#define NS_PER_MS 1000000ull

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* Round up to whole ms, at most a second: callers loop, and int must not overflow. */
static inline int ms_timeout(uint64_t ns)
{
	uint64_t ms = (ns + NS_PER_MS - 1) / NS_PER_MS;

	return ms > 1000 ? 1000 : (int)ms;
}

#endif
