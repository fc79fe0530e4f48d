/*
 * pattern.h - the verification pattern (internal, not part of the cffi API).
 *
 * Byte i of connection c's stream is table[(seed_c + i) % EC_PATTERN_PERIOD].
 * The table holds PERIOD + max_chunk bytes, so any send or recv of at most
 * max_chunk bytes maps onto one contiguous slice: sends go straight from
 * the table and received bytes are checked with a single memcmp.  Seeds
 * differ per connection, so bytes that leak from another connection are
 * caught too.
 */
#ifndef ECHO_CORE_PATTERN_H
#define ECHO_CORE_PATTERN_H

#include <stdint.h>

#define EC_PATTERN_PERIOD 65521u   /* prime: only shifts by multiples of it go unseen */

/* malloc'ed table of EC_PATTERN_PERIOD + max_chunk bytes, or NULL. */
uint8_t *ec_pattern_make(uint32_t max_chunk);

/* Pattern offset of connection `index`'s stream byte 0. */
uint32_t ec_pattern_seed(uint32_t index);

/* Where stream offset `off` of a connection with this seed starts in the table. */
static inline const uint8_t *ec_pattern_at(const uint8_t *table, uint32_t seed, uint64_t off)
{
	return table + (seed + off) % EC_PATTERN_PERIOD;
}

/* Bytes among buf[0..n) that differ from the stream at offset off. */
uint64_t ec_pattern_diff(const uint8_t *table, uint32_t seed, uint64_t off,
			 const uint8_t *buf, uint64_t n);

#endif
