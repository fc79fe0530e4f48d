/*
 * uring_grow.h - the pool's size and the growing pool (uring_grow.c, EC_FEAT_GROW).
 */
#ifndef ECHO_CORE_URING_GROW_H
#define ECHO_CORE_URING_GROW_H

#include "../echo_core.h"
#include "uring_types.h"

/* Buffers the pool provides at start: buf_count, or grow_start with grow. */
uint32_t pool_start(const struct ec_server_config *cfg);
/* What follows the pool's size: the spill reserve and the default multishot budget. */
void pool_sized(struct server *s, uint32_t buffers);
/* A recv found the pool empty (-ENOBUFS): count it; with grow, maybe provide grow_step more buffers. */
void pool_on_enobufs(struct server *s);

#endif
