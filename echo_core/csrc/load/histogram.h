/*
 * histogram.h - log-linear latency histogram in integer nanoseconds.
 *
 * Values below 32 ns get a bucket each; above that every power of two is
 * split into 32 equal sub-buckets, so a bucket is at most 1/32 of its lower
 * bound wide and reporting its midpoint is off by at most 1/64 (~1.6%),
 * for any value up to 2^64 ns.  Recording is a count-leading-zeros, a shift
 * and four stores: cheap enough for the load generator's hot loop.  Each
 * worker thread owns one histogram; they are merged after the run.
 */
#ifndef EC_HISTOGRAM_H
#define EC_HISTOGRAM_H

#include <stdint.h>

#include "../echo_core.h"   /* EC_HIST_BUCKETS: the result carries the buckets */

#define EC_HIST_SUB_BITS 5
#define EC_HIST_SUB (1 << EC_HIST_SUB_BITS)
/* Values < 32 use buckets 0..31; each exponent 5..63 adds 32 more. */
_Static_assert(EC_HIST_BUCKETS == (64 - EC_HIST_SUB_BITS + 1) * EC_HIST_SUB,
	       "echo_core.h's EC_HIST_BUCKETS must match the histogram layout");

struct ec_hist {
	uint64_t count;
	uint64_t sum;                      /* ns; exact, for the mean */
	uint64_t min;                      /* ns; exact */
	uint64_t max;                      /* ns; exact */
	uint64_t buckets[EC_HIST_BUCKETS];
};

static inline unsigned ec_hist_index(uint64_t v)
{
	unsigned e;

	if (v < EC_HIST_SUB)
		return (unsigned)v;
	e = 63 - (unsigned)__builtin_clzll(v);        /* v in [2^e, 2^(e+1)) */
	return (e - EC_HIST_SUB_BITS + 1) * EC_HIST_SUB +
	       (unsigned)((v >> (e - EC_HIST_SUB_BITS)) & (EC_HIST_SUB - 1));
}

static inline void ec_hist_record(struct ec_hist *h, uint64_t v)
{
	h->buckets[ec_hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

void ec_hist_init(struct ec_hist *h);
void ec_hist_merge(struct ec_hist *dst, const struct ec_hist *src);

/* Lowest value that falls into bucket idx, and the bucket's width. */
uint64_t ec_hist_bucket_low(unsigned idx);
uint64_t ec_hist_bucket_width(unsigned idx);

/*
 * Value (ns) at quantile q in [0, 1]: the midpoint of the bucket holding the
 * ceil(q * count)-th smallest sample, clamped to the exact min and max.
 * Returns 0 for an empty histogram.
 */
uint64_t ec_hist_quantile(const struct ec_hist *h, double q);

/* Exact mean (ns) from the sum; 0 for an empty histogram. */
double ec_hist_mean(const struct ec_hist *h);

#endif
