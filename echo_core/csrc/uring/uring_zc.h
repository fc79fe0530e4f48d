/*
 * uring_zc.h - the send unit (uring_zc.c): plain send, or send_zc (EC_FEAT_ZC).
 */
#ifndef ECHO_CORE_URING_ZC_H
#define ECHO_CORE_URING_ZC_H

#include <stdint.h>

#include "uring_types.h"

/* Select the send unit (s->prep_send, s->put_buf); call after the strategy's setup. */
int setup_send(struct server *s);
/* Prepare a plain send of bytes spilled out of the pool (see must_spill), with zc too. */
void prep_send_spilled(struct server *s, struct io_uring_sqe *sqe, uint32_t idx, const void *buf, uint32_t len);
void teardown_send(struct server *s);

#endif
