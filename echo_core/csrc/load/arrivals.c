/* arrivals.c - rate mode's request schedule (see arrivals.h). */
#include <errno.h>
#include <stdint.h>

#include "../echo_core.h"
#include "arrivals.h"

#define LN2 0.69314718055994530942
#define SQRT2 1.41421356237309504880

/* splitmix64's finalizer: a bijective mix, good enough to turn counters into noise. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/*
 * Natural log for x in (0, 1], by hand: keeps the module free of a libm
 * dependency (as histogram.c does).  x = m * 2^e with m in [sqrt(1/2),
 * sqrt(2)), ln(m) = 2 atanh(s) with s = (m-1)/(m+1), |s| < 0.172; eleven
 * terms of the series leave an error below 1e-16.
 */
static double ln_unit(double x)
{
	union { double d; uint64_t u; } v = { .d = x };
	double m, s, s2, term, sum = 0;
	int e, i;

	e = (int)((v.u >> 52) & 0x7ff) - 1023;
	v.u = (v.u & ((1ull << 52) - 1)) | (1023ull << 52);
	m = v.d;
	if (m > SQRT2) {
		m /= 2;
		e++;
	}
	s = (m - 1) / (m + 1);
	s2 = s * s;
	term = s;
	for (i = 0; i < 11; i++) {
		sum += term / (2 * i + 1);
		term *= s2;
	}
	return e * LN2 + 2 * sum;
}

/* Gap before request k of connection index: exponential, from the counter alone. */
static uint64_t poisson_gap(const struct ec_arrivals *a, uint32_t index, uint64_t k)
{
	uint64_t key = mix64(a->seed ^ mix64((uint64_t)index + 1));
	uint64_t h = mix64(key + k * 0x9e3779b97f4a7c15ull);
	/* 53 random bits -> u in (0, 1]: never 0, so the log stays finite. */
	double u = (double)((h >> 11) + 1) * (1.0 / 9007199254740992.0);

	return (uint64_t)(-ln_unit(u) * a->interval_ns + 0.5);
}

void ec_sched_first(const struct ec_arrivals *a, uint32_t index, uint64_t *start,
		    struct ec_sched *s)
{
	if (a->kind == EC_ARRIVALS_UNIFORM)
		*start = a->t0 + (uint64_t)((double)index * a->phase_ns);
	else
		*start = a->t0 + poisson_gap(a, index, 0);
	s->k = 0;
	s->t = *start;
}

void ec_sched_next(const struct ec_arrivals *a, uint32_t index, uint64_t start, struct ec_sched *s)
{
	s->k++;
	/* Uniform recomputes from the start so rounding never accumulates. */
	if (a->kind == EC_ARRIVALS_UNIFORM)
		s->t = start + (uint64_t)((double)s->k * a->interval_ns);
	else
		s->t += poisson_gap(a, index, s->k);
}

int ec_load_schedule(int arrivals, double rate, uint32_t connections, uint32_t index,
		     uint64_t seed, uint64_t *times_ns, uint32_t n)
{
	struct ec_arrivals a = { .kind = arrivals, .seed = seed, .t0 = 0 };
	struct ec_sched s;
	uint64_t start;
	uint32_t i;

	if (arrivals != EC_ARRIVALS_UNIFORM && arrivals != EC_ARRIVALS_POISSON)
		return -EINVAL;
	if (!(rate > 0) || rate > EC_LOAD_MAX_RATE || !connections || index >= connections || (n && !times_ns))
		return -EINVAL;
	a.phase_ns = 1e9 / rate;
	a.interval_ns = a.phase_ns * connections;
	ec_sched_first(&a, index, &start, &s);
	for (i = 0; i < n; i++) {
		times_ns[i] = s.t;
		ec_sched_next(&a, index, start, &s);
	}
	return 0;
}
