/*
 * uring_wait.h - the batched wait unit (uring_wait.c, EC_FEAT_BATCH).
 */
#ifndef ECHO_CORE_URING_WAIT_H
#define ECHO_CORE_URING_WAIT_H

#include "uring_types.h"

/* s->wait with EC_FEAT_BATCH: submit, and wait for batch_nr completions for at most batch_wait_us. */
int batch_wait(struct server *s, int block);

#endif
