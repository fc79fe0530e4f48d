/* pattern.c - the verification pattern (see pattern.h). */
#include <stdlib.h>
#include <string.h>

#include "pattern.h"

#define SEED_STRIDE 40503u   /* < PERIOD: seeds distinct for 65521 connections */

uint8_t *ec_pattern_make(uint32_t max_chunk)
{
	uint8_t *p = malloc((size_t)EC_PATTERN_PERIOD + max_chunk);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	uint64_t i;

	if (!p)
		return NULL;
	/* xorshift64: no structure a shifting or duplicating server could match. */
	for (i = 0; i < EC_PATTERN_PERIOD; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 32);
	}
	/* The tail repeats the start so every chunk is one contiguous slice. */
	for (i = EC_PATTERN_PERIOD; i < (uint64_t)EC_PATTERN_PERIOD + max_chunk; i++)
		p[i] = p[i - EC_PATTERN_PERIOD];
	return p;
}

uint32_t ec_pattern_seed(uint32_t index)
{
	return (uint32_t)(((uint64_t)index * SEED_STRIDE + 17) % EC_PATTERN_PERIOD);
}

uint64_t ec_pattern_diff(const uint8_t *table, uint32_t seed, uint64_t off,
			 const uint8_t *buf, uint64_t n)
{
	const uint8_t *want = ec_pattern_at(table, seed, off);
	uint64_t i, bad = 0;

	/* The common case is one memcmp; count byte by byte only when it fails. */
	if (!n || !memcmp(buf, want, n))
		return 0;
	for (i = 0; i < n; i++)
		bad += buf[i] != want[i];
	return bad;
}
