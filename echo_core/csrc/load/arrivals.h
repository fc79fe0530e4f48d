/*
 * arrivals.h - rate mode's request schedule (internal, not part of the cffi API).
 *
 * Each connection's schedule is a pure function of (seed, connection,
 * request number): a counter-based generator, so any number of cursors can
 * walk the same schedule independently and agree to the nanosecond, and no
 * per-request queue is stored.  Times are integer ns for that reason.
 *
 * uniform: request k of connection i at t0 + i * phase + k * interval
 *          (connections evenly spread over one interval);
 * poisson: gaps are exponential with mean interval, independent per
 *          connection, so the sum over connections is a Poisson process at
 *          the total rate.
 */
#ifndef ECHO_CORE_ARRIVALS_H
#define ECHO_CORE_ARRIVALS_H

#include <stdint.h>

struct ec_arrivals {
	int kind;               /* EC_ARRIVALS_* */
	uint64_t seed;
	double interval_ns;     /* mean time between one connection's requests */
	double phase_ns;        /* uniform: offset between consecutive connections */
	uint64_t t0;
};

/* A position in one connection's schedule: request k is due at t. */
struct ec_sched {
	uint64_t k;
	uint64_t t;
};

/* Cursor at request 0 of connection `index`; *start is what ec_sched_next needs. */
void ec_sched_first(const struct ec_arrivals *a, uint32_t index, uint64_t *start,
		    struct ec_sched *s);

/* Advance the cursor to request k + 1. */
void ec_sched_next(const struct ec_arrivals *a, uint32_t index, uint64_t start, struct ec_sched *s);

#endif
