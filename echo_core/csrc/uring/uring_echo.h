/*
 * uring_echo.h - the echo strategies (uring_echo_*.c), one of which
 * uring_serve.c hands to the core.
 */
#ifndef ECHO_CORE_URING_ECHO_H
#define ECHO_CORE_URING_ECHO_H

#include "uring_types.h"

extern const struct strategy echo_single, echo_mshot, echo_connbuf;

#endif
