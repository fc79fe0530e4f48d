/* histogram.c - log-linear latency histogram (see histogram.h). */
#include <string.h>

#include "histogram.h"

void ec_hist_init(struct ec_hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

void ec_hist_merge(struct ec_hist *dst, const struct ec_hist *src)
{
	unsigned i;

	if (!src->count)
		return;
	for (i = 0; i < EC_HIST_BUCKETS; i++)
		dst->buckets[i] += src->buckets[i];
	dst->count += src->count;
	dst->sum += src->sum;
	if (src->min < dst->min)
		dst->min = src->min;
	if (src->max > dst->max)
		dst->max = src->max;
}

/* Both exported to Python: an index past the last bucket gives 0 (no bucket), not a shift of 64+. */
uint64_t ec_hist_bucket_low(unsigned idx)
{
	unsigned e, sub;

	if (idx >= EC_HIST_BUCKETS)
		return 0;
	if (idx < EC_HIST_SUB)
		return idx;
	e = idx / EC_HIST_SUB + EC_HIST_SUB_BITS - 1;
	sub = idx % EC_HIST_SUB;
	return (uint64_t)(EC_HIST_SUB + sub) << (e - EC_HIST_SUB_BITS);
}

uint64_t ec_hist_bucket_width(unsigned idx)
{
	if (idx >= EC_HIST_BUCKETS)
		return 0;
	if (idx < EC_HIST_SUB)
		return 1;
	return (uint64_t)1 << (idx / EC_HIST_SUB - 1);
}

uint64_t ec_hist_quantile(const struct ec_hist *h, double q)
{
	uint64_t rank, seen = 0, v;
	unsigned i;

	if (!h->count)
		return 0;
	if (!(q > 0))
		return h->min;
	if (q >= 1)
		return h->max;
	/* ceil() by hand: keeps the module free of a libm dependency. */
	rank = (uint64_t)(q * (double)h->count);
	if ((double)rank < q * (double)h->count)
		rank++;
	if (rank < 1)
		rank = 1;
	for (i = 0; i < EC_HIST_BUCKETS; i++) {
		seen += h->buckets[i];
		if (seen >= rank)
			break;
	}
	if (i == EC_HIST_BUCKETS)
		return h->max;
	/* The midpoint halves the worst-case error; min/max are exact, so clamp. */
	v = ec_hist_bucket_low(i) + ec_hist_bucket_width(i) / 2;
	if (v < h->min)
		v = h->min;
	if (v > h->max)
		v = h->max;
	return v;
}

double ec_hist_mean(const struct ec_hist *h)
{
	return h->count ? (double)h->sum / (double)h->count : 0.0;
}
